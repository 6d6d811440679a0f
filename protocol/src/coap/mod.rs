//! CoAP as Particle devices and the Particle cloud use it: reference §1.5 (framing, reliability,
//! deduplication) and the Block1/Block2 options of §1.10.
//!
//! [`Message`] is one decoded message (decoded and encoded here in one pass, refusing every
//! message format error; the tests check both against coap-lite, which did the byte work
//! before). [`Endpoint`] is the sans-IO exchange layer: retransmission of CON messages,
//! duplicate detection with cached replies, piggy-backed and separate responses.

mod block;
mod exchange;
mod message;

pub use block::{BlockError, BlockOption, BlockSize};
pub use exchange::{
    Endpoint, EndpointConfig, EndpointEvent, ExchangeError, IncomingRequest, RequestHandle,
    UnacknowledgedCon,
};

pub use message::{
    decode_uint, emit_parts_into, encode_uint, CoapOption, Code, Message, MessageType,
    MAX_TOKEN_LEN, PAYLOAD_MARKER, VERSION,
};

/// Option numbers: the RFC 7252 / RFC 7959 ones Particle uses and Particle's private OTA v3
/// options (reference §2.2; all critical, odd).
pub mod option {
    pub const ETAG: u16 = 4;
    pub const URI_PATH: u16 = 11;
    pub const CONTENT_FORMAT: u16 = 12;
    pub const MAX_AGE: u16 = 14;
    pub const URI_QUERY: u16 = 15;
    pub const BLOCK2: u16 = 23;
    pub const BLOCK1: u16 = 27;
    pub const SIZE2: u16 = 28;
    pub const SIZE1: u16 = 60;
    pub const NO_RESPONSE: u16 = 258;
    /// UpdateChunk: 1-based index of the chunk. UpdateAck: chunks received without a gap.
    pub const CHUNK_INDEX: u16 = 2049;
    /// UpdateStart response: receive window in chunks.
    pub const WINDOW_SIZE: u16 = 2053;
    /// UpdateStart: file size. UpdateStart response: resume offset in bytes.
    pub const FILE_SIZE: u16 = 2057;
    /// UpdateStart: SHA-256 of the whole file, 32 bytes.
    pub const FILE_SHA256: u16 = 2061;
    /// UpdateStart: chunk size in bytes.
    pub const CHUNK_SIZE: u16 = 2065;
    /// UpdateStart / UpdateFinish: empty flag, drop the transfer state.
    pub const DISCARD_DATA: u16 = 2069;
    /// UpdateFinish: empty flag, cancel the transfer.
    pub const CANCEL_UPDATE: u16 = 2073;
    /// UpdateStart: module function of the file (asset size pre-checks).
    pub const MODULE_FUNCTION: u16 = 2077;
}

/// A CoAP message that is not well formed, named by what was wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoapError {
    #[error("CoAP {what} truncated at byte {offset}: needs {needed} bytes, {available} left")]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("CoAP version {version} is not supported (only 1)")]
    UnsupportedVersion { version: u8 },
    #[error("CoAP token length {length} is reserved (at most 8)")]
    TokenLengthReserved { length: usize },
    #[error("CoAP token of {length} bytes is too long (at most 8)")]
    TokenTooLong { length: usize },
    #[error("CoAP code {code} has a reserved class")]
    ReservedCode { code: Code },
    #[error(
        "empty CoAP message (0.00) carries content: token {token_len} bytes, {options} options, payload {payload_len} bytes"
    )]
    EmptyMessageWithContent {
        token_len: usize,
        options: usize,
        payload_len: usize,
    },
    #[error("CoAP payload marker at byte {offset} is followed by no payload")]
    EmptyPayloadAfterMarker { offset: usize },
    #[error("CoAP {what} at byte {offset} uses the reserved value 15")]
    ReservedOptionNibble { offset: usize, what: &'static str },
    #[error("CoAP option at byte {offset} has number {number}, beyond 65535")]
    OptionNumberTooLarge { offset: usize, number: u32 },
    #[error("CoAP option {number} follows option {previous}: options must be in ascending order")]
    OptionsOutOfOrder { previous: u16, number: u16 },
    #[error("CoAP option {number} value of {length} bytes is too long")]
    OptionValueTooLong { number: u16, length: usize },
    #[error("Uri-Path must be the first option (a Particle device dispatches on it), found option {first} first")]
    UriPathNotFirst { first: u16 },
    #[error("coap-lite refused to decode the message: {0}")]
    Decoder(String),
    #[error("coap-lite refused to encode the message: {0}")]
    Encoder(String),
}
