//! `hil bench fleet`: how large a fleet one process simulates and how fast. For each size N
//! (1,000, 10,000, 100,000 unless `--devices` says), a fleet of N Borons on app 3 (power cycles
//! every 2 days on average, busy periods, a 150 ms / 1 % loss link) gets a standard release of
//! app 7 to the product default at hour 1, and runs `--hours` of virtual time (default a day)
//! with every device doing the full protocol (DTLS handshake, CoAP, OTA v3, flash writes).
//!
//! Figures: memory per device = (VmRSS after the run - VmRSS before the fleet was built) / N;
//! simulated hours per wall second of the run (building the fleet not included; its time is
//! shown apart); full handshakes per wall second of the run. Wall-clock time is read here only
//! to report these figures.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use harness::fleet_sim::{self, Fleet};

use super::CliResult;

#[derive(Args)]
pub struct FleetArgs {
    /// Simulate only this many devices (default: 1,000, 10,000 and 100,000 in turn).
    #[arg(long)]
    devices: Option<u64>,
    /// Print one JSON object: `{"runs": [{devices, bytes_per_device, simulated_hours,
    /// wall_seconds, simulated_hours_per_wall_second, handshakes, handshakes_per_second,
    /// build_seconds, updated}]}`.
    #[arg(long)]
    json: bool,
    /// Virtual hours to run each fleet.
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
}

const FLEET: &str = r#"
name = "hil bench fleet"
seed = 15

[fleet]
duration = "24h"
sample = "10m"
boot_spread = "10m"

[fleet.behaviour]
power_cycle = { every = "2d", for = "20m" }
busy = { every = "12h", for = "30m" }
link = { latency = "150ms", loss = 0.01 }

[[fleet.devices]]
count = 1000
board = "boron"
app = 3

[[fleet.firmware]]
app = 7

[[fleet.release]]
at = "1h"
app = 7
default = true
"#;

/// VmRSS of this process, in bytes (0 where /proc is not there).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

pub fn fleet(args: FleetArgs) -> CliResult {
    if args.hours.is_nan() || args.hours <= 0.0 {
        return Err("--hours must be more than zero".into());
    }
    let mut base = fleet_sim::model::parse(FLEET, std::path::Path::new("<hil bench fleet>"))?;
    base.duration = Duration::from_secs_f64(args.hours * 3600.0);
    let sizes = match args.devices {
        Some(0) => return Err("--devices must be at least 1".into()),
        Some(n) => vec![n],
        None => vec![1_000, 10_000, 100_000],
    };
    if cfg!(debug_assertions) {
        eprintln!(
            "hil bench fleet: a debug build; build with --release for figures that mean something"
        );
    }
    let mut runs = Vec::new();
    if !args.json {
        println!(
            "{:>8} {:>12} {:>10} {:>12} {:>14} {:>12} {:>10} {:>9}",
            "devices",
            "bytes/dev",
            "sim hours",
            "wall s",
            "sim h/wall s",
            "handshakes",
            "hs/s",
            "on v7"
        );
    }
    for n in sizes {
        let scenario = base.scaled_to(n);
        let before = rss();
        let t0 = Instant::now();
        let fleet = Fleet::build(&scenario, None)?;
        let build = t0.elapsed();
        let t1 = Instant::now();
        let run = fleet.run()?;
        let wall = t1.elapsed().as_secs_f64();
        let after = rss();
        let devices = run.stats.devices;
        let per_device = after.saturating_sub(before) / devices.max(1);
        let updated: u32 = run
            .curve
            .rows
            .last()
            .map(|r| {
                r.iter()
                    .map(|c| c.versions.get(&7).copied().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        let row = serde_json::json!({
            "devices": devices,
            "bytes_per_device": per_device,
            "simulated_hours": args.hours,
            "wall_seconds": wall,
            "simulated_hours_per_wall_second": args.hours / wall.max(1e-9),
            "handshakes": run.stats.handshakes,
            "handshakes_per_second": run.stats.handshakes as f64 / wall.max(1e-9),
            "build_seconds": build.as_secs_f64(),
            "updated": updated,
            "datagrams": run.stats.datagrams,
        });
        if !args.json {
            println!(
                "{:>8} {:>12} {:>10.1} {:>12.1} {:>14.2} {:>12} {:>10.0} {:>9}",
                devices,
                per_device,
                args.hours,
                wall,
                args.hours / wall.max(1e-9),
                run.stats.handshakes,
                run.stats.handshakes as f64 / wall.max(1e-9),
                updated
            );
        }
        runs.push(row);
        drop(run);
    }
    if args.json {
        println!(
            "{:#}",
            serde_json::json!({
                "runs": runs,
                "release_build": !cfg!(debug_assertions),
                "method": "N Borons, standard release of app 7 at hour 1; bytes/device = (VmRSS after the run - before the build) / N; rates over the run's wall time (build apart)",
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}
