//! Module info extensions (reference section 4.3), used after the prefix (flag
//! PREFIX_EXTENSIONS) and before the base suffix.
//!
//! ```text
//!  0      2      4
//! +------+------+---------------------------+
//! | type | len  | body (len - 4 bytes)      |   all little-endian; len includes the header
//! +------+------+---------------------------+
//! ```

use super::error::{ModuleError, Result};
use super::prefix::ModuleFunction;

mod field {
    pub type Field = core::ops::Range<usize>;

    pub const TYPE: Field = 0..2;
    pub const LENGTH: Field = 2..4;
    pub const BODY: usize = 4;

    // PRODUCT_DATA (body offsets from the extension start)
    pub const PRODUCT_ID: Field = 4..8;
    pub const PRODUCT_VERSION: Field = 8..10;
    // DYNAMIC_LOCATION
    pub const MODULE_START: Field = 4..8;
    pub const DYNALIB_LOAD: Field = 8..12;
    pub const DYNALIB_START: Field = 12..16;
    // DEPENDENCY
    pub const DEP_FUNCTION: usize = 4;
    pub const DEP_INDEX: usize = 5;
    pub const DEP_VERSION: Field = 6..8;
    pub const DEP_TARGET_ID: Field = 8..12;
    // HASH and ASSET_DEPENDENCY
    pub const HASH_TYPE: usize = 4;
    pub const HASH_LEN: usize = 5;
    pub const HASH: usize = 6;
    // SECURITY_MODE
    pub const SECURITY_MODE: usize = 4;
    pub const CERTIFICATE: usize = 5;
    // ASSET_TYPE
    pub const ASSET_TYPE: usize = 4;
    pub const ASSET_TYPE_RESERVED: usize = 5;
}

/// Size of the extension header (type, length).
pub const HEADER_LEN: usize = field::BODY;

/// Extension type numbers (`module_info_extension_type_t`).
#[allow(missing_docs)]
pub mod ext_type {
    pub const END: u16 = 0x0000;
    pub const PRODUCT_DATA: u16 = 0x0001;
    pub const DYNAMIC_LOCATION: u16 = 0x0002;
    pub const DEPENDENCY: u16 = 0x0003;
    pub const HASH: u16 = 0x0010;
    pub const NAME: u16 = 0x0011;
    pub const ASSET_DEPENDENCY: u16 = 0x0012;
    pub const SECURITY_MODE: u16 = 0x0013;
    pub const ASSET_TYPE: u16 = 0x0014;
    /// Erased flash; never a valid extension.
    pub const INVALID: u16 = 0xffff;
}

/// One extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extension {
    /// 0x0001, 10 bytes. The build writes `0xFFFF | product_id << 16` into `id`, so the product
    /// id sits at the same place as the raw product id of suffixes without extensions.
    ProductData { id: u32, version: u16 },
    /// 0x0002, 16 bytes.
    DynamicLocation {
        module_start: u32,
        dynalib_load: u32,
        dynalib_start: u32,
    },
    /// 0x0003, 12 bytes.
    Dependency {
        function: ModuleFunction,
        index: u8,
        version: u16,
        target_id: u32,
    },
    /// 0x0010: hash type (0 = SHA-256), hash length byte, hash.
    Hash { hash_type: u8, hash: Vec<u8> },
    /// 0x0011: UTF-8 name without NUL.
    Name(String),
    /// 0x0012: hash type, hash length byte, hash of the raw asset, asset name.
    AssetDependency {
        hash_type: u8,
        hash: Vec<u8>,
        name: String,
    },
    /// 0x0013: mode (0 none, 1 protected), optional DER certificate (empty = none).
    SecurityMode { mode: u8, certificate: Vec<u8> },
    /// 0x0014, 6 bytes: asset type (0 default, 1 env vars app, 2 env vars snapshot), reserved.
    AssetType { asset_type: u8, reserved: u8 },
    /// 0x0000: end of the list; `len` includes padding (emitted as zero bytes).
    End { len: u16 },
    /// Any other type, body kept as read (without the 4-byte header).
    Unknown { ty: u16, data: Vec<u8> },
}

impl Extension {
    /// Product data as the build writes it for `product_id` / `product_version`.
    pub fn product_data(product_id: u16, product_version: u16) -> Extension {
        Extension::ProductData {
            id: 0xffff | (u32::from(product_id) << 16),
            version: product_version,
        }
    }

    /// The END extension without padding.
    pub const END: Extension = Extension::End {
        len: HEADER_LEN as u16,
    };

    /// The type number.
    pub fn ty(&self) -> u16 {
        match self {
            Extension::ProductData { .. } => ext_type::PRODUCT_DATA,
            Extension::DynamicLocation { .. } => ext_type::DYNAMIC_LOCATION,
            Extension::Dependency { .. } => ext_type::DEPENDENCY,
            Extension::Hash { .. } => ext_type::HASH,
            Extension::Name(_) => ext_type::NAME,
            Extension::AssetDependency { .. } => ext_type::ASSET_DEPENDENCY,
            Extension::SecurityMode { .. } => ext_type::SECURITY_MODE,
            Extension::AssetType { .. } => ext_type::ASSET_TYPE,
            Extension::End { .. } => ext_type::END,
            Extension::Unknown { ty, .. } => *ty,
        }
    }

    /// The encoded length, header included.
    pub fn len(&self) -> usize {
        HEADER_LEN
            + match self {
                Extension::ProductData { .. } => 6,
                Extension::DynamicLocation { .. } => 12,
                Extension::Dependency { .. } => 8,
                Extension::Hash { hash, .. } => 2 + hash.len(),
                Extension::Name(name) => name.len(),
                Extension::AssetDependency { hash, name, .. } => 2 + hash.len() + name.len(),
                Extension::SecurityMode { certificate, .. } => 1 + certificate.len(),
                Extension::AssetType { .. } => 2,
                Extension::End { len } => usize::from(*len).saturating_sub(HEADER_LEN),
                Extension::Unknown { data, .. } => data.len(),
            }
    }

    /// Always false: an extension has at least its 4-byte header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True for [`Extension::End`].
    pub fn is_end(&self) -> bool {
        matches!(self, Extension::End { .. })
    }

    /// Reads one extension at the start of `data`; `offset` is where `data` starts in the file
    /// (for error messages). Returns the extension and its length.
    pub fn parse(data: &[u8], offset: usize) -> Result<(Extension, usize)> {
        let header = data.get(..HEADER_LEN).ok_or(ModuleError::Truncated {
            what: "extension header",
            offset,
            needed: HEADER_LEN,
            len: data.len(),
        })?;
        let ty = u16::from_le_bytes([header[field::TYPE.start], header[field::TYPE.start + 1]]);
        let len =
            u16::from_le_bytes([header[field::LENGTH.start], header[field::LENGTH.start + 1]]);
        let bad = |reason: &'static str| ModuleError::BadExtension {
            offset,
            ty,
            len,
            reason,
        };
        if ty == ext_type::INVALID {
            return Err(bad("type 0xffff is erased flash, not an extension"));
        }
        let total = usize::from(len);
        if total < HEADER_LEN {
            return Err(bad("length is smaller than the 4-byte header"));
        }
        let ext = data
            .get(..total)
            .ok_or(bad("length runs past the end of the extension area"))?;
        let need = |n: usize| {
            if total == HEADER_LEN + n {
                Ok(())
            } else {
                Err(bad("length does not match the fixed size of this type"))
            }
        };
        let u16_at = |f: field::Field| u16::from_le_bytes([ext[f.start], ext[f.start + 1]]);
        let u32_at = |f: field::Field| {
            u32::from_le_bytes([
                ext[f.start],
                ext[f.start + 1],
                ext[f.start + 2],
                ext[f.start + 3],
            ])
        };
        let body = &ext[HEADER_LEN..];
        let parsed = match ty {
            ext_type::END => Extension::End { len },
            ext_type::PRODUCT_DATA => {
                need(6)?;
                Extension::ProductData {
                    id: u32_at(field::PRODUCT_ID),
                    version: u16_at(field::PRODUCT_VERSION),
                }
            }
            ext_type::DYNAMIC_LOCATION => {
                need(12)?;
                Extension::DynamicLocation {
                    module_start: u32_at(field::MODULE_START),
                    dynalib_load: u32_at(field::DYNALIB_LOAD),
                    dynalib_start: u32_at(field::DYNALIB_START),
                }
            }
            ext_type::DEPENDENCY => {
                need(8)?;
                Extension::Dependency {
                    function: ModuleFunction::from(ext[field::DEP_FUNCTION]),
                    index: ext[field::DEP_INDEX],
                    version: u16_at(field::DEP_VERSION),
                    target_id: u32_at(field::DEP_TARGET_ID),
                }
            }
            ext_type::HASH => {
                let (hash_type, hash_len) =
                    hash_header(ext).ok_or(bad("too short for hash type and length"))?;
                let hash = &ext[field::HASH..];
                if hash.len() != usize::from(hash_len) {
                    return Err(bad("hash length byte does not match the extension length"));
                }
                Extension::Hash {
                    hash_type,
                    hash: hash.to_vec(),
                }
            }
            ext_type::NAME => Extension::Name(
                String::from_utf8(body.to_vec()).map_err(|_| bad("name is not UTF-8"))?,
            ),
            ext_type::ASSET_DEPENDENCY => {
                let (hash_type, hash_len) =
                    hash_header(ext).ok_or(bad("too short for hash type and length"))?;
                let rest = &ext[field::HASH..];
                let hash = rest
                    .get(..usize::from(hash_len))
                    .ok_or(bad("hash length byte runs past the extension"))?;
                let name = &rest[hash.len()..];
                Extension::AssetDependency {
                    hash_type,
                    hash: hash.to_vec(),
                    name: String::from_utf8(name.to_vec())
                        .map_err(|_| bad("asset name is not UTF-8"))?,
                }
            }
            ext_type::SECURITY_MODE => {
                let mode = *ext
                    .get(field::SECURITY_MODE)
                    .ok_or(bad("too short for the security mode byte"))?;
                Extension::SecurityMode {
                    mode,
                    certificate: ext[field::CERTIFICATE..].to_vec(),
                }
            }
            ext_type::ASSET_TYPE => {
                need(2)?;
                Extension::AssetType {
                    asset_type: ext[field::ASSET_TYPE],
                    reserved: ext[field::ASSET_TYPE_RESERVED],
                }
            }
            _ => Extension::Unknown {
                ty,
                data: body.to_vec(),
            },
        };
        Ok((parsed, total))
    }

    /// Appends the encoded extension to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<()> {
        let len = self.len();
        let len16 = u16::try_from(len).map_err(|_| ModuleError::FieldOverflow {
            field: "extension length",
            value: len as u64,
        })?;
        if let Extension::End { len } = self {
            if usize::from(*len) < HEADER_LEN {
                return Err(ModuleError::InvalidBuild {
                    reason: "an END extension is at least 4 bytes long",
                });
            }
        }
        out.extend_from_slice(&self.ty().to_le_bytes());
        out.extend_from_slice(&len16.to_le_bytes());
        let hash_len = |hash: &[u8]| {
            u8::try_from(hash.len()).map_err(|_| ModuleError::FieldOverflow {
                field: "hash length",
                value: hash.len() as u64,
            })
        };
        match self {
            Extension::ProductData { id, version } => {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&version.to_le_bytes());
            }
            Extension::DynamicLocation {
                module_start,
                dynalib_load,
                dynalib_start,
            } => {
                out.extend_from_slice(&module_start.to_le_bytes());
                out.extend_from_slice(&dynalib_load.to_le_bytes());
                out.extend_from_slice(&dynalib_start.to_le_bytes());
            }
            Extension::Dependency {
                function,
                index,
                version,
                target_id,
            } => {
                out.push(u8::from(*function));
                out.push(*index);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&target_id.to_le_bytes());
            }
            Extension::Hash { hash_type, hash } => {
                out.push(*hash_type);
                out.push(hash_len(hash)?);
                out.extend_from_slice(hash);
            }
            Extension::Name(name) => out.extend_from_slice(name.as_bytes()),
            Extension::AssetDependency {
                hash_type,
                hash,
                name,
            } => {
                out.push(*hash_type);
                out.push(hash_len(hash)?);
                out.extend_from_slice(hash);
                out.extend_from_slice(name.as_bytes());
            }
            Extension::SecurityMode { mode, certificate } => {
                out.push(*mode);
                out.extend_from_slice(certificate);
            }
            Extension::AssetType {
                asset_type,
                reserved,
            } => {
                out.push(*asset_type);
                out.push(*reserved);
            }
            Extension::End { .. } => out.resize(out.len() + len - HEADER_LEN, 0),
            Extension::Unknown { data, .. } => out.extend_from_slice(data),
        }
        Ok(())
    }
}

fn hash_header(ext: &[u8]) -> Option<(u8, u8)> {
    Some((*ext.get(field::HASH_TYPE)?, *ext.get(field::HASH_LEN)?))
}

/// Encodes a list of extensions.
pub fn emit_list(extensions: &[Extension], out: &mut Vec<u8>) -> Result<()> {
    for ext in extensions {
        ext.emit(out)?;
    }
    Ok(())
}

/// Encoded length of a list of extensions.
pub fn list_len(extensions: &[Extension]) -> usize {
    extensions.iter().map(Extension::len).sum()
}

/// Reads prefix extensions from the start of `data` up to and including END. `offset` is where
/// `data` starts in the file. Returns the list and its encoded length.
pub fn parse_prefix_list(data: &[u8], offset: usize) -> Result<(Vec<Extension>, usize)> {
    let mut list = Vec::new();
    let mut pos = 0usize;
    loop {
        let rest = data
            .get(pos..)
            .filter(|r| !r.is_empty())
            .ok_or(ModuleError::MissingEndExtension { offset })?;
        let (ext, len) = Extension::parse(rest, offset + pos)?;
        pos += len;
        let end = ext.is_end();
        list.push(ext);
        if end {
            return Ok((list, pos));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(ext: Extension) {
        let mut bytes = Vec::new();
        ext.emit(&mut bytes).unwrap();
        assert_eq!(bytes.len(), ext.len());
        let (back, len) = Extension::parse(&bytes, 0).unwrap();
        assert_eq!(len, bytes.len());
        assert_eq!(back, ext);
    }

    #[test]
    fn every_extension_type_round_trips() {
        round_trip(Extension::product_data(32, 4));
        round_trip(Extension::DynamicLocation {
            module_start: 0x085f_4000,
            dynalib_load: 0x085f_4088,
            dynalib_start: 0x023f_51f8,
        });
        round_trip(Extension::Dependency {
            function: ModuleFunction::SystemPart,
            index: 1,
            version: 6200,
            target_id: 7,
        });
        round_trip(Extension::Hash {
            hash_type: 0,
            hash: vec![0xab; 32],
        });
        round_trip(Extension::Name("cat.jpg".into()));
        round_trip(Extension::AssetDependency {
            hash_type: 0,
            hash: vec![1; 32],
            name: "kcat.jpg".into(),
        });
        round_trip(Extension::SecurityMode {
            mode: 1,
            certificate: vec![0x30, 0x82],
        });
        round_trip(Extension::SecurityMode {
            mode: 0,
            certificate: vec![],
        });
        round_trip(Extension::AssetType {
            asset_type: 2,
            reserved: 0,
        });
        round_trip(Extension::END);
        round_trip(Extension::End { len: 5 });
        round_trip(Extension::Unknown {
            ty: 0x0042,
            data: vec![9, 8, 7],
        });
    }

    #[test]
    fn product_data_of_a_p2_app_reads_pid_in_the_upper_half() {
        // From p2-tinker@5.3.1.bin: 01 00 0a 00 ff ff 20 00 04 00
        let bytes = [0x01, 0x00, 0x0a, 0x00, 0xff, 0xff, 0x20, 0x00, 0x04, 0x00];
        let (ext, len) = Extension::parse(&bytes, 0).unwrap();
        assert_eq!(len, 10);
        assert_eq!(ext, Extension::product_data(32, 4));
    }

    #[test]
    fn extension_running_past_its_area_is_rejected_with_its_offset() {
        let bytes = [0x11, 0x00, 0x20, 0x00, b'a'];
        let err = Extension::parse(&bytes, 100).unwrap_err();
        assert!(matches!(
            err,
            ModuleError::BadExtension {
                offset: 100,
                ty: 0x11,
                len: 0x20,
                ..
            }
        ));
    }

    #[test]
    fn extension_shorter_than_its_header_is_rejected() {
        let err = Extension::parse(&[0x00, 0x00, 0x02, 0x00], 7).unwrap_err();
        assert!(matches!(
            err,
            ModuleError::BadExtension {
                offset: 7,
                len: 2,
                ..
            }
        ));
    }

    #[test]
    fn prefix_list_without_end_is_rejected() {
        let mut bytes = Vec::new();
        Extension::Name("x".into()).emit(&mut bytes).unwrap();
        let err = parse_prefix_list(&bytes, 24).unwrap_err();
        assert_eq!(err, ModuleError::MissingEndExtension { offset: 24 });
    }
}
