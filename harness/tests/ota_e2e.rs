//! End-to-end OTA in virtual time: the emulated Device OS and the local Device Cloud over the
//! simulated network, seeded (issue 4, "Done means"). Each failure message names the seed.

use std::time::Duration;

use emulator::board::{Board, RegionKind};
use emulator::bootloader::{BootState, SafeModeReason};
use emulator::firmware::{FirmwareSet, ModuleSizes, Versions};
use emulator::flash::CutMode;
use harness::cloud::{CloudEvent, JobStatus};
use harness::scenario::firmware::build_file;
use harness::scenario::{DeviceOsVersion, FirmwareSpec, InitialFirmware};
use harness::testbed::{DeviceHandle, DeviceSpec, Testbed};

const MINUTE: Duration = Duration::from_secs(60);

fn sizes() -> ModuleSizes {
    ModuleSizes {
        user_part: 24 * 1024,
        ..ModuleSizes::default()
    }
}

/// A testbed with one device running app v3, online.
fn online(board: &str, seed: u64) -> (Testbed, DeviceHandle, Board) {
    let board = Board::builtin(board).unwrap();
    let mut bed = Testbed::new(seed).unwrap();
    let mut spec = DeviceSpec::new(board.clone(), 3);
    spec.sizes = sizes();
    let dev = bed.add_device(&spec).unwrap();
    bed.power_on(dev).unwrap();
    bed.run_until("device online", MINUTE, |b| {
        b.status(dev).map(|s| s.connected).unwrap_or(false)
    })
    .unwrap();
    (bed, dev, board)
}

/// An app of product version `version` for `board`, 24 KiB.
fn app(board: &Board, version: u16, seed: u64) -> Vec<u8> {
    let versions = Versions {
        product_version: version,
        ..Versions::BASELINE
    };
    FirmwareSet::new(board, sizes(), seed)
        .module(RegionKind::UserPart, &versions, 24 * 1024)
        .unwrap()
}

fn product_version(bed: &Testbed, dev: DeviceHandle) -> Option<u16> {
    bed.status(dev).unwrap().versions.product_version
}

/// What a device provisioned with Device OS 5.8.0 runs (the files built for it depend on it).
fn on_5800() -> InitialFirmware {
    InitialFirmware {
        device_os: DeviceOsVersion(5800),
        ..InitialFirmware::default()
    }
}

/// App v4 built against Device OS 6.2.0, for a device on 5.8.0.
fn app_needing_6200(board: &Board, seed: u64) -> Vec<u8> {
    let flash = FirmwareSpec {
        app: Some(4),
        built_against: Some(DeviceOsVersion(6200)),
        ..FirmwareSpec::default()
    };
    build_file(board, &flash, &on_5800(), sizes(), seed).unwrap()
}

fn job_done(bed: &Testbed, job: harness::cloud::JobId) -> bool {
    matches!(
        bed.job(job),
        Some(JobStatus::Succeeded) | Some(JobStatus::Failed { .. })
    )
}

fn trace_tail(bed: &Testbed) -> String {
    let t = bed.trace();
    t[t.len().saturating_sub(25)..]
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn user_app_ota_from_v3_to_v4_completes_and_the_device_runs_v4() {
    let (mut bed, dev, board) = online("boron", 1);
    assert_eq!(product_version(&bed, dev), Some(3));
    let job = bed.flash(dev, app(&board, 4, 1)).unwrap();
    bed.run_until("job finished", 10 * MINUTE, |b| job_done(b, job))
        .unwrap_or_else(|e| panic!("{e}\n{}", trace_tail(&bed)));
    assert_eq!(
        bed.job(job),
        Some(JobStatus::Succeeded),
        "{}",
        trace_tail(&bed)
    );
    assert_eq!(product_version(&bed, dev), Some(4));
    let lines: Vec<String> = bed.trace().iter().map(|l| l.text.clone()).collect();
    let find = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in the trace:\n{}", lines.join("\n")))
    };
    // The order a fleet operator sees.
    assert!(find("spark/flash/status = \"started \"") < find("ota started"));
    assert!(find("ota started") < find("spark/flash/status = \"success \""));
    assert!(find("system event reset_pending") < find("spark/device/last_reset = \"update\""));
}

#[test]
fn ota_completes_with_20_percent_loss_and_reordering() {
    for seed in [2, 3, 4] {
        let (mut bed, dev, board) = online("argon", seed);
        bed.net.set_loss(0.2);
        bed.net.set_reorder(0.2, Duration::from_millis(80));
        let job = bed.flash(dev, app(&board, 4, seed)).unwrap();
        bed.run_until("job finished", 30 * MINUTE, |b| job_done(b, job))
            .unwrap_or_else(|e| panic!("{e}\n{}", trace_tail(&bed)));
        assert_eq!(
            bed.job(job),
            Some(JobStatus::Succeeded),
            "seed {seed}\n{}",
            trace_tail(&bed)
        );
        assert_eq!(product_version(&bed, dev), Some(4), "seed {seed}");
    }
}

#[test]
fn a_link_cut_mid_transfer_resumes_at_the_persisted_offset() {
    let (mut bed, dev, board) = online("boron", 5);
    let job = bed.flash(dev, app(&board, 4, 5)).unwrap();
    // Let part of the file through, then cut the link for longer than the device's patience.
    bed.run_until("half the file", 10 * MINUTE, |b| {
        b.status(dev)
            .ok()
            .and_then(|s| s.ota)
            .is_some_and(|p| p.contiguous_bytes >= 12 * 1024)
    })
    .unwrap();
    bed.net.partition(6 * MINUTE);
    bed.run_until("job finished", 30 * MINUTE, |b| job_done(b, job))
        .unwrap_or_else(|e| panic!("{e}\n{}", trace_tail(&bed)));
    assert_eq!(
        bed.job(job),
        Some(JobStatus::Succeeded),
        "{}",
        trace_tail(&bed)
    );
    let resumed = bed
        .trace()
        .iter()
        .any(|l| l.text.contains("ota started") && !l.text.ends_with("resuming at 0"));
    assert!(resumed, "the second attempt resumed:\n{}", trace_tail(&bed));
}

#[test]
fn a_power_cut_during_download_leaves_v3_and_the_next_attempt_completes() {
    let (mut bed, dev, board) = online("boron", 6);
    let job = bed.flash(dev, app(&board, 4, 6)).unwrap();
    bed.run_until("a third of the file", 10 * MINUTE, |b| {
        b.status(dev)
            .ok()
            .and_then(|s| s.ota)
            .is_some_and(|p| p.contiguous_bytes >= 8 * 1024)
    })
    .unwrap();
    // Cut power at the next flash operation, torn.
    bed.with_device(dev, |os, _| {
        let at = os.device().flash().op_count();
        os.device_mut().schedule_cut(at, CutMode::Torn);
    })
    .unwrap();
    bed.run_until("power lost", MINUTE, |b| !b.status(dev).unwrap().powered)
        .unwrap();
    // Off for a while: the cloud notices, then the device comes back on the old app.
    bed.run_for(2 * MINUTE).unwrap();
    bed.power_on(dev).unwrap();
    bed.run_until("back online", MINUTE, |b| b.status(dev).unwrap().connected)
        .unwrap();
    assert_eq!(
        product_version(&bed, dev),
        Some(3),
        "the old app keeps running"
    );
    bed.run_until("job finished", 30 * MINUTE, |b| job_done(b, job))
        .unwrap_or_else(|e| panic!("{e}\n{}", trace_tail(&bed)));
    assert_eq!(
        bed.job(job),
        Some(JobStatus::Succeeded),
        "{}",
        trace_tail(&bed)
    );
    assert_eq!(product_version(&bed, dev), Some(4));
}

#[test]
fn a_module_for_another_platform_is_refused_with_1360_and_v3_keeps_running() {
    let (mut bed, dev, _) = online("boron", 7);
    let argon = Board::builtin("argon").unwrap();
    let job = bed.flash(dev, app(&argon, 4, 7)).unwrap();
    bed.run_until("job finished", 10 * MINUTE, |b| job_done(b, job))
        .unwrap();
    match bed.job(job) {
        Some(JobStatus::Failed { code, .. }) => assert_eq!(code, Some(-1360)),
        other => panic!("{other:?}\n{}", trace_tail(&bed)),
    }
    bed.run_for(MINUTE).unwrap();
    assert_eq!(product_version(&bed, dev), Some(3));
    assert!(bed.status(dev).unwrap().connected);
}

#[test]
fn a_corrupted_transfer_is_caught_and_v3_keeps_running() {
    let (mut bed, dev, board) = online("boron", 8);
    let mut file = app(&board, 4, 8);
    let mid = file.len() / 2;
    file[mid] ^= 0x40; // The module's CRC no longer matches; the file hash the cloud sends does.
    let job = bed.flash(dev, file).unwrap();
    bed.run_until("job finished", 10 * MINUTE, |b| job_done(b, job))
        .unwrap();
    match bed.job(job) {
        Some(JobStatus::Failed { code, .. }) => {
            assert!(matches!(code, Some(-1330) | Some(-1331)), "{code:?}")
        }
        other => panic!("{other:?}\n{}", trace_tail(&bed)),
    }
    bed.run_for(MINUTE).unwrap();
    assert_eq!(product_version(&bed, dev), Some(3));
}

#[test]
fn updates_disabled_hold_the_update_and_forcing_delivers_it() {
    let (mut bed, dev, board) = online("boron", 9);
    bed.with_device(dev, |os, now| os.disable_updates(now))
        .unwrap();
    bed.run_for(Duration::from_secs(5)).unwrap();
    let job = bed.flash(dev, app(&board, 4, 9)).unwrap();
    bed.run_for(10 * MINUTE).unwrap();
    // Held, not failed and not retried: the device knows an update is pending.
    assert_eq!(bed.job(job), Some(JobStatus::Held), "{}", trace_tail(&bed));
    assert!(bed.status(dev).unwrap().flags.updates_pending);
    assert_eq!(product_version(&bed, dev), Some(3));

    let id = bed.device_id(dev).unwrap();
    let now = bed.now();
    bed.cloud_mut().set_updates_forced(now, id, true);
    bed.run_until("job finished", 10 * MINUTE, |b| job_done(b, job))
        .unwrap();
    assert_eq!(
        bed.job(job),
        Some(JobStatus::Succeeded),
        "{}",
        trace_tail(&bed)
    );
    assert_eq!(product_version(&bed, dev), Some(4));
}

#[test]
fn updates_disabled_then_enabled_delivers_the_held_update() {
    // A Boron: its cellular keepalive (23 min) brings no other traffic to wake the cloud.
    let (mut bed, dev, board) = online("boron", 19);
    bed.with_device(dev, |os, now| os.disable_updates(now))
        .unwrap();
    bed.run_for(Duration::from_secs(5)).unwrap();
    let job = bed.flash(dev, app(&board, 4, 19)).unwrap();
    bed.run_for(Duration::from_secs(3)).unwrap();
    assert_eq!(bed.job(job), Some(JobStatus::Held), "{}", trace_tail(&bed));
    bed.with_device(dev, |os, now| os.enable_updates(now))
        .unwrap();
    // At once (the device's event is news for the cloud), not at some later timer.
    bed.run_until("job finished", Duration::from_secs(30), |b| {
        job_done(b, job)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", trace_tail(&bed)));
    assert_eq!(
        bed.job(job),
        Some(JobStatus::Succeeded),
        "{}",
        trace_tail(&bed)
    );
    assert_eq!(product_version(&bed, dev), Some(4));
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let run = || {
        let (mut bed, dev, board) = online("p2", 10);
        bed.net.set_loss(0.1);
        let job = bed.flash(dev, app(&board, 4, 10)).unwrap();
        bed.run_until("job finished", 30 * MINUTE, |b| job_done(b, job))
            .unwrap();
        bed.trace()
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn an_app_built_against_a_newer_device_os_boots_into_safe_mode_and_without_healing_fails() {
    // A Boron on Device OS 5.8.0 with app v3; the cloud flashes app v4 built against 6.2.0
    // (`cloud.flash app = 4, built_against = "6.2.0"`).
    let board = Board::builtin("boron").unwrap();
    let mut bed = Testbed::new(21).unwrap();
    let mut spec = DeviceSpec::new(board.clone(), 3);
    spec.sizes = sizes();
    spec.versions.system_part = 5800;
    let dev = bed.add_device(&spec).unwrap();
    bed.power_on(dev).unwrap();
    bed.run_until("device online", MINUTE, |b| {
        b.status(dev).map(|s| s.connected).unwrap_or(false)
    })
    .unwrap();
    let file = app_needing_6200(&board, 21);
    let job = bed.flash(dev, file).unwrap();
    bed.run_until("job finished", 10 * MINUTE, |b| job_done(b, job))
        .unwrap_or_else(|e| panic!("{e}\n{}", trace_tail(&bed)));
    // The OTA receiver validates user parts with userDepsOptional: accepted and installed; the
    // describe after the reboot lists the new user part failing its dependency check, and
    // the cloud holds no system part to heal it: not success, but a failure that says why.
    match bed.job(job) {
        Some(JobStatus::Failed {
            code: None,
            message,
        }) => assert!(
            message.contains(
                "no Device OS module for platform 13 that satisfies system part 1 >= 6200"
            ),
            "{message}"
        ),
        other => panic!("{other:?}\n{}", trace_tail(&bed)),
    }
    // The bootloader's validation fails the user part's dependency: safe mode, no app.
    let status = bed.status(dev).unwrap();
    assert!(status.safe_mode, "{}", trace_tail(&bed));
    assert_eq!(
        status.boot_state,
        Some(BootState::SafeMode(
            SafeModeReason::UserPartDependencyUnmet {
                function: 4,
                index: 1,
                needed: 6200,
                installed: Some(5800),
            }
        ))
    );
    assert_eq!(status.versions.product_version, None);
    // Online in safe mode, and the cloud says so with the module list a second later.
    bed.run_for(Duration::from_secs(2)).unwrap();
    assert!(bed.status(dev).unwrap().connected);
    let safe_mode: Vec<String> = bed
        .cloud_events()
        .iter()
        .filter_map(|(_, e)| match e {
            CloudEvent::Stream(s) if s.name == "spark/status/safe-mode" => Some(s.data.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(safe_mode.len(), 1, "{}", trace_tail(&bed));
    let json: serde_json::Value = serde_json::from_str(&safe_mode[0]).unwrap();
    assert_eq!(json["p"], 13);
    let user = json["m"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["f"] == "u")
        .unwrap()
        .clone();
    assert_eq!(
        (user["vc"].as_u64(), user["vv"].as_u64()),
        (Some(0x1e), Some(0x1a))
    );
    assert_eq!(
        user["d"],
        serde_json::json!([{"f": "s", "n": "1", "v": 6200}])
    );
    let system = json["m"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["f"] == "s")
        .unwrap()
        .clone();
    assert_eq!(system["v"], 5800);
}

#[test]
fn safe_mode_healing_sends_the_system_part_the_app_needs_until_the_app_runs() {
    let board = Board::builtin("boron").unwrap();
    let mut bed = Testbed::new(22).unwrap();
    let mut spec = DeviceSpec::new(board.clone(), 3);
    spec.sizes = sizes();
    spec.versions.system_part = 5800;
    let dev = bed.add_device(&spec).unwrap();
    let current = on_5800();
    let system = FirmwareSpec {
        device_os: Some(DeviceOsVersion(6200)),
        ..FirmwareSpec::default()
    };
    let system = build_file(&board, &system, &current, sizes(), 22).unwrap();
    bed.cloud_mut().add_device_os_module(system).unwrap();
    bed.power_on(dev).unwrap();
    bed.run_until("device online", MINUTE, |b| {
        b.status(dev).map(|s| s.connected).unwrap_or(false)
    })
    .unwrap();
    let file = app_needing_6200(&board, 22);
    let job = bed.flash(dev, file).unwrap();
    bed.run_until("job finished", 30 * MINUTE, |b| job_done(b, job))
        .unwrap_or_else(|e| panic!("{e}\n{}", trace_tail(&bed)));
    assert_eq!(
        bed.job(job),
        Some(JobStatus::Succeeded),
        "{}",
        trace_tail(&bed)
    );
    let status = bed.status(dev).unwrap();
    assert!(!status.safe_mode, "{}", trace_tail(&bed));
    assert_eq!(status.versions.system_part, Some(6200));
    assert_eq!(status.versions.product_version, Some(4));
    // Two transfers: the app, then the system part (a job the cloud created for healing).
    let started = bed
        .cloud_events()
        .iter()
        .filter(|(_, e)| matches!(e, CloudEvent::Stream(s) if s.name == "spark/flash/status" && s.data == "started "))
        .count();
    assert_eq!(started, 2, "{}", trace_tail(&bed));
}

#[test]
fn the_final_ack_lost_then_power_loss_is_not_success_and_the_device_ends_on_target() {
    let (mut bed, dev, board) = online("boron", 23);
    let job = bed.flash(dev, app(&board, 4, 23)).unwrap();
    bed.run_until("UpdateFinish sent", 10 * MINUTE, |b| {
        b.job(job) == Some(JobStatus::Finishing)
    })
    .unwrap();
    // Everything from the cloud is lost from here: the ACK of the device's 2.04 never arrives,
    // so Device OS never commits; then the device loses power.
    let (cloud, device) = (bed.cloud_node(), bed.device_node(dev).unwrap());
    bed.net.set_link_faults(
        cloud,
        device,
        harness::net::sim::LinkFaults {
            loss: 1.0,
            ..Default::default()
        },
    );
    bed.run_for(Duration::from_secs(2)).unwrap();
    assert!(
        matches!(bed.job(job), Some(JobStatus::Committed { .. })),
        "the cloud saw the 2.04: {:?}\n{}",
        bed.job(job),
        trace_tail(&bed)
    );
    bed.power_cut(dev).unwrap();
    bed.run_for(Duration::from_secs(5)).unwrap();
    bed.net.clear_link_faults(cloud, device);
    bed.power_on(dev).unwrap();
    bed.run_until("back online", MINUTE, |b| {
        b.status(dev).map(|s| s.connected).unwrap_or(false)
    })
    .unwrap();
    // Back on v3: the stream said `success `, the job does not.
    assert_eq!(product_version(&bed, dev), Some(3));
    assert_ne!(bed.job(job), Some(JobStatus::Succeeded));
    // The cloud sends it again and the device ends on target.
    bed.run_until("job finished", 10 * MINUTE, |b| job_done(b, job))
        .unwrap();
    assert_eq!(
        bed.job(job),
        Some(JobStatus::Succeeded),
        "{}",
        trace_tail(&bed)
    );
    assert_eq!(product_version(&bed, dev), Some(4));
    let info = bed.cloud().job_info(job).unwrap();
    assert!(info.attempts >= 2, "{info:?}");
    assert!(
        info.last_reason
            .as_deref()
            .is_some_and(|r| r.contains("came back without it")),
        "{info:?}\n{}",
        trace_tail(&bed)
    );
}

#[test]
fn a_product_target_the_device_refuses_is_reported_and_never_retried() {
    use harness::cloud::fleet::Release;
    use harness::cloud::{DeviceId, OtaEventKind};
    let (mut bed, dev, board) = online("boron", 24);
    let id = DeviceId(bed.device_id(dev).unwrap());
    // An app far larger than the Boron's user part region: the device refuses it (-1300).
    let flash = FirmwareSpec {
        app: Some(4),
        size: Some(600 * 1024),
        ..FirmwareSpec::default()
    };
    let current = InitialFirmware::default();
    let file = build_file(&board, &flash, &current, sizes(), 24).unwrap();
    let now = bed.now();
    let cloud = bed.cloud_mut();
    cloud.create_product(7, "p", board.platform_id).unwrap();
    cloud.add_product_device(now, 7, id).unwrap();
    cloud
        .upload_firmware(now, 7, 4, "too big", "", file)
        .unwrap();
    cloud
        .release_firmware(
            now,
            7,
            4,
            &Release {
                product_default: true,
                intelligent: true,
                ..Release::default()
            },
        )
        .unwrap();
    bed.run_for(10 * MINUTE).unwrap();
    // Two new handshakes later, still one attempt, failed with the device's code.
    for _ in 0..2 {
        bed.power_cut(dev).unwrap();
        bed.run_for(Duration::from_secs(5)).unwrap();
        bed.power_on(dev).unwrap();
        bed.run_for(10 * MINUTE).unwrap();
    }
    let jobs: Vec<_> = bed
        .cloud_events()
        .iter()
        .filter_map(|(_, e)| match e {
            CloudEvent::Ota(o) => Some((o.job, o.kind.clone())),
            _ => None,
        })
        .collect();
    let created = jobs
        .iter()
        .filter(|(_, k)| matches!(k, OtaEventKind::Created { .. }))
        .count();
    assert_eq!(created, 1, "{}", trace_tail(&bed));
    let failed: Vec<_> = jobs
        .iter()
        .filter_map(|(_, k)| match k {
            OtaEventKind::Failed { code, .. } => Some(*code),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "{}", trace_tail(&bed));
    assert!(failed[0].is_some_and(harness::cloud::policy::is_permanent));
    assert_eq!(product_version(&bed, dev), Some(3));
}
