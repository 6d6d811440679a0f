//! The bootloader as a firmware engineer sees it: staged updates applied at the next boot,
//! bad updates refused with the running firmware intact, safe mode and factory restore
//! (reference sections 5.2-5.5).

use emulator::board::{Board, RegionKind};
use emulator::bootloader::{BootState, ModuleStatus, SafeModeReason, SlotRefusal};
use emulator::device::{Device, DeviceError, StagedModule};
use emulator::firmware::{FirmwareSet, ModuleSizes, Versions};
use emulator::placement::PlacementError;
use protocol::module::{combine, compress, ModuleBuilder, ModuleFunction, SuffixStyle};

const SEED: u64 = 7;

fn board(name: &str) -> Board {
    Board::builtin(name).expect("built-in board")
}

fn sizes() -> ModuleSizes {
    ModuleSizes {
        user_part: 12 * 1024,
        system_part: 16 * 1024,
        bootloader: 8 * 1024,
        other: 4096,
    }
}

/// A Boron (or other board) running the Device OS 6.2.0 baseline, app product version 3.
fn provisioned(name: &str) -> (Board, Device) {
    let b = board(name);
    let (device, _) = FirmwareSet::new(&b, sizes(), SEED)
        .provision(&Versions::BASELINE)
        .expect("provision");
    (b, device)
}

fn newer_app() -> Versions {
    Versions {
        product_version: 4,
        ..Versions::BASELINE
    }
}

fn region_bytes(device: &Device, kind: RegionKind) -> Vec<u8> {
    let r = device.board().region(kind).expect("region").clone();
    device
        .flash()
        .read_vec(device.board().flash_chip(r.chip), r.start, r.len() as usize)
        .expect("read")
}

/// Stages `file`, validates it and commits its slots, as a finished OTA transfer does.
fn stage_and_commit(device: &mut Device, file: &[u8]) -> Vec<StagedModule> {
    device.stage_file(file).expect("stage");
    let staged = device.validate_staged(file.len()).expect("validate");
    device.commit_staged(&staged).expect("commit");
    staged
}

/// Clears one bit of the staged file at `offset` (NOR can always clear bits).
fn corrupt_staged(device: &mut Device, offset: u32) {
    let staging = device
        .board()
        .region(RegionKind::OtaStaging)
        .unwrap()
        .clone();
    let chip = device.board().flash_chip(staging.chip);
    let addr = (staging.start + offset) & !3;
    let mut word = device.flash().read_vec(chip, addr, 4).unwrap();
    let byte = word
        .iter()
        .position(|b| *b != 0)
        .expect("a byte with a 1 bit");
    word[byte] &= word[byte] - 1;
    device.flash_mut().program(chip, addr, &word).unwrap();
}

#[test]
fn staged_user_part_runs_after_the_next_boot_and_nothing_stays_pending() {
    let (b, mut device) = provisioned("boron");
    let first = device.boot().unwrap();
    assert_eq!(first.state, BootState::Running);
    assert_eq!(
        first.module(RegionKind::UserPart).unwrap().product_version,
        Some(3)
    );

    let app = FirmwareSet::new(&b, sizes(), SEED)
        .module(RegionKind::UserPart, &newer_app(), 12 * 1024)
        .unwrap();
    stage_and_commit(&mut device, &app);
    assert_eq!(device.pending_slots().unwrap().len(), 1);

    let report = device.boot().unwrap();
    assert_eq!(report.state, BootState::Running);
    assert_eq!(report.applied.len(), 1);
    assert_eq!(report.applied[0].function, 5);
    assert_eq!(
        report.module(RegionKind::UserPart).unwrap().product_version,
        Some(4)
    );
    assert!(device.pending_slots().unwrap().is_empty());
    assert_eq!(
        &region_bytes(&device, RegionKind::UserPart)[..app.len()],
        &app[..]
    );

    let again = device.boot().unwrap();
    assert!(again.applied.is_empty(), "a second boot applies nothing");
}

#[test]
fn module_for_another_platform_is_refused_at_staging_naming_both_platforms() {
    let (_, mut device) = provisioned("boron");
    let argon_app = FirmwareSet::new(&board("argon"), sizes(), SEED)
        .module(RegionKind::UserPart, &newer_app(), 8 * 1024)
        .unwrap();
    device.stage_file(&argon_app).unwrap();
    let err = device.validate_staged(argon_app.len()).unwrap_err();
    assert_eq!(
        err.placement(),
        Some(&PlacementError::WrongPlatform {
            expected: 13,
            found: 12
        }),
        "{err:?}"
    );
    assert!(err.to_string().contains("platform 12"), "{err}");
}

#[test]
fn slot_naming_a_wrong_platform_module_is_refused_by_the_bootloader_and_the_app_keeps_running() {
    let (b, mut device) = provisioned("boron");
    let before = region_bytes(&device, RegionKind::UserPart);
    // Stage a valid Boron app to get a well-formed slot, then stage an Argon app of the same
    // size in its place: the slot now names a module the bootloader must refuse.
    let boron_app = FirmwareSet::new(&b, sizes(), SEED)
        .module(RegionKind::UserPart, &newer_app(), 12 * 1024)
        .unwrap();
    device.stage_file(&boron_app).unwrap();
    let staged = device.validate_staged(boron_app.len()).unwrap();
    let argon_app = FirmwareSet::new(&board("argon"), sizes(), SEED)
        .module(RegionKind::UserPart, &newer_app(), 12 * 1024)
        .unwrap();
    device.stage_file(&argon_app).unwrap();
    device.commit_staged(&staged).unwrap();

    let report = device.boot().unwrap();
    assert_eq!(report.refused.len(), 1);
    assert_eq!(
        report.refused[0].reason,
        SlotRefusal::Module(PlacementError::WrongPlatform {
            expected: 13,
            found: 12
        })
    );
    assert_eq!(report.state, BootState::Running);
    assert_eq!(
        region_bytes(&device, RegionKind::UserPart),
        before,
        "the running app is untouched"
    );
    assert!(
        device.pending_slots().unwrap().is_empty(),
        "a refused slot is freed"
    );
}

#[test]
fn corrupted_staged_module_is_refused_before_anything_is_erased() {
    let (b, mut device) = provisioned("boron");
    let before = region_bytes(&device, RegionKind::UserPart);
    let app = FirmwareSet::new(&b, sizes(), SEED)
        .module(RegionKind::UserPart, &newer_app(), 12 * 1024)
        .unwrap();
    stage_and_commit(&mut device, &app);
    corrupt_staged(&mut device, 5000);

    let report = device.boot().unwrap();
    assert!(
        matches!(
            report.refused[0].reason,
            SlotRefusal::Module(PlacementError::CrcMismatch { .. })
        ),
        "{:?}",
        report.refused
    );
    assert_eq!(report.state, BootState::Running);
    assert_eq!(region_bytes(&device, RegionKind::UserPart), before);
}

#[test]
fn user_part_needing_a_newer_system_part_boots_into_safe_mode() {
    let (b, mut device) = provisioned("boron");
    let needs_newer = Versions {
        system_part: 6300,
        product_version: 4,
        ..Versions::BASELINE
    };
    let app = FirmwareSet::new(&b, sizes(), SEED)
        .module(RegionKind::UserPart, &needs_newer, 12 * 1024)
        .unwrap();
    stage_and_commit(&mut device, &app);

    let report = device.boot().unwrap();
    assert_eq!(
        report.state,
        BootState::SafeMode(SafeModeReason::UserPartDependencyUnmet {
            function: 4,
            index: 1,
            needed: 6300,
            installed: Some(6200)
        })
    );
}

#[test]
fn system_part_needing_a_newer_bootloader_boots_into_safe_mode() {
    let (b, mut device) = provisioned("boron");
    let needs_newer = Versions {
        bootloader: 3200,
        ..Versions::BASELINE
    };
    let system = FirmwareSet::new(&b, sizes(), SEED)
        .module(RegionKind::SystemPart, &needs_newer, 16 * 1024)
        .unwrap();
    stage_and_commit(&mut device, &system);

    let report = device.boot().unwrap();
    assert!(
        matches!(
            report.state,
            BootState::SafeMode(SafeModeReason::SystemDependencyUnmet {
                function: 2,
                needed: 3200,
                ..
            })
        ),
        "{:?}",
        report.state
    );
}

#[test]
fn invalid_user_part_with_a_valid_factory_app_is_restored_from_the_factory_app() {
    let (b, mut device) = provisioned("boron");
    let factory = FirmwareSet::new(&b, sizes(), 99)
        .module(RegionKind::UserPart, &newer_app(), 8 * 1024)
        .unwrap();
    device.program_factory_app(&factory).unwrap();
    // Wreck the installed user part.
    let user = b.region(RegionKind::UserPart).unwrap().clone();
    device
        .flash_mut()
        .erase_sector(b.flash_chip(user.chip), user.start + 4096)
        .unwrap();

    let report = device.boot().unwrap();
    assert!(report.factory_restored);
    assert_eq!(report.state, BootState::Running);
    assert_eq!(
        report.module(RegionKind::UserPart).unwrap().product_version,
        Some(4)
    );
    assert_eq!(
        &region_bytes(&device, RegionKind::UserPart)[..factory.len()],
        &factory[..]
    );
}

#[test]
fn missing_user_part_without_a_factory_app_means_safe_mode() {
    let (b, mut device) = provisioned("boron");
    let user = b.region(RegionKind::UserPart).unwrap().clone();
    device
        .flash_mut()
        .erase_range(b.flash_chip(user.chip), user.start, user.len())
        .unwrap();
    let report = device.boot().unwrap();
    assert_eq!(
        report.state,
        BootState::SafeMode(SafeModeReason::UserPartInvalid)
    );
    assert_eq!(
        report.module(RegionKind::UserPart).unwrap().status,
        ModuleStatus::Missing
    );
}

#[test]
fn compressed_user_part_is_inflated_into_place() {
    let (b, mut device) = provisioned("p2");
    let app = FirmwareSet::new(&b, sizes(), SEED)
        .module(RegionKind::UserPart, &newer_app(), 12 * 1024)
        .unwrap();
    let packed = compress(&app).unwrap();
    assert!(packed.len() < app.len(), "the filler compresses");
    let staged = stage_and_commit(&mut device, &packed);
    assert!(staged[0].slot.flags & emulator::dct::slot_flags::COMPRESSED != 0);

    let report = device.boot().unwrap();
    assert!(report.applied[0].compressed);
    assert_eq!(report.state, BootState::Running);
    let user = region_bytes(&device, RegionKind::UserPart);
    assert_eq!(
        &user[user.len() - app.len()..],
        &app[..],
        "the P2 user part ends at the region end"
    );
}

#[test]
fn combined_system_part_and_user_part_install_together() {
    let (b, mut device) = provisioned("tracker");
    let next = Versions {
        system_part: 6201,
        product_version: 4,
        ..Versions::BASELINE
    };
    let set = FirmwareSet::new(&b, sizes(), SEED);
    let system = set
        .module(RegionKind::SystemPart, &next, 16 * 1024)
        .unwrap();
    let user = set.module(RegionKind::UserPart, &next, 12 * 1024).unwrap();
    let staged = stage_and_commit(&mut device, &combine(&[&system, &user]).unwrap());
    assert_eq!(staged.len(), 2);

    let report = device.boot().unwrap();
    assert_eq!(report.applied.len(), 2);
    assert_eq!(report.state, BootState::Running);
    assert_eq!(report.valid_version(RegionKind::SystemPart), Some(6201));
    assert_eq!(
        report.module(RegionKind::UserPart).unwrap().product_version,
        Some(4)
    );
}

#[test]
fn starting_a_new_transfer_drops_a_staged_but_unapplied_update() {
    let (b, mut device) = provisioned("boron");
    let app = FirmwareSet::new(&b, sizes(), SEED)
        .module(RegionKind::UserPart, &newer_app(), 12 * 1024)
        .unwrap();
    stage_and_commit(&mut device, &app);
    device.begin_staging(4096).unwrap();
    assert!(device.pending_slots().unwrap().is_empty());
    let report = device.boot().unwrap();
    assert!(report.applied.is_empty());
    assert_eq!(
        report.module(RegionKind::UserPart).unwrap().product_version,
        Some(3)
    );
}

#[test]
fn file_larger_than_the_staging_area_is_refused() {
    let (_, mut device) = provisioned("boron");
    let err = device.begin_staging(2 * 1024 * 1024).unwrap_err();
    assert!(
        matches!(
            err,
            DeviceError::TooLarge {
                capacity: 1_536_000,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn truncated_staged_file_is_refused_naming_the_problem() {
    let (b, mut device) = provisioned("boron");
    let app = FirmwareSet::new(&b, sizes(), SEED)
        .module(RegionKind::UserPart, &newer_app(), 12 * 1024)
        .unwrap();
    let cut = &app[..app.len() - 100];
    device.stage_file(cut).unwrap();
    let err = device.validate_staged(cut.len()).unwrap_err();
    assert!(
        matches!(
            err,
            DeviceError::Module { .. } | DeviceError::Placement { .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("module"), "{err}");
}

#[test]
fn legacy_128k_user_part_is_invalidated_when_a_256k_user_part_is_installed() {
    let (b, mut device) = provisioned("boron");
    // A legacy 5/1 app at 0xD4000, as an old Device OS would have left it.
    let legacy = b.region(RegionKind::UserPartLegacy).unwrap().clone();
    let old_app = ModuleBuilder::new(ModuleFunction::UserPart, 13)
        .index(1)
        .version(5)
        .start_address(legacy.start)
        .suffix_style(SuffixStyle::Nrf52840)
        .product(13, 2)
        .body(vec![0x5A; 2000])
        .build()
        .unwrap();
    device.program_module(&old_app).unwrap();
    let report = device.boot().unwrap();
    assert_eq!(
        report.module(RegionKind::UserPartLegacy).unwrap().status,
        ModuleStatus::Valid
    );

    let app = FirmwareSet::new(&b, sizes(), SEED)
        .module(RegionKind::UserPart, &newer_app(), 12 * 1024)
        .unwrap();
    stage_and_commit(&mut device, &app);
    let report = device.boot().unwrap();
    assert_eq!(
        report.module(RegionKind::UserPartLegacy).unwrap().status,
        ModuleStatus::Missing
    );
    assert_eq!(
        report.module(RegionKind::UserPart).unwrap().product_version,
        Some(4)
    );
    assert_eq!(report.state, BootState::Running);
}

fn vector(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../protocol/tests/vectors/modules/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn real_tracker_tinker_binary_installs_over_the_air_and_runs() {
    let (_, mut device) = provisioned("tracker");
    let tinker = vector("tracker-tinker@5.3.1.bin");
    stage_and_commit(&mut device, &tinker);
    let report = device.boot().unwrap();
    assert_eq!(report.state, BootState::Running);
    let user = report.module(RegionKind::UserPart).unwrap();
    assert_eq!(user.product_version, Some(3));
    assert_eq!(user.size, Some(tinker.len() as u32));
}

#[test]
fn real_p2_tinker_binary_installs_at_the_fixed_end_and_runs() {
    let (_, mut device) = provisioned("p2");
    let tinker = vector("p2-tinker@5.3.1.bin");
    stage_and_commit(&mut device, &tinker);
    let report = device.boot().unwrap();
    assert_eq!(report.state, BootState::Running);
    let user = report.module(RegionKind::UserPart).unwrap();
    assert_eq!(user.start, Some(0x085F_4000));
    assert_eq!(user.product_version, Some(4));
}

#[test]
fn real_tracker_binary_is_refused_on_a_boron() {
    let (_, mut device) = provisioned("boron");
    let tinker = vector("tracker-tinker@5.3.1.bin");
    device.stage_file(&tinker).unwrap();
    let err = device.validate_staged(tinker.len()).unwrap_err();
    assert_eq!(
        err.placement(),
        Some(&PlacementError::WrongPlatform {
            expected: 13,
            found: 26
        }),
        "{err:?}"
    );
}
