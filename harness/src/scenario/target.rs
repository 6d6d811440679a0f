//! What a scenario drives: the [`Target`] trait, the [`Capability`]s a target declares, and what
//! it reports back ([`Observation`], [`FirmwareIntegrity`], trace entries).
//!
//! The trait is kept honest: every step and expectation names the capabilities it needs, the
//! runner compares them with [`Target::capabilities`] before asking anything, and a step the
//! target cannot do is reported skipped with the reason. The emulator can do everything,
//! precisely; a physical board does what hardware allows (a relay cuts power "now", not at flash
//! operation 17) and says so here.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use super::model::{Action, DeviceOsVersion, OtaState, Phase, Setup};
// Defined with the steps that need them (the model imports nothing from here).
pub use super::model::{Capability, RunningVersions};
use super::trace::TraceEntry;

/// The capabilities in `needed` that `have` lacks, in order.
pub fn missing(needed: &[Capability], have: &BTreeSet<Capability>) -> Vec<Capability> {
    let mut out: Vec<Capability> = needed
        .iter()
        .copied()
        .filter(|c| !have.contains(c))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Device OS system flags (reference: particle-protocol.md 3): the emulator's model of them,
/// one type for every target.
pub use emulator::os::SystemFlags;

/// The last OTA transfer as the device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtaStatus {
    pub state: OtaState,
    pub received: u64,
    pub total: u64,
    /// The offset the transfer resumed from, when it did not start at zero.
    pub resumed_from: Option<u64>,
    /// Device OS error code of a failed transfer (e.g. -1360 wrong platform).
    pub error: Option<i32>,
    /// Transfers begun (UpdateStart accepted, fresh or resumed) since the case started: tells
    /// the transfer a wait began with from a later one.
    pub started: u32,
}

impl OtaStatus {
    pub fn percent(&self) -> u64 {
        (self.received.saturating_mul(100))
            .checked_div(self.total)
            .unwrap_or(0)
    }
}

/// What the runner can ask the target about the device. A field the target cannot tell is
/// `None`; the runner only reads fields whose capability the target declared, and a declared
/// capability answered with `None` fails the expectation ("target did not report ...").
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    pub powered: Option<bool>,
    pub online: Option<bool>,
    pub sleeping: Option<bool>,
    /// `Some(None)`: powered but running nothing (unbootable, or off).
    pub running: Option<Option<RunningVersions>>,
    pub safe_mode: Option<bool>,
    pub flags: Option<SystemFlags>,
    pub ota: Option<OtaStatus>,
    /// Reset reason of the current boot as `spark/device/last_reset` names it.
    pub last_reset: Option<String>,
    /// Boots completed since the case started (power-on, reset, update, safe mode).
    pub boots: Option<u32>,
    /// What Device OS runs, application or not (in safe mode too): `Some(None)` when nothing
    /// runs (off, unbootable).
    pub system: Option<Option<SystemVersions>>,
    /// How the device's last connection since the case started was made: `Some(true)` resumed
    /// its DTLS session, `Some(false)` a full handshake; `None` when the target cannot tell or
    /// the device has not connected.
    pub session_resumed: Option<bool>,
    /// Transfers begun since the current boot.
    pub transfers_since_boot: Option<u32>,
}

/// The Device OS side of what runs: it runs in safe mode too, when the application does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemVersions {
    pub device_os: DeviceOsVersion,
    pub bootloader: u16,
}

/// What reading the flash found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirmwareIntegrity {
    /// The old firmware is installed, intact (the update, if any, is not complete yet).
    OldIntact,
    /// The new firmware is complete and installed.
    NewComplete,
    /// Neither: a mix, or a module half-written yet reported valid.
    Lost { detail: String },
}

/// Why a target could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// The target cannot be built or reached ("target emulator is not available yet").
    Unavailable(String),
    /// A step failed on the target (with what failed).
    Step(String),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::Unavailable(why) | TargetError::Step(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for TargetError {}

/// A device (and its cloud) a scenario drives.
///
/// Time is the target's own: virtual for the emulator, wall-clock since set-up for a board.
/// Every method that lets time pass queues [`TraceEntry`]s (events of the cloud's stream,
/// boots, resets, OTA progress, faults injected) that the runner collects with
/// [`Target::drain_trace`]; their timestamps are the target's time.
pub trait Target {
    /// A short name for reports ("emulator").
    fn name(&self) -> &str;

    /// What this target can do and observe. Must not change during a run.
    fn capabilities(&self) -> &BTreeSet<Capability>;

    /// Establishes the set-up (firmware installed, application behaviour, cloud knows the
    /// device), powers the device on and lets it boot. `seed` drives every random choice.
    fn setup(&mut self, setup: &Setup, seed: u64) -> Result<(), TargetError>;

    /// Directs the following actions and observations at the device named `name` (a
    /// `[[cloud.device]]`), in a scenario with several devices (needs
    /// [`Capability::SeveralDevices`]).
    fn select_device(&mut self, name: &str) -> Result<(), TargetError> {
        Err(TargetError::Step(format!(
            "target {} drives one device, not `{name}`",
            self.name()
        )))
    }

    /// Does one action (cloud, power, application, link). An armed power cut returns at once;
    /// it fires later, while time passes.
    fn apply(&mut self, action: &Action) -> Result<(), TargetError>;

    /// Time since set-up.
    fn now(&self) -> Duration;

    /// Lets time pass until `deadline`, or returns earlier as soon as something happened
    /// (new trace entries). Returns without advancing only when `deadline` has passed.
    fn advance(&mut self, deadline: Duration) -> Result<(), TargetError>;

    /// Trace entries since the last call, oldest first.
    fn drain_trace(&mut self) -> Vec<TraceEntry>;

    /// The device's current state.
    fn observe(&mut self) -> Result<Observation, TargetError>;

    /// Reads the flash: is the old firmware intact or the new one complete? (needs
    /// [`Capability::FlashInspection`]).
    fn inspect_firmware(&mut self) -> Result<FirmwareIntegrity, TargetError>;

    /// How many flash operations the last completed occurrence of `phase` took in this run
    /// (`None`: the phase has not run). Sweeps use it after their clean run (needs
    /// [`Capability::PowerCutAtFlashOp`]).
    fn phase_ops(&mut self, phase: Phase) -> Result<Option<u64>, TargetError>;
}
