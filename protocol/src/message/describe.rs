//! Describe (reference §1.10): device-initiated POST `d` (CON, token, \[Content-Format 42\],
//! Uri-Query = one flags byte, \[Block1\]), server-requested GET `d` (CON, token, Uri-Query flags,
//! \[Block2\]) and its response (\[Content-Format 42\], \[ETag\], \[Block2\]).
//!
//! Payloads: the system describe is the protobuf `particle.cloud.SystemDescribe`
//! (device-os-protobuf `cloud/describe.proto`; the message types below are written from its field
//! numbers), the application describe is JSON `{"f":[functions],"v":{"name":type}}`.

use core::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{
    check_options, check_response_options, expect_kind, uint_value, uri_path, CatalogueError,
    Response,
};
use crate::coap::{option, BlockOption, CoapOption, Code, Message, MessageType};

/// Content-Format 42 (application/octet-stream): the system describe's protobuf.
pub const CONTENT_FORMAT_OCTET_STREAM: u16 = 42;

/// What a describe covers (the Uri-Query byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DescribeFlags(pub u8);

impl DescribeFlags {
    pub const SYSTEM: DescribeFlags = DescribeFlags(1);
    pub const APPLICATION: DescribeFlags = DescribeFlags(2);
    pub const METRICS: DescribeFlags = DescribeFlags(4);

    fn parse(what: &'static str, message: &Message) -> Result<DescribeFlags, CatalogueError> {
        match message.option(option::URI_QUERY) {
            Some([flags]) => Ok(DescribeFlags(*flags)),
            Some(other) => Err(CatalogueError::OptionLength {
                message: what,
                option: option::URI_QUERY,
                length: other.len(),
                expected: "1",
            }),
            None => Err(CatalogueError::MissingOption {
                message: what,
                option: option::URI_QUERY,
            }),
        }
    }
}

fn block(
    what: &'static str,
    number: u16,
    value: Option<&[u8]>,
) -> Result<Option<BlockOption>, CatalogueError> {
    value
        .map(|v| {
            BlockOption::parse(number, v).map_err(|e| CatalogueError::InvalidField {
                message: what,
                field: "block option",
                reason: e.to_string(),
            })
        })
        .transpose()
}

fn block_option(number: u16, block: &BlockOption) -> Result<CoapOption, CatalogueError> {
    let value = block.emit().map_err(|e| CatalogueError::InvalidField {
        message: "describe",
        field: "block option",
        reason: e.to_string(),
    })?;
    Ok(CoapOption::new(number, value))
}

/// Device-initiated describe: POST `d` (one message, or one Block1 block of a large describe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Describe {
    pub flags: DescribeFlags,
    /// 42 for the system describe, absent for the application describe.
    pub content_format: Option<u16>,
    pub block1: Option<BlockOption>,
    /// The describe (or this block of it). See [`SystemDescribe`] and [`ApplicationDescribe`].
    pub payload: Vec<u8>,
}

impl Describe {
    pub(super) fn from_coap(message: &Message) -> Result<Describe, CatalogueError> {
        const WHAT: &str = "describe";
        check_options(
            message,
            WHAT,
            &[option::CONTENT_FORMAT, option::URI_QUERY, option::BLOCK1],
            1..=1,
        )?;
        let content_format = message
            .option(option::CONTENT_FORMAT)
            .map(|v| uint_value(WHAT, option::CONTENT_FORMAT, v))
            .transpose()?
            .map(|v| v as u16);
        if let Some(v) = message.option(option::CONTENT_FORMAT) {
            if v.len() > 2 {
                return Err(CatalogueError::OptionLength {
                    message: WHAT,
                    option: option::CONTENT_FORMAT,
                    length: v.len(),
                    expected: "0 to 2",
                });
            }
        }
        Ok(Describe {
            flags: DescribeFlags::parse(WHAT, message)?,
            content_format,
            block1: block(WHAT, option::BLOCK1, message.option(option::BLOCK1))?,
            payload: message.payload.clone(),
        })
    }

    pub(super) fn parts(&self) -> Result<(Code, Vec<CoapOption>, Vec<u8>), CatalogueError> {
        let mut options = vec![uri_path("d")];
        if let Some(cf) = self.content_format {
            options.push(CoapOption::uint(option::CONTENT_FORMAT, u32::from(cf)));
        }
        options.push(CoapOption::new(option::URI_QUERY, vec![self.flags.0]));
        if let Some(b) = &self.block1 {
            options.push(block_option(option::BLOCK1, b)?);
        }
        Ok((Code::POST, options, self.payload.clone()))
    }

    /// The messages bodies of a describe of `payload`, split into Block1 blocks as the device
    /// does when it does not fit in one message of `max_message_size` (reference §1.10).
    pub fn blocks(
        flags: DescribeFlags,
        content_format: Option<u16>,
        payload: &[u8],
        max_message_size: usize,
    ) -> Vec<Describe> {
        // Header, 1-byte token, Uri-Path, Content-Format, Uri-Query, payload marker.
        const OVERHEAD: usize = 4 + 1 + 2 + 2 + 2 + 1;
        if payload.len() + OVERHEAD <= max_message_size {
            return vec![Describe {
                flags,
                content_format,
                block1: None,
                payload: payload.to_vec(),
            }];
        }
        let size = crate::coap::BlockSize::for_describe(max_message_size);
        BlockOption::split(payload, size)
            .into_iter()
            .map(|(block, data)| Describe {
                flags,
                content_format,
                block1: Some(block),
                payload: data.to_vec(),
            })
            .collect()
    }
}

/// Server-requested describe: GET `d`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeRequest {
    pub flags: DescribeFlags,
    pub block2: Option<BlockOption>,
}

impl DescribeRequest {
    pub(super) fn from_coap(message: &Message) -> Result<DescribeRequest, CatalogueError> {
        const WHAT: &str = "describe request";
        check_options(message, WHAT, &[option::URI_QUERY, option::BLOCK2], 1..=1)?;
        expect_kind(WHAT, message, MessageType::Confirmable)?;
        Ok(DescribeRequest {
            flags: DescribeFlags::parse(WHAT, message)?,
            block2: block(WHAT, option::BLOCK2, message.option(option::BLOCK2))?,
        })
    }

    pub(super) fn parts(&self) -> Result<(Code, Vec<CoapOption>, Vec<u8>), CatalogueError> {
        let mut options = vec![
            uri_path("d"),
            CoapOption::new(option::URI_QUERY, vec![self.flags.0]),
        ];
        if let Some(b) = &self.block2 {
            options.push(block_option(option::BLOCK2, b)?);
        }
        Ok((Code::GET, options, Vec::new()))
    }
}

/// The device's answer to a [`DescribeRequest`]: 2.05 with \[Content-Format 42\], [ETag (1..4-byte
/// uint, new per describe)] and \[Block2\] for large describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeResponse {
    pub etag: Option<u32>,
    pub content_format: Option<u16>,
    pub block2: Option<BlockOption>,
    pub payload: Vec<u8>,
}

impl DescribeResponse {
    pub fn parse(response: &Response) -> Result<DescribeResponse, CatalogueError> {
        const WHAT: &str = "describe response";
        super::expect_code(WHAT, response.code, Code::CONTENT)?;
        check_response_options(
            response,
            WHAT,
            &[option::ETAG, option::CONTENT_FORMAT, option::BLOCK2],
        )?;
        let etag = match response.option(option::ETAG) {
            None => None,
            Some(v) if (1..=4).contains(&v.len()) => Some(uint_value(WHAT, option::ETAG, v)?),
            Some(v) => {
                return Err(CatalogueError::OptionLength {
                    message: WHAT,
                    option: option::ETAG,
                    length: v.len(),
                    expected: "1 to 4",
                })
            }
        };
        Ok(DescribeResponse {
            etag,
            content_format: response
                .option(option::CONTENT_FORMAT)
                .map(|v| uint_value(WHAT, option::CONTENT_FORMAT, v))
                .transpose()?
                .map(|v| v as u16),
            block2: block(WHAT, option::BLOCK2, response.option(option::BLOCK2))?,
            payload: response.payload.clone(),
        })
    }

    pub fn emit(&self) -> Result<Response, CatalogueError> {
        let mut options = Vec::new();
        if let Some(etag) = self.etag {
            // An ETag is never empty: 0 is written as one zero byte.
            let mut value = crate::coap::encode_uint(etag);
            if value.is_empty() {
                value.push(0);
            }
            options.push(CoapOption::new(option::ETAG, value));
        }
        if let Some(cf) = self.content_format {
            options.push(CoapOption::uint(option::CONTENT_FORMAT, u32::from(cf)));
        }
        if let Some(b) = &self.block2 {
            options.push(block_option(option::BLOCK2, b)?);
        }
        Ok(Response {
            code: Code::CONTENT,
            options,
            payload: self.payload.clone(),
        })
    }
}

/// `particle.cloud.FirmwareModuleType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum FirmwareModuleType {
    InvalidModule = 0,
    ResourceModule = 1,
    BootloaderModule = 2,
    MonoFirmwareModule = 3,
    SystemPartModule = 4,
    UserPartModule = 5,
    SettingsModule = 6,
    NcpFirmwareModule = 7,
    RadioStackModule = 8,
    AssetModule = 9,
}

/// `particle.cloud.FirmwareModuleStore`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum FirmwareModuleStore {
    MainModuleStore = 0,
    FactoryModuleStore = 1,
    BackupModuleStore = 2,
    ScratchpadModuleStore = 3,
}

/// `particle.cloud.FirmwareModuleSecurity`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FirmwareModuleSecurity {
    /// 0 none, 1 protected.
    #[prost(int32, tag = "1")]
    pub mode: i32,
    #[prost(bytes = "vec", tag = "2")]
    pub certificate_fingerprint: Vec<u8>,
}

/// `particle.cloud.FirmwareModuleDependency`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FirmwareModuleDependency {
    #[prost(enumeration = "FirmwareModuleType", tag = "1")]
    pub r#type: i32,
    #[prost(uint32, tag = "2")]
    pub index: u32,
    #[prost(uint32, tag = "3")]
    pub version: u32,
}

/// `particle.cloud.FirmwareModuleAsset`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FirmwareModuleAsset {
    #[prost(bytes = "vec", tag = "1")]
    pub hash: Vec<u8>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(uint32, tag = "3")]
    pub size: u32,
    #[prost(uint32, tag = "4")]
    pub storage_size: u32,
}

/// `particle.cloud.FirmwareModule`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FirmwareModule {
    #[prost(enumeration = "FirmwareModuleType", tag = "1")]
    pub r#type: i32,
    #[prost(uint32, tag = "2")]
    pub index: u32,
    #[prost(uint32, tag = "3")]
    pub version: u32,
    #[prost(enumeration = "FirmwareModuleStore", tag = "4")]
    pub store: i32,
    #[prost(uint32, tag = "5")]
    pub max_size: u32,
    /// Validation checks performed (INTEGRITY 0x02, DEPENDENCIES 0x04, RANGE 0x08, PLATFORM 0x10,
    /// PRODUCT 0x20, DEPENDENCIES_FULL 0x40).
    #[prost(fixed32, tag = "6")]
    pub checked_flags: u32,
    #[prost(fixed32, tag = "7")]
    pub passed_flags: u32,
    /// SHA-256, user part only.
    #[prost(bytes = "vec", optional, tag = "8")]
    pub hash: Option<Vec<u8>>,
    #[prost(message, repeated, tag = "9")]
    pub dependencies: Vec<FirmwareModuleDependency>,
    #[prost(message, repeated, tag = "10")]
    pub asset_dependencies: Vec<FirmwareModuleAsset>,
    #[prost(uint32, tag = "11")]
    pub size: u32,
    #[prost(message, optional, tag = "12")]
    pub security: Option<FirmwareModuleSecurity>,
}

/// `particle.cloud.SystemDescribe`: the system describe payload.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SystemDescribe {
    #[prost(message, repeated, tag = "1")]
    pub firmware_modules: Vec<FirmwareModule>,
    #[prost(string, optional, tag = "2")]
    pub imei: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub iccid: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub modem_firmware_version: Option<String>,
    #[prost(message, repeated, tag = "5")]
    pub assets: Vec<FirmwareModuleAsset>,
    #[prost(bool, tag = "6")]
    pub protected_state: bool,
    #[prost(bytes = "vec", optional, tag = "7")]
    pub env_vars_hash: Option<Vec<u8>>,
}

impl SystemDescribe {
    /// Decodes the protobuf payload.
    pub fn parse(payload: &[u8]) -> Result<SystemDescribe, CatalogueError> {
        <SystemDescribe as prost::Message>::decode(payload).map_err(|e| {
            CatalogueError::InvalidField {
                message: "system describe",
                field: "protobuf payload",
                reason: e.to_string(),
            }
        })
    }

    /// Encodes the protobuf payload.
    pub fn emit(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }
}

/// The application describe: functions and variables (type codes 1 bool, 2 int32, 4 string,
/// 9 double), in the order the device lists them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApplicationDescribe {
    pub functions: Vec<String>,
    pub variables: Vec<(String, u8)>,
}

impl ApplicationDescribe {
    pub fn parse(payload: &[u8]) -> Result<ApplicationDescribe, CatalogueError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            f: Vec<String>,
            v: Variables,
        }
        let raw: Raw =
            serde_json::from_slice(payload).map_err(|e| CatalogueError::InvalidField {
                message: "application describe",
                field: "JSON payload",
                reason: e.to_string(),
            })?;
        Ok(ApplicationDescribe {
            functions: raw.f,
            variables: raw.v.0,
        })
    }

    /// Compact JSON, as the device writes it.
    pub fn emit(&self) -> Vec<u8> {
        let mut out = String::from("{\"f\":[");
        for (i, f) in self.functions.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&json_string(f));
        }
        out.push_str("],\"v\":{");
        for (i, (name, ty)) in self.variables.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&json_string(name));
            out.push(':');
            out.push_str(&ty.to_string());
        }
        out.push_str("}}");
        out.into_bytes()
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The `"v"` object, in document order.
struct Variables(Vec<(String, u8)>);

impl<'de> Deserialize<'de> for Variables {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Variables, D::Error> {
        struct OrderedVisitor;
        impl<'de> Visitor<'de> for OrderedVisitor {
            type Value = Variables;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of variable name to type code")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Variables, A::Error> {
                let mut out = Vec::new();
                while let Some((name, ty)) = map.next_entry::<String, u8>()? {
                    out.push((name, ty));
                }
                Ok(Variables(out))
            }
        }
        deserializer.deserialize_map(OrderedVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_describe_keeps_variable_order() {
        let json = br#"{"f":["reboot","led"],"v":{"temp":9,"count":2,"name":4}}"#;
        let describe = ApplicationDescribe::parse(json).unwrap();
        assert_eq!(describe.functions, vec!["reboot", "led"]);
        assert_eq!(describe.variables[0], ("temp".to_owned(), 9));
        assert_eq!(describe.emit(), json.to_vec());
        assert_eq!(
            ApplicationDescribe::default().emit(),
            br#"{"f":[],"v":{}}"#.to_vec()
        );
    }

    #[test]
    fn malformed_application_describe_is_an_error() {
        for bad in [
            &b"{"[..],
            b"[]",
            br#"{"f":[1],"v":{}}"#,
            br#"{"f":[],"v":{"a":300}}"#,
        ] {
            assert!(ApplicationDescribe::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn large_describe_is_split_into_1024_byte_blocks() {
        let payload = vec![0x5A; 2500];
        let blocks = Describe::blocks(DescribeFlags::SYSTEM, Some(42), &payload, 1152);
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[0].block1.unwrap().size.bytes(), 1024);
        assert!(blocks[1].block1.unwrap().more);
        assert!(!blocks[2].block1.unwrap().more);
        let small = Describe::blocks(DescribeFlags::APPLICATION, None, b"{}", 1152);
        assert_eq!(small.len(), 1);
        assert!(small[0].block1.is_none());
    }

    #[test]
    fn block1_describe_puts_block1_after_uri_query() {
        use crate::message::{Body, ParticleMessage};
        let payload = vec![0x5A; 1200];
        let blocks = Describe::blocks(DescribeFlags::SYSTEM, Some(42), &payload, 1152);
        let first = ParticleMessage {
            kind: MessageType::Confirmable,
            message_id: 2,
            token: vec![0x77],
            body: Body::Describe(blocks[0].clone()),
        };
        let bytes = first.emit().unwrap();
        // 41 02 0002 77 | b1 64 | 11 2a | 31 01 | c1 0e (Block1 NUM 0, M 1, SZX 6) | ff ...
        assert_eq!(
            &bytes[..14],
            &[0x41, 0x02, 0x00, 0x02, 0x77, 0xB1, b'd', 0x11, 0x2A, 0x31, 0x01, 0xC1, 0x0E, 0xFF]
        );
        assert_eq!(bytes.len(), 14 + 1024);
        assert_eq!(ParticleMessage::parse(&bytes).unwrap(), first);
    }

    #[test]
    fn server_requested_describe_with_block2_round_trips() {
        use crate::message::{Body, ParticleMessage};
        let request = ParticleMessage {
            kind: MessageType::Confirmable,
            message_id: 0x0300,
            token: vec![0x40],
            body: Body::DescribeRequest(DescribeRequest {
                flags: DescribeFlags::SYSTEM,
                block2: Some(BlockOption {
                    num: 1,
                    more: false,
                    size: crate::coap::BlockSize::B1024,
                }),
            }),
        };
        let bytes = request.emit().unwrap();
        // 41 01 0300 40 | b1 64 | 41 01 | 81 16 (Block2 = delta 8, NUM 1 SZX 6)
        assert_eq!(
            bytes,
            vec![0x41, 0x01, 0x03, 0x00, 0x40, 0xB1, b'd', 0x41, 0x01, 0x81, 0x16]
        );
        assert_eq!(ParticleMessage::parse(&bytes).unwrap(), request);
    }

    #[test]
    fn describe_response_with_etag_and_block2_round_trips() {
        let response = DescribeResponse {
            etag: Some(7),
            content_format: Some(42),
            block2: Some(BlockOption {
                num: 1,
                more: false,
                size: crate::coap::BlockSize::B512,
            }),
            payload: vec![1, 2, 3],
        };
        let emitted = response.emit().unwrap();
        assert_eq!(DescribeResponse::parse(&emitted).unwrap(), response);
    }
}
