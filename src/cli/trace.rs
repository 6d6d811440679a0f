//! `hil trace diff A.json B.json`: how alike two runs of the same scenarios are (the JSON
//! reports of `hil run --json` and `hil rack run --json`), as differences and a score
//! (`harness::scenario::diff`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::CliResult;

#[derive(Subcommand)]
pub enum TraceCommand {
    /// Compare the traces of two reports: events, power, boots, resets and OTA milestones,
    /// aligned by order (times are not compared). Prints what differs per case and a score
    /// (1.000 = identical). Exit 0 no difference, 1 differences, 2 unreadable reports.
    Diff {
        /// The first report (e.g. `hil run --json` on the emulator).
        a: PathBuf,
        /// The second report (e.g. `hil rack run --json` on boards).
        b: PathBuf,
    },
}

fn read(path: &PathBuf) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the report: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))
}

pub fn run(cmd: TraceCommand) -> CliResult {
    match cmd {
        TraceCommand::Diff { a, b } => {
            let d = harness::scenario::diff::diff(&read(&a)?, &read(&b)?).map_err(|e| {
                e.replace("A:", &format!("{}:", a.display()))
                    .replace("B:", &format!("{}:", b.display()))
            })?;
            println!("{d}");
            Ok(if d.identical() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
