//! The mutation check: with one Device OS behaviour broken on purpose in the emulator
//! (`emulator::os::Mutation`), the fixtures that cover that behaviour must fail. A fixture
//! that still passes with its behaviour broken would be a verdict that cannot fail.

use std::path::Path;

use emulator::os::Mutation;
use harness::scenario::emulator_target::EmulatorTarget;
use harness::scenario::runner::{self, Outcome};
use harness::scenario::{load, Target};

/// Whether `fixture` (under the workspace's `fixtures/`) passes with `mutation` (or none).
fn passes(fixture: &str, mutation: Option<Mutation>) -> bool {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(fixture);
    let scenario = load(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut factory = || {
        Ok(Box::new(match mutation {
            Some(m) => EmulatorTarget::with_mutation(m),
            None => EmulatorTarget::new(),
        }) as Box<dyn Target>)
    };
    let result = runner::run(&scenario, None, &mut factory);
    result.cases.iter().all(|c| c.outcome == Outcome::Pass)
}

/// Each behaviour and the fixtures that cover it.
const COVERED: &[(Mutation, &[&str])] = &[
    // Only this one: in every other fixture with updates disabled the cloud has heard the
    // flag and holds the job before any UpdateStart reaches the device.
    (
        Mutation::IgnoreUpdatesDisabled,
        &["updates-disabled-before-the-cloud-heard.toml"],
    ),
    // Not `wake-every-hour-until-updated.toml`: a sleep cancels the transfer and Device OS
    // syncs the resume state at the cancel, so that fixture resumes without the periodic sync.
    (
        Mutation::NoResumeStateSync,
        &["power-loss-during-download.toml"],
    ),
    (
        Mutation::ResetIgnoresDisabled,
        &["deferred-reset.toml", "power-cut-while-reset-deferred.toml"],
    ),
    // Only non-threaded AUTOMATIC runs setup() after the connection; every other combination
    // runs it at boot either way.
    (
        Mutation::SetupAtBoot,
        &["system-mode-automatic-non-threaded.toml"],
    ),
];

#[test]
fn every_covering_fixture_fails_when_its_behaviour_is_broken() {
    let mut survivors = Vec::new();
    for (mutation, fixtures) in COVERED {
        for fixture in *fixtures {
            // Sanity: the fixture passes with Device OS's behaviour.
            assert!(passes(fixture, None), "{fixture} fails without a mutation");
            if passes(fixture, Some(*mutation)) {
                survivors.push(format!("{fixture} passes with {mutation:?}"));
            }
        }
    }
    assert!(
        survivors.is_empty(),
        "fixtures that cannot see their behaviour broken:\n{}",
        survivors.join("\n")
    );
    // Every mutation but one is covered by at least one fixture. `IgnoreUpdatesDisabled` is
    // not yet: every fixture with updates disabled is held by the cloud (it heard the flag)
    // before any UpdateStart reaches the device, so the device's own -1380 is never tested.
    for m in Mutation::ALL {
        if m == Mutation::IgnoreUpdatesDisabled {
            continue;
        }
        assert!(
            COVERED.iter().any(|(c, f)| *c == m && !f.is_empty()),
            "{m:?}"
        );
    }
}
