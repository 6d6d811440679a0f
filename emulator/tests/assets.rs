//! The asset file system (reference 6.3): storing an asset is power-safe at every flash
//! operation (a sweep in the MCUboot simulator's manner), unrequired files go, invalid files are
//! deleted at boot, and the size checks of `prepareForOta`.

use emulator::assets::{self, AssetFs, ConsumerState};
use emulator::board::Board;
use emulator::device::Device;
use emulator::flash::CutMode;
use protocol::bundle::{add_asset_dependencies, Asset, AssetModule};
use protocol::module::{ModuleBuilder, ModuleFunction, SuffixStyle};

fn app_needing(assets: &[Asset]) -> Vec<u8> {
    let app = ModuleBuilder::new(ModuleFunction::UserPart, 13)
        .index(2)
        .version(6)
        .start_address(0xB4000)
        .product(13, 4)
        .suffix_style(SuffixStyle::Nrf52840)
        .body(vec![0x11; 4096])
        .build()
        .unwrap();
    add_asset_dependencies(&app, assets).unwrap()
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
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

/// A Boron whose app needs `kept` and `new`, with `kept` and an unrequired `old` stored.
fn boron() -> (Device, Asset, Asset, Asset) {
    let kept = Asset::new("kept.bin", noise(6000, 1));
    let new = Asset::new("new.bin", noise(9000, 2));
    let old = Asset::new("old.bin", noise(3000, 3));
    let mut device = Device::new(Board::builtin("boron").unwrap(), 7).unwrap();
    device
        .program_module(&app_needing(&[kept.clone(), new.clone()]))
        .unwrap();
    AssetFs::store(&mut device, &old.module(true).unwrap(), &[]).unwrap();
    let required = assets::required_by_running_app(&device).unwrap();
    assert_eq!(required.len(), 2);
    // `old` is not required, but storing `kept` with nothing required keeps only `kept`; so
    // store `kept` first with `old` named as required, as an earlier app would have.
    let mut earlier = required.clone();
    earlier.push(protocol::bundle::AssetDependency {
        name: old.name.clone(),
        hash_type: 0,
        hash: old.sha256().to_vec(),
    });
    AssetFs::store(&mut device, &kept.module(false).unwrap(), &earlier).unwrap();
    (device, kept, new, old)
}

fn names(device: &mut Device) -> Vec<String> {
    let scan = AssetFs::validate(device).unwrap();
    assert!(
        scan.deleted.is_empty(),
        "torn files surfaced: {:?}",
        scan.deleted
    );
    let mut n: Vec<String> = scan.assets.iter().map(|a| a.name.clone()).collect();
    n.sort();
    n
}

#[test]
fn storing_an_asset_removes_unrequired_files_and_keeps_required_ones() {
    let (mut device, _kept, new, _old) = boron();
    assert_eq!(names(&mut device), ["kept.bin", "old.bin"]);
    let required = assets::required_by_running_app(&device).unwrap();
    AssetFs::store(&mut device, &new.module(true).unwrap(), &required).unwrap();
    assert_eq!(names(&mut device), ["kept.bin", "new.bin"]);
    let stored = AssetFs::read(&device, "new.bin").unwrap().unwrap();
    let info = AssetModule::parse(&stored).unwrap();
    assert!(info.data_matches(&stored));
    assert_eq!(info.hash, new.sha256().to_vec());
}

#[test]
fn power_loss_at_every_flash_operation_of_storing_an_asset_loses_nothing() {
    let (device, kept, new, _old) = boron();
    let required = assets::required_by_running_app(&device).unwrap();
    let module = new.module(true).unwrap();
    // One clean run counts the operations of the store (files, then the consumer state).
    let mut clean = device.clone();
    let first = clean.flash().op_count();
    AssetFs::store(&mut clean, &module, &required).unwrap();
    AssetFs::set_consumer_state(&mut clean, ConsumerState::Want).unwrap();
    let last = clean.flash().op_count();
    assert!(
        last - first >= 3,
        "the store made {} operations",
        last - first
    );
    let mut cases = 0;
    for op in first..last {
        for mode in CutMode::ALL {
            let mut d = device.clone();
            d.schedule_cut(op, mode);
            let stored = AssetFs::store(&mut d, &module, &required)
                .and_then(|_| AssetFs::set_consumer_state(&mut d, ConsumerState::Want));
            let err = stored.expect_err("the cut must stop the store");
            assert!(err.is_power_loss(), "op {op} {mode:?}: {err}");
            d.power_on();
            // Invariants after the cut: no torn file, the required asset intact, the new one
            // either whole or absent.
            let n = names(&mut d);
            assert!(
                n.contains(&"kept.bin".to_string()),
                "op {op} {mode:?}: {n:?}"
            );
            let kept_bytes = AssetFs::read(&d, "kept.bin").unwrap().unwrap();
            assert!(AssetModule::parse(&kept_bytes)
                .unwrap()
                .data_matches(&kept_bytes));
            assert_eq!(kept_bytes, kept.module(false).unwrap());
            if n.contains(&"new.bin".to_string()) {
                assert_eq!(AssetFs::read(&d, "new.bin").unwrap().unwrap(), module);
            }
            // The cloud sends it again: it lands.
            AssetFs::store(&mut d, &module, &required).unwrap();
            assert_eq!(names(&mut d), ["kept.bin", "new.bin"], "op {op} {mode:?}");
            cases += 1;
        }
    }
    assert_eq!(cases as u64, (last - first) * 3);
}

#[test]
fn invalid_asset_files_are_deleted_at_boot() {
    let (mut device, _kept, _new, _old) = boron();
    // A file whose bytes are not an asset module, and one stored under another name.
    let mut corrupt = Asset::new("bad.bin", noise(500, 9)).module(false).unwrap();
    let n = corrupt.len();
    corrupt[n - 1] ^= 0xff;
    let renamed = Asset::new("real.bin", noise(500, 10)).module(true).unwrap();
    // Written below the file system's checks, as a corrupted flash would leave them.
    let region = assets::region(device.board()).unwrap().clone();
    let chip = device.board().flash_chip(region.chip);
    let mut store =
        emulator::store::Store::mount(device.flash(), chip, region.start, region.len()).unwrap();
    store.put(device.flash_mut(), "bad.bin", &corrupt).unwrap();
    store
        .put(device.flash_mut(), "alias.bin", &renamed)
        .unwrap();
    let scan = AssetFs::validate(&mut device).unwrap();
    let mut deleted: Vec<&str> = scan.deleted.iter().map(|(n, _)| n.as_str()).collect();
    deleted.sort();
    assert_eq!(deleted, ["alias.bin", "bad.bin"]);
    assert_eq!(names(&mut device), ["kept.bin", "old.bin"]);
}

#[test]
fn size_checks_follow_prepare_for_ota() {
    let boron = Board::builtin("boron").unwrap();
    assert_eq!(assets::safe_length(&boron), Some(592 * 1024));
    // An asset larger than the non-overlapping part: -190.
    assert!(assets::size_check(&boron, 592 * 1024 + 1, true).is_err());
    assert_eq!(assets::size_check(&boron, 592 * 1024, true), Ok(false));
    // Any other transfer that large wipes the asset storage first.
    assert_eq!(assets::size_check(&boron, 592 * 1024 + 1, false), Ok(true));
    assert_eq!(assets::size_check(&boron, 592 * 1024, false), Ok(false));
    // Tracker: no overlap; the limit is the asset storage less 16 blocks.
    let tracker = Board::builtin("tracker").unwrap();
    assert_eq!(assets::safe_length(&tracker), None);
    let limit = 2 * 1024 * 1024 - 16 * 4096;
    assert_eq!(assets::size_check(&tracker, limit, true), Ok(false));
    assert!(assets::size_check(&tracker, limit + 1, true).is_err());
    assert_eq!(assets::size_check(&tracker, 1_500_000, false), Ok(false));
}
