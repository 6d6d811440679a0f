//! The full power-cut sweep on small images, in `cargo test`: every flash operation from
//! "slot committed" to "new firmware running", in every cut mode, for the four standard
//! updates, on an nRF52840 board and an rtl872x board.

use emulator::board::{Board, RegionKind};
use emulator::firmware::ModuleSizes;
use emulator::flash::CutMode;
use harness::cases::{build, SweepCaseKind};
use harness::sweep::{sweep, SweepConfig, SweepReport};
use rstest::rstest;

fn small() -> ModuleSizes {
    ModuleSizes {
        user_part: 8 * 1024,
        system_part: 12 * 1024,
        bootloader: 8 * 1024,
        other: 4096,
    }
}

fn run(board: &str, kind: SweepCaseKind, config: &SweepConfig) -> SweepReport {
    let board = Board::builtin(board).unwrap();
    let case = build(&board, kind, &small(), config.seed).unwrap();
    let report = sweep(&case, config).unwrap();
    let failures: Vec<String> = report.failures.iter().map(|f| f.to_string()).collect();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    report
}

#[rstest]
fn every_power_cut_of_an_update_leaves_a_device_running_old_or_new_firmware(
    #[values("boron", "p2")] board: &str,
    #[values(
        SweepCaseKind::UserPart,
        SweepCaseKind::CompressedUserPart,
        SweepCaseKind::CombinedSystemAndUser,
        SweepCaseKind::Bootloader
    )]
    kind: SweepCaseKind,
) {
    let config = SweepConfig {
        seed: 11,
        ..SweepConfig::default()
    };
    let report = run(board, kind, &config);
    let ops = report.window.1 - report.window.0;
    // The window covers the commit, the erase of the destination and the copy.
    assert!(
        ops >= 8,
        "{}: only {ops} flash operations in the window",
        report.case
    );
    assert_eq!(report.runs, ops * 3, "one run per operation and mode");
    assert_eq!(report.cuts, report.runs, "every run was cut exactly once");
    // A cut before the commit's write keeps the old firmware; that must have happened.
    assert!(
        report.old_kept >= 1,
        "{}: no run kept the old firmware",
        report.case
    );
}

#[test]
fn repeated_cuts_during_recovery_still_end_with_the_new_firmware() {
    let config = SweepConfig {
        seed: 3,
        extra_cuts: 3,
        ..SweepConfig::default()
    };
    for kind in [
        SweepCaseKind::CombinedSystemAndUser,
        SweepCaseKind::Bootloader,
    ] {
        let report = run("tracker", kind, &config);
        assert!(
            report.cuts > report.runs,
            "{}: recovery boots were cut too",
            report.case
        );
    }
}

#[test]
fn torn_cuts_under_many_seeds_never_leave_a_half_written_module_reported_valid() {
    for seed in 0..6 {
        let config = SweepConfig {
            seed,
            modes: vec![CutMode::Torn],
            extra_cuts: 1,
            ..SweepConfig::default()
        };
        run("argon", SweepCaseKind::UserPart, &config);
    }
}

#[test]
fn sweep_reports_an_update_the_bootloader_refuses_with_the_seed() {
    // Corrupt the staged image after staging: every cut after the commit must now report that
    // the committed update did not run, naming the seed to replay it.
    let board = Board::builtin("boron").unwrap();
    let mut case = build(&board, SweepCaseKind::UserPart, &small(), 5).unwrap();
    let staging = board.region(RegionKind::OtaStaging).unwrap().clone();
    let chip = board.flash_chip(staging.chip);
    let addr = staging.start + 4096;
    let mut word = case.device.flash().read_vec(chip, addr, 4).unwrap();
    let i = word.iter().position(|b| *b != 0).unwrap();
    word[i] &= word[i] - 1;
    case.device.flash_mut().program(chip, addr, &word).unwrap();

    let err = sweep(
        &case,
        &SweepConfig {
            seed: 5,
            ..SweepConfig::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("new firmware does not run"),
        "{err}"
    );
}

#[test]
fn the_report_does_not_depend_on_the_thread_count() {
    let board = Board::builtin("boron").unwrap();
    for kind in [SweepCaseKind::CompressedUserPart, SweepCaseKind::Bootloader] {
        let case = build(&board, kind, &small(), 4).unwrap();
        let report = |threads| {
            let config = SweepConfig {
                seed: 4,
                extra_cuts: 2,
                threads,
                ..SweepConfig::default()
            };
            let r = sweep(&case, &config).unwrap();
            (
                r.window,
                r.commit_ops,
                r.runs,
                r.cuts,
                r.boots,
                r.old_kept,
                r.failures,
            )
        };
        assert_eq!(report(1), report(3), "{kind:?}");
    }
}
