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
//! This module is pure: [`Rollout`] takes events and times and answers with the devices to
//! admit or withdraw; [`super::Cloud`] (in `products.rs`) applies them to the fleet.

use std::collections::BTreeMap;
use std::time::Duration;

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

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutState {
    /// Stage `stage` (1-based) runs.
    Running {
        stage: usize,
    },
    /// An abort criterion stopped it at `stage`.
    Paused {
        stage: usize,
        reason: String,
    },
    RolledBack {
        stage: usize,
        reason: String,
    },
    /// Every stage admitted and the last stage's success condition met: the version is now
    /// the product default.
    Completed,
}

impl RolloutState {
    pub fn name(&self) -> &'static str {
        match self {
            RolloutState::Running { .. } => "running",
            RolloutState::Paused { .. } => "paused",
            RolloutState::RolledBack { .. } => "rolled_back",
            RolloutState::Completed => "completed",
        }
    }

    /// The stage it is at or stopped at (the last for a completed one).
    pub fn stage(&self, stages: usize) -> usize {
        match self {
            RolloutState::Running { stage }
            | RolloutState::Paused { stage, .. }
            | RolloutState::RolledBack { stage, .. } => *stage,
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
}

impl Outcome {
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

/// Counts over the admitted devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolloutCounts {
    pub admitted: u32,
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
}

/// One staged rollout of a product (at most one per product at a time).
#[derive(Debug, Clone)]
pub struct Rollout {
    pub product: ProductId,
    pub plan: RolloutPlan,
    pub state: RolloutState,
    pub started_at: Duration,
    stage_started_at: Duration,
    /// The product's devices in admission order (a stable hash of id and version).
    order: Vec<DeviceId>,
    admitted: BTreeMap<DeviceId, Admitted>,
    /// What happened, for an operator (time, text).
    pub log: Vec<(Duration, String)>,
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
            product,
            plan,
            state: RolloutState::Running { stage: 1 },
            started_at: now,
            stage_started_at: now,
            order: order.into_iter().map(|(_, d)| d).collect(),
            admitted: BTreeMap::new(),
            log: Vec::new(),
        };
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

    pub fn is_admitted(&self, device: DeviceId) -> bool {
        self.admitted.contains_key(&device)
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

    pub fn admitted(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.admitted.keys().copied()
    }

    pub fn counts(&self) -> RolloutCounts {
        let mut c = RolloutCounts::default();
        for a in self.admitted.values() {
            c.admitted += 1;
            match a.outcome {
                Outcome::Waiting => c.waiting += 1,
                Outcome::InProgress => c.in_progress += 1,
                Outcome::Succeeded => c.succeeded += 1,
                Outcome::Failed => c.failed += 1,
                Outcome::TimedOut => c.timed_out += 1,
                Outcome::SafeMode => c.safe_mode += 1,
            }
        }
        c
    }

    /// Takes one event of the cloud's stream into account.
    pub fn observe(&mut self, event: &StreamEvent) {
        let Some(a) = self.admitted.get_mut(&event.device_id) else {
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
        let executed = counts.executed();
        for c in &self.plan.abort {
            if executed < c.min_number_of_executed_things.max(1) {
                continue;
            }
            let hit = self
                .admitted
                .values()
                .filter(|a| c.failure_type.matches(a.outcome))
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
                        self.state = RolloutState::Paused { stage, reason };
                        return None;
                    }
                    AbortAction::Rollback => {
                        self.state = RolloutState::RolledBack { stage, reason };
                        return Some(RolloutAction::Withdraw(
                            self.admitted.keys().copied().collect(),
                        ));
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
            return Some(RolloutAction::Complete);
        }
        let next = stage + 1;
        self.state = RolloutState::Running { stage: next };
        Some(RolloutAction::Admit(self.admit_stage(now, next)))
    }

    /// The stage a device was admitted at.
    pub fn stage_of(&self, device: DeviceId) -> Option<usize> {
        self.admitted.get(&device).map(|a| a.stage)
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
        let mut first = first;
        first.sort();
        assert_eq!(action, RolloutAction::Withdraw(first));
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
}
