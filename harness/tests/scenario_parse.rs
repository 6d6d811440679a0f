//! Scenario files: every step kind and expectation parses into its typed form, and every
//! mistake is reported as file:line:column with the expected form.

use std::path::Path;
use std::time::Duration;

use emulator::flash::CutMode;
use harness::scenario::{
    parse, Action, AppAction, CutPoint, DeviceOsVersion, Expectation, FirmwareSpec, LinkAction,
    OtaProgress, Phase, Step, Wait, STEP_KINDS,
};

const HEAD: &str = "board = \"boron\"\n[firmware]\ndevice_os = \"6.2.0\"\napp = 3\n";

const EVERY_STEP: &str = r#"
name = "every step"
description = "one of each"
board = "boron"
seed = 42

[firmware]
device_os = "6.2.0"
app = 3
app_module = 6
bootloader = 3100

[app]
updates_enabled = false
resets_enabled = false
system_thread = true
mode = "semi_automatic"

[[cloud.device]]
name = "dut"
id = "e00fce68ece1d3d21a73dcc9"
updates_forced = false

[[step]]
do = "cloud.flash"
app = 4
compressed = true

[[step]]
do = "cloud.flash"
device_os = "6.2.1"
app = 4
combined = true

[[step]]
do = "cloud.flash"
app = 4
platform = "argon"

[[step]]
do = "cloud.flash"
app = 4
corrupt = "crc"
size = "64KiB"

[[step]]
do = "cloud.flash"
app = 4
built_against = "6.2.0"

[[step]]
do = "cloud.flash"
app = 4
device_os = 6100
built_against = 6200
combined = true

[[step]]
do = "cloud.force_updates"
forced = true

[[step]]
do = "power.cut"

[[step]]
do = "power.cut"
flash_op = 17
mode = "torn"

[[step]]
do = "power.cut"
chunk = 10
mode = "after"
off_for = "2s"

[[step]]
do = "power.cut"
phase = "first_boot"
op = 2

[[step]]
do = "power.on"

[[step]]
do = "app.disable_updates"

[[step]]
do = "app.enable_updates"

[[step]]
do = "app.disable_reset"

[[step]]
do = "app.enable_reset"

[[step]]
do = "app.reset"
no_wait = true

[[step]]
do = "app.sleep"
mode = "ultra_low_power"
duration = "10m"
network = "standby"

[[step]]
do = "app.wake"

[[step]]
do = "link.faults"
loss = 0.2
reorder = 0.1
latency = "300ms"
jitter = "50ms"
bandwidth = "2KiB/s"

[[step]]
do = "link.drop"
next = 5

[[step]]
do = "link.partition"
duration = "45s"

[[step]]
do = "wait.event"
name = "spark/flash/status"
data = "success"
timeout = "5m"

[[step]]
do = "wait.state"
state = "reset_pending"

[[step]]
do = "wait.time"
duration = "1m30s"

[[step]]
do = "sweep"
phase = "apply"

[[step]]
do = "repeat"
times = 2
steps = [{ do = "app.wake" }, { do = "wait.time", duration = "10s" }]

[[step]]
do = "repeat"
until = { running = { app = 4 }, online = true }
max = 20
steps = [{ do = "wait.time", duration = "1h" }]

[[step]]
do = "expect"
running = { device_os = "6.2.0", app = 4, bootloader = 3100 }
safe_mode = false
online = true
last_reset = "update"
events = ["spark/status", { name = "spark/flash/status", data = "success" }]
events_absent = [{ name = "spark/flash/status", data = "failed" }]
flags = { updates_enabled = false, updates_pending = true, updates_forced = false, reset_enabled = false, reset_pending = true }
ota = { state = "complete", min_percent = 100, resumed = true, error = -1360 }
nothing_lost = true

[[step]]
do = "wait.ota"
min_percent = 40

[[step]]
do = "app.disconnect"

[[step]]
do = "app.connect"

[[step]]
do = "cloud.upload"
app = 5
built_against = "6.2.0"

[[step]]
do = "cloud.release"
version = 5
default = true
groups = ["beta"]
intelligent = true

[[step]]
do = "cloud.lock"
version = 5
flash_now = true

[[step]]
do = "cloud.unlock"

[[step]]
do = "cloud.group"
groups = ["beta", "canary"]

[[step]]
do = "cloud.development"
development = false

[[step]]
do = "cloud.product"
development = false
groups = ["beta"]
updates_forced = true

[[step]]
do = "device.reset"
reason = "watchdog"

[[step]]
do = "flash.fail"
phase = "commit"
op = 1
kind = "erase"

[[step]]
do = "link.drop_next"
kind = "ack_of_204"
count = 2
direction = "to_device"

[expect]
running = { app = 4 }

[report]
platform = "boron (13)"
observed = ["a", "b"]
"#;

#[test]
fn every_step_kind_parses_into_its_typed_form() {
    let s = parse(EVERY_STEP, Path::new("every.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.name, "every step");
    assert_eq!(s.seed, Some(42));
    assert!(!s.setup.app.updates_enabled_at_boot);
    assert_eq!(
        s.setup.cloud.devices[0].id.as_deref(),
        Some("e00fce68ece1d3d21a73dcc9")
    );
    let kinds: std::collections::BTreeSet<&str> = s.steps.iter().map(|s| s.step.kind()).collect();
    for kind in STEP_KINDS {
        assert!(kinds.contains(kind), "{kind} not covered");
    }
    // Each step prints back under its own kind (the canonical line of traces and failures).
    for step in &s.steps {
        let text = step.step.to_string();
        assert!(text.starts_with(step.step.kind()), "{text}");
    }
    assert_eq!(
        s.steps.last().map(|s| &s.step),
        Some(&Step::Action(Action::Link(LinkAction::DropNext {
            kind: harness::scenario::MessageKind::AckOf204,
            count: 2,
            direction: harness::scenario::Direction::ToDevice,
        })))
    );
    // An app built against a newer Device OS, alone and combined with another system part.
    assert_eq!(
        s.steps[4].step,
        Step::Action(Action::CloudFlash(FirmwareSpec {
            app: Some(4),
            built_against: Some(DeviceOsVersion(6200)),
            ..FirmwareSpec::default()
        }))
    );
    assert_eq!(
        s.steps[5].step,
        Step::Action(Action::CloudFlash(FirmwareSpec {
            app: Some(4),
            device_os: Some(DeviceOsVersion(6100)),
            built_against: Some(DeviceOsVersion(6200)),
            combined: true,
            ..FirmwareSpec::default()
        }))
    );
    assert_eq!(
        s.steps[8].step,
        Step::Action(Action::PowerCut(harness::scenario::PowerCut {
            at: CutPoint::FlashOp(17),
            mode: CutMode::Torn,
            off_for: None,
        }))
    );
    assert_eq!(
        s.steps[10].step,
        Step::Action(Action::PowerCut(harness::scenario::PowerCut {
            at: CutPoint::Phase {
                phase: Phase::FirstBoot,
                op: 2
            },
            mode: CutMode::Before,
            off_for: None,
        }))
    );
    assert_eq!(
        s.steps[16].step,
        Step::Action(Action::App(AppAction::Reset { no_wait: true }))
    );
    assert_eq!(
        s.steps[19].step,
        Step::Action(Action::Link(LinkAction::Faults {
            loss: 0.2,
            duplicate: 0.0,
            reorder: 0.1,
            latency: Duration::from_millis(300),
            jitter: Duration::from_millis(50),
            bandwidth: 2048,
            direction: harness::scenario::Direction::Both,
        }))
    );
    assert_eq!(
        s.steps[24].step,
        Step::Wait(Wait::Time(Duration::from_secs(90)))
    );
    let Step::Repeat(r) = &s.steps[26].step else {
        panic!("not a repeat step")
    };
    assert_eq!(r.count, harness::scenario::RepeatCount::Times(2));
    assert_eq!(r.steps.len(), 2);
    assert_eq!(
        r.steps[1].step,
        Step::Wait(Wait::Time(Duration::from_secs(10)))
    );
    let Step::Repeat(r) = &s.steps[27].step else {
        panic!("not a repeat step")
    };
    let harness::scenario::RepeatCount::Until { condition, max } = &r.count else {
        panic!("not repeat until")
    };
    assert_eq!((condition.len(), *max), (2, 20));
    let Step::Expect(list) = &s.steps[28].step else {
        panic!("not an expect step")
    };
    assert_eq!(list.len(), 9);
    assert_eq!(
        s.expect,
        vec![Expectation::Running(harness::scenario::RunningExpect {
            app: Some(4),
            ..Default::default()
        })]
    );
    assert_eq!(s.report[0], ("platform".into(), "\"boron (13)\"".into()));
    assert_eq!(s.setup.firmware.device_os, DeviceOsVersion(6200));
    // Positions of the steps are the [[step]] headers.
    assert_eq!((s.steps[0].line, s.steps[0].column), (24, 1));
    // The canonical one-line form of every step (what traces and failures print).
    let lines: Vec<String> = s
        .steps
        .iter()
        .map(|s| format!("{:>2} line {:>3}: {}", s.index, s.line, s.step))
        .collect();
    insta::assert_snapshot!(lines.join("\n"));
}

#[test]
fn steps_may_also_be_written_inline() {
    // An array of inline tables is the same TOML as [[step]] tables (it must come before the
    // first [table] header, or it would belong to that table).
    let text = "board = \"boron\"\nstep = [\n  { do = \"cloud.flash\", app = 4 },\n  { do = \"wait.event\", name = \"spark/flash/status\", data = \"success\" },\n]\n[firmware]\ndevice_os = \"6.2.0\"\napp = 3\n";
    let s = parse(text, Path::new("inline.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.steps.len(), 2);
    assert_eq!((s.steps[1].line, s.steps[1].column), (4, 3));
}

/// Each broken file and the one error it gives.
const BROKEN: &[(&str, &str)] = &[
    ("unknown step", "[[step]]\ndo = \"powr\"\n"),
    ("fleet step", "[[step]]\ndo = \"cloud.release\"\nversion = 4\n"),
    ("missing do", "[[step]]\nname = \"x\"\n"),
    ("missing field", "[[step]]\ndo = \"wait.event\"\ntimeout = \"5m\"\n"),
    ("wrong type", "[[step]]\ndo = \"wait.event\"\nname = 5\n"),
    ("unknown field", "[[step]]\ndo = \"wait.time\"\nduration = \"5s\"\ntimout = \"1m\"\n"),
    ("bad duration", "[[step]]\ndo = \"wait.time\"\nduration = 5\n"),
    ("bad word", "[[step]]\ndo = \"power.cut\"\nphase = \"download\"\nmode = \"tron\"\n"),
    ("two cut points", "[[step]]\ndo = \"power.cut\"\nchunk = 1\nflash_op = 2\n"),
    ("op without phase", "[[step]]\ndo = \"power.cut\"\nop = 2\n"),
    ("mode for a cut now", "[[step]]\ndo = \"power.cut\"\nmode = \"torn\"\n"),
    ("flash nothing", "[[step]]\ndo = \"cloud.flash\"\ncompressed = true\n"),
    ("combined one module", "[[step]]\ndo = \"cloud.flash\"\napp = 4\ncombined = true\n"),
    ("two modules uncombined", "[[step]]\ndo = \"cloud.flash\"\napp = 4\ndevice_os = \"6.2.1\"\n"),
    ("wrong platform name", "[[step]]\ndo = \"cloud.flash\"\napp = 4\nplatform = \"photon3\"\n"),
    ("built_against without app", "[[step]]\ndo = \"cloud.flash\"\ndevice_os = \"6.2.0\"\nbuilt_against = \"6.2.0\"\n"),
    ("bad built_against", "[[step]]\ndo = \"cloud.flash\"\napp = 4\nbuilt_against = \"6.2\"\n"),
    ("built_against of the wrong type", "[[step]]\ndo = \"cloud.flash\"\napp = 4\nbuilt_against = true\n"),
    ("rate out of range", "[[step]]\ndo = \"link.faults\"\nloss = 1.5\n"),
    ("bandwidth without /s", "[[step]]\ndo = \"link.faults\"\nbandwidth = \"2KiB\"\n"),
    ("wait.ota without progress", "[[step]]\ndo = \"wait.ota\"\ntimeout = \"1m\"\n"),
    ("wait.ota both", "[[step]]\ndo = \"wait.ota\"\nmin_percent = 50\nreceived = \"8KiB\"\n"),
    ("wait.ota percent over 100", "[[step]]\ndo = \"wait.ota\"\nmin_percent = 150\n"),
    ("empty expect", "[[step]]\ndo = \"expect\"\n"),
    ("unknown expectation", "[[step]]\ndo = \"expect\"\nrunnig = { app = 4 }\n"),
    ("unknown running field", "[[step]]\ndo = \"expect\"\nrunning = { app = 4, os = \"6.2.0\" }\n"),
    ("nothing_lost false", "[expect]\nnothing_lost = false\n"),
    ("bad event", "[expect]\nevents = [{ nam = \"spark/status\" }]\n"),
    ("two sweeps", "[[step]]\ndo = \"sweep\"\nphase = \"apply\"\n[[step]]\ndo = \"sweep\"\nphase = \"commit\"\n"),
    ("bad group", "[cloud.product]\ngroups = [\"Beta!\"]\n"),
    ("upload without app", "[[step]]\ndo = \"cloud.upload\"\nbuilt_against = \"6.2.0\"\n"),
    ("two devices with one name", "[[cloud.device]]\nname = \"a\"\n[[cloud.device]]\nname = \"a\"\n"),
    ("a step for an undeclared device", "[[step]]\ndo = \"power.on\"\ndevice = \"b\"\n"),
    ("bad device id", "[[cloud.device]]\nid = \"E00F\"\n"),
    ("bad app mode", "[app]\nmode = \"auto\"\n"),
    ("date", "[[step]]\ndo = \"wait.time\"\nduration = 2024-05-13\n"),
    ("syntax", "[[step]\ndo = \"power.on\"\n"),
    ("step not an array", "[step]\ndo = \"power.on\"\n"),
    ("repeat until without max", "[[step]]\ndo = \"repeat\"\nuntil = { running = { app = 4 } }\nsteps = [{ do = \"power.on\" }]\n"),
    ("repeat with times and until", "[[step]]\ndo = \"repeat\"\ntimes = 2\nuntil = { online = true }\nmax = 3\nsteps = [{ do = \"power.on\" }]\n"),
    ("repeat too many", "[[step]]\ndo = \"repeat\"\ntimes = 1000000\nsteps = [{ do = \"power.on\" }]\n"),
    ("repeat without steps", "[[step]]\ndo = \"repeat\"\ntimes = 2\nsteps = []\n"),
    ("sweep inside repeat", "[[step]]\ndo = \"repeat\"\ntimes = 2\nsteps = [{ do = \"sweep\", phase = \"apply\" }]\n"),
    ("bad inner step", "[[step]]\ndo = \"repeat\"\ntimes = 2\nsteps = [{ do = \"power.on\" }, { do = \"wait.time\" }]\n"),
    ("inner step for an undeclared device", "[[step]]\ndo = \"repeat\"\ntimes = 2\nsteps = [{ do = \"power.on\", device = \"b\" }]\n"),
    ("bandwidth in bits not whole bytes", "[[step]]\ndo = \"link.faults\"\nbandwidth = \"12 bit/s\"\n"),
];

#[test]
fn mistakes_are_reported_with_file_line_column_and_the_expected_form() {
    let mut out = Vec::new();
    for (what, body) in BROKEN {
        let text = format!("{HEAD}{body}");
        match parse(&text, Path::new("fixtures/broken.toml")) {
            Ok(_) => panic!("{what}: parsed"),
            Err(e) => out.push(format!("{what}:\n  {e}")),
        }
    }
    // Set-up mistakes.
    for (what, text) in [
        ("no board", "[firmware]\ndevice_os = \"6.2.0\"\napp = 3\n"),
        (
            "unknown board",
            "board = \"boronn\"\n[firmware]\ndevice_os = \"6.2.0\"\napp = 3\n",
        ),
        ("no firmware", "board = \"boron\"\n"),
        (
            "bad device os",
            "board = \"boron\"\n[firmware]\ndevice_os = \"6.2\"\napp = 3\n",
        ),
        (
            "app too big",
            "board = \"boron\"\n[firmware]\ndevice_os = \"6.2.0\"\napp = 70000\n",
        ),
        (
            "unknown top-level key",
            "board = \"boron\"\nbaord = 1\n[firmware]\ndevice_os = \"6.2.0\"\napp = 3\n",
        ),
    ] {
        match parse(text, Path::new("fixtures/broken.toml")) {
            Ok(_) => panic!("{what}: parsed"),
            Err(e) => out.push(format!("{what}:\n  {e}")),
        }
    }
    insta::assert_snapshot!(out.join("\n"));
}

#[test]
fn the_unknown_step_message_has_the_documented_shape() {
    let text = format!("{HEAD}\n[[step]]\n  do = \"powr\"\n");
    let e = parse(&text, Path::new("fixtures/x.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("fixtures/x.toml:7:8: unknown step `powr`; expected one of: cloud.flash, cloud.force_updates, cloud.upload, cloud.release, cloud.lock, cloud.unlock, cloud.group, cloud.development, cloud.product, power.cut,"),
        "{e}"
    );
}

#[test]
fn wait_ota_takes_a_percentage_or_a_size() {
    let text = format!(
        "{HEAD}[[step]]\ndo = \"wait.ota\"\nmin_percent = 40\n\n[[step]]\ndo = \"wait.ota\"\nreceived = \"8KiB\"\ntimeout = \"2m\"\n"
    );
    let s = parse(&text, Path::new("ota.toml")).unwrap();
    assert_eq!(
        s.steps[0].step,
        Step::Wait(Wait::Ota {
            progress: OtaProgress::Percent(40),
            timeout: Duration::from_secs(600),
            transfer: harness::scenario::WhichTransfer::Current,
        })
    );
    assert_eq!(
        s.steps[1].step,
        Step::Wait(Wait::Ota {
            progress: OtaProgress::Bytes(8192),
            timeout: Duration::from_secs(120),
            transfer: harness::scenario::WhichTransfer::Current,
        })
    );
    assert_eq!(
        s.steps[1].step.to_string(),
        "wait.ota received=8192 timeout=2m"
    );
}

#[test]
fn truncated_or_garbled_scenario_files_give_errors_never_panics() {
    // Every fixture cut at every character, and with one byte swapped for a character that
    // TOML gives meaning to: parse answers Ok or a located error, never a panic.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut errors = 0;
    for path in files.iter().take(6) {
        let text = std::fs::read_to_string(path).unwrap();
        let cuts = text.char_indices().map(|(i, _)| i);
        for cut in cuts {
            if parse(&text[..cut], path).is_err() {
                errors += 1;
            }
            for garble in ['"', '[', '=', '\n'] {
                let mut bad = text[..cut].to_string();
                bad.push(garble);
                bad.push_str(&text[cut..]);
                if let Err(e) = parse(&bad, path) {
                    let shown = e.to_string();
                    assert!(shown.contains(&path.display().to_string()), "{shown}");
                    errors += 1;
                }
            }
        }
    }
    assert!(errors > 1000, "only {errors} inputs were refused");
}

/// The step table (`harness::scenario::STEPS`) is the list a new step kind is added to: each
/// kind there is documented in the steps table of `fixtures/README.md` and has a form for
/// error messages that names it (or the generic one, for kinds without fields).
#[test]
fn every_step_kind_is_documented_and_has_a_form() {
    let readme = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/README.md"),
    )
    .unwrap();
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `")).collect();
    for (kind, form) in harness::scenario::STEPS {
        let quoted = format!("`{kind}`");
        assert!(
            rows.iter()
                .any(|r| r.split(" | ").next().is_some_and(|c| c.contains(&quoted))),
            "{kind} is not in the steps table of fixtures/README.md"
        );
        assert!(
            form.contains(&format!("\"{kind}\"")) || form.starts_with("a step table"),
            "{kind}: {form}"
        );
    }
}

/// The step without the positions of a repeat's inner steps in their file.
fn unplaced(step: &Step) -> Step {
    let mut step = step.clone();
    if let Step::Repeat(r) = &mut step {
        for inner in &mut r.steps {
            (inner.line, inner.column) = (0, 0);
        }
    }
    step
}

/// Every step of `text` (a scenario file) written back as TOML by its declaration
/// (`harness::scenario::steps::to_toml`) reads back as the same step, with the same line.
fn assert_steps_round_trip(text: &str, file: &Path) -> Vec<&'static str> {
    let s = harness::scenario::load(file)
        .or_else(|_| parse(text, file))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut kinds = Vec::new();
    for at in &s.steps {
        let toml = harness::scenario::steps::to_toml(&at.step);
        let again = parse(&format!("step = [{toml}]\n{HEAD}"), Path::new("again.toml"))
            .unwrap_or_else(|e| {
                panic!(
                    "{}: step {}: {toml} does not read back: {e}",
                    file.display(),
                    at.index
                )
            });
        assert_eq!(again.steps.len(), 1, "{toml}");
        assert_eq!(
            unplaced(&again.steps[0].step),
            unplaced(&at.step),
            "{}: step {}: {toml}",
            file.display(),
            at.index
        );
        assert_eq!(again.steps[0].step.to_string(), at.step.to_string());
        kinds.push(at.step.kind());
        if let Step::Repeat(r) = &at.step {
            kinds.extend(r.steps.iter().map(|s| s.step.kind()));
        }
    }
    kinds
}

/// Reading and writing a step come from one declaration (`steps.rs`): every step of every
/// fixture, and one of each kind, read back as themselves from the TOML the declaration writes.
#[test]
fn every_step_reads_back_from_the_toml_its_declaration_writes() {
    let mut kinds: std::collections::BTreeSet<&str> =
        assert_steps_round_trip(EVERY_STEP, Path::new("every.toml"))
            .into_iter()
            .collect();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    for file in harness::scenario::report::collect_files(&[fixtures]).unwrap() {
        let text = std::fs::read_to_string(&file).unwrap();
        if harness::fleet_sim::model::is_fleet_file(&text) {
            continue;
        }
        kinds.extend(assert_steps_round_trip(&text, &file));
    }
    for kind in STEP_KINDS {
        assert!(
            kinds.contains(kind),
            "{kind}: no step of this kind was read back"
        );
    }
}

/// The form each step kind shows in error messages is itself a valid step of that kind.
#[test]
fn every_step_form_is_a_step_of_its_kind() {
    for (kind, form) in harness::scenario::STEPS {
        if !form.starts_with('{') {
            continue; // a kind without fields
        }
        // The first inline table of the form (forms nest tables: cut at the matching brace).
        let mut depth = 0;
        let end = form
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map_or(form.len() - 1, |(i, _)| i);
        let step = &form[..=end];
        let s = parse(&format!("step = [{step}]\n{HEAD}"), Path::new("form.toml"))
            .unwrap_or_else(|e| panic!("{kind}: the form {step} does not read: {e}"));
        assert_eq!(s.steps[0].step.kind(), kind, "{step}");
    }
}

/// The steps table of `fixtures/README.md` names every key each step kind reads.
#[test]
fn every_step_key_is_documented() {
    let readme = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/README.md"),
    )
    .unwrap();
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `")).collect();
    for (kind, keys) in harness::scenario::steps::step_fields() {
        let quoted = format!("`{kind}`");
        let row = rows
            .iter()
            .find(|r| r.split(" | ").next().is_some_and(|c| c.contains(&quoted)))
            .unwrap_or_else(|| panic!("{kind} is not in the steps table of fixtures/README.md"));
        for key in keys {
            assert!(
                row.contains(&format!("`{key}`")) || row.contains(&format!("`{key} =")),
                "{kind}: key `{key}` is not in its row of the steps table of fixtures/README.md"
            );
        }
    }
}
