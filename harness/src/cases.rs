//! The standard power-cut sweep cases, on any built-in board: a user part, a compressed user
//! part, a combined system part + user part and a bootloader update (the four `hil sweep` runs
//! by default), and a system part alone (`hil bench power-cut`'s large case).

use std::collections::BTreeMap;

use emulator::board::{Board, RegionKind};
use emulator::firmware::{FirmwareError, FirmwareSet, ModuleSizes, Versions};
use protocol::module::{combine, compress};

use crate::sweep::SweepCase;

/// The update a sweep case applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepCaseKind {
    UserPart,
    CompressedUserPart,
    CombinedSystemAndUser,
    Bootloader,
    /// A system part alone (not in [`SweepCaseKind::ALL`]).
    SystemPart,
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
            SweepCaseKind::SystemPart => "system-part",
        }
    }
}

/// Builds one sweep case: baseline firmware installed, the update staged, not committed.
pub fn build(
    board: &Board,
    kind: SweepCaseKind,
    sizes: &ModuleSizes,
    seed: u64,
) -> Result<SweepCase, FirmwareError> {
    let set = FirmwareSet::new(board, *sizes, seed);
    let old_versions = Versions::BASELINE;
    let (mut device, old) = set.provision(&old_versions)?;
    let module_err = |what: &str, source| FirmwareError::Module {
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
        SweepCaseKind::SystemPart => {
            new_versions.system_part += 1;
            let system = set.module(RegionKind::SystemPart, &new_versions, sizes.system_part)?;
            new.insert(RegionKind::SystemPart, system.clone());
            system
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
    let device_err = |source| FirmwareError::Device {
        board: board.name.clone(),
        source,
    };
    device.stage_file(&file).map_err(device_err)?;
    let staged = device.validate_staged(file.len()).map_err(device_err)?;
    Ok(SweepCase {
        name: format!("{}/{}", board.name, kind.name()),
        device,
        staged,
        old,
        new,
    })
}
