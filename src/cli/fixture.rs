//! `hil fixture`: makes scenario fixtures; `from-events` turns a field device's saved event
//! stream into a scenario skeleton for `fixtures/field/`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use harness::scenario::field::{parse_events, skeleton};

use super::CliResult;

#[derive(Subcommand)]
pub enum FixtureCommand {
    /// Turn a saved Particle event stream (SSE text, or `particle subscribe` output) into a
    /// scenario skeleton with the facts of the report.
    FromEvents {
        /// The saved stream.
        file: PathBuf,
        /// The device's Device OS serial log (`0000012345 [comm.ota] INFO: ...` lines) over the
        /// same time: boots, transfers (resumed or not), sessions, disconnects are added.
        #[arg(long)]
        log: Option<PathBuf>,
        /// Write the skeleton here (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Shrink a failing scenario (against the embedded emulator) while the same failure
    /// (also spelled `minimize`)
    /// remains: steps dropped the way delta debugging does, then durations, timeouts, repeat
    /// counts and sizes halved and devices no step needs removed. Writes the smallest one.
    #[command(alias = "minimize")]
    Minimise {
        /// The failing scenario file.
        file: PathBuf,
        /// The seed to replay (default: the file's).
        #[arg(long)]
        seed: Option<u64>,
        /// Write the minimised scenario here (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

pub fn run(cmd: FixtureCommand) -> CliResult {
    match cmd {
        FixtureCommand::Minimise { file, seed, output } => {
            use harness::scenario::emulator_target::EmulatorTarget;
            use harness::scenario::minimise::{minimise, signature};
            use harness::scenario::{runner, Target};
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("{}: cannot read the file: {e}", file.display()))?;
            let mut run = |s: &harness::scenario::Scenario| {
                let mut factory = || Ok(Box::new(EmulatorTarget::new()) as Box<dyn Target>);
                signature(&runner::run(s, seed, &mut factory))
            };
            let m = minimise(&text, &file, &mut run)?;
            eprintln!(
                "{}: {} of {} steps kept after {} runs; failure kept: {}",
                file.display(),
                m.steps_after,
                m.steps_before,
                m.runs,
                m.failure
            );
            match output {
                Some(path) => {
                    std::fs::write(&path, &m.text)
                        .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{}", m.text),
            }
            Ok(ExitCode::SUCCESS)
        }
        FixtureCommand::FromEvents { file, log, output } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("{}: cannot read the file: {e}", file.display()))?;
            let (events, form) = parse_events(&text, &file)?;
            let source = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| file.display().to_string());
            let mut toml = skeleton(&events, form, &source);
            if let Some(log) = &log {
                use harness::scenario::serial_log::{add_to_skeleton, facts, parse_serial_log};
                let text = std::fs::read_to_string(log)
                    .map_err(|e| format!("{}: cannot read the file: {e}", log.display()))?;
                let (lines, skipped) = parse_serial_log(&text, log)?;
                let name = log
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| log.display().to_string());
                toml = add_to_skeleton(&toml, &facts(&lines), &name, skipped);
            }
            // The skeleton must be a valid scenario; a failure here is a bug in the generator.
            if let Err(e) = harness::scenario::parse(&toml, &PathBuf::from("(skeleton)")) {
                return Err(format!("the generated skeleton does not parse ({e}); please report this with the capture").into());
            }
            match output {
                Some(path) => {
                    std::fs::write(&path, &toml)
                        .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
                    eprintln!(
                        "wrote {} ({} events read, {})",
                        path.display(),
                        events.len(),
                        form.as_str()
                    );
                }
                None => print!("{toml}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
