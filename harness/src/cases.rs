//! Firmware sets and the four standard power-cut sweep cases: a user part, a compressed user
//! part, a combined system part + user part, and a bootloader update, on any built-in board.
//!
//! Modules are built with the module builder, laid out for the board (region addresses, vector
//! tables before the bootloader and system part prefixes, the rtl872x user part anchored at its
//! region end, the MCU family's suffix style) and carry Device OS 6.2.0's dependencies, so the
//! emulator's bootloader validates them as Device OS would.

use std::collections::BTreeMap;

use emulator::board::{Anchor, Board, McuFamily, Region, RegionKind};
use emulator::device::{Device, DeviceError};
use protocol::module::{
    combine, compress, Dependency, ModuleBuilder, ModuleError, ModuleFunction, SuffixStyle,
};

use crate::sweep::SweepCase;

/// Sizes (bytes, including prefix, suffix and CRC) of the modules a case builds.
#[derive(Debug, Clone, Copy)]
pub struct SweepSizes {
    pub user_part: u32,
    pub system_part: u32,
    pub bootloader: u32,
    /// Every other module (radio stack, KM0 parts) when provisioning.
    pub other: u32,
}

impl Default for SweepSizes {
    fn default() -> Self {
        SweepSizes {
            user_part: 24 * 1024,
            system_part: 32 * 1024,
            bootloader: 16 * 1024,
            other: 4096,
        }
    }
}

/// The update a sweep case applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepCaseKind {
    UserPart,
    CompressedUserPart,
    CombinedSystemAndUser,
    Bootloader,
}

impl SweepCaseKind {
    pub const ALL: [SweepCaseKind; 4] = [
        SweepCaseKind::UserPart,
        SweepCaseKind::CompressedUserPart,
        SweepCaseKind::CombinedSystemAndUser,
        SweepCaseKind::Bootloader,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SweepCaseKind::UserPart => "user-part",
            SweepCaseKind::CompressedUserPart => "compressed-user-part",
            SweepCaseKind::CombinedSystemAndUser => "combined-system-and-user",
            SweepCaseKind::Bootloader => "bootloader",
        }
    }
}

/// Why a case could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
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
}

impl Versions {
    /// Device OS 6.2.0 with user part module version 6 and product version 3.
    pub const BASELINE: Versions = Versions {
        bootloader: 3100,
        system_part: 6200,
        user_part: 6,
        product_version: 3,
    };
}

/// Builds the modules of a firmware set for one board.
pub struct FirmwareSet<'a> {
    board: &'a Board,
    sizes: SweepSizes,
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
    pub fn new(board: &'a Board, sizes: SweepSizes, seed: u64) -> Self {
        FirmwareSet { board, sizes, seed }
    }

    fn region(&self, kind: RegionKind) -> Result<&'a Region, CaseError> {
        self.board.region(kind).ok_or(CaseError::MissingRegion {
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
    ) -> Result<Vec<u8>, CaseError> {
        let region = self.region(kind)?;
        let Some(id) = region.module else {
            return Err(CaseError::MissingRegion {
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
            RegionKind::SystemPart if nrf => b
                .vector_table(0x200)
                .dependency(Dependency {
                    function: ModuleFunction::Bootloader,
                    index: 0,
                    version: versions.bootloader,
                })
                .dependency(Dependency {
                    function: ModuleFunction::RadioStack,
                    index: 0,
                    version: 202,
                }),
            RegionKind::SystemPart => b.dependency(Dependency {
                function: ModuleFunction::Bootloader,
                index: 0,
                version: versions.bootloader,
            }),
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
        build_sized(b, len as usize, seed).map_err(|source| CaseError::Module {
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
    ) -> Result<(Device, BTreeMap<RegionKind, Vec<u8>>), CaseError> {
        let dev_err = |source| CaseError::Device {
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

/// Builds one sweep case: baseline firmware installed, the update staged, not committed.
pub fn build(
    board: &Board,
    kind: SweepCaseKind,
    sizes: &SweepSizes,
    seed: u64,
) -> Result<SweepCase, CaseError> {
    let set = FirmwareSet::new(board, *sizes, seed);
    let old_versions = Versions::BASELINE;
    let (mut device, old) = set.provision(&old_versions)?;
    let module_err = |what: &str, source| CaseError::Module {
        board: board.name.clone(),
        what: what.into(),
        source,
    };

    let mut new_versions = old_versions;
    let mut new = BTreeMap::new();
    let file = match kind {
        SweepCaseKind::UserPart | SweepCaseKind::CompressedUserPart => {
            new_versions.product_version += 1;
            let user = set.module(RegionKind::UserPart, &new_versions, sizes.user_part)?;
            new.insert(RegionKind::UserPart, user.clone());
            if kind == SweepCaseKind::CompressedUserPart {
                compress(&user).map_err(|e| module_err("compressed user part", e))?
            } else {
                user
            }
        }
        SweepCaseKind::CombinedSystemAndUser => {
            new_versions.system_part += 1;
            new_versions.product_version += 1;
            let system = set.module(RegionKind::SystemPart, &new_versions, sizes.system_part)?;
            let user = set.module(RegionKind::UserPart, &new_versions, sizes.user_part)?;
            new.insert(RegionKind::SystemPart, system.clone());
            new.insert(RegionKind::UserPart, user.clone());
            combine(&[&system, &user]).map_err(|e| module_err("combined file", e))?
        }
        SweepCaseKind::Bootloader => {
            new_versions.bootloader += 1;
            let bootloader = set.module(RegionKind::Bootloader, &new_versions, sizes.bootloader)?;
            new.insert(RegionKind::Bootloader, bootloader.clone());
            bootloader
        }
    };
    // A combined file's modules are stored with COMBINED set; the installed images are the
    // modules as they sit in the file (that is what the bootloader copies).
    if kind == SweepCaseKind::CombinedSystemAndUser {
        let ranges =
            protocol::module::split_combined(&file).map_err(|e| module_err("combined file", e))?;
        for (range, region) in ranges
            .into_iter()
            .zip([RegionKind::SystemPart, RegionKind::UserPart])
        {
            new.insert(region, file[range].to_vec());
        }
    }
    device
        .stage_file(&file)
        .map_err(|source| CaseError::Device {
            board: board.name.clone(),
            source,
        })?;
    Ok(SweepCase {
        name: format!("{}/{}", board.name, kind.name()),
        device,
        file_len: file.len(),
        old,
        new,
    })
}
