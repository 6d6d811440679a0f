//! The fleet fixtures (`fixtures/fleet/`) in virtual time. The standard-vs-intelligent file
//! declares 1,000 devices; here it runs scaled to 100 (`hil run` and `hil bench fleet` run
//! the full size). Each run's curve is drawn into `target/fleet-curves/`.

use std::path::{Path, PathBuf};

use harness::fleet_sim::{self, FleetScenario};

fn fixture(name: &str) -> FleetScenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/fleet")
        .join(name);
    fleet_sim::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn curves_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fleet-curves")
}

fn run_and_draw(s: &FleetScenario, stem: &str) -> fleet_sim::FleetRun {
    let run = fleet_sim::run(s, None).unwrap_or_else(|e| panic!("{e}"));
    run.curve
        .write_all(&curves_dir(), stem)
        .expect("the curve files can be written");
    assert!(run.passed(), "{}", run.summary());
    run
}

#[test]
fn intelligent_release_reaches_the_fleet_in_an_hour_standard_in_about_a_week() {
    let s = fixture("standard-vs-intelligent.toml").scaled_to(100);
    let run = run_and_draw(&s, "standard-vs-intelligent-100");
    assert_eq!(run.stats.devices, 100);
    // Every device did the real protocol: at least one full handshake each.
    assert!(run.stats.handshakes >= 100, "{}", run.summary());
}

#[test]
fn bad_build_is_stopped_at_the_first_stage() {
    let run = run_and_draw(
        &fixture("bad-build-stopped-at-first-stage.toml"),
        "bad-build-stopped-at-first-stage",
    );
    let r = run.rollout.expect("a staged rollout ran");
    assert_eq!((r.state.as_str(), r.stage), ("paused", 1));
    // Only the first stage's devices (1 % of 200) ever got the build.
    assert_eq!(r.counts.admitted, 2);
    assert_eq!(r.counts.timed_out, 2);
}

#[test]
fn good_build_goes_through_every_stage() {
    let run = run_and_draw(
        &fixture("staged-rollout-completes.toml"),
        "staged-rollout-completes",
    );
    let r = run.rollout.expect("a staged rollout ran");
    assert_eq!(r.state, "completed");
    assert_eq!(r.counts.succeeded, 200);
}

#[test]
fn the_same_seed_gives_the_same_curve_and_another_seed_another() {
    let s = fixture("staged-rollout-completes.toml").scaled_to(30);
    let a = fleet_sim::run(&s, Some(3)).unwrap();
    let b = fleet_sim::run(&s, Some(3)).unwrap();
    assert_eq!(a.curve.csv(), b.curve.csv());
    assert_eq!(a.stats, b.stats);
    let c = fleet_sim::run(&s, Some(4)).unwrap();
    assert_ne!(a.curve.csv(), c.curve.csv());
}

#[test]
fn curve_files_hold_the_counts() {
    let s = fixture("bad-build-stopped-at-first-stage.toml").scaled_to(20);
    let run = fleet_sim::run(&s, None).unwrap();
    let csv = run.curve.csv();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("minute,cohort,devices,v3,v8,updating,failed,safe_mode,online,bricked")
    );
    // At minute 0 every device runs v3 (powered on or not).
    assert!(lines.next().unwrap().starts_with("0,devices1,20,20,0,"));
    let json = run.curve.json();
    assert_eq!(json["cohorts"][0]["series"]["v3"][0], 20);
    assert!(run.curve.svg().starts_with("<svg"));
    assert!(run.curve.png().starts_with(b"\x89PNG"));
}

#[test]
fn broken_fleet_files_name_the_file_and_the_field() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/fleet/staged-rollout-completes.toml"),
    )
    .unwrap();
    let broken = text.replace("failure_type = \"all\"", "failure_type = \"sometimes\"");
    let e = fleet_sim::model::parse(&broken, Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x.toml") && e.contains("fleet.rollout[0].abort[0].failure_type"),
        "{e}"
    );
    // Cut in the middle of a key/value pair.
    let truncated = &text[..text.find("app = 3").unwrap() + 5];
    let e = fleet_sim::model::parse(truncated, Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.toml") && e.contains("line"), "{e}");
}

#[test]
fn a_person_aborts_the_rollout_at_stage_2_and_it_reaches_no_one_else() {
    let run = run_and_draw(
        &fixture("person-aborts-at-stage-2.toml"),
        "person-aborts-at-stage-2",
    );
    let r = run.rollout.expect("a staged rollout ran");
    assert_eq!((r.state.as_str(), r.stage), ("aborted", 2));
    // Stage 2 covers 10 % of 200: the devices still targeted and those withdrawn make 20.
    assert_eq!(r.counts.admitted + r.counts.withdrawn, 20);
    assert!(
        r.log.iter().any(|(_, l)| l.contains("aborted by a person")),
        "{:?}",
        r.log
    );
}
