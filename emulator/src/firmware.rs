//! Firmware sets: the modules a device runs, built for a board and programmed as a factory
//! would (reference sections 4.1, 4.2 and 5.1).
//!
//! Modules are built with the module builder, laid out for the board (region addresses, vector
//! tables before the bootloader and system part prefixes, the rtl872x user part anchored at its
//! region end, the MCU family's suffix style) and carry Device OS 6.2.0's dependencies, so the
//! emulator's bootloader validates them as Device OS would.

use std::collections::BTreeMap;

use protocol::module::{Dependency, ModuleBuilder, ModuleError, ModuleFunction, SuffixStyle};

use crate::board::{Anchor, Board, McuFamily, Region, RegionKind};
use crate::device::{Device, DeviceError};

/// Sizes (bytes, including prefix, suffix and CRC) of the modules a firmware set builds.
#[derive(Debug, Clone, Copy)]
pub struct ModuleSizes {
    pub user_part: u32,
    pub system_part: u32,
    pub bootloader: u32,
    /// Every other module (radio stack, KM0 parts) when provisioning.
    pub other: u32,
}

impl Default for ModuleSizes {
    fn default() -> Self {
        ModuleSizes {
            user_part: 24 * 1024,
            system_part: 32 * 1024,
            bootloader: 16 * 1024,
            other: 4096,
        }
    }
}

/// Why a firmware set could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("building the {what} module for {board}: {source}")]
    Module {
        board: String,
        what: String,
        source: ModuleError,
    },
    #[error("{board} has no {region} region")]
    MissingRegion { board: String, region: RegionKind },
    #[error("{board}: {source}")]
    Device { board: String, source: DeviceError },
}

/// Versions of one firmware set (module versions, and the user part's product version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub bootloader: u16,
    pub system_part: u16,
    pub user_part: u16,
    pub product_version: u16,
    /// The radio stack (SoftDevice S140, module 8/0) on nRF52840 boards.
    pub radio_stack: u16,
    /// The bootloader version the system part depends on; `None`: the set's own bootloader
    /// (a set that is consistent by construction).
    pub bootloader_dependency: Option<u16>,
}

impl Versions {
    /// Device OS 6.2.0 with user part module version 6 and product version 3.
    pub const BASELINE: Versions = Versions {
        bootloader: 3100,
        system_part: 6200,
        user_part: 6,
        product_version: 3,
        radio_stack: RADIO_STACK_S140_7_0_1,
        bootloader_dependency: None,
    };

    /// The module set of the Device OS release whose system part is `system_part`, when
    /// [`device_os_release`] knows it; the user part and product version are the baseline's.
    pub fn release(system_part: u16) -> Option<Versions> {
        let r = device_os_release(system_part)?;
        Some(Versions {
            bootloader: r.bootloader,
            system_part,
            radio_stack: r.radio_stack,
            bootloader_dependency: Some(r.bootloader_dependency),
            ..Versions::BASELINE
        })
    }
}

/// SoftDevice S140 7.0.1 as a radio stack module version (the `SOFTDEVICE_DEPENDENCY` of
/// Device OS 5.5 and 6.2 on nRF52840, reference 4.1).
pub const RADIO_STACK_S140_7_0_1: u16 = 202;

/// SoftDevice S140 6.1.1 as a radio stack module version (the Argon SoftDevice test binary in
/// binary-version-reader, `argon-softdevice-6.1.1.bin`: version 182).
pub const RADIO_STACK_S140_6_1_1: u16 = 182;

/// What one Device OS release installs on an nRF52840 board, besides the system part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceOsRelease {
    /// `BOOTLOADER_VERSION` of the release.
    pub bootloader: u16,
    /// `BOOTLOADER_DEPENDENCY`: the bootloader its system part requires.
    pub bootloader_dependency: u16,
    /// The radio stack it ships and its system part requires (`SOFTDEVICE_DEPENDENCY`).
    pub radio_stack: u16,
}

/// The module set of the Device OS release line `system_part` belongs to (5.5.x to 6.2.x),
/// `None` for other versions (their firmware sets keep the set's own bootloader).
///
/// Sources: `build/version.mk` of Device OS 5.5.x (`BOOTLOADER_VERSION ?= 2300`,
/// `BOOTLOADER_DEPENDENCY = 2300`, `SOFTDEVICE_DEPENDENCY = 202` "S140 7.0.1"); the 5.6.0
/// bootloader test binaries of binary-version-reader (module version 2400); reference 4.1 for
/// 6.2.0 (bootloader 3100, system part needs bootloader >= 3100 and radio stack >= 202).
/// UNCONFIRMED: 5.6.x-5.9.x ship bootloader 2400 but still require 2300 (5.8.0's files were
/// not read; `version.mk` says the dependency "usually lags behind the current bootloader
/// version, to avoid non-mandatory updates", and the field example's 5.8.0 device reports
/// bootloader 2300 while running); 6.0.x-6.1.x ship and require bootloader 3000 (a guess
/// between 2400 and 3100).
pub fn device_os_release(system_part: u16) -> Option<DeviceOsRelease> {
    let (bootloader, bootloader_dependency) = match system_part {
        5500..=5599 => (2300, 2300),
        5600..=5999 => (2400, 2300),
        6000..=6199 => (3000, 3000),
        6200..=6299 => (3100, 3100),
        _ => return None,
    };
    Some(DeviceOsRelease {
        bootloader,
        bootloader_dependency,
        radio_stack: RADIO_STACK_S140_7_0_1,
    })
}

/// Builds the modules of a firmware set for one board.
pub struct FirmwareSet<'a> {
    board: &'a Board,
    sizes: ModuleSizes,
    seed: u64,
}

/// A deterministic body: a mix of repeated code-like words and seeded noise, so that it
/// compresses somewhat, as real firmware does, and differs between seeds and versions.
pub fn body(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed ^ 0x2545_F491_4F6C_DD1D;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(4) {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(&[0x00, 0xBF, 0x08, 0x46, 0x70, 0x47, (x >> 8) as u8, 0x20]);
        }
    }
    out.truncate(len);
    out
}

/// Builds `builder`'s module with a [`body`] sized so that the whole module is `total` bytes
/// (or as small as the module's fixed parts allow).
pub fn build_sized(
    builder: ModuleBuilder,
    total: usize,
    seed: u64,
) -> Result<Vec<u8>, ModuleError> {
    let overhead = builder.clone().body(Vec::new()).build()?.len();
    builder
        .body(body(total.saturating_sub(overhead), seed))
        .build()
}

impl<'a> FirmwareSet<'a> {
    pub fn new(board: &'a Board, sizes: ModuleSizes, seed: u64) -> Self {
        FirmwareSet { board, sizes, seed }
    }

    fn region(&self, kind: RegionKind) -> Result<&'a Region, FirmwareError> {
        self.board.region(kind).ok_or(FirmwareError::MissingRegion {
            board: self.board.name.clone(),
            region: kind,
        })
    }

    fn suffix_style(&self) -> SuffixStyle {
        match self.board.mcu {
            McuFamily::Nrf52840 => SuffixStyle::Nrf52840,
            McuFamily::Rtl872x => SuffixStyle::Rtl872x,
        }
    }

    /// Builds the module that lives in `kind` at `version`, `len` bytes long.
    pub fn module(
        &self,
        kind: RegionKind,
        versions: &Versions,
        len: u32,
    ) -> Result<Vec<u8>, FirmwareError> {
        let region = self.region(kind)?;
        let Some(id) = region.module else {
            return Err(FirmwareError::MissingRegion {
                board: self.board.name.clone(),
                region: kind,
            });
        };
        let function = ModuleFunction::from(id.function);
        let nrf = self.board.mcu == McuFamily::Nrf52840;
        let version = match kind {
            RegionKind::Bootloader => versions.bootloader,
            RegionKind::SystemPart => versions.system_part,
            RegionKind::UserPart | RegionKind::UserPartLegacy => versions.user_part,
            RegionKind::RadioStack => versions.radio_stack,
            other => self
                .board
                .default_module_version(id.function, id.index)
                .unwrap_or(match other {
                    RegionKind::Km0Part1 => 9,
                    _ => 1,
                }),
        };
        let mut b = ModuleBuilder::new(function, self.board.platform_id)
            .index(id.index)
            .version(version)
            .suffix_style(self.suffix_style());
        b = match kind {
            RegionKind::Bootloader if nrf => b.vector_table(0x200),
            RegionKind::Bootloader => b.vector_table(0x20).dependency(Dependency {
                function: ModuleFunction::Bootloader,
                index: 2,
                version: 9,
            }),
            RegionKind::SystemPart if nrf => {
                let bootloader = Dependency {
                    function: ModuleFunction::Bootloader,
                    index: 0,
                    version: versions
                        .bootloader_dependency
                        .unwrap_or(versions.bootloader),
                };
                let second = match self.board.platform_id {
                    // Tracker: no SoftDevice dependency (manufactured with the latest one);
                    // the ESP32 NCP firmware >= 7 instead (`part1_build.mk`).
                    26 => Dependency {
                        function: ModuleFunction::NcpFirmware,
                        index: 0,
                        version: 7,
                    },
                    _ => Dependency {
                        function: ModuleFunction::RadioStack,
                        index: 0,
                        version: RADIO_STACK_S140_7_0_1,
                    },
                };
                // Argon carries the two dependencies swapped (a workaround in Device OS's
                // build for a failed dependency check on some 3.x releases).
                let (first, second) = if self.board.platform_id == 12 {
                    (second, bootloader)
                } else {
                    (bootloader, second)
                };
                b.vector_table(0x200).dependency(first).dependency(second)
            }
            RegionKind::SystemPart => b.dependency(Dependency {
                function: ModuleFunction::Bootloader,
                index: 0,
                version: versions
                    .bootloader_dependency
                    .unwrap_or(versions.bootloader),
            }),
            // UNCONFIRMED: the radio stack is built without dependencies. The 6.1.1 SoftDevice
            // module of binary-version-reader carries two (system part >= 1300, bootloader >=
            // 311); S140 7.0.1's were not read, and any modern device meets those anyway.
            RegionKind::UserPart | RegionKind::UserPartLegacy => b
                .dependency(Dependency {
                    function: ModuleFunction::SystemPart,
                    index: 1,
                    version: versions.system_part,
                })
                .product(self.board.platform_id, versions.product_version),
            _ => b,
        };
        b = match region.anchor {
            Anchor::Start => b.start_address(region.start),
            Anchor::End => b.fixed_end(region.end),
        };
        let seed = self.seed
            ^ ((id.function as u64) << 40)
            ^ ((version as u64) << 16)
            ^ versions.product_version as u64;
        build_sized(b, len as usize, seed).map_err(|source| FirmwareError::Module {
            board: self.board.name.clone(),
            what: kind.to_string(),
            source,
        })
    }

    fn size_of(&self, kind: RegionKind) -> u32 {
        match kind {
            RegionKind::UserPart => self.sizes.user_part,
            RegionKind::SystemPart => self.sizes.system_part,
            RegionKind::Bootloader => self.sizes.bootloader,
            _ => self.sizes.other,
        }
    }

    /// A device running `versions`: every module region of the board programmed (except the
    /// legacy user part), as a factory would.
    pub fn provision(
        &self,
        versions: &Versions,
    ) -> Result<(Device, BTreeMap<RegionKind, Vec<u8>>), FirmwareError> {
        let dev_err = |source| FirmwareError::Device {
            board: self.board.name.clone(),
            source,
        };
        let mut device = Device::new(self.board.clone(), self.seed).map_err(dev_err)?;
        let mut images = BTreeMap::new();
        for region in self.board.module_regions() {
            if region.kind == RegionKind::UserPartLegacy {
                continue;
            }
            let image = self.module(region.kind, versions, self.size_of(region.kind))?;
            device.program_module(&image).map_err(dev_err)?;
            images.insert(region.kind, image);
        }
        Ok((device, images))
    }
}
