//! Builds the file a `cloud.flash` step sends, from its [`FirmwareSpec`], with the module
//! builder through the emulator's [`FirmwareSet`] (reference: particle-protocol.md 4.1-4.6).
//! Any target uses it: the emulator hands the bytes to its local cloud, a board target to the
//! cloud its board talks to.

use emulator::board::{Board, BoardError, RegionKind};
use emulator::firmware::{FirmwareError, FirmwareSet, ModuleSizes};
use protocol::module::{combine, compress, ModuleError};

use super::model::{Corruption, FirmwareSpec, InitialFirmware};

/// Why a file could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FileBuildError {
    #[error("board {name}: {source}")]
    Board { name: String, source: BoardError },
    #[error(transparent)]
    Firmware(#[from] FirmwareError),
    #[error("{what}: {source}")]
    Module { what: String, source: ModuleError },
}

/// The file for `spec` on `board`, whose device currently runs `current`. Modules not named in
/// the spec keep the current versions (an app-only file depends on the running Device OS).
pub fn build_file(
    board: &Board,
    spec: &FirmwareSpec,
    current: &InitialFirmware,
    sizes: ModuleSizes,
    seed: u64,
) -> Result<Vec<u8>, FileBuildError> {
    let other;
    let target_board = match &spec.platform {
        Some(name) if *name != board.name => {
            other = Board::builtin(name).map_err(|source| FileBuildError::Board {
                name: name.clone(),
                source,
            })?;
            &other
        }
        _ => board,
    };
    let mut versions = current.versions();
    if let Some(app) = spec.app {
        versions.product_version = app;
    }
    if let Some(dos) = spec.device_os {
        versions.system_part = dos.0;
    }
    if let Some(b) = spec.bootloader {
        versions.bootloader = b;
    }
    let sizes = ModuleSizes {
        user_part: spec.size.unwrap_or(sizes.user_part),
        ..sizes
    };
    let set = FirmwareSet::new(target_board, sizes, seed);
    let mut modules = Vec::new();
    if spec.bootloader.is_some() {
        modules.push(set.module(RegionKind::Bootloader, &versions, sizes.bootloader)?);
    }
    if spec.device_os.is_some() {
        modules.push(set.module(RegionKind::SystemPart, &versions, sizes.system_part)?);
    }
    if spec.app.is_some() {
        modules.push(set.module(RegionKind::UserPart, &versions, sizes.user_part)?);
    }
    let module_err = |what: &str, source| FileBuildError::Module {
        what: what.into(),
        source,
    };
    if spec.compressed {
        modules = modules
            .iter()
            .map(|m| compress(m).map_err(|e| module_err("compressing", e)))
            .collect::<Result<_, _>>()?;
    }
    let mut file = if spec.combined {
        let refs: Vec<&[u8]> = modules.iter().map(Vec::as_slice).collect();
        combine(&refs).map_err(|e| module_err("combining", e))?
    } else {
        // The parser allows several modules only when combined.
        modules.into_iter().next().unwrap_or_default()
    };
    match spec.corrupt {
        Some(Corruption::Crc) => {
            let mid = file.len() / 2;
            if let Some(b) = file.get_mut(mid) {
                *b ^= 0x01;
            }
        }
        Some(Corruption::Truncated) => file.truncate(file.len() * 3 / 4),
        None => {}
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::model::DeviceOsVersion;
    use protocol::module::{split_combined, Module};

    fn boron() -> Board {
        Board::builtin("boron").unwrap()
    }

    fn build(spec: FirmwareSpec) -> Vec<u8> {
        build_file(
            &boron(),
            &spec,
            &InitialFirmware::default(),
            ModuleSizes::default(),
            1,
        )
        .unwrap()
    }

    #[test]
    fn an_app_only_file_is_a_user_part_at_the_new_product_version_for_the_running_device_os() {
        let file = build(FirmwareSpec {
            app: Some(4),
            ..FirmwareSpec::default()
        });
        let m = Module::parse(&file).unwrap();
        assert_eq!(m.prefix.platform_id, 13);
        assert_eq!(m.product_version(), Some(4));
        assert!(m.crc_valid());
        assert_eq!(file.len(), ModuleSizes::default().user_part as usize);
    }

    #[test]
    fn a_combined_file_holds_the_system_part_then_the_user_part() {
        let file = build(FirmwareSpec {
            app: Some(4),
            device_os: Some(DeviceOsVersion(6201)),
            combined: true,
            ..FirmwareSpec::default()
        });
        assert_eq!(split_combined(&file).unwrap().len(), 2);
    }

    #[test]
    fn wrong_platform_corrupt_and_truncated_files_are_what_they_say() {
        let argon = build(FirmwareSpec {
            app: Some(4),
            platform: Some("argon".into()),
            ..FirmwareSpec::default()
        });
        assert_eq!(Module::parse(&argon).unwrap().prefix.platform_id, 12);
        let bad_crc = build(FirmwareSpec {
            app: Some(4),
            corrupt: Some(Corruption::Crc),
            ..FirmwareSpec::default()
        });
        assert!(!Module::parse(&bad_crc).unwrap().crc_valid());
        let short = build(FirmwareSpec {
            app: Some(4),
            corrupt: Some(Corruption::Truncated),
            ..FirmwareSpec::default()
        });
        assert_eq!(
            short.len(),
            ModuleSizes::default().user_part as usize * 3 / 4
        );
        let compressed = build(FirmwareSpec {
            app: Some(4),
            compressed: true,
            ..FirmwareSpec::default()
        });
        assert!(compressed.len() < ModuleSizes::default().user_part as usize);
    }
}
