//! Compressed modules (reference section 4.5): the 8-byte `compressed_module_header` after the
//! prefix (and prefix extensions), a raw deflate stream, then the original suffix.
//!
//! ```text
//!  0      2      3       4              8
//! +------+------+-------+--------------+
//! | size |method|window | original size|   little-endian; size = 8, method 0 = raw deflate,
//! +------+------+-------+--------------+   window 0 = default (15) or 8..=15
//! ```
//! With DROP_MODULE_INFO only the body is compressed, otherwise the whole module (vector table
//! and prefix included). The bootloader inflates `original_size` bytes to `module_start_address`.

use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

use super::error::{ModuleError, Result};
use super::prefix::ModuleFlags;
use super::{update_checksums, Module};

mod field {
    pub type Field = core::ops::Range<usize>;

    pub const SIZE: Field = 0..2;
    pub const METHOD: usize = 2;
    pub const WINDOW_BITS: usize = 3;
    pub const ORIGINAL_SIZE: Field = 4..8;
}

/// Size of `compressed_module_header`.
pub const COMPRESSED_HEADER_LEN: usize = field::ORIGINAL_SIZE.end;

/// Method 0: raw deflate (RFC 1951, no zlib header).
pub const METHOD_RAW_DEFLATE: u8 = 0;

/// Block size in which Device OS's bootloader writes inflated data to flash.
pub const BOOTLOADER_BLOCK_LEN: usize = 256;

/// Deflate level used by [`compress`] (the stream differs from Particle's zlib, the format not).
const DEFLATE_LEVEL: u8 = 9;

/// `compressed_module_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CompressedHeader {
    /// Compression method; only [`METHOD_RAW_DEFLATE`] exists.
    pub method: u8,
    /// Deflate window bits: 0 (default 15) or 8..=15.
    pub window_bits: u8,
    /// Size of the inflated data.
    pub original_size: u32,
}

impl CompressedHeader {
    /// Reads the header at the start of `bytes`; `offset` is its place in the file. Only
    /// the 8-byte header Particle's tools write is accepted.
    pub fn parse(bytes: &[u8], offset: usize) -> Result<CompressedHeader> {
        let b = bytes
            .get(..COMPRESSED_HEADER_LEN)
            .ok_or(ModuleError::Truncated {
                what: "compressed module header",
                offset,
                needed: COMPRESSED_HEADER_LEN,
                len: offset + bytes.len(),
            })?;
        let size = u16::from_le_bytes([b[field::SIZE.start], b[field::SIZE.start + 1]]);
        if usize::from(size) != COMPRESSED_HEADER_LEN {
            return Err(ModuleError::BadCompressionHeader {
                offset: offset + field::SIZE.start,
                field: "size",
                value: u32::from(size),
            });
        }
        let o = field::ORIGINAL_SIZE.start;
        Ok(CompressedHeader {
            method: b[field::METHOD],
            window_bits: b[field::WINDOW_BITS],
            original_size: u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]),
        })
    }

    /// The 8 header bytes.
    pub fn to_bytes(&self) -> [u8; COMPRESSED_HEADER_LEN] {
        let mut out = [0u8; COMPRESSED_HEADER_LEN];
        out[field::SIZE].copy_from_slice(&(COMPRESSED_HEADER_LEN as u16).to_le_bytes());
        out[field::METHOD] = self.method;
        out[field::WINDOW_BITS] = self.window_bits;
        out[field::ORIGINAL_SIZE].copy_from_slice(&self.original_size.to_le_bytes());
        out
    }

    /// Checks method and window bits as the bootloader does; `offset` is the header's place.
    pub fn check(&self, offset: usize) -> Result<()> {
        if self.method != METHOD_RAW_DEFLATE {
            return Err(ModuleError::BadCompressionHeader {
                offset: offset + field::METHOD,
                field: "method",
                value: u32::from(self.method),
            });
        }
        if self.window_bits != 0 && !(8..=15).contains(&self.window_bits) {
            return Err(ModuleError::BadCompressionHeader {
                offset: offset + field::WINDOW_BITS,
                field: "window_bits",
                value: u32::from(self.window_bits),
            });
        }
        Ok(())
    }
}

/// Inflates a raw deflate stream in blocks, as a bootloader copying to flash does.
///
/// ```
/// # use protocol::module::Inflater;
/// let stream = miniz_oxide::deflate::compress_to_vec(&[7u8; 1000], 6);
/// let mut inflater = Inflater::new(&stream, 1000, 0);
/// let mut block = [0u8; 256];
/// let mut total = 0;
/// while let n @ 1.. = inflater.next_block(&mut block).unwrap() {
///     total += n;
/// }
/// assert_eq!(total, 1000);
/// ```
pub struct Inflater<'a> {
    state: Box<InflateState>,
    input: &'a [u8],
    consumed: usize,
    produced: usize,
    expected: usize,
    offset: usize,
    finished: bool,
}

impl<'a> Inflater<'a> {
    /// An inflater over `stream`, which must inflate to exactly `expected` bytes; `offset` is
    /// where the stream starts in the file (for errors).
    pub fn new(stream: &'a [u8], expected: usize, offset: usize) -> Inflater<'a> {
        Inflater {
            state: InflateState::new_boxed(DataFormat::Raw),
            input: stream,
            consumed: 0,
            produced: 0,
            expected,
            offset,
            finished: false,
        }
    }

    /// Bytes of the stream consumed so far.
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// Fills `block` with the next inflated bytes and returns how many were written: the block
    /// length except for the last block, then 0 once the stream has ended with exactly the
    /// expected size. Errors on a corrupt or truncated stream or a wrong size.
    pub fn next_block(&mut self, block: &mut [u8]) -> Result<usize> {
        let mut written = 0;
        while !self.finished && written < block.len() {
            let input = self.input.get(self.consumed..).unwrap_or(&[]);
            let out = &mut block[written..];
            let res = inflate(&mut self.state, input, out, MZFlush::None);
            self.consumed += res.bytes_consumed;
            written += res.bytes_written;
            self.produced += res.bytes_written;
            if self.produced > self.expected {
                return Err(ModuleError::DecompressedSizeMismatch {
                    expected: self.expected,
                    actual: self.produced,
                });
            }
            match res.status {
                Ok(MZStatus::StreamEnd) => self.finished = true,
                Ok(_) if res.bytes_consumed == 0 && res.bytes_written == 0 => {
                    return Err(self.corrupt("stream makes no progress"));
                }
                Ok(_) => {}
                Err(MZError::Buf) => return Err(self.corrupt("stream ends before its last block")),
                Err(_) => return Err(self.corrupt("invalid deflate data")),
            }
        }
        if self.finished && self.produced != self.expected {
            return Err(ModuleError::DecompressedSizeMismatch {
                expected: self.expected,
                actual: self.produced,
            });
        }
        Ok(written)
    }

    fn corrupt(&self, reason: &'static str) -> ModuleError {
        ModuleError::CorruptDeflateStream {
            offset: self.offset,
            reason,
        }
    }
}

/// Inflates a whole raw deflate stream that must give exactly `expected` bytes.
pub fn inflate_exact(stream: &[u8], expected: usize, offset: usize) -> Result<Vec<u8>> {
    let mut inflater = Inflater::new(stream, expected, offset);
    let mut out = Vec::new();
    let mut block = vec![0u8; 16 * 1024];
    loop {
        let n = inflater.next_block(&mut block)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&block[..n]);
    }
}

/// Compresses a module (section 4.5): with DROP_MODULE_INFO the body, otherwise the whole
/// file, deflated raw after the original prefix (flags |= COMPRESSED, new end address) and the
/// 8-byte header, followed by the original suffix, with SHA-256 and CRC-32 recomputed.
pub fn compress(module: &[u8]) -> Result<Vec<u8>> {
    let m = Module::parse(module)?;
    if m.prefix.flags.contains(ModuleFlags::COMPRESSED) {
        return Err(ModuleError::AlreadyCompressed);
    }
    if m.prefix.flags.contains(ModuleFlags::COMBINED) {
        return Err(ModuleError::UnexpectedCombined {
            offset: m.prefix_offset,
        });
    }
    let drop_info = m.prefix.flags.contains(ModuleFlags::DROP_MODULE_INFO);
    if drop_info && m.prefix_offset != 0 {
        return Err(ModuleError::InvalidBuild {
            reason:
                "DROP_MODULE_INFO cannot be set on a module with a vector table before its prefix",
        });
    }
    let payload = if drop_info {
        module.get(m.body.clone()).unwrap_or(&[])
    } else {
        module
    };
    let original_size = u32::try_from(payload.len()).map_err(|_| ModuleError::FieldOverflow {
        field: "original_size",
        value: payload.len() as u64,
    })?;
    let deflated = miniz_oxide::deflate::compress_to_vec(payload, DEFLATE_LEVEL);

    let prefix_bytes = module.get(m.prefix_offset..m.body.start).unwrap_or(&[]);
    let tail = module.get(m.body.end..).unwrap_or(&[]);
    let mut out = Vec::with_capacity(
        prefix_bytes.len() + COMPRESSED_HEADER_LEN + deflated.len() + tail.len(),
    );
    out.extend_from_slice(prefix_bytes);
    out.extend_from_slice(
        &CompressedHeader {
            method: METHOD_RAW_DEFLATE,
            window_bits: 0,
            original_size,
        }
        .to_bytes(),
    );
    out.extend_from_slice(&deflated);
    out.extend_from_slice(tail);

    let mut prefix = m.prefix;
    prefix.flags.insert(ModuleFlags::COMPRESSED);
    prefix.end_address = end_address(prefix.start_address, out.len())?;
    prefix.emit(&mut out)?;
    update_checksums(&mut out)?;
    Ok(out)
}

/// Inflates a compressed module's data: exactly `original_size` bytes, what the bootloader
/// writes to `module_start_address` (the whole original module, or only its body with
/// DROP_MODULE_INFO). A bootloader writing in blocks uses [`Inflater`] instead.
pub fn decompress(module: &[u8]) -> Result<Vec<u8>> {
    let m = Module::parse(module)?;
    let header = m.compressed_header.ok_or(ModuleError::NotCompressed)?;
    header.check(m.compressed_header_range().start)?;
    let stream = module.get(m.body.clone()).unwrap_or(&[]);
    let expected =
        usize::try_from(header.original_size).map_err(|_| ModuleError::FieldOverflow {
            field: "original_size",
            value: u64::from(header.original_size),
        })?;
    inflate_exact(stream, expected, m.body.start)
}

/// Turns a compressed module back into the uncompressed module file: the inflated data itself,
/// or with DROP_MODULE_INFO the prefix, inflated body and suffix with COMPRESSED cleared and
/// SHA-256 / CRC-32 recomputed.
pub fn decompress_module(module: &[u8]) -> Result<Vec<u8>> {
    let m = Module::parse(module)?;
    if m.prefix.flags.contains(ModuleFlags::COMBINED) {
        return Err(ModuleError::UnexpectedCombined {
            offset: m.prefix_offset,
        });
    }
    let data = decompress(module)?;
    if !m.prefix.flags.contains(ModuleFlags::DROP_MODULE_INFO) {
        return Ok(data);
    }
    let header_at = m.compressed_header_range().start;
    let prefix_bytes = module.get(m.prefix_offset..header_at).unwrap_or(&[]);
    let tail = module.get(m.body.end..).unwrap_or(&[]);
    let mut out = Vec::with_capacity(prefix_bytes.len() + data.len() + tail.len());
    out.extend_from_slice(prefix_bytes);
    out.extend_from_slice(&data);
    out.extend_from_slice(tail);
    let mut prefix = m.prefix;
    prefix.flags.remove(ModuleFlags::COMPRESSED);
    prefix.end_address = end_address(prefix.start_address, out.len())?;
    prefix.emit(&mut out)?;
    update_checksums(&mut out)?;
    Ok(out)
}

/// `start + file_len - 4`, checked.
pub(crate) fn end_address(start: u32, file_len: usize) -> Result<u32> {
    let overflow = ModuleError::FieldOverflow {
        field: "module_end_address",
        value: u64::from(start) + file_len as u64,
    };
    let body = u32::try_from(file_len.checked_sub(4).ok_or(overflow.clone())?)
        .map_err(|_| overflow.clone())?;
    start.checked_add(body).ok_or(overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = CompressedHeader {
            method: 0,
            window_bits: 0,
            original_size: 123_456,
        };
        assert_eq!(CompressedHeader::parse(&h.to_bytes(), 0).unwrap(), h);
    }

    #[test]
    fn header_with_another_size_is_rejected_naming_the_field() {
        let mut bytes = CompressedHeader {
            method: 0,
            window_bits: 0,
            original_size: 1,
        }
        .to_bytes();
        bytes[0] = 12;
        let err = CompressedHeader::parse(&bytes, 40).unwrap_err();
        assert_eq!(
            err,
            ModuleError::BadCompressionHeader {
                offset: 40,
                field: "size",
                value: 12
            }
        );
    }

    #[test]
    fn unknown_method_and_window_are_rejected() {
        let h = CompressedHeader {
            method: 1,
            window_bits: 0,
            original_size: 1,
        };
        assert!(matches!(
            h.check(0),
            Err(ModuleError::BadCompressionHeader {
                field: "method",
                ..
            })
        ));
        let h = CompressedHeader {
            method: 0,
            window_bits: 7,
            original_size: 1,
        };
        assert!(matches!(
            h.check(0),
            Err(ModuleError::BadCompressionHeader {
                field: "window_bits",
                ..
            })
        ));
    }

    #[test]
    fn inflater_writes_256_byte_blocks_then_the_rest() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let stream = miniz_oxide::deflate::compress_to_vec(&data, 9);
        let mut inflater = Inflater::new(&stream, data.len(), 0);
        let mut block = [0u8; BOOTLOADER_BLOCK_LEN];
        let mut sizes = Vec::new();
        let mut out = Vec::new();
        loop {
            let n = inflater.next_block(&mut block).unwrap();
            if n == 0 {
                break;
            }
            sizes.push(n);
            out.extend_from_slice(&block[..n]);
        }
        assert_eq!(sizes, vec![256, 256, 256, 232]);
        assert_eq!(out, data);
    }

    #[test]
    fn inflating_to_another_size_is_rejected() {
        let stream = miniz_oxide::deflate::compress_to_vec(&[1u8; 100], 6);
        assert_eq!(
            inflate_exact(&stream, 99, 0).unwrap_err(),
            ModuleError::DecompressedSizeMismatch {
                expected: 99,
                actual: 100
            }
        );
        assert_eq!(
            inflate_exact(&stream, 101, 0).unwrap_err(),
            ModuleError::DecompressedSizeMismatch {
                expected: 101,
                actual: 100
            }
        );
    }

    #[test]
    fn truncated_stream_is_rejected() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 13 % 253) as u8).collect();
        let stream = miniz_oxide::deflate::compress_to_vec(&data, 6);
        let err = inflate_exact(&stream[..stream.len() / 2], data.len(), 32).unwrap_err();
        assert!(matches!(
            err,
            ModuleError::CorruptDeflateStream { offset: 32, .. }
        ));
    }
}
