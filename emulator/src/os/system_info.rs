//! What the system knows about itself after a boot, as the cloud sees it: the Hello values
//! (reference 1.7), the protobuf system describe and its checksum (1.10, 1.4), computed once
//! per boot from the bootloader's report and the module prefixes in flash.

use protocol::message::{
    FirmwareModule, FirmwareModuleAsset, FirmwareModuleDependency, FirmwareModuleStore, Hello,
    HelloFlags, SystemDescribe,
};
use protocol::module::ModuleFunction;

use crate::board::{Board, RegionKind};
use crate::bootloader::{BootReport, BootState, InstalledModule, ModuleStatus};
use crate::flash::{FlashArray, FlashError};
use crate::installed::{read_region, RegionContent};

use super::identity::Identity;
use super::profile::{
    validation, COMPRESSED_OTA_MIN_BOOTLOADER_VERSION, HELLO_BASE_FLAGS, HELLO_FLAG_COMPRESSED_OTA,
    MAX_MESSAGE_SIZE,
};
use super::trace::RunningVersions;

/// Module regions in the order Device OS lists them (`module_bounds[]`): bootloader, the
/// rtl872x KM0 parts, system part, user parts (128 KB compat first), radio stack. The factory
/// app is never in a describe sent to the cloud.
const DESCRIBE_ORDER: [RegionKind; 7] = [
    RegionKind::Bootloader,
    RegionKind::Km0Mbr,
    RegionKind::Km0Part1,
    RegionKind::SystemPart,
    RegionKind::UserPartLegacy,
    RegionKind::UserPart,
    RegionKind::RadioStack,
];

/// The system's view of one boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    pub platform_id: u16,
    pub versions: RunningVersions,
    pub safe_mode: bool,
    /// Hello product id and product firmware version.
    pub product_id: u16,
    pub product_version: u16,
    /// Hello flags.
    pub hello_flags: u16,
    pub max_binary_size: u32,
    pub ota_chunk_size: u16,
    /// The protobuf `SystemDescribe`.
    pub describe: SystemDescribe,
    /// `compute_describe_system_checksum`: platform id plus the CRC-32 of every listed module's
    /// SHA-256 (wrapping). Any firmware change changes it.
    pub describe_checksum: u32,
}

/// The user part the system runs: the valid 128 KB compat module if there is one, else the
/// 256 KB one (reference 5.1).
pub fn running_user_part(report: &BootReport) -> Option<&InstalledModule> {
    match report.module(RegionKind::UserPartLegacy) {
        Some(m) if m.status == ModuleStatus::Valid => Some(m),
        _ => report.module(RegionKind::UserPart),
    }
}

impl SystemInfo {
    /// Reads the modules of `board` from `flash` and combines them with the boot `report`.
    /// Only a power loss is an error.
    pub fn collect(
        board: &Board,
        flash: &FlashArray,
        report: &BootReport,
    ) -> Result<SystemInfo, FlashError> {
        let safe_mode = matches!(report.state, BootState::SafeMode(_));
        let user = running_user_part(report);
        let user_intact = user.is_some_and(|m| m.status == ModuleStatus::Valid);
        let versions = RunningVersions {
            bootloader: report
                .module(RegionKind::Bootloader)
                .and_then(|m| m.version),
            system_part: report
                .module(RegionKind::SystemPart)
                .and_then(|m| m.version),
            user_part: user.filter(|_| user_intact).and_then(|m| m.version),
            product_version: user.filter(|_| user_intact).and_then(|m| m.product_version),
        };
        // Hello product fields (reference 1.7): an application built with PRODUCT_VERSION(n)
        // reports the platform id as product id. In safe mode the system reads the version
        // from the user module's suffix, only if that module validates.
        let (product_id, product_version) = match (safe_mode, versions.product_version) {
            (false, Some(v)) => (board.platform_id, v),
            (false, None) => (0xFFFF, 0xFFFF),
            (true, v) => (board.platform_id, v.unwrap_or(0xFFFF)),
        };
        let mut hello_flags = HELLO_BASE_FLAGS;
        if versions
            .bootloader
            .is_some_and(|v| v >= COMPRESSED_OTA_MIN_BOOTLOADER_VERSION)
        {
            hello_flags |= HELLO_FLAG_COMPRESSED_OTA;
        }
        let (describe, describe_checksum) = describe(board, flash, report)?;
        Ok(SystemInfo {
            platform_id: board.platform_id,
            versions,
            safe_mode,
            product_id,
            product_version,
            hello_flags,
            max_binary_size: board.ota.max_binary_size,
            ota_chunk_size: board.ota.chunk_size.min(u32::from(u16::MAX)) as u16,
            describe,
            describe_checksum,
        })
    }

    /// Lists the stored assets in the describe (`assets`: hash, name, original size, storage
    /// size) and folds their hashes into the describe checksum. UNCONFIRMED: whether Device
    /// OS's checksum covers assets; without it a resumed session after an asset reboot would
    /// leave the cloud with the describe from before.
    pub fn add_assets(&mut self, assets: &[crate::assets::StoredAsset]) {
        for a in assets {
            self.describe_checksum = self
                .describe_checksum
                .wrapping_add(crc32fast::hash(&a.hash));
            self.describe.assets.push(FirmwareModuleAsset {
                hash: a.hash.clone(),
                name: a.name.clone(),
                size: a.size,
                storage_size: a.storage_size,
            });
        }
    }

    /// The Hello this system sends.
    pub fn hello(&self, identity: &Identity) -> Hello {
        Hello {
            product_id: self.product_id,
            product_version: self.product_version,
            flags: HelloFlags(self.hello_flags),
            platform_id: self.platform_id,
            reserved: 0,
            device_id: identity.device_id,
            system_version: self.versions.system_part.unwrap_or(0),
            max_message_size: MAX_MESSAGE_SIZE,
            max_binary_size: self.max_binary_size,
            ota_chunk_size: self.ota_chunk_size,
        }
    }
}

/// Builds the system describe and its checksum.
fn describe(
    board: &Board,
    flash: &FlashArray,
    report: &BootReport,
) -> Result<(SystemDescribe, u32), FlashError> {
    let mut modules = Vec::new();
    let mut checksum = u32::from(board.platform_id);
    let mut user_listed = false;
    for kind in DESCRIBE_ORDER {
        let Some(region) = board.region(kind) else {
            continue;
        };
        let RegionContent::Module(found) = read_region(board, flash, region)? else {
            continue;
        };
        let p = &found.prefix;
        let is_user = p.function == ModuleFunction::UserPart;
        if is_user {
            // Only one user part is reported, and never an invalid one (HAL_System_Info).
            if user_listed || !found.crc_valid {
                continue;
            }
            user_listed = true;
        }
        let mut passed = validation::RANGE;
        if p.platform_id == board.platform_id {
            passed |= validation::PLATFORM;
        }
        if found.crc_valid {
            passed |= validation::INTEGRITY;
        }
        let dependencies_met = p.dependencies.iter().all(|d| {
            let f = u8::from(d.function);
            f == 0
                || board.region_for_module(f, d.index).is_none()
                || installed_version(report, f, d.index).is_some_and(|v| v >= d.version)
        });
        if dependencies_met {
            passed |= validation::DEPENDENCIES;
        }
        let dependencies = p
            .dependencies
            .iter()
            .filter(|d| d.function != ModuleFunction::None && d.function.is_known())
            .map(|d| FirmwareModuleDependency {
                r#type: i32::from(u8::from(d.function)),
                index: u32::from(d.index),
                version: u32::from(d.version),
            })
            .collect();
        checksum = checksum.wrapping_add(crc32fast::hash(&found.sha256));
        modules.push(FirmwareModule {
            r#type: i32::from(u8::from(p.function)),
            index: u32::from(p.index),
            version: u32::from(p.version),
            store: FirmwareModuleStore::MainModuleStore as i32,
            max_size: region.len(),
            checked_flags: validation::CHECKED,
            passed_flags: passed,
            hash: is_user.then(|| found.sha256.to_vec()),
            dependencies,
            // The application's ASSET_DEPENDENCY extensions (sizes are not in them).
            asset_dependencies: if is_user {
                protocol::bundle::asset_dependencies(&found.bytes)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|d| FirmwareModuleAsset {
                        hash: d.hash,
                        name: d.name,
                        size: 0,
                        storage_size: 0,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            size: found.bytes.len() as u32,
            security: None,
        });
    }
    Ok((
        SystemDescribe {
            firmware_modules: modules,
            ..SystemDescribe::default()
        },
        checksum,
    ))
}

/// Version of the module `function`/`index` the boot found, valid or not.
fn installed_version(report: &BootReport, function: u8, index: u8) -> Option<u16> {
    report
        .modules
        .iter()
        .filter(|m| m.function == function && m.index == index)
        .find_map(|m| m.version)
}
