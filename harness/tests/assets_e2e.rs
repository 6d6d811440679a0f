//! Asset OTA end to end in virtual time (issue 16, reference section 6): a bundle flashed to an
//! emulated Boron through the local cloud; the app first, then each asset as its own transfer
//! (Module-Function 9), each followed by the device's reboot; the device's own describe decides.

use std::time::Duration;

use emulator::assets::AssetFs;
use emulator::board::{Board, RegionKind};
use emulator::bootloader::SafeModeReason;
use emulator::firmware::{FirmwareSet, ModuleSizes, Versions};
use emulator::os::{AssetOtaHook, DeviceEvent};
use harness::cloud::JobStatus;
use harness::testbed::{DeviceHandle, DeviceSpec, Testbed};
use protocol::bundle::{Asset, AssetModule, Bundle};

const MINUTE: Duration = Duration::from_secs(60);

fn sizes() -> ModuleSizes {
    ModuleSizes {
        user_part: 24 * 1024,
        ..ModuleSizes::default()
    }
}

/// A Boron running app v3 whose firmware registers `System.onAssetOta`, online.
fn online(seed: u64, hook: AssetOtaHook) -> (Testbed, DeviceHandle, Board) {
    let board = Board::builtin("boron").unwrap();
    let mut bed = Testbed::new(seed).unwrap();
    let mut spec = DeviceSpec::new(board.clone(), 3);
    spec.sizes = sizes();
    spec.app.on_asset_ota = hook;
    let dev = bed.add_device(&spec).unwrap();
    bed.power_on(dev).unwrap();
    bed.run_until("device online", MINUTE, |b| {
        b.status(dev).map(|s| s.connected).unwrap_or(false)
    })
    .unwrap();
    (bed, dev, board)
}

fn app(board: &Board, version: u16, seed: u64) -> Vec<u8> {
    let versions = Versions {
        product_version: version,
        ..Versions::BASELINE
    };
    FirmwareSet::new(board, sizes(), seed)
        .module(RegionKind::UserPart, &versions, 24 * 1024)
        .unwrap()
}

/// Bytes that deflate cannot shrink (a seeded xorshift stream).
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

fn text(len: usize) -> Vec<u8> {
    b"{\"greeting\":\"hello from an asset\"}\n"
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

fn bundle(app: &[u8], assets: Vec<Asset>) -> Vec<u8> {
    Bundle::create("firmware.bin", app, assets)
        .unwrap()
        .to_zip()
        .unwrap()
}

fn done(bed: &Testbed, job: harness::cloud::JobId) -> bool {
    matches!(
        bed.job(job),
        Some(JobStatus::Succeeded) | Some(JobStatus::Failed { .. })
    )
}

fn trace(bed: &Testbed) -> String {
    bed.trace()
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn describe_assets(bed: &Testbed, dev: DeviceHandle) -> Vec<(String, Vec<u8>)> {
    bed.os(dev)
        .unwrap()
        .system_describe()
        .map(|d| {
            d.assets
                .iter()
                .map(|a| (a.name.clone(), a.hash.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_bundle_delivers_the_app_then_each_asset_and_on_asset_ota_runs_once() {
    let (mut bed, dev, board) = online(11, AssetOtaHook::Handles);
    let assets = vec![
        Asset::new("config.json", text(20 * 1024)),
        Asset::new("noise.bin", noise(8 * 1024, 5)),
    ];
    let zip = bundle(&app(&board, 4, 11), assets.clone());
    let job = bed.flash(dev, zip).unwrap();
    bed.run_until("bundle job finished", 30 * MINUTE, |b| done(b, job))
        .unwrap_or_else(|e| panic!("{e}\n{}", trace(&bed)));
    assert_eq!(bed.job(job), Some(JobStatus::Succeeded), "{}", trace(&bed));

    let status = bed.status(dev).unwrap();
    assert_eq!(status.versions.product_version, Some(4));
    assert!(!status.safe_mode, "{}", trace(&bed));
    // The device's own describe lists both assets with the hashes the app depends on.
    let listed = describe_assets(&bed, dev);
    for a in &assets {
        assert!(
            listed.contains(&(a.name.clone(), a.sha256().to_vec())),
            "{} not in {listed:?}",
            a.name
        );
    }
    // One travelled compressed (text), one plain (noise does not deflate).
    let stored = |name: &str| {
        let bytes = AssetFs::read(bed.os(dev).unwrap().device(), name)
            .unwrap()
            .unwrap();
        AssetModule::parse(&bytes).unwrap()
    };
    assert!(stored("config.json").compressed);
    assert!(!stored("noise.bin").compressed);

    // In between: the app came up in safe mode for its missing assets, then one reboot per
    // asset; the callback ran once, with both assets, after the last one.
    let events: Vec<&DeviceEvent> = bed.device_events(dev).iter().map(|(_, e)| e).collect();
    let missing_boots = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                DeviceEvent::SafeMode {
                    reason: SafeModeReason::AssetsMissing { .. }
                }
            )
        })
        .count();
    assert_eq!(missing_boots, 2, "{}", trace(&bed));
    let callbacks: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            DeviceEvent::AssetOta { assets, handled } => Some((assets.clone(), *handled)),
            _ => None,
        })
        .collect();
    assert_eq!(
        callbacks,
        vec![(
            vec!["config.json".to_string(), "noise.bin".to_string()],
            true
        )]
    );
    // The cloud's order: the app's job, then one job per asset in bundle order.
    let text = trace(&bed);
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in\n{text}"))
    };
    assert!(at("safe mode: the application needs assets") < at("asset \"config.json\""));
    assert!(at("asset \"config.json\"") < at("asset \"noise.bin\""));
    // A later reboot does not call it again (assetsHandled(true)).
    bed.with_device(dev, |os, now| os.system_reset(now))
        .unwrap();
    bed.run_until("back online", 5 * MINUTE, |b| {
        b.status(dev).map(|s| s.connected).unwrap_or(false)
    })
    .unwrap();
    let again = bed
        .device_events(dev)
        .iter()
        .filter(|(_, e)| matches!(e, DeviceEvent::AssetOta { .. }))
        .count();
    assert_eq!(again, 1);
}

#[test]
fn an_asset_too_large_for_the_boron_is_refused_before_anything_is_sent_and_v3_keeps_running() {
    let (mut bed, dev, board) = online(12, AssetOtaHook::None);
    // A first bundle stores small.txt (app v4 needs it), so there is something to lose.
    let small = Asset::new("small.txt", text(4 * 1024));
    let first = bundle(&app(&board, 4, 12), vec![small.clone()]);
    let job = bed.flash(dev, first).unwrap();
    bed.run_until("first bundle finished", 30 * MINUTE, |b| done(b, job))
        .unwrap_or_else(|e| panic!("{e}\n{}", trace(&bed)));
    assert_eq!(bed.job(job), Some(JobStatus::Succeeded), "{}", trace(&bed));
    let started_before = started_transfers(&bed, dev);
    // 700 KiB of noise: its module is larger than the Boron's 592 KiB single-asset limit (the
    // part of the OTA area that does not overlap the asset storage), less than the 1.125 MiB
    // of asset storage. The cloud refuses the bundle before its app goes out: sending the app
    // first would leave the device in safe mode waiting for an asset it must refuse (-190).
    let big = Asset::new("big.bin", noise(700 * 1024, 9));
    let zip = bundle(&app(&board, 5, 12), vec![small.clone(), big]);
    let job = bed.flash(dev, zip).unwrap();
    bed.run_for(10 * MINUTE).unwrap();
    match bed.job(job) {
        Some(JobStatus::Failed { code, message }) => {
            // The device said nothing: the cloud refused by itself.
            assert_eq!(code, None, "{message}");
            for part in [
                "big.bin",
                "606208",
                "boron",
                "-190",
                "before anything is sent",
            ] {
                assert!(message.contains(part), "{part:?} not in {message}");
            }
        }
        other => panic!("{other:?}\n{}", trace(&bed)),
    }
    assert_eq!(
        started_transfers(&bed, dev),
        started_before,
        "no transfer may start"
    );
    // Nothing lost: app v4 runs (not safe mode) and small.txt is still stored and valid.
    let status = bed.status(dev).unwrap();
    assert_eq!(status.versions.product_version, Some(4));
    assert!(!status.safe_mode);
    assert_eq!(
        describe_assets(&bed, dev),
        vec![("small.txt".to_string(), small.sha256().to_vec())]
    );
}

fn started_transfers(bed: &Testbed, dev: DeviceHandle) -> usize {
    bed.device_events(dev)
        .iter()
        .filter(|(_, e)| matches!(e, DeviceEvent::OtaStarted { .. }))
        .count()
}

#[test]
fn a_bundle_whose_asset_does_not_match_its_dependency_is_refused_and_v3_keeps_running() {
    let (mut bed, dev, board) = online(13, AssetOtaHook::None);
    let mut b = Bundle::create(
        "firmware.bin",
        &app(&board, 4, 13),
        vec![Asset::new("logo.bmp", noise(2048, 3))],
    )
    .unwrap();
    b.assets[0].data[100] ^= 0x01;
    let job = bed.flash(dev, b.to_zip().unwrap()).unwrap();
    bed.run_for(10 * MINUTE).unwrap();
    match bed.job(job) {
        Some(JobStatus::Failed { message, .. }) => {
            assert!(message.contains("does not match"), "{message}");
            assert!(message.contains("logo.bmp"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let status = bed.status(dev).unwrap();
    assert_eq!(status.versions.product_version, Some(3));
    assert!(!status.safe_mode);
    assert!(
        !bed.device_events(dev)
            .iter()
            .any(|(_, e)| matches!(e, DeviceEvent::OtaStarted { .. })),
        "no transfer may start"
    );
}
