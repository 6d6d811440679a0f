//! The rack flow against `boards/rack.emulated.toml`: emulated boards behind pseudo-terminals
//! driven through their serial ports by board targets, with a real local cloud over UDP.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use harness::cloud::CloudEvent;

use harness::board::rack::{Rack, RackFile, RackOutcome, RackReport, RackRunOptions};
use harness::scenario::runner::Outcome;
use harness::scenario::{load, Scenario};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scenario(name: &str) -> Scenario {
    load(&root().join("boards/scenarios").join(name)).unwrap()
}

fn rack() -> Rack {
    let file = RackFile::load(&root().join("boards/rack.emulated.toml")).unwrap();
    Rack::start(&file).unwrap()
}

fn outcome(report: &RackReport, file: &str) -> String {
    let case = report
        .cases
        .iter()
        .find(|c| c.file.ends_with(file))
        .unwrap_or_else(|| panic!("no case {file}"));
    match &case.outcome {
        RackOutcome::Ran { board, result } => {
            let o: Vec<&str> = result.cases.iter().map(|c| c.outcome.as_str()).collect();
            let reasons: Vec<String> = result.cases.iter().map(|c| c.reason()).collect();
            format!("ran on {board}: {o:?} {reasons:?}")
        }
        RackOutcome::Error { why } => format!("error: {why}"),
    }
}

const BOARD_SCENARIOS: [&str; 3] = [
    "app-update.toml",
    "app-update-argon.toml",
    "deferred-reset.toml",
];

fn passed(o: &str) -> bool {
    o.contains("[\"pass\"]")
}

#[test]
fn board_scenarios_pass_on_the_emulated_rack() {
    let rack = rack();
    let report = rack.run(
        BOARD_SCENARIOS.iter().map(|f| scenario(f)).collect(),
        &RackRunOptions::default(),
    );
    for f in BOARD_SCENARIOS {
        let o = outcome(&report, f);
        assert!(passed(&o), "{f}: {o}\n{}", report.summary());
    }
    let t = report.totals();
    assert_eq!((t.passed, t.failed, t.errors), (3, 0, 0));
    assert!(report.boards.iter().all(|b| b.health.is_ok()));
    let junit = report.junit();
    assert!(junit.contains("errors=\"0\""), "{junit}");
}

/// A board stops answering on serial in the middle of a transfer: the case is an
/// infrastructure error on that board, retried on the other boron, and passes there; the argon
/// runs its scenario meanwhile.
#[test]
fn a_board_that_stops_answering_mid_scenario_is_retried_on_another() {
    let rack = rack();
    let done = AtomicBool::new(false);
    let muted = Mutex::new(None::<String>);
    let report = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let started: Option<[u8; 12]> = rack.cloud.with_node(|n, _| {
                    n.events.iter().find_map(|(_, e)| match e {
                        CloudEvent::Stream(s)
                            if s.name == "spark/flash/status" && s.data.starts_with("started") =>
                        {
                            Some(s.device_id.0)
                        }
                        _ => None,
                    })
                });
                if let Some(id) = started {
                    let board = rack
                        .boards
                        .iter()
                        .find(|b| b.entry.device_id == id)
                        .expect("a rack board");
                    if let Some(emu) = &board.emulated {
                        emu.set_mute(true);
                    }
                    *muted.lock().unwrap() = Some(board.entry.name.clone());
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let report = rack.run(
            vec![scenario("app-update.toml"), scenario("deferred-reset.toml")],
            &RackRunOptions::default(),
        );
        done.store(true, Ordering::Relaxed);
        report
    });
    let muted = muted.lock().unwrap().clone().expect("a board was muted");
    let summary = report.summary();
    let retried: Vec<_> = report
        .cases
        .iter()
        .filter(|c| !c.attempts.is_empty())
        .collect();
    assert_eq!(retried.len(), 1, "{summary}");
    let case = retried[0];
    assert_eq!(case.attempts[0].0, muted, "{summary}");
    assert!(case.attempts[0].1.contains("did not answer"), "{summary}");
    match &case.outcome {
        RackOutcome::Ran { board, result } => {
            assert_ne!(*board, muted);
            assert_eq!(result.cases[0].outcome, Outcome::Pass, "{summary}");
        }
        other => panic!("{other:?}\n{summary}"),
    }
    // The other boron scenario ran too (on the board still answering).
    let t = report.totals();
    assert_eq!((t.passed, t.failed, t.errors), (2, 0, 0), "{summary}");
    let me = report.boards.iter().find(|b| b.name == muted).unwrap();
    assert_eq!((me.infra_failures, me.quarantined), (1, false), "{summary}");
    let junit = report.junit();
    assert!(junit.contains("failures=\"0\" errors=\"0\""), "{junit}");
}

/// One boron's power switch fails and the other does not answer from the start: the boron
/// scenarios are infrastructure errors (JUnit `error`, not `failure`), the board with the
/// broken switch is quarantined after two, and the argon carries on.
#[test]
fn a_broken_power_switch_is_an_infrastructure_error_and_quarantines_the_board() {
    let mut rack = rack();
    rack.break_power("emu-boron-1", "uhubctl: port 2 not found");
    rack.emulator("emu-boron-2").unwrap().set_mute(true);
    let report = rack.run(
        vec![
            scenario("app-update.toml"),
            scenario("deferred-reset.toml"),
            scenario("app-update-argon.toml"),
        ],
        &RackRunOptions::default(),
    );
    let summary = report.summary();
    for f in ["app-update.toml", "deferred-reset.toml"] {
        let o = outcome(&report, f);
        assert!(
            o.starts_with("error: infrastructure failure"),
            "{f}: {o}\n{summary}"
        );
    }
    assert!(
        passed(&outcome(&report, "app-update-argon.toml")),
        "{summary}"
    );
    let b1 = report
        .boards
        .iter()
        .find(|b| b.name == "emu-boron-1")
        .unwrap();
    assert!(b1.quarantined && b1.infra_failures == 2, "{summary}");
    let b2 = report
        .boards
        .iter()
        .find(|b| b.name == "emu-boron-2")
        .unwrap();
    assert!(b2.health.is_err(), "{summary}");
    let junit = report.junit();
    assert!(junit.contains("failures=\"0\" errors=\"2\""), "{junit}");
    assert!(
        junit.contains("<error message=\"infrastructure failure"),
        "{junit}"
    );
    assert!(junit.contains("port 2 not found"), "{junit}");
}

/// Fidelity: the board scenarios on the in-process emulator (virtual time) and on the
/// emulated rack (serial, wall time) give the same events, power and boots, in the same order.
#[test]
fn the_emulated_rack_traces_match_the_in_process_emulator() {
    use harness::scenario::emulator_target::EmulatorTarget;
    use harness::scenario::report::json_report;
    use harness::scenario::{runner, Target, TargetError};

    // The board scenarios, and the fixture every board can run whole.
    let mut scenarios: Vec<Scenario> = BOARD_SCENARIOS.iter().map(|f| scenario(f)).collect();
    scenarios.push(load(&root().join("fixtures/forced-updates.toml")).unwrap());
    let emulated: Vec<_> = scenarios
        .iter()
        .map(|s| {
            let mut make =
                || -> Result<Box<dyn Target>, TargetError> { Ok(Box::new(EmulatorTarget::new())) };
            runner::run(s, None, &mut make)
        })
        .collect();
    let a = json_report(&emulated, "emulator", None);
    let rack = rack();
    let b = rack.run(scenarios, &RackRunOptions::default()).json();
    if std::env::var("HIL_PRINT_TRACES").is_ok() {
        println!("{}", serde_json::to_string_pretty(&b).unwrap());
    }
    let d = harness::scenario::diff::diff(&a, &b).unwrap();
    assert!(d.identical(), "{d}");
    assert_eq!(d.compared(), 4, "{d}");
    assert!(d.cases.iter().all(|c| c.a_len > 5), "{d}");
}
