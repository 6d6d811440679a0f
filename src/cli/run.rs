//! `hil run`: runs scenario files against a target, with a progress bar, a summary table and
//! JUnit / JSON reports.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use harness::scenario::emulator_target::EmulatorTarget;
use harness::scenario::report::{json_report, junit, summary_table};
use harness::scenario::runner::{self, Outcome, ScenarioResult};
use harness::scenario::{Scenario, Target, TargetError};

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
    /// Write a JUnit XML report here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Write a JSON report (with every case's trace) here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print every case's trace, not only the failures'.
    #[arg(long)]
    trace: bool,
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

/// A progress line on stderr, drawn only when stderr is a terminal.
struct Progress {
    on: bool,
    total: usize,
}

impl Progress {
    fn show(&self, done: usize, what: &str) {
        if !self.on {
            return;
        }
        const WIDTH: usize = 30;
        let filled = (done * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r\x1b[2K[{}{}] {done}/{} {what}",
            "=".repeat(filled),
            " ".repeat(WIDTH - filled),
            self.total
        );
        let _ = err.flush();
    }

    fn clear(&self) {
        if self.on {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
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
    let (scenarios, broken) = super::check::load_all(&args.paths)?;
    if broken {
        eprintln!("hil run: fix the scenario files above first (nothing was run)");
        return Ok(ExitCode::from(1));
    }
    // Refuse early and clearly when the target cannot be built at all.
    if let Some(first) = scenarios.first() {
        if let Err(e @ TargetError::Unavailable(_)) = make_target(&args.target, first) {
            return Err(e.into());
        }
    }

    let progress = Progress {
        on: std::io::stderr().is_terminal(),
        total: scenarios.len(),
    };
    let mut results: Vec<ScenarioResult> = Vec::new();
    for (i, scenario) in scenarios.iter().enumerate() {
        progress.show(i, &scenario.file.display().to_string());
        let mut factory = || make_target(&args.target, scenario);
        let result = runner::run(scenario, args.seed, &mut factory);
        progress.clear();
        for case in &result.cases {
            if let Some(failure) = &case.failure {
                println!("{failure}");
            }
            if args.trace {
                println!("{}", case.trace.render());
            }
        }
        results.push(result);
    }
    progress.clear();

    print!("{}", summary_table(&results));
    if let Some(path) = &args.junit {
        std::fs::write(path, junit(&results))
            .map_err(|e| format!("{}: cannot write the JUnit report: {e}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let value = json_report(&results, &args.target, args.seed);
        let text = serde_json::to_string_pretty(&value)?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("{}: cannot write the JSON report: {e}", path.display()))?;
    }
    let failed = results
        .iter()
        .flat_map(|r| &r.cases)
        .any(|c| c.outcome == Outcome::Fail);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
