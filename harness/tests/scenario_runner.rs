//! The runner's semantics, pinned with a scripted test double (not the emulator): traces,
//! waits, skips with reasons, failure reports, sweeps.

mod scenario_double;

use std::path::Path;
use std::time::Duration;

use harness::scenario::runner::{self, Outcome};
use harness::scenario::target::FirmwareIntegrity;
use harness::scenario::{parse, Capability, CutPoint, Phase, Scenario, Step, Target, TargetError};
use scenario_double::{Calls, ScriptedTarget};

const FLASH: &str = r#"
name = "app update v3 to v4"
board = "boron"
seed = 7

[firmware]
device_os = "6.2.0"
app = 3

[[step]]
do = "wait.state"
state = "online"
timeout = "1m"

[[step]]
do = "cloud.flash"
app = 4

[[step]]
do = "wait.event"
name = "spark/flash/status"
data = "success"
timeout = "5m"

[[step]]
do = "wait.event"
name = "spark/device/last_reset"
data = "update"

[[step]]
do = "expect"
running = { app = 4, device_os = "6.2.0" }
events = [
  { name = "spark/flash/status", data = "started" },
  { name = "spark/flash/status", data = "success" },
  "spark/device/last_reset",
]
nothing_lost = true

[expect]
online = true
last_reset = "update"
"#;

fn scenario(text: &str) -> Scenario {
    match parse(text, Path::new("fixtures/test.toml")) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

fn run_with(
    s: &Scenario,
    seed: Option<u64>,
    make: impl Fn(Calls) -> ScriptedTarget,
) -> (runner::ScenarioResult, Calls) {
    let calls = Calls::default();
    let c = calls.clone();
    let mut factory =
        move || -> Result<Box<dyn Target>, TargetError> { Ok(Box::new(make(c.clone()))) };
    (runner::run(s, seed, &mut factory), calls)
}

#[test]
fn a_flash_scenario_passes_and_its_trace_is_stable() {
    let s = scenario(FLASH);
    let (result, calls) = run_with(&s, None, ScriptedTarget::full);
    assert_eq!(result.cases.len(), 1);
    let case = &result.cases[0];
    assert_eq!(case.outcome, Outcome::Pass, "{:?}", case.failure);
    assert_eq!(case.duration, Duration::from_millis(13_100));
    assert!(calls.borrow().contains(&"setup boron seed=7".to_string()));
    assert!(calls.borrow().contains(&"inspect_firmware".to_string()));
    insta::assert_snapshot!(case.trace.render());
    // Same scenario, same seed: the same trace.
    let (again, _) = run_with(&s, None, ScriptedTarget::full);
    assert_eq!(again.cases[0].trace, case.trace);
}

#[test]
fn the_command_line_seed_overrides_the_files() {
    let s = scenario(FLASH);
    let (result, calls) = run_with(&s, Some(99), ScriptedTarget::full);
    assert_eq!(result.seed, 99);
    assert!(calls.borrow().contains(&"setup boron seed=99".to_string()));
    assert!(result.cases[0]
        .trace
        .header
        .contains(&"seed 99".to_string()));
}

#[test]
fn a_step_the_target_cannot_do_is_skipped_with_the_reason_and_so_is_everything_after() {
    let text = FLASH.replace(
        "[[step]]\ndo = \"cloud.flash\"",
        "[[step]]\ndo = \"power.cut\"\nchunk = 3\nmode = \"torn\"\n\n[[step]]\ndo = \"cloud.flash\"",
    );
    let s = scenario(&text);
    let board_like = |calls| {
        ScriptedTarget::new(
            Capability::ALL
                .into_iter()
                .filter(|c| *c != Capability::PowerCutAtChunk),
            calls,
        )
    };
    let (result, calls) = run_with(&s, None, board_like);
    let case = &result.cases[0];
    assert_eq!(case.outcome, Outcome::Skip);
    assert!(case.failure.is_none());
    // The power cut, the four steps after it and the two final expectations.
    assert_eq!(case.skipped.len(), 7, "{:#?}", case.skipped);
    assert_eq!(case.skipped[0].step, Some(2));
    assert_eq!(
        case.skipped[0].reason,
        "target double cannot: power-cut-at-chunk"
    );
    assert!(case.skipped[1]
        .reason
        .starts_with("after skipped step 2: target double cannot: power-cut-at-chunk"));
    assert_eq!(case.skipped[6].step, None);
    // Nothing after the skipped step reached the target.
    assert!(!calls.borrow().iter().any(|c| c.starts_with("cloud.flash")));
    assert!(case.reason().contains("power-cut-at-chunk"));
    insta::assert_snapshot!(case.trace.render());
}

#[test]
fn an_expectation_the_target_cannot_check_skips_only_itself() {
    let s = scenario(FLASH);
    let no_flash_reading = |calls| {
        ScriptedTarget::new(
            Capability::ALL
                .into_iter()
                .filter(|c| *c != Capability::FlashInspection),
            calls,
        )
    };
    let (result, calls) = run_with(&s, None, no_flash_reading);
    let case = &result.cases[0];
    assert_eq!(case.outcome, Outcome::Skip);
    assert_eq!(case.skipped.len(), 1);
    assert_eq!(case.skipped[0].text, "nothing_lost");
    assert_eq!(
        case.skipped[0].reason,
        "target double cannot: flash-inspection"
    );
    assert!(!calls.borrow().contains(&"inspect_firmware".to_string()));
    // The other expectations of the step and the final ones were checked.
    let checked = case
        .trace
        .lines()
        .iter()
        .filter(|l| l.contains(" ok "))
        .count();
    assert_eq!(checked, 4);
}

#[test]
fn a_set_up_the_target_cannot_establish_skips_the_whole_case() {
    let text = FLASH.replace("app = 3\n", "app = 3\n\n[app]\nupdates_enabled = false\n");
    let s = scenario(&text);
    let no_app = |calls| {
        ScriptedTarget::new(
            Capability::ALL
                .into_iter()
                .filter(|c| *c != Capability::AppControl),
            calls,
        )
    };
    let (result, calls) = run_with(&s, None, no_app);
    let case = &result.cases[0];
    assert_eq!(case.outcome, Outcome::Skip);
    assert_eq!(case.skipped[0].text, "set-up");
    assert_eq!(case.skipped[0].reason, "target double cannot: app-control");
    assert!(calls.borrow().is_empty(), "{:?}", calls.borrow());
}

#[test]
fn a_failure_names_the_file_step_seed_and_last_trace_lines() {
    let text = FLASH.replace("running = { app = 4,", "running = { app = 5,");
    let s = scenario(&text);
    let (result, _) = run_with(&s, None, ScriptedTarget::full);
    assert!(result.failed());
    let case = &result.cases[0];
    assert_eq!(case.outcome, Outcome::Fail);
    let failure = case.failure.as_ref().unwrap();
    assert_eq!(failure.step, Some(5));
    assert_eq!(failure.at, Some((30, 1)));
    assert_eq!(failure.seed, 7);
    assert!(failure.last_lines.len() <= runner::FAILURE_TRACE_LINES);
    assert_eq!(
        failure.last_lines.last().map(String::as_str),
        Some("  13.100s  ok step 5: nothing_lost")
    );
    insta::assert_snapshot!(failure.to_string());
}

#[test]
fn a_wait_that_times_out_fails_with_what_it_waited_for() {
    let text = FLASH.replace(
        "data = \"success\"\ntimeout = \"5m\"",
        "data = \"failed\"\ntimeout = \"2m\"",
    );
    let s = scenario(&text);
    let (result, _) = run_with(&s, None, ScriptedTarget::full);
    let failure = result.cases[0].failure.as_ref().unwrap();
    assert_eq!(failure.step, Some(3));
    assert_eq!(
        failure.message,
        "event spark/flash/status=\"failed\" not reached within 2m (waited from 1.500s to 121.500s)"
    );
}

#[test]
fn waits_consume_events_in_order() {
    // The second wait for "online" must not match the first online event again.
    let text = r#"
board = "boron"
[firmware]
device_os = "6.2.0"
app = 3
[[step]]
do = "wait.event"
name = "spark/status"
data = "online"
[[step]]
do = "cloud.flash"
app = 4
[[step]]
do = "wait.event"
name = "spark/status"
data = "online"
[[step]]
do = "expect"
running = { app = 4 }
"#;
    let (result, _) = run_with(&scenario(text), None, ScriptedTarget::full);
    assert_eq!(
        result.cases[0].outcome,
        Outcome::Pass,
        "{:?}",
        result.cases[0].failure
    );
    assert_eq!(
        result.cases[0].duration,
        Duration::from_millis(1500 + 11_500)
    );
}

#[test]
fn a_target_that_makes_no_progress_fails_instead_of_hanging() {
    let s = scenario(FLASH);
    let frozen = |calls| {
        let mut t = ScriptedTarget::full(calls);
        t.frozen = true;
        t
    };
    let (result, _) = run_with(&s, None, frozen);
    let failure = result.cases[0].failure.as_ref().unwrap();
    assert!(
        failure.message.contains("made no progress"),
        "{}",
        failure.message
    );
}

#[test]
fn a_target_that_cannot_be_made_fails_the_case_with_why() {
    let s = scenario(FLASH);
    let mut factory = || -> Result<Box<dyn Target>, TargetError> {
        Err(TargetError::Unavailable(
            "target emulator is not available yet".into(),
        ))
    };
    let result = runner::run(&s, None, &mut factory);
    let failure = result.cases[0].failure.as_ref().unwrap();
    assert_eq!(
        failure.message,
        "no target: target emulator is not available yet"
    );
}

#[test]
fn a_lost_firmware_fails_nothing_lost() {
    let s = scenario(FLASH);
    let broken = |calls| {
        let mut t = ScriptedTarget::full(calls);
        t.integrity = FirmwareIntegrity::Lost {
            detail: "user part half old, half new".into(),
        };
        t
    };
    let (result, _) = run_with(&s, None, broken);
    let failure = result.cases[0].failure.as_ref().unwrap();
    assert_eq!(
        failure.message,
        "expected nothing_lost: firmware lost: user part half old, half new"
    );
}

const SWEEP: &str = r#"
name = "power loss at every flash operation of the apply"
board = "boron"
[firmware]
device_os = "6.2.0"
app = 3
[[step]]
do = "cloud.flash"
app = 4
[[step]]
do = "sweep"
phase = "apply"
modes = ["before", "torn"]
off_for = "2s"
[[step]]
do = "wait.event"
name = "spark/device/last_reset"
[[step]]
do = "expect"
nothing_lost = true
"#;

#[test]
fn a_sweep_expands_into_one_case_per_operation_and_mode() {
    let s = scenario(SWEEP);
    let cases = runner::sweep_cases(&s, 3);
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "sweep apply op 0 before",
            "sweep apply op 0 torn",
            "sweep apply op 1 before",
            "sweep apply op 1 torn",
            "sweep apply op 2 before",
            "sweep apply op 2 torn",
        ]
    );
    let cut = &cases[3].steps[1];
    assert_eq!(cut.index, 2);
    match &cut.step {
        Step::Action(harness::scenario::Action::PowerCut(c)) => {
            assert_eq!(
                c.at,
                CutPoint::Phase {
                    phase: Phase::Apply,
                    op: 1
                }
            );
            assert_eq!(c.off_for, Some(Duration::from_secs(2)));
        }
        other => panic!("{other:?}"),
    }
    // The clean run leaves the sweep step out.
    let clean = runner::main_case(&s);
    assert_eq!(clean.name, "clean");
    assert_eq!(clean.steps.len(), 3);
    assert_eq!(clean.steps[1].index, 3);
}

#[test]
fn a_sweep_runs_the_clean_case_then_every_cut() {
    let s = scenario(SWEEP);
    let (result, calls) = run_with(&s, None, ScriptedTarget::full);
    let names: Vec<&str> = result.cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "clean",
            "sweep apply op 0 before",
            "sweep apply op 0 torn",
            "sweep apply op 1 before",
            "sweep apply op 1 torn",
        ]
    );
    assert!(result.cases.iter().all(|c| c.outcome == Outcome::Pass));
    let calls = calls.borrow();
    assert_eq!(calls.iter().filter(|c| c.starts_with("setup")).count(), 5);
    assert!(calls.contains(&"phase_ops apply".to_string()));
    assert!(calls.contains(&"power.cut phase=apply op=1 mode=torn off_for=2s".to_string()));
}

#[test]
fn a_sweep_on_a_target_without_precise_cuts_is_reported_skipped() {
    let s = scenario(SWEEP);
    let relay_only = |calls| {
        ScriptedTarget::new(
            Capability::ALL
                .into_iter()
                .filter(|c| *c != Capability::PowerCutAtFlashOp),
            calls,
        )
    };
    let (result, _) = run_with(&s, None, relay_only);
    assert_eq!(result.cases.len(), 2);
    assert_eq!(result.cases[0].outcome, Outcome::Pass);
    assert_eq!(result.cases[1].name, "sweep apply");
    assert_eq!(result.cases[1].outcome, Outcome::Skip);
    assert_eq!(
        result.cases[1].skipped[0].reason,
        "target double cannot: power-cut-at-flash-op"
    );
}

#[test]
fn a_sweep_whose_phase_never_ran_fails() {
    let s = scenario(SWEEP);
    let no_ops = |calls| {
        let mut t = ScriptedTarget::full(calls);
        t.phase_ops = None;
        t
    };
    let (result, _) = run_with(&s, None, no_ops);
    assert_eq!(result.cases[1].outcome, Outcome::Fail);
    assert_eq!(
        result.cases[1].failure.as_ref().unwrap().message,
        "phase apply did not run in the clean run: no flash operation to cut at"
    );
}

const REPEAT_HEAD: &str = r#"
board = "boron"
seed = 7

[firmware]
device_os = "6.2.0"
app = 3
"#;

#[test]
fn a_repeat_runs_its_steps_exactly_the_number_of_times_and_the_trace_counts_them() {
    let s = scenario(&format!(
        "{REPEAT_HEAD}\n[[step]]\ndo = \"repeat\"\ntimes = 3\nsteps = [{{ do = \"app.disable_updates\" }}, {{ do = \"wait.time\", duration = \"1h\" }}]\n"
    ));
    let (result, calls) = run_with(&s, None, ScriptedTarget::full);
    let case = &result.cases[0];
    assert_eq!(case.outcome, Outcome::Pass, "{:?}", case.failure);
    let applied = calls
        .borrow()
        .iter()
        .filter(|c| c.as_str() == "app.disable_updates")
        .count();
    assert_eq!(applied, 3);
    assert_eq!(case.duration, Duration::from_secs(3 * 3600));
    let text = case.trace.render();
    assert!(text.contains("iteration 3 of at most 3"), "{text}");
    assert!(text.contains("3 iterations done"), "{text}");
    assert!(!text.contains("iteration 4"), "{text}");
}

#[test]
fn a_repeat_until_stops_when_the_condition_holds_and_fails_when_it_never_does() {
    // The double runs app 3 from the start: the condition holds before the first iteration.
    let s = scenario(&format!(
        "{REPEAT_HEAD}\n[[step]]\ndo = \"repeat\"\nuntil = {{ running = {{ app = 3 }} }}\nmax = 5\nsteps = [{{ do = \"wait.time\", duration = \"1h\" }}]\n"
    ));
    let (result, _) = run_with(&s, None, ScriptedTarget::full);
    let case = &result.cases[0];
    assert_eq!(case.outcome, Outcome::Pass, "{:?}", case.failure);
    assert_eq!(case.duration, Duration::ZERO);
    assert!(case
        .trace
        .render()
        .contains("condition met after 0 iterations"));

    // App 9 never arrives: five iterations, then a failure that says so.
    let s = scenario(&format!(
        "{REPEAT_HEAD}\n[[step]]\ndo = \"repeat\"\nuntil = {{ running = {{ app = 9 }} }}\nmax = 5\nsteps = [{{ do = \"wait.time\", duration = \"1h\" }}]\n"
    ));
    let (result, _) = run_with(&s, None, ScriptedTarget::full);
    let case = &result.cases[0];
    assert_eq!(case.outcome, Outcome::Fail);
    let failure = case.failure.as_ref().unwrap();
    assert_eq!(failure.step, Some(1));
    assert!(
        failure
            .message
            .starts_with("repeat: the condition still does not hold after 5 iterations"),
        "{}",
        failure.message
    );
    assert_eq!(case.duration, Duration::from_secs(5 * 3600));
}
