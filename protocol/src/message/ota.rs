//! OTA v3 messages (reference §2.2), private options 2049-2077 (see [`crate::coap::option`]).
//!
//! ```text
//! UpdateStart   C->D CON POST S, token   File-Size, [File-Sha256], Chunk-Size, [Discard-Data], [Module-Function]
//!   response    D->C CON 2.01, token     Window-Size, File-Size (= resume offset, 0 => empty)
//! UpdateChunk   C->D NON POST C          Chunk-Index (1-based), payload = chunk data
//! UpdateAck     D->C NON POST A          Chunk-Index (= chunks received without a gap),
//!                                        payload = bitmap, LE u32 words, bit b of word w <=> chunk
//!                                        index + 32*w + b + 1 received; trailing zero words omitted
//! UpdateFinish  C->D CON POST F, token   [Cancel-Update], [Discard-Data]
//!   response    D->C CON 2.04, token     JSON {"recv_chunks":..,"dup_chunks":..,"ooo_chunks":..,"sent_acks":..,"proc_time":..}
//! ```

use serde::{Deserialize, Serialize};

use super::{
    check_options, check_response_options, expect_code, expect_kind, flag_value, no_payload,
    uint_value, uri_path, CatalogueError, Response,
};
use crate::coap::{option, CoapOption, Code, Message, MessageType};

/// Smallest chunk size the device accepts.
pub const MIN_OTA_CHUNK_SIZE: u32 = 512;
/// Largest chunk size the device accepts: (1152 - 14) / 4 * 4.
pub const MAX_OTA_CHUNK_SIZE: u32 = 1136;
/// The device's receive window in bytes; the window in chunks is this / chunk size.
pub const OTA_RECEIVE_WINDOW_SIZE: u32 = 131_072;

fn require_token(what: &'static str, message: &Message) -> Result<(), CatalogueError> {
    if message.token.is_empty() {
        Err(CatalogueError::MissingToken { message: what })
    } else {
        Ok(())
    }
}

fn forbid_token(what: &'static str, message: &Message) -> Result<(), CatalogueError> {
    if message.token.is_empty() {
        Ok(())
    } else {
        Err(CatalogueError::UnexpectedToken {
            message: what,
            length: message.token.len(),
        })
    }
}

fn required_uint(
    what: &'static str,
    message: &Message,
    number: u16,
) -> Result<u32, CatalogueError> {
    let value = message
        .option(number)
        .ok_or(CatalogueError::MissingOption {
            message: what,
            option: number,
        })?;
    uint_value(what, number, value)
}

/// UpdateStart: the cloud offers a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateStart {
    /// Bytes as transferred; the device refuses 0.
    pub file_size: u32,
    /// SHA-256 of the whole file; absent => the transfer cannot be resumed.
    pub file_sha256: Option<[u8; 32]>,
    /// The device accepts 512..=1136, a multiple of 4.
    pub chunk_size: u32,
    pub discard_data: bool,
    /// Module function of the file (9 = asset), for the device's size pre-checks.
    pub module_function: Option<u32>,
}

impl UpdateStart {
    pub(super) fn from_coap(message: &Message) -> Result<UpdateStart, CatalogueError> {
        const WHAT: &str = "UpdateStart";
        check_options(
            message,
            WHAT,
            &[
                option::FILE_SIZE,
                option::FILE_SHA256,
                option::CHUNK_SIZE,
                option::DISCARD_DATA,
                option::MODULE_FUNCTION,
            ],
            1..=1,
        )?;
        expect_kind(WHAT, message, MessageType::Confirmable)?;
        require_token(WHAT, message)?;
        no_payload(WHAT, message)?;
        let file_sha256 = match message.option(option::FILE_SHA256) {
            None => None,
            Some(v) => Some(
                <[u8; 32]>::try_from(v).map_err(|_| CatalogueError::OptionLength {
                    message: WHAT,
                    option: option::FILE_SHA256,
                    length: v.len(),
                    expected: "32",
                })?,
            ),
        };
        Ok(UpdateStart {
            file_size: required_uint(WHAT, message, option::FILE_SIZE)?,
            file_sha256,
            chunk_size: required_uint(WHAT, message, option::CHUNK_SIZE)?,
            discard_data: flag_value(
                WHAT,
                option::DISCARD_DATA,
                message.option(option::DISCARD_DATA),
            )?,
            module_function: message
                .option(option::MODULE_FUNCTION)
                .map(|v| uint_value(WHAT, option::MODULE_FUNCTION, v))
                .transpose()?,
        })
    }

    pub(super) fn parts(&self) -> (Code, Vec<CoapOption>, Vec<u8>) {
        let mut options = vec![
            uri_path("S"),
            CoapOption::uint(option::FILE_SIZE, self.file_size),
        ];
        if let Some(hash) = &self.file_sha256 {
            options.push(CoapOption::new(option::FILE_SHA256, hash.to_vec()));
        }
        options.push(CoapOption::uint(option::CHUNK_SIZE, self.chunk_size));
        if self.discard_data {
            options.push(CoapOption::new(option::DISCARD_DATA, Vec::new()));
        }
        if let Some(function) = self.module_function {
            options.push(CoapOption::uint(option::MODULE_FUNCTION, function));
        }
        (Code::POST, options, Vec::new())
    }

    /// Number of chunks to send after `resume_offset`: ceil((file_size - offset) / chunk_size).
    pub fn chunk_count(&self, resume_offset: u32) -> u32 {
        if self.chunk_size == 0 {
            return 0;
        }
        self.file_size
            .saturating_sub(resume_offset)
            .div_ceil(self.chunk_size)
    }
}

/// The device's separate 2.01 response to an accepted UpdateStart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateStartResponse {
    /// Receive window in chunks.
    pub window_size: u32,
    /// Bytes already held from an earlier transfer of the same file; chunk 1 starts here.
    pub resume_offset: u32,
}

impl UpdateStartResponse {
    pub fn parse(response: &Response) -> Result<UpdateStartResponse, CatalogueError> {
        const WHAT: &str = "UpdateStart response";
        expect_code(WHAT, response.code, Code::CREATED)?;
        check_response_options(response, WHAT, &[option::WINDOW_SIZE, option::FILE_SIZE])?;
        if !response.payload.is_empty() {
            return Err(CatalogueError::UnexpectedPayload {
                message: WHAT,
                length: response.payload.len(),
            });
        }
        let get = |number| {
            response
                .option(number)
                .ok_or(CatalogueError::MissingOption {
                    message: WHAT,
                    option: number,
                })
                .and_then(|v| uint_value(WHAT, number, v))
        };
        Ok(UpdateStartResponse {
            window_size: get(option::WINDOW_SIZE)?,
            resume_offset: get(option::FILE_SIZE)?,
        })
    }

    pub fn emit(&self) -> Response {
        Response {
            code: Code::CREATED,
            options: vec![
                CoapOption::uint(option::WINDOW_SIZE, self.window_size),
                CoapOption::uint(option::FILE_SIZE, self.resume_offset),
            ],
            payload: Vec::new(),
        }
    }
}

/// UpdateChunk: one chunk of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateChunk {
    /// 1-based, relative to the resume offset.
    pub index: u32,
    pub data: Vec<u8>,
}

impl UpdateChunk {
    pub(super) fn from_coap(message: &Message) -> Result<UpdateChunk, CatalogueError> {
        const WHAT: &str = "UpdateChunk";
        check_options(message, WHAT, &[option::CHUNK_INDEX], 1..=1)?;
        expect_kind(WHAT, message, MessageType::NonConfirmable)?;
        forbid_token(WHAT, message)?;
        if message.payload.is_empty() {
            return Err(CatalogueError::PayloadLength {
                message: WHAT,
                length: 0,
                expected: "at least 1",
            });
        }
        Ok(UpdateChunk {
            index: required_uint(WHAT, message, option::CHUNK_INDEX)?,
            data: message.payload.clone(),
        })
    }

    /// Appends the CoAP bytes of the UpdateChunk of `index` carrying `data` (NON, no token,
    /// `message_id`) to `out`: the bytes `ParticleMessage::to_coap` then `Message::emit` give,
    /// without building either (the OTA sender's hot path).
    pub fn emit_coap_into(
        message_id: u16,
        index: u32,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), crate::coap::CoapError> {
        let index = index.to_be_bytes();
        // encode_uint: 0, 1, 2 or 4 bytes, never 3.
        let index: &[u8] = match u32::from_be_bytes(index) {
            0 => &[],
            1..=0xFF => &index[3..],
            0x100..=0xFFFF => &index[2..],
            _ => &index,
        };
        crate::coap::emit_parts_into(
            MessageType::NonConfirmable,
            Code::POST,
            message_id,
            &[],
            &[(option::URI_PATH, b"C"), (option::CHUNK_INDEX, index)],
            data,
            out,
        )
    }

    pub(super) fn parts(&self) -> (Code, Vec<CoapOption>, Vec<u8>) {
        (
            Code::POST,
            vec![
                uri_path("C"),
                CoapOption::uint(option::CHUNK_INDEX, self.index),
            ],
            self.data.clone(),
        )
    }
}

/// UpdateAck: which chunks the device holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateAck {
    /// Chunks 1..=cumulative are all received.
    pub cumulative: u32,
    /// Bit b of word w set <=> chunk `cumulative + 32*w + b + 1` received. Emitted as given;
    /// [`UpdateAck::from_received`] leaves out trailing zero words as the device does.
    pub bitmap: Vec<u32>,
}

impl UpdateAck {
    /// Builds an ack from the cumulative index and the indices received beyond it (others are
    /// ignored).
    pub fn from_received(cumulative: u32, received: impl IntoIterator<Item = u32>) -> UpdateAck {
        let mut bitmap: Vec<u32> = Vec::new();
        for index in received {
            let Some(bit) = index.checked_sub(cumulative + 1) else {
                continue;
            };
            let word = (bit / 32) as usize;
            if word >= 64 {
                continue;
            }
            if bitmap.len() <= word {
                bitmap.resize(word + 1, 0);
            }
            bitmap[word] |= 1 << (bit % 32);
        }
        while bitmap.last() == Some(&0) {
            bitmap.pop();
        }
        UpdateAck { cumulative, bitmap }
    }

    /// Whether chunk `index` is acknowledged.
    pub fn is_received(&self, index: u32) -> bool {
        if index == 0 {
            return false;
        }
        if index <= self.cumulative {
            return true;
        }
        let bit = index - self.cumulative - 1;
        self.bitmap
            .get((bit / 32) as usize)
            .is_some_and(|word| word & (1 << (bit % 32)) != 0)
    }

    pub(super) fn from_coap(message: &Message) -> Result<UpdateAck, CatalogueError> {
        const WHAT: &str = "UpdateAck";
        check_options(message, WHAT, &[option::CHUNK_INDEX], 1..=1)?;
        if message.payload.len() & 3 != 0 {
            return Err(CatalogueError::PayloadLength {
                message: WHAT,
                length: message.payload.len(),
                expected: "a multiple of 4",
            });
        }
        Ok(UpdateAck {
            cumulative: required_uint(WHAT, message, option::CHUNK_INDEX)?,
            bitmap: message
                .payload
                .chunks_exact(4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect(),
        })
    }

    pub(super) fn parts(&self) -> (Code, Vec<CoapOption>, Vec<u8>) {
        (
            Code::POST,
            vec![
                uri_path("A"),
                CoapOption::uint(option::CHUNK_INDEX, self.cumulative),
            ],
            self.bitmap.iter().flat_map(|w| w.to_le_bytes()).collect(),
        )
    }
}

/// UpdateFinish: all chunks sent (or cancel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpdateFinish {
    pub cancel: bool,
    pub discard_data: bool,
}

impl UpdateFinish {
    pub(super) fn from_coap(message: &Message) -> Result<UpdateFinish, CatalogueError> {
        const WHAT: &str = "UpdateFinish";
        check_options(
            message,
            WHAT,
            &[option::DISCARD_DATA, option::CANCEL_UPDATE],
            1..=1,
        )?;
        expect_kind(WHAT, message, MessageType::Confirmable)?;
        require_token(WHAT, message)?;
        no_payload(WHAT, message)?;
        Ok(UpdateFinish {
            cancel: flag_value(
                WHAT,
                option::CANCEL_UPDATE,
                message.option(option::CANCEL_UPDATE),
            )?,
            discard_data: flag_value(
                WHAT,
                option::DISCARD_DATA,
                message.option(option::DISCARD_DATA),
            )?,
        })
    }

    pub(super) fn parts(&self) -> (Code, Vec<CoapOption>, Vec<u8>) {
        let mut options = vec![uri_path("F")];
        if self.discard_data {
            options.push(CoapOption::new(option::DISCARD_DATA, Vec::new()));
        }
        if self.cancel {
            options.push(CoapOption::new(option::CANCEL_UPDATE, Vec::new()));
        }
        (Code::POST, options, Vec::new())
    }
}

/// The JSON statistics of the device's 2.04 answer to UpdateFinish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FinishStats {
    pub recv_chunks: u32,
    pub dup_chunks: u32,
    pub ooo_chunks: u32,
    pub sent_acks: u32,
    /// Milliseconds.
    pub proc_time: u32,
}

impl FinishStats {
    pub fn parse(payload: &[u8]) -> Result<FinishStats, CatalogueError> {
        serde_json::from_slice(payload).map_err(|e| CatalogueError::InvalidField {
            message: "UpdateFinish response",
            field: "JSON stats",
            reason: e.to_string(),
        })
    }

    pub fn emit(&self) -> Vec<u8> {
        // Serialising a struct of integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The 2.04 response carrying these stats.
    pub fn response(&self) -> Response {
        Response {
            code: Code::CHANGED,
            options: Vec::new(),
            payload: self.emit(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Body, ParticleMessage};

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).expect("hex literal")
    }

    #[test]
    fn a_chunk_emitted_in_place_is_the_message_emitted() {
        for index in [
            0u32,
            1,
            255,
            256,
            3072,
            65_535,
            65_536,
            0x0100_0000,
            u32::MAX,
        ] {
            for len in [1usize, 12, 13, 268, 269, 512] {
                let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let message = ParticleMessage {
                    kind: MessageType::NonConfirmable,
                    message_id: 0xbeef,
                    token: Vec::new(),
                    body: Body::UpdateChunk(UpdateChunk {
                        index,
                        data: data.clone(),
                    }),
                };
                let mut out = vec![1, 2];
                UpdateChunk::emit_coap_into(0xbeef, index, &data, &mut out).unwrap();
                assert_eq!(
                    out[2..],
                    message.emit().unwrap()[..],
                    "index {index} len {len}"
                );
            }
        }
    }

    #[test]
    fn reference_update_start_example_is_byte_exact() {
        // 41 02 MID MID TT  B1 53  E2 06 F1 26 ED  4D 13 <32 hash bytes>  42 02 00
        let hash = [0xC3; 32];
        let bytes = [
            hex("4102 0a0b 5c b153 e206f126ed 4d13"),
            hash.to_vec(),
            hex("420200"),
        ]
        .concat();
        let message = ParticleMessage::parse(&bytes).unwrap();
        let expected = UpdateStart {
            file_size: 9965,
            file_sha256: Some(hash),
            chunk_size: 512,
            discard_data: false,
            module_function: None,
        };
        assert_eq!(message.body, Body::UpdateStart(expected.clone()));
        assert_eq!(message.token, vec![0x5C]);
        assert_eq!(message.emit().unwrap(), bytes);
        assert_eq!(expected.chunk_count(0), 20);
    }

    #[test]
    fn reference_update_start_response_example_is_byte_exact() {
        // 41 41 MID' MID' TT  E2 06 F8 01 00  40 (window 256, offset 0)
        let bytes = hex("4141 0001 5c e206f80100 40");
        let message = ParticleMessage::parse(&bytes).unwrap();
        let Body::Response(response) = &message.body else {
            panic!()
        };
        let parsed = UpdateStartResponse::parse(response).unwrap();
        assert_eq!(
            parsed,
            UpdateStartResponse {
                window_size: 256,
                resume_offset: 0
            }
        );
        let rebuilt = ParticleMessage {
            body: Body::Response(parsed.emit()),
            ..message.clone()
        };
        assert_eq!(rebuilt.emit().unwrap(), bytes);
    }

    #[test]
    fn reference_update_chunk_example_is_byte_exact() {
        // 50 02 MID MID  B1 43  E1 06 E9 01  FF <512 bytes>
        let data = vec![0xAB; 512];
        let bytes = [hex("5002 0102 b143 e106e901 ff"), data.clone()].concat();
        let message = ParticleMessage::parse(&bytes).unwrap();
        assert_eq!(
            message.body,
            Body::UpdateChunk(UpdateChunk { index: 1, data })
        );
        assert_eq!(message.emit().unwrap(), bytes);
    }

    #[test]
    fn reference_update_ack_examples_are_byte_exact() {
        // Chunks 1-2 received, no gaps.
        let bytes = hex("5002 0003 b141 e106e902");
        let message = ParticleMessage::parse(&bytes).unwrap();
        assert_eq!(
            message.body,
            Body::UpdateAck(UpdateAck {
                cumulative: 2,
                bitmap: vec![]
            })
        );
        assert_eq!(message.emit().unwrap(), bytes);
        // Cumulative 0, chunk 2 received.
        let bytes = hex("5002 0004 b141 e006e9 ff 02000000");
        let message = ParticleMessage::parse(&bytes).unwrap();
        let Body::UpdateAck(ack) = &message.body else {
            panic!()
        };
        assert_eq!(ack, &UpdateAck::from_received(0, [2]));
        assert!(ack.is_received(2) && !ack.is_received(1) && !ack.is_received(3));
        assert_eq!(message.emit().unwrap(), bytes);
    }

    #[test]
    fn ack_bitmap_words_are_little_endian_and_trailing_zeros_dropped() {
        let ack = UpdateAck::from_received(10, [12, 11 + 32, 5, 10]);
        assert_eq!(ack.bitmap, vec![0b10, 0b1]);
        let (_, _, payload) = ack.parts();
        assert_eq!(payload, hex("02000000 01000000"));
        assert!(ack.is_received(7) && ack.is_received(43) && !ack.is_received(44));
    }

    #[test]
    fn update_finish_with_cancel_and_discard_round_trips() {
        let message = ParticleMessage {
            kind: MessageType::Confirmable,
            message_id: 0x0206,
            token: vec![0x32],
            body: Body::UpdateFinish(UpdateFinish {
                cancel: true,
                discard_data: true,
            }),
        };
        let bytes = message.emit().unwrap();
        // Discard-Data 2069 (delta 2058 => e0 06 fd), Cancel-Update 2073 (delta 4 => 40).
        assert_eq!(bytes, hex("4102 0206 32 b146 e006fd 40"));
        assert_eq!(ParticleMessage::parse(&bytes).unwrap(), message);
    }

    #[test]
    fn ota_messages_break_the_rules_with_typed_errors() {
        // UpdateStart without token.
        assert_eq!(
            ParticleMessage::parse(&hex("4002 0001 b153 e206f126ed 820200")),
            Err(CatalogueError::MissingToken {
                message: "UpdateStart"
            })
        );
        // File-Sha256 of 4 bytes.
        assert!(matches!(
            ParticleMessage::parse(&hex("4102 0001 aa b153 e206f126ed 4402000000 420200")),
            Err(CatalogueError::OptionLength { option: 2061, .. })
        ));
        // Chunk-Size missing.
        assert!(matches!(
            ParticleMessage::parse(&hex("4102 0001 aa b153 e206f126ed")),
            Err(CatalogueError::MissingOption { option: 2065, .. })
        ));
        // UpdateChunk sent as CON.
        assert!(matches!(
            ParticleMessage::parse(&hex("4002 0001 b143 e106e901 ff00")),
            Err(CatalogueError::WrongType { .. })
        ));
        // UpdateChunk without data.
        assert!(matches!(
            ParticleMessage::parse(&hex("5002 0001 b143 e106e901")),
            Err(CatalogueError::PayloadLength { .. })
        ));
        // UpdateAck bitmap not a multiple of 4.
        assert!(matches!(
            ParticleMessage::parse(&hex("5002 0001 b141 e106e901 ff0102")),
            Err(CatalogueError::PayloadLength { .. })
        ));
        // Discard-Data with a value.
        assert!(matches!(
            ParticleMessage::parse(&hex("4102 0001 32 b146 e106fd01")),
            Err(CatalogueError::OptionLength { option: 2069, .. })
        ));
        // Chunk-Index longer than 4 bytes.
        assert!(matches!(
            ParticleMessage::parse(&hex("5002 0001 b143 e506e90102030405 ff00")),
            Err(CatalogueError::OptionLength { option: 2049, .. })
        ));
    }

    #[test]
    fn finish_stats_json_is_byte_exact() {
        let json =
            br#"{"recv_chunks":5,"dup_chunks":0,"ooo_chunks":1,"sent_acks":4,"proc_time":0}"#;
        let stats = FinishStats::parse(json).unwrap();
        assert_eq!(stats.ooo_chunks, 1);
        assert_eq!(stats.emit(), json.to_vec());
        assert!(FinishStats::parse(b"{\"recv_chunks\":-1}").is_err());
    }
}
