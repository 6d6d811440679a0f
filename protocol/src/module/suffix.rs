//! The module suffix (reference section 4.2): suffix extensions, product data and the 36-byte
//! base suffix, just before the CRC-32.
//!
//! ```text
//! [suffix extensions .. END?][product id u16, version u16]?[reserved u16][SHA-256 32][size u16] | CRC-32 BE
//! <------------------------------------- size -------------------------------------------->
//! ```
//! nRF52840 modules: size 40, raw product data, no extensions (extensions, when added, go
//! before the raw product data and end with END). rtl872x modules: size 62, DYNAMIC_LOCATION
//! and PRODUCT_DATA extensions, no raw product data, no END.

use super::error::{ModuleError, Result};
use super::extension::{self, Extension, HEADER_LEN};

mod field {
    pub type Field = core::ops::Range<usize>;

    /// Offsets from the start of the 36-byte base suffix.
    pub const RESERVED: Field = 0..2;
    pub const SHA256: Field = 2..34;
    pub const SIZE: Field = 34..36;

    /// Raw product data, directly before the base suffix.
    pub const PRODUCT_ID: Field = 0..2;
    pub const PRODUCT_VERSION: Field = 2..4;
}

/// Size of `module_info_suffix_base_t` (reserved, SHA-256, size).
pub const BASE_SUFFIX_LEN: usize = field::SIZE.end;
/// Size of raw product data (product id, product version).
pub const RAW_PRODUCT_DATA_LEN: usize = field::PRODUCT_VERSION.end;
/// Suffix size from which product id and version are present (base + raw product data).
pub const SUFFIX_LEN_WITH_PRODUCT: usize = BASE_SUFFIX_LEN + RAW_PRODUCT_DATA_LEN;
/// Bytes at the end of a file that the SHA-256 does not cover (SHA, size, CRC).
pub const SHA_EXCLUDED_TAIL: usize = 38;

/// Product id and version stored raw (not as an extension) before the base suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProductData {
    /// Product id (the platform id since Device OS 4.0, 0xFFFF without PRODUCT_VERSION).
    pub id: u16,
    /// Product firmware version.
    pub version: u16,
}

impl ProductData {
    /// What non-product firmware carries: 0xFFFF / 0xFFFF.
    pub const NONE: ProductData = ProductData {
        id: 0xffff,
        version: 0xffff,
    };
}

/// The parsed suffix area (everything the suffix size covers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suffix {
    /// Suffix extensions in file order (may contain PRODUCT_DATA and END).
    pub extensions: Vec<Extension>,
    /// Raw product data after the extensions (nRF52840 style), if present.
    pub product_data: Option<ProductData>,
    /// The reserved u16 before the SHA-256 (0 in every real module).
    pub reserved: u16,
    /// SHA-256 over the file except its last 38 bytes.
    pub sha256: [u8; 32],
}

impl Suffix {
    /// The value of the suffix size field: extensions + raw product data + 36.
    pub fn size(&self) -> usize {
        extension::list_len(&self.extensions)
            + self.product_data.map_or(0, |_| RAW_PRODUCT_DATA_LEN)
            + BASE_SUFFIX_LEN
    }

    /// Reads the suffix area `area` (exactly `size` bytes, without the CRC); `offset` is where
    /// it starts in the file.
    pub fn parse(area: &[u8], offset: usize) -> Result<Suffix> {
        let size = area.len();
        let base_at = size
            .checked_sub(BASE_SUFFIX_LEN)
            .ok_or(ModuleError::SuffixTooSmall {
                size: u16::try_from(size).unwrap_or(u16::MAX),
                offset: offset + size.saturating_sub(2),
            })?;
        let base = &area[base_at..];
        let u16_at = |b: &[u8], f: field::Field| u16::from_le_bytes([b[f.start], b[f.start + 1]]);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&base[field::SHA256]);
        let reserved = u16_at(base, field::RESERVED);
        let head = &area[..base_at];

        let raw = |b: &[u8]| ProductData {
            id: u16_at(b, field::PRODUCT_ID),
            version: u16_at(b, field::PRODUCT_VERSION),
        };
        let mut extensions = Vec::new();
        let mut product_data = None;
        if head.len() == RAW_PRODUCT_DATA_LEN {
            // Exactly 40 bytes: raw product data, as Particle's parser reads it.
            product_data = Some(raw(head));
        } else if !head.is_empty() {
            let mut pos = 0usize;
            let mut seen_end = false;
            loop {
                let rest = &head[pos..];
                match rest.len() {
                    0 => break,
                    RAW_PRODUCT_DATA_LEN if seen_end || rest != [0, 0, HEADER_LEN as u8, 0] => {
                        product_data = Some(raw(rest));
                        break;
                    }
                    leftover if seen_end => {
                        return Err(ModuleError::BadSuffixLayout {
                            offset: offset + pos,
                            leftover,
                        })
                    }
                    leftover if leftover < HEADER_LEN => {
                        return Err(ModuleError::BadSuffixLayout {
                            offset: offset + pos,
                            leftover,
                        })
                    }
                    _ => {}
                }
                let (ext, len) = Extension::parse(rest, offset + pos)?;
                pos += len;
                seen_end = ext.is_end();
                extensions.push(ext);
            }
        }
        Ok(Suffix {
            extensions,
            product_data,
            reserved,
            sha256,
        })
    }

    /// Appends the suffix area (without CRC) to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<()> {
        let size = self.size();
        let size16 = u16::try_from(size).map_err(|_| ModuleError::FieldOverflow {
            field: "suffix size",
            value: size as u64,
        })?;
        extension::emit_list(&self.extensions, out)?;
        if let Some(p) = self.product_data {
            out.extend_from_slice(&p.id.to_le_bytes());
            out.extend_from_slice(&p.version.to_le_bytes());
        }
        out.extend_from_slice(&self.reserved.to_le_bytes());
        out.extend_from_slice(&self.sha256);
        out.extend_from_slice(&size16.to_le_bytes());
        Ok(())
    }

    /// The 4 bytes 44..40 bytes before the end of the file, where the device and Particle's
    /// parser read product id and version; None when the suffix is smaller than 40 bytes.
    fn product_bytes(&self) -> Option<ProductData> {
        if self.size() < SUFFIX_LEN_WITH_PRODUCT {
            return None;
        }
        if let Some(p) = self.product_data {
            return Some(p);
        }
        let mut bytes = Vec::new();
        extension::emit_list(&self.extensions, &mut bytes).ok()?;
        let at = bytes.len().checked_sub(RAW_PRODUCT_DATA_LEN)?;
        let b = bytes.get(at..)?;
        Some(ProductData {
            id: u16::from_le_bytes([b[0], b[1]]),
            version: u16::from_le_bytes([b[2], b[3]]),
        })
    }

    /// Product id as the device and Particle's parser read it (None below suffix size 40).
    pub fn product_id(&self) -> Option<u16> {
        self.product_bytes().map(|p| p.id)
    }

    /// Product firmware version as the device and Particle's parser read it (None below
    /// suffix size 40).
    pub fn product_version(&self) -> Option<u16> {
        self.product_bytes().map(|p| p.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha() -> [u8; 32] {
        core::array::from_fn(|i| i as u8 + 1)
    }

    #[test]
    fn nrf52840_suffix_has_raw_product_data_and_size_40() {
        let s = Suffix {
            extensions: vec![],
            product_data: Some(ProductData { id: 26, version: 3 }),
            reserved: 0,
            sha256: sha(),
        };
        let mut bytes = Vec::new();
        s.emit(&mut bytes).unwrap();
        assert_eq!(bytes.len(), 40);
        assert_eq!(&bytes[..6], &[0x1a, 0, 3, 0, 0, 0]);
        assert_eq!(&bytes[38..], &[0x28, 0]);
        assert_eq!(Suffix::parse(&bytes, 0).unwrap(), s);
        assert_eq!(s.product_id(), Some(26));
        assert_eq!(s.product_version(), Some(3));
    }

    #[test]
    fn rtl872x_suffix_reads_product_from_the_product_data_extension() {
        let s = Suffix {
            extensions: vec![
                Extension::DynamicLocation {
                    module_start: 0x085f_4000,
                    dynalib_load: 0x085f_4088,
                    dynalib_start: 0x023f_51f8,
                },
                Extension::product_data(32, 4),
            ],
            product_data: None,
            reserved: 0,
            sha256: sha(),
        };
        let mut bytes = Vec::new();
        s.emit(&mut bytes).unwrap();
        assert_eq!(bytes.len(), 62);
        assert_eq!(Suffix::parse(&bytes, 0).unwrap(), s);
        assert_eq!(s.product_id(), Some(32));
        assert_eq!(s.product_version(), Some(4));
    }

    #[test]
    fn suffix_of_36_bytes_has_no_product_data() {
        let s = Suffix {
            extensions: vec![],
            product_data: None,
            reserved: 0,
            sha256: sha(),
        };
        let mut bytes = Vec::new();
        s.emit(&mut bytes).unwrap();
        assert_eq!(bytes.len(), 36);
        assert_eq!(Suffix::parse(&bytes, 0).unwrap(), s);
        assert_eq!(s.product_id(), None);
    }

    #[test]
    fn bytes_after_end_that_are_not_product_data_are_rejected() {
        let mut bytes = Vec::new();
        Extension::END.emit(&mut bytes).unwrap();
        bytes.extend_from_slice(&[1, 2]);
        bytes.extend_from_slice(&[0; 36]);
        let err = Suffix::parse(&bytes, 1000).unwrap_err();
        assert_eq!(
            err,
            ModuleError::BadSuffixLayout {
                offset: 1004,
                leftover: 2
            }
        );
    }

    #[test]
    fn suffix_smaller_than_the_base_is_rejected() {
        assert!(matches!(
            Suffix::parse(&[0; 35], 0),
            Err(ModuleError::SuffixTooSmall { size: 35, .. })
        ));
    }
}
