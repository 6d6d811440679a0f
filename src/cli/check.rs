//! `hil check`: validates scenario files without running them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use harness::scenario::report::collect_files;
use harness::scenario::Scenario;

use super::CliResult;

#[derive(Args)]
pub struct CheckArgs {
    /// Scenario files, or folders searched recursively for *.toml (README files skipped).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// A file `hil run` can run: a scenario, or a fleet scenario (a `[fleet]` table,
/// `fixtures/fleet/`).
pub enum Loaded {
    Scenario(Scenario),
    Fleet(harness::fleet_sim::FleetScenario),
}

/// Reads every scenario and fleet scenario under `paths`, in file order. Prints every problem
/// of every file (`file:line:column: ...` or `file: field: ...`) to stderr; returns what was
/// read and whether any file had a problem.
pub fn load_all_with_fleet(
    paths: &[PathBuf],
) -> Result<(Vec<Loaded>, bool), Box<dyn std::error::Error>> {
    let files = collect_files(paths)?;
    if files.is_empty() {
        let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(format!("no scenario files (*.toml) under {}", list.join(", ")).into());
    }
    let mut loaded = Vec::new();
    let mut broken = false;
    for file in files {
        let fleet = std::fs::read_to_string(&file)
            .map(|t| harness::fleet_sim::model::is_fleet_file(&t))
            .unwrap_or(false);
        if fleet {
            match harness::fleet_sim::load(&file) {
                Ok(s) => loaded.push(Loaded::Fleet(s)),
                Err(e) => {
                    eprintln!("{e}");
                    broken = true;
                }
            }
            continue;
        }
        match harness::scenario::load_all(&file) {
            Ok(s) => loaded.push(Loaded::Scenario(s)),
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                broken = true;
            }
        }
    }
    Ok((loaded, broken))
}

/// Reads every scenario under `paths` (fleet scenarios are left out with a note: only
/// `hil run` runs them). Prints every problem of every file as `file:line:column: ...` to
/// stderr; returns the scenarios read and whether any file had a problem.
pub fn load_all(paths: &[PathBuf]) -> Result<(Vec<Scenario>, bool), Box<dyn std::error::Error>> {
    let (loaded, broken) = load_all_with_fleet(paths)?;
    let mut scenarios = Vec::new();
    for l in loaded {
        match l {
            Loaded::Scenario(s) => scenarios.push(s),
            Loaded::Fleet(f) => eprintln!(
                "{}: a fleet scenario, left out (hil run runs fleet scenarios)",
                f.file.display()
            ),
        }
    }
    Ok((scenarios, broken))
}

pub fn run(args: CheckArgs) -> CliResult {
    let (loaded, broken) = load_all_with_fleet(&args.paths)?;
    for l in &loaded {
        match l {
            Loaded::Scenario(s) => {
                let sweep = if s.sweep().is_some() { ", sweep" } else { "" };
                println!("ok   {} ({} steps{sweep})", s.file.display(), s.steps.len());
            }
            Loaded::Fleet(f) => println!(
                "ok   {} (fleet: {} devices, {} expectations)",
                f.file.display(),
                f.devices(),
                f.expects.len()
            ),
        }
    }
    if broken {
        eprintln!("hil check: some scenario files have problems (see above)");
        return Ok(ExitCode::from(1));
    }
    println!("{} scenario files ok", loaded.len());
    Ok(ExitCode::SUCCESS)
}
