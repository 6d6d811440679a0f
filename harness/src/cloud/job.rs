//! Single-device OTA jobs: "flash this file to device X" (reference `particle-cloud-api.md`
//! 2.1), from queued to succeeded or failed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use protocol::message::FinishStats;

use super::DeviceId;

use sha2::{Digest, Sha256};

use super::assets::TargetAsset;
use super::firmware::{expected_modules, ExpectedModule};
use super::transfer::Transfer;

/// Names one job of a [`super::Cloud`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {}", self.0)
    }
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    /// Waiting for the device: offline, in its post-connect sequence, busy with an earlier job,
    /// or gone mid-transfer (the next attempt resumes where the device says).
    Queued,
    /// The device has updates disabled and they are not forced: the cloud told it
    /// `particle/device/updates/pending` and starts when it enables updates (or is forced).
    Held,
    /// UpdateStart sent; waiting for the device's 2.01.
    Starting,
    /// Chunks streaming. `sent` counts distinct chunks sent, `acked` those the device holds.
    Transferring {
        resume_offset: u32,
        window: u32,
        chunks: u32,
        sent: u32,
        acked: u32,
        retransmissions: u32,
    },
    /// All chunks held; UpdateFinish sent, waiting for the device's 2.04.
    Finishing,
    /// The device's 2.04 was acknowledged: the device commits and resets. Not success yet:
    /// that needs the device's own describe after its reset.
    Committed { stats: Option<FinishStats> },
    /// The device's describe, in a connection after the update's reset, shows the file's
    /// modules running (listed, matching and valid); or it already ran them.
    Succeeded,
    /// `code` is the device's system error when it reported one (`{"code":-1360,...}`), `None`
    /// when the cloud gave up by itself (the message says why).
    Failed { code: Option<i32>, message: String },
}

impl JobStatus {
    pub fn is_finished(&self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed { .. })
    }

    /// UpdateStart sent and the outcome not known yet.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            JobStatus::Starting | JobStatus::Transferring { .. } | JobStatus::Finishing
        )
    }
}

/// Why a job exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// A single-device flash ([`super::Cloud::flash`]).
    Flash,
    /// Product firmware the device's target names (precedence in [`super::fleet`]).
    Product { product: u32, version: u16 },
    /// A Device OS module the device's firmware lacks (safe-mode healing).
    Heal { module: String },
    /// An asset of the target bundle the device lacks ([`super::assets`]).
    Asset { name: String },
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobKind::Flash => f.write_str("flash"),
            JobKind::Product { product, version } => {
                write!(f, "product {product} firmware version {version}")
            }
            JobKind::Heal { module } => write!(f, "healing: {module}"),
            JobKind::Asset { name } => write!(f, "asset {name:?}"),
        }
    }
}

/// What an operator sees of a job beyond its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInfo {
    pub kind: JobKind,
    pub device_id: DeviceId,
    pub status: JobStatus,
    /// UpdateStarts sent so far.
    pub attempts: u32,
    /// Why the last attempt did not end the job (interrupted, back without the update...).
    pub last_reason: Option<String>,
}

/// One job with everything the cloud keeps for it.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub kind: JobKind,
    pub device_id: DeviceId,
    pub file: Arc<Vec<u8>>,
    pub sha256: [u8; 32],
    pub status: JobStatus,
    /// UpdateStarts sent so far.
    pub attempts: u32,
    /// What the device should report once it runs the file; `None` if the file does not
    /// parse as modules (then any reconnection with a Hello and describe counts).
    pub expected: Option<Vec<ExpectedModule>>,
    pub transfer: Option<Transfer>,
    /// When the 2.04 was acknowledged.
    pub committed_at: Option<Duration>,
    /// The job was requeued while Finishing: the device may have committed already.
    pub maybe_committed: bool,
    /// The token of the last UpdateFinish (a late 2.04 carries it).
    pub finish_token: Option<Vec<u8>>,
    pub last_reason: Option<String>,
    /// Committed and installed, but the device waits in safe mode for Device OS modules or
    /// for its assets.
    pub awaiting_heal: bool,
    /// The assets the device must list before the job succeeds (a bundle's assets; for an
    /// asset job, its own asset).
    pub assets: Vec<TargetAsset>,
}

impl Job {
    /// A queued job for `file` (its SHA-256 and expected modules computed once). A bundle is
    /// split: the job transfers its application and then needs its assets.
    pub fn new(kind: JobKind, device_id: DeviceId, file: Arc<Vec<u8>>) -> Job {
        let (file, assets) = match super::assets::unpack(file.clone()) {
            Ok(u) => (u.file, u.assets),
            // Refused before a job is made (`Cloud::flash`, product upload); sent as it is.
            Err(_) => (file, Vec::new()),
        };
        Job {
            kind,
            device_id,
            sha256: Sha256::digest(file.as_slice()).into(),
            expected: expected_modules(&file),
            file,
            status: JobStatus::Queued,
            attempts: 0,
            transfer: None,
            committed_at: None,
            maybe_committed: false,
            finish_token: None,
            last_reason: None,
            awaiting_heal: false,
            assets,
        }
    }
}
