//! Block1 / Block2 options (RFC 7959 §2.2), used for describes larger than one message
//! (reference §1.10).
//!
//! ```text
//!  value (uint, 0..3 bytes on the wire, 0..4 accepted):  NUM (4..20 bits) | M (1 bit) | SZX (3 bits)
//!  block size = 2 ** (SZX + 4); SZX 7 is reserved
//! ```

use super::{decode_uint, encode_uint, CoapError};

/// SZX: the block size exponent, 16 << szx bytes. 7 is reserved and never constructed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockSize(u8);

impl BlockSize {
    /// 512 bytes: the device's describe block size when 1024 does not fit its message size.
    pub const B512: BlockSize = BlockSize(5);
    /// 1024 bytes.
    pub const B1024: BlockSize = BlockSize(6);

    /// `None` for the reserved SZX 7 and anything larger.
    pub const fn from_szx(szx: u8) -> Option<BlockSize> {
        if szx < 7 {
            Some(BlockSize(szx))
        } else {
            None
        }
    }

    pub const fn szx(self) -> u8 {
        self.0
    }

    pub const fn bytes(self) -> usize {
        16 << self.0
    }

    /// The device's choice for a describe (reference §1.10): 1024 if `16 + 1024` fits in its
    /// maximum message size, else 512.
    pub const fn for_describe(max_message_size: usize) -> BlockSize {
        if 16 + 1024 <= max_message_size {
            BlockSize::B1024
        } else {
            BlockSize::B512
        }
    }
}

/// One Block1 or Block2 option value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockOption {
    /// Block number, 0-based, < 2^20.
    pub num: u32,
    /// More blocks follow.
    pub more: bool,
    pub size: BlockSize,
}

impl BlockOption {
    pub const MAX_NUM: u32 = (1 << 20) - 1;

    /// Decodes option `number`'s value.
    pub fn parse(number: u16, value: &[u8]) -> Result<BlockOption, BlockError> {
        let raw = match decode_uint(value) {
            Some(raw) if value.len() <= 3 => raw,
            _ => {
                return Err(BlockError::TooLong {
                    number,
                    length: value.len(),
                })
            }
        };
        let szx = (raw & 0x07) as u8;
        let size = BlockSize::from_szx(szx).ok_or(BlockError::ReservedSize { number })?;
        Ok(BlockOption {
            num: raw >> 4,
            more: raw & 0x08 != 0,
            size,
        })
    }

    /// The option value, as a uint.
    pub fn emit(&self) -> Result<Vec<u8>, BlockError> {
        if self.num > Self::MAX_NUM {
            return Err(BlockError::NumberTooLarge { num: self.num });
        }
        Ok(encode_uint(
            self.num << 4 | u32::from(self.more) << 3 | u32::from(self.size.szx()),
        ))
    }

    /// Byte offset of this block in the whole body.
    pub fn offset(&self) -> usize {
        self.num as usize * self.size.bytes()
    }

    /// Splits `body` into blocks of `size`: each block option with its slice.
    pub fn split(body: &[u8], size: BlockSize) -> Vec<(BlockOption, &[u8])> {
        let chunks: Vec<&[u8]> = if body.is_empty() {
            vec![body]
        } else {
            body.chunks(size.bytes()).collect()
        };
        let last = chunks.len() - 1;
        chunks
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| {
                (
                    BlockOption {
                        num: i as u32,
                        more: i != last,
                        size,
                    },
                    chunk,
                )
            })
            .collect()
    }
}

/// A Block1/Block2 option that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("block option {number} value of {length} bytes is longer than 3 bytes")]
    TooLong { number: u16, length: usize },
    #[error("block option {number} uses the reserved block size exponent 7")]
    ReservedSize { number: u16 },
    #[error("block number {num} does not fit in 20 bits")]
    NumberTooLarge { num: u32 },
}

impl From<BlockError> for CoapError {
    fn from(error: BlockError) -> CoapError {
        CoapError::Encoder(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_option_round_trips_rfc7959_values() {
        // NUM 2, M 1, SZX 6 => 0x2E.
        let block = BlockOption::parse(27, &[0x2E]).unwrap();
        assert_eq!(
            block,
            BlockOption {
                num: 2,
                more: true,
                size: BlockSize::B1024
            }
        );
        assert_eq!(block.emit().unwrap(), vec![0x2E]);
        assert_eq!(block.offset(), 2048);
        // Block 0 of 512 with no more blocks is the value 5.
        assert_eq!(
            BlockOption::parse(23, &[0x05]).unwrap().size,
            BlockSize::B512
        );
    }

    #[test]
    fn reserved_block_size_is_refused() {
        assert_eq!(
            BlockOption::parse(23, &[0x07]),
            Err(BlockError::ReservedSize { number: 23 })
        );
        assert!(BlockOption::parse(23, &[1, 2, 3, 4]).is_err());
    }

    #[test]
    fn describe_block_size_follows_max_message_size() {
        assert_eq!(BlockSize::for_describe(1152), BlockSize::B1024);
        assert_eq!(BlockSize::for_describe(1039), BlockSize::B512);
    }

    #[test]
    fn split_marks_every_block_but_the_last_with_more() {
        let body = vec![7u8; 1500];
        let blocks = BlockOption::split(&body, BlockSize::B1024);
        assert_eq!(blocks.len(), 2);
        assert!(blocks[0].0.more && !blocks[1].0.more);
        assert_eq!(blocks[1].1.len(), 476);
    }
}
