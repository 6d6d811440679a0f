//! Single-device OTA jobs: "flash this file to device X" (reference `particle-cloud-api.md`
//! 2.1), from queued to succeeded or failed.

use std::fmt;
use std::time::Duration;

use protocol::message::FinishStats;

use super::firmware::ExpectedModule;
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
    /// The device's 2.04 was acknowledged: the device commits and resets.
    Committed { stats: Option<FinishStats> },
    /// The device reconnected running the file's firmware.
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

/// One job with everything the cloud keeps for it.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub device_id: [u8; 12],
    pub file: Vec<u8>,
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
}
