//! `hil demo`: a complete OTA in one process, in virtual time: the local cloud and one
//! emulated device on the simulated network, app v3 -> v4, printing the trace.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use emulator::board::{Board, RegionKind};
use emulator::firmware::{FirmwareSet, ModuleSizes, Versions};
use harness::cloud::JobStatus;
use harness::testbed::{DeviceSpec, Testbed};

use super::CliResult;

#[derive(Args)]
pub struct DemoArgs {
    /// Seed of the run (keys, network, firmware bodies): the same seed prints the same trace.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Built-in board of the emulated device.
    #[arg(long, default_value = "boron")]
    board: String,
}

const USER_PART: u32 = 24 * 1024;

pub fn run(args: DemoArgs) -> CliResult {
    let board = Board::builtin(&args.board)?;
    let sizes = ModuleSizes {
        user_part: USER_PART,
        ..ModuleSizes::default()
    };
    let mut bed = Testbed::new(args.seed)?;
    let mut spec = DeviceSpec::new(board.clone(), 3);
    spec.sizes = sizes;
    let dev = bed.add_device(&spec)?;
    bed.power_on(dev)?;
    bed.run_until("the device online", Duration::from_secs(60), |b| {
        b.status(dev).map(|s| s.connected).unwrap_or(false)
    })?;
    let before = bed.status(dev)?.versions.product_version;
    let versions = Versions {
        product_version: 4,
        ..Versions::BASELINE
    };
    let file = FirmwareSet::new(&board, sizes, args.seed).module(
        RegionKind::UserPart,
        &versions,
        USER_PART,
    )?;
    let job = bed.flash(dev, file)?;
    let outcome = bed.run_until("the OTA job finished", Duration::from_secs(600), |b| {
        b.job(job).is_some_and(|s| s.is_finished())
    });
    for line in bed.trace() {
        println!("{line}");
    }
    outcome?;
    let after = bed.status(dev)?.versions.product_version;
    let show = |v: Option<u16>| v.map_or("none".to_string(), |v| format!("v{v}"));
    let status = bed.job(job);
    let at = bed.now();
    println!(
        "demo (seed {}, {}): app {} -> {}, the OTA job {} after {}.{:03} virtual s, {} datagrams",
        args.seed,
        board.name,
        show(before),
        show(after),
        job_words(status.as_ref()),
        at.as_secs(),
        at.subsec_millis(),
        bed.net.stats().sent
    );
    Ok(if status == Some(JobStatus::Succeeded) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A job's status as words: "succeeded", "failed (Device OS error -1360): ...".
fn job_words(status: Option<&JobStatus>) -> String {
    match status {
        None => "is unknown to the cloud".to_string(),
        Some(JobStatus::Succeeded) => "succeeded".to_string(),
        Some(JobStatus::Failed {
            code: Some(code),
            message,
        }) => format!("failed (Device OS error {code}): {message}"),
        Some(JobStatus::Failed {
            code: None,
            message,
        }) => format!("failed: {message}"),
        Some(JobStatus::Queued) => "is still queued".to_string(),
        Some(JobStatus::Held) => "is held: the device has updates disabled".to_string(),
        Some(JobStatus::Starting) => "is still starting".to_string(),
        Some(JobStatus::Transferring { acked, chunks, .. }) => {
            format!("is still transferring ({acked} of {chunks} chunks)")
        }
        Some(JobStatus::Finishing) => "is still finishing".to_string(),
        Some(JobStatus::Committed { .. }) => {
            "is committed (the device has not reconnected)".to_string()
        }
    }
}
