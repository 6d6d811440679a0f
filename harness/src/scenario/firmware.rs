//! Builds the file a `cloud.flash` step sends, from its [`FirmwareSpec`], with the module
//! builder through the emulator's [`FirmwareSet`] (reference: particle-protocol.md 4.1-4.6).
//! Any target uses it: the emulator hands the bytes to its local cloud, a board target to the
//! cloud its board talks to.

use emulator::board::{Board, BoardError, RegionKind};
use emulator::firmware::{FirmwareError, FirmwareSet, ModuleSizes, Versions};
use protocol::module::{combine, compress, ModuleError};

use super::model::{AssetContent, AssetSpec, Corruption, FirmwareSpec, InitialFirmware};
use protocol::bundle::{Asset, Bundle};

/// Why a file could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FileBuildError {
    #[error("board {name}: {source}")]
    Board { name: String, source: BoardError },
    #[error(transparent)]
    Firmware(#[from] FirmwareError),
    #[error("{what}: {source}")]
    Module { what: String, source: ModuleError },
    #[error("asset bundle: {0}")]
    Bundle(String),
}

/// The modules of the file for `spec` on `board`, whose device currently runs `current`, in
/// file order (radio stack, bootloader, system part, user part), before compression, combining and
/// damage. Modules not named in the spec keep the current versions (an app-only file depends
/// on the running Device OS, unless `built_against` names another). [`build_file`] sends
/// these; a target that checks "nothing lost" expects them in flash afterwards.
pub fn build_modules(
    board: &Board,
    spec: &FirmwareSpec,
    current: &InitialFirmware,
    sizes: ModuleSizes,
    seed: u64,
) -> Result<Vec<(RegionKind, Vec<u8>)>, FileBuildError> {
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
        // A system part of a known release requires that release's bootloader, whatever the
        // device runs (so a 6.2.0 system part sent to a 5.5.0 device fails its dependency
        // check until the 3100 bootloader is in place).
        if let Some(r) = Versions::release(dos.0) {
            versions.bootloader_dependency = r.bootloader_dependency;
        }
    }
    if let Some(b) = spec.bootloader {
        versions.bootloader = b;
    }
    if let Some(r) = spec.radio_stack {
        versions.radio_stack = r;
    }
    // The user part's dependency: the Device OS it was built against, which is the file's (or
    // the running) system part unless the spec says otherwise. Its own copy, so that a
    // combined file still carries the system part at `device_os`.
    let mut user_versions = versions;
    if let Some(dos) = spec.built_against {
        user_versions.system_part = dos.0;
    }
    let sizes = ModuleSizes {
        user_part: spec.size.unwrap_or(sizes.user_part),
        ..sizes
    };
    let set = FirmwareSet::new(target_board, sizes, seed);
    let mut modules = Vec::new();
    if spec.radio_stack.is_some() {
        let m = set.module(RegionKind::RadioStack, &versions, sizes.other)?;
        modules.push((RegionKind::RadioStack, m));
    }
    if spec.bootloader.is_some() {
        let m = set.module(RegionKind::Bootloader, &versions, sizes.bootloader)?;
        modules.push((RegionKind::Bootloader, m));
    }
    if spec.device_os.is_some() {
        let m = set.module(RegionKind::SystemPart, &versions, sizes.system_part)?;
        modules.push((RegionKind::SystemPart, m));
    }
    if spec.app.is_some() {
        let m = set.module(RegionKind::UserPart, &user_versions, sizes.user_part)?;
        modules.push((RegionKind::UserPart, m));
    }
    Ok(modules)
}

/// The Device OS modules of release `device_os` for `board`, as the cloud's library holds them
/// for healing (`[cloud] device_os = ["6.2.0"]`): the bootloader and (nRF52840) radio stack the
/// release ships, then its system part. A release [`Versions::release`] does not know gives the
/// system part alone (depending on the device's bootloader).
pub fn device_os_release_modules(
    board: &Board,
    device_os: super::model::DeviceOsVersion,
    current: &InitialFirmware,
    sizes: ModuleSizes,
    seed: u64,
) -> Result<Vec<(RegionKind, Vec<u8>)>, FileBuildError> {
    let mut spec = FirmwareSpec {
        device_os: Some(device_os),
        ..FirmwareSpec::default()
    };
    if let Some(r) = Versions::release(device_os.0) {
        spec.bootloader = Some(r.bootloader);
        if board.region(RegionKind::RadioStack).is_some() {
            spec.radio_stack = Some(r.radio_stack);
        }
    }
    build_modules(board, &spec, current, sizes, seed)
}

/// The file for `spec` on `board`, whose device currently runs `current`: the modules of
/// [`build_modules`], compressed, combined and damaged as the spec says.
pub fn build_file(
    board: &Board,
    spec: &FirmwareSpec,
    current: &InitialFirmware,
    sizes: ModuleSizes,
    seed: u64,
) -> Result<Vec<u8>, FileBuildError> {
    let mut modules: Vec<Vec<u8>> = build_modules(board, spec, current, sizes, seed)?
        .into_iter()
        .map(|(_, m)| m)
        .collect();
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
    if spec.assets.is_empty() {
        return Ok(file);
    }
    bundle_file(&file, &spec.assets, seed)
}

/// The asset bundle of `app` and `assets` (reference 6.1), as Particle's tools make it; an
/// asset with `mismatch` has one byte flipped after the app's dependency was computed.
fn bundle_file(app: &[u8], assets: &[AssetSpec], seed: u64) -> Result<Vec<u8>, FileBuildError> {
    let made: Vec<Asset> = assets
        .iter()
        .enumerate()
        .map(|(i, a)| Asset::new(a.name.clone(), asset_bytes(a, seed ^ (i as u64 + 1))))
        .collect();
    let bad = |e: protocol::bundle::BundleError| FileBuildError::Bundle(e.to_string());
    let mut bundle = Bundle::create("firmware.bin", app, made).map_err(bad)?;
    for (a, spec) in bundle.assets.iter_mut().zip(assets) {
        if spec.mismatch {
            let mid = a.data.len() / 2;
            if let Some(b) = a.data.get_mut(mid) {
                *b ^= 0x01;
            }
        }
    }
    bundle.to_zip().map_err(bad)
}

/// The bytes of an asset: repeated text, or seeded xorshift noise.
pub fn asset_bytes(spec: &AssetSpec, seed: u64) -> Vec<u8> {
    let len = spec.size as usize;
    match spec.content {
        AssetContent::Text => b"{\"greeting\":\"hello from an asset\"}\n"
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect(),
        AssetContent::Noise => {
            let mut x = seed | 1;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::model::DeviceOsVersion;
    use protocol::module::{split_combined, split_combined_modules, Module, ModuleFunction};

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

    /// The system part version the user part in `file` (plain or combined) depends on, and
    /// the system part module's own version if the file carries one.
    fn user_dependency_and_system(file: &[u8]) -> (Option<u16>, Option<u16>) {
        let (mut dep, mut system) = (None, None);
        for range in split_combined(file).unwrap() {
            let m = Module::parse(&file[range]).unwrap();
            match m.prefix.function {
                ModuleFunction::UserPart => {
                    dep = m
                        .prefix
                        .dependencies
                        .iter()
                        .find(|d| d.function == ModuleFunction::SystemPart)
                        .map(|d| d.version)
                }
                ModuleFunction::SystemPart => system = Some(m.prefix.version),
                _ => {}
            }
        }
        (dep, system)
    }

    #[test]
    fn built_against_sets_the_user_parts_system_dependency_only() {
        let on_5_8 = InitialFirmware {
            device_os: DeviceOsVersion(5800),
            ..InitialFirmware::default()
        };
        let build_on = |spec: FirmwareSpec| {
            build_file(&boron(), &spec, &on_5_8, ModuleSizes::default(), 1).unwrap()
        };
        // Without it, an app depends on the Device OS the device runs.
        let plain = build_on(FirmwareSpec {
            app: Some(4),
            ..FirmwareSpec::default()
        });
        assert_eq!(user_dependency_and_system(&plain), (Some(5800), None));
        let newer = build_on(FirmwareSpec {
            app: Some(4),
            built_against: Some(DeviceOsVersion(6200)),
            ..FirmwareSpec::default()
        });
        assert_eq!(user_dependency_and_system(&newer), (Some(6200), None));
        assert!(Module::parse(&newer).unwrap().crc_valid());
        // Combined: the system part keeps its own version, the app names the other one.
        let combined = build_on(FirmwareSpec {
            app: Some(4),
            device_os: Some(DeviceOsVersion(6100)),
            built_against: Some(DeviceOsVersion(6200)),
            combined: true,
            ..FirmwareSpec::default()
        });
        assert_eq!(
            user_dependency_and_system(&combined),
            (Some(6200), Some(6100))
        );
        // A combined file without it: the app depends on the system part in the file.
        let combined = build_on(FirmwareSpec {
            app: Some(4),
            device_os: Some(DeviceOsVersion(6100)),
            combined: true,
            ..FirmwareSpec::default()
        });
        assert_eq!(
            user_dependency_and_system(&combined),
            (Some(6100), Some(6100))
        );
    }

    #[test]
    fn a_release_system_part_needs_its_release_bootloader_whatever_the_device_runs() {
        let on_5_5 = InitialFirmware::release(DeviceOsVersion(5500));
        assert_eq!((on_5_5.bootloader, on_5_5.radio_stack), (2300, 202));
        let spec = FirmwareSpec {
            device_os: Some(DeviceOsVersion(6200)),
            ..FirmwareSpec::default()
        };
        let file = build_file(&boron(), &spec, &on_5_5, ModuleSizes::default(), 1).unwrap();
        let deps = Module::parse(&file).unwrap().prefix.dependencies;
        assert_eq!(
            (deps[0].function, deps[0].version),
            (ModuleFunction::Bootloader, 3100)
        );
        assert_eq!(
            (deps[1].function, deps[1].version),
            (ModuleFunction::RadioStack, 202)
        );
        // The healer's library for 6.2.0: bootloader, radio stack, system part.
        let modules = device_os_release_modules(
            &boron(),
            DeviceOsVersion(6200),
            &on_5_5,
            ModuleSizes::default(),
            1,
        )
        .unwrap();
        let kinds: Vec<RegionKind> = modules.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            vec![
                RegionKind::RadioStack,
                RegionKind::Bootloader,
                RegionKind::SystemPart
            ]
        );
    }

    #[test]
    fn build_modules_gives_the_modules_the_file_carries() {
        let spec = FirmwareSpec {
            app: Some(4),
            device_os: Some(DeviceOsVersion(6201)),
            built_against: Some(DeviceOsVersion(6201)),
            combined: true,
            ..FirmwareSpec::default()
        };
        let current = InitialFirmware::default();
        let sizes = ModuleSizes::default();
        let modules = build_modules(&boron(), &spec, &current, sizes, 1).unwrap();
        let file = build_file(&boron(), &spec, &current, sizes, 1).unwrap();
        // Each module as the device installs it (COMBINED cleared, as Device OS splits it).
        let parts = split_combined_modules(&file).unwrap();
        let kinds: Vec<RegionKind> = modules.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, vec![RegionKind::SystemPart, RegionKind::UserPart]);
        let bytes: Vec<Vec<u8>> = modules.into_iter().map(|(_, m)| m).collect();
        assert_eq!(parts, bytes);
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
