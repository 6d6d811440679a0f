//! The format examples of `fixtures/README.md` (one per documented OTA behaviour) and every
//! scenario file under `fixtures/` parse.

use std::path::{Path, PathBuf};

use harness::scenario::{parse, report::collect_files, Step};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// The ```toml blocks of the README whose first line is `# fixture: NAME`.
pub fn readme_examples() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(fixtures().join("README.md")).unwrap();
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        match &mut block {
            None if line.trim_start() == "```toml" => block = Some(String::new()),
            Some(b) if line.trim_start() == "```" => {
                if let Some(name) = b.lines().next().and_then(|l| l.strip_prefix("# fixture: ")) {
                    out.push((name.trim().to_string(), b.clone()));
                }
                block = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn every_readme_example_parses() {
    let examples = readme_examples();
    let names: Vec<&str> = examples.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "app-update",
            "power-loss-during-download",
            "power-loss-during-apply-sweep",
            "sleep-during-download",
            "updates-disabled",
            "forced-updates",
            "deferred-reset",
            "disable-updates-mid-transfer",
            "power-cut-while-reset-deferred",
        ]
    );
    for (name, text) in &examples {
        let s =
            parse(text, Path::new(&format!("README.md#{name}"))).unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.steps.is_empty(), "{name}");
    }
    let sweep = &examples[2].1;
    let s = parse(sweep, Path::new("sweep")).unwrap();
    assert!(s.steps.iter().any(|s| matches!(s.step, Step::Sweep(_))));
}

/// Every scenario file under `fixtures/` (one test case each; running them against the
/// emulator joins this once the emulator target exists).
#[rstest::rstest]
fn every_fixture_file_parses(#[files("../fixtures/**/*.toml")] path: PathBuf) {
    // Fleet scenarios (`fixtures/fleet/`, a `[fleet]` table) have their own parser.
    let text = std::fs::read_to_string(&path).unwrap();
    if harness::fleet_sim::model::is_fleet_file(&text) {
        if let Err(e) = harness::fleet_sim::load(&path) {
            panic!("{e}");
        }
        return;
    }
    if let Err(e) = harness::scenario::load(&path) {
        panic!("{e}");
    }
}

#[test]
fn the_fixture_folder_is_collected_without_readme_or_event_files() {
    let files = collect_files(&[fixtures()]).unwrap();
    assert!(!files.is_empty());
    for f in &files {
        assert_eq!(
            f.extension().and_then(|e| e.to_str()),
            Some("toml"),
            "{}",
            f.display()
        );
    }
}
