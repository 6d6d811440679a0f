//! `hil bench power-cut`: how many power-cut points the sweep verifies per second.
//!
//! A cut point is one flash operation of an update's window (the DCT slot commit, then the
//! boot that applies it) in one cut mode: the device is cut there, powered on, booted until a
//! boot completes, and every check of [`harness::sweep`] runs (old or new firmware, never a
//! mix, nothing half-written reported valid, nothing left pending, a further boot changes
//! nothing). The cases: a 128 KiB user part and a 500 KiB system part on a Boron, in all three
//! cut modes. Building the cases (provisioning, staging) is not timed; the sweeps are.

use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use emulator::board::Board;
use emulator::firmware::ModuleSizes;
use harness::cases::{build, SweepCaseKind};
use harness::sweep::{sweep, SweepConfig};

use super::CliResult;

#[derive(Args)]
pub struct PowerCutArgs {
    /// Print one JSON object: cut_points, seconds, cut_points_per_second, and per case.
    #[arg(long)]
    json: bool,
    /// Small images (a smoke test: the figures mean little).
    #[arg(long)]
    quick: bool,
    /// Threads the sweep runs its cut points on (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of the firmware images and the torn writes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const BOARD: &str = "boron";

struct CaseFigures {
    case: String,
    window_ops: u64,
    cut_points: u64,
    boots: u64,
    seconds: f64,
    failures: Vec<String>,
}

pub fn power_cut(args: PowerCutArgs) -> CliResult {
    let board = Board::builtin(BOARD).map_err(|e| format!("board {BOARD}: {e}"))?;
    let (user, system) = if args.quick {
        (16 * 1024, 32 * 1024)
    } else {
        (128 * 1024, 500 * 1024)
    };
    let sizes = ModuleSizes {
        user_part: user,
        system_part: system,
        ..ModuleSizes::default()
    };
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let config = SweepConfig {
        seed: args.seed,
        threads,
        ..SweepConfig::default()
    };
    let mut figures = Vec::new();
    for kind in [SweepCaseKind::UserPart, SweepCaseKind::SystemPart] {
        let case = build(&board, kind, &sizes, args.seed)?;
        let started = Instant::now();
        let report = sweep(&case, &config)?;
        let seconds = started.elapsed().as_secs_f64();
        figures.push(CaseFigures {
            case: report.case.clone(),
            window_ops: report.window.1 - report.window.0,
            cut_points: report.runs,
            boots: report.boots,
            seconds,
            failures: report.failures.iter().map(|f| f.to_string()).collect(),
        });
    }
    let cut_points: u64 = figures.iter().map(|f| f.cut_points).sum();
    let seconds: f64 = figures.iter().map(|f| f.seconds).sum();
    let rate = |n: u64, s: f64| n as f64 / s.max(1e-9);
    let failed = figures.iter().any(|f| !f.failures.is_empty());

    if args.json {
        let cases: Vec<_> = figures
            .iter()
            .map(|f| {
                serde_json::json!({
                    "case": f.case,
                    "window_ops": f.window_ops,
                    "cut_points": f.cut_points,
                    "boots": f.boots,
                    "seconds": f.seconds,
                    "cut_points_per_second": rate(f.cut_points, f.seconds),
                    "failures": f.failures,
                })
            })
            .collect();
        let out = serde_json::json!({
            "board": BOARD,
            "user_part_bytes": user,
            "system_part_bytes": system,
            "threads": threads,
            "quick": args.quick,
            "cut_points": cut_points,
            "seconds": seconds,
            "cut_points_per_second": rate(cut_points, seconds),
            "cases": cases,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "power-cut sweep on a {BOARD}, modes before/torn/after, {threads} thread(s){}",
            if args.quick {
                " (quick: tiny images)"
            } else {
                ""
            }
        );
        println!(
            "{:<26} {:>9} {:>10} {:>8} {:>9} {:>12} {:>8}",
            "case", "flash ops", "cut points", "boots", "seconds", "points/s", "failures"
        );
        for f in &figures {
            println!(
                "{:<26} {:>9} {:>10} {:>8} {:>9.3} {:>12.0} {:>8}",
                f.case,
                f.window_ops,
                f.cut_points,
                f.boots,
                f.seconds,
                rate(f.cut_points, f.seconds),
                f.failures.len()
            );
        }
        println!(
            "{:<26} {:>9} {:>10} {:>8} {:>9.3} {:>12.0}",
            "total",
            "",
            cut_points,
            "",
            seconds,
            rate(cut_points, seconds)
        );
        for f in &figures {
            for problem in f.failures.iter().take(10) {
                println!("  FAIL {problem}");
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
