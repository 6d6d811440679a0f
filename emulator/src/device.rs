//! One emulated device's persistent side: its board, its flash (internal and external) and the
//! power-safe store on it, with the operations that touch flash: programming modules as a
//! factory or a debugger would, staging an OTA file in the staging area, committing module
//! slots, booting through the bootloader, and power cuts (reference sections 2.5, 5.2-5.5).
//!
//! A `Device` is cheap to clone (the flash is copy-on-write), which is how a power-cut sweep
//! keeps one snapshot per cut point.

use std::sync::Arc;

use protocol::module::{split_combined, ModuleFlags};

use crate::board::{Board, RegionKind};
use crate::bootloader::{self, BootCaches, BootError, BootReport};
use crate::dct::{device_code, magic, slot_flags, ModuleSlot, ModuleSlots};
use crate::flash::{Activity, ChipId, CutMode, FlashArray, FlashError, FlashGeometry, PowerCut};
use crate::installed::RegionContent;
use crate::placement::{place, Placement, PlacementError};
use crate::store::{Store, StoreError};

/// Sectors of the file-system region used for the device's store (DCT, transfer state). The
/// real LittleFS spans the whole region; the emulator's store needs far less, and a small
/// store keeps mounting fast.
pub const STORE_SECTORS: u32 = 16;

/// Why a module could not be programmed or staged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("module file {what}: {source}")]
    Module {
        what: &'static str,
        source: protocol::module::ModuleError,
    },
    #[error("{board}: {source}")]
    Placement {
        board: String,
        source: PlacementError,
    },
    #[error("{board} has no {region} region")]
    MissingRegion { board: String, region: RegionKind },
    #[error("OTA file of {len} bytes is larger than the staging area ({capacity} bytes)")]
    TooLarge { len: usize, capacity: u32 },
    #[error("staged file is empty")]
    Empty,
    #[error("all update slots are taken")]
    NoFreeSlot,
    /// An asset module the asset file system cannot take.
    #[error("asset: {0}")]
    Asset(String),
    #[error(transparent)]
    Flash(#[from] FlashError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DeviceError {
    /// The placement problem, when the module itself is what is wrong.
    pub fn placement(&self) -> Option<&PlacementError> {
        match self {
            DeviceError::Placement { source, .. } => Some(source),
            _ => None,
        }
    }

    /// True when the error is a power loss (the operation may be retried after `power_on`).
    pub fn is_power_loss(&self) -> bool {
        match self {
            DeviceError::Flash(f) => f.is_power_loss(),
            DeviceError::Store(StoreError::Flash(f)) => f.is_power_loss(),
            _ => false,
        }
    }
}

/// A module that passed staging validation, with the slot that will apply it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedModule {
    pub function: u8,
    pub index: u8,
    pub version: u16,
    pub slot: ModuleSlot,
}

/// The flash and store of one emulated device.
#[derive(Debug, Clone)]
pub struct Device {
    board: Arc<Board>,
    flash: FlashArray,
    store: Option<Store>,
    /// Shared by clones when enabled ([`Device::share_boot_caches`]).
    caches: Option<Arc<BootCaches>>,
}

impl Device {
    /// A device with blank (erased) flash and a freshly formatted store.
    pub fn new(board: Board, seed: u64) -> Result<Device, DeviceError> {
        let chips: Vec<(ChipId, FlashGeometry)> = board
            .chips()
            .into_iter()
            .map(|(chip, g)| {
                (
                    board.flash_chip(chip),
                    FlashGeometry {
                        base: g.base,
                        size: g.size,
                        sector_size: g.sector_size,
                        program_unit: g.program_unit,
                    },
                )
            })
            .collect();
        let flash = FlashArray::new(&chips, seed)?;
        let mut device = Device {
            board: Arc::new(board),
            flash,
            store: None,
            caches: None,
        };
        let (chip, start, len) = device.store_area()?;
        device.store = Some(Store::format(&mut device.flash, chip, start, len)?);
        Ok(device)
    }

    pub fn board(&self) -> &Board {
        &self.board
    }

    pub fn flash(&self) -> &FlashArray {
        &self.flash
    }

    pub fn flash_mut(&mut self) -> &mut FlashArray {
        &mut self.flash
    }

    /// Where the store lives: the first [`STORE_SECTORS`] sectors of the file-system region.
    fn store_area(&self) -> Result<(ChipId, u32, u32), DeviceError> {
        let region = self.board.region(RegionKind::FileSystem).ok_or_else(|| {
            DeviceError::MissingRegion {
                board: self.board.name.clone(),
                region: RegionKind::FileSystem,
            }
        })?;
        let chip = self.board.flash_chip(region.chip);
        let sector = geometry(&self.flash, chip)?.sector_size;
        let len = (STORE_SECTORS * sector).min(region.end - region.start);
        Ok((chip, region.start, len))
    }

    /// Runs `f` with the mounted store (mounting it after a power-on) and the flash. If `f`
    /// fails the store is dropped, so the next use mounts it again from what flash holds.
    fn with_store<R, E>(
        &mut self,
        f: impl FnOnce(&mut Store, &mut FlashArray) -> Result<R, E>,
    ) -> Result<R, E>
    where
        E: From<DeviceError>,
    {
        let mut store = match self.store.take() {
            Some(store) => store,
            None => {
                let (chip, start, len) = self.store_area()?;
                Store::mount(&self.flash, chip, start, len).map_err(DeviceError::from)?
            }
        };
        let result = f(&mut store, &mut self.flash);
        if result.is_ok() {
            self.store = Some(store);
        }
        result
    }

    /// From now on, this device and its clones remember what the bootloader parsed and verified
    /// ([`BootCaches`]) until the flash it came from changes: booting many forks of one device
    /// parses its unchanged modules once. Boots behave exactly as without.
    pub fn share_boot_caches(&mut self) {
        self.caches.get_or_insert_with(Default::default);
    }

    /// Like [`Device::share_boot_caches`] with new, empty caches: this device and its clones
    /// from now on no longer share them with the clones made before.
    pub fn fresh_boot_caches(&mut self) {
        self.caches = Some(Default::default());
    }

    /// This device with `flash` in place of its own, as after a power cycle (nothing of the
    /// store is in RAM): how a sweep forks a device from a flash snapshot.
    pub fn with_flash(&self, flash: FlashArray) -> Device {
        Device {
            board: Arc::clone(&self.board),
            flash,
            store: None,
            caches: self.caches.clone(),
        }
    }

    /// What `region` holds now, as boot validation sees it (through the shared boot caches
    /// when enabled).
    pub fn region_content(&self, region: RegionKind) -> Result<Arc<RegionContent>, DeviceError> {
        let r = self
            .board
            .region(region)
            .ok_or_else(|| DeviceError::MissingRegion {
                board: self.board.name.clone(),
                region,
            })?;
        Ok(match &self.caches {
            Some(c) => c.read_region(&self.board, &self.flash, r)?,
            None => Arc::new(crate::installed::read_region(&self.board, &self.flash, r)?),
        })
    }

    /// Schedules a power cut at flash operation `at_op` (see [`FlashArray::op_count`]).
    pub fn schedule_cut(&mut self, at_op: u64, mode: CutMode) {
        self.flash.schedule_cut(PowerCut { at_op, mode });
    }

    /// Restores power after a cut. RAM is gone: the store is mounted again on next use.
    pub fn power_on(&mut self) {
        self.flash.power_on();
        self.store = None;
    }

    /// Boots: the bootloader applies pending slots, then validates (see [`bootloader::boot`]).
    pub fn boot(&mut self) -> Result<BootReport, BootError> {
        // A reset loses RAM: the store is mounted afresh from flash, as the real device does.
        self.store = None;
        let board = Arc::clone(&self.board);
        self.flash.set_activity(Activity::Apply);
        let caches = self.caches.clone();
        let report = self.with_store(|store, flash| {
            bootloader::boot_with(&board, flash, store, caches.as_deref())
        });
        let applied = report.as_ref().is_ok_and(|r| {
            !r.applied.is_empty()
                || r.finished_bootloader_copy
                || r.factory_restored
                || r.restored_user_app
        });
        self.flash.set_activity(if applied {
            Activity::FirstBoot
        } else {
            Activity::Other
        });
        report
    }

    /// Labels flash operations from now on (see [`Activity`]).
    pub fn set_activity(&mut self, activity: Activity) {
        self.flash.set_activity(activity);
    }

    /// [`place`] with this device's board, errors naming the board.
    fn place<'b>(&self, board: &'b Board, bytes: &[u8]) -> Result<Placement<'b>, DeviceError> {
        place(board, bytes).map_err(|source| DeviceError::Placement {
            board: board.name.clone(),
            source,
        })
    }

    /// Writes a module straight into its region, as a debugger or the factory would (no slot,
    /// no bootloader). Combined files are split and each module is programmed.
    pub fn program_module(&mut self, bytes: &[u8]) -> Result<(), DeviceError> {
        let ranges = split_combined(bytes).map_err(|source| DeviceError::Module {
            what: "is not a valid module file",
            source,
        })?;
        for range in ranges {
            let part = &bytes[range];
            let board = Arc::clone(&self.board);
            let placed = self.place(&board, part)?;
            let chip = board.flash_chip(placed.region.chip);
            let start = placed.module.prefix.start_address;
            crate::flash::copy_bytes(&mut self.flash, chip, start, &placed.image)?;
        }
        Ok(())
    }

    /// Writes a user part into the factory-app area, from where the bootloader restores it when
    /// the installed user part is invalid.
    pub fn program_factory_app(&mut self, bytes: &[u8]) -> Result<(), DeviceError> {
        let board = Arc::clone(&self.board);
        self.place(&board, bytes)?;
        let factory = self.board.region(RegionKind::FactoryApp).ok_or_else(|| {
            DeviceError::MissingRegion {
                board: self.board.name.clone(),
                region: RegionKind::FactoryApp,
            }
        })?;
        if bytes.len() as u64 > (factory.end - factory.start) as u64 {
            return Err(DeviceError::TooLarge {
                len: bytes.len(),
                capacity: factory.end - factory.start,
            });
        }
        let chip = self.board.flash_chip(factory.chip);
        let start = factory.start;
        crate::flash::copy_bytes(&mut self.flash, chip, start, bytes)?;
        Ok(())
    }

    /// `HAL_FLASH_Begin`: drops any staged-but-unapplied update (frees slots 1..4) and erases
    /// the staging area for `file_len` bytes, rounded up to whole sectors.
    pub fn begin_staging(&mut self, file_len: usize) -> Result<(), DeviceError> {
        if file_len == 0 {
            return Err(DeviceError::Empty);
        }
        let staging = self.staging_region()?;
        let capacity = (staging.end - staging.start).min(self.board.ota.max_binary_size);
        if file_len as u64 > capacity as u64 {
            return Err(DeviceError::TooLarge {
                len: file_len,
                capacity,
            });
        }
        let (chip, start) = (self.board.flash_chip(staging.chip), staging.start);
        self.with_store(|store, flash| -> Result<(), DeviceError> {
            let mut slots = ModuleSlots::load(store, flash)?;
            if slots.pending().next().is_some() {
                for slot in slots.0.iter_mut().skip(1) {
                    *slot = ModuleSlot::FREE;
                }
                slots.save(store, flash)?;
            }
            Ok(())
        })?;
        let sector = geometry(&self.flash, chip)?.sector_size;
        let mut addr = start;
        while addr < start + file_len as u32 {
            self.flash.erase_sector(chip, addr)?;
            addr += sector;
        }
        Ok(())
    }

    /// `HAL_FLASH_Update`: writes received bytes at `offset` into the staging area.
    pub fn write_staging(&mut self, offset: u32, data: &[u8]) -> Result<(), DeviceError> {
        let staging = self.staging_region()?;
        let chip = self.board.flash_chip(staging.chip);
        let unit = geometry(&self.flash, chip)?.program_unit.max(1) as usize;
        if data.len().is_multiple_of(unit) && (offset as usize).is_multiple_of(unit) {
            self.flash.program(chip, staging.start + offset, data)?;
        } else {
            // Widen to whole program units, keeping what is already there (0xFF programs nothing).
            let lead = offset as usize % unit;
            let mut buf = vec![0xFF; (lead + data.len()).div_ceil(unit) * unit];
            buf[lead..lead + data.len()].copy_from_slice(data);
            self.flash
                .program(chip, staging.start + offset - lead as u32, &buf)?;
        }
        Ok(())
    }

    /// Stages a whole file: [`Self::begin_staging`] then writes in 512-byte chunks.
    pub fn stage_file(&mut self, file: &[u8]) -> Result<(), DeviceError> {
        self.begin_staging(file.len())?;
        for (n, chunk) in file.chunks(512).enumerate() {
            self.write_staging((n * 512) as u32, chunk)?;
        }
        Ok(())
    }

    fn staging_region(&self) -> Result<crate::board::Region, DeviceError> {
        self.board
            .region(RegionKind::OtaStaging)
            .cloned()
            .ok_or_else(|| DeviceError::MissingRegion {
                board: self.board.name.clone(),
                region: RegionKind::OtaStaging,
            })
    }

    /// `HAL_FLASH_OTA_Validate` over the first `file_len` staged bytes: each module (at most 2,
    /// following COMBINED) must parse, belong to this platform, fit its region, and have a valid
    /// CRC. Returns the slots that would apply them; nothing is written.
    pub fn validate_staged(&mut self, file_len: usize) -> Result<Vec<StagedModule>, DeviceError> {
        let staging = self.staging_region()?;
        let chip = self.board.flash_chip(staging.chip);
        let file = self.flash.read_vec(chip, staging.start, file_len)?;
        let ranges = split_combined(&file).map_err(|source| DeviceError::Module {
            what: "is not a valid module file",
            source,
        })?;
        let mut staged = Vec::new();
        for range in ranges {
            let offset = range.start as u32;
            let part = &file[range];
            let board = Arc::clone(&self.board);
            let placed = self.place(&board, part)?;
            let (module, region) = (&placed.module, placed.region);
            let p = &module.prefix;
            let mut flags = slot_flags::VERIFY_CRC
                | slot_flags::VERIFY_DEST_IS_START
                | slot_flags::VERIFY_FUNCTION;
            if p.flags.contains(ModuleFlags::DROP_MODULE_INFO) {
                flags |= slot_flags::DROP_MODULE_INFO;
            }
            if module.compressed_header.is_some() {
                flags |= slot_flags::COMPRESSED;
            }
            staged.push(StagedModule {
                function: u8::from(p.function),
                index: p.index,
                version: p.version,
                slot: ModuleSlot {
                    magic: magic::PENDING,
                    source_device: device_code(chip),
                    dest_device: device_code(self.board.flash_chip(region.chip)),
                    source_address: staging.start + offset,
                    dest_address: p.start_address,
                    length: part.len() as u32,
                    flags,
                    function: u8::from(p.function),
                },
            });
        }
        Ok(staged)
    }

    /// The commit point (`HAL_FLASH_End`): writes the slots into the DCT in one atomic store
    /// write. After this the next boot applies the update.
    pub fn commit_staged(&mut self, staged: &[StagedModule]) -> Result<(), DeviceError> {
        self.with_store(|store, flash| {
            let mut slots = ModuleSlots::load(store, flash)?;
            for module in staged {
                let free = (1..slots.0.len())
                    .find(|&i| !slots.0[i].is_pending())
                    .ok_or(DeviceError::NoFreeSlot)?;
                slots.0[free] = module.slot;
            }
            Ok(slots.save(store, flash)?)
        })
    }

    /// Reads a record of the device's power-safe store (what Device OS keeps in LittleFS:
    /// `/sys/fw_transfer` and the like). Every access goes through the counted flash.
    pub fn store_get(&mut self, key: &str) -> Result<Option<Vec<u8>>, DeviceError> {
        self.with_store(|store, flash| Ok(store.get(flash, key)?))
    }

    /// Writes a record of the power-safe store atomically: after a power cut the old or the new
    /// value is there, never a mix.
    pub fn store_put(&mut self, key: &str, value: &[u8]) -> Result<(), DeviceError> {
        self.with_store(|store, flash| Ok(store.put(flash, key, value)?))
    }

    /// Removes a record of the power-safe store; `false` if it was not there.
    pub fn store_remove(&mut self, key: &str) -> Result<bool, DeviceError> {
        self.with_store(|store, flash| Ok(store.remove(flash, key)?))
    }

    /// Reads `len` bytes of the staging area from `offset` (for hashing a partial transfer).
    pub fn read_staging(&self, offset: u32, len: usize) -> Result<Vec<u8>, DeviceError> {
        let staging = self.staging_region()?;
        Ok(self.flash.read_vec(
            self.board.flash_chip(staging.chip),
            staging.start + offset,
            len,
        )?)
    }

    /// Pending update slots as the DCT holds them now.
    pub fn pending_slots(&mut self) -> Result<Vec<ModuleSlot>, DeviceError> {
        self.with_store(|store, flash| {
            let slots = ModuleSlots::load(store, flash)?;
            Ok(slots.pending().map(|i| slots.0[i]).collect())
        })
    }
}

/// The geometry of `chip`, or `NoSuchChip`.
pub fn geometry(flash: &FlashArray, chip: ChipId) -> Result<FlashGeometry, FlashError> {
    flash.geometry(chip).ok_or(FlashError::NoSuchChip { chip })
}

impl FlashError {
    /// True when the operation failed because the power went.
    pub fn is_power_loss(&self) -> bool {
        matches!(self, FlashError::PowerLost { .. })
    }
}
