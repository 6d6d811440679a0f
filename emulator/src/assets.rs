//! The asset file system (reference section 6.3, 5.1): Device OS's asset LittleFS in the
//! board's `asset_fs` region, holding each stored asset module (still compressed) as a file
//! named after the asset.
//!
//! It is the same power-safe [`Store`] as the system's (copy-on-write, two banks, every write a
//! numbered flash operation that a power cut can hit), mounted on its own region: a file is one
//! record, so storing an asset is atomic, and after any cut the old set of files or the new one
//! is there. Device OS's choices made here:
//!
//! * [`AssetFs::store`] (`AssetManager::storeAsset`, at the commit of an asset transfer):
//!   removes every file the running application does not require, then writes the module.
//! * [`AssetFs::validate`] (at boot): every file that is not a valid asset module whose name is
//!   its file name is deleted.
//! * The consumer state for `System.onAssetOta` lives in the system store under
//!   [`CONSUMER_STATE_KEY`] (Device OS: `/sys/cache.dat`, key ASSET_MANAGER_CONSUMER_STATE).
//! * Size checks at UpdateStart ([`size_check`]).
//!
//! UNCONFIRMED / divergences (in one place):
//! * A1 The emulated file system keeps two banks (its copy-on-write), so it holds about half of
//!   the region where LittleFS holds nearly all of it. The -190 limits below are Device OS's,
//!   computed from the region; an asset that passes them but does not fit the emulated bank
//!   fails its commit with a flash error (-219). The documented single-asset limits of every
//!   built-in board fit a bank.
//! * A2 On boards whose OTA staging area overlaps the asset region (Boron, Argon, B-SoM), a
//!   transfer longer than the part of the staging area before the asset region (the "safe
//!   length", 592 KiB there) wipes the asset region before the staging area is erased; the
//!   wiped region is formatted again at its next mount. Device OS formats its asset LittleFS.
//! * A3 `storeAsset` removes unrequired files before writing the new one, each removal its own
//!   atomic write; a cut between them leaves fewer unrequired files, never a torn one.

use protocol::bundle::{AssetDependency, AssetModule};

use crate::board::{Board, RegionKind};
use crate::device::{geometry, Device, DeviceError};
use crate::flash::{ChipId, FlashArray};
use crate::store::{Store, StoreError};

/// System-store key of the `onAssetOta` consumer state (1 byte: [`ConsumerState`]).
pub const CONSUMER_STATE_KEY: &str = "/sys/cache.dat:asset_manager_consumer_state";

/// `LFS_BLOCK_SIZE` of the asset file system.
pub const ASSET_BLOCK_LEN: u32 = 4096;
/// Blocks Device OS keeps free: an asset must fit in the file system minus these.
pub const ASSET_RESERVED_BLOCKS: u32 = 16;

/// `AssetManager` consumer state (persisted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerState {
    /// Nothing said yet (no asset stored since the app handled them, or never).
    Unknown = 0,
    /// `System.assetsHandled(true)`: the callback is not called again until a new asset.
    Handled = 1,
    /// A new asset was stored (or `assetsHandled(false)`): the callback runs at the next boot.
    Want = 2,
}

impl ConsumerState {
    pub fn from_byte(b: u8) -> ConsumerState {
        match b {
            1 => ConsumerState::Handled,
            2 => ConsumerState::Want,
            _ => ConsumerState::Unknown,
        }
    }
}

/// One stored asset as the system describe lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAsset {
    pub name: String,
    /// SHA-256 of the raw data.
    pub hash: Vec<u8>,
    /// Raw (original) size.
    pub size: u32,
    /// Size of the stored module.
    pub storage_size: u32,
}

impl From<AssetModule> for StoredAsset {
    fn from(m: AssetModule) -> StoredAsset {
        StoredAsset {
            name: m.name,
            hash: m.hash,
            size: m.original_size,
            storage_size: m.storage_size,
        }
    }
}

/// What a boot found in the asset file system.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AssetScan {
    /// Valid assets, by name.
    pub assets: Vec<StoredAsset>,
    /// Files deleted because they were not valid asset modules (name, why).
    pub deleted: Vec<(String, String)>,
}

impl AssetScan {
    /// The dependencies no stored asset satisfies (same name and SHA-256).
    pub fn missing<'a>(&self, required: &'a [AssetDependency]) -> Vec<&'a AssetDependency> {
        required
            .iter()
            .filter(|d| {
                !self
                    .assets
                    .iter()
                    .any(|a| a.name == d.name && a.hash == d.hash)
            })
            .collect()
    }
}

/// The asset region of a board, if it has one.
pub fn region(board: &Board) -> Option<&crate::board::Region> {
    board.region(RegionKind::AssetFs)
}

/// Device OS's size checks before an OTA transfer starts (`prepareForOta`): `Err` with the
/// reason for -190, `Ok(wipe)` where `wipe` says the asset region must be wiped first (A2).
pub fn size_check(board: &Board, file_size: u32, is_asset: bool) -> Result<bool, String> {
    let Some(assets) = region(board) else {
        return if is_asset {
            Err(format!("{} has no asset storage", board.name))
        } else {
            Ok(false)
        };
    };
    let safe = safe_length(board);
    if is_asset {
        let limit = assets
            .len()
            .saturating_sub(ASSET_RESERVED_BLOCKS * ASSET_BLOCK_LEN);
        if file_size > limit {
            return Err(format!(
                "asset of {file_size} bytes is larger than the {limit} bytes the asset storage \
                 takes (its size less {ASSET_RESERVED_BLOCKS} reserved blocks)"
            ));
        }
        if let Some(safe) = safe {
            if file_size > safe {
                return Err(format!(
                    "asset of {file_size} bytes is larger than the {safe}-byte part of the OTA \
                     area that does not overlap the asset storage"
                ));
            }
        }
        return Ok(false);
    }
    Ok(safe.is_some_and(|safe| file_size > safe))
}

/// `EXTERNAL_FLASH_OTA_SAFE_LENGTH`: on boards whose staging area runs into the asset region,
/// the bytes of staging area before it.
pub fn safe_length(board: &Board) -> Option<u32> {
    let assets = region(board)?;
    let staging = board.region(RegionKind::OtaStaging)?;
    if assets.chip != staging.chip || assets.start >= staging.end || assets.end <= staging.start {
        return None;
    }
    Some(assets.start.saturating_sub(staging.start))
}

/// The asset file system of one device.
pub struct AssetFs;

impl AssetFs {
    fn area(device: &Device) -> Result<(ChipId, u32, u32), DeviceError> {
        let board = device.board();
        let r = region(board).ok_or_else(|| DeviceError::MissingRegion {
            board: board.name.clone(),
            region: RegionKind::AssetFs,
        })?;
        Ok((board.flash_chip(r.chip), r.start, r.len()))
    }

    /// Mounts the file system, formatting it when the region holds none (a new device, or
    /// after a wipe). Formatting erases; mounting never writes.
    fn mount(device: &mut Device) -> Result<Store, DeviceError> {
        let (chip, start, len) = Self::area(device)?;
        let flash = device.flash_mut();
        match Store::mount(flash, chip, start, len) {
            Ok(s) => Ok(s),
            Err(StoreError::NotFormatted { .. }) | Err(StoreError::Corrupt { .. }) => {
                Ok(Store::format(flash, chip, start, len)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Mounts read-only: `None` when nothing is formatted there.
    fn mount_read(
        flash: &FlashArray,
        area: (ChipId, u32, u32),
    ) -> Result<Option<Store>, DeviceError> {
        match Store::mount(flash, area.0, area.1, area.2) {
            Ok(s) => Ok(Some(s)),
            Err(StoreError::NotFormatted { .. }) | Err(StoreError::Corrupt { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The names of the stored files (valid or not), read-only.
    pub fn files(device: &Device) -> Result<Vec<String>, DeviceError> {
        let area = Self::area(device)?;
        Ok(Self::mount_read(device.flash(), area)?
            .map(|s| s.keys().map(str::to_string).collect())
            .unwrap_or_default())
    }

    /// The bytes of a stored file, read-only.
    pub fn read(device: &Device, name: &str) -> Result<Option<Vec<u8>>, DeviceError> {
        let area = Self::area(device)?;
        match Self::mount_read(device.flash(), area)? {
            Some(s) => Ok(s.get(device.flash(), name)?),
            None => Ok(None),
        }
    }

    /// At boot: mounts (formatting a wiped region), deletes every file that is not a valid
    /// asset module named as its file, and lists the rest.
    pub fn validate(device: &mut Device) -> Result<AssetScan, DeviceError> {
        if region(device.board()).is_none() {
            return Ok(AssetScan::default());
        }
        let mut store = Self::mount(device)?;
        let names: Vec<String> = store.keys().map(str::to_string).collect();
        let mut scan = AssetScan::default();
        for name in names {
            let bytes = store.get(device.flash(), &name)?.unwrap_or_default();
            let verdict = match AssetModule::parse(&bytes) {
                Ok(m) if m.name != name => Err(format!("the module is named {:?}", m.name)),
                Ok(m) => Ok(m),
                Err(e) => Err(e.to_string()),
            };
            match verdict {
                Ok(m) => scan.assets.push(m.into()),
                Err(why) => {
                    store.remove(device.flash_mut(), &name)?;
                    scan.deleted.push((name, why));
                }
            }
        }
        Ok(scan)
    }

    /// `AssetManager::storeAsset`: removes the files `required` does not name, then writes
    /// `module` as the file of its name. `module` must be a valid asset module.
    pub fn store(
        device: &mut Device,
        module: &[u8],
        required: &[AssetDependency],
    ) -> Result<StoredAsset, DeviceError> {
        let info = AssetModule::parse(module).map_err(|e| DeviceError::Asset(e.to_string()))?;
        let mut store = Self::mount(device)?;
        let unrequired: Vec<String> = store
            .keys()
            .filter(|k| *k != info.name && !required.iter().any(|d| d.name == *k))
            .map(str::to_string)
            .collect();
        for name in unrequired {
            store.remove(device.flash_mut(), &name)?;
        }
        store.put(device.flash_mut(), &info.name, module)?;
        Ok(info.into())
    }

    /// Erases the whole asset region (A2).
    pub fn wipe(device: &mut Device) -> Result<(), DeviceError> {
        let (chip, start, len) = Self::area(device)?;
        let sector = geometry(device.flash(), chip)?.sector_size;
        let flash = device.flash_mut();
        let mut addr = start;
        while addr < start + len {
            flash.erase_sector(chip, addr)?;
            addr += sector;
        }
        Ok(())
    }

    /// The persisted consumer state.
    pub fn consumer_state(device: &mut Device) -> Result<ConsumerState, DeviceError> {
        Ok(device
            .store_get(CONSUMER_STATE_KEY)?
            .and_then(|v| v.first().copied())
            .map_or(ConsumerState::Unknown, ConsumerState::from_byte))
    }

    pub fn set_consumer_state(
        device: &mut Device,
        state: ConsumerState,
    ) -> Result<(), DeviceError> {
        device.store_put(CONSUMER_STATE_KEY, &[state as u8])
    }
}

/// The asset dependencies of the user part the device runs (the valid 128 KB compat part if
/// there is one, else the 256 KB one; reference 5.1), read from flash. None when no user part
/// parses.
pub fn required_by_running_app(device: &Device) -> Result<Vec<AssetDependency>, DeviceError> {
    for kind in [RegionKind::UserPartLegacy, RegionKind::UserPart] {
        if device.board().region(kind).is_none() {
            continue;
        }
        if let crate::installed::RegionContent::Module(found) = &*device.region_content(kind)? {
            if found.crc_valid {
                return Ok(protocol::bundle::asset_dependencies(&found.bytes).unwrap_or_default());
            }
        }
    }
    Ok(Vec::new())
}
