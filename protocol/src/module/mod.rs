//! Particle module binaries (reference section 4): parse, check, build, compress and combine
//! the files Device OS installs (bootloader, system parts, user apps, radio stack, NCP, assets).
//!
//! Layout of one module file (all module fields little-endian, only the CRC big-endian):
//!
//! ```text
//! [vector table / image header]? [prefix 24 B][prefix extensions]? [compressed header 8 B]?
//! [body (deflate stream when compressed)] [suffix: extensions, product data, SHA-256, size] [CRC-32 BE]
//! ```
//!
//! * [`Module::parse`] reads a file into a [`Module`] (owned fields plus byte ranges into the
//!   file); it never panics on any input.
//! * [`ModuleBuilder`] makes modules Particle's tools accept; [`ModuleParts`] rebuilds a file
//!   from parsed parts.
//! * [`compress`] / [`decompress`] / [`decompress_module`] / [`Inflater`]: section 4.5.
//! * [`combine`] / [`split_combined`]: section 4.6.
//!
//! # Where the prefix is
//! The prefix is at offset 0 except when something the MCU needs comes first: the nRF52840
//! vector table (0x200 bytes) before the prefix of bootloaders and system parts, and the
//! rtl872x image header (0x20 bytes) before the P2 bootloader's prefix. Particle's parser
//! (`_findModulePrefixOffset`) tries 0, 0x200 and legacy Gen 2 offsets, then scans every
//! 4-aligned offset up to 8 KiB, scoring how plausible each prefix looks. This crate tries
//! [`PREFERRED_PREFIX_OFFSETS`] = 0, 0x200, 0x20 in that order and takes the first whose prefix
//! is *plausible and declares exactly the file length*: end > start,
//! `end - start + 4 == file length`, module function not None, empty dependencies all zero,
//! and (away from offset 0) a known module function and known flags. At offset 0 of a file
//! that starts with a vector table the "addresses" are the initial stack pointer and the reset
//! handler, which fail `end > start` or the exact length; a wrong offset would have to satisfy
//! the exact-length equation by chance (about 2^-32). Files of other platforms (Gen 2's
//! 0x184, the Core's 0x10C, Bluz's 0xC0, or any 4-aligned offset below 8 KiB) are found by
//! [`search_prefix`], Particle's own search.

mod builder;
mod combined;
mod compressed;
mod error;
mod extension;
mod prefix;
mod search;
mod suffix;

use core::ops::Range;

use sha2::{Digest, Sha256};

pub use builder::{ModuleBuilder, ModuleParts, SuffixStyle};
pub use combined::{
    clear_combined, combine, split_combined, split_combined_modules, MAX_COMBINED_MODULES,
};
pub use compressed::{
    compress, decompress, decompress_module, inflate_exact, CompressedHeader, Inflater,
    BOOTLOADER_BLOCK_LEN, COMPRESSED_HEADER_LEN, METHOD_RAW_DEFLATE,
};
pub use error::ModuleError;
pub use extension::{ext_type, Extension};
pub use prefix::{Dependency, ModuleFlags, ModuleFunction, Prefix, PrefixView, PREFIX_LEN};
pub use search::{
    platform_name, prefix_score, search_prefix, PrefixSearch, KNOWN_PLATFORMS,
    MAX_PREFIX_SEARCH_OFFSET, PARTICLE_PREFERRED_OFFSETS, PASSING_SCORE,
};
pub use suffix::{
    ProductData, Suffix, BASE_SUFFIX_LEN, RAW_PRODUCT_DATA_LEN, SHA_EXCLUDED_TAIL,
    SUFFIX_LEN_WITH_PRODUCT,
};

use error::Result;

/// Size of the CRC-32 at the end of a module.
pub const CRC_LEN: usize = 4;

/// Offsets tried first for the prefix: plain, nRF52840 vector table, rtl872x image header.
pub const PREFERRED_PREFIX_OFFSETS: [usize; 3] = [0, 0x200, 0x20];

/// Smallest module: prefix, base suffix, CRC.
pub const MIN_MODULE_LEN: usize = PREFIX_LEN + BASE_SUFFIX_LEN + CRC_LEN;

/// A parsed module file. Fields are owned; the ranges index into the parsed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Length of the parsed file.
    pub file_len: usize,
    /// Where the 24-byte prefix starts (0, 0x200 after an nRF52840 vector table, 0x20 after
    /// the rtl872x bootloader image header).
    pub prefix_offset: usize,
    /// The 24-byte prefix.
    pub prefix: Prefix,
    /// Prefix extensions (flag PREFIX_EXTENSIONS), ending with END.
    pub prefix_extensions: Vec<Extension>,
    /// The compressed-module header, present iff flag COMPRESSED is set.
    pub compressed_header: Option<CompressedHeader>,
    /// The suffix area.
    pub suffix: Suffix,
    /// CRC-32 stored big-endian in the last 4 bytes.
    pub stored_crc: u32,
    /// CRC-32 of all bytes before the stored CRC.
    pub computed_crc: u32,
    /// The body: after prefix, prefix extensions and compressed header, up to the suffix. For a
    /// compressed module this is the deflate stream.
    pub body: Range<usize>,
}

impl Module {
    /// Parses a whole module file, finding its prefix by the rule in the module docs.
    /// A wrong CRC is not an error here: see [`Module::crc_valid`] and [`Module::verify_crc`].
    pub fn parse(data: &[u8]) -> Result<Module> {
        let offset = locate_prefix(data)?;
        Module::parse_at(data, offset)
    }

    /// Parses a module file whose prefix is known to be at `prefix_offset`.
    pub fn parse_at(data: &[u8], prefix_offset: usize) -> Result<Module> {
        let len = data.len();
        let prefix = Prefix::parse(data.get(prefix_offset..).unwrap_or(&[])).map_err(|_| {
            ModuleError::Truncated {
                what: "module prefix (module_info_t)",
                offset: prefix_offset,
                needed: PREFIX_LEN,
                len,
            }
        })?;
        if prefix.declared_len() != Some(len) {
            return Err(ModuleError::SizeMismatch {
                prefix_offset,
                start: prefix.start_address,
                end: prefix.end_address,
                file_len: len,
            });
        }
        let after_prefix = prefix_offset + PREFIX_LEN;
        let min = after_prefix + BASE_SUFFIX_LEN + CRC_LEN;
        if len < min {
            return Err(ModuleError::Truncated {
                what: "base suffix and CRC after the prefix",
                offset: after_prefix,
                needed: BASE_SUFFIX_LEN + CRC_LEN,
                len,
            });
        }
        let crc_at = len - CRC_LEN;
        let size_at = crc_at - 2;
        let suffix_size = read_u16(data, size_at);
        if usize::from(suffix_size) < BASE_SUFFIX_LEN {
            return Err(ModuleError::SuffixTooSmall {
                size: suffix_size,
                offset: size_at,
            });
        }
        let available = crc_at - after_prefix;
        let suffix_start = crc_at
            .checked_sub(usize::from(suffix_size))
            .filter(|s| *s >= after_prefix)
            .ok_or(ModuleError::SuffixTooLarge {
                size: suffix_size,
                offset: size_at,
                available,
            })?;

        let mut pos = after_prefix;
        let mut prefix_extensions = Vec::new();
        if prefix.flags.contains(ModuleFlags::PREFIX_EXTENSIONS) {
            let area = data.get(pos..suffix_start).unwrap_or(&[]);
            let (list, ext_len) = extension::parse_prefix_list(area, pos)?;
            prefix_extensions = list;
            pos += ext_len;
        }
        let mut compressed_header = None;
        if prefix.flags.contains(ModuleFlags::COMPRESSED) {
            let area = data.get(pos..suffix_start).unwrap_or(&[]);
            compressed_header = Some(CompressedHeader::parse(area, pos).map_err(|e| match e {
                ModuleError::Truncated { what, needed, .. } => ModuleError::Truncated {
                    what,
                    offset: pos,
                    needed,
                    len: suffix_start,
                },
                other => other,
            })?);
            pos += COMPRESSED_HEADER_LEN;
        }
        let suffix = Suffix::parse(data.get(suffix_start..crc_at).unwrap_or(&[]), suffix_start)?;
        let stored_crc = read_u32_be(data, crc_at);
        let computed_crc = crc32(data.get(..crc_at).unwrap_or(&[]));
        Ok(Module {
            file_len: len,
            prefix_offset,
            prefix,
            prefix_extensions,
            compressed_header,
            suffix,
            stored_crc,
            computed_crc,
            body: pos..suffix_start,
        })
    }

    /// True if the stored CRC-32 matches the computed one.
    pub fn crc_valid(&self) -> bool {
        self.stored_crc == self.computed_crc
    }

    /// [`ModuleError::CrcMismatch`] unless the CRC is valid.
    pub fn verify_crc(&self) -> Result<()> {
        if self.crc_valid() {
            Ok(())
        } else {
            Err(ModuleError::CrcMismatch {
                stored: self.stored_crc,
                computed: self.computed_crc,
            })
        }
    }

    /// Bytes before the prefix (vector table or image header), usually empty.
    pub fn head_range(&self) -> Range<usize> {
        0..self.prefix_offset
    }

    /// The 24 prefix bytes.
    pub fn prefix_range(&self) -> Range<usize> {
        self.prefix_offset..self.prefix_offset + PREFIX_LEN
    }

    /// The prefix extensions (empty range without PREFIX_EXTENSIONS).
    pub fn prefix_extensions_range(&self) -> Range<usize> {
        let start = self.prefix_offset + PREFIX_LEN;
        start..start + extension::list_len(&self.prefix_extensions)
    }

    /// The compressed header (empty range for uncompressed modules).
    pub fn compressed_header_range(&self) -> Range<usize> {
        self.prefix_extensions_range().end..self.body.start
    }

    /// The suffix area counted by the suffix size field.
    pub fn suffix_range(&self) -> Range<usize> {
        self.body.end..self.file_len.saturating_sub(CRC_LEN)
    }

    /// The CRC-32 bytes.
    pub fn crc_range(&self) -> Range<usize> {
        self.file_len.saturating_sub(CRC_LEN)..self.file_len
    }

    /// The suffix size field.
    pub fn suffix_size(&self) -> usize {
        self.suffix.size()
    }

    /// Product id as Particle's parser reads it; None when the suffix is smaller than 40 bytes.
    pub fn product_id(&self) -> Option<u16> {
        self.suffix.product_id()
    }

    /// Product firmware version as Particle's parser reads it; None below suffix size 40.
    pub fn product_version(&self) -> Option<u16> {
        self.suffix.product_version()
    }

    /// The SHA-256 stored in the suffix.
    pub fn sha256(&self) -> [u8; 32] {
        self.suffix.sha256
    }
}

/// Finds the prefix of a whole module file by the rule in the module docs.
pub fn locate_prefix(data: &[u8]) -> Result<usize> {
    find_prefix(data, |declared| declared == data.len()).ok_or_else(|| size_error(data))
}

/// Tries [`PREFERRED_PREFIX_OFFSETS`] in order; returns the first whose prefix is plausible and
/// whose declared length satisfies `fits`.
pub(crate) fn find_prefix(data: &[u8], fits: impl Fn(usize) -> bool) -> Option<usize> {
    PREFERRED_PREFIX_OFFSETS.into_iter().find(|&offset| {
        let Some(prefix) = data.get(offset..).and_then(|d| Prefix::parse(d).ok()) else {
            return false;
        };
        let Some(declared) = prefix.declared_len() else {
            return false;
        };
        prefix.is_plausible()
            && (offset == 0 || (prefix.function.is_known() && prefix.flags.is_known()))
            && declared >= offset + MIN_MODULE_LEN
            && fits(declared)
    })
}

/// The error for a file where no offset gives a plausible prefix of the right length: the
/// size mismatch of the first plausible preferred candidate, else of offset 0.
pub(crate) fn size_error(data: &[u8]) -> ModuleError {
    let len = data.len();
    let candidate = PREFERRED_PREFIX_OFFSETS
        .into_iter()
        .filter_map(|o| Some((o, Prefix::parse(data.get(o..)?).ok()?)))
        .find(|(_, p)| p.is_plausible())
        .or_else(|| Some((0, Prefix::parse(data).ok()?)));
    match candidate {
        Some((prefix_offset, p)) => ModuleError::SizeMismatch {
            prefix_offset,
            start: p.start_address,
            end: p.end_address,
            file_len: len,
        },
        None => ModuleError::Truncated {
            what: "module prefix (module_info_t)",
            offset: 0,
            needed: PREFIX_LEN,
            len,
        },
    }
}

/// The SHA-256 stored in a module's suffix: over the file except its last 38 bytes (SHA,
/// suffix size, CRC). Files shorter than 38 bytes hash as empty.
pub fn sha256_of_file(data: &[u8]) -> [u8; 32] {
    let covered = data
        .get(..data.len().saturating_sub(SHA_EXCLUDED_TAIL))
        .unwrap_or(&[]);
    Sha256::digest(covered).into()
}

/// Standard IEEE CRC-32 (zlib; reflected 0xEDB88320, init and final XOR 0xFFFFFFFF) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The CRC-32 a module file should store (big-endian) in its last 4 bytes: over `[0, len-4)`.
pub fn crc_of_file(data: &[u8]) -> u32 {
    crc32(
        data.get(..data.len().saturating_sub(CRC_LEN))
            .unwrap_or(&[]),
    )
}

/// Recomputes and writes the SHA-256 (bytes len-38..len-6) and then the CRC-32 (last 4
/// bytes, big-endian) of a module file.
pub fn update_checksums(data: &mut [u8]) -> Result<()> {
    let len = data.len();
    if len < SHA_EXCLUDED_TAIL {
        return Err(ModuleError::Truncated {
            what: "SHA-256, suffix size and CRC-32",
            offset: 0,
            needed: SHA_EXCLUDED_TAIL,
            len,
        });
    }
    let sha = sha256_of_file(data);
    let sha_at = len - SHA_EXCLUDED_TAIL;
    data[sha_at..sha_at + 32].copy_from_slice(&sha);
    let crc = crc_of_file(data);
    data[len - CRC_LEN..].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

fn read_u16(data: &[u8], at: usize) -> u16 {
    match data.get(at..at + 2) {
        Some(b) => u16::from_le_bytes([b[0], b[1]]),
        None => 0,
    }
}

fn read_u32_be(data: &[u8], at: usize) -> u32 {
    match data.get(at..at + 4) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}
