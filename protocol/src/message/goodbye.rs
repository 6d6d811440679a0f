//! Goodbye (reference §1.12): POST `x`, no token; the NON form adds an empty No-Response option
//! (258). Payload: a varint of flags (1 cloud reason, 2 reset reason, 4 sleep duration, 8 network
//! reason), then the present values as varints, in that order. The varints are unsigned LEB128
//! (choice recorded in [`super`]).

use super::{check_options, flag_value, uri_path, CatalogueError};
use crate::coap::{option, CoapOption, Code, Message};

const HAS_CLOUD_REASON: u32 = 1;
const HAS_RESET_REASON: u32 = 2;
const HAS_SLEEP_DURATION: u32 = 4;
const HAS_NETWORK_REASON: u32 = 8;

/// Cloud disconnect reasons carried in a Goodbye.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloudDisconnectReason;

impl CloudDisconnectReason {
    pub const ERROR: u32 = 1;
    pub const USER: u32 = 2;
    pub const NETWORK: u32 = 3;
    pub const LISTENING: u32 = 4;
    pub const SYSTEM_RESET: u32 = 5;
    pub const SLEEP: u32 = 6;
    pub const UNKNOWN: u32 = 7;
    pub const SERVER_MOVED: u32 = 8;
    /// Reset reason "update" (`services/inc/system_defs.h`).
    pub const RESET_REASON_UPDATE: u32 = 70;
}

/// A graceful disconnect notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Goodbye {
    pub cloud_reason: Option<u32>,
    pub reset_reason: Option<u32>,
    /// Seconds.
    pub sleep_duration: Option<u32>,
    pub network_reason: Option<u32>,
    /// The NON form carries No-Response.
    pub no_response: bool,
}

impl Goodbye {
    pub(super) fn from_coap(message: &Message) -> Result<Goodbye, CatalogueError> {
        const WHAT: &str = "Goodbye";
        check_options(message, WHAT, &[option::NO_RESPONSE], 1..=1)?;
        let no_response = flag_value(
            WHAT,
            option::NO_RESPONSE,
            message.option(option::NO_RESPONSE),
        )?;
        let mut input = message.payload.as_slice();
        let flags = read_varint(&mut input)?;
        if flags & !0x0F != 0 {
            return Err(CatalogueError::InvalidField {
                message: WHAT,
                field: "flags",
                reason: format!("unknown bits in {flags:#x}"),
            });
        }
        let mut field = |bit: u32| -> Result<Option<u32>, CatalogueError> {
            if flags & bit != 0 {
                read_varint(&mut input).map(Some)
            } else {
                Ok(None)
            }
        };
        let goodbye = Goodbye {
            cloud_reason: field(HAS_CLOUD_REASON)?,
            reset_reason: field(HAS_RESET_REASON)?,
            sleep_duration: field(HAS_SLEEP_DURATION)?,
            network_reason: field(HAS_NETWORK_REASON)?,
            no_response,
        };
        if !input.is_empty() {
            return Err(CatalogueError::PayloadLength {
                message: WHAT,
                length: message.payload.len(),
                expected: "exactly the varints its flags announce",
            });
        }
        Ok(goodbye)
    }

    pub(super) fn parts(&self) -> (Code, Vec<CoapOption>, Vec<u8>) {
        let mut options = vec![uri_path("x")];
        if self.no_response {
            options.push(CoapOption::new(option::NO_RESPONSE, Vec::new()));
        }
        let fields = [
            (HAS_CLOUD_REASON, self.cloud_reason),
            (HAS_RESET_REASON, self.reset_reason),
            (HAS_SLEEP_DURATION, self.sleep_duration),
            (HAS_NETWORK_REASON, self.network_reason),
        ];
        let flags = fields
            .iter()
            .filter(|(_, v)| v.is_some())
            .fold(0, |acc, (bit, _)| acc | bit);
        let mut payload = Vec::new();
        write_varint(&mut payload, flags);
        for value in fields.iter().filter_map(|(_, v)| *v) {
            write_varint(&mut payload, value);
        }
        (Code::POST, options, payload)
    }
}

fn read_varint(input: &mut &[u8]) -> Result<u32, CatalogueError> {
    let mut value: u64 = 0;
    for i in 0..5 {
        let Some((&byte, rest)) = input.split_first() else {
            return Err(CatalogueError::InvalidField {
                message: "Goodbye",
                field: "varint",
                reason: "truncated".into(),
            });
        };
        *input = rest;
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return u32::try_from(value).map_err(|_| CatalogueError::InvalidField {
                message: "Goodbye",
                field: "varint",
                reason: "larger than 32 bits".into(),
            });
        }
    }
    Err(CatalogueError::InvalidField {
        message: "Goodbye",
        field: "varint",
        reason: "longer than 5 bytes".into(),
    })
}

fn write_varint(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::MessageType;
    use crate::message::{Body, ParticleMessage};

    #[test]
    fn goodbye_before_update_reset_round_trips() {
        let message = ParticleMessage {
            kind: MessageType::NonConfirmable,
            message_id: 0x20,
            token: Vec::new(),
            body: Body::Goodbye(Goodbye {
                cloud_reason: Some(CloudDisconnectReason::SYSTEM_RESET),
                reset_reason: Some(CloudDisconnectReason::RESET_REASON_UPDATE),
                sleep_duration: None,
                network_reason: None,
                no_response: true,
            }),
        };
        let bytes = message.emit().unwrap();
        // 50 02 0020 | b1 78 | e0 00 e5 (No-Response, 258 - 11 = 247 => 13 + 234) ...
        assert_eq!(
            bytes,
            vec![0x50, 0x02, 0x00, 0x20, 0xB1, b'x', 0xD0, 0xEA, 0xFF, 0x03, 0x05, 0x46]
        );
        assert_eq!(ParticleMessage::parse(&bytes).unwrap(), message);
    }

    #[test]
    fn sleep_duration_uses_multi_byte_varint() {
        let goodbye = Goodbye {
            cloud_reason: Some(CloudDisconnectReason::SLEEP),
            sleep_duration: Some(300),
            ..Goodbye::default()
        };
        let (_, _, payload) = goodbye.parts();
        assert_eq!(payload, vec![0x05, 0x06, 0xAC, 0x02]);
    }

    #[test]
    fn truncated_goodbye_payload_is_refused() {
        for payload in [&[][..], &[0x03, 0x05], &[0x01, 0x80], &[0x10]] {
            let mut bytes = vec![0x40, 0x02, 0, 1, 0xB1, b'x'];
            if !payload.is_empty() {
                bytes.push(0xFF);
                bytes.extend_from_slice(payload);
            }
            assert!(ParticleMessage::parse(&bytes).is_err(), "{payload:?}");
        }
    }
}
