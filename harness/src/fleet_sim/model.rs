//! Fleet scenario files: a `[fleet]` table with cohorts of devices, their behaviour
//! schedules, product firmware, releases, staged rollouts and fleet expectations. The syntax is
//! documented in `fixtures/README.md` ("Fleet scenarios"); this is its parser. Errors name the
//! file, the line and column, and the field (toml's own messages, with `deny_unknown_fields`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cloud::rollout::{Control, RolloutPlan, RolloutSpec};
use crate::scenario::model::parse_duration;

/// Why a fleet file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FleetFileError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("{file}: {field}: {message}")]
    Invalid {
        file: PathBuf,
        field: String,
        message: String,
    },
}

/// A duration written as in scenario files (`90s`, `2h`, `1d12h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(Span).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration (examples: 250ms, 30s, 5m, 2h, 1d, 1h30m)"
            ))
        })
    }
}

/// A whole fleet scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub fleet: FleetSpec,
    /// Where the file was read from (set by [`load`]).
    #[serde(skip)]
    pub file: PathBuf,
}

fn default_seed() -> u64 {
    1
}

/// The `[fleet]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    /// Virtual time to run.
    pub duration: Span,
    /// Curve resolution (default one minute).
    #[serde(default)]
    pub sample: Option<Span>,
    /// The product every device is in (default 1000).
    #[serde(default = "default_product")]
    pub product: u32,
    /// Devices power on at a uniform time in `0..boot_spread` (default one minute).
    #[serde(default)]
    pub boot_spread: Option<Span>,
    /// The behaviour of every cohort that does not give its own.
    #[serde(default)]
    pub behaviour: Behaviour,
    #[serde(rename = "devices")]
    pub cohorts: Vec<Cohort>,
    /// Product firmware uploaded at time zero (besides every cohort's running version).
    #[serde(default)]
    pub firmware: Vec<FirmwareEntry>,
    #[serde(default, rename = "release")]
    pub releases: Vec<ReleaseEntry>,
    #[serde(default, rename = "rollout")]
    pub rollouts: Vec<RolloutSpec>,
    /// A person's pause / resume / abort of the staged rollout at given times.
    #[serde(default, rename = "rollout_control")]
    pub rollout_controls: Vec<RolloutControlEntry>,
    #[serde(default, rename = "expect")]
    pub expects: Vec<Expectation>,
}

fn default_product() -> u32 {
    1000
}

/// `[[fleet.devices]]`: devices alike.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cohort {
    /// Shown in the curve and named by expectations (default `devices<N>`).
    #[serde(default)]
    pub name: Option<String>,
    pub count: u32,
    #[serde(default = "default_board")]
    pub board: String,
    /// The product firmware version (`PRODUCT_VERSION`) they run at the start.
    pub app: u16,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub behaviour: Option<Behaviour>,
}

fn default_board() -> String {
    "boron".into()
}

/// `every` / `for` pairs: mean time between periods and mean length of one, both drawn from
/// exponential distributions with those means (a Poisson process of periods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Periods {
    pub every: Span,
    #[serde(rename = "for")]
    pub length: Span,
}

/// A device's behaviour schedule, drawn per device from the scenario seed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    /// Power off and on again (the DTLS session in RAM is lost: a full handshake after).
    #[serde(default)]
    pub power_cycle: Option<Periods>,
    /// The network is gone (no datagram in or out); the device keeps power and its session.
    #[serde(default)]
    pub offline: Option<Periods>,
    /// The application sleeps (STOP mode, network off, woken by the RTC after `for`).
    #[serde(default)]
    pub sleep: Option<Periods>,
    /// The application disables updates (`System.disableUpdates()`) for `for`, then enables.
    #[serde(default)]
    pub busy: Option<Periods>,
    /// Probability that power is lost during a download (at a uniform chunk); power comes
    /// back after a uniform 5 s to 2 min.
    #[serde(default)]
    pub power_loss_during_update: f64,
    #[serde(default)]
    pub link: Option<Link>,
}

/// Link quality: each device draws its latency uniformly in `latency/2..=3*latency/2` and
/// its loss uniformly in `0..=2*loss` (the given values are the fleet's means).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    #[serde(default)]
    pub latency: Option<Span>,
    #[serde(default)]
    pub loss: f64,
    /// Bytes per second each way (0 = unlimited).
    #[serde(default)]
    pub bandwidth: u64,
}

/// `[[fleet.firmware]]`: a product firmware version to upload.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareEntry {
    pub app: u16,
    /// A bad build: `no_reconnect` (once running, the application never lets the device reach
    /// the cloud again).
    #[serde(default)]
    pub bad: Option<String>,
}

/// `[[fleet.release]]`: a Particle release at a time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseEntry {
    pub at: Span,
    pub app: u16,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub intelligent: bool,
}

/// `[[fleet.rollout_control]]`: a person pauses, resumes or aborts the staged rollout (the
/// last one started) at a time, as through the REST API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutControlEntry {
    pub at: Span,
    /// `pause`, `resume` or `abort` (`cancel`).
    pub action: String,
    #[serde(default)]
    pub reason: String,
}

/// `[[fleet.expect]]`: one of the forms below (the keys present say which).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// `app` with `at_least` and/or `at_most` (fractions 0..=1) `by` a time: the share of the
    /// devices (of `cohort`, else all) running `app` at that time.
    #[serde(default)]
    pub app: Option<u16>,
    #[serde(default)]
    pub at_least: Option<f64>,
    #[serde(default)]
    pub at_most: Option<f64>,
    #[serde(default)]
    pub by: Option<Span>,
    #[serde(default)]
    pub cohort: Option<String>,
    /// No device unbootable at the end.
    #[serde(default)]
    pub no_bricked: Option<bool>,
    /// No transfer started while the device's application had updates disabled.
    #[serde(default)]
    pub none_updated_while_busy: Option<bool>,
    /// No device starts its first transfer after this time (a person's abort must stop the
    /// rollout from reaching more devices).
    #[serde(default)]
    pub no_transfer_started_after: Option<Span>,
    /// The staged rollout's state at the end (`running`, `paused`, `rolled_back`,
    /// `aborted`, `completed`) and, with `stage`, the stage it is at.
    #[serde(default)]
    pub rollout: Option<String>,
    #[serde(default)]
    pub stage: Option<usize>,
}

/// What a `[[fleet.expect]]` checks, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    Share {
        app: u16,
        at_least: Option<f64>,
        at_most: Option<f64>,
        by: Duration,
        cohort: Option<usize>,
    },
    NoBricked,
    NoneUpdatedWhileBusy,
    NoTransferStartedAfter(Duration),
    Rollout {
        state: String,
        stage: Option<usize>,
    },
}

/// A validated fleet scenario.
#[derive(Debug, Clone)]
pub struct FleetScenario {
    pub name: String,
    pub file: PathBuf,
    pub seed: u64,
    pub duration: Duration,
    pub sample: Duration,
    pub boot_spread: Duration,
    pub product: u32,
    pub cohorts: Vec<CohortSpec>,
    /// Versions to upload, with whether each is a bad build.
    pub firmware: Vec<(u16, bool)>,
    pub releases: Vec<ReleaseEntry>,
    pub rollouts: Vec<(Duration, RolloutPlan)>,
    /// A person's controls of the staged rollout: when, what, why.
    pub rollout_controls: Vec<(Duration, Control, String)>,
    pub expects: Vec<(String, Expect)>,
}

/// A cohort with its name and behaviour settled.
#[derive(Debug, Clone)]
pub struct CohortSpec {
    pub name: String,
    pub count: u32,
    pub board: emulator::board::Board,
    pub app: u16,
    pub groups: Vec<String>,
    pub behaviour: Behaviour,
}

impl FleetScenario {
    pub fn devices(&self) -> u64 {
        self.cohorts.iter().map(|c| c.count as u64).sum()
    }

    /// The same scenario with every cohort scaled to `devices` in all (proportionally, at
    /// least one each): the benchmark and the tests run one file at several sizes.
    pub fn scaled_to(&self, devices: u64) -> FleetScenario {
        let total = self.devices().max(1);
        let mut s = self.clone();
        for c in &mut s.cohorts {
            c.count = ((c.count as u64 * devices).div_ceil(total)).max(1) as u32;
        }
        s
    }
}

/// Reads a fleet file.
pub fn load(path: &Path) -> Result<FleetScenario, FleetFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FleetFileError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Whether TOML text is a fleet scenario (it has a top-level `[fleet]` table); text that is
/// not TOML is not (the scenario parser reports it).
pub fn is_fleet_file(text: &str) -> bool {
    text.parse::<toml::Table>()
        .map(|t| t.contains_key("fleet"))
        .unwrap_or(false)
}

/// Parses and validates a fleet file's text; `path` is named in errors.
pub fn parse(text: &str, path: &Path) -> Result<FleetScenario, FleetFileError> {
    let raw: FleetFile = toml::from_str(text).map_err(|e| FleetFileError::Syntax {
        file: path.to_path_buf(),
        message: e.to_string().trim_end().replace('\n', "\n  "),
    })?;
    let invalid = |field: &str, message: String| FleetFileError::Invalid {
        file: path.to_path_buf(),
        field: field.to_string(),
        message,
    };
    let f = raw.fleet;
    if f.cohorts.is_empty() {
        return Err(invalid(
            "fleet.devices",
            "at least one [[fleet.devices]] is needed".into(),
        ));
    }
    let mut cohorts = Vec::new();
    for (i, c) in f.cohorts.iter().enumerate() {
        let field = format!("fleet.devices[{i}]");
        if c.count == 0 {
            return Err(invalid(
                &format!("{field}.count"),
                "must be at least 1".into(),
            ));
        }
        let board = emulator::board::Board::builtin(&c.board)
            .map_err(|e| invalid(&format!("{field}.board"), e.to_string()))?;
        let behaviour = c.behaviour.unwrap_or(f.behaviour);
        check_behaviour(&behaviour).map_err(|m| invalid(&format!("{field}.behaviour"), m))?;
        for g in &c.groups {
            crate::cloud::fleet::valid_group(g)
                .map_err(|e| invalid(&format!("{field}.groups"), e.to_string()))?;
        }
        let name = c
            .name
            .clone()
            .unwrap_or_else(|| format!("devices{}", i + 1));
        if cohorts.iter().any(|o: &CohortSpec| o.name == name) {
            return Err(invalid(
                &format!("{field}.name"),
                format!("`{name}` names two cohorts"),
            ));
        }
        cohorts.push(CohortSpec {
            name,
            count: c.count,
            board,
            app: c.app,
            groups: c.groups.clone(),
            behaviour,
        });
    }
    check_behaviour(&f.behaviour).map_err(|m| invalid("fleet.behaviour", m))?;
    if cohorts
        .iter()
        .any(|c| c.board.platform_id != cohorts[0].board.platform_id)
    {
        return Err(invalid(
            "fleet.devices",
            "every cohort must be the same platform (one product)".into(),
        ));
    }
    let mut firmware: Vec<(u16, bool)> = Vec::new();
    for (i, fw) in f.firmware.iter().enumerate() {
        let bad = match fw.bad.as_deref() {
            None => false,
            Some("no_reconnect") => true,
            Some(other) => {
                return Err(invalid(
                    &format!("fleet.firmware[{i}].bad"),
                    format!("`{other}` is not a bad-build kind (known: no_reconnect)"),
                ))
            }
        };
        if firmware.iter().any(|(v, _)| *v == fw.app) {
            return Err(invalid(
                &format!("fleet.firmware[{i}].app"),
                format!("version {} is listed twice", fw.app),
            ));
        }
        firmware.push((fw.app, bad));
    }
    for c in &cohorts {
        if !firmware.iter().any(|(v, _)| *v == c.app) {
            firmware.push((c.app, false));
        }
    }
    let known = |v: u16| firmware.iter().any(|(k, _)| *k == v);
    for (i, r) in f.releases.iter().enumerate() {
        if !known(r.app) {
            return Err(invalid(
                &format!("fleet.release[{i}].app"),
                format!(
                    "version {} is not uploaded (list it in [[fleet.firmware]])",
                    r.app
                ),
            ));
        }
        if !r.default && r.groups.is_empty() {
            return Err(invalid(
                &format!("fleet.release[{i}]"),
                "a release needs `default = true` or `groups`".into(),
            ));
        }
    }
    let mut rollouts = Vec::new();
    for (i, r) in f.rollouts.iter().enumerate() {
        let field = format!("fleet.rollout[{i}]");
        let at = r.at.ok_or_else(|| {
            invalid(
                &format!("{field}.at"),
                "is required (when the rollout starts)".into(),
            )
        })?;
        if !known(r.app) {
            return Err(invalid(
                &format!("{field}.app"),
                format!(
                    "version {} is not uploaded (list it in [[fleet.firmware]])",
                    r.app
                ),
            ));
        }
        let plan = r.plan().map_err(|(sub, m)| {
            if sub.is_empty() {
                invalid(&field, m)
            } else {
                invalid(&format!("{field}.{sub}"), m)
            }
        })?;
        rollouts.push((at, plan));
    }
    let mut rollout_controls = Vec::new();
    for (i, c) in f.rollout_controls.iter().enumerate() {
        let field = format!("fleet.rollout_control[{i}]");
        let control = Control::parse(&c.action).ok_or_else(|| {
            invalid(
                &format!("{field}.action"),
                format!("`{}` is not one of pause, resume, abort", c.action),
            )
        })?;
        if !rollouts.iter().any(|(at, _)| *at <= c.at.0) {
            return Err(invalid(
                &format!("{field}.at"),
                "no [[fleet.rollout]] has started by then".into(),
            ));
        }
        rollout_controls.push((c.at.0, control, c.reason.clone()));
    }
    let mut expects = Vec::new();
    for (i, e) in f.expects.iter().enumerate() {
        let field = format!("fleet.expect[{i}]");
        let cohort =
            match &e.cohort {
                None => None,
                Some(name) => Some(cohorts.iter().position(|c| &c.name == name).ok_or_else(
                    || {
                        invalid(
                            &format!("{field}.cohort"),
                            format!("no cohort is named `{name}`"),
                        )
                    },
                )?),
            };
        let expect = if let Some(app) = e.app {
            let by =
                e.by.ok_or_else(|| invalid(&field, "`app` needs `by` (when to look)".into()))?;
            if e.at_least.is_none() && e.at_most.is_none() {
                return Err(invalid(
                    &field,
                    "`app` needs `at_least` or `at_most`".into(),
                ));
            }
            for x in [e.at_least, e.at_most].into_iter().flatten() {
                if !(0.0..=1.0).contains(&x) {
                    return Err(invalid(
                        &field,
                        format!("{x} is not a fraction in 0..=1 (0.95 is 95 %)"),
                    ));
                }
            }
            if by.0 > f.duration.0 {
                return Err(invalid(
                    &format!("{field}.by"),
                    "is after the end of the run (fleet.duration)".into(),
                ));
            }
            Expect::Share {
                app,
                at_least: e.at_least,
                at_most: e.at_most,
                by: by.0,
                cohort,
            }
        } else if e.no_bricked == Some(true) {
            Expect::NoBricked
        } else if e.none_updated_while_busy == Some(true) {
            Expect::NoneUpdatedWhileBusy
        } else if let Some(t) = e.no_transfer_started_after {
            Expect::NoTransferStartedAfter(t.0)
        } else if let Some(state) = &e.rollout {
            if !["running", "paused", "rolled_back", "aborted", "completed"]
                .contains(&state.as_str())
            {
                return Err(invalid(
                    &format!("{field}.rollout"),
                    format!(
                        "`{state}` is not one of running, paused, rolled_back, aborted, \
                         completed"
                    ),
                ));
            }
            if f.rollouts.is_empty() {
                return Err(invalid(
                    &format!("{field}.rollout"),
                    "the file has no [[fleet.rollout]]".into(),
                ));
            }
            Expect::Rollout {
                state: state.clone(),
                stage: e.stage,
            }
        } else {
            return Err(invalid(
                &field,
                "expects one of: app with at_least/at_most and by, no_bricked = true, \
                 none_updated_while_busy = true, no_transfer_started_after, rollout"
                    .into(),
            ));
        };
        expects.push((describe(&expect, &cohorts), expect));
    }
    Ok(FleetScenario {
        name: raw.name,
        file: path.to_path_buf(),
        seed: raw.seed,
        duration: f.duration.0,
        sample: f.sample.map_or(Duration::from_secs(60), |s| s.0),
        boot_spread: f.boot_spread.map_or(Duration::from_secs(60), |s| s.0),
        product: f.product,
        cohorts,
        firmware,
        releases: f.releases,
        rollouts,
        rollout_controls,
        expects,
    })
    .and_then(|s| {
        if s.sample.is_zero() {
            Err(invalid("fleet.sample", "must be more than zero".into()))
        } else {
            Ok(s)
        }
    })
}

fn check_behaviour(b: &Behaviour) -> Result<(), String> {
    for (name, p) in [
        ("power_cycle", b.power_cycle),
        ("offline", b.offline),
        ("sleep", b.sleep),
        ("busy", b.busy),
    ] {
        if let Some(p) = p {
            if p.every.0.is_zero() || p.length.0.is_zero() {
                return Err(format!("{name}: `every` and `for` must be more than zero"));
            }
        }
    }
    if !(0.0..=1.0).contains(&b.power_loss_during_update) {
        return Err(format!(
            "power_loss_during_update: {} is not a probability in 0..=1",
            b.power_loss_during_update
        ));
    }
    if let Some(l) = b.link {
        if !(0.0..=0.5).contains(&l.loss) {
            return Err(format!("link.loss: {} is not in 0..=0.5", l.loss));
        }
    }
    Ok(())
}

/// One line saying what an expectation checks.
fn describe(e: &Expect, cohorts: &[CohortSpec]) -> String {
    match e {
        Expect::Share {
            app,
            at_least,
            at_most,
            by,
            cohort,
        } => {
            let who = cohort.map_or("the fleet".to_string(), |c| {
                format!("cohort {}", cohorts[c].name)
            });
            let mut bounds = Vec::new();
            if let Some(x) = at_least {
                bounds.push(format!(">= {:.1} %", x * 100.0));
            }
            if let Some(x) = at_most {
                bounds.push(format!("<= {:.1} %", x * 100.0));
            }
            format!(
                "{} of {who} on app {app} by {}",
                bounds.join(" and "),
                crate::scenario::model::format_duration(*by)
            )
        }
        Expect::NoBricked => "no device bricked".into(),
        Expect::NoneUpdatedWhileBusy => "no device updated while busy".into(),
        Expect::NoTransferStartedAfter(t) => format!(
            "no device starts its first transfer after {}",
            crate::scenario::model::format_duration(*t)
        ),
        Expect::Rollout { state, stage } => match stage {
            Some(s) => format!("the staged rollout is {state} at stage {s}"),
            None => format!("the staged rollout is {state}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
name = "t"
[fleet]
duration = "1h"
[[fleet.devices]]
count = 2
app = 3
"#;

    #[test]
    fn a_minimal_file_parses_with_defaults() {
        let s = parse(MIN, Path::new("f.toml")).unwrap();
        assert_eq!(s.devices(), 2);
        assert_eq!(s.sample, Duration::from_secs(60));
        assert_eq!(s.firmware, vec![(3, false)]);
        assert_eq!(s.cohorts[0].name, "devices1");
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let text = MIN.replace("app = 3", "app = 3\ncolour = 1");
        let e = parse(&text, Path::new("f.toml")).unwrap_err().to_string();
        assert!(
            e.contains("f.toml") && e.contains("colour") && e.contains("line 8"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_duration_and_a_release_of_an_unknown_version_are_named() {
        let e = parse(&MIN.replace("\"1h\"", "\"soon\""), Path::new("f.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`soon` is not a duration"), "{e}");
        let text = format!("{MIN}[[fleet.release]]\nat = \"1m\"\napp = 9\ndefault = true\n");
        let e = parse(&text, Path::new("f.toml")).unwrap_err().to_string();
        assert!(e.contains("fleet.release[0].app") && e.contains("9"), "{e}");
    }

    #[test]
    fn fleet_files_are_told_apart_from_scenarios() {
        assert!(is_fleet_file(MIN));
        assert!(!is_fleet_file("name = \"x\"\nboard = \"boron\"\n"));
        assert!(!is_fleet_file("not [toml"));
    }
}
