//! `hil run`: runs scenario files against a target, with progress on stderr, a summary table
//! and JUnit / JSON reports. Wall-clock time is read here only to report how long the run took
//! (JUnit's `time`); nothing in a run depends on it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use harness::fleet_sim::report as fleet_report;
use harness::scenario::emulator_target::EmulatorTarget;
use harness::scenario::report::{json_report, junit, summary_table};
use harness::scenario::runner::{self, Outcome, ScenarioResult};
use harness::scenario::{Scenario, Target, TargetError};

use super::progress::Progress;
use super::CliResult;

/// The targets `--target` accepts.
pub const TARGETS: [&str; 1] = ["emulator"];

#[derive(Args)]
pub struct RunArgs {
    /// Scenario files, or folders searched recursively for *.toml (README files skipped).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// What to run the scenarios on.
    #[arg(long, default_value = "emulator")]
    target: String,
    /// Seed for every scenario (overrides the files' own `seed`).
    #[arg(long)]
    seed: Option<u64>,
    /// Write a JUnit XML report here (`time` in wall-clock seconds, as CI systems read it;
    /// the target's virtual seconds in the property `target_seconds`). Checked before the run.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Write a JSON report (with every case's trace; fleet files under `fleets`: their checks,
    /// milestones, devices bricked, transfers started while busy, the staged rollout) here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print every case's trace, not only the failures'.
    #[arg(long)]
    trace: bool,
    /// Run only share K of N (1 <= K <= N) of the files, as nextest's `--partition
    /// count:K/N`: the files in order (folders sorted), the i-th (from 1) in share
    /// ((i - 1) mod N) + 1. `count:K/N` is accepted too. A sweep file is one unit.
    #[arg(long, value_name = "K/N", value_parser = parse_partition)]
    partition: Option<(usize, usize)>,
    /// Fleet scenarios: write each one's curve as CSV, JSON, SVG and PNG in this folder
    /// (`<file stem>.csv` ...).
    #[arg(long, value_name = "DIR")]
    curves: Option<PathBuf>,
    /// Fleet scenarios: scale each cohort so the fleet has about this many devices.
    #[arg(long, value_name = "N")]
    fleet_devices: Option<u64>,
}

/// Reads `K/N` or `count:K/N`.
pub fn parse_partition(text: &str) -> Result<(usize, usize), String> {
    let body = text.strip_prefix("count:").unwrap_or(text);
    let bad = || format!("`{text}` is not K/N with 1 <= K <= N (for example 2/4)");
    let (k, n) = body.split_once('/').ok_or_else(bad)?;
    let k: usize = k.trim().parse().map_err(|_| bad())?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    if k == 0 || n == 0 || k > n {
        return Err(bad());
    }
    Ok((k, n))
}

/// Builds the target a scenario runs on. The one place targets are constructed.
pub fn make_target(name: &str, _scenario: &Scenario) -> Result<Box<dyn Target>, TargetError> {
    match name {
        "emulator" => Ok(Box::new(EmulatorTarget::new())),
        other => Err(TargetError::Unavailable(format!(
            "unknown target `{other}`; expected one of: {}",
            TARGETS.join(", ")
        ))),
    }
}

/// Creates (empties) a report file before the run, so a bad path is refused before the work.
fn check_writable(path: &Path, what: &str) -> Result<(), String> {
    std::fs::File::create(path)
        .map(drop)
        .map_err(|e| format!("{}: cannot write the {what} report: {e}", path.display()))
}

pub fn run(args: RunArgs) -> CliResult {
    if !TARGETS.contains(&args.target.as_str()) {
        return Err(format!(
            "unknown target `{}`; expected one of: {}",
            args.target,
            TARGETS.join(", ")
        )
        .into());
    }
    let (loaded, broken) = super::check::load_all_with_fleet(&args.paths)?;
    if broken {
        eprintln!("hil run: fix the scenario files above first (nothing was run)");
        return Ok(ExitCode::from(1));
    }
    let mut scenarios = Vec::new();
    let mut fleets = Vec::new();
    for (i, l) in loaded.into_iter().enumerate() {
        if let Some((k, n)) = args.partition {
            if i % n != k - 1 {
                continue;
            }
        }
        match l {
            super::check::Loaded::Scenario(s) => scenarios.push(s),
            super::check::Loaded::Fleet(f) => fleets.push(f),
        }
    }
    if let Some((k, n)) = args.partition {
        eprintln!(
            "hil run: partition {k}/{n}: {} scenario files, {} fleet files",
            scenarios.len(),
            fleets.len()
        );
    }
    if let Some(dir) = &args.curves {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("{}: cannot create the curves folder: {e}", dir.display()))?;
    }
    // Refuse early and clearly when the target cannot be built at all.
    if let Some(first) = scenarios.first() {
        if let Err(e @ TargetError::Unavailable(_)) = make_target(&args.target, first) {
            return Err(e.into());
        }
    }
    if let Some(path) = &args.junit {
        check_writable(path, "JUnit")?;
    }
    if let Some(path) = &args.json {
        check_writable(path, "JSON")?;
    }

    let progress = Progress::new("hil run", scenarios.len() as u64);
    let mut results: Vec<ScenarioResult> = Vec::new();
    let mut wall: Vec<Vec<Duration>> = Vec::new();
    for (i, scenario) in scenarios.iter().enumerate() {
        let file = scenario.file.display().to_string();
        progress.start(i as u64, &file);
        // The runner builds one target per case, in order, at the start of the case: the
        // moments it asks for one split the scenario's wall time into its cases'.
        let mut started: Vec<Instant> = Vec::new();
        let mut factory = || {
            started.push(Instant::now());
            if started.len() > 1 {
                progress.note(&format!("case {} of {file}", started.len()));
            }
            make_target(&args.target, scenario)
        };
        let result = runner::run(scenario, args.seed, &mut factory);
        let end = Instant::now();
        let case_wall: Vec<Duration> = (0..result.cases.len())
            .map(|k| match started.get(k) {
                Some(&t) => started.get(k + 1).copied().unwrap_or(end) - t,
                None => Duration::ZERO,
            })
            .collect();
        for case in &result.cases {
            if let Some(failure) = &case.failure {
                progress.println(&failure.to_string());
            }
            if args.trace {
                progress.println(&case.trace.render());
            }
        }
        results.push(result);
        wall.push(case_wall);
    }
    progress.finish();

    if !scenarios.is_empty() || fleets.is_empty() {
        print!("{}", summary_table(&results));
    }
    let mut fleet_failed = false;
    // Each fleet file's checks and figures for the reports.
    let mut fleet_suites = Vec::new();
    let mut fleet_json = Vec::new();
    for f in &fleets {
        let f = match args.fleet_devices {
            Some(n) => f.scaled_to(n),
            None => f.clone(),
        };
        eprintln!(
            "hil run: fleet {} ({} devices)",
            f.file.display(),
            f.devices()
        );
        let started = Instant::now();
        let result = harness::fleet_sim::run(&f, args.seed);
        let wall = started.elapsed().as_secs_f64();
        match result {
            Ok(run) => {
                print!("{}", run.summary());
                fleet_failed |= !run.passed();
                fleet_suites.push(fleet_report::junit_suite(&run, wall));
                fleet_json.push(fleet_report::json(&run));
                if let Some(dir) = &args.curves {
                    let stem = f
                        .file
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "fleet".into());
                    for path in run.curve.write_all(dir, &stem)? {
                        eprintln!("hil run: wrote {}", path.display());
                    }
                }
            }
            Err(e) => {
                println!("FAIL {}: {e}", f.file.display());
                fleet_failed = true;
                fleet_suites.push(fleet_report::junit_error_suite(
                    &f.file,
                    &e.to_string(),
                    wall,
                ));
                fleet_json.push(serde_json::json!({
                    "file": f.file.display().to_string(),
                    "name": f.name,
                    "passed": false,
                    "error": e.to_string(),
                }));
            }
        }
    }
    if let Some(path) = &args.junit {
        let doc = fleet_report::add_to_junit(&junit(&results, &wall), &fleet_suites);
        std::fs::write(path, doc)
            .map_err(|e| format!("{}: cannot write the JUnit report: {e}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let mut value = json_report(&results, &args.target, args.seed);
        // Fleet files: their checks count in the totals like cases.
        for s in &fleet_suites {
            value["totals"]["passed"] = (value["totals"]["passed"].as_u64().unwrap_or(0)
                + (s.tests - s.failures) as u64)
                .into();
            value["totals"]["failed"] =
                (value["totals"]["failed"].as_u64().unwrap_or(0) + s.failures as u64).into();
        }
        value["fleets"] = serde_json::Value::Array(fleet_json);
        let text = serde_json::to_string_pretty(&value)?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("{}: cannot write the JSON report: {e}", path.display()))?;
    }
    let failed = results
        .iter()
        .flat_map(|r| &r.cases)
        .any(|c| c.outcome == Outcome::Fail);
    Ok(if failed || fleet_failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
