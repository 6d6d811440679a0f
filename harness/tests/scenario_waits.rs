//! Waits are about what happens after they start: on the emulator, a wait is never satisfied
//! by the transfer that already ended, the state before the update's reset, or (unless it says
//! `from = "start"`) an event published before it.

use std::path::Path;

use harness::scenario::emulator_target::EmulatorTarget;
use harness::scenario::runner::{self, CaseResult, Outcome};
use harness::scenario::{parse, Target};

const HEAD: &str = r#"
board = "boron"
seed = 3

[firmware]
device_os = "6.2.0"
app = 3

[[step]]
do = "wait.state"
state = "online"
timeout = "1m"
"#;

/// Runs `steps` after the head (device online on app 3) on the emulator.
fn run(steps: &str) -> CaseResult {
    let text = format!("{HEAD}{steps}");
    let scenario = parse(&text, Path::new("waits.toml")).unwrap_or_else(|e| panic!("{e}"));
    let mut factory = || Ok(Box::new(EmulatorTarget::new()) as Box<dyn Target>);
    let mut result = runner::run(&scenario, None, &mut factory);
    result.cases.remove(0)
}

const FLASH_AND_BOOT: &str = r#"
[[step]]
do = "cloud.flash"
app = 4

[[step]]
do = "wait.state"
state = "running"
boot = "next"
timeout = "5m"

[[step]]
do = "expect"
running = { app = 4 }
last_reset = "update"
"#;

#[test]
fn waiting_for_the_next_boot_sees_the_new_firmware_not_the_state_before_the_reset() {
    let case = run(FLASH_AND_BOOT);
    assert_eq!(case.outcome, Outcome::Pass, "{:?}", case.failure);
    // Without `boot = "next"` the device is "running" already (app 3): the wait returns at
    // once and the expectation sees the old app. This is the trap the option removes.
    let case = run(&FLASH_AND_BOOT.replace("boot = \"next\"\n", ""));
    assert_eq!(case.outcome, Outcome::Fail);
    let failure = case.failure.unwrap();
    assert!(
        failure.message.contains("app is 3, not 4"),
        "{}",
        failure.message
    );
}

#[test]
fn a_wait_for_the_booted_new_firmware_names_its_versions() {
    let case = run(r#"
[[step]]
do = "cloud.flash"
app = 4

[[step]]
do = "wait.state"
state = "running"
running = { app = 4 }
timeout = "5m"

[[step]]
do = "expect"
last_reset = "update"
"#);
    assert_eq!(case.outcome, Outcome::Pass, "{:?}", case.failure);
}

const UPDATED_TO_4: &str = r#"
[[step]]
do = "cloud.flash"
app = 4

[[step]]
do = "wait.state"
state = "running"
running = { app = 4 }
timeout = "5m"
"#;

#[test]
fn a_finished_transfer_never_satisfies_a_later_wait_ota() {
    let case = run(&format!(
        "{UPDATED_TO_4}\n[[step]]\ndo = \"wait.ota\"\nmin_percent = 50\ntimeout = \"1m\"\n"
    ));
    assert_eq!(
        case.outcome,
        Outcome::Fail,
        "the finished transfer satisfied the wait"
    );
    let failure = case.failure.unwrap();
    assert_eq!(failure.step, Some(4));
    assert!(
        failure.message.contains("not reached within 1m"),
        "{}",
        failure.message
    );
}

#[test]
fn wait_ota_for_the_next_transfer_is_satisfied_by_a_new_one() {
    let case = run(&format!(
        "{UPDATED_TO_4}\n[[step]]\ndo = \"cloud.flash\"\napp = 5\n\n[[step]]\ndo = \"wait.ota\"\nmin_percent = 50\ntransfer = \"next\"\ntimeout = \"2m\"\n\n[[step]]\ndo = \"expect\"\nrunning = {{ app = 4 }}\n"
    ));
    assert_eq!(case.outcome, Outcome::Pass, "{:?}", case.failure);
}

#[test]
fn wait_event_reads_from_its_cursor_from_the_step_or_from_the_start() {
    // `spark/status online` was published during the head's wait for "online".
    let consumed = r#"
[[step]]
do = "wait.event"
name = "spark/status"
data = "online"
timeout = "1m"
"#;
    // From the cursor (the default): the first wait matches the head's event...
    assert_eq!(run(consumed).outcome, Outcome::Pass);
    // ...and a second one finds nothing newer.
    let twice = format!("{consumed}{}", consumed.replace("\"1m\"", "\"10s\""));
    let case = run(&twice);
    assert_eq!(case.outcome, Outcome::Fail);
    assert_eq!(case.failure.unwrap().step, Some(3));
    // `from = "start"` matches it again, as often as asked.
    let again = format!(
        "{consumed}{}",
        consumed.replace("timeout = \"1m\"", "from = \"start\"\ntimeout = \"10s\"")
    );
    assert_eq!(run(&again).outcome, Outcome::Pass);
    // `from = "step"`: only what is published after the step starts.
    let fresh = consumed.replace("timeout = \"1m\"", "from = \"step\"\ntimeout = \"10s\"");
    let case = run(&fresh);
    assert_eq!(
        case.outcome,
        Outcome::Fail,
        "an event from before the step matched"
    );
}

#[test]
fn wait_ota_for_the_next_transfer_ignores_the_one_already_running() {
    let steps = r#"
[[step]]
do = "link.faults"
bandwidth = "2 KiB/s"

[[step]]
do = "cloud.flash"
app = 4

[[step]]
do = "wait.ota"
min_percent = 10
timeout = "1m"

[[step]]
do = "wait.ota"
min_percent = 20
timeout = "1m"
"#;
    // The running transfer goes on past 20 %: `current` (the default) is satisfied...
    assert_eq!(run(steps).outcome, Outcome::Pass);
    // ...`next` is not: no other transfer begins.
    let case = run(&format!("{steps}transfer = \"next\"\n"));
    assert_eq!(case.outcome, Outcome::Fail);
    assert_eq!(case.failure.unwrap().step, Some(5));
}

#[test]
fn expectations_count_transfers_since_boot_and_tell_resumed_from_handshaken_sessions() {
    // The first connection after power-on is a full handshake; nothing transferred yet.
    let case =
        run("\n[[step]]\ndo = \"expect\"\nsession = \"handshake\"\ntransfers_since_boot = 0\n");
    assert_eq!(case.outcome, Outcome::Pass, "{:?}", case.failure);
    let case = run("\n[[step]]\ndo = \"expect\"\nsession = \"resumed\"\n");
    assert_eq!(case.outcome, Outcome::Fail);
    assert!(case
        .failure
        .unwrap()
        .message
        .contains("made a full handshake"));

    // After the update's reset: the session resumed, no transfer since that boot; a second
    // flash begins one.
    let after = format!("{UPDATED_TO_4}\n[[step]]\ndo = \"expect\"\nsession = \"resumed\"\ntransfers_since_boot = 0\n");
    // Right after the reset the device is still re-connecting: no session to judge.
    let case = run(&after);
    assert_eq!(case.outcome, Outcome::Fail);
    assert!(case.failure.unwrap().message.contains("not connected now"));
    let after = after.replace(
        "[[step]]\ndo = \"expect\"",
        "[[step]]\ndo = \"wait.state\"\nstate = \"online\"\n\n[[step]]\ndo = \"expect\"",
    );
    assert_eq!(run(&after).outcome, Outcome::Pass);
    let again = format!(
        "{after}\n[[step]]\ndo = \"cloud.flash\"\napp = 5\n\n[[step]]\ndo = \"wait.ota\"\nmin_percent = 10\ntimeout = \"1m\"\n\n[[step]]\ndo = \"expect\"\ntransfers_since_boot = 0\n"
    );
    let case = run(&again);
    assert_eq!(case.outcome, Outcome::Fail);
    assert!(case
        .failure
        .unwrap()
        .message
        .contains("1 transfers began since the current boot"));
}
