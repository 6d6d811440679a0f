//! Runs a scenario against a [`Target`]: expands a sweep into cases, runs each case's steps,
//! checks expectations, skips (with the reason) what the target cannot do, and records a
//! machine-independent [`Trace`].
//!
//! Skipping is never silent and never a pass. A skipped action or wait changes what the device
//! went through, so every later step and expectation of the case is skipped too ("after skipped
//! step N"); a skipped expectation skips only itself. A case with any skip and no failure is
//! [`Outcome::Skip`], not a pass.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use emulator::flash::CutMode;

use super::model::*;
use super::target::{self, Capability, FirmwareIntegrity, Observation, Target, TargetError};
use super::trace::{format_time, Trace, TraceEntry, TraceKind};

/// How many trace lines a failure report shows.
pub const FAILURE_TRACE_LINES: usize = 20;

/// Consecutive calls to [`Target::advance`] that may pass without time moving or anything
/// happening before the runner gives up on the target.
const MAX_STALLS: u32 = 100;

/// Builds a fresh target for each case.
pub type TargetFactory<'a> = dyn FnMut() -> Result<Box<dyn Target>, TargetError> + 'a;

/// How a case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// Nothing failed, but something could not be done or checked (see the skip notes).
    Skip,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Skip => "skip",
        }
    }
}

/// Why a case failed, with everything needed to replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub file: PathBuf,
    pub scenario: String,
    pub case: String,
    /// `None` for the set-up or the final expectations.
    pub step: Option<usize>,
    /// Where the step is written (line, column).
    pub at: Option<(usize, usize)>,
    /// The step in its canonical one-line form.
    pub step_text: String,
    pub seed: u64,
    pub message: String,
    pub last_lines: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "FAIL {} [{}] (scenario \"{}\")",
            self.file.display(),
            self.case,
            self.scenario
        )?;
        match (self.step, self.at) {
            (Some(i), Some((line, col))) => writeln!(
                f,
                "  step {i} at {}:{line}:{col}: {}",
                self.file.display(),
                self.step_text
            )?,
            (Some(i), None) => writeln!(f, "  step {i}: {}", self.step_text)?,
            (None, _) => writeln!(f, "  {}", self.step_text)?,
        }
        writeln!(f, "  seed {} (replay with --seed {})", self.seed, self.seed)?;
        writeln!(f, "  {}", self.message)?;
        writeln!(f, "  last trace lines:")?;
        for line in &self.last_lines {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

/// A step or expectation that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkipNote {
    pub step: Option<usize>,
    pub text: String,
    pub reason: String,
}

impl fmt::Display for SkipNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.step {
            Some(i) => write!(f, "step {i} {}: {}", self.text, self.reason),
            None => write!(f, "{}: {}", self.text, self.reason),
        }
    }
}

/// One case of a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub name: String,
    pub outcome: Outcome,
    /// Target time the case took (virtual for the emulator).
    pub duration: Duration,
    pub failure: Option<Failure>,
    pub skipped: Vec<SkipNote>,
    pub trace: Trace,
}

impl CaseResult {
    /// One sentence for summaries: the failure message, or the first skip reason.
    pub fn reason(&self) -> String {
        if let Some(f) = &self.failure {
            let step = match f.step {
                Some(i) => format!("step {i}: "),
                None => String::new(),
            };
            return format!("{step}{}", f.message);
        }
        match self.skipped.first() {
            Some(s) if self.skipped.len() > 1 => {
                format!("{s} (and {} more)", self.skipped.len() - 1)
            }
            Some(s) => s.to_string(),
            None => String::new(),
        }
    }
}

/// Everything a scenario's run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioResult {
    pub file: PathBuf,
    pub name: String,
    pub seed: u64,
    pub cases: Vec<CaseResult>,
}

impl ScenarioResult {
    pub fn failed(&self) -> bool {
        self.cases.iter().any(|c| c.outcome == Outcome::Fail)
    }
}

/// One step of a planned case.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    pub index: usize,
    pub at: (usize, usize),
    pub step: Step,
    /// The device the step names (`device = "..."`).
    pub device: Option<String>,
}

/// A case before it runs: a name and its steps (a sweep step replaced by its cut).
#[derive(Debug, Clone, PartialEq)]
pub struct CasePlan {
    pub name: String,
    pub steps: Vec<PlannedStep>,
}

fn planned(scenario: &Scenario, sweep_as: impl Fn(&Sweep) -> Option<Step>) -> Vec<PlannedStep> {
    scenario
        .steps
        .iter()
        .filter_map(|s| {
            let step = match &s.step {
                Step::Sweep(sweep) => sweep_as(sweep)?,
                other => other.clone(),
            };
            Some(PlannedStep {
                index: s.index,
                at: (s.line, s.column),
                step,
                device: s.device.clone(),
            })
        })
        .collect()
}

/// The case a scenario without a sweep runs, or a sweep's clean run (sweep step left out).
pub fn main_case(scenario: &Scenario) -> CasePlan {
    CasePlan {
        name: if scenario.sweep().is_some() {
            "clean".into()
        } else {
            "main".into()
        },
        steps: planned(scenario, |_| None),
    }
}

/// The sweep's cases once the clean run counted `ops` flash operations in the phase: one per
/// operation and mode, the sweep step replaced by a power cut there.
pub fn sweep_cases(scenario: &Scenario, ops: u64) -> Vec<CasePlan> {
    let Some((_, sweep)) = scenario.sweep() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for op in 0..ops {
        for &mode in &sweep.modes {
            out.push(CasePlan {
                name: format!(
                    "sweep {} op {op} {}",
                    sweep.phase.as_str(),
                    cut_mode_str(mode)
                ),
                steps: planned(scenario, |s| Some(sweep_cut(s, op, mode))),
            });
        }
    }
    out
}

fn sweep_cut(sweep: &Sweep, op: u64, mode: CutMode) -> Step {
    Step::Action(Action::PowerCut(PowerCut {
        at: CutPoint::Phase {
            phase: sweep.phase,
            op,
        },
        mode,
        off_for: Some(sweep.off_for),
    }))
}

/// Runs every case of `scenario`. `make_target` builds a fresh target per case.
pub fn run(
    scenario: &Scenario,
    seed_override: Option<u64>,
    make_target: &mut TargetFactory,
) -> ScenarioResult {
    let seed = scenario.seed(seed_override);
    let mut result = ScenarioResult {
        file: scenario.file.clone(),
        name: scenario.name.clone(),
        seed,
        cases: Vec::new(),
    };
    let main = main_case(scenario);
    let (case, target) = run_case(scenario, &main, seed, make_target);
    result.cases.push(case);

    let Some((sweep_step, sweep)) = scenario.sweep() else {
        return result;
    };
    let sweep_name = format!("sweep {}", sweep.phase.as_str());
    let sweep_text = Step::Sweep(sweep.clone()).to_string();
    let target_name = target.as_ref().map(|t| t.name().to_string());
    let not_run = |outcome: Outcome, why: String, result: &mut ScenarioResult| {
        let note = SkipNote {
            step: Some(sweep_step.index),
            text: sweep_text.clone(),
            reason: why.clone(),
        };
        let mut trace = Trace {
            header: header(scenario, &sweep_name, seed, target_name.as_deref()),
            ..Trace::default()
        };
        let failure = (outcome == Outcome::Fail).then(|| Failure {
            file: scenario.file.clone(),
            scenario: scenario.name.clone(),
            case: sweep_name.clone(),
            step: Some(sweep_step.index),
            at: Some((sweep_step.line, sweep_step.column)),
            step_text: sweep_text.clone(),
            seed,
            message: why.clone(),
            last_lines: Vec::new(),
        });
        trace.push(
            Duration::ZERO,
            TraceKind::Skipped {
                index: Some(sweep_step.index),
                text: sweep_text.clone(),
                reason: why,
            },
        );
        result.cases.push(CaseResult {
            name: sweep_name.clone(),
            outcome,
            duration: Duration::ZERO,
            failure,
            skipped: if outcome == Outcome::Skip {
                vec![note]
            } else {
                Vec::new()
            },
            trace,
        });
    };
    let Some(mut target) = target else {
        not_run(
            Outcome::Skip,
            "the clean run could not start, so nothing was counted".into(),
            &mut result,
        );
        return result;
    };
    let lacking = target::missing(
        &Step::Sweep(sweep.clone()).capabilities(),
        target.capabilities(),
    );
    if !lacking.is_empty() {
        not_run(Outcome::Skip, lacks(target.name(), &lacking), &mut result);
        return result;
    }
    let clean = result.cases.last().map_or(Outcome::Fail, |c| c.outcome);
    if clean != Outcome::Pass {
        not_run(
            Outcome::Skip,
            format!(
                "the clean run did not pass ({}), so the sweep has nothing to compare with",
                clean.as_str()
            ),
            &mut result,
        );
        return result;
    }
    let ops = match target.phase_ops(sweep.phase) {
        Ok(Some(n)) if n > 0 => n,
        Ok(_) => {
            not_run(
                Outcome::Fail,
                format!(
                    "phase {} did not run in the clean run: no flash operation to cut at",
                    sweep.phase.as_str()
                ),
                &mut result,
            );
            return result;
        }
        Err(e) => {
            not_run(
                Outcome::Fail,
                format!("the target could not count the phase's flash operations: {e}"),
                &mut result,
            );
            return result;
        }
    };
    drop(target);
    for plan in sweep_cases(scenario, ops) {
        let (case, _) = run_case(scenario, &plan, seed, make_target);
        result.cases.push(case);
    }
    result
}

fn lacks(target: &str, caps: &[Capability]) -> String {
    let names: Vec<&str> = caps.iter().map(|c| c.as_str()).collect();
    format!("target {target} cannot: {}", names.join(", "))
}

fn header(scenario: &Scenario, case: &str, seed: u64, target: Option<&str>) -> Vec<String> {
    vec![
        format!("scenario {} ({})", scenario.file.display(), scenario.name),
        format!("case {case}"),
        format!("seed {seed}"),
        format!("target {}", target.unwrap_or("?")),
    ]
}

/// What the runner remembers of one case while it runs.
struct CaseRun<'s> {
    scenario: &'s Scenario,
    case: String,
    seed: u64,
    trace: Trace,
    /// Every event seen so far: (name, data).
    events: Vec<(Option<String>, String, String)>,
    /// Per device filter (`None`: any device), events before this index were matched by
    /// earlier waits with that filter.
    events_consumed: std::collections::BTreeMap<Option<String>, usize>,
    /// The device the current step names explicitly (`device = "..."`): waits for events and
    /// event expectations look only at its events.
    explicit_device: Option<String>,
    skipped: Vec<SkipNote>,
    /// Set once an action or wait was skipped: the reason later steps are skipped.
    tainted: Option<String>,
}

/// Why a case stops early.
struct Stop {
    step: Option<(usize, (usize, usize))>,
    step_text: String,
    message: String,
}

impl CaseRun<'_> {
    fn collect(&mut self, target: &mut dyn Target) -> usize {
        let entries = target.drain_trace();
        let n = entries.len();
        for entry in entries {
            if let TraceKind::Event { name, data, .. } = &entry.kind {
                self.events
                    .push((entry.device.clone(), name.clone(), data.clone()));
            }
            self.trace.push_entry(entry);
        }
        n
    }

    /// The events of the step's device when the step names one, else every event.
    fn device_events(&self) -> Vec<(String, String)> {
        self.events
            .iter()
            .filter(|(dev, _, _)| self.explicit_device.is_none() || *dev == self.explicit_device)
            .map(|(_, n, d)| (n.clone(), d.clone()))
            .collect()
    }

    fn skip(&mut self, at: Duration, index: Option<usize>, text: String, reason: String) {
        self.trace.push(
            at,
            TraceKind::Skipped {
                index,
                text: text.clone(),
                reason: reason.clone(),
            },
        );
        self.skipped.push(SkipNote {
            step: index,
            text,
            reason,
        });
    }
}

/// Runs one case on a fresh target. Returns the result and the target (for the sweep's count).
pub fn run_case(
    scenario: &Scenario,
    plan: &CasePlan,
    seed: u64,
    make_target: &mut TargetFactory,
) -> (CaseResult, Option<Box<dyn Target>>) {
    let mut run = CaseRun {
        scenario,
        case: plan.name.clone(),
        seed,
        trace: Trace::default(),
        events: Vec::new(),
        events_consumed: Default::default(),
        explicit_device: None,
        skipped: Vec::new(),
        tainted: None,
    };
    let mut target = match make_target() {
        Ok(t) => t,
        Err(e) => {
            run.trace.header = header(scenario, &plan.name, seed, None);
            let stop = Stop {
                step: None,
                step_text: "set-up".into(),
                message: format!("no target: {e}"),
            };
            return (finish(run, Duration::ZERO, Some(stop)), None);
        }
    };
    run.trace.header = header(scenario, &plan.name, seed, Some(target.name()));
    let stop = drive(&mut run, target.as_mut(), plan);
    let end = target.now();
    (finish(run, end, stop), Some(target))
}

fn finish(run: CaseRun, duration: Duration, stop: Option<Stop>) -> CaseResult {
    let failure = stop.map(|s| Failure {
        file: run.scenario.file.clone(),
        scenario: run.scenario.name.clone(),
        case: run.case.clone(),
        step: s.step.map(|(i, _)| i),
        at: s.step.map(|(_, at)| at),
        step_text: s.step_text,
        seed: run.seed,
        message: s.message,
        last_lines: run.trace.last_lines(FAILURE_TRACE_LINES),
    });
    let outcome = if failure.is_some() {
        Outcome::Fail
    } else if !run.skipped.is_empty() {
        Outcome::Skip
    } else {
        Outcome::Pass
    };
    CaseResult {
        name: run.case,
        outcome,
        duration,
        failure,
        skipped: run.skipped,
        trace: run.trace,
    }
}

fn drive(run: &mut CaseRun, target: &mut dyn Target, plan: &CasePlan) -> Option<Stop> {
    let caps: BTreeSet<Capability> = target.capabilities().clone();
    let setup = &run.scenario.setup;
    let lacking = target::missing(&setup.capabilities(), &caps);
    if !lacking.is_empty() {
        let reason = lacks(target.name(), &lacking);
        run.skip(Duration::ZERO, None, "set-up".into(), reason.clone());
        run.tainted = Some(format!("after the skipped set-up: {reason}"));
    } else if let Err(e) = target.setup(setup, run.seed) {
        run.collect(target);
        return Some(Stop {
            step: None,
            step_text: "set-up".into(),
            message: format!("set-up failed: {e}"),
        });
    }
    run.collect(target);
    let several = setup.cloud.devices.len() > 1;
    let first_device = setup
        .cloud
        .devices
        .first()
        .map_or("dut", |d| d.name.as_str());

    let ctx = StepContext {
        caps: &caps,
        several,
        first_device,
    };
    for planned in &plan.steps {
        let text = planned.step.to_string();
        if let Err(stop) = exec_step(
            run,
            target,
            &ctx,
            planned.index,
            planned.at,
            &planned.step,
            planned.device.as_deref(),
            text,
        ) {
            return Some(stop);
        }
    }

    // The final [expect] is about the first device (with several, only its events count).
    run.explicit_device = several.then(|| first_device.to_string());
    if several {
        if let Err(e) = target.select_device(first_device) {
            return Some(Stop {
                step: None,
                step_text: "final expectations ([expect])".into(),
                message: format!("selecting device {first_device} failed: {e}"),
            });
        }
    }
    if !run.scenario.expect.is_empty() {
        if let Some(why) = run.tainted.clone() {
            for e in &run.scenario.expect {
                run.skip(target.now(), None, e.to_string(), why.clone());
            }
        } else if let Some(message) = check_all(run, target, None, &run.scenario.expect, &caps) {
            return Some(Stop {
                step: None,
                step_text: "final expectations ([expect])".into(),
                message,
            });
        }
    }
    None
}

/// What every step of a case shares.
struct StepContext<'c> {
    caps: &'c BTreeSet<Capability>,
    several: bool,
    first_device: &'c str,
}

/// Runs one step (`text` is how the trace shows it). A repeat runs its inner steps here.
#[allow(clippy::too_many_arguments)]
fn exec_step(
    run: &mut CaseRun,
    target: &mut dyn Target,
    ctx: &StepContext,
    index: usize,
    at: (usize, usize),
    step: &Step,
    device: Option<&str>,
    text: String,
) -> Result<(), Stop> {
    let stop = |message: String| Stop {
        step: Some((index, at)),
        step_text: text.clone(),
        message,
    };
    if let Some(why) = run.tainted.clone() {
        run.skip(target.now(), Some(index), text.clone(), why);
        return Ok(());
    }
    let lacking = target::missing(&step.capabilities(), ctx.caps);
    if !lacking.is_empty() {
        let reason = lacks(target.name(), &lacking);
        run.skip(target.now(), Some(index), text.clone(), reason.clone());
        run.tainted = Some(format!("after skipped step {index}: {reason}"));
        return Ok(());
    }
    focus(run, target, ctx, device).map_err(stop)?;
    run.trace.push_entry(
        TraceEntry::new(
            target.now(),
            TraceKind::Step {
                index,
                text: text.clone(),
            },
        )
        .on(device),
    );
    match step {
        Step::Action(action) => {
            let result = target.apply(action);
            run.collect(target);
            if let Err(e) = result {
                return Err(stop(format!("{} failed: {e}", step.kind())));
            }
        }
        Step::Wait(wait) => wait_for(run, target, wait).map_err(stop)?,
        Step::Expect(list) => {
            if let Some(message) = check_all(run, target, Some(index), list, ctx.caps) {
                return Err(stop(message));
            }
        }
        Step::Repeat(r) => repeat(run, target, ctx, index, r, device).map_err(|mut s| {
            // The failing inner step is named by the repeat's position and its own text.
            if s.step.is_none() {
                s.step = Some((index, at));
            }
            s
        })?,
        // Planned cases never hold a sweep step (see `planned`).
        Step::Sweep(_) => return Err(stop("a sweep step was not expanded".into())),
    }
    Ok(())
}

/// Makes `device` (or the first device) the one the next step acts on and observes.
fn focus(
    run: &mut CaseRun,
    target: &mut dyn Target,
    ctx: &StepContext,
    device: Option<&str>,
) -> Result<(), String> {
    run.explicit_device = device.map(str::to_string);
    if ctx.several {
        let name = device.unwrap_or(ctx.first_device);
        target
            .select_device(name)
            .map_err(|e| format!("selecting device {name} failed: {e}"))?;
    }
    Ok(())
}

/// Runs a `repeat`: `times` iterations, or until its condition holds (checked before each
/// iteration; a failure once `max` iterations ran and it still does not). The trace gets a
/// note per iteration and one at the end with the count.
fn repeat(
    run: &mut CaseRun,
    target: &mut dyn Target,
    ctx: &StepContext,
    index: usize,
    r: &Repeat,
    device: Option<&str>,
) -> Result<(), Stop> {
    let limit = match &r.count {
        RepeatCount::Times(n) => *n,
        RepeatCount::Until { max, .. } => *max,
    };
    let mut done = 0u32;
    loop {
        if let RepeatCount::Until { condition, max } = &r.count {
            // The condition is about the repeat's device, whatever the inner steps chose.
            focus(run, target, ctx, device).map_err(|message| Stop {
                step: None,
                step_text: format!("step {index} (repeat)"),
                message,
            })?;
            let mut unmet = None;
            for e in condition {
                let verdict = check(run, target, e);
                run.collect(target);
                if let Err(why) = verdict {
                    unmet = Some(format!("{e}: {why}"));
                    break;
                }
            }
            let Some(unmet) = unmet else {
                run.trace.push(
                    target.now(),
                    TraceKind::Note {
                        text: format!(
                            "repeat (step {index}): condition met after {done} iterations"
                        ),
                    },
                );
                return Ok(());
            };
            if done == *max {
                return Err(Stop {
                    step: None,
                    step_text: format!("step {index} (repeat)"),
                    message: format!(
                        "repeat: the condition still does not hold after {max} iterations ({unmet})"
                    ),
                });
            }
        } else if done == limit {
            run.trace.push(
                target.now(),
                TraceKind::Note {
                    text: format!("repeat (step {index}): {done} iterations done"),
                },
            );
            return Ok(());
        }
        done += 1;
        run.trace.push(
            target.now(),
            TraceKind::Note {
                text: format!("repeat (step {index}): iteration {done} of at most {limit}"),
            },
        );
        for inner in &r.steps {
            let text = format!("{index}.{} (iteration {done}): {}", inner.index, inner.step);
            let dev = inner.device.as_deref().or(device);
            exec_step(
                run,
                target,
                ctx,
                index,
                (inner.line, inner.column),
                &inner.step,
                dev,
                text,
            )?;
        }
        if run.tainted.is_some() {
            return Ok(());
        }
    }
}

/// Checks each expectation (skipping those the target cannot observe). Returns the failures
/// joined, if any.
fn check_all(
    run: &mut CaseRun,
    target: &mut dyn Target,
    index: Option<usize>,
    list: &[Expectation],
    caps: &BTreeSet<Capability>,
) -> Option<String> {
    let mut failures = Vec::new();
    for e in list {
        let text = e.to_string();
        let lacking = target::missing(&e.capabilities(), caps);
        if !lacking.is_empty() {
            run.skip(target.now(), index, text, lacks(target.name(), &lacking));
            continue;
        }
        let verdict = check(run, target, e);
        run.collect(target);
        let (ok, detail) = match &verdict {
            Ok(()) => (true, String::new()),
            Err(why) => (false, why.clone()),
        };
        run.trace.push(
            target.now(),
            TraceKind::Checked {
                index,
                text: text.clone(),
                ok,
                detail,
            },
        );
        if let Err(why) = verdict {
            failures.push(format!("expected {text}: {why}"));
        }
    }
    (!failures.is_empty()).then(|| failures.join("; "))
}

fn not_reported(what: &str) -> String {
    format!("the target did not report {what}")
}

fn compare<T: PartialEq + fmt::Display>(
    out: &mut Vec<String>,
    what: &str,
    want: Option<T>,
    got: T,
) {
    if let Some(want) = want {
        if want != got {
            out.push(format!("{what} is {got}, not {want}"));
        }
    }
}

fn check(run: &CaseRun, target: &mut dyn Target, e: &Expectation) -> Result<(), String> {
    let observe = |target: &mut dyn Target| -> Result<Observation, String> {
        target
            .observe()
            .map_err(|e| format!("observing the device failed: {e}"))
    };
    match e {
        Expectation::Running(want) => {
            let obs = observe(target)?;
            let running = obs
                .running
                .ok_or_else(|| not_reported("the running versions"))?;
            let Some(got) = running else {
                // Safe mode: Device OS runs, the application does not. Its versions can still
                // be checked; an app version cannot.
                if let Some(Some(system)) = obs.system.filter(|_| obs.safe_mode == Some(true)) {
                    let mut diffs = Vec::new();
                    compare(&mut diffs, "device_os", want.device_os, system.device_os);
                    compare(&mut diffs, "bootloader", want.bootloader, system.bootloader);
                    if want.app.is_some() {
                        diffs.push("the device is in safe mode: no application runs".into());
                    }
                    return if diffs.is_empty() {
                        Ok(())
                    } else {
                        Err(diffs.join(", "))
                    };
                }
                return Err("the device runs no firmware (powered off or nothing bootable)".into());
            };
            let mut diffs = Vec::new();
            compare(&mut diffs, "device_os", want.device_os, got.device_os);
            compare(&mut diffs, "app", want.app, got.app);
            compare(&mut diffs, "bootloader", want.bootloader, got.bootloader);
            if diffs.is_empty() {
                Ok(())
            } else {
                Err(diffs.join(", "))
            }
        }
        Expectation::SafeMode(want) => {
            let got = observe(target)?
                .safe_mode
                .ok_or_else(|| not_reported("safe mode"))?;
            if got == *want {
                Ok(())
            } else if got {
                Err("the device is in safe mode".into())
            } else {
                Err("the device is not in safe mode".into())
            }
        }
        Expectation::Online(want) => {
            let got = observe(target)?
                .online
                .ok_or_else(|| not_reported("its connection"))?;
            if got == *want {
                Ok(())
            } else {
                Err(format!(
                    "the device is {}",
                    if got { "online" } else { "offline" }
                ))
            }
        }
        Expectation::LastReset(want) => {
            let got = observe(target)?
                .last_reset
                .ok_or_else(|| not_reported("the last reset reason"))?;
            if got == *want {
                Ok(())
            } else {
                Err(format!("the last reset was {got:?}"))
            }
        }
        Expectation::Events(list) => {
            let events = run.device_events();
            let mut from = 0;
            for (i, pattern) in list.iter().enumerate() {
                match events[from..]
                    .iter()
                    .position(|(n, d)| pattern.matches(n, d))
                {
                    Some(p) => from += p + 1,
                    None => {
                        let matched = if i == 0 {
                            String::new()
                        } else {
                            format!(" after {}", list[i - 1])
                        };
                        return Err(format!(
                            "{pattern} not seen{matched} ({} of {} matched in order; {} events seen)",
                            i,
                            list.len(),
                            events.len()
                        ));
                    }
                }
            }
            Ok(())
        }
        Expectation::SessionResumed(want) => {
            let obs = observe(target)?;
            // About the connection the device has now (not one it lost or is re-making).
            if obs.online != Some(true) {
                return Err("the device is not connected now".into());
            }
            let got = obs
                .session_resumed
                .ok_or_else(|| not_reported("how its session was made"))?;
            let name = |r: bool| {
                if r {
                    "resumed its session"
                } else {
                    "made a full handshake"
                }
            };
            if got == *want {
                Ok(())
            } else {
                Err(format!("its last connection {}", name(got)))
            }
        }
        Expectation::TransfersSinceBoot(want) => {
            let got = observe(target)?
                .transfers_since_boot
                .ok_or_else(|| not_reported("transfers since boot"))?;
            if got == *want {
                Ok(())
            } else {
                Err(format!("{got} transfers began since the current boot"))
            }
        }
        Expectation::EventCounts(list) => {
            let events = run.device_events();
            let mut diffs = Vec::new();
            for (pattern, want) in list {
                let got = events.iter().filter(|(n, d)| pattern.matches(n, d)).count();
                if got != *want as usize {
                    diffs.push(format!("{pattern} was seen {got} times, not {want}"));
                }
            }
            if diffs.is_empty() {
                Ok(())
            } else {
                Err(diffs.join(", "))
            }
        }
        Expectation::EventsAbsent(list) => {
            for pattern in list {
                if let Some((n, d)) = run
                    .device_events()
                    .into_iter()
                    .find(|(n, d)| pattern.matches(n, d))
                {
                    return Err(format!("{n} {d:?} was seen"));
                }
            }
            Ok(())
        }
        Expectation::Flags(want) => {
            let got = observe(target)?
                .flags
                .ok_or_else(|| not_reported("the system flags"))?;
            let mut diffs = Vec::new();
            compare(
                &mut diffs,
                "updates_enabled",
                want.updates_enabled,
                got.updates_enabled,
            );
            compare(
                &mut diffs,
                "updates_pending",
                want.updates_pending,
                got.updates_pending,
            );
            compare(
                &mut diffs,
                "updates_forced",
                want.updates_forced,
                got.updates_forced,
            );
            compare(
                &mut diffs,
                "reset_enabled",
                want.reset_enabled,
                got.reset_enabled,
            );
            compare(
                &mut diffs,
                "reset_pending",
                want.reset_pending,
                got.reset_pending,
            );
            if diffs.is_empty() {
                Ok(())
            } else {
                Err(diffs.join(", "))
            }
        }
        Expectation::Ota(want) => {
            let got = observe(target)?
                .ota
                .ok_or_else(|| not_reported("the OTA state"))?;
            let mut diffs = Vec::new();
            compare(
                &mut diffs,
                "state",
                want.state.map(OtaState::as_str),
                got.state.as_str(),
            );
            if let Some(min) = want.min_percent {
                if got.percent() < min as u64 {
                    diffs.push(format!(
                        "{}% received ({}/{}), not at least {min}%",
                        got.percent(),
                        got.received,
                        got.total
                    ));
                }
            }
            if let Some(resumed) = want.resumed {
                match (resumed, got.resumed_from) {
                    (true, None) => diffs.push("the transfer did not resume (started at 0)".into()),
                    (false, Some(off)) => {
                        diffs.push(format!("the transfer resumed from offset {off}"))
                    }
                    _ => {}
                }
            }
            if let Some(code) = want.error {
                match got.error {
                    Some(c) if c == code => {}
                    Some(c) => diffs.push(format!("error is {c}, not {code}")),
                    None => diffs.push(format!("no error, not {code}")),
                }
            }
            if diffs.is_empty() {
                Ok(())
            } else {
                Err(diffs.join(", "))
            }
        }
        Expectation::NothingLost => match target.inspect_firmware() {
            Ok(FirmwareIntegrity::OldIntact) | Ok(FirmwareIntegrity::NewComplete) => Ok(()),
            Ok(FirmwareIntegrity::Lost { detail }) => Err(format!("firmware lost: {detail}")),
            Err(e) => Err(format!("reading the flash failed: {e}")),
        },
    }
}

fn wait_for(run: &mut CaseRun, target: &mut dyn Target, wait: &Wait) -> Result<(), String> {
    let start = target.now();
    let (deadline, what) = match wait {
        Wait::Event { timeout, event, .. } => (start + *timeout, format!("event {event}")),
        Wait::State {
            timeout,
            state,
            boot,
            running,
        } => {
            let mut what = format!("state {}", state.as_str());
            if let Some(r) = running {
                what.push_str(&format!(" with {}", Expectation::Running(*r)));
            }
            if *boot == WhichBoot::Next {
                what.push_str(" after a new boot");
            }
            (start + *timeout, what)
        }
        Wait::Ota {
            timeout,
            progress,
            transfer,
        } => {
            let which = match transfer {
                WhichTransfer::Current => "",
                WhichTransfer::Next => " of a new transfer",
            };
            (start + *timeout, format!("OTA progress {progress}{which}"))
        }
        Wait::Time(d) => (start + *d, String::new()),
    };
    run.collect(target);
    // What the wait starts from: it is never satisfied by what ended before it.
    let observe = |target: &mut dyn Target| {
        target
            .observe()
            .map_err(|e| format!("observing the device failed: {e}"))
    };
    let boots_at_start = match wait {
        Wait::State {
            boot: WhichBoot::Next,
            ..
        } => Some(
            observe(target)?
                .boots
                .ok_or_else(|| not_reported("its boots"))?,
        ),
        _ => None,
    };
    let ota_at_start = match wait {
        Wait::Ota { .. } => {
            let o = observe(target)?
                .ota
                .ok_or_else(|| not_reported("the OTA state"))?;
            Some((o.started, o.state == OtaState::InProgress))
        }
        _ => None,
    };
    let events_at_start = run.events.len();
    let mut stalls = 0;
    loop {
        run.collect(target);
        let met = match wait {
            Wait::Event { event, from, .. } => {
                let key = run.explicit_device.clone();
                let consumed = run.events_consumed.get(&key).copied().unwrap_or(0);
                let search_from = match from {
                    EventsFrom::Cursor => consumed,
                    EventsFrom::Step => events_at_start.max(consumed),
                    EventsFrom::Start => 0,
                };
                let found = run.events[search_from.min(run.events.len())..]
                    .iter()
                    .position(|(dev, n, d)| (key.is_none() || *dev == key) && event.matches(n, d));
                match found {
                    Some(p) if *from != EventsFrom::Start => {
                        run.events_consumed.insert(key, search_from + p + 1);
                        true
                    }
                    Some(_) => true,
                    None => false,
                }
            }
            Wait::State { state, running, .. } => {
                let obs = observe(target)?;
                let booted = match boots_at_start {
                    Some(before) => obs.boots.ok_or_else(|| not_reported("its boots"))? > before,
                    None => true,
                };
                let versions = match running {
                    Some(want) => match &obs.running {
                        Some(Some(got)) => running_matches(want, got),
                        Some(None) => false,
                        None => return Err(not_reported("the running firmware")),
                    },
                    None => true,
                };
                booted && versions && in_state(&obs, *state)?
            }
            Wait::Ota {
                progress, transfer, ..
            } => {
                let obs = observe(target)?;
                let ota = obs.ota.ok_or_else(|| not_reported("the OTA state"))?;
                let (started_before, running_then) = ota_at_start.unwrap_or((0, false));
                let new_transfer = ota.started > started_before;
                let which = match transfer {
                    // The transfer running when the wait began (it may have ended since:
                    // what it reached counts), or a later one; never one that had ended.
                    WhichTransfer::Current => {
                        new_transfer || running_then || ota.state == OtaState::InProgress
                    }
                    WhichTransfer::Next => new_transfer,
                };
                which && ota.state != OtaState::Idle && progress.reached(ota.received, ota.total)
            }
            Wait::Time(_) => false,
        };
        if met {
            return Ok(());
        }
        let now = target.now();
        if now >= deadline {
            return match wait {
                Wait::Time(_) => Ok(()),
                _ => Err(format!(
                    "{what} not reached within {} (waited from {} to {})",
                    format_duration(deadline - start),
                    format_time(start).trim(),
                    format_time(now).trim()
                )),
            };
        }
        target
            .advance(deadline)
            .map_err(|e| format!("the target failed while time passed: {e}"))?;
        let moved = run.collect(target) > 0 || target.now() != now;
        if moved {
            stalls = 0;
        } else {
            stalls += 1;
            if stalls > MAX_STALLS {
                return Err(format!(
                    "the target made no progress at {} while waiting",
                    format_time(now).trim()
                ));
            }
        }
    }
}

/// Whether the running versions are those `want` names (fields it leaves out match anything).
fn running_matches(want: &RunningExpect, got: &target::RunningVersions) -> bool {
    want.device_os.is_none_or(|v| v == got.device_os)
        && want.app.is_none_or(|v| v == got.app)
        && want.bootloader.is_none_or(|v| v == got.bootloader)
}

fn in_state(obs: &Observation, state: DeviceState) -> Result<bool, String> {
    let need = |v: Option<bool>, what: &str| v.ok_or_else(|| not_reported(what));
    Ok(match state {
        DeviceState::Online => need(obs.online, "its connection")?,
        DeviceState::Offline => !need(obs.online, "its connection")?,
        DeviceState::PoweredOff => !need(obs.powered, "power")?,
        DeviceState::Running => {
            need(obs.powered, "power")?
                && matches!(obs.running, Some(Some(_)))
                && !need(obs.safe_mode, "safe mode")?
        }
        DeviceState::SafeMode => need(obs.safe_mode, "safe mode")?,
        DeviceState::Sleeping => need(obs.sleeping, "sleep")?,
        DeviceState::Updating => {
            obs.ota.ok_or_else(|| not_reported("the OTA state"))?.state == OtaState::InProgress
        }
        DeviceState::ResetPending => {
            obs.flags
                .ok_or_else(|| not_reported("the system flags"))?
                .reset_pending
        }
        DeviceState::UpdatePending => {
            obs.flags
                .ok_or_else(|| not_reported("the system flags"))?
                .updates_pending
        }
    })
}
