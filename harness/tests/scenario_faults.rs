//! Faults aimed at one direction of a device's link, and the trace lines that show what each
//! fault did to which datagram.

use std::path::Path;

use harness::scenario::emulator_target::EmulatorTarget;
use harness::scenario::runner::{self, CaseResult};
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

fn run(steps: &str) -> CaseResult {
    let text = format!("{HEAD}{steps}");
    let scenario = parse(&text, Path::new("faults.toml")).unwrap_or_else(|e| panic!("{e}"));
    let mut factory = || Ok(Box::new(EmulatorTarget::new()) as Box<dyn Target>);
    runner::run(&scenario, None, &mut factory).cases.remove(0)
}

fn fault_lines(case: &CaseResult) -> Vec<String> {
    case.trace
        .render()
        .lines()
        .filter(|l| l.contains(" fault ") && l.contains("datagram") && l.contains("dropped"))
        .map(str::to_string)
        .collect()
}

#[test]
fn dropping_the_devices_next_message_leaves_the_other_direction_alone() {
    // The device's event saying updates are disabled is lost once (it is resent).
    let case = run(
        "\n[[step]]\ndo = \"link.drop\"\nnext = 1\ndirection = \"to_cloud\"\n\n[[step]]\ndo = \"app.disable_updates\"\n\n[[step]]\ndo = \"wait.time\"\nduration = \"30s\"\n",
    );
    let lines = fault_lines(&case);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("datagram to the cloud dropped (link.drop)"),
        "{lines:?}"
    );
    // The retransmission got through: the cloud heard it.
    assert!(case
        .trace
        .render()
        .contains("event device particle/device/updates/enabled \"false\""));
}

#[test]
fn a_lossy_direction_to_the_device_drops_only_what_the_cloud_sends() {
    let case = run(
        "\n[[step]]\ndo = \"link.faults\"\nloss = 1.0\ndirection = \"to_device\"\n\n[[step]]\ndo = \"wait.time\"\nduration = \"2m\"\n",
    );
    let lines = fault_lines(&case);
    assert!(!lines.is_empty());
    assert!(
        lines
            .iter()
            .all(|l| l.contains("datagram") && l.contains("to the device dropped (loss)")),
        "{lines:?}"
    );
}
