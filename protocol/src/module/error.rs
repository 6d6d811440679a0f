//! Errors for module binaries (reference section 4): one variant per malformation, each naming
//! the field and the byte offset a person needs to find it with a hex dump.

use thiserror::Error;

/// Everything that can be wrong with a module binary, or with a request to build, compress,
/// decompress, combine or split one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModuleError {
    /// The input ends before a field that must be there.
    #[error("{what} at byte offset {offset} needs {needed} bytes but the input is only {len} bytes long")]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
        len: usize,
    },

    /// No plausible prefix was found; the one at `prefix_offset` declares a size that is not the file's.
    #[error(
        "module_end_address {end:#x} - module_start_address {start:#x} + 4 (prefix at byte offset \
         {prefix_offset}) does not match the file length of {file_len} bytes"
    )]
    SizeMismatch {
        prefix_offset: usize,
        start: u32,
        end: u32,
        file_len: usize,
    },

    /// The stored CRC-32 (big-endian, last 4 bytes) is not the CRC-32 of the bytes before it.
    #[error("stored CRC-32 {stored:#010x} does not match the computed CRC-32 {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },

    /// An extension header or body is malformed.
    #[error("extension of type {ty:#06x} with length {len} at byte offset {offset} is malformed: {reason}")]
    BadExtension {
        offset: usize,
        ty: u16,
        len: u16,
        reason: &'static str,
    },

    /// The prefix extension list (flag PREFIX_EXTENSIONS) has no END extension before the body.
    #[error(
        "prefix extensions starting at byte offset {offset} are not terminated by an END extension"
    )]
    MissingEndExtension { offset: usize },

    /// The suffix size field (2 bytes before the CRC) is below the 36-byte base suffix.
    #[error("suffix size {size} at byte offset {offset} is smaller than the 36-byte base suffix")]
    SuffixTooSmall { size: u16, offset: usize },

    /// The suffix size field claims more bytes than the module has after its prefix.
    #[error(
        "suffix size {size} at byte offset {offset} is larger than the {available} bytes between \
         the prefix and the CRC"
    )]
    SuffixTooLarge {
        size: u16,
        offset: usize,
        available: usize,
    },

    /// Bytes between the suffix extensions and the base suffix are neither empty nor 4 bytes of
    /// product data.
    #[error(
        "suffix at byte offset {offset} has {leftover} bytes after its extensions that are neither \
         product data (4 bytes) nor nothing"
    )]
    BadSuffixLayout { offset: usize, leftover: usize },

    /// The compressed-module header (after the prefix of a COMPRESSED module) is invalid.
    #[error(
        "compressed module header field {field} at byte offset {offset} has invalid value {value}"
    )]
    BadCompressionHeader {
        offset: usize,
        field: &'static str,
        value: u32,
    },

    /// The deflate stream is corrupt or ends early.
    #[error("deflate stream starting at byte offset {offset} is corrupt or truncated ({reason})")]
    CorruptDeflateStream { offset: usize, reason: &'static str },

    /// The inflated data has a different size than the header's original_size.
    #[error("decompressed data is {actual} bytes but the compressed header says {expected}")]
    DecompressedSizeMismatch { expected: usize, actual: usize },

    /// The operation needs a compressed module.
    #[error("the module is not compressed (flag COMPRESSED 0x02 is clear)")]
    NotCompressed,

    /// The operation needs an uncompressed module.
    #[error("the module is already compressed (flag COMPRESSED 0x02 is set)")]
    AlreadyCompressed,

    /// The operation refuses a module that has COMBINED set.
    #[error("the module at byte offset {offset} has flag COMBINED 0x04 set; split it first")]
    UnexpectedCombined { offset: usize },

    /// More modules than Device OS handles in one combined file.
    #[error("a combined file holds at most {max} modules, this one has {count}")]
    TooManyCombined { count: usize, max: usize },

    /// A module in a combined file that is not the last lacks COMBINED.
    #[error(
        "module {index} at byte offset {offset} lacks flag COMBINED 0x04 but {trailing} bytes follow it"
    )]
    CombinedFlagMissing {
        index: usize,
        offset: usize,
        trailing: usize,
    },

    /// The last module of a combined file still says another module follows.
    #[error(
        "module {index} at byte offset {offset} has flag COMBINED 0x04 but nothing follows it"
    )]
    CombinedFlagOnLast { index: usize, offset: usize },

    /// Nothing to combine or split.
    #[error("no modules were given")]
    NoModules,

    /// A value does not fit the field it is written to (e.g. a module larger than 4 GiB).
    #[error("{field} cannot hold {value}")]
    FieldOverflow { field: &'static str, value: u64 },

    /// A builder input contradicts another one.
    #[error("cannot build the module: {reason}")]
    InvalidBuild { reason: &'static str },
}

/// Result alias for this module.
pub type Result<T> = core::result::Result<T, ModuleError>;
