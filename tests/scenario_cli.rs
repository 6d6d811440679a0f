//! `hil check`, `hil run` and `hil fixture from-events` as a user runs them.

use std::path::PathBuf;
use std::process::Command;

fn hil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hil"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hil-scenario-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const GOOD: &str = "board = \"boron\"\n[firmware]\ndevice_os = \"6.2.0\"\napp = 3\n[[step]]\ndo = \"cloud.flash\"\napp = 4\n";

#[test]
fn check_reports_a_broken_file_with_line_and_column_and_fails() {
    let dir = tempdir("broken");
    std::fs::write(dir.join("good.toml"), GOOD).unwrap();
    std::fs::write(
        dir.join("bad.toml"),
        GOOD.replace("do = \"cloud.flash\"", "do = \"cloud.flsh\""),
    )
    .unwrap();
    std::fs::write(dir.join("README.toml"), "not a scenario").unwrap();
    let out = hil().arg("check").arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:6:6: unknown step `cloud.flsh`; expected one of: cloud.flash,",
        dir.join("bad.toml").display()
    );
    assert!(err.contains(&want), "{err}");
    assert!(!err.contains("README"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("good.toml"), "{stdout}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn check_accepts_every_readme_example_and_the_fixtures_folder() {
    let dir = tempdir("readme");
    let readme = std::fs::read_to_string(root().join("fixtures/README.md")).unwrap();
    let mut n = 0;
    for block in readme.split("```toml\n").skip(1) {
        let body = block.split("```").next().unwrap();
        if let Some(name) = body
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# fixture: "))
        {
            std::fs::write(dir.join(format!("{}.toml", name.trim())), body).unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 9);
    let out = hil()
        .arg("check")
        .arg(&dir)
        .arg(root().join("fixtures"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fixtures = std::fs::read_dir(root().join("fixtures"))
        .unwrap()
        .chain(std::fs::read_dir(root().join("fixtures/field")).unwrap())
        .chain(std::fs::read_dir(root().join("fixtures/product")).unwrap())
        .chain(std::fs::read_dir(root().join("fixtures/assets")).unwrap())
        .chain(std::fs::read_dir(root().join("fixtures/device-os")).unwrap())
        .chain(std::fs::read_dir(root().join("fixtures/fleet")).unwrap())
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "toml"))
        })
        .count();
    let want = format!("{} scenario files ok", 9 + fixtures);
    assert!(stdout.contains(&want), "{stdout}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn check_of_an_empty_folder_is_an_error() {
    let dir = tempdir("empty");
    let out = hil().arg("check").arg(&dir).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no scenario files"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn run_drives_the_emulator_target_and_writes_the_report() {
    let dir = tempdir("run");
    std::fs::write(dir.join("a.toml"), GOOD).unwrap();
    let junit = dir.join("out.xml");
    let out = hil()
        .arg("run")
        .arg(dir.join("a.toml"))
        .arg("--junit")
        .arg(&junit)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("not available yet"), "{err}");
    assert!(junit.exists(), "the run wrote its report: {err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn run_refuses_an_unknown_target_and_broken_files() {
    let dir = tempdir("target");
    std::fs::write(dir.join("a.toml"), GOOD).unwrap();
    let out = hil()
        .arg("run")
        .arg(&dir)
        .args(["--target", "rack"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown target `rack`; expected one of: emulator"),
        "{err}"
    );

    std::fs::write(dir.join("b.toml"), "board = 1\n").unwrap();
    let out = hil().arg("run").arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("b.toml:1:9:"), "{err}");
    assert!(err.contains("nothing was run"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn fixture_from_events_writes_the_skeleton_of_the_worked_example() {
    let dir = tempdir("field");
    let out_file = dir.join("bug.toml");
    let out = hil()
        .args(["fixture", "from-events"])
        .arg(root().join("fixtures/field/example-safe-mode-after-update.events"))
        .arg("-o")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    assert!(text.contains("[report]"));
    assert!(text.contains("platform = \"boron (13)\""));
    let check = hil().arg("check").arg(&out_file).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn fixture_from_events_adds_what_the_serial_log_tells() {
    let dir = tempdir("fieldlog");
    let out_file = dir.join("bug.toml");
    let out = hil()
        .args(["fixture", "from-events"])
        .arg(root().join("fixtures/field/example-safe-mode-after-update.events"))
        .arg("--log")
        .arg(root().join("fixtures/field/example-safe-mode-after-update.log"))
        .arg("-o")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    assert!(text.contains("# From the serial log example-safe-mode-after-update.log"));
    assert!(text.contains("#   2 boot(s)"), "{text}");
    assert!(text.contains("Reset reason: 70 (update)"), "{text}");
    let expect = &text[text.find("\n[expect]\n").unwrap()..];
    assert!(expect.contains("session = \"resumed\""), "{text}");
    assert!(expect.contains("ota = { resumed = false }"), "{text}");
    let check = hil().arg("check").arg(&out_file).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Not a Device OS log: an error naming the file.
    let bad = dir.join("x.log");
    std::fs::write(&bad, "just text\n").unwrap();
    let out = hil()
        .args(["fixture", "from-events"])
        .arg(root().join("fixtures/field/example-safe-mode-after-update.events"))
        .arg("--log")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("x.log:1: no Device OS log line"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn fixture_from_events_names_the_malformed_line() {
    let dir = tempdir("badevents");
    let file = dir.join("cap.events");
    std::fs::write(&file, ":ok\n\nevent: spark/status\ndata: {oops\n\n").unwrap();
    let out = hil()
        .args(["fixture", "from-events"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cap.events:3: the data of event `spark/status` is not JSON"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// A small fleet: an intelligent release of app 7 at 10 minutes; one check that holds (90 %
/// on app 7 within the hour), one that cannot (half the fleet still on app 3).
const FLEET: &str = r#"
name = "A small fleet"
seed = 4

[fleet]
duration = "1h"

[[fleet.devices]]
count = 10
board = "boron"
app = 3

[[fleet.firmware]]
app = 7

[[fleet.release]]
at = "10m"
app = 7
default = true
intelligent = true

[[fleet.expect]]
app = 7
at_least = 0.9
by = "1h"

[[fleet.expect]]
app = 3
at_least = 0.5
by = "1h"

[[fleet.expect]]
no_bricked = true
"#;

#[test]
fn run_reports_fleet_checks_as_junit_cases_and_fleet_figures_in_json() {
    let dir = tempdir("fleet-reports");
    std::fs::write(dir.join("a.toml"), GOOD).unwrap();
    std::fs::write(dir.join("fleet.toml"), FLEET).unwrap();
    let junit = dir.join("out.xml");
    let json = dir.join("out.json");
    let out = hil()
        .arg("run")
        .arg(dir.join("a.toml"))
        .arg(dir.join("fleet.toml"))
        .arg("--junit")
        .arg(&junit)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The check that cannot hold fails the run.
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");

    let xml = std::fs::read_to_string(&junit).unwrap();
    // The scenario's case and the fleet's three checks, one failing, in the root's counts.
    assert!(
        xml.contains("<testsuites name=\"hil\" tests=\"4\" failures=\"1\" skipped=\"0\""),
        "{xml}"
    );
    let suite = &xml[xml
        .find("fleet.toml\" tests=\"3\" failures=\"1\"")
        .expect(&xml)..];
    assert!(
        suite.contains(
            "<testcase classname=\"A small fleet\" name=\"&gt;= 90.0 % of the fleet on app 7 by 1h\""
        ),
        "{suite}"
    );
    let failing = "name=\"&gt;= 50.0 % of the fleet on app 3 by 1h\"";
    let case = &suite[suite.find(failing).expect(suite)..];
    let case = &case[..case.find("</testcase>").unwrap()];
    assert!(
        case.contains(
            "<failure message=\"&gt;= 50.0 % of the fleet on app 3 by 1h: found 0 of 10 (0.0 %)\""
        ),
        "{case}"
    );
    // Passing cases carry no failure.
    let passing = &suite[suite.find("name=\"no device bricked\"").expect(suite)..];
    let passing = &passing[..passing.find("</testcase>").unwrap()];
    assert!(!passing.contains("<failure"), "{passing}");
    assert_eq!(xml.matches("<testcase ").count(), 4, "{xml}");
    assert!(xml.trim_end().ends_with("</testsuites>"), "{xml}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["totals"]["failed"], 1, "{report:#}");
    assert_eq!(report["totals"]["passed"], 3, "{report:#}");
    let fleet = &report["fleets"][0];
    assert_eq!(fleet["passed"], false);
    assert_eq!(fleet["devices"], 10);
    assert_eq!(fleet["checks"][1]["outcome"], "fail");
    assert_eq!(fleet["checks"][1]["found"], "0 of 10 (0.0 %)");
    assert_eq!(fleet["checks"][0]["outcome"], "pass");
    let summary = &fleet["summary"];
    assert_eq!(summary["bricked"], 0);
    assert_eq!(summary["updated_while_busy"], 0);
    let m = &summary["milestones"][0];
    assert_eq!(
        (m["cohort"].as_str(), m["version"].as_u64()),
        (Some("devices1"), Some(7))
    );
    assert_eq!(m["on_at_end"], 10);
    // Released at 10 minutes: 95 % came after that and within the hour.
    let t95 = m["seconds_to_95_percent"]
        .as_f64()
        .expect("95 % was reached");
    assert!((600.0..=3600.0).contains(&t95), "{t95}");
    std::fs::remove_dir_all(dir).ok();
}
