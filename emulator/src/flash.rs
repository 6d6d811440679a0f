//! Simulated NOR flash with numbered operations and power cuts.
//!
//! Everything an emulated device keeps across power loss lives here: the internal MCU flash
//! and, on nRF52840 boards, the external QSPI flash (`reference/particle-protocol.md` §5.1
//! layouts, §5.3 bootloader copy, §5.4 atomicity and recovery, §8 "flash model").
//!
//! The model refuses what real NOR flash refuses, in the manner of MCUboot's `simflash`:
//!
//! * erase works on whole sectors and sets every bit to 1 (bytes read `0xFF`);
//! * program only clears bits: programming a 1 over a 0 is rejected
//!   ([`FlashError::ProgramWouldSetBits`]) and nothing is written;
//! * program addresses and lengths are multiples of the chip's program unit.
//!
//! Every erase and program is one *numbered operation*. The counter is shared by all chips of
//! a device and keeps counting across power cycles, so "cut power at operation 17" names one
//! exact moment. A [`PowerCut`] loses power before, during ([`CutMode::Torn`]) or after that
//! operation; from then on every read, erase and program fails with
//! [`FlashError::PowerLost`] until [`FlashArray::power_on`].
//!
//! Rejected operations (bad arguments, set bits) do not consume an operation number: they
//! never reach the chip.
//!
//! Storage is copy-on-write per sector (`Option<Arc<[u8]>>`, `None` = erased; a buffer holds
//! the sector's bytes up to about the last one written, the rest reads erased), and the table
//! of sectors is itself copy-on-write in pieces of 32 entries, so cloning a [`FlashArray`] to
//! snapshot a device costs a pointer per 32 sectors, and a write copies only the sector it
//! touches (and the piece of the table that names it).
//!
//! A fleet of devices holding the same firmware shares more than their starting image: with
//! [`FlashArray::share_identical_sectors`], a sector whose last byte has just been programmed
//! is looked up by content in a pool of this thread's completed sectors and, if the same bytes
//! are there, the device points at the pooled buffer instead of its own. Devices that download
//! the same update then hold one copy of each of its sectors between them, and a device pays
//! only for the sectors that differ. Only memory changes: the bytes read, the operation
//! numbers, cuts, tears and faults are exactly those without sharing.

use std::fmt;
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

/// Value of an erased byte.
pub const ERASED: u8 = 0xFF;

/// Which flash chip of a device. nRF52840 boards have both; rtl872x boards (P2, M-SoM) have
/// one memory-mapped QSPI flash, modelled as `Internal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChipId {
    Internal,
    External,
}

impl fmt::Display for ChipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChipId::Internal => "internal",
            ChipId::External => "external",
        })
    }
}

/// Shape of one chip. Addresses are absolute: byte 0 of the chip is at `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlashGeometry {
    /// Address of byte 0, e.g. `0x0800_0000` on rtl872x, `0` on nRF52840.
    pub base: u32,
    /// Size in bytes; a multiple of `sector_size`.
    pub size: u32,
    /// Erase granularity in bytes.
    pub sector_size: u32,
    /// Program alignment and granularity in bytes; divides `sector_size`.
    pub program_unit: u32,
}

/// "0x00000000 + 1024 KiB, 4096-byte sectors, 4-byte program unit".
impl fmt::Display for FlashGeometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#010x} + {} KiB, {}-byte sectors, {}-byte program unit",
            self.base,
            self.size / 1024,
            self.sector_size,
            self.program_unit
        )
    }
}

impl FlashGeometry {
    /// One past the last address, as u64 so that a chip ending at 4 GiB is representable.
    pub fn end(&self) -> u64 {
        u64::from(self.base) + u64::from(self.size)
    }

    /// Number of sectors (0 for an invalid geometry).
    pub fn sector_count(&self) -> u32 {
        self.size.checked_div(self.sector_size).unwrap_or(0)
    }

    /// Whether `addr..addr+len` lies inside the chip.
    pub fn contains(&self, addr: u32, len: u64) -> bool {
        addr >= self.base
            && u64::from(addr)
                .checked_add(len)
                .is_some_and(|end| end <= self.end())
    }

    fn check(&self, chip: ChipId) -> Result<(), FlashError> {
        let what = if self.size == 0 {
            "size is 0"
        } else if self.sector_size == 0 {
            "sector size is 0"
        } else if self.program_unit == 0 {
            "program unit is 0"
        } else if !self.size.is_multiple_of(self.sector_size) {
            "size is not a multiple of the sector size"
        } else if !self.sector_size.is_multiple_of(self.program_unit) {
            "sector size is not a multiple of the program unit"
        } else if self.end() > 1 << 32 {
            "chip extends past the 4 GiB address space"
        } else {
            return Ok(());
        };
        Err(FlashError::BadGeometry { chip, what })
    }
}

/// The two operations that change flash contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Erase,
    Program,
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpKind::Erase => "erase",
            OpKind::Program => "program",
        })
    }
}

/// How a scheduled power cut hits its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CutMode {
    /// Power is lost just before the operation: flash is unchanged.
    Before,
    /// Power is lost half-way: a program clears a seeded random subset of the bits it would
    /// clear; an erase sets a seeded random subset of the sector's 0-bits to 1.
    Torn,
    /// The operation completes, then power is lost.
    After,
}

impl CutMode {
    /// All modes, for sweeps.
    pub const ALL: [CutMode; 3] = [CutMode::Before, CutMode::Torn, CutMode::After];
}

/// Lose power at operation number `at_op` (see [`FlashArray::op_count`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PowerCut {
    pub at_op: u64,
    pub mode: CutMode,
}

/// What the device was doing when it changed flash, recorded with each logged operation so a
/// harness can find "flash operation N of the download" (see [`FlashArray::set_activity`]).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// Anything else (provisioning, the application, idle store writes).
    #[default]
    Other,
    /// An OTA transfer: staging-area erases and chunk writes, resume-state syncs, the state
    /// kept at a cancel.
    Download,
    /// The commit point: the resume state closed and the module slots written.
    Commit,
    /// The bootloader applying slots (copy or inflate, slot cleanup).
    Apply,
    /// From the end of an apply until the new firmware's first cloud connection.
    FirstBoot,
    /// Part of the commit: an asset module written to the asset file system (see
    /// [`FlashArray::set_part`]; its operations are logged and cut as `Commit`).
    AssetStore,
    /// Part of the apply: the bootloader's update of itself (the user-app backup, the staged
    /// bootloader, the MBR's copy record and copy; see [`FlashArray::set_part`]; its
    /// operations are logged and cut as `Apply`).
    BootloaderCopy,
    /// Part of the download: writing the OTA chunk with this Chunk-Index (1-based, counted
    /// from the transfer's resume offset; see [`FlashArray::set_part`]). A harness cuts power
    /// "while chunk K is written" by an [`ActivityCut`] aimed at it.
    OtaChunk(u32),
}

/// Lose power at the `skip`+1-th operation labelled `activity` from now on (see
/// [`FlashArray::schedule_activity_cut`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ActivityCut {
    pub activity: Activity,
    pub skip: u64,
    pub mode: CutMode,
}

/// An I/O error the flash reports for one operation (a failing chip or bus): the
/// `skip`+1-th operation labelled `activity` (of `kind`, when given) from now on fails with
/// [`FlashError::Io`] and changes nothing; the power stays on and later operations work. The
/// refused operation takes no operation number (see [`FlashArray::schedule_io_fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IoFault {
    pub activity: Activity,
    pub kind: Option<OpKind>,
    pub skip: u64,
}

/// One entry of the operation log (see [`FlashArray::enable_log`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlashOp {
    /// Operation number.
    pub seq: u64,
    pub chip: ChipId,
    pub kind: OpKind,
    pub addr: u32,
    pub len: u32,
    /// The power cut that hit this operation, if any.
    pub cut: Option<CutMode>,
    /// What the device was doing.
    #[serde(default)]
    pub activity: Activity,
}

/// How much sector data a [`FlashArray`] holds (see [`FlashArray::memory`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlashMemory {
    /// Sectors that are not known to be erased and so hold a buffer.
    pub materialised_sectors: usize,
    /// Bytes in buffers that only this array refers to.
    pub unique_bytes: usize,
    /// Bytes in buffers shared with clones (snapshots) of this array.
    pub shared_bytes: usize,
}

/// Everything that can go wrong with a flash access. Rejected operations change nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlashError {
    #[error("the device has no {chip} flash chip")]
    NoSuchChip { chip: ChipId },
    #[error("the {chip} flash chip is listed twice")]
    DuplicateChip { chip: ChipId },
    #[error("{chip} flash geometry is invalid: {what}")]
    BadGeometry { chip: ChipId, what: &'static str },
    #[error(
        "{len}-byte access at {addr:#010x} falls outside {chip} flash \
         ({start:#010x}..{end:#010x})"
    )]
    OutOfRange {
        chip: ChipId,
        addr: u32,
        len: u64,
        start: u32,
        end: u64,
    },
    #[error(
        "{kind} of {len} bytes at {addr:#010x} on {chip} flash is not aligned to \
         {alignment} bytes"
    )]
    Unaligned {
        chip: ChipId,
        kind: OpKind,
        addr: u32,
        len: u64,
        alignment: u32,
    },
    #[error(
        "program at {addr:#010x} on {chip} flash would turn 0 bits into 1; \
         the sector must be erased first"
    )]
    ProgramWouldSetBits { chip: ChipId, addr: u32 },
    #[error("power was lost at flash operation {op}; the device must be powered on again")]
    PowerLost { op: u64 },
    #[error("{kind} at {addr:#010x} on {chip} flash failed with an I/O error (an injected fault)")]
    Io {
        chip: ChipId,
        kind: OpKind,
        addr: u32,
    },
}

#[derive(Debug, Clone)]
struct Chip {
    id: ChipId,
    geometry: FlashGeometry,
    /// One entry per sector; `None` means every byte is erased.
    sectors: SectorTable,
}

/// Number of sectors in one shared piece of a [`SectorTable`].
const TABLE_CHUNK: usize = 32;

/// A chip's sector entries, themselves copy-on-write in pieces of [`TABLE_CHUNK`]: clones of an
/// array (snapshots, a fleet's devices) share the pieces they have not written, so a clone of
/// a 4 MiB chip costs a few hundred bytes, not a pointer per sector.
#[derive(Debug, Clone)]
struct SectorTable {
    chunks: Vec<Arc<Vec<Option<Sector>>>>,
    len: usize,
}

impl SectorTable {
    fn erased(len: usize) -> SectorTable {
        let chunks = (0..len.div_ceil(TABLE_CHUNK))
            .map(|i| Arc::new(vec![None; TABLE_CHUNK.min(len - i * TABLE_CHUNK)]))
            .collect();
        SectorTable { chunks, len }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Every entry, for changing (unshares every piece).
    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Option<Sector>> + '_ {
        self.chunks
            .iter_mut()
            .flat_map(|c| Arc::make_mut(c).iter_mut())
    }

    /// Entries `first..last` (cloned pointers).
    fn range_vec(&self, first: usize, last: usize) -> Vec<Option<Sector>> {
        (first..last).map(|i| self[i].clone()).collect()
    }
}

impl std::ops::Index<usize> for SectorTable {
    type Output = Option<Sector>;
    fn index(&self, i: usize) -> &Option<Sector> {
        &self.chunks[i / TABLE_CHUNK][i % TABLE_CHUNK]
    }
}

impl std::ops::IndexMut<usize> for SectorTable {
    /// Unshares the piece holding entry `i` first.
    fn index_mut(&mut self, i: usize) -> &mut Option<Sector> {
        &mut Arc::make_mut(&mut self.chunks[i / TABLE_CHUNK])[i % TABLE_CHUNK]
    }
}

/// Identifies the contents of a range of flash without reading it: the sector buffers that
/// hold it, shared with the flash (not copied). Equal keys mean equal bytes: a key keeps its
/// buffers alive, and a shared buffer is never written in place (a write copies it first), so
/// the same buffer always holds the same bytes. Unequal keys say nothing: a sector rewritten
/// with the same bytes is a new buffer; [`FlashArray::holds`] compares the bytes then. Used to
/// remember what parsing a region found until the region changes.
#[derive(Debug, Clone)]
pub struct ContentKey {
    pub chip: ChipId,
    pub addr: u32,
    pub len: u32,
    sectors: Vec<Option<Arc<[u8]>>>,
}

impl PartialEq for ContentKey {
    fn eq(&self, other: &Self) -> bool {
        (self.chip, self.addr, self.len) == (other.chip, other.addr, other.len)
            && self.sectors.len() == other.sectors.len()
            && self
                .sectors
                .iter()
                .zip(&other.sectors)
                .all(|(a, b)| match (a, b) {
                    (None, None) => true,
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                })
    }
}

impl Eq for ContentKey {}

impl ContentKey {
    /// (chip, address, length) of the range the key names.
    pub fn range(&self) -> (ChipId, u32, u32) {
        (self.chip, self.addr, self.len)
    }

    /// A key naming no sectors (current for no range but an empty one): for checking that a
    /// range can be read at all.
    pub fn empty(chip: ChipId, addr: u32, len: u32) -> ContentKey {
        ContentKey {
            chip,
            addr,
            len,
            sectors: Vec::new(),
        }
    }
}

impl Chip {
    fn read(&self, offset: u32, buf: &mut [u8]) {
        let ss = self.geometry.sector_size as usize;
        let mut pos = offset as usize;
        let mut done = 0;
        while done < buf.len() {
            let (sector, within) = (pos / ss, pos % ss);
            let n = (ss - within).min(buf.len() - done);
            let out = &mut buf[done..done + n];
            match &self.sectors[sector] {
                Some(data) => {
                    // Bytes past the end of the buffer read erased (see [`Sector`]).
                    let have = data.len().saturating_sub(within).min(n);
                    if have > 0 {
                        out[..have].copy_from_slice(&data[within..within + have]);
                    }
                    out[have..].fill(ERASED);
                }
                None => out.fill(ERASED),
            }
            pos += n;
            done += n;
        }
    }

    /// Index in `data` of the first byte that programming `data` at `offset` would have to
    /// turn a 0 bit into 1 for, if any.
    fn first_bit_set_by(&self, offset: u32, data: &[u8]) -> Option<usize> {
        let ss = self.geometry.sector_size as usize;
        let mut pos = offset as usize;
        let mut done = 0;
        while done < data.len() {
            let (sector, within) = (pos / ss, pos % ss);
            let n = (ss - within).min(data.len() - done);
            // Bytes past the end of the buffer are erased: nothing to check there.
            let have = self.sectors[sector]
                .as_ref()
                .map_or(0, |old| old.len().saturating_sub(within).min(n));
            if let Some(old) = self.sectors[sector].as_ref().filter(|_| have > 0) {
                let (n, old, new) = (have, &old[within..within + have], &data[done..done + have]);
                // A branch-free pass over the whole range (it vectorises); only a range with an
                // offending bit is searched for the first one.
                let offending = old.iter().zip(new).fold(0u8, |acc, (o, n)| acc | (n & !o));
                if offending != 0 {
                    return (0..n).find(|&j| new[j] & !old[j] != 0).map(|j| done + j);
                }
            }
            pos += n;
            done += n;
        }
        None
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) {
        let ss = self.geometry.sector_size as usize;
        let mut pos = offset as usize;
        let mut done = 0;
        while done < bytes.len() {
            let (sector, within) = (pos / ss, pos % ss);
            let n = (ss - within).min(bytes.len() - done);
            let slot = &mut self.sectors[sector];
            let need = within + n;
            match slot {
                Some(data) if data.len() >= need => {
                    Arc::make_mut(data)[within..need].copy_from_slice(&bytes[done..done + n]);
                }
                _ => {
                    let old = slot.as_deref().unwrap_or_default();
                    let mut grown = vec![ERASED; sector_buffer_len(need, old.len(), ss)];
                    grown[..old.len()].copy_from_slice(old);
                    grown[within..need].copy_from_slice(&bytes[done..done + n]);
                    *slot = Some(Arc::from(grown));
                }
            }
            pos += n;
            done += n;
        }
    }

    /// Swaps each sector whose last byte lies in `offset..offset+len` for the pooled buffer
    /// with the same bytes, pooling it if none is there yet (see the module docs).
    fn share_completed(&mut self, offset: u32, len: u32) {
        if len == 0 {
            return;
        }
        let ss = self.geometry.sector_size;
        let (first, last) = (offset / ss, (offset + len - 1) / ss);
        for sector in first..=last {
            let end = (sector + 1) * ss;
            if end > offset + len {
                continue;
            }
            if let Some(data) = &mut self.sectors[sector as usize] {
                SECTOR_POOL.with(|pool| pool.borrow_mut().share(data));
            }
        }
    }
}

thread_local! {
    /// This thread's completed sectors by content (see [`FlashArray::share_identical_sectors`]).
    static SECTOR_POOL: std::cell::RefCell<SectorPool> = std::cell::RefCell::default();
}

/// Sector buffers by a hash of their bytes. A pooled buffer is never written in place: the
/// pool's own reference makes any writer copy it first.
#[derive(Default)]
struct SectorPool {
    by_hash: std::collections::HashMap<u64, Vec<Sector>>,
    buffers: usize,
    /// Drop the buffers only the pool still refers to when `buffers` passes this.
    prune_at: usize,
}

impl SectorPool {
    /// Points `data` at the pooled buffer with the same bytes, or pools `data`.
    fn share(&mut self, data: &mut Sector) {
        // By the bytes a reader sees: buffers of different lengths may hold the same sector.
        let hash = content_hash(written(data));
        let same = self.by_hash.entry(hash).or_default();
        if let Some(pooled) = same.iter().find(|p| written(p) == written(data)) {
            if !Arc::ptr_eq(pooled, data) {
                *data = Arc::clone(pooled);
            }
            return;
        }
        same.push(Arc::clone(data));
        self.buffers += 1;
        if self.buffers > self.prune_at {
            self.by_hash.retain(|_, list| {
                list.retain(|b| Arc::strong_count(b) > 1);
                !list.is_empty()
            });
            self.buffers = self.by_hash.values().map(Vec::len).sum();
            self.prune_at = (self.buffers * 2).max(1024);
        }
    }
}

/// Length of the buffer a sector gets when a write reaches byte `need` (the buffer held
/// `old` bytes): `need` rounded up to [`SECTOR_GRAIN`], or twice `old` if that is more, at
/// most the sector. A store appending records to a sector reallocates it a few times, not
/// per record.
fn sector_buffer_len(need: usize, old: usize, sector_size: usize) -> usize {
    need.next_multiple_of(SECTOR_GRAIN)
        .max(old * 2)
        .min(sector_size)
        .max(need)
}

/// Allocation granularity of a sector buffer.
const SECTOR_GRAIN: usize = 256;

/// A sector buffer without its trailing erased bytes (what distinguishes it from others).
fn written(data: &[u8]) -> &[u8] {
    let end = data.iter().rposition(|&b| b != ERASED).map_or(0, |i| i + 1);
    &data[..end]
}

/// A fast, non-cryptographic hash of a sector's bytes (equal hashes are checked byte by byte).
fn content_hash(data: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = data.len() as u64;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    for &b in words.remainder() {
        h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
    }
    h
}

/// All flash chips of one device, the shared operation counter and the power state.
///
/// `Clone` is cheap (sector buffers are shared until written), so a clone is a snapshot.
#[derive(Debug, Clone)]
pub struct FlashArray {
    chips: Vec<Chip>,
    seed: u64,
    next_op: u64,
    cuts: Vec<PowerCut>,
    activity_cuts: Vec<ActivityCut>,
    io_faults: Vec<IoFault>,
    lost_at: Option<u64>,
    log: Option<Vec<FlashOp>>,
    activity: Activity,
    /// A part of `activity` that I/O faults can aim at (see [`FlashArray::set_part`]).
    part: Option<Activity>,
    /// The array as it was before each operation, while recording (see
    /// [`FlashArray::record_snapshots`]).
    snapshots: Option<Vec<OpSnapshot>>,
    /// Completed sectors are shared by content (see [`FlashArray::share_identical_sectors`]).
    share_sectors: bool,
}

/// The flash just before one numbered operation, and that operation: enough to produce the
/// flash as a power cut at that operation leaves it, in any mode, without running what led
/// there (see [`FlashArray::record_snapshots`]).
#[derive(Debug, Clone)]
pub struct OpSnapshot {
    seq: u64,
    before: FlashArray,
    op: RecordedOp,
}

/// The buffers [`OpSnapshot::private_copy`] made so far, by the original's address (the
/// original is kept alive here so that its address is not reused).
#[derive(Debug, Default)]
pub struct SectorCopies(std::collections::HashMap<usize, (Sector, Sector)>);

/// One sector's buffer: its first bytes, the rest of the sector reading erased (`0xFF`). A
/// sector holding a header or a few records costs what they take, not the whole sector;
/// the bytes read, the operations and the NOR rules are those of a full buffer.
type Sector = Arc<[u8]>;

#[derive(Debug, Clone)]
enum RecordedOp {
    Erase {
        chip: ChipId,
        addr: u32,
    },
    Program {
        chip: ChipId,
        addr: u32,
        data: Vec<u8>,
    },
}

impl OpSnapshot {
    /// A copy with sector buffers of its own: buffers shared between the snapshots copied with
    /// the same `copies` stay shared between the copies, and nothing is shared with the
    /// originals. Forks of one snapshot on several threads update the reference counts of the
    /// buffers they share; each thread working from its own copy keeps those counts (and their
    /// cache lines) to itself.
    pub fn private_copy(&self, copies: &mut SectorCopies) -> OpSnapshot {
        let mut before = self.before.clone();
        for chip in &mut before.chips {
            for sector in chip.sectors.iter_mut().flatten() {
                let key = Arc::as_ptr(sector) as *const u8 as usize;
                let copy = copies
                    .0
                    .entry(key)
                    .or_insert_with(|| (Arc::clone(sector), Arc::from(&sector[..])));
                *sector = Arc::clone(&copy.1);
            }
        }
        OpSnapshot {
            seq: self.seq,
            before,
            op: self.op.clone(),
        }
    }

    /// The operation's number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The flash as a power cut in `mode` at this operation leaves it: power lost, the
    /// operation not done, torn or done. The operation runs again on the snapshot through the
    /// same code as always, so the result is exactly what the cut run would have produced.
    /// `None` if the operation does not reach the flash again (it did when recorded).
    pub fn cut(&self, mode: CutMode) -> Option<FlashArray> {
        let mut flash = self.before.clone();
        flash.schedule_cut(PowerCut {
            at_op: self.seq,
            mode,
        });
        let result = match &self.op {
            RecordedOp::Erase { chip, addr } => flash.erase_sector(*chip, *addr),
            RecordedOp::Program { chip, addr, data } => flash.program(*chip, *addr, data),
        };
        match result {
            Err(FlashError::PowerLost { op }) if op == self.seq => Some(flash),
            _ => None,
        }
    }
}

impl FlashArray {
    /// A device with the given chips, every cell erased. `seed` decides how torn operations
    /// tear.
    pub fn new(chips: &[(ChipId, FlashGeometry)], seed: u64) -> Result<Self, FlashError> {
        let mut built: Vec<Chip> = Vec::with_capacity(chips.len());
        for &(id, geometry) in chips {
            geometry.check(id)?;
            if built.iter().any(|c| c.id == id) {
                return Err(FlashError::DuplicateChip { chip: id });
            }
            built.push(Chip {
                id,
                geometry,
                sectors: SectorTable::erased(geometry.sector_count() as usize),
            });
        }
        Ok(FlashArray {
            chips: built,
            seed,
            next_op: 0,
            cuts: Vec::new(),
            activity_cuts: Vec::new(),
            io_faults: Vec::new(),
            lost_at: None,
            log: None,
            activity: Activity::Other,
            part: None,
            snapshots: None,
            share_sectors: false,
        })
    }

    /// From now on (and in clones), a sector whose last byte is programmed is shared with every
    /// other sector of this thread's arrays that holds the same bytes (see the module docs), and
    /// the sectors held now are pooled. For fleets of devices running the same firmware; the
    /// flash behaves exactly the same, only its memory differs.
    pub fn share_identical_sectors(&mut self) {
        self.share_sectors = true;
        for chip in &mut self.chips {
            for data in chip.sectors.iter_mut().flatten() {
                SECTOR_POOL.with(|pool| pool.borrow_mut().share(data));
            }
        }
    }

    /// From now on, keep a snapshot of the array before every operation with the operation
    /// itself ([`OpSnapshot`]): a power-cut sweep forks its cut runs from these instead of
    /// replaying each from the start. Snapshots share sector buffers (copy-on-write), so each
    /// costs about a pointer per sector.
    pub fn record_snapshots(&mut self) {
        self.snapshots.get_or_insert_with(Vec::new);
    }

    /// The snapshots recorded so far, in operation order; recording stops.
    pub fn take_snapshots(&mut self) -> Vec<OpSnapshot> {
        self.snapshots.take().unwrap_or_default()
    }

    fn record(&mut self, op: RecordedOp) {
        if self.snapshots.is_some() {
            let snapshots = self.snapshots.take();
            let before = self.clone();
            if let Some(mut list) = snapshots {
                list.push(OpSnapshot {
                    seq: self.next_op,
                    before,
                    op,
                });
                self.snapshots = Some(list);
            }
        }
    }

    /// Labels the operations from now on in the log (the device's firmware says what it is
    /// doing; the flash itself behaves the same).
    pub fn set_activity(&mut self, activity: Activity) {
        self.activity = activity;
    }

    pub fn activity(&self) -> Activity {
        self.activity
    }

    /// Names a part of the current activity (e.g. [`Activity::AssetStore`] within the commit)
    /// that an [`IoFault`] or an [`ActivityCut`] can aim at; `None` ends it. The log, power cuts and sweeps keep
    /// seeing the outer activity, so their operation counts do not change.
    pub fn set_part(&mut self, part: Option<Activity>) {
        self.part = part;
    }

    /// The seed torn operations are drawn from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The chips of this device and their geometry.
    pub fn chips(&self) -> impl Iterator<Item = (ChipId, FlashGeometry)> + '_ {
        self.chips.iter().map(|c| (c.id, c.geometry))
    }

    /// Geometry of one chip, if the device has it.
    pub fn geometry(&self, chip: ChipId) -> Option<FlashGeometry> {
        self.chips.iter().find(|c| c.id == chip).map(|c| c.geometry)
    }

    /// Number the next erase or program will get (0-based; also the number issued so far).
    pub fn op_count(&self) -> u64 {
        self.next_op
    }

    // ----- power -------------------------------------------------------------------------

    /// Lose power at operation `cut.at_op`. Several cuts may be pending; a cut for an
    /// operation number already issued never fires.
    pub fn schedule_cut(&mut self, cut: PowerCut) {
        self.cuts.push(cut);
    }

    /// Withdraws a scheduled cut that has not fired (no-op otherwise).
    pub fn cancel_cut(&mut self, cut: PowerCut) {
        if let Some(i) = self.cuts.iter().position(|c| *c == cut) {
            self.cuts.remove(i);
        }
    }

    /// Cuts scheduled and not yet fired.
    pub fn pending_cuts(&self) -> &[PowerCut] {
        &self.cuts
    }

    /// Forget all pending cuts.
    pub fn clear_cuts(&mut self) {
        self.cuts.clear();
        self.activity_cuts.clear();
        self.io_faults.clear();
    }

    /// Schedules an I/O error at an operation the firmware labels `fault.activity` (see
    /// [`IoFault`]), e.g. "the first program of the next commit".
    pub fn schedule_io_fault(&mut self, fault: IoFault) {
        self.io_faults.push(fault);
    }

    /// I/O faults scheduled and not yet fired.
    pub fn pending_io_faults(&self) -> &[IoFault] {
        &self.io_faults
    }

    /// Takes the I/O fault that hits an operation of `kind` now, if one does (counting the
    /// operation for the others of its activity).
    fn io_fault_now(&mut self, kind: OpKind) -> bool {
        let activity = self.activity;
        let mut fired = None;
        for (i, f) in self.io_faults.iter_mut().enumerate() {
            let aimed = f.activity == activity || Some(f.activity) == self.part;
            if !aimed || f.kind.is_some_and(|k| k != kind) {
                continue;
            }
            if f.skip == 0 {
                fired = fired.or(Some(i));
            } else {
                f.skip -= 1;
            }
        }
        if let Some(i) = fired {
            self.io_faults.remove(i);
            return true;
        }
        false
    }

    /// Schedules a power cut at an operation the firmware labels `cut.activity` (operation
    /// `cut.skip` of that activity, counting from now, across power cycles), e.g. "the 5th
    /// flash operation of the next download".
    pub fn schedule_activity_cut(&mut self, cut: ActivityCut) {
        self.activity_cuts.push(cut);
    }

    /// Activity cuts scheduled and not yet fired.
    pub fn pending_activity_cuts(&self) -> &[ActivityCut] {
        &self.activity_cuts
    }

    /// Lose power now, between operations (a relay, a pulled battery).
    pub fn lose_power(&mut self) {
        if self.lost_at.is_none() {
            self.lost_at = Some(self.next_op);
        }
    }

    /// Whether power is lost (every access fails until [`FlashArray::power_on`]).
    pub fn power_lost(&self) -> bool {
        self.lost_at.is_some()
    }

    /// Operation number at which power was lost, if it is lost.
    pub fn lost_at(&self) -> Option<u64> {
        self.lost_at
    }

    /// Restore power. Contents stay as they were when power was lost.
    pub fn power_on(&mut self) {
        self.lost_at = None;
        self.activity = Activity::Other;
        self.part = None;
    }

    // ----- log ---------------------------------------------------------------------------

    /// Record every erase and program from now on. Note that clones copy the log.
    pub fn enable_log(&mut self) {
        self.log.get_or_insert_with(Vec::new);
    }

    /// Operations recorded since [`FlashArray::enable_log`] (empty if logging is off).
    pub fn op_log(&self) -> &[FlashOp] {
        self.log.as_deref().unwrap_or(&[])
    }

    /// Take the recorded operations, leaving logging on with an empty log.
    pub fn take_log(&mut self) -> Vec<FlashOp> {
        self.log.as_mut().map(std::mem::take).unwrap_or_default()
    }

    // ----- memory ------------------------------------------------------------------------

    /// Sector buffers held, split into bytes owned by this array alone and bytes shared with
    /// snapshots.
    pub fn memory(&self) -> FlashMemory {
        let mut m = FlashMemory::default();
        let pieces = self.chips.iter().flat_map(|c| c.sectors.chunks.iter());
        for (piece, data) in pieces.flat_map(|p| p.iter().flatten().map(move |d| (p, d))) {
            m.materialised_sectors += 1;
            if Arc::strong_count(data) == 1 && Arc::strong_count(piece) == 1 {
                m.unique_bytes += data.len();
            } else {
                m.shared_bytes += data.len();
            }
        }
        m
    }

    // ----- access ------------------------------------------------------------------------

    /// Read `buf.len()` bytes at `addr`. No alignment is required.
    pub fn read(&self, chip: ChipId, addr: u32, buf: &mut [u8]) -> Result<(), FlashError> {
        self.check_power()?;
        let (index, offset) = self.locate(chip, addr, buf.len() as u64)?;
        self.chips[index].read(offset, buf);
        Ok(())
    }

    /// Read `len` bytes at `addr` into a new vector.
    pub fn read_vec(&self, chip: ChipId, addr: u32, len: usize) -> Result<Vec<u8>, FlashError> {
        self.check_power()?;
        // Check the range before allocating, so a huge `len` is an error, not an abort.
        self.locate(chip, addr, len as u64)?;
        let mut buf = vec![0; len];
        self.read(chip, addr, &mut buf)?;
        Ok(buf)
    }

    /// Whether every byte of `addr..addr+len` reads `0xFF`.
    pub fn is_erased(&self, chip: ChipId, addr: u32, len: u32) -> Result<bool, FlashError> {
        self.check_power()?;
        let (index, offset) = self.locate(chip, addr, u64::from(len))?;
        let c = &self.chips[index];
        let ss = c.geometry.sector_size;
        let (mut pos, end) = (offset, offset + len);
        while pos < end {
            let (sector, within) = (pos / ss, pos % ss);
            let n = (ss - within).min(end - pos);
            if let Some(data) = &c.sectors[sector as usize] {
                let (a, b) = (within as usize, ((within + n) as usize).min(data.len()));
                if a < b && data[a..b].iter().any(|&b| b != ERASED) {
                    return Ok(false);
                }
            }
            pos += n;
        }
        Ok(true)
    }

    /// The identity of the contents of `addr..addr+len` (see [`ContentKey`]).
    pub fn content_key(&self, chip: ChipId, addr: u32, len: u32) -> Result<ContentKey, FlashError> {
        self.check_power()?;
        let (index, offset) = self.locate(chip, addr, u64::from(len))?;
        let c = &self.chips[index];
        let ss = c.geometry.sector_size;
        let first = (offset / ss) as usize;
        let last = (offset + len).div_ceil(ss).max(offset / ss + 1) as usize;
        let last = last.min(c.sectors.len());
        Ok(ContentKey {
            chip,
            addr,
            len,
            sectors: c.sectors.range_vec(first, last),
        })
    }

    /// Whether the range `key` names is held by exactly the sector buffers of `key` (what
    /// `content_key` would return now equals `key`), without taking a key.
    pub fn is_current(&self, key: &ContentKey) -> Result<bool, FlashError> {
        self.check_power()?;
        let (index, offset) = self.locate(key.chip, key.addr, u64::from(key.len))?;
        let c = &self.chips[index];
        let ss = c.geometry.sector_size;
        let first = (offset / ss) as usize;
        if first + key.sectors.len() > c.sectors.len() {
            return Ok(false);
        }
        Ok(key
            .sectors
            .iter()
            .enumerate()
            .all(|(i, b)| match (&c.sectors[first + i], b) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }))
    }

    /// Whether the sectors `key` names hold, byte for byte, what they held when `key` was
    /// taken (in this array or in another with the same geometry).
    pub fn holds(&self, key: &ContentKey) -> Result<bool, FlashError> {
        if self.is_current(key)? {
            return Ok(true);
        }
        let now = self.content_key(key.chip, key.addr, key.len)?;
        Ok(now.sectors.len() == key.sectors.len()
            && now
                .sectors
                .iter()
                .zip(&key.sectors)
                .all(|(a, b)| match (a, b) {
                    (None, None) => true,
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b) || written(a) == written(b),
                    // A written sector may read all 0xFF like an erased one.
                    (Some(d), None) | (None, Some(d)) => d.iter().all(|&x| x == ERASED),
                }))
    }

    /// Erase the sector starting at `addr` (one numbered operation).
    pub fn erase_sector(&mut self, chip: ChipId, addr: u32) -> Result<(), FlashError> {
        self.check_power()?;
        let (index, offset) = self.locate_erase(chip, addr, None)?;
        self.erase_at(index, offset)
    }

    /// Erase the whole sectors covering `start..start+len`, one numbered operation per sector,
    /// in address order. `start` and `len` must be sector-aligned; the range is checked before
    /// the first sector is erased.
    pub fn erase_range(&mut self, chip: ChipId, start: u32, len: u32) -> Result<(), FlashError> {
        self.check_power()?;
        let (index, offset) = self.locate_erase(chip, start, Some(len))?;
        let ss = self.chips[index].geometry.sector_size;
        for i in 0..len / ss {
            self.erase_at(index, offset + i * ss)?;
        }
        Ok(())
    }

    /// Program `data` at `addr` (one numbered operation). `addr` and `data.len()` must be
    /// multiples of the program unit; `data` may only clear bits. A zero-length program is a
    /// numbered operation that changes nothing.
    pub fn program(&mut self, chip: ChipId, addr: u32, data: &[u8]) -> Result<(), FlashError> {
        self.check_power()?;
        let len = data.len() as u64;
        let (index, offset) = self.locate(chip, addr, len)?;
        let c = &self.chips[index];
        let unit = c.geometry.program_unit;
        if !offset.is_multiple_of(unit) || !len.is_multiple_of(u64::from(unit)) {
            return Err(FlashError::Unaligned {
                chip,
                kind: OpKind::Program,
                addr,
                len,
                alignment: unit,
            });
        }
        if let Some(i) = c.first_bit_set_by(offset, data) {
            return Err(FlashError::ProgramWouldSetBits {
                chip,
                addr: addr + i as u32,
            });
        }

        if self.io_fault_now(OpKind::Program) {
            return Err(FlashError::Io {
                chip,
                kind: OpKind::Program,
                addr,
            });
        }
        if self.snapshots.is_some() {
            self.record(RecordedOp::Program {
                chip,
                addr,
                data: data.to_vec(),
            });
        }
        let (seq, cut) = self.begin_op(chip, OpKind::Program, addr, data.len() as u32);
        match cut {
            None => self.chips[index].write(offset, data),
            Some(CutMode::Before) => {}
            Some(CutMode::Torn) => {
                let mut old = vec![0; data.len()];
                self.chips[index].read(offset, &mut old);
                let clearing: Vec<u8> = old.iter().zip(data).map(|(o, n)| o & !n).collect();
                let mask = self.tear_mask(seq, &clearing);
                let torn: Vec<u8> = old.iter().zip(&mask).map(|(o, m)| o & !m).collect();
                self.chips[index].write(offset, &torn);
            }
            Some(CutMode::After) => self.chips[index].write(offset, data),
        }
        if self.share_sectors && cut != Some(CutMode::Before) {
            self.chips[index].share_completed(offset, data.len() as u32);
        }
        self.end_op(seq, cut)
    }

    // ----- internals ---------------------------------------------------------------------

    fn check_power(&self) -> Result<(), FlashError> {
        match self.lost_at {
            Some(op) => Err(FlashError::PowerLost { op }),
            None => Ok(()),
        }
    }

    /// Index of `chip` and offset of `addr` in it, if `addr..addr+len` is inside the chip.
    fn locate(&self, chip: ChipId, addr: u32, len: u64) -> Result<(usize, u32), FlashError> {
        let index = self
            .chips
            .iter()
            .position(|c| c.id == chip)
            .ok_or(FlashError::NoSuchChip { chip })?;
        let g = self.chips[index].geometry;
        if !g.contains(addr, len) {
            return Err(FlashError::OutOfRange {
                chip,
                addr,
                len,
                start: g.base,
                end: g.end(),
            });
        }
        Ok((index, addr - g.base))
    }

    /// Like `locate` for an erase of `len` bytes (one sector if `None`), checking alignment.
    fn locate_erase(
        &self,
        chip: ChipId,
        addr: u32,
        len: Option<u32>,
    ) -> Result<(usize, u32), FlashError> {
        let ss = self
            .geometry(chip)
            .ok_or(FlashError::NoSuchChip { chip })?
            .sector_size;
        let len = len.unwrap_or(ss);
        let (index, offset) = self.locate(chip, addr, u64::from(len))?;
        if !offset.is_multiple_of(ss) || !len.is_multiple_of(ss) {
            return Err(FlashError::Unaligned {
                chip,
                kind: OpKind::Erase,
                addr,
                len: u64::from(len),
                alignment: ss,
            });
        }
        Ok((index, offset))
    }

    fn erase_at(&mut self, index: usize, offset: u32) -> Result<(), FlashError> {
        let c = &self.chips[index];
        let (chip, ss) = (c.id, c.geometry.sector_size);
        let addr = c.geometry.base + offset;
        let sector = (offset / ss) as usize;
        if self.io_fault_now(OpKind::Erase) {
            return Err(FlashError::Io {
                chip,
                kind: OpKind::Erase,
                addr,
            });
        }
        if self.snapshots.is_some() {
            self.record(RecordedOp::Erase { chip, addr });
        }
        let (seq, cut) = self.begin_op(chip, OpKind::Erase, addr, ss);
        match cut {
            None | Some(CutMode::After) => {
                // An erased sector stays as it is: writing `None` over `None` would unshare the
                // piece of the table that names it (a store formatting a blank area would copy
                // every piece of it for each device of a fleet).
                if self.chips[index].sectors[sector].is_some() {
                    self.chips[index].sectors[sector] = None;
                }
            }
            Some(CutMode::Before) => {}
            Some(CutMode::Torn) => {
                if let Some(old) = self.chips[index].sectors[sector].clone() {
                    let setting: Vec<u8> = old.iter().map(|o| !o).collect();
                    let mask = self.tear_mask(seq, &setting);
                    let torn: Vec<u8> = old.iter().zip(&mask).map(|(o, m)| o | m).collect();
                    self.chips[index].write(offset, &torn);
                }
            }
        }
        self.end_op(seq, cut)
    }

    /// Number the operation, log it, and take the cut scheduled for it, if any.
    fn begin_op(
        &mut self,
        chip: ChipId,
        kind: OpKind,
        addr: u32,
        len: u32,
    ) -> (u64, Option<CutMode>) {
        let seq = self.next_op;
        self.next_op += 1;
        let mut cut = self
            .cuts
            .iter()
            .position(|c| c.at_op == seq)
            .map(|i| self.cuts.remove(i).mode);
        let activity = self.activity;
        let part = self.part;
        let mut fired = None;
        for (i, c) in self.activity_cuts.iter_mut().enumerate() {
            if c.activity != activity && Some(c.activity) != part {
                continue;
            }
            if c.skip == 0 {
                fired = fired.or(Some(i));
            } else {
                c.skip -= 1;
            }
        }
        if let Some(i) = fired {
            let c = self.activity_cuts.remove(i);
            cut = cut.or(Some(c.mode));
        }
        if let Some(log) = &mut self.log {
            log.push(FlashOp {
                seq,
                chip,
                kind,
                addr,
                len,
                cut,
                activity: self.activity,
            });
        }
        (seq, cut)
    }

    fn end_op(&mut self, seq: u64, cut: Option<CutMode>) -> Result<(), FlashError> {
        match cut {
            None => Ok(()),
            Some(_) => {
                self.lost_at = Some(seq);
                Err(FlashError::PowerLost { op: seq })
            }
        }
    }

    /// A seeded subset of the bits set in `candidates` (the bits a torn operation would
    /// change). Half the time the bits are scattered at random; otherwise the operation got
    /// through a prefix of them in address order, at least one and not all.
    fn tear_mask(&self, op: u64, candidates: &[u8]) -> Vec<u8> {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&self.seed.to_le_bytes());
        key[8..16].copy_from_slice(&op.to_le_bytes());
        key[16..].copy_from_slice(b"hil-flash-torn-o");
        let mut rng = ChaCha8Rng::from_seed(key);

        if rng.next_u32() & 1 == 0 {
            return candidates
                .iter()
                .map(|&c| c & rng.next_u32() as u8)
                .collect();
        }
        let total: u64 = candidates.iter().map(|c| u64::from(c.count_ones())).sum();
        let mut keep = match total {
            0 => 0,
            1 => rng.next_u64() % 2,
            n => 1 + rng.next_u64() % (n - 1),
        };
        let mut mask = vec![0u8; candidates.len()];
        for (m, &c) in mask.iter_mut().zip(candidates) {
            for bit in 0..8 {
                if keep == 0 {
                    return mask;
                }
                if c & (1 << bit) != 0 {
                    *m |= 1 << bit;
                    keep -= 1;
                }
            }
        }
        mask
    }
}

/// Bytes copied per program operation. Device OS copies through a RAM buffer; the block size
/// only changes how many numbered flash operations an apply takes. Chosen to match the
/// 256-byte inflate blocks of the bootloader (reference 5.3) times four.
pub const COPY_BLOCK_LEN: usize = 1024;

/// Erases the sectors covering `dest..dest+image.len()` and programs `image` there (the
/// bootloader's copy, a factory programmer).
pub(crate) fn copy_bytes(
    flash: &mut FlashArray,
    chip: ChipId,
    dest: u32,
    image: &[u8],
) -> Result<(), FlashError> {
    let geometry = flash
        .geometry(chip)
        .ok_or(FlashError::NoSuchChip { chip })?;
    let sector = geometry.sector_size;
    let unit = geometry.program_unit.max(1) as usize;
    let first = dest - dest % sector;
    let end = dest as u64 + image.len() as u64;
    let mut addr = first as u64;
    while addr < end {
        flash.erase_sector(chip, addr as u32)?;
        addr += sector as u64;
    }
    for (n, block) in image.chunks(COPY_BLOCK_LEN).enumerate() {
        let at = dest + (n * COPY_BLOCK_LEN) as u32;
        if block.len().is_multiple_of(unit) {
            flash.program(chip, at, block)?;
        } else {
            // Pad the tail to the program unit with 0xFF, which programs nothing.
            let mut padded = block.to_vec();
            padded.resize(block.len().div_ceil(unit) * unit, 0xFF);
            flash.program(chip, at, &padded)?;
        }
    }
    Ok(())
}
