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

/// Reads every scenario under `paths`. Prints every problem of every file as `file:line:column: ...` to stderr;
/// returns the scenarios read and whether any file had a problem.
pub fn load_all(paths: &[PathBuf]) -> Result<(Vec<Scenario>, bool), Box<dyn std::error::Error>> {
    let files = collect_files(paths)?;
    if files.is_empty() {
        let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(format!("no scenario files (*.toml) under {}", list.join(", ")).into());
    }
    let mut scenarios = Vec::new();
    let mut broken = false;
    for file in files {
        match harness::scenario::load_all(&file) {
            Ok(s) => scenarios.push(s),
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                broken = true;
            }
        }
    }
    Ok((scenarios, broken))
}

pub fn run(args: CheckArgs) -> CliResult {
    let (scenarios, broken) = load_all(&args.paths)?;
    for s in &scenarios {
        let sweep = if s.sweep().is_some() { ", sweep" } else { "" };
        println!("ok   {} ({} steps{sweep})", s.file.display(), s.steps.len());
    }
    if broken {
        eprintln!("hil check: some scenario files have problems (see above)");
        return Ok(ExitCode::from(1));
    }
    println!("{} scenario files ok", scenarios.len());
    Ok(ExitCode::SUCCESS)
}
