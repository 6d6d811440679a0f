//! `/sys/fw_transfer`: the persisted state of a resumable OTA transfer (reference 2.4), laid out
//! as Device OS's `SimpleFileStorage` writes it (`services/src/simple_file_storage.cpp`,
//! `PersistentTransferState` in `system/src/firmware_update.cpp`).
//!
//! ```text
//! file    0..4    record size, u32 LE (72)
//!         4..     records, appended; the last one is current
//! record  0..32   file_hash     SHA-256 of the whole file (the UpdateStart File-Sha256)
//!         32..64  partial_hash  SHA-256 of file bytes [0, partial_size)
//!         64..68  file_size     u32 LE
//!         68..72  partial_size  u32 LE, the contiguous prefix received so far
//! ```
//!
//! A save appends one record while the file stays within one 4 KiB file-system block
//! (`fileSize + size <= FILESYSTEM_BLOCK_SIZE`) and the header names the same record size;
//! otherwise the file is truncated and rewritten with the header and one record. The emulator's
//! store writes whole values atomically, so the whole file is what gets stored at each sync.

/// Store key standing for the LittleFS file `/sys/fw_transfer`.
pub const TRANSFER_STATE_KEY: &str = "sys/fw_transfer";

/// Size of one record (`sizeof(PersistentTransferState)`).
pub const RECORD_LEN: usize = 72;

/// `FILESYSTEM_BLOCK_SIZE`: records are appended while the file fits in one block.
pub const FILE_BLOCK_LEN: usize = 4096;

/// Length of the record-size header.
pub const HEADER_LEN: usize = 4;

/// Byte ranges of one record.
mod field {
    use core::ops::Range;
    pub const FILE_HASH: Range<usize> = 0..32;
    pub const PARTIAL_HASH: Range<usize> = 32..64;
    pub const FILE_SIZE: Range<usize> = 64..68;
    pub const PARTIAL_SIZE: Range<usize> = 68..72;
}

fn u32_at(bytes: &[u8], range: core::ops::Range<usize>) -> Option<u32> {
    let b: [u8; 4] = bytes.get(range)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

fn hash_at(bytes: &[u8], range: core::ops::Range<usize>) -> Option<[u8; 32]> {
    bytes.get(range)?.try_into().ok()
}

/// One `PersistentTransferState` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferRecord {
    pub file_hash: [u8; 32],
    pub partial_hash: [u8; 32],
    pub file_size: u32,
    pub partial_size: u32,
}

impl TransferRecord {
    /// Reads a record from the first [`RECORD_LEN`] bytes; `None` if there are fewer.
    pub fn parse(bytes: &[u8]) -> Option<TransferRecord> {
        Some(TransferRecord {
            file_hash: hash_at(bytes, field::FILE_HASH)?,
            partial_hash: hash_at(bytes, field::PARTIAL_HASH)?,
            file_size: u32_at(bytes, field::FILE_SIZE)?,
            partial_size: u32_at(bytes, field::PARTIAL_SIZE)?,
        })
    }

    pub fn emit(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        out[field::FILE_HASH].copy_from_slice(&self.file_hash);
        out[field::PARTIAL_HASH].copy_from_slice(&self.partial_hash);
        out[field::FILE_SIZE].copy_from_slice(&self.file_size.to_le_bytes());
        out[field::PARTIAL_SIZE].copy_from_slice(&self.partial_size.to_le_bytes());
        out
    }
}

/// Why a stored file holds no usable record (`SimpleFileStorage::load` failing, or returning
/// fewer bytes than a record; Device OS then starts the transfer afresh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransferFileProblem {
    #[error("the file is {len} bytes, shorter than its 4-byte header")]
    NoHeader { len: usize },
    #[error("the header names {record_size}-byte records but the file holds {len} bytes")]
    BadRecordSize { record_size: u32, len: usize },
    #[error("the current record is {record_size} bytes, shorter than a {RECORD_LEN}-byte record")]
    ShortRecord { record_size: u32 },
}

/// The contents of `/sys/fw_transfer` as the open file holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferFile {
    bytes: Vec<u8>,
}

impl TransferFile {
    /// An empty (new) file.
    pub fn new() -> TransferFile {
        TransferFile::default()
    }

    /// A file with these contents (as read from the store).
    pub fn from_bytes(bytes: Vec<u8>) -> TransferFile {
        TransferFile { bytes }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The record size the header names, if there is a header.
    fn record_size(&self) -> Option<u32> {
        u32_at(&self.bytes, 0..HEADER_LEN)
    }

    /// The current record: what `load(&state, sizeof(state))` returns when it returns a
    /// whole record. The last `record_size` bytes of the file are the current record; a header
    /// naming more than a record's bytes still yields the record's leading 72 bytes, as
    /// `load` reads `min(size, record_size)` bytes from there.
    pub fn current(&self) -> Result<TransferRecord, TransferFileProblem> {
        let len = self.bytes.len();
        let record_size = self
            .record_size()
            .ok_or(TransferFileProblem::NoHeader { len })?;
        let body = len - HEADER_LEN;
        if (record_size == 0 && body > 0) || (record_size as usize) > body {
            return Err(TransferFileProblem::BadRecordSize { record_size, len });
        }
        if (record_size as usize) < RECORD_LEN {
            return Err(TransferFileProblem::ShortRecord { record_size });
        }
        let start = len - record_size as usize;
        TransferRecord::parse(&self.bytes[start..])
            .ok_or(TransferFileProblem::ShortRecord { record_size })
    }

    /// `SimpleFileStorage::save`: append the record if the header names [`RECORD_LEN`]-byte
    /// records and the file stays within one block, else truncate and rewrite.
    pub fn save(&mut self, record: &TransferRecord) {
        let append = self.bytes.len() >= HEADER_LEN
            && self.record_size() == Some(RECORD_LEN as u32)
            && self.bytes.len() + RECORD_LEN <= FILE_BLOCK_LEN;
        if !append {
            self.bytes.clear();
            self.bytes
                .extend_from_slice(&(RECORD_LEN as u32).to_le_bytes());
        }
        self.bytes.extend_from_slice(&record.emit());
    }

    /// Number of whole records after the header.
    pub fn record_count(&self) -> usize {
        self.bytes.len().saturating_sub(HEADER_LEN) / RECORD_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partial: u32) -> TransferRecord {
        TransferRecord {
            file_hash: [0x11; 32],
            partial_hash: [partial as u8; 32],
            file_size: 9965,
            partial_size: partial,
        }
    }

    #[test]
    fn record_layout_is_hashes_then_little_endian_sizes() {
        let bytes = record(0x0400).emit();
        assert_eq!(&bytes[..32], &[0x11; 32]);
        assert_eq!(&bytes[32..64], &[0x00; 32]);
        assert_eq!(&bytes[64..68], &[0xED, 0x26, 0x00, 0x00]);
        assert_eq!(&bytes[68..72], &[0x00, 0x04, 0x00, 0x00]);
        assert_eq!(TransferRecord::parse(&bytes), Some(record(0x0400)));
        assert_eq!(TransferRecord::parse(&bytes[..71]), None);
    }

    #[test]
    fn records_are_appended_within_one_block_then_the_file_is_rewritten() {
        let mut file = TransferFile::new();
        file.save(&record(1));
        assert_eq!(&file.as_bytes()[..4], &[72, 0, 0, 0]);
        assert_eq!(file.as_bytes().len(), 76);
        // 4 + 56 * 72 = 4036 bytes; the 57th record would need 4108 > 4096.
        for n in 2..=56 {
            file.save(&record(n));
            assert_eq!(file.record_count(), n as usize);
            assert_eq!(file.current(), Ok(record(n)));
        }
        assert_eq!(file.as_bytes().len(), 4036);
        file.save(&record(57));
        assert_eq!(file.as_bytes().len(), 76, "rewritten with one record");
        assert_eq!(file.current(), Ok(record(57)));
    }

    #[test]
    fn a_file_with_another_record_size_is_rewritten_on_save() {
        let mut bytes = 100u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 100]);
        let mut file = TransferFile::from_bytes(bytes);
        file.save(&record(3));
        assert_eq!(file.as_bytes().len(), 76);
        assert_eq!(file.current(), Ok(record(3)));
    }

    #[test]
    fn unusable_files_name_their_problem() {
        assert_eq!(
            TransferFile::from_bytes(vec![72, 0]).current(),
            Err(TransferFileProblem::NoHeader { len: 2 })
        );
        assert_eq!(
            TransferFile::from_bytes(vec![72, 0, 0, 0, 1, 2, 3]).current(),
            Err(TransferFileProblem::BadRecordSize {
                record_size: 72,
                len: 7
            })
        );
        assert_eq!(
            TransferFile::from_bytes(vec![0, 0, 0, 0, 1]).current(),
            Err(TransferFileProblem::BadRecordSize {
                record_size: 0,
                len: 5
            })
        );
        assert_eq!(
            TransferFile::from_bytes(vec![8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]).current(),
            Err(TransferFileProblem::ShortRecord { record_size: 8 })
        );
        // A larger record size: the last record_size bytes start with a whole record.
        let mut bytes = 80u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&record(9).emit());
        bytes.extend_from_slice(&[0xEE; 8]);
        assert_eq!(TransferFile::from_bytes(bytes).current(), Ok(record(9)));
    }
}
