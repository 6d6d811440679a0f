//! Power-safe key-value store on the simulated flash, standing in for Device OS's LittleFS.
//!
//! Device OS keeps the DCT with its module slots (`reference/particle-protocol.md` §5.2), the
//! OTA resume state `/sys/fw_transfer` (§2.4) and other system files in LittleFS on external
//! flash, and relies on it being copy-on-write: the DCT slot write is the OTA commit point
//! (§5.4), and that state must survive power loss (§8). This store gives the same guarantee
//! with a much smaller design; every flash write goes through [`FlashArray`], so it is
//! numbered and can be cut like any other operation.
//!
//! # Layout
//!
//! The area is split into two equal *banks* of whole sectors (an odd last sector is unused).
//! One bank is active; it starts with a bank header and continues with records appended in
//! order, each starting on a program-unit boundary and written with one program operation:
//!
//! ```text
//! bank header (16 bytes, padded to the program unit)
//!   0..4   magic "HILK"
//!   4..6   layout version (1), u16 LE
//!   6..8   reserved, 0
//!   8..12  generation, u32 LE (serial-number order; the newer valid bank is active)
//!   12..16 CRC-32 of bytes 0..12
//! record (12-byte header, key, value, 0xFF padding to the program unit)
//!   0      kind: 0xA5 value, 0x5A removal
//!   1      key length (bytes of UTF-8, at most 255)
//!   2..4   reserved, 0
//!   4..8   value length, u32 LE (0 for a removal)
//!   8..12  CRC-32 of bytes 0..8, key and value
//! ```
//!
//! # Power safety
//!
//! * A `put` or `remove` that fits appends one record. Until that program completes the old
//!   record is the newest valid one for the key; a torn record fails its CRC.
//! * Mounting scans the active bank; the log ends at the first erased record header. If a
//!   record is invalid (torn) or any byte after the end of the log is not erased, the tail is
//!   *dirty*: the store never programs there again, and the next write compacts instead.
//!   Mount itself never writes.
//! * Compaction (when the record does not fit, or the tail is dirty) builds the new contents in
//!   the other bank: erase it (unless it is already blank), program the live records including
//!   the change, then program the bank header with the next generation — the commit point —
//!   and finally erase the old bank. Before the commit the old bank is newer-and-valid; after
//!   it the new bank is newer; a torn header fails its CRC.
//!
//! After a flash error in `put`, `remove` or `format` the in-memory index may be wrong; the
//! store marks itself stale and rebuilds the index from flash (read-only, like `mount`) at the
//! start of its next operation. After a power loss the usual path is `power_on` and a fresh
//! [`Store::mount`].

use std::collections::BTreeMap;

use crate::flash::{ChipId, FlashArray, FlashError, ERASED};

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// Bank header fields (byte ranges).
mod bank_field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: Range<usize> = 4..6;
    pub const GENERATION: Range<usize> = 8..12;
    pub const CRC: Range<usize> = 12..16;
    pub const LEN: usize = 16;
}

/// Record header fields (byte ranges).
mod record_field {
    use std::ops::Range;
    pub const KIND: usize = 0;
    pub const KEY_LEN: usize = 1;
    pub const VALUE_LEN: Range<usize> = 4..8;
    pub const CRC: Range<usize> = 8..12;
    pub const LEN: usize = 12;
}

const BANK_MAGIC: [u8; 4] = *b"HILK";
const LAYOUT_VERSION: u16 = 1;
const KIND_VALUE: u8 = 0xA5;
const KIND_REMOVAL: u8 = 0x5A;

/// Everything that can go wrong with the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("store flash access failed: {0}")]
    Flash(#[from] FlashError),
    #[error("no store is formatted at {start:#010x} on {chip} flash")]
    NotFormatted { chip: ChipId, start: u32 },
    #[error("store area of {len} bytes at {start:#010x} on {chip} flash is unusable: {what}")]
    BadArea {
        chip: ChipId,
        start: u32,
        len: u32,
        what: &'static str,
    },
    #[error("store is corrupt at {at:#010x}: {what}")]
    Corrupt { at: u32, what: &'static str },
    #[error("store is full: the live records need {needed} bytes but only {capacity} fit")]
    /// `needed`: bytes of the live records after the change, with headers and padding;
    /// `capacity`: [`Store::capacity`].
    Full { needed: u64, capacity: u32 },
    #[error("key of {len} bytes is longer than the {max}-byte limit")]
    KeyTooLong { len: usize, max: usize },
    #[error("value of {len} bytes is larger than the {max} bytes that fit with this key")]
    ValueTooLarge { len: usize, max: usize },
}

/// Where the store lives and the sizes derived from the flash geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Area {
    chip: ChipId,
    start: u32,
    bank_len: u32,
    /// Bank header length, rounded up to the program unit.
    header_len: u32,
    unit: u32,
}

impl Area {
    fn new(flash: &FlashArray, chip: ChipId, start: u32, len: u32) -> Result<Area, StoreError> {
        let bad = |what| StoreError::BadArea {
            chip,
            start,
            len,
            what,
        };
        let g = flash
            .geometry(chip)
            .ok_or(bad("the device has no such chip"))?;
        if !g.contains(start, u64::from(len)) {
            return Err(bad("it is not inside the chip"));
        }
        if !(start - g.base).is_multiple_of(g.sector_size) || !len.is_multiple_of(g.sector_size) {
            return Err(bad("it is not made of whole sectors"));
        }
        let bank_len = len / g.sector_size / 2 * g.sector_size;
        if bank_len == 0 {
            return Err(bad("it needs at least two sectors"));
        }
        let header_len = round_up(bank_field::LEN as u64, g.program_unit) as u32;
        if u64::from(bank_len) < u64::from(header_len) + round_up(16, g.program_unit) {
            return Err(bad("its sectors are too small to hold a record"));
        }
        Ok(Area {
            chip,
            start,
            bank_len,
            header_len,
            unit: g.program_unit,
        })
    }

    fn bank_addr(&self, bank: usize) -> u32 {
        self.start + bank as u32 * self.bank_len
    }

    /// Bytes a bank can hold after its header.
    fn capacity(&self) -> u32 {
        self.bank_len - self.header_len
    }
}

fn round_up(n: u64, unit: u32) -> u64 {
    n.div_ceil(u64::from(unit)) * u64::from(unit)
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(b)
}

/// Whether generation `a` is newer than `b` in serial-number order.
fn newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

fn encode_bank_header(generation: u32, header_len: u32) -> Vec<u8> {
    let mut h = vec![ERASED; header_len as usize];
    h[bank_field::MAGIC].copy_from_slice(&BANK_MAGIC);
    h[bank_field::VERSION].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&[0, 0]);
    h[bank_field::GENERATION].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&h[..bank_field::CRC.start]);
    h[bank_field::CRC].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The generation in a bank header, if the header is valid.
fn parse_bank_header(h: &[u8]) -> Option<u32> {
    let crc = le_u32(&h[bank_field::CRC]);
    let ok = h[bank_field::MAGIC] == BANK_MAGIC
        && h[bank_field::VERSION] == LAYOUT_VERSION.to_le_bytes()
        && crc == crc32fast::hash(&h[..bank_field::CRC.start]);
    ok.then(|| le_u32(&h[bank_field::GENERATION]))
}

/// A record ready to program: header, key, value and 0xFF padding.
fn encode_record(kind: u8, key: &str, value: &[u8], unit: u32) -> Vec<u8> {
    let body = record_field::LEN + key.len() + value.len();
    let mut r = Vec::with_capacity(round_up(body as u64, unit) as usize);
    r.extend_from_slice(&[kind, key.len() as u8, 0, 0]);
    r.extend_from_slice(&(value.len() as u32).to_le_bytes());
    r.extend_from_slice(&[0; 4]);
    r.extend_from_slice(key.as_bytes());
    r.extend_from_slice(value);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&r[..record_field::CRC.start]);
    crc.update(&r[record_field::LEN..]);
    r[record_field::CRC].copy_from_slice(&crc.finalize().to_le_bytes());
    r.resize(round_up(body as u64, unit) as usize, ERASED);
    r
}

/// Where a live value's record sits in the active bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecordLoc {
    /// Offset of the record from the start of the bank.
    offset: u32,
    /// Record length including padding.
    len: u32,
    key_len: u8,
    value_len: u32,
}

/// One change to apply.
#[derive(Clone, Copy)]
enum Change<'a> {
    Put(&'a str, &'a [u8]),
    Remove(&'a str),
}

impl Change<'_> {
    fn key(&self) -> &str {
        match self {
            Change::Put(k, _) | Change::Remove(k) => k,
        }
    }
}

/// A mounted store: its place on flash and an index of the live values. Values are read from
/// flash on demand; the flash itself is passed to every call.
#[derive(Debug, Clone)]
pub struct Store {
    area: Area,
    active: usize,
    generation: u32,
    /// Offset in the active bank where the next record goes.
    write_offset: u32,
    /// Something other than erased bytes follows the log: never append, compact first.
    tail_dirty: bool,
    index: BTreeMap<String, RecordLoc>,
    /// A write failed; the index must be rebuilt from flash before it is trusted again.
    stale: bool,
}

impl Store {
    /// Erase the area and create an empty store. At least two sectors are needed; the area is
    /// split into two banks of whole sectors. Formatting is not atomic: if it is interrupted,
    /// a later mount finds either no store or the old one.
    pub fn format(
        flash: &mut FlashArray,
        chip: ChipId,
        start: u32,
        len: u32,
    ) -> Result<Store, StoreError> {
        let area = Area::new(flash, chip, start, len)?;
        flash.erase_range(chip, start, 2 * area.bank_len)?;
        let generation = 1;
        flash.program(
            chip,
            area.bank_addr(0),
            &encode_bank_header(generation, area.header_len),
        )?;
        Ok(Store {
            area,
            active: 0,
            generation,
            write_offset: area.header_len,
            tail_dirty: false,
            index: BTreeMap::new(),
            stale: false,
        })
    }

    /// Find the store in the area and rebuild its index by scanning. Never writes.
    ///
    /// An area without a valid bank header (erased, or never formatted) is
    /// [`StoreError::NotFormatted`]; see [`Store::mount_or_format`].
    pub fn mount(
        flash: &FlashArray,
        chip: ChipId,
        start: u32,
        len: u32,
    ) -> Result<Store, StoreError> {
        let area = Area::new(flash, chip, start, len)?;
        Self::scan(flash, area)
    }

    /// [`Store::mount`], and [`Store::format`] if the area holds no store.
    pub fn mount_or_format(
        flash: &mut FlashArray,
        chip: ChipId,
        start: u32,
        len: u32,
    ) -> Result<Store, StoreError> {
        match Self::mount(flash, chip, start, len) {
            Err(StoreError::NotFormatted { .. }) => Self::format(flash, chip, start, len),
            other => other,
        }
    }

    /// The value stored under `key`, if any.
    pub fn get(&self, flash: &FlashArray, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if self.stale {
            return Self::scan(flash, self.area)?.get(flash, key);
        }
        let Some(loc) = self.index.get(key) else {
            return Ok(None);
        };
        let record = self.read_record(flash, loc)?;
        let from = record_field::LEN + usize::from(loc.key_len);
        Ok(Some(record[from..from + loc.value_len as usize].to_vec()))
    }

    /// Store `value` under `key`, replacing any old value. Either the old or the new value
    /// survives a power loss at any point, never a mixture.
    pub fn put(
        &mut self,
        flash: &mut FlashArray,
        key: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        if key.len() > MAX_KEY_LEN {
            return Err(StoreError::KeyTooLong {
                len: key.len(),
                max: MAX_KEY_LEN,
            });
        }
        let max = (self.area.capacity() as usize).saturating_sub(record_field::LEN + key.len());
        if value.len() > max {
            return Err(StoreError::ValueTooLarge {
                len: value.len(),
                max,
            });
        }
        self.write(flash, Change::Put(key, value))
    }

    /// Remove `key`. Returns whether it was present; removing an absent key writes nothing.
    pub fn remove(&mut self, flash: &mut FlashArray, key: &str) -> Result<bool, StoreError> {
        self.refresh(flash)?;
        if !self.index.contains_key(key) {
            return Ok(false);
        }
        self.write(flash, Change::Remove(key))?;
        Ok(true)
    }

    /// The keys, in byte order, as of the last successful operation.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.index.keys().map(String::as_str)
    }

    /// Whether `key` has a value (as of the last successful operation).
    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes a bank holds for records; the live records (with headers and padding) must fit.
    pub fn capacity(&self) -> u32 {
        self.area.capacity()
    }

    /// Bytes of the active bank taken by records, live or superseded.
    pub fn used(&self) -> u32 {
        self.write_offset - self.area.header_len
    }

    /// Generation of the active bank; it goes up by one with every compaction.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    // ----- internals ---------------------------------------------------------------------

    fn refresh(&mut self, flash: &FlashArray) -> Result<(), StoreError> {
        if self.stale {
            *self = Self::scan(flash, self.area)?;
        }
        Ok(())
    }

    fn write(&mut self, flash: &mut FlashArray, change: Change<'_>) -> Result<(), StoreError> {
        self.refresh(flash)?;
        let result = self.apply(flash, change);
        if let Err(StoreError::Flash(_)) = result {
            self.stale = true;
        }
        result
    }

    fn apply(&mut self, flash: &mut FlashArray, change: Change<'_>) -> Result<(), StoreError> {
        let record = match change {
            Change::Put(key, value) => encode_record(KIND_VALUE, key, value, self.area.unit),
            Change::Remove(key) => encode_record(KIND_REMOVAL, key, &[], self.area.unit),
        };
        let fits =
            u64::from(self.write_offset) + record.len() as u64 <= u64::from(self.area.bank_len);
        if self.tail_dirty || !fits {
            return self.compact(flash, change);
        }
        let offset = self.write_offset;
        flash.program(
            self.area.chip,
            self.area.bank_addr(self.active) + offset,
            &record,
        )?;
        self.write_offset += record.len() as u32;
        match change {
            Change::Put(key, value) => {
                let loc = RecordLoc {
                    offset,
                    len: record.len() as u32,
                    key_len: key.len() as u8,
                    value_len: value.len() as u32,
                };
                self.index.insert(key.to_owned(), loc);
            }
            Change::Remove(key) => {
                self.index.remove(key);
            }
        }
        Ok(())
    }

    /// Write the live records with `change` applied into the other bank, commit it with a
    /// newer bank header, then erase the old bank.
    fn compact(&mut self, flash: &mut FlashArray, change: Change<'_>) -> Result<(), StoreError> {
        let area = self.area;
        let mut records: Vec<(String, RecordLoc, Vec<u8>)> = Vec::new();
        for (key, loc) in &self.index {
            if key != change.key() {
                records.push((key.clone(), *loc, self.read_record(flash, loc)?));
            }
        }
        if let Change::Put(key, value) = change {
            let record = encode_record(KIND_VALUE, key, value, area.unit);
            let loc = RecordLoc {
                offset: 0,
                len: record.len() as u32,
                key_len: key.len() as u8,
                value_len: value.len() as u32,
            };
            records.push((key.to_owned(), loc, record));
        }
        let needed: u64 = records.iter().map(|(_, _, r)| r.len() as u64).sum();
        if needed > u64::from(area.capacity()) {
            return Err(StoreError::Full {
                needed,
                capacity: area.capacity(),
            });
        }

        let target = 1 - self.active;
        let target_addr = area.bank_addr(target);
        if !flash.is_erased(area.chip, target_addr, area.bank_len)? {
            flash.erase_range(area.chip, target_addr, area.bank_len)?;
        }
        let mut index = BTreeMap::new();
        let mut offset = area.header_len;
        for (key, mut loc, record) in records {
            flash.program(area.chip, target_addr + offset, &record)?;
            loc.offset = offset;
            offset += loc.len;
            index.insert(key, loc);
        }
        let generation = self.generation.wrapping_add(1);
        flash.program(
            area.chip,
            target_addr,
            &encode_bank_header(generation, area.header_len),
        )?;
        // Committed: the new bank is the store now, whatever happens to the old one.
        let old = self.active;
        *self = Store {
            area,
            active: target,
            generation,
            write_offset: offset,
            tail_dirty: false,
            index,
            stale: false,
        };
        flash.erase_range(area.chip, area.bank_addr(old), area.bank_len)?;
        Ok(())
    }

    /// Read a live record and check its CRC (it was valid when indexed).
    fn read_record(&self, flash: &FlashArray, loc: &RecordLoc) -> Result<Vec<u8>, StoreError> {
        let addr = self.area.bank_addr(self.active) + loc.offset;
        let record = flash.read_vec(self.area.chip, addr, loc.len as usize)?;
        let body = record_field::LEN + usize::from(loc.key_len) + loc.value_len as usize;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&record[..record_field::CRC.start]);
        crc.update(&record[record_field::LEN..body]);
        if crc.finalize() != le_u32(&record[record_field::CRC]) {
            return Err(StoreError::Corrupt {
                at: addr,
                what: "a live record no longer matches its CRC",
            });
        }
        Ok(record)
    }

    /// Rebuild the index from flash. Read-only.
    fn scan(flash: &FlashArray, area: Area) -> Result<Store, StoreError> {
        let mut generations = [None; 2];
        for (bank, generation) in generations.iter_mut().enumerate() {
            let header = flash.read_vec(area.chip, area.bank_addr(bank), bank_field::LEN)?;
            *generation = parse_bank_header(&header);
        }
        let (active, generation) = match generations {
            [None, None] => {
                return Err(StoreError::NotFormatted {
                    chip: area.chip,
                    start: area.start,
                })
            }
            [Some(a), None] => (0, a),
            [None, Some(b)] => (1, b),
            [Some(a), Some(b)] if a == b => {
                return Err(StoreError::Corrupt {
                    at: area.start,
                    what: "both banks claim the same generation",
                })
            }
            [Some(a), Some(b)] => {
                if newer(a, b) {
                    (0, a)
                } else {
                    (1, b)
                }
            }
        };

        let bank_addr = area.bank_addr(active);
        let mut index = BTreeMap::new();
        let mut offset = area.header_len;
        let mut tail_dirty = false;
        while offset + record_field::LEN as u32 <= area.bank_len {
            let header = flash.read_vec(area.chip, bank_addr + offset, record_field::LEN)?;
            if header.iter().all(|&b| b == ERASED) {
                break;
            }
            match Self::parse_record(flash, area, bank_addr, offset, &header)? {
                Some((key, loc, kind)) => {
                    if kind == KIND_VALUE {
                        index.insert(key, loc);
                    } else {
                        index.remove(&key);
                    }
                    offset += loc.len;
                }
                None => {
                    tail_dirty = true;
                    break;
                }
            }
        }
        if !tail_dirty {
            tail_dirty = !flash.is_erased(area.chip, bank_addr + offset, area.bank_len - offset)?;
        }
        Ok(Store {
            area,
            active,
            generation,
            write_offset: offset,
            tail_dirty,
            index,
            stale: false,
        })
    }

    /// The record at `offset`, or `None` if it is not a complete, valid record (torn).
    fn parse_record(
        flash: &FlashArray,
        area: Area,
        bank_addr: u32,
        offset: u32,
        header: &[u8],
    ) -> Result<Option<(String, RecordLoc, u8)>, StoreError> {
        let kind = header[record_field::KIND];
        let key_len = header[record_field::KEY_LEN];
        let value_len = le_u32(&header[record_field::VALUE_LEN]);
        let body = record_field::LEN as u64 + u64::from(key_len) + u64::from(value_len);
        let len = round_up(body, area.unit);
        let plausible = (kind == KIND_VALUE || (kind == KIND_REMOVAL && value_len == 0))
            && header[2..4] == [0, 0]
            && u64::from(offset) + len <= u64::from(area.bank_len);
        if !plausible {
            return Ok(None);
        }
        let record = flash.read_vec(area.chip, bank_addr + offset, len as usize)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&record[..record_field::CRC.start]);
        crc.update(&record[record_field::LEN..body as usize]);
        if crc.finalize() != le_u32(&record[record_field::CRC]) {
            return Ok(None);
        }
        let key_bytes = &record[record_field::LEN..record_field::LEN + usize::from(key_len)];
        let key = String::from_utf8(key_bytes.to_vec()).map_err(|_| StoreError::Corrupt {
            at: bank_addr + offset,
            what: "a record with a valid CRC has a key that is not UTF-8",
        })?;
        let loc = RecordLoc {
            offset,
            len: len as u32,
            key_len,
            value_len,
        };
        Ok(Some((key, loc, kind)))
    }
}
