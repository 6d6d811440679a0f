//! The bootloader: applies staged module slots, then validates what is installed and decides
//! how the device runs (reference sections 5.3, 5.4 and 5.5).
//!
//! Order at every boot, as `FLASH_UpdateModules` and `system_part1_post_init` do it:
//! 1. finish a bootloader copy the MBR (nRF52840) or KM0 core (rtl872x) had started;
//! 2. for each pending slot, non-bootloader slots first in slot order, then bootloader slots:
//!    verify the staged source completely (range, prefix, platform, function, destination, CRC,
//!    and for compressed modules that the stream inflates to exactly `original_size`) *before*
//!    erasing anything; erase the destination; copy or inflate; free the slot *after* the copy;
//! 3. validate bootloader, system part and user part (integrity, platform, dependencies); an
//!    invalid user part with a valid factory app restores the factory app; an unmet dependency or
//!    a missing/invalid user part means safe mode.
//!
//! Every flash access goes through [`FlashArray`], so a power cut can hit any step; the design
//! makes every step restartable: a slot stays pending until its copy is complete, and the
//! staged source is never written during apply.

use std::sync::Arc;

use protocol::module::{ModuleFunction, Prefix};

use crate::board::{Board, RegionKind};
use crate::content_cache::ContentCache;
use crate::dct::{chip_for_code, slot_flags, ModuleSlot, ModuleSlots};
use crate::flash::{copy_bytes, Activity, ChipId, FlashArray, FlashError};
use crate::installed::{read_region, FoundModule, RegionContent};
use crate::placement::{place, PlacementError};
use crate::store::{Store, StoreError};

pub use crate::flash::COPY_BLOCK_LEN;

/// Store key of the MBR's (nRF52840) / KM0's (rtl872x) pending bootloader copy. The real MBR
/// keeps this in its own parameter page; the emulator keeps it in the same power-safe store as
/// the DCT. Layout: the 20-byte [`ModuleSlot`] that was being applied.
pub const BOOTLOADER_COPY_KEY: &str = "mbr/bootloader_copy";

/// A module the bootloader installed at this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedModule {
    pub slot: usize,
    pub function: u8,
    pub index: u8,
    pub version: u16,
    pub destination: u32,
    pub compressed: bool,
}

/// Why a staged slot was refused. Refused slots are freed and their destination is untouched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotRefusal {
    #[error("slot source {chip}:{address:#x}+{length} is outside the OTA staging area")]
    SourceOutOfRange { chip: u8, address: u32, length: u32 },
    #[error("slot says function {slot} but the module's prefix says {module}")]
    FunctionMismatch { slot: u8, module: u8 },
    #[error("module starts at {module_start:#x} but the slot's destination is {destination:#x}")]
    DestinationNotStart { destination: u32, module_start: u32 },
    #[error("staged {0}")]
    Module(#[from] PlacementError),
}

/// A slot the bootloader refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedSlot {
    pub slot: usize,
    pub reason: SlotRefusal,
}

/// The state of one module region after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleStatus {
    Valid,
    Missing,
    /// Present, but its CRC or structure is wrong (a half-written or corrupt module).
    Corrupt {
        problem: String,
    },
    WrongPlatform {
        found: u16,
    },
    /// Intact but a dependency is not met by what is installed.
    DependencyUnmet {
        function: u8,
        index: u8,
        needed: u16,
        installed: Option<u16>,
    },
}

/// The problem in words: "missing", "corrupt: stored CRC-32 ...", "built for platform 12".
impl std::fmt::Display for ModuleStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModuleStatus::Valid => f.write_str("valid"),
            ModuleStatus::Missing => f.write_str("missing"),
            ModuleStatus::Corrupt { problem } => write!(f, "corrupt: {problem}"),
            ModuleStatus::WrongPlatform { found } => write!(f, "built for platform {found}"),
            ModuleStatus::DependencyUnmet {
                function,
                index,
                needed,
                installed,
            } => {
                write!(
                    f,
                    "needs {} {index} version {needed}, installed ",
                    protocol::module::ModuleFunction::from(*function)
                )?;
                match installed {
                    Some(v) => write!(f, "{v}"),
                    None => f.write_str("none"),
                }
            }
        }
    }
}

/// One module region as validation saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledModule {
    pub region: RegionKind,
    pub function: u8,
    pub index: u8,
    /// Module version from the prefix, when a prefix was found.
    pub version: Option<u16>,
    /// Product firmware version from the suffix (the user part's `PRODUCT_VERSION`).
    pub product_version: Option<u16>,
    pub start: Option<u32>,
    /// Size including the CRC.
    pub size: Option<u32>,
    pub sha256: Option<[u8; 32]>,
    pub status: ModuleStatus,
}

/// Why the device runs in safe mode (user code not run; it connects and asks for modules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SafeModeReason {
    /// A system module's dependency is not installed (e.g. bootloader too old).
    SystemDependencyUnmet {
        region: RegionKind,
        function: u8,
        index: u8,
        needed: u16,
        installed: Option<u16>,
    },
    /// The user part needs a newer system part.
    UserPartDependencyUnmet {
        function: u8,
        index: u8,
        needed: u16,
        installed: Option<u16>,
    },
    /// No user part, or a corrupt one, and no valid factory app.
    UserPartInvalid,
    /// The user part is built for another platform.
    UserPartWrongPlatform { found: u16 },
    /// Assets the application requires are not in asset storage (`app_setup_and_loop`,
    /// Device OS >= 5.5.0; reference 5.5). Found by the system after the bootloader, not by it.
    AssetsMissing { names: Vec<String> },
}

/// How a boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootState {
    /// System and user part valid: the application runs.
    Running,
    SafeMode(SafeModeReason),
    /// The bootloader or the system part is missing or corrupt: nothing can run and the device
    /// needs a wired recovery (DFU or a debugger). This is a bricked device for OTA purposes.
    Unbootable {
        region: RegionKind,
        problem: String,
    },
}

/// Everything one boot did and found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootReport {
    /// A bootloader copy interrupted at an earlier boot was finished.
    pub finished_bootloader_copy: bool,
    pub applied: Vec<AppliedModule>,
    pub refused: Vec<RefusedSlot>,
    /// The factory app was copied over an invalid user part.
    pub factory_restored: bool,
    /// The user app saved before an MBR bootloader update was copied back.
    pub restored_user_app: bool,
    /// Flash I/O errors that stopped a step of the bootloader's update of itself (each one
    /// reset the bootloader, which did the step again; see [`bootloader_copy`]).
    pub bootloader_copy_errors: Vec<FlashError>,
    pub modules: Vec<InstalledModule>,
    pub state: BootState,
}

impl BootReport {
    /// The installed module in `region`, if the board has that region.
    pub fn module(&self, region: RegionKind) -> Option<&InstalledModule> {
        self.modules.iter().find(|m| m.region == region)
    }

    /// Version of the valid module in `region`.
    pub fn valid_version(&self, region: RegionKind) -> Option<u16> {
        self.module(region)
            .filter(|m| m.status == ModuleStatus::Valid)
            .and_then(|m| m.version)
    }
}

/// A boot that did not end in a state: the power went, or the store is unreadable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootError {
    #[error("power lost during boot: {0}")]
    PowerLost(FlashError),
    #[error("the flash refused an operation during boot: {0}")]
    Flash(FlashError),
    #[error("the device's configuration store is unusable: {0}")]
    Store(StoreError),
    #[error("{0}")]
    Device(String),
}

impl From<crate::device::DeviceError> for BootError {
    fn from(e: crate::device::DeviceError) -> Self {
        match e {
            crate::device::DeviceError::Flash(f) => f.into(),
            crate::device::DeviceError::Store(s) => s.into(),
            other => BootError::Device(other.to_string()),
        }
    }
}

impl From<FlashError> for BootError {
    fn from(e: FlashError) -> Self {
        if e.is_power_loss() {
            BootError::PowerLost(e)
        } else {
            BootError::Flash(e)
        }
    }
}

impl From<StoreError> for BootError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Flash(f) => f.into(),
            other => BootError::Store(other),
        }
    }
}

/// What the bootloader computed from flash contents and may reuse while those contents stay
/// the same (see [`crate::content_cache`]): what each module region holds, and what each
/// staged source places as. Share one between the forks of a device (a sweep does) so that the
/// regions and the staging area they did not change are parsed once.
#[derive(Debug, Default)]
pub struct BootCaches {
    regions: ContentCache<RegionContent>,
    sources: ContentCache<Result<PlacedSource, PlacementError>>,
}

impl BootCaches {
    /// What `region` holds: [`read_region`], remembered until the region's sectors change.
    pub fn read_region(
        &self,
        board: &Board,
        flash: &FlashArray,
        region: &crate::board::Region,
    ) -> Result<Arc<RegionContent>, FlashError> {
        let chip = board.flash_chip(region.chip);
        let range = (chip, region.start, region.end - region.start);
        self.regions
            .get_or_compute(0, flash, range, || read_region(board, flash, region))
    }
}

/// [`read_region`] through `caches` when there are some.
fn read_region_with(
    caches: Option<&BootCaches>,
    board: &Board,
    flash: &FlashArray,
    region: &crate::board::Region,
) -> Result<Arc<RegionContent>, FlashError> {
    match caches {
        Some(c) => c.read_region(board, flash, region),
        None => read_region(board, flash, region).map(Arc::new),
    }
}

/// A staged module checked against the board ([`place`]), as the bootloader keeps it.
#[derive(Debug)]
struct PlacedSource {
    region: RegionKind,
    dest_chip: ChipId,
    prefix: Prefix,
    compressed: bool,
    /// Exactly the bytes to write at the module's start address.
    image: Vec<u8>,
}

/// A verified slot, ready to copy.
struct VerifiedSlot {
    region: RegionKind,
    dest_chip: ChipId,
    destination: u32,
    /// The placed source; always `Ok` (see [`VerifiedSlot::image`]).
    source: Arc<Result<PlacedSource, PlacementError>>,
    applied: AppliedModule,
}

impl VerifiedSlot {
    /// Exactly the bytes to write at `destination`.
    fn image(&self) -> &[u8] {
        match &*self.source {
            Ok(p) => &p.image,
            Err(_) => &[],
        }
    }
}

/// Runs one boot of `board` on `flash`, using the configuration store `store`.
pub fn boot(
    board: &Board,
    flash: &mut FlashArray,
    store: &mut Store,
) -> Result<BootReport, BootError> {
    boot_with(board, flash, store, None)
}

/// [`boot`], reusing what `caches` remembers of contents that did not change.
pub fn boot_with(
    board: &Board,
    flash: &mut FlashArray,
    store: &mut Store,
    caches: Option<&BootCaches>,
) -> Result<BootReport, BootError> {
    let mut report = BootReport {
        finished_bootloader_copy: false,
        applied: Vec::new(),
        refused: Vec::new(),
        factory_restored: false,
        restored_user_app: false,
        bootloader_copy_errors: Vec::new(),
        modules: Vec::new(),
        state: BootState::Running,
    };

    // Each pass is one run of the bootloader; a bootloader copy through the MBR resets the
    // device, and the new bootloader runs the next pass (it restores the user app).
    for _pass in 0..MAX_BOOTLOADER_PASSES {
        if !apply_pass(board, flash, store, &mut report, caches)? {
            break;
        }
    }

    // 3. Validation.
    validate(board, flash, &mut report, caches)?;
    Ok(report)
}

/// Bootloader runs one boot may take: the MBR copy of a new bootloader resets into it once
/// (more would be a slot that keeps copying a bootloader, which the first pass frees), and a
/// bootloader copy step refused by the flash resets it once more (see [`bootloader_copy`]).
const MAX_BOOTLOADER_PASSES: usize = 4;

/// One run of the bootloader's apply: the MBR (KM0) finishes an interrupted bootloader copy,
/// then the pending slots are applied, non-bootloader first. `true` when a bootloader copy
/// reset the device (the caller runs the new bootloader).
fn apply_pass(
    board: &Board,
    flash: &mut FlashArray,
    store: &mut Store,
    report: &mut BootReport,
    caches: Option<&BootCaches>,
) -> Result<bool, BootError> {
    // 1. The MBR / KM0 finishes a bootloader copy before anything else runs.
    if let Some(raw) = store.get(flash, BOOTLOADER_COPY_KEY)? {
        let finished = bootloader_copy(flash, &mut report.bootloader_copy_errors, |flash| {
            let mut finished = false;
            if let Ok(raw) = <[u8; crate::dct::SLOT_LEN]>::try_from(raw.as_slice()) {
                let slot = ModuleSlot::parse(&raw);
                if slot.flags & VERIFY_MASK == 0 {
                    // The MBR's own copy (nRF52840): raw bytes from where the bootloader
                    // staged them; nothing there is written until the copy is finished.
                    finished = raw_copy(flash, &slot)?;
                } else if let Ok(v) = verify_slot(board, flash, 0, &slot, caches)? {
                    // KM0 (rtl872x): from the OTA area, which apply never writes, so
                    // verifying again can only fail on a corrupt record.
                    copy_bytes(flash, v.dest_chip, v.destination, v.image())?;
                    finished = true;
                }
            }
            store.remove(flash, BOOTLOADER_COPY_KEY)?;
            Ok(finished)
        })?;
        match finished {
            Some(finished) => report.finished_bootloader_copy |= finished,
            // The record stays: the copy is finished after the reset.
            None => return Ok(true),
        }
    }

    // 2. Pending slots: non-bootloader first, then bootloader.
    let slots = ModuleSlots::load(store, flash)?;
    let bootloader = u8::from(ModuleFunction::Bootloader);
    let order: Vec<usize> = slots
        .pending()
        .filter(|&i| slots.0[i].function != bootloader)
        .chain(
            slots
                .pending()
                .filter(|&i| slots.0[i].function == bootloader),
        )
        .collect();
    for i in order {
        let slot = slots.0[i];
        if slot.flags & VERIFY_MASK == 0 && is_backup_restore(board, &slot) {
            // The user app saved before an MBR bootloader copy goes back where it was.
            raw_copy(flash, &slot)?;
            free_slot(store, flash, i)?;
            report.restored_user_app = true;
            continue;
        }
        let verified = verify_slot(board, flash, i, &slot, caches)?;
        match verified {
            Err(reason) => {
                report.refused.push(RefusedSlot { slot: i, reason });
                free_slot(store, flash, i)?;
            }
            Ok(v) if slot.function == bootloader => match board.ota.bootloader_update {
                Some(via) => {
                    let done =
                        bootloader_copy(flash, &mut report.bootloader_copy_errors, |flash| {
                            mbr_bootloader_update(board, flash, store, i, &v, &via)
                        })?;
                    if done.is_some() {
                        report.applied.push(v.applied);
                    }
                    // The MBR resets into the new bootloader, which goes on from step 1 (after
                    // an I/O error, the bootloader resets and the same steps run again).
                    return Ok(true);
                }
                None => {
                    // The bootloader cannot overwrite itself: it hands the copy to the KM0
                    // core, which records it first so that a power cut mid-copy is finished
                    // next boot.
                    let done =
                        bootloader_copy(flash, &mut report.bootloader_copy_errors, |flash| {
                            let mut raw = [0u8; crate::dct::SLOT_LEN];
                            slot.emit(&mut raw);
                            store.put(flash, BOOTLOADER_COPY_KEY, &raw)?;
                            free_slot(store, flash, i)?;
                            copy_bytes(flash, v.dest_chip, v.destination, v.image())?;
                            store.remove(flash, BOOTLOADER_COPY_KEY)?;
                            Ok(())
                        })?;
                    match done {
                        Some(()) => report.applied.push(v.applied),
                        None => return Ok(true),
                    }
                }
            },
            Ok(v) => {
                copy_bytes(flash, v.dest_chip, v.destination, v.image())?;
                invalidate_legacy_user_part(board, flash, &v)?;
                free_slot(store, flash, i)?;
                report.applied.push(v.applied);
            }
        }
    }
    Ok(false)
}

/// Runs one step of the bootloader's update of itself (the user-app backup, the staged
/// bootloader, the copy record, the MBR's or KM0's copy) with its flash operations labelled
/// [`Activity::BootloaderCopy`], so that an I/O fault can aim at it. `Ok(None)`: a flash
/// operation failed with an I/O error (not a power loss), added to `errors`.
///
/// UNCONFIRMED: what the bootloader does on such an error. Device OS's `FLASH_CopyMemory`
/// reports a failure, and the MBR's `SD_MBR_COMMAND_COPY_BL` is documented to resume an
/// unfinished copy at the next power-on; here every failed step is taken as a reset of the
/// bootloader: the records written so far (the restore slot, the MBR's copy record, the
/// pending bootloader slot) make the next run put the user app back and do the step again,
/// as after a power cut before the refused operation (which changed nothing). A failing chip
/// that refuses again and again is left to [`MAX_BOOTLOADER_PASSES`]: the device then boots
/// what validates.
fn bootloader_copy<T>(
    flash: &mut FlashArray,
    errors: &mut Vec<FlashError>,
    step: impl FnOnce(&mut FlashArray) -> Result<T, BootError>,
) -> Result<Option<T>, BootError> {
    flash.set_part(Some(Activity::BootloaderCopy));
    let result = step(flash);
    flash.set_part(None);
    match result {
        Ok(done) => Ok(Some(done)),
        Err(BootError::Flash(e)) if !e.is_power_loss() => {
            errors.push(e);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The verification flags of a slot; a slot without any is a raw copy (the user-app restore
/// after an MBR bootloader update).
const VERIFY_MASK: u8 =
    slot_flags::VERIFY_CRC | slot_flags::VERIFY_DEST_IS_START | slot_flags::VERIFY_FUNCTION;

/// Whether `slot` copies the board's bootloader-update backup back to the staging location.
fn is_backup_restore(board: &Board, slot: &ModuleSlot) -> bool {
    let Some(via) = board.ota.bootloader_update else {
        return false;
    };
    chip_for_code(slot.source_device) == Some(board.flash_chip(via.backup.chip))
        && slot.source_address == via.backup.address
        && chip_for_code(slot.dest_device) == Some(board.flash_chip(via.staging.chip))
        && slot.dest_address == via.staging.address
        && slot.length == via.len
}

/// Copies `slot.length` bytes from the slot's source to its destination as they are (the
/// MBR's copy, the user-app restore). `false` when the slot names no chip or wraps around.
fn raw_copy(flash: &mut FlashArray, slot: &ModuleSlot) -> Result<bool, FlashError> {
    let (Some(src), Some(dst)) = (
        chip_for_code(slot.source_device),
        chip_for_code(slot.dest_device),
    ) else {
        return Ok(false);
    };
    if slot.length == 0
        || slot.source_address.checked_add(slot.length).is_none()
        || slot.dest_address.checked_add(slot.length).is_none()
    {
        return Ok(false);
    }
    let bytes = flash.read_vec(src, slot.source_address, slot.length as usize)?;
    copy_bytes(flash, dst, slot.dest_address, &bytes)?;
    Ok(true)
}

/// A bootloader update on nRF52840 (reference 5.3, bootloader >= 1001): the new bootloader is
/// staged in internal flash at the compat user-app area, so the user-app bytes there are
/// first backed up to the external reserved area with a restore slot; then the Nordic MBR
/// copies it over the running bootloader (`SD_MBR_COMMAND_COPY_BL`) and resets. Every step is
/// restartable:
/// - the restore slot is a non-bootloader slot, so after a cut it is applied first at the next
///   boot and the staging area holds the app again before the bootloader slot is taken up
///   again; the backup is taken again only then (never over a good backup while a restore
///   slot is pending);
/// - the MBR's record (`BOOTLOADER_COPY_KEY`, raw: source = staging) is written before the
///   bootloader slot is freed, so a cut before the record leaves the slot to apply again
///   (the restore slot applies first, as a non-bootloader slot, and puts the app back), and a
///   cut after it is finished by the MBR at the next boot from the intact staging area;
/// - the restore slot is applied by the new bootloader after the MBR's reset.
///
/// UNCONFIRMED: the order of "record, then free the slot" (Device OS frees the slot, then
/// calls the MBR, which records its copy in its parameter page; a cut between those two would
/// drop the update); the restore slot's exact fields (here: raw copy, no verify flags,
/// function user part, length = the bootloader region).
fn mbr_bootloader_update(
    board: &Board,
    flash: &mut FlashArray,
    store: &mut Store,
    index: usize,
    v: &VerifiedSlot,
    via: &crate::board::BootloaderUpdate,
) -> Result<(), BootError> {
    let staging_chip = board.flash_chip(via.staging.chip);
    let backup_chip = board.flash_chip(via.backup.chip);
    let restore = ModuleSlot {
        magic: crate::dct::magic::PENDING,
        source_device: crate::dct::device_code(backup_chip),
        dest_device: crate::dct::device_code(staging_chip),
        source_address: via.backup.address,
        dest_address: via.staging.address,
        length: via.len,
        flags: 0,
        function: u8::from(ModuleFunction::UserPart),
    };
    let slots = ModuleSlots::load(store, flash)?;
    let restore_pending = slots
        .pending()
        .any(|i| is_backup_restore(board, &slots.0[i]));
    if !restore_pending {
        let app = flash.read_vec(staging_chip, via.staging.address, via.len as usize)?;
        copy_bytes(flash, backup_chip, via.backup.address, &app)?;
        let mut slots = ModuleSlots::load(store, flash)?;
        let free = (1..slots.0.len())
            .find(|&i| !slots.0[i].is_pending())
            .ok_or_else(|| {
                BootError::Device("no module slot free for the user-app restore".into())
            })?;
        slots.0[free] = restore;
        slots.save(store, flash)?;
    }
    // Stage the new bootloader where the MBR copies it from.
    copy_bytes(flash, staging_chip, via.staging.address, v.image())?;
    let record = ModuleSlot {
        magic: crate::dct::magic::PENDING,
        source_device: crate::dct::device_code(staging_chip),
        dest_device: crate::dct::device_code(v.dest_chip),
        source_address: via.staging.address,
        dest_address: v.destination,
        length: v.image().len() as u32,
        flags: 0,
        function: u8::from(ModuleFunction::Bootloader),
    };
    let mut raw = [0u8; crate::dct::SLOT_LEN];
    record.emit(&mut raw);
    store.put(flash, BOOTLOADER_COPY_KEY, &raw)?;
    free_slot(store, flash, index)?;
    // The MBR's copy, then its reset.
    raw_copy(flash, &record)?;
    store.remove(flash, BOOTLOADER_COPY_KEY)?;
    Ok(())
}

fn free_slot(store: &mut Store, flash: &mut FlashArray, index: usize) -> Result<(), StoreError> {
    let mut slots = ModuleSlots::load(store, flash)?;
    slots.0[index] = ModuleSlot::FREE;
    slots.save(store, flash)
}

/// Checks a staged slot without writing anything. `Err(FlashError)` only for power loss.
fn verify_slot(
    board: &Board,
    flash: &FlashArray,
    index: usize,
    slot: &ModuleSlot,
    caches: Option<&BootCaches>,
) -> Result<Result<VerifiedSlot, SlotRefusal>, FlashError> {
    let staging = board.region(RegionKind::OtaStaging);
    let src_chip = chip_for_code(slot.source_device);
    let in_staging = match (staging, src_chip) {
        (Some(r), Some(chip)) => {
            board.flash_chip(r.chip) == chip
                && slot.source_address >= r.start
                && (slot.source_address as u64 + slot.length as u64) <= r.end as u64
        }
        _ => false,
    };
    let (true, Some(src_chip)) = (in_staging, src_chip) else {
        return Ok(Err(SlotRefusal::SourceOutOfRange {
            chip: slot.source_device,
            address: slot.source_address,
            length: slot.length,
        }));
    };
    let compute = || -> Result<Result<PlacedSource, PlacementError>, FlashError> {
        let bytes = flash.read_vec(src_chip, slot.source_address, slot.length as usize)?;
        Ok(place(board, &bytes).map(|placement| PlacedSource {
            region: placement.region.kind,
            dest_chip: board.flash_chip(placement.region.chip),
            compressed: placement.module.compressed_header.is_some(),
            prefix: placement.module.prefix,
            image: placement.image,
        }))
    };
    let source = match caches {
        Some(c) => {
            let range = (src_chip, slot.source_address, slot.length);
            c.sources.get_or_compute(0, flash, range, compute)?
        }
        None => Arc::new(compute()?),
    };
    let placed = match &*source {
        Ok(placed) => placed,
        Err(e) => return Ok(Err(e.clone().into())),
    };
    let p = &placed.prefix;
    let function = u8::from(p.function);
    if slot.flags & slot_flags::VERIFY_FUNCTION != 0 && function != slot.function {
        return Ok(Err(SlotRefusal::FunctionMismatch {
            slot: slot.function,
            module: function,
        }));
    }
    if p.start_address != slot.dest_address {
        return Ok(Err(SlotRefusal::DestinationNotStart {
            destination: slot.dest_address,
            module_start: p.start_address,
        }));
    }
    Ok(Ok(VerifiedSlot {
        region: placed.region,
        dest_chip: placed.dest_chip,
        destination: p.start_address,
        applied: AppliedModule {
            slot: index,
            function,
            index: p.index,
            version: p.version,
            destination: p.start_address,
            compressed: placed.compressed,
        },
        source: Arc::clone(&source),
    }))
}

/// On nRF52840 a valid 128 KB legacy user part (5/1) takes precedence over the 256 KB one (5/2),
/// so installing a 5/2 module erases the legacy module's first sector unless the new image
/// itself covers it.
fn invalidate_legacy_user_part(
    board: &Board,
    flash: &mut FlashArray,
    v: &VerifiedSlot,
) -> Result<(), FlashError> {
    if v.region != RegionKind::UserPart {
        return Ok(());
    }
    let Some(legacy) = board.region(RegionKind::UserPartLegacy) else {
        return Ok(());
    };
    let written_end = v.destination as u64 + v.image().len() as u64;
    if written_end > legacy.start as u64 {
        return Ok(());
    }
    if let RegionContent::Module(_) | RegionContent::Unreadable { .. } =
        read_region(board, flash, legacy)?
    {
        flash.erase_sector(board.flash_chip(legacy.chip), legacy.start)?;
    }
    Ok(())
}

fn status_of(board: &Board, content: &RegionContent) -> ModuleStatus {
    match content {
        RegionContent::Empty => ModuleStatus::Missing,
        RegionContent::Unreadable { problem, .. } => ModuleStatus::Corrupt {
            problem: problem.clone(),
        },
        RegionContent::Module(m) if !m.crc_valid => ModuleStatus::Corrupt {
            problem: "CRC-32 mismatch".into(),
        },
        RegionContent::Module(m) if m.prefix.platform_id != board.platform_id => {
            ModuleStatus::WrongPlatform {
                found: m.prefix.platform_id,
            }
        }
        RegionContent::Module(_) => ModuleStatus::Valid,
    }
}

fn installed(
    region: RegionKind,
    function: u8,
    index: u8,
    content: &RegionContent,
    status: ModuleStatus,
) -> InstalledModule {
    match content {
        RegionContent::Module(FoundModule {
            start,
            bytes,
            prefix,
            product_version,
            sha256,
            ..
        }) => InstalledModule {
            region,
            function,
            index,
            version: Some(prefix.version),
            product_version: *product_version,
            start: Some(*start),
            size: Some(bytes.len() as u32),
            sha256: Some(*sha256),
            status,
        },
        RegionContent::Unreadable { start, .. } => InstalledModule {
            region,
            function,
            index,
            version: None,
            product_version: None,
            start: Some(*start),
            size: None,
            sha256: None,
            status,
        },
        RegionContent::Empty => InstalledModule {
            region,
            function,
            index,
            version: None,
            product_version: None,
            start: None,
            size: None,
            sha256: None,
            status,
        },
    }
}

/// Boot-time validation (reference 5.5). Fills `report.modules` and `report.state`.
fn validate(
    board: &Board,
    flash: &mut FlashArray,
    report: &mut BootReport,
    caches: Option<&BootCaches>,
) -> Result<(), FlashError> {
    // Read every module region the board defines.
    let mut found: Vec<(RegionKind, u8, u8, Arc<RegionContent>)> = Vec::new();
    for region in board.module_regions() {
        let Some(id) = region.module else { continue };
        let content = read_region_with(caches, board, flash, region)?;
        found.push((region.kind, id.function, id.index, content));
    }

    // The user part the system would run: a valid legacy (5/1) module takes precedence.
    let user_region = match found
        .iter()
        .find(|(k, ..)| *k == RegionKind::UserPartLegacy)
        .map(|(_, _, _, c)| &**c)
    {
        Some(RegionContent::Module(m)) if m.crc_valid => RegionKind::UserPartLegacy,
        _ => RegionKind::UserPart,
    };

    // Factory restore: invalid user part, valid factory app.
    let user_ok = found
        .iter()
        .find(|(k, ..)| *k == user_region)
        .map(|(_, _, _, c)| status_of(board, c) == ModuleStatus::Valid)
        .unwrap_or(false);
    if !user_ok {
        if let (Some(factory), Some(user)) = (
            board.region(RegionKind::FactoryApp),
            board.region(RegionKind::UserPart),
        ) {
            if let RegionContent::Module(m) = read_region_as(board, flash, factory, user)? {
                if m.crc_valid && m.prefix.platform_id == board.platform_id {
                    copy_bytes(flash, board.flash_chip(user.chip), m.start, &m.bytes)?;
                    report.factory_restored = true;
                    let content = read_region_with(caches, board, flash, user)?;
                    if let Some(entry) = found.iter_mut().find(|(k, ..)| *k == RegionKind::UserPart)
                    {
                        entry.3 = content;
                    }
                }
            }
        }
    }

    let version_of = |function: u8, index: u8| -> Option<u16> {
        found.iter().find_map(|(_, f, i, c)| match &**c {
            RegionContent::Module(m)
                if *f == function && *i == index && status_of(board, c) == ModuleStatus::Valid =>
            {
                Some(m.prefix.version)
            }
            _ => None,
        })
    };
    let has_region = |function: u8, index: u8| board.region_for_module(function, index).is_some();

    let mut state = BootState::Running;
    for (kind, function, index, content) in &found {
        let mut status = status_of(board, content);
        if status == ModuleStatus::Valid {
            if let RegionContent::Module(m) = &**content {
                for dep in m.prefix.dependencies.iter() {
                    let (df, di, dv) = (u8::from(dep.function), dep.index, dep.version);
                    if df == 0 {
                        continue;
                    }
                    // UNCONFIRMED choice: a dependency on a module this board has no region for
                    // (e.g. the Tracker's NCP firmware, 7/0) is treated as met: the emulator
                    // does not model that module.
                    if !has_region(df, di) {
                        continue;
                    }
                    let have = version_of(df, di);
                    if have.is_none_or(|v| v < dv) {
                        status = ModuleStatus::DependencyUnmet {
                            function: df,
                            index: di,
                            needed: dv,
                            installed: have,
                        };
                        break;
                    }
                }
            }
        }
        let is_user = *kind == user_region;
        let is_system = matches!(kind, RegionKind::Bootloader | RegionKind::SystemPart);
        if *kind == RegionKind::UserPartLegacy && user_region != RegionKind::UserPartLegacy {
            // An absent legacy module is normal; do not let it decide the state.
        } else if is_system {
            match &status {
                ModuleStatus::Valid => {}
                ModuleStatus::DependencyUnmet {
                    function,
                    index,
                    needed,
                    installed,
                } => {
                    if !matches!(state, BootState::Unbootable { .. }) {
                        state = BootState::SafeMode(SafeModeReason::SystemDependencyUnmet {
                            region: *kind,
                            function: *function,
                            index: *index,
                            needed: *needed,
                            installed: *installed,
                        });
                    }
                }
                other => {
                    state = BootState::Unbootable {
                        region: *kind,
                        problem: other.to_string(),
                    };
                }
            }
        } else if is_user && state == BootState::Running {
            state = match &status {
                ModuleStatus::Valid => BootState::Running,
                ModuleStatus::DependencyUnmet {
                    function,
                    index,
                    needed,
                    installed,
                } => BootState::SafeMode(SafeModeReason::UserPartDependencyUnmet {
                    function: *function,
                    index: *index,
                    needed: *needed,
                    installed: *installed,
                }),
                ModuleStatus::WrongPlatform { found } => {
                    BootState::SafeMode(SafeModeReason::UserPartWrongPlatform { found: *found })
                }
                ModuleStatus::Missing | ModuleStatus::Corrupt { .. } => {
                    BootState::SafeMode(SafeModeReason::UserPartInvalid)
                }
            };
        }
        report
            .modules
            .push(installed(*kind, *function, *index, content, status));
    }
    report.state = state;
    Ok(())
}

/// Reads a module stored in `region` (the factory app) that is built to run in `target`.
fn read_region_as(
    board: &Board,
    flash: &FlashArray,
    region: &crate::board::Region,
    target: &crate::board::Region,
) -> Result<RegionContent, FlashError> {
    // The factory app's prefix names the user part's address, not the factory area's; read the
    // prefix at the factory area start and take the module size from it.
    let chip = board.flash_chip(region.chip);
    let head = flash.read_vec(chip, region.start, protocol::module::PREFIX_LEN)?;
    let Ok(prefix) = protocol::module::Prefix::parse(&head) else {
        return Ok(RegionContent::Empty);
    };
    if prefix.start_address != target.start || prefix.end_address <= prefix.start_address {
        return Ok(RegionContent::Empty);
    }
    let size = prefix.end_address - prefix.start_address + 4;
    if size > region.end - region.start {
        return Ok(RegionContent::Empty);
    }
    let bytes = flash.read_vec(chip, region.start, size as usize)?;
    Ok(RegionContent::from_bytes(
        prefix.start_address,
        region.start,
        bytes,
    ))
}
