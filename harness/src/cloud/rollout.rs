//! Staged percentage rollouts with abort rules: a product release that reaches its devices in
//! stages (for example 1 %, 10 %, 50 %, 100 %), each after a soak time, and that pauses or
//! rolls back when the devices already updated go wrong. Particle's Device Cloud has no such
//! thing (a release reaches every device it targets, particle-cloud-api.md 4.5); this is the
//! useful union of what other OTA services offer, with their vocabulary:
//!
//! - Eclipse hawkBit rollouts: *rollout groups* in order, a *success condition* (a threshold
//!   of the group's devices finished) before the next group starts, an *error condition* (a
//!   threshold of failures) whose *error action* is `PAUSE`.
//! - Mender phased deployments: *phases* given as a percentage (`batch_size`) of the devices,
//!   each starting after the one before.
//! - AWS IoT Jobs: `abortConfig.criteriaList` entries of `failureType` (`FAILED`, `TIMED_OUT`,
//!   `ALL`), `thresholdPercentage`, `minNumberOfExecutedThings` and `action` (`CANCEL`), and
//!   `timeoutConfig.inProgressTimeoutInMinutes` (an execution in progress that long is
//!   `TIMED_OUT`).
//!
//! Everything is decided from the cloud's own event stream, as an operator's rule engine would
//! see it live: `spark/flash/status` `started` / `failed`, `spark/status` `online` with the
//! version of the device's Hello, the safe-mode events, plus the cloud's clock for timeouts.
//! A device counts as *succeeded* only when it comes back online running the rollout's version
//! (its own Hello), never at `spark/flash/status success` (that only says the transfer ended).
//!
//! A person controls a rollout too (`pause`, `resume`, `abort`; [`Rollout::control`]), as with
//! hawkBit's rollout pause / resume and AWS IoT Jobs' `CancelJob`. The states and what moves
//! between them:
//!
//! ```text
//!   running(stage n) --soak over, success condition--> running(n+1) ... --> completed
//!   running --abort rule `pause`/`cancel`--> paused(by abort_rule)
//!   running --abort rule `rollback`--------> rolled_back            (terminal)
//!   running --person `pause`---------------> paused(by person)
//!   paused  --person `resume`--------------> running (same stage; the next stage when due)
//!   running | paused --person `abort`------> aborted                (terminal)
//! ```
//!
//! - Resume works on a rollout paused by an abort rule too: hawkBit has one `PAUSED` state
//!   whatever paused it (its error action `PAUSE`, or a person) and resumes it the same way.
//!   The failures that fired the rule are then *excused*: the abort criteria no longer count
//!   those devices (the person has seen them and chose to go on), so the rule fires again only
//!   on new failures. The success condition still counts every targeted device.
//! - The soak is measured from the start of the stage; time spent paused counts.
//! - `abort` follows AWS `CancelJob` without `force`, and the automatic `pause`/`cancel`
//!   action: no device is admitted any more, devices whose update started (in progress,
//!   succeeded, failed, timed out) keep the version, their transfers go on; admitted devices
//!   whose update has not started yet (AWS `QUEUED`; here no `spark/flash/status started`
//!   seen) are *withdrawn*: they go back to the product's default, as after a rollback. The
//!   version is not released as the default. An aborted rollout cannot be resumed (start a new
//!   one); a rolled back or completed one cannot be paused or aborted.
//!
//! Every state change is a [`Transition`] (kept, saved with the rollout, and published by the
//! REST API on the product's event stream as `hil/rollout/<kind>`).
//!
//! This module is pure: [`Rollout`] takes events and times and answers with the devices to
//! admit or withdraw; [`super::Cloud`] (in `products.rs`) applies them to the fleet.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::event::StreamEvent;
use super::fleet::ProductId;
use super::{names, DeviceId};

/// What a failing device counts as, for an abort criterion (AWS `failureType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureType {
    /// The cloud reported `spark/flash/status failed`.
    Failed,
    /// Not back online running the version within the in-progress timeout after its update
    /// started (a build that does not reconnect).
    TimedOut,
    /// The device reported safe mode after it was admitted.
    SafeMode,
    /// Any of the above.
    All,
}

impl FailureType {
    pub fn parse(text: &str) -> Option<FailureType> {
        Some(match text.to_ascii_lowercase().as_str() {
            "failed" => FailureType::Failed,
            "timed_out" => FailureType::TimedOut,
            "safe_mode" => FailureType::SafeMode,
            "all" => FailureType::All,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            FailureType::Failed => "failed",
            FailureType::TimedOut => "timed_out",
            FailureType::SafeMode => "safe_mode",
            FailureType::All => "all",
        }
    }

    fn matches(self, outcome: Outcome) -> bool {
        match (self, outcome) {
            (FailureType::All, o) => o.is_failure(),
            (FailureType::Failed, Outcome::Failed) => true,
            (FailureType::TimedOut, Outcome::TimedOut) => true,
            (FailureType::SafeMode, Outcome::SafeMode) => true,
            _ => false,
        }
    }
}

/// What a met abort criterion does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortAction {
    /// hawkBit's `PAUSE` (AWS `CANCEL` of the executions not started): no more devices are
    /// admitted; the devices already admitted keep the version.
    Pause,
    /// As `Pause`, and the admitted devices go back to the product's previous target (the
    /// default release before the rollout), delivered as the rollout was (at once for an
    /// intelligent rollout, else at their next handshake).
    Rollback,
}

impl AbortAction {
    pub fn parse(text: &str) -> Option<AbortAction> {
        Some(match text.to_ascii_lowercase().as_str() {
            "pause" | "cancel" => AbortAction::Pause,
            "rollback" => AbortAction::Rollback,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            AbortAction::Pause => "pause",
            AbortAction::Rollback => "rollback",
        }
    }
}

/// One abort rule (an entry of AWS's `abortConfig.criteriaList`).
#[derive(Debug, Clone, PartialEq)]
pub struct AbortCriterion {
    pub failure_type: FailureType,
    /// Percentage of the executed devices (admitted devices with an outcome: succeeded or a
    /// failure) that must have failed this way.
    pub threshold_percentage: f64,
    /// Not judged before this many admitted devices have an outcome.
    pub min_number_of_executed_things: u32,
    pub action: AbortAction,
}

/// How a staged rollout goes.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutPlan {
    pub version: u16,
    /// Admitted devices get the version at once when online (an intelligent release), else
    /// at their next handshake.
    pub intelligent: bool,
    /// Cumulative percentages of the product's (non-development) devices, ascending, in
    /// `1..=100` (hawkBit's rollout groups, Mender's phases).
    pub stages: Vec<f64>,
    /// How long a stage runs at least before the next one starts.
    pub soak: Duration,
    /// Percentage of the admitted devices that must have succeeded before the next stage
    /// (hawkBit's success condition).
    pub success_threshold: f64,
    /// An update started this long ago whose device is not back online running the version
    /// is `TIMED_OUT` (AWS `inProgressTimeoutInMinutes`).
    pub in_progress_timeout: Duration,
    pub abort: Vec<AbortCriterion>,
}

impl RolloutPlan {
    /// Checks the plan; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.stages.is_empty() {
            return Err("stages: at least one stage is needed".into());
        }
        let mut last = 0.0;
        for s in &self.stages {
            if !(*s > 0.0 && *s <= 100.0) || *s <= last {
                return Err(format!(
                    "stages: {s} is not a percentage above the one before it (stages are \
                     cumulative, ascending, in 0..=100)"
                ));
            }
            last = *s;
        }
        if !(0.0..=100.0).contains(&self.success_threshold) {
            return Err(format!(
                "success_threshold: {} is not a percentage",
                self.success_threshold
            ));
        }
        for (i, c) in self.abort.iter().enumerate() {
            if !(0.0..=100.0).contains(&c.threshold_percentage) {
                return Err(format!(
                    "abort[{i}].threshold_percentage: {} is not a percentage",
                    c.threshold_percentage
                ));
            }
        }
        Ok(())
    }
}

/// A staged rollout as written by a person: the keys of a fleet scenario's `[[fleet.rollout]]`
/// and of the REST API's `POST /v1/products/:product/rollouts` body (one deserialisation for
/// both; durations as in scenario files: `90s`, `1h`, `1d12h`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// When it starts (scenario files; the API starts it at once and refuses `at`).
    #[serde(default, deserialize_with = "optional_span")]
    pub at: Option<Duration>,
    /// The product firmware version to roll out.
    pub app: u16,
    #[serde(default)]
    pub intelligent: bool,
    pub stages: Vec<f64>,
    #[serde(deserialize_with = "span")]
    pub soak: Duration,
    #[serde(default = "default_success")]
    pub success_threshold: f64,
    #[serde(deserialize_with = "span")]
    pub in_progress_timeout: Duration,
    #[serde(default)]
    pub abort: Vec<AbortSpec>,
}

fn default_success() -> f64 {
    100.0
}

/// One `abort` entry of a [`RolloutSpec`] (`[[fleet.rollout.abort]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortSpec {
    pub failure_type: String,
    pub threshold_percentage: f64,
    #[serde(default = "default_min_executed")]
    pub min_number_of_executed_things: u32,
    #[serde(default = "default_action")]
    pub action: String,
}

fn default_min_executed() -> u32 {
    1
}

fn default_action() -> String {
    "pause".into()
}

fn parse_span<E: serde::de::Error>(text: &str) -> Result<Duration, E> {
    crate::scenario::model::parse_duration(text).ok_or_else(|| {
        E::custom(format!(
            "`{text}` is not a duration (examples: 250ms, 30s, 5m, 2h, 1d, 1h30m)"
        ))
    })
}

fn span<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_span(&String::deserialize(d)?)
}

fn optional_span<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(text) => parse_span(&text).map(Some),
        None => Ok(None),
    }
}

impl RolloutSpec {
    /// The checked plan. An error is `(field, message)`, the field relative to the spec
    /// (`abort[0].action`; empty for the plan as a whole).
    pub fn plan(&self) -> Result<RolloutPlan, (String, String)> {
        let mut abort = Vec::new();
        for (k, a) in self.abort.iter().enumerate() {
            abort.push(AbortCriterion {
                failure_type: FailureType::parse(&a.failure_type).ok_or_else(|| {
                    (
                        format!("abort[{k}].failure_type"),
                        format!(
                            "`{}` is not one of failed, timed_out, safe_mode, all",
                            a.failure_type
                        ),
                    )
                })?,
                threshold_percentage: a.threshold_percentage,
                min_number_of_executed_things: a.min_number_of_executed_things,
                action: AbortAction::parse(&a.action).ok_or_else(|| {
                    (
                        format!("abort[{k}].action"),
                        format!("`{}` is not one of pause, cancel, rollback", a.action),
                    )
                })?,
            });
        }
        let plan = RolloutPlan {
            version: self.app,
            intelligent: self.intelligent,
            stages: self.stages.clone(),
            soak: self.soak,
            success_threshold: self.success_threshold,
            in_progress_timeout: self.in_progress_timeout,
            abort,
        };
        plan.validate().map_err(|m| (String::new(), m))?;
        Ok(plan)
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutState {
    /// Stage `stage` (1-based) runs.
    Running {
        stage: usize,
    },
    /// An abort criterion or a person stopped it at `stage`; `resume` goes on.
    Paused {
        stage: usize,
        reason: String,
        by: Actor,
    },
    RolledBack {
        stage: usize,
        reason: String,
    },
    /// A person aborted it at `stage` (AWS `CancelJob`): terminal.
    Aborted {
        stage: usize,
        reason: String,
    },
    /// Every stage admitted and the last stage's success condition met: the version is now
    /// the product default.
    Completed,
}

/// Who changed a rollout's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// The plan: a stage started, the rollout completed.
    Plan,
    /// An abort criterion.
    AbortRule,
    /// A person, through the REST API or a scenario's `[[fleet.rollout_control]]`.
    Person,
}

impl Actor {
    pub fn name(self) -> &'static str {
        match self {
            Actor::Plan => "plan",
            Actor::AbortRule => "abort_rule",
            Actor::Person => "person",
        }
    }

    fn parse(text: &str) -> Option<Actor> {
        Some(match text {
            "plan" => Actor::Plan,
            "abort_rule" => Actor::AbortRule,
            "person" => Actor::Person,
            _ => return None,
        })
    }
}

/// What a person asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    /// Cancel (AWS `CancelJob` without `force`).
    Abort,
}

impl Control {
    /// `pause`, `resume`, `abort` (or `cancel`).
    pub fn parse(text: &str) -> Option<Control> {
        Some(match text.to_ascii_lowercase().as_str() {
            "pause" => Control::Pause,
            "resume" => Control::Resume,
            "abort" | "cancel" => Control::Abort,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Control::Pause => "pause",
            Control::Resume => "resume",
            Control::Abort => "abort",
        }
    }
}

/// A control that the rollout's state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a rollout that is {state}: {hint}")]
pub struct ControlError {
    pub action: &'static str,
    pub state: &'static str,
    pub hint: &'static str,
}

/// What kind of state change a [`Transition`] is (the last part of its event name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionKind {
    Started,
    /// The next stage started.
    Stage,
    Paused,
    Resumed,
    Aborted,
    RolledBack,
    Completed,
}

impl TransitionKind {
    pub fn name(self) -> &'static str {
        match self {
            TransitionKind::Started => "started",
            TransitionKind::Stage => "stage",
            TransitionKind::Paused => "paused",
            TransitionKind::Resumed => "resumed",
            TransitionKind::Aborted => "aborted",
            TransitionKind::RolledBack => "rolled_back",
            TransitionKind::Completed => "completed",
        }
    }

    fn parse(text: &str) -> Option<TransitionKind> {
        Some(match text {
            "started" => TransitionKind::Started,
            "stage" => TransitionKind::Stage,
            "paused" => TransitionKind::Paused,
            "resumed" => TransitionKind::Resumed,
            "aborted" => TransitionKind::Aborted,
            "rolled_back" => TransitionKind::RolledBack,
            "completed" => TransitionKind::Completed,
            _ => return None,
        })
    }
}

/// One change of a rollout's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub at: Duration,
    pub kind: TransitionKind,
    /// The stage after the change.
    pub stage: usize,
    pub by: Actor,
    /// Why (an abort criterion's finding, a person's reason); empty if none was given.
    pub reason: String,
    /// Devices withdrawn by it (an abort's devices that had not started).
    pub withdrawn: u32,
}

impl RolloutState {
    pub fn name(&self) -> &'static str {
        match self {
            RolloutState::Running { .. } => "running",
            RolloutState::Paused { .. } => "paused",
            RolloutState::RolledBack { .. } => "rolled_back",
            RolloutState::Aborted { .. } => "aborted",
            RolloutState::Completed => "completed",
        }
    }

    /// Why it paused, rolled back or was aborted.
    pub fn reason(&self) -> Option<&str> {
        match self {
            RolloutState::Paused { reason, .. }
            | RolloutState::RolledBack { reason, .. }
            | RolloutState::Aborted { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// It can change no more (rolled back, aborted, completed).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RolloutState::RolledBack { .. }
                | RolloutState::Aborted { .. }
                | RolloutState::Completed
        )
    }

    /// The stage it is at or stopped at (the last for a completed one).
    pub fn stage(&self, stages: usize) -> usize {
        match self {
            RolloutState::Running { stage }
            | RolloutState::Paused { stage, .. }
            | RolloutState::RolledBack { stage, .. }
            | RolloutState::Aborted { stage, .. } => *stage,
            RolloutState::Completed => stages,
        }
    }
}

/// What an admitted device has shown so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Admitted, no update seen yet.
    Waiting,
    InProgress,
    Succeeded,
    Failed,
    TimedOut,
    SafeMode,
    /// Admitted, then withdrawn before its update started (an abort): no longer targeted.
    Withdrawn,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Waiting => "waiting",
            Outcome::InProgress => "in_progress",
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::SafeMode => "safe_mode",
            Outcome::Withdrawn => "withdrawn",
        }
    }

    fn parse(text: &str) -> Option<Outcome> {
        [
            Outcome::Waiting,
            Outcome::InProgress,
            Outcome::Succeeded,
            Outcome::Failed,
            Outcome::TimedOut,
            Outcome::SafeMode,
            Outcome::Withdrawn,
        ]
        .into_iter()
        .find(|o| o.name() == text)
    }

    fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::Failed | Outcome::TimedOut | Outcome::SafeMode
        )
    }
}

#[derive(Debug, Clone)]
struct Admitted {
    stage: usize,
    outcome: Outcome,
    /// When its update last started (`spark/flash/status started`).
    started_at: Option<Duration>,
}

/// Counts over the admitted devices (`admitted`: still targeted, the withdrawn not included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolloutCounts {
    pub admitted: u32,
    pub withdrawn: u32,
    pub waiting: u32,
    pub in_progress: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub timed_out: u32,
    pub safe_mode: u32,
}

impl RolloutCounts {
    /// Devices with an outcome (AWS's "executed things").
    pub fn executed(&self) -> u32 {
        self.succeeded + self.failed + self.timed_out + self.safe_mode
    }
}

/// What the cloud must do after the rollout looked at something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutAction {
    /// Give these devices the version.
    Admit(Vec<DeviceId>),
    /// Take the version back from these devices.
    Withdraw(Vec<DeviceId>),
    /// Every stage done: release the version as the product default.
    Complete,
    /// Take the version back from these devices only (an abort's devices that had not
    /// started); the others keep it.
    Cancel(Vec<DeviceId>),
}

/// One staged rollout of a product (at most one per product at a time).
#[derive(Debug, Clone)]
pub struct Rollout {
    /// Its number within the product (1 for the first rollout of the product).
    pub id: u32,
    pub product: ProductId,
    pub plan: RolloutPlan,
    pub state: RolloutState,
    pub started_at: Duration,
    stage_started_at: Duration,
    /// The product's devices in admission order (a stable hash of id and version).
    order: Vec<DeviceId>,
    admitted: BTreeMap<DeviceId, Admitted>,
    /// Failed devices a person chose to go on with (resume after an abort rule): the abort
    /// criteria do not count them.
    excused: BTreeSet<DeviceId>,
    /// What happened, for an operator (time, text).
    pub log: Vec<(Duration, String)>,
    /// Every state change, oldest first.
    pub transitions: Vec<Transition>,
}

impl Rollout {
    /// A rollout over `devices` (the product's non-development devices), stage 1 admitted at
    /// once: the returned action names its devices.
    pub fn start(
        now: Duration,
        product: ProductId,
        plan: RolloutPlan,
        devices: impl IntoIterator<Item = DeviceId>,
    ) -> (Rollout, RolloutAction) {
        let version = plan.version;
        let mut order: Vec<([u8; 32], DeviceId)> = devices
            .into_iter()
            .map(|d| {
                let mut h = Sha256::new();
                h.update(d.0);
                h.update(version.to_be_bytes());
                (h.finalize().into(), d)
            })
            .collect();
        order.sort();
        let mut rollout = Rollout {
            id: 1,
            product,
            plan,
            state: RolloutState::Running { stage: 1 },
            started_at: now,
            stage_started_at: now,
            order: order.into_iter().map(|(_, d)| d).collect(),
            admitted: BTreeMap::new(),
            excused: BTreeSet::new(),
            log: Vec::new(),
            transitions: Vec::new(),
        };
        rollout.transition(
            now,
            TransitionKind::Started,
            1,
            Actor::Plan,
            String::new(),
            0,
        );
        let admit = rollout.admit_stage(now, 1);
        (rollout, RolloutAction::Admit(admit))
    }

    /// How many of the ordered devices stage `stage` (1-based) covers, cumulatively: the
    /// percentage rounded up, at least one device.
    fn stage_size(&self, stage: usize) -> usize {
        let pct = self.plan.stages.get(stage - 1).copied().unwrap_or(100.0);
        let n = self.order.len() as f64 * pct / 100.0;
        (n.ceil() as usize).clamp(1.min(self.order.len()), self.order.len())
    }

    fn admit_stage(&mut self, now: Duration, stage: usize) -> Vec<DeviceId> {
        let upto = self.stage_size(stage);
        let new: Vec<DeviceId> = self
            .order
            .iter()
            .take(upto)
            .filter(|d| !self.admitted.contains_key(d))
            .copied()
            .collect();
        for d in &new {
            self.admitted.insert(
                *d,
                Admitted {
                    stage,
                    outcome: Outcome::Waiting,
                    started_at: None,
                },
            );
        }
        self.stage_started_at = now;
        self.log.push((
            now,
            format!(
                "stage {stage} ({}%): {} devices admitted, {upto} in all",
                self.plan.stages.get(stage - 1).copied().unwrap_or(100.0),
                new.len()
            ),
        ));
        new
    }

    fn transition(
        &mut self,
        at: Duration,
        kind: TransitionKind,
        stage: usize,
        by: Actor,
        reason: String,
        withdrawn: u32,
    ) {
        self.transitions.push(Transition {
            at,
            kind,
            stage,
            by,
            reason,
            withdrawn,
        });
    }

    /// Admitted and still targeted (not withdrawn).
    pub fn is_admitted(&self, device: DeviceId) -> bool {
        self.admitted
            .get(&device)
            .is_some_and(|a| a.outcome != Outcome::Withdrawn)
    }

    /// Whether the rollout still gives its version to its admitted devices (running, paused
    /// or completed; not rolled back).
    pub fn holds(&self) -> bool {
        !matches!(self.state, RolloutState::RolledBack { .. })
    }

    /// The outcome of an admitted device.
    pub fn outcome(&self, device: DeviceId) -> Option<Outcome> {
        self.admitted.get(&device).map(|a| a.outcome)
    }

    /// The devices admitted and still targeted.
    pub fn admitted(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.admitted
            .iter()
            .filter(|(_, a)| a.outcome != Outcome::Withdrawn)
            .map(|(d, _)| *d)
    }

    pub fn counts(&self) -> RolloutCounts {
        self.counts_where(|_| true)
    }

    /// Counts over the devices admitted at each stage (index 0 is stage 1), one entry per
    /// stage of the plan.
    pub fn stage_counts(&self) -> Vec<RolloutCounts> {
        (1..=self.plan.stages.len())
            .map(|s| self.counts_where(|a| a.stage == s))
            .collect()
    }

    fn counts_where(&self, pick: impl Fn(&Admitted) -> bool) -> RolloutCounts {
        let mut c = RolloutCounts::default();
        for a in self.admitted.values().filter(|a| pick(a)) {
            if a.outcome == Outcome::Withdrawn {
                c.withdrawn += 1;
                continue;
            }
            c.admitted += 1;
            match a.outcome {
                Outcome::Waiting => c.waiting += 1,
                Outcome::InProgress => c.in_progress += 1,
                Outcome::Succeeded => c.succeeded += 1,
                Outcome::Failed => c.failed += 1,
                Outcome::TimedOut => c.timed_out += 1,
                Outcome::SafeMode => c.safe_mode += 1,
                Outcome::Withdrawn => {}
            }
        }
        c
    }

    /// Takes one event of the cloud's stream into account.
    pub fn observe(&mut self, event: &StreamEvent) {
        let Some(a) = self
            .admitted
            .get_mut(&event.device_id)
            .filter(|a| a.outcome != Outcome::Withdrawn)
        else {
            return;
        };
        let data = event.data.trim();
        match event.name.as_str() {
            names::FLASH_STATUS if data == names::FLASH_STARTED.trim() => {
                // A retry after a failure or a timeout starts the clock again.
                if a.outcome != Outcome::Succeeded {
                    a.outcome = Outcome::InProgress;
                }
                a.started_at = Some(event.at);
            }
            names::FLASH_STATUS
                if data == names::FLASH_FAILED.trim() && a.outcome != Outcome::Succeeded =>
            {
                a.outcome = Outcome::Failed;
            }
            names::STATUS if data == "offline" => {}
            // Any other event of the device's session carries the version of its last Hello
            // (the stream's `version`): `spark/status online` after a full handshake, the
            // events a device publishes after its post-update Hello on a resumed session
            // (where `online` came before that Hello).
            _ if event.product_version == self.plan.version
                && a.outcome != Outcome::SafeMode
                && !matches!(
                    event.name.as_str(),
                    names::SAFE_MODE | names::DEVICE_SAFE_MODE
                ) =>
            {
                a.outcome = Outcome::Succeeded;
            }
            // UNCONFIRMED (our policy, no service documents it): a device in safe mode after
            // its update started counts against the rollout even when the rollout's version
            // is not what put it there; safe-mode healing may still bring it back, and an
            // event with the version afterwards does not clear it.
            names::SAFE_MODE | names::DEVICE_SAFE_MODE if a.started_at.is_some() => {
                a.outcome = Outcome::SafeMode;
            }
            _ => {}
        }
    }

    /// When [`Rollout::service`] must run next: the next in-progress timeout or the end of
    /// the stage's soak.
    pub fn deadline(&self) -> Option<Duration> {
        if !matches!(self.state, RolloutState::Running { .. }) {
            return None;
        }
        let timeouts = self
            .admitted
            .values()
            .filter(|a| a.outcome == Outcome::InProgress)
            .filter_map(|a| a.started_at)
            .map(|t| t + self.plan.in_progress_timeout)
            .min();
        let soak = self.stage_started_at + self.plan.soak;
        Some(timeouts.map_or(soak, |t| t.min(soak)))
    }

    /// Applies timeouts and abort criteria, and starts the next stage when the soak time is
    /// over and the success condition holds.
    pub fn service(&mut self, now: Duration) -> Option<RolloutAction> {
        let RolloutState::Running { stage } = self.state else {
            return None;
        };
        let timeout = self.plan.in_progress_timeout;
        for a in self.admitted.values_mut() {
            if a.outcome == Outcome::InProgress && a.started_at.is_some_and(|t| now >= t + timeout)
            {
                a.outcome = Outcome::TimedOut;
            }
        }
        let counts = self.counts();
        let judged = {
            let excused = &self.excused;
            let mut c = RolloutCounts::default();
            for (d, a) in &self.admitted {
                if !excused.contains(d) {
                    match a.outcome {
                        Outcome::Succeeded => c.succeeded += 1,
                        Outcome::Failed => c.failed += 1,
                        Outcome::TimedOut => c.timed_out += 1,
                        Outcome::SafeMode => c.safe_mode += 1,
                        _ => {}
                    }
                }
            }
            c
        };
        let executed = judged.executed();
        for c in &self.plan.abort {
            if executed < c.min_number_of_executed_things.max(1) {
                continue;
            }
            let hit = self
                .admitted
                .iter()
                .filter(|(d, a)| !self.excused.contains(d) && c.failure_type.matches(a.outcome))
                .count() as f64;
            let pct = hit * 100.0 / executed as f64;
            if pct >= c.threshold_percentage {
                let reason = format!(
                    "{}: {hit} of {executed} executed devices ({pct:.1}%) >= {}%",
                    c.failure_type.name(),
                    c.threshold_percentage
                );
                self.log
                    .push((now, format!("stage {stage}: abort ({reason})")));
                match c.action {
                    AbortAction::Pause => {
                        self.transition(
                            now,
                            TransitionKind::Paused,
                            stage,
                            Actor::AbortRule,
                            reason.clone(),
                            0,
                        );
                        self.state = RolloutState::Paused {
                            stage,
                            reason,
                            by: Actor::AbortRule,
                        };
                        return None;
                    }
                    AbortAction::Rollback => {
                        self.transition(
                            now,
                            TransitionKind::RolledBack,
                            stage,
                            Actor::AbortRule,
                            reason.clone(),
                            0,
                        );
                        self.state = RolloutState::RolledBack { stage, reason };
                        return Some(RolloutAction::Withdraw(self.admitted().collect()));
                    }
                }
            }
        }
        if now < self.stage_started_at + self.plan.soak {
            return None;
        }
        let admitted = counts.admitted.max(1) as f64;
        if (counts.succeeded as f64) * 100.0 / admitted < self.plan.success_threshold {
            return None;
        }
        if stage >= self.plan.stages.len() {
            self.state = RolloutState::Completed;
            self.log.push((now, format!("stage {stage}: completed")));
            self.transition(
                now,
                TransitionKind::Completed,
                stage,
                Actor::Plan,
                String::new(),
                0,
            );
            return Some(RolloutAction::Complete);
        }
        let next = stage + 1;
        self.state = RolloutState::Running { stage: next };
        self.transition(
            now,
            TransitionKind::Stage,
            next,
            Actor::Plan,
            String::new(),
            0,
        );
        Some(RolloutAction::Admit(self.admit_stage(now, next)))
    }

    /// A person's pause, resume or abort (see the module documentation for the states).
    /// `reason` is kept with the change (empty: none given). The action names the devices an
    /// abort withdraws; after a resume the caller runs [`Rollout::service`] (the next stage
    /// may be due at once).
    pub fn control(
        &mut self,
        now: Duration,
        control: Control,
        reason: &str,
    ) -> Result<Option<RolloutAction>, ControlError> {
        let state = self.state.name();
        let refuse = |hint| ControlError {
            action: control.name(),
            state,
            hint,
        };
        let stage = self.state.stage(self.plan.stages.len());
        let reason = reason.trim().to_string();
        let said = |what: &str| {
            if reason.is_empty() {
                format!("stage {stage}: {what} by a person")
            } else {
                format!("stage {stage}: {what} by a person ({reason})")
            }
        };
        match (control, &self.state) {
            (Control::Pause, RolloutState::Running { .. }) => {
                self.log.push((now, said("paused")));
                self.transition(
                    now,
                    TransitionKind::Paused,
                    stage,
                    Actor::Person,
                    reason.clone(),
                    0,
                );
                self.state = RolloutState::Paused {
                    stage,
                    reason,
                    by: Actor::Person,
                };
                Ok(None)
            }
            (Control::Pause, RolloutState::Paused { .. }) => Err(refuse("it is paused already")),
            (Control::Resume, RolloutState::Paused { by, .. }) => {
                if *by == Actor::AbortRule {
                    // The failures that paused it are seen and accepted.
                    let failed: Vec<DeviceId> = self
                        .admitted
                        .iter()
                        .filter(|(_, a)| a.outcome.is_failure())
                        .map(|(d, _)| *d)
                        .collect();
                    self.excused.extend(failed);
                }
                self.log.push((now, said("resumed")));
                self.transition(
                    now,
                    TransitionKind::Resumed,
                    stage,
                    Actor::Person,
                    reason,
                    0,
                );
                self.state = RolloutState::Running { stage };
                Ok(None)
            }
            (Control::Resume, RolloutState::Running { .. }) => {
                Err(refuse("only a paused rollout can be resumed"))
            }
            (Control::Abort, RolloutState::Running { .. } | RolloutState::Paused { .. }) => {
                let withdrawn: Vec<DeviceId> = self
                    .admitted
                    .iter()
                    .filter(|(_, a)| a.outcome == Outcome::Waiting)
                    .map(|(d, _)| *d)
                    .collect();
                for d in &withdrawn {
                    if let Some(a) = self.admitted.get_mut(d) {
                        a.outcome = Outcome::Withdrawn;
                    }
                }
                let n = withdrawn.len() as u32;
                self.log.push((
                    now,
                    format!(
                        "{}: {n} devices that had not started withdrawn",
                        said("aborted")
                    ),
                ));
                self.transition(
                    now,
                    TransitionKind::Aborted,
                    stage,
                    Actor::Person,
                    reason.clone(),
                    n,
                );
                self.state = RolloutState::Aborted { stage, reason };
                Ok(Some(RolloutAction::Cancel(withdrawn)))
            }
            (_, RolloutState::Aborted { .. }) => Err(refuse(
                "an aborted rollout is over (start a new rollout to go on)",
            )),
            (_, RolloutState::RolledBack { .. }) => Err(refuse(
                "a rolled back rollout is over (start a new rollout to go on)",
            )),
            (_, RolloutState::Completed) => Err(refuse(
                "a completed rollout is over (its version is the product default)",
            )),
        }
    }

    /// The stage a device was admitted at.
    pub fn stage_of(&self, device: DeviceId) -> Option<usize> {
        self.admitted.get(&device).map(|a| a.stage)
    }
}

/// A rollout as `hil cloud --state` keeps it (`store.rs`, one JSON document per rollout):
/// times are Unix milliseconds, device ids hex, states and outcomes by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedRollout {
    pub id: u32,
    pub product: ProductId,
    pub version: u16,
    pub intelligent: bool,
    pub stages: Vec<f64>,
    pub soak_ms: u64,
    pub success_threshold: f64,
    pub in_progress_timeout_ms: u64,
    pub abort: Vec<SavedAbort>,
    pub state: String,
    pub stage: usize,
    pub reason: Option<String>,
    pub paused_by: Option<String>,
    pub started_at_ms: u64,
    pub stage_started_at_ms: u64,
    pub order: Vec<String>,
    pub admitted: Vec<SavedAdmitted>,
    pub excused: Vec<String>,
    pub log: Vec<(u64, String)>,
    pub transitions: Vec<SavedTransition>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedAbort {
    pub failure_type: String,
    pub threshold_percentage: f64,
    pub min_number_of_executed_things: u32,
    pub action: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedAdmitted {
    pub device: String,
    pub stage: usize,
    pub outcome: String,
    pub started_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedTransition {
    pub at_ms: u64,
    pub kind: String,
    pub stage: usize,
    pub by: Actor,
    pub reason: String,
    pub withdrawn: u32,
}

fn to_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Rollout {
    /// The saved form; `unix` turns the cloud's times into Unix time.
    pub fn to_saved(&self, unix: impl Fn(Duration) -> Duration) -> SavedRollout {
        let ms = |d: Duration| to_ms(unix(d));
        SavedRollout {
            id: self.id,
            product: self.product,
            version: self.plan.version,
            intelligent: self.plan.intelligent,
            stages: self.plan.stages.clone(),
            soak_ms: to_ms(self.plan.soak),
            success_threshold: self.plan.success_threshold,
            in_progress_timeout_ms: to_ms(self.plan.in_progress_timeout),
            abort: self
                .plan
                .abort
                .iter()
                .map(|c| SavedAbort {
                    failure_type: c.failure_type.name().into(),
                    threshold_percentage: c.threshold_percentage,
                    min_number_of_executed_things: c.min_number_of_executed_things,
                    action: c.action.name().into(),
                })
                .collect(),
            state: self.state.name().into(),
            stage: self.state.stage(self.plan.stages.len()),
            reason: self.state.reason().map(str::to_string),
            paused_by: match &self.state {
                RolloutState::Paused { by, .. } => Some(by.name().into()),
                _ => None,
            },
            started_at_ms: ms(self.started_at),
            stage_started_at_ms: ms(self.stage_started_at),
            order: self.order.iter().map(|d| d.to_hex()).collect(),
            admitted: self
                .admitted
                .iter()
                .map(|(d, a)| SavedAdmitted {
                    device: d.to_hex(),
                    stage: a.stage,
                    outcome: a.outcome.name().into(),
                    started_at_ms: a.started_at.map(ms),
                })
                .collect(),
            excused: self.excused.iter().map(|d| d.to_hex()).collect(),
            log: self.log.iter().map(|(t, l)| (ms(*t), l.clone())).collect(),
            transitions: self
                .transitions
                .iter()
                .map(|t| SavedTransition {
                    at_ms: ms(t.at),
                    kind: t.kind.name().into(),
                    stage: t.stage,
                    by: t.by,
                    reason: t.reason.clone(),
                    withdrawn: t.withdrawn,
                })
                .collect(),
        }
    }

    /// A rollout from its saved form; `cloud_time` turns Unix time into the cloud's time
    /// (a time before the cloud's time zero, as every time before a restart is, becomes zero:
    /// a soak or an in-progress timeout running at the restart starts again then). The error
    /// names the field that does not read.
    pub fn from_saved(
        s: &SavedRollout,
        cloud_time: impl Fn(Duration) -> Duration,
    ) -> Result<Rollout, String> {
        let t = |ms: u64| cloud_time(Duration::from_millis(ms));
        let device = |text: &str, field: &str| {
            text.parse::<DeviceId>()
                .map_err(|e| format!("{field}: `{text}`: {e}"))
        };
        let mut abort = Vec::new();
        for (k, a) in s.abort.iter().enumerate() {
            abort.push(AbortCriterion {
                failure_type: FailureType::parse(&a.failure_type)
                    .ok_or_else(|| format!("abort[{k}].failure_type: `{}`", a.failure_type))?,
                threshold_percentage: a.threshold_percentage,
                min_number_of_executed_things: a.min_number_of_executed_things,
                action: AbortAction::parse(&a.action)
                    .ok_or_else(|| format!("abort[{k}].action: `{}`", a.action))?,
            });
        }
        let plan = RolloutPlan {
            version: s.version,
            intelligent: s.intelligent,
            stages: s.stages.clone(),
            soak: Duration::from_millis(s.soak_ms),
            success_threshold: s.success_threshold,
            in_progress_timeout: Duration::from_millis(s.in_progress_timeout_ms),
            abort,
        };
        plan.validate()?;
        let reason = s.reason.clone().unwrap_or_default();
        let stage = s.stage;
        if stage == 0 || stage > plan.stages.len() {
            return Err(format!("stage: {stage} is not a stage of the plan"));
        }
        let state = match s.state.as_str() {
            "running" => RolloutState::Running { stage },
            "paused" => RolloutState::Paused {
                stage,
                reason,
                by: s
                    .paused_by
                    .as_deref()
                    .and_then(Actor::parse)
                    .ok_or_else(|| format!("paused_by: {:?}", s.paused_by))?,
            },
            "rolled_back" => RolloutState::RolledBack { stage, reason },
            "aborted" => RolloutState::Aborted { stage, reason },
            "completed" => RolloutState::Completed,
            other => return Err(format!("state: `{other}` is not a rollout state")),
        };
        let mut admitted = BTreeMap::new();
        for a in &s.admitted {
            admitted.insert(
                device(&a.device, "admitted")?,
                Admitted {
                    stage: a.stage,
                    outcome: Outcome::parse(&a.outcome)
                        .ok_or_else(|| format!("admitted: outcome `{}`", a.outcome))?,
                    started_at: a.started_at_ms.map(t),
                },
            );
        }
        let mut transitions = Vec::new();
        for x in &s.transitions {
            transitions.push(Transition {
                at: t(x.at_ms),
                kind: TransitionKind::parse(&x.kind)
                    .ok_or_else(|| format!("transitions: kind `{}`", x.kind))?,
                stage: x.stage,
                by: x.by,
                reason: x.reason.clone(),
                withdrawn: x.withdrawn,
            });
        }
        Ok(Rollout {
            id: s.id,
            product: s.product,
            plan,
            state,
            started_at: t(s.started_at_ms),
            stage_started_at: t(s.stage_started_at_ms),
            order: s
                .order
                .iter()
                .map(|d| device(d, "order"))
                .collect::<Result<_, _>>()?,
            admitted,
            excused: s
                .excused
                .iter()
                .map(|d| device(d, "excused"))
                .collect::<Result<_, _>>()?,
            log: s.log.iter().map(|(ms, l)| (t(*ms), l.clone())).collect(),
            transitions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::event::Publisher;

    fn plan() -> RolloutPlan {
        RolloutPlan {
            version: 8,
            intelligent: true,
            stages: vec![10.0, 50.0, 100.0],
            soak: Duration::from_secs(600),
            success_threshold: 90.0,
            in_progress_timeout: Duration::from_secs(300),
            abort: vec![AbortCriterion {
                failure_type: FailureType::TimedOut,
                threshold_percentage: 50.0,
                min_number_of_executed_things: 1,
                action: AbortAction::Pause,
            }],
        }
    }

    fn devices(n: u8) -> Vec<DeviceId> {
        (0..n).map(|i| DeviceId([i; 12])).collect()
    }

    fn event(at: u64, d: DeviceId, name: &str, data: &str, version: u16) -> StreamEvent {
        StreamEvent {
            at: Duration::from_secs(at),
            device_id: d,
            publisher: Publisher::Cloud,
            name: name.into(),
            data: data.into(),
            ttl: 60,
            public: false,
            product_id: 1000,
            product_version: version,
        }
    }

    fn admitted(a: &RolloutAction) -> Vec<DeviceId> {
        match a {
            RolloutAction::Admit(d) => d.clone(),
            other => panic!("expected Admit, got {other:?}"),
        }
    }

    #[test]
    fn stages_admit_cumulative_percentages_after_soak_and_success() {
        let (mut r, first) = Rollout::start(Duration::ZERO, 1000, plan(), devices(20));
        let first = admitted(&first);
        assert_eq!(first.len(), 2);
        // Soak not over: nothing.
        assert_eq!(r.service(Duration::from_secs(599)), None);
        // Soak over but nobody succeeded: the success condition holds the next stage back.
        assert_eq!(r.service(Duration::from_secs(600)), None);
        for d in &first {
            r.observe(&event(10, *d, names::FLASH_STATUS, "started ", 3));
            r.observe(&event(60, *d, names::STATUS, "online", 8));
        }
        let next = admitted(&r.service(Duration::from_secs(601)).unwrap());
        assert_eq!(next.len(), 8, "50% of 20 is 10, 2 already in");
        assert_eq!(r.state, RolloutState::Running { stage: 2 });
    }

    #[test]
    fn online_with_the_old_version_is_not_success() {
        let (mut r, first) = Rollout::start(Duration::ZERO, 1000, plan(), devices(10));
        let d = admitted(&first)[0];
        r.observe(&event(10, d, names::FLASH_STATUS, "started ", 3));
        r.observe(&event(20, d, names::FLASH_STATUS, "success ", 3));
        r.observe(&event(30, d, names::STATUS, "online", 3));
        assert_eq!(r.outcome(d), Some(Outcome::InProgress));
    }

    #[test]
    fn a_build_that_does_not_come_back_pauses_the_first_stage() {
        let (mut r, first) = Rollout::start(Duration::ZERO, 1000, plan(), devices(10));
        let d = admitted(&first)[0];
        r.observe(&event(10, d, names::FLASH_STATUS, "started ", 3));
        r.observe(&event(20, d, names::FLASH_STATUS, "success ", 3));
        assert_eq!(r.deadline(), Some(Duration::from_secs(310)));
        assert_eq!(r.service(Duration::from_secs(309)), None);
        assert_eq!(r.state, RolloutState::Running { stage: 1 });
        assert_eq!(r.service(Duration::from_secs(310)), None);
        assert!(matches!(r.state, RolloutState::Paused { stage: 1, .. }));
        assert_eq!(r.outcome(d), Some(Outcome::TimedOut));
        // Paused: no more stages, whatever happens next.
        assert_eq!(r.service(Duration::from_secs(100_000)), None);
        assert_eq!(r.counts().admitted, 1);
    }

    #[test]
    fn rollback_withdraws_every_admitted_device() {
        let mut p = plan();
        p.abort[0].failure_type = FailureType::Failed;
        p.abort[0].action = AbortAction::Rollback;
        let (mut r, first) = Rollout::start(Duration::ZERO, 1000, p, devices(30));
        let first = admitted(&first);
        r.observe(&event(10, first[0], names::FLASH_STATUS, "started ", 3));
        r.observe(&event(11, first[0], names::FLASH_STATUS, "failed ", 3));
        let action = r.service(Duration::from_secs(12)).unwrap();
        // Every admitted device is withdrawn (in whatever order).
        let RolloutAction::Withdraw(mut withdrawn) = action else {
            panic!("expected Withdraw, got {action:?}");
        };
        let mut want = first.clone();
        withdrawn.sort();
        want.sort();
        assert_eq!(withdrawn, want);
        assert!(!r.holds());
    }

    #[test]
    fn min_executed_things_holds_the_judgement() {
        let mut p = plan();
        p.abort[0].failure_type = FailureType::Failed;
        p.abort[0].min_number_of_executed_things = 2;
        let (mut r, first) = Rollout::start(Duration::ZERO, 1000, p, devices(20));
        let first = admitted(&first);
        r.observe(&event(10, first[0], names::FLASH_STATUS, "failed ", 3));
        assert_eq!(r.service(Duration::from_secs(11)), None);
        assert_eq!(r.state, RolloutState::Running { stage: 1 });
        r.observe(&event(12, first[1], names::STATUS, "online", 8));
        r.service(Duration::from_secs(13));
        assert!(
            matches!(r.state, RolloutState::Paused { .. }),
            "1 of 2 is 50%"
        );
    }

    #[test]
    fn the_last_stage_completes() {
        let mut p = plan();
        p.stages = vec![100.0];
        let (mut r, first) = Rollout::start(Duration::ZERO, 1000, p, devices(3));
        for d in admitted(&first) {
            r.observe(&event(10, d, names::STATUS, "online", 8));
        }
        assert_eq!(
            r.service(Duration::from_secs(600)),
            Some(RolloutAction::Complete)
        );
        assert_eq!(r.state, RolloutState::Completed);
    }

    #[test]
    fn plans_are_checked() {
        let mut p = plan();
        p.stages = vec![10.0, 5.0];
        assert!(p.validate().unwrap_err().contains("stages"));
        p.stages = vec![];
        assert!(p.validate().is_err());
        assert!(plan().validate().is_ok());
    }

    fn succeed(r: &mut Rollout, at: u64, devices: &[DeviceId]) {
        for d in devices {
            r.observe(&event(at, *d, names::FLASH_STATUS, "started ", 3));
            r.observe(&event(at + 1, *d, names::STATUS, "online", 8));
        }
    }

    fn kinds(r: &Rollout) -> Vec<(&'static str, usize, Actor)> {
        r.transitions
            .iter()
            .map(|t| (t.kind.name(), t.stage, t.by))
            .collect()
    }

    #[test]
    fn a_paused_rollout_starts_no_stage_until_a_person_resumes_it() {
        let (mut r, first) = Rollout::start(Duration::ZERO, 1000, plan(), devices(20));
        succeed(&mut r, 10, &admitted(&first));
        let none = r
            .control(Duration::from_secs(100), Control::Pause, "checking logs")
            .unwrap();
        assert_eq!(none, None);
        assert_eq!(
            r.state,
            RolloutState::Paused {
                stage: 1,
                reason: "checking logs".into(),
                by: Actor::Person
            }
        );
        // Soak over and every device succeeded: a running rollout would start stage 2 here.
        assert_eq!(r.deadline(), None);
        assert_eq!(r.service(Duration::from_secs(700)), None);
        assert_eq!(r.counts().admitted, 2);
        assert_eq!(
            r.control(Duration::from_secs(800), Control::Resume, "")
                .unwrap(),
            None
        );
        assert_eq!(r.state, RolloutState::Running { stage: 1 });
        // The soak counts from the stage's start (time paused included): due at once.
        assert_eq!(r.deadline(), Some(Duration::from_secs(600)));
        let next = admitted(&r.service(Duration::from_secs(800)).unwrap());
        assert_eq!(next.len(), 8);
        assert_eq!(
            kinds(&r),
            vec![
                ("started", 1, Actor::Plan),
                ("paused", 1, Actor::Person),
                ("resumed", 1, Actor::Person),
                ("stage", 2, Actor::Plan),
            ]
        );
    }

    #[test]
    fn resuming_after_an_abort_rule_excuses_the_failures_it_saw() {
        let mut p = plan();
        p.abort[0].failure_type = FailureType::Failed;
        let (mut r, first) = Rollout::start(Duration::ZERO, 1000, p, devices(20));
        let first = admitted(&first);
        r.observe(&event(10, first[0], names::FLASH_STATUS, "failed ", 3));
        r.service(Duration::from_secs(11));
        assert!(matches!(
            r.state,
            RolloutState::Paused {
                by: Actor::AbortRule,
                ..
            }
        ));
        r.control(
            Duration::from_secs(20),
            Control::Resume,
            "known flaky modem",
        )
        .unwrap();
        // The failure seen before the resume does not fire the rule again.
        assert_eq!(r.service(Duration::from_secs(21)), None);
        assert_eq!(r.state, RolloutState::Running { stage: 1 });
        assert_eq!(r.counts().failed, 1, "still counted, only excused");
        // A new failure does.
        r.observe(&event(30, first[1], names::FLASH_STATUS, "failed ", 3));
        r.service(Duration::from_secs(31));
        assert!(matches!(r.state, RolloutState::Paused { stage: 1, .. }));
    }

    #[test]
    fn abort_withdraws_the_devices_that_had_not_started_and_ends_the_rollout() {
        let (mut r, first) = Rollout::start(Duration::ZERO, 1000, plan(), devices(20));
        let first = admitted(&first);
        r.observe(&event(10, first[0], names::FLASH_STATUS, "started ", 3));
        let action = r
            .control(Duration::from_secs(50), Control::Abort, "bad telemetry")
            .unwrap();
        assert_eq!(action, Some(RolloutAction::Cancel(vec![first[1]])));
        assert_eq!(
            r.state,
            RolloutState::Aborted {
                stage: 1,
                reason: "bad telemetry".into()
            }
        );
        assert!(r.is_admitted(first[0]), "its transfer goes on");
        assert!(!r.is_admitted(first[1]));
        assert_eq!(r.admitted().collect::<Vec<_>>(), vec![first[0]]);
        let c = r.counts();
        assert_eq!((c.admitted, c.in_progress, c.withdrawn), (1, 1, 1));
        // A withdrawn device's later events change nothing; no stage ever starts again.
        r.observe(&event(60, first[1], names::STATUS, "online", 8));
        assert_eq!(r.outcome(first[1]), Some(Outcome::Withdrawn));
        assert_eq!(r.deadline(), None);
        assert_eq!(r.service(Duration::from_secs(100_000)), None);
        assert_eq!(r.counts().admitted + r.counts().withdrawn, 2);
        let t = r.transitions.last().unwrap();
        assert_eq!(
            (t.kind, t.by, t.withdrawn),
            (TransitionKind::Aborted, Actor::Person, 1)
        );
    }

    #[test]
    fn controls_the_state_does_not_allow_are_refused_and_change_nothing() {
        let (mut r, _) = Rollout::start(Duration::ZERO, 1000, plan(), devices(20));
        let e = r.control(Duration::ZERO, Control::Resume, "").unwrap_err();
        assert_eq!((e.action, e.state), ("resume", "running"));
        r.control(Duration::ZERO, Control::Pause, "").unwrap();
        let e = r.control(Duration::ZERO, Control::Pause, "").unwrap_err();
        assert_eq!((e.action, e.state), ("pause", "paused"));
        r.control(Duration::ZERO, Control::Abort, "").unwrap();
        let before = (r.state.clone(), r.transitions.len(), r.log.len());
        for c in [Control::Pause, Control::Resume, Control::Abort] {
            let e = r.control(Duration::from_secs(5), c, "").unwrap_err();
            assert_eq!(e.state, "aborted");
            assert!(e.to_string().contains("aborted rollout is over"), "{e}");
        }
        assert_eq!((r.state.clone(), r.transitions.len(), r.log.len()), before);
        let mut p = plan();
        p.stages = vec![100.0];
        let (mut done, first) = Rollout::start(Duration::ZERO, 1000, p, devices(2));
        succeed(&mut done, 1, &admitted(&first));
        done.service(Duration::from_secs(600));
        assert_eq!(done.state, RolloutState::Completed);
        assert!(done
            .control(Duration::from_secs(601), Control::Abort, "")
            .is_err());
        assert_eq!(done.state, RolloutState::Completed);
    }

    #[test]
    fn a_saved_rollout_reads_back_as_it_was() {
        let (mut r, first) = Rollout::start(Duration::from_secs(5), 1000, plan(), devices(20));
        let first = admitted(&first);
        r.id = 3;
        r.observe(&event(10, first[0], names::FLASH_STATUS, "started ", 3));
        r.observe(&event(11, first[0], names::FLASH_STATUS, "failed ", 3));
        r.control(Duration::from_secs(20), Control::Pause, "look")
            .unwrap();
        r.control(Duration::from_secs(30), Control::Abort, "stop")
            .unwrap();
        let epoch = Duration::from_secs(1_700_000_000);
        let saved = r.to_saved(|t| t + epoch);
        let text = serde_json::to_string(&saved).unwrap();
        let back: SavedRollout = serde_json::from_str(&text).unwrap();
        let again = Rollout::from_saved(&back, |u| u - epoch).unwrap();
        assert_eq!(again.to_saved(|t| t + epoch), saved);
        assert_eq!(again.state, r.state);
        assert_eq!(again.transitions, r.transitions);
        assert_eq!(again.counts(), r.counts());
        assert_eq!(again.stage_counts(), r.stage_counts());
        let mut bad = saved.clone();
        bad.state = "exploded".into();
        assert!(Rollout::from_saved(&bad, |u| u - epoch)
            .unwrap_err()
            .contains("state"));
    }

    #[test]
    fn a_spec_with_a_bad_abort_action_names_the_field() {
        let spec: RolloutSpec = serde_json::from_str(
            r#"{"app": 8, "stages": [10, 100], "soak": "1h", "in_progress_timeout": "30m",
                "abort": [{"failure_type": "all", "threshold_percentage": 10, "action": "explode"}]}"#,
        )
        .unwrap();
        let (field, message) = spec.plan().unwrap_err();
        assert_eq!(field, "abort[0].action");
        assert!(message.contains("explode"), "{message}");
        let e = serde_json::from_str::<RolloutSpec>(
            r#"{"app": 8, "stages": [10], "soak": "soon", "in_progress_timeout": "30m"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("`soon` is not a duration"), "{e}");
    }
}
