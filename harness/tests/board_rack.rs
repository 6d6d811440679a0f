//! The rack flow against `boards/rack.emulated.toml`: emulated boards behind pseudo-terminals
//! driven through their serial ports by board targets, with a real local cloud over UDP.

use std::path::{Path, PathBuf};
use std::time::Duration;

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

#[test]
fn board_scenarios_pass_on_the_emulated_rack() {
    let rack = rack();
    let report = rack.run(
        vec![
            scenario("app-update.toml"),
            scenario("app-update-argon.toml"),
        ],
        &RackRunOptions::default(),
    );
    for c in &report.cases {
        if let RackOutcome::Ran { result, .. } = &c.outcome {
            for case in &result.cases {
                println!("{}", case.trace.render());
            }
        }
    }
    for f in ["app-update.toml", "app-update-argon.toml"] {
        let o = outcome(&report, f);
        assert!(o.contains("[\"pass\"]"), "{f}: {o}");
    }
    let _ = Duration::ZERO;
    let _ = Outcome::Pass;
}
