//! DTLS 1.2 exactly as a Particle device and the Particle cloud speak it (reference
//! `particle-protocol.md` sections 1.3 and 1.4), sans-IO.
//!
//! Profile: TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 only, secp256r1, RFC 7250 raw public keys
//! (the server sends no Certificate, its ServerKeyExchange is checked against the pinned key),
//! HelloVerifyRequest cookies, connection ID draft-05 (extension 254, record type 25, 8-byte CID
//! assigned by the server), handshake-less session resumption (record type 253 until the first
//! server record), and an X.509 mode for tests against independent implementations.
//!
//! Layers, one file each:
//! - [`record`]: the record header (checked view + [`record::RecordRepr`]).
//! - [`crypto`]: PRF, key block, CCM_8 record protection and the two AAD layouts.
//! - [`handshake`]: handshake header and every handshake message, plus alerts.
//!
//! (The client and server state machines join in later commits.)

pub mod crypto;
pub mod handshake;
pub mod record;

/// Everything that can go wrong, naming what and where. Shown to a person as one sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtlsError {
    #[error("{what} is truncated at byte {offset}")]
    Truncated { what: &'static str, offset: usize },
    #[error("{what} is malformed at byte {offset}")]
    Malformed { what: &'static str, offset: usize },
    #[error("unknown record content type {0}")]
    UnknownContentType(u8),
    #[error("unsupported protocol version {0:#06x} (only DTLS 1.2 is spoken)")]
    BadVersion(u16),
    #[error("record of epoch {epoch} seq {seq} failed its CCM_8 tag check")]
    BadRecordMac { epoch: u16, seq: u64 },
    #[error("the server's key exchange is not signed by the pinned server key")]
    ServerKeyMismatch,
    #[error("the device key offered by the client is not registered with this server")]
    UnknownDeviceKey,
    #[error("the {0} signature does not verify")]
    BadSignature(&'static str),
    #[error("the peer's Finished message does not match the handshake")]
    BadFinished,
    #[error("unexpected handshake message type {got} while waiting for {expected}")]
    UnexpectedMessage { got: u8, expected: &'static str },
    #[error("the peer chose or offered nothing we support: {0}")]
    Unsupported(&'static str),
    #[error("invalid key or certificate: {0}")]
    BadKey(&'static str),
    #[error("the server assigned a {0}-byte connection ID (Device OS requires 8)")]
    BadConnectionId(usize),
    #[error("the handshake timed out after the last retransmission")]
    HandshakeTimeout,
    #[error("the peer sent a fatal alert ({0})")]
    PeerAlert(u8),
    #[error("the peer closed the connection")]
    PeerClosed,
    #[error("the connection is not established")]
    NotConnected,
    #[error("application data of {len} bytes exceeds the maximum record plaintext of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("the exported session blob is invalid: {0}")]
    BadSessionBlob(&'static str),
}

impl DtlsError {
    /// The same error with its byte offset moved by `by` (for errors inside a larger buffer).
    pub fn shifted(self, by: usize) -> Self {
        match self {
            Self::Truncated { what, offset } => Self::Truncated {
                what,
                offset: offset + by,
            },
            Self::Malformed { what, offset } => Self::Malformed {
                what,
                offset: offset + by,
            },
            other => other,
        }
    }
}
