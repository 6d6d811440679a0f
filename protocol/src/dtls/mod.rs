//! DTLS 1.2 exactly as a Particle device and the Particle cloud speak it (reference
//! `particle-protocol.md` sections 1.3 and 1.4), sans-IO.
//!
//! Profile: TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 only, secp256r1, RFC 7250 raw public keys
//! (the server sends no Certificate, its ServerKeyExchange is checked against the pinned key),
//! HelloVerifyRequest cookies, connection ID draft-05 (extension 254, record type 25, 8-byte CID
//! assigned by the server), handshake-less session resumption (record type 253 until the first
//! server record), and an X.509 mode for tests against independent implementations.
//! Off the profile, for RFC 7250 peers such as GnuTLS: `rfc7250_server_certificate` on both
//! configs has the server send its raw key in a Certificate message as RFC 7250 prescribes.
//!
//! Layers, one file each:
//! - [`record`]: the record header (checked view + [`record::RecordRepr`]).
//! - [`crypto`]: PRF, key block, CCM_8 record protection and the two AAD layouts.
//! - [`ccm`]: AES-128-CCM_8 itself (RFC 3610 with the 12-byte TLS nonce), in place.
//! - [`handshake`]: handshake header and every handshake message, plus alerts.
//!
//! - [`keys`]: P-256 keys from SEC1/PKCS#8/SPKI DER, the SPKI inside an X.509 certificate.
//! - [`Client`] and [`Server`]: the sans-IO state machines (shared record and flight machinery
//!   in `conn.rs`: epochs, replay window, reassembly, fragmentation, retransmission timer).
//! - [`SessionState`]: what a client persists for handshake-less resumption.
//!
//! Tests: `tests/dtls_capture.rs` (conformance with the captured Device OS 6.2.0 session),
//! `tests/dtls_handshake.rs` (client <-> server in virtual time over a lossy link, resumption),
//! `tests/dtls_x509.rs`, `tests/dtls_malformed.rs`, `tests/dtls_udp.rs` (real sockets, and
//! against `openssl s_server` / `s_client`), `tests/dtls_interop_webrtc.rs` (the `dtls` crate),
//! `tests/dtls_tshark.rs` (captures decrypted by tshark with our key log) and
//! `tests/dtls_gnutls.rs` (raw public keys against GnuTLS, and why they do not interoperate);
//! findings in `tests/INTEROP.md`.
//! Tests that need an external tool skip with a message when it is missing, and fail instead
//! when `HIL_REQUIRE_INTEROP=1` (as in CI). Fuzz targets: `protocol/fuzz/`.
//!
//! # Driving a client or a server
//!
//! Nothing here reads a clock, a socket or an unseeded RNG. Time is a [`Duration`] since any
//! epoch the caller picks (virtual time in tests, `Instant::elapsed()` over real sockets);
//! randomness is an injected `RngCore + CryptoRng`. The loop over a real UDP socket:
//!
//! ```no_run
//! # use protocol::dtls::*;
//! # fn run(config: ClientConfig, socket: std::net::UdpSocket) -> std::io::Result<()> {
//! let start = std::time::Instant::now();
//! let mut client = Client::connect(config, rand_core::OsRng, start.elapsed());
//! let mut buf = [0u8; 2048];
//! loop {
//!     while let Some(datagram) = client.poll_transmit() {
//!         socket.send(&datagram)?;
//!     }
//!     while let Some(event) = client.poll_event() {
//!         match event {
//!             Event::Connected => client.send_application_data(start.elapsed(), b"hi").unwrap(),
//!             Event::ApplicationData(data) => println!("{data:?}"),
//!             Event::Closed(reason) => return Ok(println!("closed: {reason}")),
//!         }
//!     }
//!     let wait = client.poll_timeout().map(|t| t.saturating_sub(start.elapsed()));
//!     socket.set_read_timeout(wait.filter(|w| !w.is_zero()).or(Some(std::time::Duration::from_millis(1))))?;
//!     match socket.recv(&mut buf) {
//!         Ok(n) => client.handle_datagram(start.elapsed(), &buf[..n]),
//!         Err(_) => client.handle_timeout(start.elapsed()),
//!     }
//! }
//! # }
//! ```
//!
//! A [`Server`] is driven the same way with the peer address: `handle_datagram(now, from,
//! bytes)`, and `poll_transmit()` gives a [`Transmit`] with its destination.

pub mod ccm;
mod client;
mod conn;
pub mod crypto;
pub mod ec;
pub mod handshake;
pub mod keys;
pub mod record;
mod server;
mod session;

pub use client::{Client, ClientConfig};
pub use conn::{ReplayWindow, RetransmitTimeouts};
pub use server::{ConnectionHandle, ExportedSession, Server, ServerConfig, ServerEvent, Transmit};
pub use session::SessionState;

pub use core::time::Duration;

/// The largest record plaintext Device OS accepts (`MBEDTLS_SSL_MAX_CONTENT_LEN`, reference 1.3).
pub const MAX_PLAINTEXT: usize = 1152;
/// Default datagram size limit for handshake flights.
pub const DEFAULT_MTU: usize = 1280;
/// Length of the connection ID the server assigns (Device OS requires 8, reference 1.3).
pub const CID_LEN: usize = 8;

/// How the peers authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateMode {
    /// RFC 7250 raw public keys, the Particle profile: the server sends no Certificate.
    RawPublicKey,
    /// X.509 certificates (the server sends Certificate), for tests against other stacks.
    X509,
}

/// What a client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed (or a session was resumed).
    Connected,
    /// One application-data record's plaintext.
    ApplicationData(Vec<u8>),
    /// The association ended; nothing more will be sent or received.
    Closed(CloseReason),
}

/// Why an association ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    #[error("closed locally")]
    Local,
    #[error("the peer sent close_notify")]
    PeerClosed,
    #[error("{0}")]
    Error(DtlsError),
}

/// The NSS key log line of a handshake (`CLIENT_RANDOM <client_random> <master_secret>`, hex),
/// which Wireshark/tshark read with `-o tls.keylog_file:FILE`.
pub fn nss_key_log_line(client_random: &[u8; 32], master_secret: &[u8; 48]) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "CLIENT_RANDOM {} {}",
        hex(client_random),
        hex(master_secret)
    )
}

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
