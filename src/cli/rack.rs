//! `hil rack`: scenarios across a rack of boards (`boards/rack.example.toml`), or of emulated
//! boards behind pseudo-terminals (`boards/rack.emulated.toml`); `hil rack status` checks every
//! board's health.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use harness::board::rack::{Rack, RackFile, RackRunOptions};

use super::CliResult;

#[derive(Subcommand)]
pub enum RackCommand {
    /// Run scenario files on the rack's boards: one scenario per board at a time, matched by
    /// platform, health checks first, an infrastructure failure retried on another board, a
    /// board quarantined after two. Exit 0 all passed, 1 a test failed or an infrastructure
    /// error, 2 the rack could not start.
    Run(RunArgs),
    /// Check every board: serial answers in protocol version 1 as the right device, the
    /// expected Device OS, the probe attaches. Exit 1 when a board is unhealthy.
    Status {
        /// The rack file.
        #[arg(long, value_name = "FILE")]
        rack: PathBuf,
    },
}

#[derive(Args)]
pub struct RunArgs {
    /// The rack file.
    #[arg(long, value_name = "FILE")]
    rack: PathBuf,
    /// Scenario files, or folders searched recursively for *.toml.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Boards running at once (default: every healthy board).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Use only boards with this tag (repeatable: every tag).
    #[arg(long, value_name = "TAG")]
    tag: Vec<String>,
    /// Write a JUnit XML report here (infrastructure errors as <error>, test failures as
    /// <failure>).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write a JSON report (every case's trace; `hil trace diff` reads it) here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub fn run(cmd: RackCommand) -> CliResult {
    match cmd {
        RackCommand::Status { rack } => status(rack),
        RackCommand::Run(args) => run_rack(args),
    }
}

fn status(path: PathBuf) -> CliResult {
    let file = RackFile::load(&path)?;
    let rack = Rack::start(&file)?;
    let mut healthy = true;
    for (i, b) in rack.boards.iter().enumerate() {
        match rack.health(i) {
            Ok(summary) => println!("{:<16} {:<8} ok: {summary}", b.entry.name, b.entry.platform),
            Err(why) => {
                healthy = false;
                println!(
                    "{:<16} {:<8} UNHEALTHY: {why}",
                    b.entry.name, b.entry.platform
                );
            }
        }
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run_rack(args: RunArgs) -> CliResult {
    let file = RackFile::load(&args.rack)?;
    let (scenarios, broken) = super::check::load_all(&args.paths)?;
    if broken {
        eprintln!("hil rack run: fix the scenario files above first (nothing was run)");
        return Ok(ExitCode::from(1));
    }
    for (path, what) in [(&args.junit, "JUnit"), (&args.json, "JSON")] {
        if let Some(p) = path {
            std::fs::File::create(p)
                .map_err(|e| format!("{}: cannot write the {what} report: {e}", p.display()))?;
        }
    }
    let rack = Rack::start(&file)?;
    let report = rack.run(
        scenarios,
        &RackRunOptions {
            jobs: args.jobs.unwrap_or(0),
            tags: args.tag.clone(),
        },
    );
    print!("{}", report.summary());
    if let Some(p) = &args.junit {
        std::fs::write(p, report.junit())
            .map_err(|e| format!("{}: cannot write the JUnit report: {e}", p.display()))?;
    }
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&report.json())?;
        std::fs::write(p, text + "\n")
            .map_err(|e| format!("{}: cannot write the JSON report: {e}", p.display()))?;
    }
    let t = report.totals();
    Ok(if t.failed == 0 && t.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
