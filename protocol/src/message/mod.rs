//! The Particle message catalogue: every CoAP message a Gen3 device and the cloud exchange, as
//! typed values with `parse` and `emit`. Implements reference §1.6-§1.12 (Hello, ping, time,
//! describe, events, Goodbye), §2.2 (OTA v3 UpdateStart / UpdateChunk / UpdateAck /
//! UpdateFinish, diagnostic payloads, the system-error -> CoAP code map).
//!
//! A [`ParticleMessage`] is the CoAP envelope (type, message id, token) around a [`Body`].
//! Requests are recognised the way the device dispatches them (reference §1.6): by the request
//! code and the first Uri-Path option, which must be the first option. Responses are context
//! dependent (the same 2.04 answers a Hello or finishes an update), so they parse as a generic
//! [`Response`]; typed views such as [`UpdateStartResponse`], [`TimeResponse`],
//! [`DescribeResponse`] and [`FinishStats`] read them given what was asked.
//!
//! Every parse is strict: an option a message does not carry, a repeated option, a uint option
//! longer than 4 bytes or a malformed payload is an error. `emit(parse(bytes)) == bytes` for
//! everything written the way Device OS writes it (uint options in 0, 1, 2 or 4 bytes without
//! leading zeros, an event name in one Uri-Path segment); anything else that parses re-emits in
//! that canonical form and parses back to the same value.
//!
//! # Choices where the reference is silent or UNCONFIRMED
//! All of them are here, in one place, so they are easy to change:
//! - Event path `E` is a private event and `e` a public one (the device publishes everything
//!   with `E`; the legacy protocol used `e` for public events). Both parse and re-emit as sent.
//! - An incoming event whose name arrives as several Uri-Path segments is joined with `/`
//!   (reference §1.11) and re-emitted as one segment, the way the device sends names.
//! - The Goodbye payload integers are unsigned LEB128 varints (7 bits per byte, low first).
//! - A Hello payload must be exactly 32 bytes with a device id length of 12.
//! - A server Hello (cloud -> device) has the same layout as the device's.

mod describe;
mod diagnostic;
mod event;
mod goodbye;
mod hello;
mod ota;

pub use describe::{
    ApplicationDescribe, Describe, DescribeFlags, DescribeRequest, DescribeResponse,
    FirmwareModule, FirmwareModuleAsset, FirmwareModuleDependency, FirmwareModuleSecurity,
    FirmwareModuleStore, FirmwareModuleType, SystemDescribe, CONTENT_FORMAT_OCTET_STREAM,
};
pub use diagnostic::{coap_code_for_system_error, Diagnostic, SystemError};
pub use event::{Event, EventScope, Subscribe, DEFAULT_EVENT_TTL};
pub use goodbye::{CloudDisconnectReason, Goodbye};
pub use hello::{Hello, HelloFlags, HELLO_PAYLOAD_LEN};
pub use ota::{
    FinishStats, UpdateAck, UpdateChunk, UpdateFinish, UpdateStart, UpdateStartResponse,
    MAX_OTA_CHUNK_SIZE, MIN_OTA_CHUNK_SIZE, OTA_RECEIVE_WINDOW_SIZE,
};

use crate::coap::{option, CoapError, CoapOption, Code, Message, MessageType};

/// A message that is well-formed CoAP but not a well-formed Particle message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogueError {
    #[error(transparent)]
    Coap(#[from] CoapError),
    #[error("{message}: option {option} is not expected in this message")]
    UnexpectedOption { message: &'static str, option: u16 },
    #[error("{message}: option {option} appears more than once")]
    RepeatedOption { message: &'static str, option: u16 },
    #[error("{message}: required option {option} is missing")]
    MissingOption { message: &'static str, option: u16 },
    #[error("{message}: option {option} has {length} bytes, expected {expected}")]
    OptionLength {
        message: &'static str,
        option: u16,
        length: usize,
        expected: &'static str,
    },
    #[error("request {code} has no Uri-Path as its first option")]
    MissingUriPath { code: Code },
    #[error("{message}: Uri-Path has {segments} segments, expected {expected}")]
    UriPathSegments {
        message: &'static str,
        segments: usize,
        expected: &'static str,
    },
    #[error("{message} must be sent as {expected}, got {got}")]
    WrongType {
        message: &'static str,
        expected: MessageType,
        got: MessageType,
    },
    #[error("{message} requires a token")]
    MissingToken { message: &'static str },
    #[error("{message} must not carry a token (got {length} bytes)")]
    UnexpectedToken {
        message: &'static str,
        length: usize,
    },
    #[error("{message}: unexpected payload of {length} bytes")]
    UnexpectedPayload {
        message: &'static str,
        length: usize,
    },
    #[error("{message}: payload of {length} bytes, expected {expected}")]
    PayloadLength {
        message: &'static str,
        length: usize,
        expected: &'static str,
    },
    #[error("{message}: {field} is not valid UTF-8")]
    InvalidUtf8 {
        message: &'static str,
        field: &'static str,
    },
    #[error("{message}: {field} is invalid: {reason}")]
    InvalidField {
        message: &'static str,
        field: &'static str,
        reason: String,
    },
    #[error("a non-confirmable message cannot be empty (0.00)")]
    EmptyNonConfirmable,
    #[error("expected a response, got code {code}")]
    NotAResponse { code: Code },
    #[error("{message}: expected response code {expected}, got {got}")]
    UnexpectedCode {
        message: &'static str,
        expected: Code,
        got: Code,
    },
}

/// A Particle message: the CoAP envelope and what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticleMessage {
    pub kind: MessageType,
    pub message_id: u16,
    /// Particle uses 0 or 1 byte.
    pub token: Vec<u8>,
    pub body: Body,
}

/// What a [`ParticleMessage`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// CON 0.00 (reference §1.9).
    Ping,
    /// ACK 0.00: acknowledges a CON, no response in it.
    EmptyAck,
    /// RST 0.00.
    Reset,
    /// POST `h` (reference §1.7).
    Hello(Hello),
    /// GET `t` (reference §1.6); the answer is a [`TimeResponse`].
    TimeRequest,
    /// POST `d`: device-initiated describe (reference §1.10).
    Describe(Describe),
    /// GET `d`: server-requested describe.
    DescribeRequest(DescribeRequest),
    /// POST `E` / `e`: publish or incoming event (reference §1.11).
    Event(Event),
    /// GET `e`: subscription.
    Subscribe(Subscribe),
    /// POST `x` (reference §1.12).
    Goodbye(Goodbye),
    /// POST `S` (reference §2.2).
    UpdateStart(UpdateStart),
    /// POST `C`.
    UpdateChunk(UpdateChunk),
    /// POST `A`.
    UpdateAck(UpdateAck),
    /// POST `F`.
    UpdateFinish(UpdateFinish),
    /// Any response (2.xx, 4.xx, 5.xx), piggy-backed in an ACK or separate.
    Response(Response),
    /// A request the catalogue does not type (function call, variable, signal, KeyChange,
    /// ServerMoved, legacy OTA), kept as it came.
    Other(Request),
}

/// A response, untyped: see the typed views ([`UpdateStartResponse`], [`TimeResponse`], ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub code: Code,
    pub options: Vec<CoapOption>,
    pub payload: Vec<u8>,
}

impl Response {
    /// A response with no options and no payload.
    pub fn new(code: Code) -> Response {
        Response {
            code,
            options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// The first value of option `number`.
    pub fn option(&self, number: u16) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|o| o.number == number)
            .map(|o| o.value.as_slice())
    }
}

/// A request outside the typed catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub code: Code,
    pub options: Vec<CoapOption>,
    pub payload: Vec<u8>,
}

/// The answer to a [`Body::TimeRequest`]: ACK 2.05 with the token and the Unix time as 4 bytes
/// BE. The test cloud of the capture sends no payload at all, so the time is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeResponse {
    pub unix_time: Option<u32>,
}

impl TimeResponse {
    pub fn parse(response: &Response) -> Result<TimeResponse, CatalogueError> {
        const WHAT: &str = "time response";
        expect_code(WHAT, response.code, Code::CONTENT)?;
        if let Some(o) = response.options.first() {
            return Err(CatalogueError::UnexpectedOption {
                message: WHAT,
                option: o.number,
            });
        }
        let unix_time = match response.payload.as_slice() {
            [] => None,
            [a, b, c, d] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
            other => {
                return Err(CatalogueError::PayloadLength {
                    message: WHAT,
                    length: other.len(),
                    expected: "0 or 4",
                })
            }
        };
        Ok(TimeResponse { unix_time })
    }

    pub fn emit(&self) -> Response {
        Response {
            code: Code::CONTENT,
            options: Vec::new(),
            payload: self
                .unix_time
                .map(|t| t.to_be_bytes().to_vec())
                .unwrap_or_default(),
        }
    }
}

impl ParticleMessage {
    /// Decodes CoAP bytes into a catalogue message.
    pub fn parse(bytes: &[u8]) -> Result<ParticleMessage, CatalogueError> {
        ParticleMessage::from_coap(&Message::parse(bytes)?)
    }

    /// Encodes the message to CoAP bytes.
    pub fn emit(&self) -> Result<Vec<u8>, CatalogueError> {
        Ok(self.to_coap()?.emit()?)
    }

    /// Types a decoded CoAP message.
    pub fn from_coap(message: &Message) -> Result<ParticleMessage, CatalogueError> {
        let body = Body::from_coap(message)?;
        Ok(ParticleMessage {
            kind: message.kind,
            message_id: message.message_id,
            token: message.token.clone(),
            body,
        })
    }

    /// The CoAP message this is.
    pub fn to_coap(&self) -> Result<Message, CatalogueError> {
        let (code, options, payload) = self.body.parts()?;
        Ok(Message {
            kind: self.kind,
            code,
            message_id: self.message_id,
            token: self.token.clone(),
            options,
            payload,
        })
    }
}

impl Body {
    /// Recognises `message` as the device does: code, then the first Uri-Path byte.
    pub fn from_coap(message: &Message) -> Result<Body, CatalogueError> {
        let code = message.code;
        if code.is_empty() {
            return match message.kind {
                MessageType::Confirmable => Ok(Body::Ping),
                MessageType::Acknowledgement => Ok(Body::EmptyAck),
                MessageType::Reset => Ok(Body::Reset),
                MessageType::NonConfirmable => Err(CatalogueError::EmptyNonConfirmable),
            };
        }
        if code.is_response() {
            return Ok(Body::Response(Response {
                code,
                options: message.options.clone(),
                payload: message.payload.clone(),
            }));
        }
        let first = match message.options.first() {
            Some(o) if o.number == option::URI_PATH => o.value.as_slice(),
            _ => return Err(CatalogueError::MissingUriPath { code }),
        };
        Ok(match (code, first) {
            (Code::POST, b"h") => Body::Hello(Hello::from_coap(message)?),
            (Code::GET, b"t") => {
                check_options(message, "time request", &[], 1..=1)?;
                no_payload("time request", message)?;
                Body::TimeRequest
            }
            (Code::POST, b"d") => Body::Describe(Describe::from_coap(message)?),
            (Code::GET, b"d") => Body::DescribeRequest(DescribeRequest::from_coap(message)?),
            (Code::POST, b"E" | b"e") => Body::Event(Event::from_coap(message)?),
            (Code::GET, b"e") => Body::Subscribe(Subscribe::from_coap(message)?),
            (Code::POST, b"x") => Body::Goodbye(Goodbye::from_coap(message)?),
            (Code::POST, b"S") => Body::UpdateStart(UpdateStart::from_coap(message)?),
            (Code::POST, b"C") => Body::UpdateChunk(UpdateChunk::from_coap(message)?),
            (Code::POST, b"A") => Body::UpdateAck(UpdateAck::from_coap(message)?),
            (Code::POST, b"F") => Body::UpdateFinish(UpdateFinish::from_coap(message)?),
            _ => Body::Other(Request {
                code,
                options: message.options.clone(),
                payload: message.payload.clone(),
            }),
        })
    }

    /// Code, options (in wire order) and payload of this body.
    pub fn parts(&self) -> Result<(Code, Vec<CoapOption>, Vec<u8>), CatalogueError> {
        Ok(match self {
            Body::Ping | Body::EmptyAck | Body::Reset => (Code::EMPTY, Vec::new(), Vec::new()),
            Body::Hello(hello) => (
                Code::POST,
                vec![uri_path("h")],
                hello.emit_payload().to_vec(),
            ),
            Body::TimeRequest => (Code::GET, vec![uri_path("t")], Vec::new()),
            Body::Describe(describe) => describe.parts()?,
            Body::DescribeRequest(request) => request.parts()?,
            Body::Event(event) => event.parts(),
            Body::Subscribe(subscribe) => subscribe.parts(),
            Body::Goodbye(goodbye) => goodbye.parts(),
            Body::UpdateStart(start) => start.parts(),
            Body::UpdateChunk(chunk) => chunk.parts(),
            Body::UpdateAck(ack) => ack.parts(),
            Body::UpdateFinish(finish) => finish.parts(),
            Body::Response(r) => (r.code, r.options.clone(), r.payload.clone()),
            Body::Other(r) => (r.code, r.options.clone(), r.payload.clone()),
        })
    }
}

/// A one-segment Uri-Path option.
pub(crate) fn uri_path(segment: &str) -> CoapOption {
    CoapOption::new(option::URI_PATH, segment.as_bytes().to_vec())
}

/// Checks that `message` has Uri-Path first with a segment count in `segments`, and apart from
/// it only options from `allowed`, none of them repeated.
pub(crate) fn check_options(
    message: &Message,
    what: &'static str,
    allowed: &[u16],
    segments: core::ops::RangeInclusive<usize>,
) -> Result<(), CatalogueError> {
    let mut previous = None;
    let mut path_segments = 0;
    for o in &message.options {
        if o.number == option::URI_PATH {
            path_segments += 1;
            continue;
        }
        if !allowed.contains(&o.number) {
            return Err(CatalogueError::UnexpectedOption {
                message: what,
                option: o.number,
            });
        }
        if previous == Some(o.number) {
            return Err(CatalogueError::RepeatedOption {
                message: what,
                option: o.number,
            });
        }
        previous = Some(o.number);
    }
    if !segments.contains(&path_segments) {
        return Err(CatalogueError::UriPathSegments {
            message: what,
            segments: path_segments,
            expected: if *segments.end() == 1 {
                "1"
            } else if *segments.start() == 1 {
                "1 or more"
            } else {
                "2 or more"
            },
        });
    }
    Ok(())
}

/// Checks that options in a response come only from `allowed`, none repeated.
pub(crate) fn check_response_options(
    response: &Response,
    what: &'static str,
    allowed: &[u16],
) -> Result<(), CatalogueError> {
    let mut previous = None;
    for o in &response.options {
        if !allowed.contains(&o.number) {
            return Err(CatalogueError::UnexpectedOption {
                message: what,
                option: o.number,
            });
        }
        if previous == Some(o.number) {
            return Err(CatalogueError::RepeatedOption {
                message: what,
                option: o.number,
            });
        }
        previous = Some(o.number);
    }
    Ok(())
}

pub(crate) fn no_payload(what: &'static str, message: &Message) -> Result<(), CatalogueError> {
    if message.payload.is_empty() {
        Ok(())
    } else {
        Err(CatalogueError::UnexpectedPayload {
            message: what,
            length: message.payload.len(),
        })
    }
}

pub(crate) fn expect_kind(
    what: &'static str,
    message: &Message,
    expected: MessageType,
) -> Result<(), CatalogueError> {
    if message.kind == expected {
        Ok(())
    } else {
        Err(CatalogueError::WrongType {
            message: what,
            expected,
            got: message.kind,
        })
    }
}

pub(crate) fn expect_code(
    what: &'static str,
    got: Code,
    expected: Code,
) -> Result<(), CatalogueError> {
    if got == expected {
        Ok(())
    } else {
        Err(CatalogueError::UnexpectedCode {
            message: what,
            expected,
            got,
        })
    }
}

/// A uint option value (0..4 bytes).
pub(crate) fn uint_value(
    what: &'static str,
    number: u16,
    value: &[u8],
) -> Result<u32, CatalogueError> {
    crate::coap::decode_uint(value).ok_or(CatalogueError::OptionLength {
        message: what,
        option: number,
        length: value.len(),
        expected: "0 to 4",
    })
}

/// A flag option that must be empty.
pub(crate) fn flag_value(
    what: &'static str,
    number: u16,
    value: Option<&[u8]>,
) -> Result<bool, CatalogueError> {
    match value {
        None => Ok(false),
        Some([]) => Ok(true),
        Some(other) => Err(CatalogueError::OptionLength {
            message: what,
            option: number,
            length: other.len(),
            expected: "0",
        }),
    }
}

/// The message as the device writes a response to `request`: piggy-backed in the ACK.
pub fn piggybacked(request: &ParticleMessage, response: Response) -> ParticleMessage {
    ParticleMessage {
        kind: MessageType::Acknowledgement,
        message_id: request.message_id,
        token: request.token.clone(),
        body: Body::Response(response),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_and_empty_ack_are_four_bytes() {
        let ping = ParticleMessage {
            kind: MessageType::Confirmable,
            message_id: 0x1234,
            token: Vec::new(),
            body: Body::Ping,
        };
        assert_eq!(ping.emit().unwrap(), vec![0x40, 0x00, 0x12, 0x34]);
        let ack = ParticleMessage::parse(&[0x60, 0x00, 0x12, 0x34]).unwrap();
        assert_eq!(ack.body, Body::EmptyAck);
        assert_eq!(
            ParticleMessage::parse(&[0x70, 0, 0, 1]).unwrap().body,
            Body::Reset
        );
        assert_eq!(
            ParticleMessage::parse(&[0x50, 0, 0, 1]),
            Err(CatalogueError::EmptyNonConfirmable)
        );
    }

    #[test]
    fn time_response_carries_big_endian_unix_time() {
        let response = TimeResponse {
            unix_time: Some(0x6543_2100),
        }
        .emit();
        assert_eq!(response.payload, vec![0x65, 0x43, 0x21, 0x00]);
        assert_eq!(
            TimeResponse::parse(&response).unwrap().unix_time,
            Some(0x6543_2100)
        );
        let message = ParticleMessage {
            kind: MessageType::Acknowledgement,
            message_id: 3,
            token: vec![0x78],
            body: Body::Response(response),
        };
        assert_eq!(
            message.emit().unwrap(),
            vec![0x61, 0x45, 0x00, 0x03, 0x78, 0xFF, 0x65, 0x43, 0x21, 0x00]
        );
    }

    #[test]
    fn request_without_uri_path_first_is_refused() {
        // POST with Content-Format only.
        assert_eq!(
            ParticleMessage::parse(&[0x40, 0x02, 0, 1, 0xC0]),
            Err(CatalogueError::MissingUriPath { code: Code::POST })
        );
    }

    #[test]
    fn unknown_requests_are_kept_as_they_came() {
        // POST f/reboot with a payload (function call).
        let bytes = [
            0x41, 0x02, 0, 9, 0x33, 0xB1, b'f', 0x06, b'r', b'e', b'b', b'o', b'o', b't', 0xFF,
            b'x',
        ];
        let message = ParticleMessage::parse(&bytes).unwrap();
        assert!(matches!(message.body, Body::Other(_)));
        assert_eq!(message.emit().unwrap(), bytes.to_vec());
    }
}
