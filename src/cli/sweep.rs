//! `hil sweep`: the power-cut sweep over the embedded emulator.

use std::process::ExitCode;

use clap::{Args, ValueEnum};
use emulator::board::Board;
use emulator::firmware::ModuleSizes;
use emulator::flash::CutMode;
use harness::cases::SweepCaseKind;
use harness::sweep::{sweep, SweepConfig};

use super::progress::Progress;
use super::CliResult;

#[derive(Args)]
pub struct SweepArgs {
    /// Built-in board name.
    #[arg(long, default_value = "boron")]
    board: String,
    /// Which update to sweep (default: all but system-part).
    #[arg(long, value_enum)]
    case: Option<CaseArg>,
    /// Cut modes to use (default: all three).
    #[arg(long, value_enum, value_delimiter = ',')]
    modes: Vec<ModeArg>,
    /// Further cuts during the recovery boots after the first cut.
    #[arg(long, default_value_t = 0)]
    extra_cuts: u32,
    /// Seed for torn writes and further cut points; printed with every failure.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Replay a single cut point: the flash operation number a failure printed.
    #[arg(long)]
    op: Option<u64>,
    /// Size of the user part image in KiB.
    #[arg(long, default_value_t = 24)]
    user_kib: u32,
    /// Size of the system part image in KiB.
    #[arg(long, default_value_t = 32)]
    system_kib: u32,
    /// Threads to spread the cut points over (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum CaseArg {
    UserPart,
    CompressedUserPart,
    Combined,
    Bootloader,
    SystemPart,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Before,
    Torn,
    After,
}

impl From<CaseArg> for SweepCaseKind {
    fn from(c: CaseArg) -> Self {
        match c {
            CaseArg::UserPart => SweepCaseKind::UserPart,
            CaseArg::CompressedUserPart => SweepCaseKind::CompressedUserPart,
            CaseArg::Combined => SweepCaseKind::CombinedSystemAndUser,
            CaseArg::Bootloader => SweepCaseKind::Bootloader,
            CaseArg::SystemPart => SweepCaseKind::SystemPart,
        }
    }
}

pub fn run(args: SweepArgs) -> CliResult {
    let board = Board::builtin(&args.board)?;
    let kinds: Vec<SweepCaseKind> = match args.case {
        Some(c) => vec![c.into()],
        None => SweepCaseKind::ALL.to_vec(),
    };
    let modes = if args.modes.is_empty() {
        vec![CutMode::Before, CutMode::Torn, CutMode::After]
    } else {
        args.modes
            .iter()
            .map(|m| match m {
                ModeArg::Before => CutMode::Before,
                ModeArg::Torn => CutMode::Torn,
                ModeArg::After => CutMode::After,
            })
            .collect()
    };
    let config = SweepConfig {
        modes,
        extra_cuts: args.extra_cuts,
        seed: args.seed,
        only_op: args.op,
        threads: args.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
    };
    let sizes = ModuleSizes {
        user_part: args.user_kib.saturating_mul(1024),
        system_part: args.system_kib.saturating_mul(1024),
        ..ModuleSizes::default()
    };

    let mut failed = false;
    let mut json = Vec::new();
    if !args.json {
        println!(
            "{:<34} {:>9} {:>7} {:>7} {:>7} {:>8} {:>8}",
            "case", "flash ops", "commit", "runs", "cuts", "boots", "failures"
        );
    }
    let progress = Progress::new("hil sweep", kinds.len() as u64);
    for (i, kind) in kinds.into_iter().enumerate() {
        let case = harness::cases::build(&board, kind, &sizes, config.seed)?;
        progress.start(
            i as u64,
            &format!("{}: a cut at every flash operation", case.name),
        );
        let report = sweep(&case, &config)?;
        failed |= !report.failures.is_empty();
        if args.json {
            json.push(serde_json::json!({
                "case": report.case,
                "board": board.name,
                "window_ops": report.window.1 - report.window.0,
                "commit_ops": report.commit_ops,
                "runs": report.runs,
                "cuts": report.cuts,
                "boots": report.boots,
                "old_kept": report.old_kept,
                "seed": config.seed,
                "failures": report.failures.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            }));
        } else {
            progress.println(&format!(
                "{:<34} {:>9} {:>7} {:>7} {:>7} {:>8} {:>8}",
                report.case,
                report.window.1 - report.window.0,
                report.commit_ops,
                report.runs,
                report.cuts,
                report.boots,
                report.failures.len()
            ));
            for f in report.failures.iter().take(20) {
                progress.println(&format!("  FAIL {f}"));
            }
        }
    }
    progress.finish();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
