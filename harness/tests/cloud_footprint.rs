//! The cloud's footprint ([`harness::cloud::Footprint`]) is honest and bounded (issue 13, the
//! cloud's memory flat): it grows when jobs are queued, falls when they finish, and finished
//! jobs keep only a summary, the newest `finished_jobs_kept` per device.

use std::time::Duration;

use emulator::board::{Board, RegionKind};
use emulator::firmware::{FirmwareSet, ModuleSizes, Versions};
use harness::cloud::{JobId, JobStatus, FINISHED_JOBS_KEPT};
use harness::testbed::{DeviceHandle, DeviceSpec, Testbed};

const MINUTE: Duration = Duration::from_secs(60);
const APP_LEN: u32 = 16 * 1024;

fn sizes() -> ModuleSizes {
    ModuleSizes {
        user_part: APP_LEN,
        ..ModuleSizes::default()
    }
}

fn app(board: &Board, version: u16) -> Vec<u8> {
    let versions = Versions {
        product_version: version,
        ..Versions::BASELINE
    };
    FirmwareSet::new(board, sizes(), 5)
        .module(RegionKind::UserPart, &versions, APP_LEN)
        .unwrap()
}

/// Two Argons online, running app 3.
fn two_online(seed: u64) -> (Testbed, Vec<DeviceHandle>, Board) {
    let board = Board::builtin("argon").unwrap();
    let mut bed = Testbed::new(seed).unwrap();
    let mut devices = Vec::new();
    for _ in 0..2 {
        let mut spec = DeviceSpec::new(board.clone(), 3);
        spec.sizes = sizes();
        let dev = bed.add_device(&spec).unwrap();
        bed.power_on(dev).unwrap();
        devices.push(dev);
    }
    bed.run_until("devices online", MINUTE, |b| {
        devices
            .iter()
            .all(|d| b.status(*d).is_ok_and(|s| s.connected))
    })
    .unwrap();
    (bed, devices, board)
}

fn finished(bed: &Testbed, jobs: &[JobId]) -> bool {
    jobs.iter()
        .all(|j| bed.job(*j).is_some_and(|s| s.is_finished()))
}

#[test]
fn footprint_grows_with_queued_jobs_and_falls_when_they_finish() {
    let (mut bed, devices, board) = two_online(41);
    let idle = bed.cloud().footprint();
    assert_eq!(idle.devices, 2);
    assert_eq!(idle.jobs_unfinished + idle.jobs_finished, 0);
    assert_eq!(idle.job_file_bytes, 0);
    let file = app(&board, 4);
    let jobs: Vec<JobId> = devices
        .iter()
        .map(|d| bed.flash(*d, file.clone()).unwrap())
        .collect();
    let queued = bed.cloud().footprint();
    assert_eq!(queued.jobs_unfinished, 2, "{queued}");
    // Each flash holds its own copy of the file until it finishes.
    assert!(queued.job_file_bytes >= 2 * file.len(), "{queued}");
    assert!(queued.bytes() >= idle.bytes() + 2 * file.len(), "{queued}");
    bed.run_until("a transfer running", MINUTE, |b| {
        b.cloud().footprint().transfers > 0
    })
    .unwrap();
    let running = bed.cloud().footprint();
    assert!(running.transfer_bytes > 0, "{running}");
    bed.run_until("jobs finished", 10 * MINUTE, |b| finished(b, &jobs))
        .unwrap();
    for j in &jobs {
        assert_eq!(bed.job(*j), Some(JobStatus::Succeeded));
    }
    let done = bed.cloud().footprint();
    assert_eq!(done.jobs_unfinished, 0, "{done}");
    assert_eq!(done.jobs_finished, 2, "{done}");
    assert_eq!(
        done.job_file_bytes, 0,
        "a finished job keeps no file: {done}"
    );
    assert_eq!(done.transfers, 0, "{done}");
    assert_eq!(done.transfer_bytes, 0, "{done}");
    assert!(done.bytes() < queued.bytes(), "{done} vs {queued}");
    assert!(done.bytes() < idle.bytes() + file.len(), "{done} vs {idle}");
}

#[test]
fn a_device_keeps_only_its_newest_finished_jobs() {
    let (mut bed, devices, board) = two_online(42);
    let dev = devices[0];
    let file = app(&board, 3);
    // The device runs app 3 already: each flash of it finishes at once, with no transfer.
    let mut jobs = Vec::new();
    for _ in 0..FINISHED_JOBS_KEPT + 5 {
        let job = bed.flash(dev, file.clone()).unwrap();
        bed.run_until("job finished", MINUTE, |b| finished(b, &[job]))
            .unwrap();
        assert_eq!(bed.job(job), Some(JobStatus::Succeeded));
        jobs.push(job);
    }
    let f = bed.cloud().footprint();
    assert_eq!(f.jobs_finished, FINISHED_JOBS_KEPT, "{f}");
    assert_eq!(f.job_file_bytes, 0, "{f}");
    let (forgotten, kept) = jobs.split_at(jobs.len() - FINISHED_JOBS_KEPT);
    for j in forgotten {
        assert_eq!(bed.job(*j), None, "{j} is older than the retention");
    }
    for j in kept {
        assert_eq!(bed.job(*j), Some(JobStatus::Succeeded), "{j} is kept");
    }
    // The other device's summaries are its own: none were forgotten for it.
    let other = bed.flash(devices[1], file).unwrap();
    bed.run_until("job finished", MINUTE, |b| finished(b, &[other]))
        .unwrap();
    assert_eq!(bed.job(other), Some(JobStatus::Succeeded));
    assert_eq!(bed.job(jobs[jobs.len() - 1]), Some(JobStatus::Succeeded));
}
