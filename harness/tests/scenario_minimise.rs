//! `hil fixture minimise`: a seeded 40-step failing scenario shrinks to the steps that matter,
//! and the result fails the same way.

use std::path::Path;

use harness::scenario::emulator_target::EmulatorTarget;
use harness::scenario::minimise::{minimise, signature};
use harness::scenario::{parse, runner, Scenario, Target};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Steps that do not change what the device ends up running.
const NOISE: &[&str] = &[
    "do = \"wait.time\"\nduration = \"30s\"",
    "do = \"wait.time\"\nduration = \"2m\"",
    "do = \"link.faults\"\nlatency = \"50ms\"",
    "do = \"expect\"\nsafe_mode = false",
    "do = \"cloud.force_updates\"\nforced = false",
    "do = \"wait.event\"\nname = \"spark/status\"\ndata = \"online\"\nfrom = \"start\"",
];

/// 40 steps: noise, with the flash of app 4 somewhere in the first half; the final
/// expectation wants app 5 (the "bug": app 4 runs).
fn forty_steps(seed: u64) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let flash_at = (rng.next_u32() % 20) as usize;
    let mut text = String::from(
        "name = \"forty steps\"\nboard = \"boron\"\nseed = 5\n\n[firmware]\ndevice_os = \"6.2.0\"\napp = 3\n",
    );
    for i in 0..40 {
        let body = if i == flash_at {
            "do = \"cloud.flash\"\napp = 4"
        } else {
            NOISE[(rng.next_u32() as usize) % NOISE.len()]
        };
        text.push_str(&format!("\n[[step]]\n{body}\n"));
    }
    text.push_str("\n[expect]\nrunning = { app = 5 }\n");
    text
}

fn run_on_emulator(s: &Scenario) -> Option<String> {
    let mut factory = || Ok(Box::new(EmulatorTarget::new()) as Box<dyn Target>);
    signature(&runner::run(s, None, &mut factory))
}

#[test]
fn a_forty_step_failure_shrinks_to_the_flash_and_one_wait() {
    let file = Path::new("forty.toml");
    let text = forty_steps(11);
    let before = parse(&text, file).unwrap();
    assert_eq!(before.steps.len(), 40);
    let want = run_on_emulator(&before).expect("the scenario fails");
    assert!(want.contains("app is 4, not 5"), "{want}");

    let mut run = run_on_emulator;
    let m = minimise(&text, file, &mut run).unwrap();
    assert_eq!(m.failure, want);
    assert_eq!(m.steps_before, 40);
    let after = parse(&m.text, file).unwrap_or_else(|e| panic!("{e}\n{}", m.text));
    // The flash, and something that lets the update finish before the final expectation.
    assert!(after.steps.len() <= 2, "{}", m.text);
    assert!(m.text.contains("cloud.flash"), "{}", m.text);
    // The minimised scenario fails the same way on its own.
    assert_eq!(run_on_emulator(&after).as_deref(), Some(want.as_str()));
}

#[test]
fn a_passing_scenario_is_refused() {
    let text = forty_steps(11).replace("app = 5 }", "app = 4 }");
    let mut run = run_on_emulator;
    let e = minimise(&text, Path::new("forty.toml"), &mut run).unwrap_err();
    assert!(e.contains("passes"), "{e}");
}
