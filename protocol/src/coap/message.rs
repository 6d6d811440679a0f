//! One CoAP message (RFC 7252 §3) as Particle devices put it on the wire: reference §1.5.
//!
//! Decoding and encoding go through `coap-lite`; this file adds what coap-lite lets through and a
//! Particle peer must refuse (version other than 1, reserved code classes, an empty message with a
//! token, options or payload, a payload marker with no payload, the reserved option nibble 15) and
//! what the device assumes when it dispatches (Uri-Path, where present, is the first option: an
//! option numbered below 11 before it is refused both ways).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Ver| T |  TKL  |      Code     |          Message ID           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   Token (if any, TKL bytes) ...
//! |   Options (if any) ...   each: | delta:4 | length:4 | [ext delta] [ext length] value
//! |1 1 1 1 1 1 1 1|    Payload (if any) ...
//! ```

use super::CoapError;

/// Byte layout of the fixed header (RFC 7252 §3).
mod field {
    use core::ops::{Range, RangeFrom};

    /// `Ver(2) | Type(2) | TKL(4)`.
    pub const VER_TYPE_TKL: usize = 0;
    pub const CODE: usize = 1;
    pub const MESSAGE_ID: Range<usize> = 2..4;
    pub const TOKEN: RangeFrom<usize> = 4..;
    pub const HEADER_LEN: usize = 4;
}

/// The byte that separates options from the payload.
pub const PAYLOAD_MARKER: u8 = 0xFF;
/// The only CoAP version.
pub const VERSION: u8 = 1;
/// Longest token RFC 7252 allows.
pub const MAX_TOKEN_LEN: usize = 8;

/// Message type (the `T` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// CON: must be acknowledged.
    Confirmable,
    /// NON: not acknowledged.
    NonConfirmable,
    /// ACK.
    Acknowledgement,
    /// RST.
    Reset,
}

impl MessageType {
    #[cfg(test)]
    fn to_lite(self) -> coap_lite::MessageType {
        match self {
            MessageType::Confirmable => coap_lite::MessageType::Confirmable,
            MessageType::NonConfirmable => coap_lite::MessageType::NonConfirmable,
            MessageType::Acknowledgement => coap_lite::MessageType::Acknowledgement,
            MessageType::Reset => coap_lite::MessageType::Reset,
        }
    }

    #[cfg(test)]
    fn from_lite(kind: coap_lite::MessageType) -> MessageType {
        match kind {
            coap_lite::MessageType::Confirmable => MessageType::Confirmable,
            coap_lite::MessageType::NonConfirmable => MessageType::NonConfirmable,
            coap_lite::MessageType::Acknowledgement => MessageType::Acknowledgement,
            coap_lite::MessageType::Reset => MessageType::Reset,
        }
    }
}

impl core::fmt::Display for MessageType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            MessageType::Confirmable => "CON",
            MessageType::NonConfirmable => "NON",
            MessageType::Acknowledgement => "ACK",
            MessageType::Reset => "RST",
        })
    }
}

/// A method or response code, `class << 5 | detail`, shown as `c.dd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub u8);

impl Code {
    pub const EMPTY: Code = Code(0x00);
    pub const GET: Code = Code(0x01);
    pub const POST: Code = Code(0x02);
    pub const PUT: Code = Code(0x03);
    pub const DELETE: Code = Code(0x04);
    pub const CREATED: Code = Code::new(2, 1);
    pub const DELETED: Code = Code::new(2, 2);
    pub const VALID: Code = Code::new(2, 3);
    pub const CHANGED: Code = Code::new(2, 4);
    pub const CONTENT: Code = Code::new(2, 5);
    pub const CONTINUE: Code = Code::new(2, 31);
    pub const BAD_REQUEST: Code = Code::new(4, 0);
    pub const UNAUTHORIZED: Code = Code::new(4, 1);
    pub const BAD_OPTION: Code = Code::new(4, 2);
    pub const FORBIDDEN: Code = Code::new(4, 3);
    pub const NOT_FOUND: Code = Code::new(4, 4);
    pub const METHOD_NOT_ALLOWED: Code = Code::new(4, 5);
    pub const REQUEST_ENTITY_INCOMPLETE: Code = Code::new(4, 8);
    pub const REQUEST_ENTITY_TOO_LARGE: Code = Code::new(4, 13);
    pub const INTERNAL_SERVER_ERROR: Code = Code::new(5, 0);
    pub const NOT_IMPLEMENTED: Code = Code::new(5, 1);
    pub const SERVICE_UNAVAILABLE: Code = Code::new(5, 3);
    pub const GATEWAY_TIMEOUT: Code = Code::new(5, 4);

    /// `class.detail`, e.g. `Code::new(2, 4)` is 2.04 Changed.
    pub const fn new(class: u8, detail: u8) -> Code {
        Code((class & 0x07) << 5 | (detail & 0x1F))
    }

    pub const fn class(self) -> u8 {
        self.0 >> 5
    }

    pub const fn detail(self) -> u8 {
        self.0 & 0x1F
    }

    /// 0.00: ping (CON), empty ACK, RST.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// 0.01 ..= 0.31.
    pub const fn is_request(self) -> bool {
        self.class() == 0 && self.0 != 0
    }

    /// Classes 2, 4 and 5.
    pub const fn is_response(self) -> bool {
        matches!(self.class(), 2 | 4 | 5)
    }

    /// Classes 1, 6 and 7 are reserved (RFC 7252 §12.1).
    pub const fn is_reserved(self) -> bool {
        matches!(self.class(), 1 | 6 | 7)
    }
}

impl core::fmt::Display for Code {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.detail())
    }
}

/// One option: its number and raw value. A [`Message`] keeps them in wire order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CoapOption {
    pub number: u16,
    pub value: Vec<u8>,
}

impl CoapOption {
    pub fn new(number: u16, value: impl Into<Vec<u8>>) -> CoapOption {
        CoapOption {
            number,
            value: value.into(),
        }
    }

    /// A uint option, encoded as the device does (0, 1, 2 or 4 bytes, see [`encode_uint`]).
    pub fn uint(number: u16, value: u32) -> CoapOption {
        CoapOption::new(number, encode_uint(value))
    }
}

/// Encodes a uint option value the way Device OS does: big-endian, leading zero bytes dropped,
/// and 0, 1, 2 or 4 bytes long (never 3; reference §1.5). Zero is the empty value.
pub fn encode_uint(value: u32) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    match value {
        0 => Vec::new(),
        1..=0xFF => bytes[3..].to_vec(),
        0x100..=0xFFFF => bytes[2..].to_vec(),
        _ => bytes.to_vec(),
    }
}

/// Decodes a uint option value of 0 to 4 bytes (big-endian). `None` if it is longer.
pub fn decode_uint(value: &[u8]) -> Option<u32> {
    if value.len() > 4 {
        return None;
    }
    Some(value.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b)))
}

/// A whole CoAP message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: MessageType,
    pub code: Code,
    pub message_id: u16,
    /// 0 to 8 bytes; Particle uses 0 or 1.
    pub token: Vec<u8>,
    /// In wire order, i.e. by ascending number; repeated options keep their relative order.
    pub options: Vec<CoapOption>,
    pub payload: Vec<u8>,
}

impl Message {
    /// A message with no token, options or payload.
    pub fn new(kind: MessageType, code: Code, message_id: u16) -> Message {
        Message {
            kind,
            code,
            message_id,
            token: Vec::new(),
            options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// CON 0.00: a ping.
    pub fn ping(message_id: u16) -> Message {
        Message::new(MessageType::Confirmable, Code::EMPTY, message_id)
    }

    /// ACK 0.00: acknowledges a CON without a piggy-backed response.
    pub fn empty_ack(message_id: u16) -> Message {
        Message::new(MessageType::Acknowledgement, Code::EMPTY, message_id)
    }

    /// RST 0.00.
    pub fn reset(message_id: u16) -> Message {
        Message::new(MessageType::Reset, Code::EMPTY, message_id)
    }

    /// The first value of option `number`.
    pub fn option(&self, number: u16) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|o| o.number == number)
            .map(|o| o.value.as_slice())
    }

    /// Every value of option `number`, in order.
    pub fn option_values(&self, number: u16) -> impl Iterator<Item = &[u8]> {
        self.options
            .iter()
            .filter(move |o| o.number == number)
            .map(|o| o.value.as_slice())
    }

    /// Whether option `number` is present (even if empty).
    pub fn has_option(&self, number: u16) -> bool {
        self.options.iter().any(|o| o.number == number)
    }

    /// Appends an option. Options must be pushed in ascending order of number ([`Message::emit`]
    /// refuses them otherwise).
    pub fn push_option(&mut self, option: CoapOption) {
        self.options.push(option);
    }

    /// Decodes `bytes`, refusing anything RFC 7252 calls a message format error.
    pub fn parse(bytes: &[u8]) -> Result<Message, CoapError> {
        check_wire_format(bytes)?;
        // The checks above leave only well-formed messages: one pass copies out the token,
        // each option value and the payload (one allocation each, none for the empty ones).
        let first = bytes[field::VER_TYPE_TKL];
        let kind = match (first >> 4) & 0x03 {
            0 => MessageType::Confirmable,
            1 => MessageType::NonConfirmable,
            2 => MessageType::Acknowledgement,
            _ => MessageType::Reset,
        };
        let token_len = usize::from(first & 0x0F);
        let token_end = field::HEADER_LEN + token_len;
        let mut options = Vec::new();
        let mut offset = token_end;
        let mut number: u32 = 0;
        let mut payload = Vec::new();
        while offset < bytes.len() {
            let byte = bytes[offset];
            if byte == PAYLOAD_MARKER {
                payload = bytes[offset + 1..].to_vec();
                break;
            }
            let start = offset;
            offset += 1;
            let delta = read_extended(bytes, &mut offset, byte >> 4, start, "option delta")?;
            let length = read_extended(bytes, &mut offset, byte & 0x0F, start, "option length")?;
            // coap-lite, which decoded these before, refused a length that does not fit 16
            // bits; the error stays the same.
            if length > u32::from(u16::MAX) {
                return Err(CoapError::Decoder("InvalidOptionLength".into()));
            }
            number += delta;
            let end = offset + length as usize;
            let value = bytes.get(offset..end).ok_or(CoapError::Truncated {
                what: "option value",
                offset,
                needed: length as usize,
                available: bytes.len() - offset,
            })?;
            options.push(CoapOption {
                number: u16::try_from(number).map_err(|_| CoapError::OptionNumberTooLarge {
                    offset: start,
                    number,
                })?,
                value: value.to_vec(),
            });
            offset = end;
        }
        Ok(Message {
            kind,
            code: Code(bytes[field::CODE]),
            message_id: u16::from_be_bytes([bytes[2], bytes[3]]),
            token: bytes[field::HEADER_LEN..token_end].to_vec(),
            options,
            payload,
        })
    }

    /// Encodes the message. Refuses what a Particle peer could not read: a token longer than 8
    /// bytes, options out of order, an option before Uri-Path in a message that has Uri-Path, an
    /// empty message with content, a reserved code class.
    pub fn emit(&self) -> Result<Vec<u8>, CoapError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.emit_into(&mut out)?;
        Ok(out)
    }

    /// Bytes [`Message::emit`] produces (for a message it accepts).
    pub fn encoded_len(&self) -> usize {
        let mut len = field::HEADER_LEN + self.token.len();
        let mut previous = 0u16;
        for option in &self.options {
            let delta = usize::from(option.number.saturating_sub(previous));
            len += 1 + extension_len(delta) + extension_len(option.value.len());
            len += option.value.len();
            previous = option.number;
        }
        if !self.payload.is_empty() {
            len += 1 + self.payload.len();
        }
        len
    }

    /// [`Message::emit`] appending to `out` (a buffer the caller reuses): no allocation when
    /// `out` has the room. On an error nothing is appended.
    pub fn emit_into(&self, out: &mut Vec<u8>) -> Result<(), CoapError> {
        self.check_emittable()?;
        out.reserve(self.encoded_len());
        encode(
            self.kind,
            self.code,
            self.message_id,
            &self.token,
            self.options.iter().map(|o| (o.number, o.value.as_slice())),
            &self.payload,
            out,
        );
        Ok(())
    }

    fn check_emittable(&self) -> Result<(), CoapError> {
        if self.token.len() > MAX_TOKEN_LEN {
            return Err(CoapError::TokenTooLong {
                length: self.token.len(),
            });
        }
        if self.code.is_reserved() {
            return Err(CoapError::ReservedCode { code: self.code });
        }
        if self.code.is_empty()
            && (!self.token.is_empty() || !self.options.is_empty() || !self.payload.is_empty())
        {
            return Err(CoapError::EmptyMessageWithContent {
                token_len: self.token.len(),
                options: self.options.len(),
                payload_len: self.payload.len(),
            });
        }
        let mut previous = 0u16;
        for option in &self.options {
            if option.number < previous {
                return Err(CoapError::OptionsOutOfOrder {
                    previous,
                    number: option.number,
                });
            }
            if option.value.len() > usize::from(u16::MAX) + 269 {
                return Err(CoapError::OptionValueTooLong {
                    number: option.number,
                    length: option.value.len(),
                });
            }
            previous = option.number;
        }
        if self.has_option(super::option::URI_PATH) {
            if let Some(first) = self.options.first() {
                if first.number != super::option::URI_PATH {
                    return Err(CoapError::UriPathNotFirst {
                        first: first.number,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Appends the message made of these parts to `out` without building a [`Message`] (the OTA
/// sender's chunks: no copy of the payload on the way). The same checks and bytes as
/// [`Message::emit`]; on an error nothing is appended.
pub fn emit_parts_into(
    kind: MessageType,
    code: Code,
    message_id: u16,
    token: &[u8],
    options: &[(u16, &[u8])],
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CoapError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(CoapError::TokenTooLong {
            length: token.len(),
        });
    }
    if code.is_reserved() {
        return Err(CoapError::ReservedCode { code });
    }
    if code.is_empty() && (!token.is_empty() || !options.is_empty() || !payload.is_empty()) {
        return Err(CoapError::EmptyMessageWithContent {
            token_len: token.len(),
            options: options.len(),
            payload_len: payload.len(),
        });
    }
    let mut previous = 0u16;
    for &(number, value) in options {
        if number < previous {
            return Err(CoapError::OptionsOutOfOrder { previous, number });
        }
        if value.len() > usize::from(u16::MAX) + 269 {
            return Err(CoapError::OptionValueTooLong {
                number,
                length: value.len(),
            });
        }
        previous = number;
    }
    let has_uri_path = options.iter().any(|(n, _)| *n == super::option::URI_PATH);
    if let (true, Some(&(first, _))) = (has_uri_path, options.first()) {
        if first != super::option::URI_PATH {
            return Err(CoapError::UriPathNotFirst { first });
        }
    }
    encode(
        kind,
        code,
        message_id,
        token,
        options.iter().copied(),
        payload,
        out,
    );
    Ok(())
}

/// The wire bytes of a checked message (RFC 7252 §3).
fn encode<'a>(
    kind: MessageType,
    code: Code,
    message_id: u16,
    token: &[u8],
    options: impl Iterator<Item = (u16, &'a [u8])>,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    // Ver | T | TKL, Code, Message ID, Token.
    let kind: u8 = match kind {
        MessageType::Confirmable => 0,
        MessageType::NonConfirmable => 1,
        MessageType::Acknowledgement => 2,
        MessageType::Reset => 3,
    };
    out.push(VERSION << 6 | kind << 4 | token.len() as u8);
    out.push(code.0);
    out.extend_from_slice(&message_id.to_be_bytes());
    out.extend_from_slice(token);
    // §3.1: each option as delta and length nibbles (13: one more byte, value - 13; 14: two
    // more bytes, value - 269), then its value.
    let mut previous = 0u16;
    for (number, value) in options {
        let delta = usize::from(number - previous);
        out.push(nibble(delta) << 4 | nibble(value.len()));
        push_extension(out, delta);
        push_extension(out, value.len());
        out.extend_from_slice(value);
        previous = number;
    }
    if !payload.is_empty() {
        out.push(PAYLOAD_MARKER);
        out.extend_from_slice(payload);
    }
}

/// The 4-bit form of an option delta or length (§3.1).
fn nibble(value: usize) -> u8 {
    match value {
        0..=12 => value as u8,
        13..=268 => 13,
        _ => 14,
    }
}

/// Extension bytes after the nibbles for `value`.
fn extension_len(value: usize) -> usize {
    match value {
        0..=12 => 0,
        13..=268 => 1,
        _ => 2,
    }
}

fn push_extension(out: &mut Vec<u8>, value: usize) {
    match value {
        0..=12 => {}
        13..=268 => out.push((value - 13) as u8),
        _ => out.extend_from_slice(&((value - 269) as u16).to_be_bytes()),
    }
}

/// Walks the whole message once and refuses every message format error of RFC 7252 §3 and
/// §4.2/§4.3 that coap-lite accepts. Does not allocate.
fn check_wire_format(bytes: &[u8]) -> Result<(), CoapError> {
    if bytes.len() < field::HEADER_LEN {
        return Err(CoapError::Truncated {
            what: "header",
            offset: 0,
            needed: field::HEADER_LEN,
            available: bytes.len(),
        });
    }
    let first = bytes[field::VER_TYPE_TKL];
    let version = first >> 6;
    if version != VERSION {
        return Err(CoapError::UnsupportedVersion { version });
    }
    let token_len = usize::from(first & 0x0F);
    if token_len > MAX_TOKEN_LEN {
        return Err(CoapError::TokenLengthReserved { length: token_len });
    }
    let code = Code(bytes[field::CODE]);
    if code.is_reserved() {
        return Err(CoapError::ReservedCode { code });
    }
    let _message_id = &bytes[field::MESSAGE_ID];
    let rest = &bytes[field::TOKEN];
    if rest.len() < token_len {
        return Err(CoapError::Truncated {
            what: "token",
            offset: field::HEADER_LEN,
            needed: token_len,
            available: rest.len(),
        });
    }
    if code.is_empty() {
        // RFC 7252 §4.1: an empty message is exactly the 4-byte header.
        if token_len != 0 || bytes.len() != field::HEADER_LEN {
            return Err(CoapError::EmptyMessageWithContent {
                token_len,
                options: usize::from(bytes.len() > field::HEADER_LEN + token_len),
                payload_len: bytes.len().saturating_sub(field::HEADER_LEN + token_len),
            });
        }
        return Ok(());
    }

    let mut offset = field::HEADER_LEN + token_len;
    let mut number: u32 = 0;
    let mut first_option = None;
    while offset < bytes.len() {
        let byte = bytes[offset];
        if byte == PAYLOAD_MARKER {
            if offset + 1 == bytes.len() {
                return Err(CoapError::EmptyPayloadAfterMarker { offset });
            }
            break;
        }
        let start = offset;
        offset += 1;
        let delta = read_extended(bytes, &mut offset, byte >> 4, start, "option delta")?;
        let length = read_extended(bytes, &mut offset, byte & 0x0F, start, "option length")?;
        number += delta;
        if number > u32::from(u16::MAX) {
            return Err(CoapError::OptionNumberTooLarge {
                offset: start,
                number,
            });
        }
        let available = bytes.len() - offset;
        if available < length as usize {
            return Err(CoapError::Truncated {
                what: "option value",
                offset,
                needed: length as usize,
                available,
            });
        }
        offset += length as usize;
        let number = number as u16;
        match first_option {
            None => first_option = Some(number),
            Some(first) if number == super::option::URI_PATH && first != number => {
                return Err(CoapError::UriPathNotFirst { first });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Reads the 4-bit delta or length `nibble` and its extension bytes (13 => +1 byte, 14 => +2
/// bytes, 15 => reserved).
fn read_extended(
    bytes: &[u8],
    offset: &mut usize,
    nibble: u8,
    start: usize,
    what: &'static str,
) -> Result<u32, CoapError> {
    match nibble {
        0..=12 => Ok(u32::from(nibble)),
        13 => {
            let Some(ext) = bytes.get(*offset) else {
                return Err(CoapError::Truncated {
                    what,
                    offset: *offset,
                    needed: 1,
                    available: 0,
                });
            };
            *offset += 1;
            Ok(u32::from(*ext) + 13)
        }
        14 => {
            let Some(ext) = bytes.get(*offset..*offset + 2) else {
                return Err(CoapError::Truncated {
                    what,
                    offset: *offset,
                    needed: 2,
                    available: bytes.len().saturating_sub(*offset),
                });
            };
            *offset += 2;
            Ok(u32::from(u16::from_be_bytes([ext[0], ext[1]])) + 269)
        }
        _ => Err(CoapError::ReservedOptionNibble {
            offset: start,
            what,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoder `emit` had before (coap-lite's): `emit_into` must give the same bytes.
    fn lite_emit(m: &Message) -> Vec<u8> {
        use coap_lite::{CoapOption as LiteOption, MessageClass, Packet};
        let mut packet = Packet::new();
        packet.header.set_version(VERSION);
        packet.header.set_type(m.kind.to_lite());
        packet.header.code = MessageClass::from(m.code.0);
        packet.header.message_id = m.message_id;
        packet.set_token(m.token.clone());
        for option in &m.options {
            packet.add_option(LiteOption::from(option.number), option.value.clone());
        }
        packet.payload = m.payload.clone();
        packet.to_bytes_unlimited().unwrap()
    }

    /// The decoder `parse` had before (coap-lite's, after the same wire-format check).
    fn lite_parse(bytes: &[u8]) -> Result<Message, CoapError> {
        use coap_lite::Packet;
        check_wire_format(bytes)?;
        let packet =
            Packet::from_bytes(bytes).map_err(|error| CoapError::Decoder(format!("{error:?}")))?;
        let mut options = Vec::new();
        for (number, values) in packet.options() {
            for value in values {
                options.push(CoapOption::new(*number, value.clone()));
            }
        }
        Ok(Message {
            kind: MessageType::from_lite(packet.header.get_type()),
            code: Code(u8::from(packet.header.code)),
            message_id: packet.header.message_id,
            token: packet.get_token().to_vec(),
            options,
            payload: packet.payload,
        })
    }

    #[test]
    fn parse_decodes_what_coap_lite_decoded_and_refuses_what_it_refused() {
        let mut seed = 0x9e37_79b9u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let mut samples: Vec<Vec<u8>> = Vec::new();
        // Valid messages, then each with bytes changed, cut or added.
        for len in [0usize, 1, 13, 300] {
            let mut m = Message::new(MessageType::NonConfirmable, Code::POST, 0x4242);
            m.token = vec![1, 2];
            m.options.push(CoapOption::new(11, b"C".to_vec()));
            m.options.push(CoapOption::new(2049, vec![3u8; len % 5]));
            m.options.push(CoapOption::new(2049, vec![4u8; len]));
            m.payload = vec![0x77; len];
            samples.push(m.emit().unwrap());
        }
        for i in 0..20_000 {
            let base = samples[i % 4].clone();
            let mut b = base;
            match next() % 4 {
                0 => {
                    let at = next() as usize % b.len();
                    b[at] = next() as u8;
                }
                1 => b.truncate(next() as usize % (b.len() + 1)),
                2 => b.push(next() as u8),
                _ => b = (0..next() % 40).map(|_| next() as u8).collect(),
            }
            samples.push(b);
        }
        // A 16-bit option length past u16::MAX (coap-lite refused it).
        let mut long = vec![0x40, 0x02, 0, 1, 0xbe, 0xff, 0xff];
        long.resize(long.len() + 65_535 + 269, 0);
        samples.push(long);
        for bytes in &samples {
            assert_eq!(Message::parse(bytes), lite_parse(bytes), "{bytes:02x?}");
        }
    }

    #[test]
    fn emit_gives_the_bytes_coap_lite_gave() {
        let kinds = [
            MessageType::Confirmable,
            MessageType::NonConfirmable,
            MessageType::Acknowledgement,
            MessageType::Reset,
        ];
        let lengths = [0usize, 1, 12, 13, 14, 268, 269, 270, 600];
        let numbers = [0u16, 3, 11, 12, 13, 14, 15, 268, 269, 270, 282, 2048, 65000];
        let mut messages = Vec::new();
        for (i, &kind) in kinds.iter().enumerate() {
            for &len in &lengths {
                for &number in &numbers {
                    let mut m = Message::new(kind, Code::POST, 0x1234 + i as u16);
                    m.token = vec![0xa5; i * 2];
                    m.options.push(CoapOption::new(number, vec![7u8; len]));
                    m.options.push(CoapOption::new(number, vec![8u8; len / 2]));
                    m.options
                        .push(CoapOption::new(number.saturating_add(300), vec![9u8; 3]));
                    m.payload = vec![0x42; len];
                    messages.push(m);
                }
            }
        }
        messages.push(Message::new(MessageType::Confirmable, Code::EMPTY, 7));
        messages.push(Message::new(MessageType::Acknowledgement, Code::CHANGED, 8));
        for m in &messages {
            let mut out = vec![0xee];
            m.emit_into(&mut out).unwrap();
            assert_eq!(&out[1..], lite_emit(m).as_slice(), "{m:?}");
            assert_eq!(out.len() - 1, m.encoded_len());
            assert_eq!(m.emit().unwrap(), lite_emit(m));
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).expect("hex literal")
    }

    #[test]
    fn hello_from_the_capture_round_trips() {
        let bytes =
            hex("40020001b168ff0003ffff00b6000d000ca6e8c393e942e9ea3eb89d151838048000a000000200");
        let message = Message::parse(&bytes).unwrap();
        assert_eq!(message.kind, MessageType::Confirmable);
        assert_eq!(message.code, Code::POST);
        assert_eq!(message.message_id, 1);
        assert!(message.token.is_empty());
        assert_eq!(message.options, vec![CoapOption::new(11, b"h".to_vec())]);
        assert_eq!(message.payload.len(), 32);
        assert_eq!(message.emit().unwrap(), bytes);
    }

    #[test]
    fn update_start_example_uses_two_byte_extended_deltas() {
        // Reference §2.2: File-Size 9965, File-Sha256, Chunk-Size 512.
        let mut bytes = hex("4102 1234 aa b153 e206f126ed 4d13");
        bytes.extend([0x11; 32]);
        bytes.extend(hex("420200"));
        let message = Message::parse(&bytes).unwrap();
        let numbers: Vec<u16> = message.options.iter().map(|o| o.number).collect();
        assert_eq!(numbers, vec![11, 2057, 2061, 2065]);
        assert_eq!(decode_uint(message.option(2057).unwrap()), Some(9965));
        assert_eq!(message.emit().unwrap(), bytes);
    }

    #[test]
    fn uint_options_are_never_three_bytes_long() {
        assert_eq!(encode_uint(0), Vec::<u8>::new());
        assert_eq!(encode_uint(0x80), vec![0x80]);
        assert_eq!(encode_uint(0x1388), vec![0x13, 0x88]);
        assert_eq!(encode_uint(0x01_0000), vec![0, 1, 0, 0]);
        assert_eq!(decode_uint(&[0, 1, 0]), Some(256));
        assert_eq!(decode_uint(&[1, 2, 3, 4, 5]), None);
    }

    #[test]
    fn version_other_than_one_is_refused() {
        for first in [0x00, 0x80, 0xC0] {
            assert_eq!(
                Message::parse(&[first, 0, 0, 1]),
                Err(CoapError::UnsupportedVersion {
                    version: first >> 6
                })
            );
        }
    }

    #[test]
    fn empty_message_with_token_or_payload_is_refused() {
        assert!(matches!(
            Message::parse(&hex("61000001aa")),
            Err(CoapError::EmptyMessageWithContent { token_len: 1, .. })
        ));
        assert!(matches!(
            Message::parse(&hex("60000001ff01")),
            Err(CoapError::EmptyMessageWithContent { .. })
        ));
        assert!(matches!(
            Message::parse(&hex("60000001b168")),
            Err(CoapError::EmptyMessageWithContent { .. })
        ));
    }

    #[test]
    fn payload_marker_without_payload_is_refused() {
        assert_eq!(
            Message::parse(&hex("40020001b168ff")),
            Err(CoapError::EmptyPayloadAfterMarker { offset: 6 })
        );
    }

    #[test]
    fn reserved_nibbles_token_lengths_and_codes_are_refused() {
        assert!(matches!(
            Message::parse(&hex("40020001f1")),
            Err(CoapError::ReservedOptionNibble { offset: 4, .. })
        ));
        assert!(matches!(
            Message::parse(&hex("4002000111")),
            Err(CoapError::Truncated { .. }) | Err(CoapError::ReservedOptionNibble { .. })
        ));
        assert_eq!(
            Message::parse(&hex("49020001")),
            Err(CoapError::TokenLengthReserved { length: 9 })
        );
        assert_eq!(
            Message::parse(&hex("40e00001")),
            Err(CoapError::ReservedCode { code: Code(0xE0) })
        );
    }

    #[test]
    fn truncated_option_value_is_refused() {
        assert!(matches!(
            Message::parse(&hex("40020001b3 6868")),
            Err(CoapError::Truncated {
                what: "option value",
                ..
            })
        ));
        assert!(matches!(
            Message::parse(&hex("40020001e106")),
            Err(CoapError::Truncated {
                what: "option delta",
                ..
            })
        ));
    }

    #[test]
    fn option_numbers_beyond_u16_are_refused() {
        assert!(matches!(
            Message::parse(&hex("40020001e0ffff e0ffff")),
            Err(CoapError::OptionNumberTooLarge { .. })
        ));
    }

    #[test]
    fn emit_refuses_options_out_of_order_and_uri_path_after_other_options() {
        let mut message = Message::new(MessageType::Confirmable, Code::POST, 1);
        message.push_option(CoapOption::new(15, vec![1]));
        message.push_option(CoapOption::new(11, b"d".to_vec()));
        assert_eq!(
            message.emit(),
            Err(CoapError::OptionsOutOfOrder {
                previous: 15,
                number: 11
            })
        );
        let mut message = Message::new(MessageType::Confirmable, Code::GET, 1);
        message.push_option(CoapOption::new(4, vec![1]));
        message.push_option(CoapOption::new(11, b"d".to_vec()));
        assert_eq!(message.emit(), Err(CoapError::UriPathNotFirst { first: 4 }));
    }

    #[test]
    fn codes_display_as_class_dot_detail() {
        assert_eq!(Code::CHANGED.to_string(), "2.04");
        assert_eq!(Code::SERVICE_UNAVAILABLE.to_string(), "5.03");
        assert_eq!(Code(0x45), Code::CONTENT);
    }
}
