//! A bootloader update through the bootloader's own apply path on nRF52840 (reference 5.3):
//! the new bootloader is staged at the compat user-app area (0xD4000) after the user app there
//! is backed up to external flash with a restore slot; the Nordic MBR copies it over the
//! running bootloader from a copy record and resets; the new bootloader restores the app.
//! A power cut at any flash operation of that path leaves a device that finishes it at the
//! next boot, with the user app intact.

use emulator::board::{Board, RegionKind};
use emulator::bootloader::{BootState, BOOTLOADER_COPY_KEY};
use emulator::device::Device;
use emulator::firmware::{FirmwareSet, ModuleSizes, Versions};
use emulator::flash::CutMode;

const SEED: u64 = 11;

/// A 192 KiB app: it covers the whole 48 KiB staging area at 0xD4000 (0xB4000 + 0x30000).
fn sizes() -> ModuleSizes {
    ModuleSizes {
        user_part: 192 * 1024,
        system_part: 16 * 1024,
        bootloader: 8 * 1024,
        other: 4096,
    }
}

fn boron() -> (Board, Device) {
    let b = Board::builtin("boron").unwrap();
    let (device, _) = FirmwareSet::new(&b, sizes(), SEED)
        .provision(&Versions::BASELINE)
        .unwrap();
    (b, device)
}

fn region_bytes(device: &Device, kind: RegionKind) -> Vec<u8> {
    let r = device.board().region(kind).unwrap().clone();
    device
        .flash()
        .read_vec(device.board().flash_chip(r.chip), r.start, r.len() as usize)
        .unwrap()
}

/// A Boron with bootloader 3101 staged and committed, booted once before (so that the next
/// boot's operations are the apply's).
fn with_bootloader_staged() -> (Board, Device, Vec<u8>) {
    let (b, mut device) = boron();
    assert_eq!(device.boot().unwrap().state, BootState::Running);
    let newer = Versions {
        bootloader: 3101,
        ..Versions::BASELINE
    };
    let image = FirmwareSet::new(&b, sizes(), SEED)
        .module(RegionKind::Bootloader, &newer, 8 * 1024)
        .unwrap();
    device.stage_file(&image).unwrap();
    let staged = device.validate_staged(image.len()).unwrap();
    device.commit_staged(&staged).unwrap();
    (b, device, image)
}

#[test]
fn a_bootloader_goes_through_the_mbr_and_the_app_over_its_staging_area_is_restored() {
    let (b, mut device, image) = with_bootloader_staged();
    let app_before = region_bytes(&device, RegionKind::UserPart);
    let report = device.boot().unwrap();
    assert_eq!(report.state, BootState::Running);
    assert_eq!(report.valid_version(RegionKind::Bootloader), Some(3101));
    assert_eq!(report.applied.len(), 1);
    assert_eq!(report.applied[0].function, 2);
    assert!(report.restored_user_app);
    assert_eq!(
        &region_bytes(&device, RegionKind::Bootloader)[..image.len()],
        &image[..]
    );
    assert_eq!(region_bytes(&device, RegionKind::UserPart), app_before);
    // The app's bytes at 0xD4000 went through the backup area.
    let via = b.ota.bootloader_update.unwrap();
    let backup = device
        .flash()
        .read_vec(
            b.flash_chip(via.backup.chip),
            via.backup.address,
            via.len as usize,
        )
        .unwrap();
    let from = (via.staging.address - b.region(RegionKind::UserPart).unwrap().start) as usize;
    assert_eq!(backup, app_before[from..from + via.len as usize]);
    assert!(device.pending_slots().unwrap().is_empty());
    assert_eq!(device.store_get(BOOTLOADER_COPY_KEY).unwrap(), None);
    let again = device.boot().unwrap();
    assert!(again.applied.is_empty() && !again.restored_user_app);
}

#[test]
fn a_power_cut_at_any_operation_of_the_bootloader_apply_is_finished_at_the_next_boot() {
    let (_, device, image) = with_bootloader_staged();
    let app_before = region_bytes(&device, RegionKind::UserPart);
    // The clean run counts the apply's operations.
    let start = device.flash().op_count();
    let mut clean = device.clone();
    clean.boot().unwrap();
    let ops = clean.flash().op_count() - start;
    assert!(
        ops > 40,
        "backup, stage, MBR copy and restore: {ops} operations"
    );
    for op in 0..ops {
        for mode in CutMode::ALL {
            let mut d = device.clone();
            d.schedule_cut(start + op, mode);
            let cut = d.boot();
            assert!(cut.is_err(), "op {op} {mode:?}: the cut did not fire");
            d.power_on();
            let report = d.boot().unwrap_or_else(|e| panic!("op {op} {mode:?}: {e}"));
            assert_eq!(report.state, BootState::Running, "op {op} {mode:?}");
            assert_eq!(
                report.valid_version(RegionKind::Bootloader),
                Some(3101),
                "op {op} {mode:?}"
            );
            assert_eq!(
                &region_bytes(&d, RegionKind::Bootloader)[..image.len()],
                &image[..],
                "op {op} {mode:?}"
            );
            assert_eq!(
                region_bytes(&d, RegionKind::UserPart),
                app_before,
                "op {op} {mode:?}: the user app"
            );
            assert!(d.pending_slots().unwrap().is_empty(), "op {op} {mode:?}");
        }
    }
}

#[test]
fn on_rtl872x_the_km0_copies_the_bootloader_without_touching_the_app() {
    let b = Board::builtin("p2").unwrap();
    let (mut device, _) = FirmwareSet::new(&b, sizes(), SEED)
        .provision(&Versions::BASELINE)
        .unwrap();
    assert!(b.ota.bootloader_update.is_none());
    device.boot().unwrap();
    let app_before = region_bytes(&device, RegionKind::UserPart);
    let newer = Versions {
        bootloader: 3101,
        ..Versions::BASELINE
    };
    let image = FirmwareSet::new(&b, sizes(), SEED)
        .module(RegionKind::Bootloader, &newer, 8 * 1024)
        .unwrap();
    device.stage_file(&image).unwrap();
    let staged = device.validate_staged(image.len()).unwrap();
    device.commit_staged(&staged).unwrap();
    let report = device.boot().unwrap();
    assert_eq!(report.state, BootState::Running);
    assert_eq!(report.valid_version(RegionKind::Bootloader), Some(3101));
    assert!(!report.restored_user_app);
    assert_eq!(region_bytes(&device, RegionKind::UserPart), app_before);
}
