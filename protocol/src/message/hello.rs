//! Hello: the first message after the DTLS handshake (reference §1.7). CON POST `h`, no token,
//! a 32-byte payload:
//!
//! ```text
//! offset size field
//!  0     2 BE product_id
//!  2     2 BE product firmware version
//!  4     2 BE flags (HelloFlags)
//!  6     2 BE platform_id
//!  8     1    reserved (0)
//!  9     1    device id length (12)
//! 10    12    device id
//! 22     2 BE system module version
//! 24     2 BE max CoAP message size the device can receive
//! 26     4 BE max binary size (OTA region)
//! 30     2 BE preferred OTA chunk size
//! ```

use super::{check_options, CatalogueError};
use crate::coap::Message;

mod field {
    use core::ops::Range;
    pub const PRODUCT_ID: Range<usize> = 0..2;
    pub const PRODUCT_VERSION: Range<usize> = 2..4;
    pub const FLAGS: Range<usize> = 4..6;
    pub const PLATFORM_ID: Range<usize> = 6..8;
    pub const RESERVED: usize = 8;
    pub const DEVICE_ID_LEN: usize = 9;
    pub const DEVICE_ID: Range<usize> = 10..22;
    pub const SYSTEM_VERSION: Range<usize> = 22..24;
    pub const MAX_MESSAGE_SIZE: Range<usize> = 24..26;
    pub const MAX_BINARY_SIZE: Range<usize> = 26..30;
    pub const OTA_CHUNK_SIZE: Range<usize> = 30..32;
}

/// Length of the Hello payload.
pub const HELLO_PAYLOAD_LEN: usize = 32;
const DEVICE_ID_LEN: usize = 12;

/// Hello flags (`HelloFlag` in Device OS `protocol.cpp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HelloFlags(pub u16);

impl HelloFlags {
    /// Never set on Gen3 in practice.
    pub const OTA_UPGRADE_SUCCESSFUL: u16 = 0x01;
    pub const DIAGNOSTICS_SUPPORT: u16 = 0x02;
    pub const IMMEDIATE_UPDATES_SUPPORT: u16 = 0x04;
    pub const HANDSHAKE_COMPLETE: u16 = 0x08;
    pub const GOODBYE_SUPPORT: u16 = 0x10;
    pub const DEVICE_INITIATED_DESCRIBE: u16 = 0x20;
    pub const COMPRESSED_OTA: u16 = 0x40;
    pub const OTA_PROTOCOL_V3: u16 = 0x80;

    pub const fn contains(self, flag: u16) -> bool {
        self.0 & flag == flag
    }
}

/// The Hello payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub product_id: u16,
    pub product_version: u16,
    pub flags: HelloFlags,
    pub platform_id: u16,
    /// Always 0 from Device OS; kept so that re-emission is exact.
    pub reserved: u8,
    pub device_id: [u8; DEVICE_ID_LEN],
    pub system_version: u16,
    pub max_message_size: u16,
    pub max_binary_size: u32,
    pub ota_chunk_size: u16,
}

impl Hello {
    pub(super) fn from_coap(message: &Message) -> Result<Hello, CatalogueError> {
        check_options(message, "Hello", &[], 1..=1)?;
        Hello::parse_payload(&message.payload)
    }

    /// Reads the 32-byte payload.
    pub fn parse_payload(payload: &[u8]) -> Result<Hello, CatalogueError> {
        if payload.len() != HELLO_PAYLOAD_LEN {
            return Err(CatalogueError::PayloadLength {
                message: "Hello",
                length: payload.len(),
                expected: "32",
            });
        }
        let id_len = payload[field::DEVICE_ID_LEN];
        if usize::from(id_len) != DEVICE_ID_LEN {
            return Err(CatalogueError::InvalidField {
                message: "Hello",
                field: "device id length",
                reason: format!("{id_len}, expected 12"),
            });
        }
        let u16_at = |r: core::ops::Range<usize>| {
            u16::from_be_bytes([payload[r.start], payload[r.start + 1]])
        };
        let mut device_id = [0u8; DEVICE_ID_LEN];
        device_id.copy_from_slice(&payload[field::DEVICE_ID]);
        let b = &payload[field::MAX_BINARY_SIZE];
        Ok(Hello {
            product_id: u16_at(field::PRODUCT_ID),
            product_version: u16_at(field::PRODUCT_VERSION),
            flags: HelloFlags(u16_at(field::FLAGS)),
            platform_id: u16_at(field::PLATFORM_ID),
            reserved: payload[field::RESERVED],
            device_id,
            system_version: u16_at(field::SYSTEM_VERSION),
            max_message_size: u16_at(field::MAX_MESSAGE_SIZE),
            max_binary_size: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            ota_chunk_size: u16_at(field::OTA_CHUNK_SIZE),
        })
    }

    /// Writes the 32-byte payload.
    pub fn emit_payload(&self) -> [u8; HELLO_PAYLOAD_LEN] {
        let mut p = [0u8; HELLO_PAYLOAD_LEN];
        p[field::PRODUCT_ID].copy_from_slice(&self.product_id.to_be_bytes());
        p[field::PRODUCT_VERSION].copy_from_slice(&self.product_version.to_be_bytes());
        p[field::FLAGS].copy_from_slice(&self.flags.0.to_be_bytes());
        p[field::PLATFORM_ID].copy_from_slice(&self.platform_id.to_be_bytes());
        p[field::RESERVED] = self.reserved;
        p[field::DEVICE_ID_LEN] = DEVICE_ID_LEN as u8;
        p[field::DEVICE_ID].copy_from_slice(&self.device_id);
        p[field::SYSTEM_VERSION].copy_from_slice(&self.system_version.to_be_bytes());
        p[field::MAX_MESSAGE_SIZE].copy_from_slice(&self.max_message_size.to_be_bytes());
        p[field::MAX_BINARY_SIZE].copy_from_slice(&self.max_binary_size.to_be_bytes());
        p[field::OTA_CHUNK_SIZE].copy_from_slice(&self.ota_chunk_size.to_be_bytes());
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Body, ParticleMessage};

    #[test]
    fn reference_example_hello_round_trips() {
        // Reference §1.7: Boron, PRODUCT_VERSION(3), DOS 6.2.0 (device id filled in).
        let mut bytes = vec![
            0x40, 0x02, 0x00, 0x01, 0xB1, 0x68, 0xFF, 0x00, 0x0D, 0x00, 0x03, 0x00, 0xF6, 0x00,
            0x0D, 0x00, 0x0C,
        ];
        bytes.extend(0xA0..0xAC);
        bytes.extend([0x18, 0x38, 0x04, 0x80, 0x00, 0x17, 0x70, 0x00, 0x02, 0x00]);
        let message = ParticleMessage::parse(&bytes).unwrap();
        let Body::Hello(hello) = &message.body else {
            panic!("not a Hello: {message:?}")
        };
        assert_eq!(hello.product_id, 13);
        assert_eq!(hello.product_version, 3);
        assert_eq!(hello.flags, HelloFlags(0xF6));
        assert!(hello.flags.contains(HelloFlags::OTA_PROTOCOL_V3));
        assert!(!hello.flags.contains(HelloFlags::OTA_UPGRADE_SUCCESSFUL));
        assert_eq!(hello.platform_id, 13);
        assert_eq!(hello.system_version, 6200);
        assert_eq!(hello.max_message_size, 1152);
        assert_eq!(hello.max_binary_size, 1_536_000);
        assert_eq!(hello.ota_chunk_size, 512);
        assert_eq!(message.emit().unwrap(), bytes);
    }

    #[test]
    fn hello_with_short_payload_or_wrong_id_length_is_refused() {
        assert!(matches!(
            Hello::parse_payload(&[0; 31]),
            Err(CatalogueError::PayloadLength { length: 31, .. })
        ));
        let mut payload = [0u8; 32];
        payload[9] = 16;
        assert!(matches!(
            Hello::parse_payload(&payload),
            Err(CatalogueError::InvalidField { .. })
        ));
    }
}
