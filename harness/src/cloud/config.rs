//! How the cloud behaves ([`CloudConfig`]) and its defaults.

use std::time::Duration;

use p256::ecdsa::SigningKey;
use protocol::coap::EndpointConfig;
use protocol::dtls::RetransmitTimeouts;
use protocol::message::{MAX_OTA_CHUNK_SIZE, MIN_OTA_CHUNK_SIZE};

use super::policy;

/// Platforms whose keepalive is the cellular one (23 min, reference 1.9).
pub(super) const CELLULAR_PLATFORMS: [u16; 6] = [13, 23, 25, 26, 28, 35];
pub(super) const CELLULAR_KEEPALIVE: Duration = Duration::from_secs(23 * 60);
pub(super) const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(25);

/// Default of [`CloudConfig::finished_jobs_kept`]: enough for `hil flash` to read the outcome
/// of a superseded job after the job that superseded it finished.
pub const FINISHED_JOBS_KEPT: usize = 8;

/// How the cloud behaves. [`CloudConfig::new`] gives the defaults described in the module docs.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// Signs the DTLS ServerKeyExchange; devices pin its public key.
    pub server_key: SigningKey,
    /// Unix time (seconds) at the caller's time zero: time responses and `published_at`.
    pub unix_time_at_epoch: u64,
    /// OTA chunk size (512; clamped to 512..=1136, a multiple of 4).
    pub chunk_size: u32,
    pub pending_event_delay: Duration,
    pub settle_quiet: Duration,
    pub settle_max: Duration,
    /// `None`: twice the keepalive of the device's platform.
    pub idle_timeout: Option<Duration>,
    pub hole_holdoff: Duration,
    pub silence_timeout: Duration,
    pub silence_resend: u32,
    pub stall_limit: Duration,
    /// Pace the OTA sender by what the device acknowledges (congestion window, RTT
    /// estimate, the `transfer` module); `false` is the unpaced sender of before.
    pub paced_sender: bool,
    /// The cloud's CoAP timing (Device OS's defaults: 4 s ACK timeout, 3 retransmissions).
    pub coap: EndpointConfig,
    pub dtls_timeouts: RetransmitTimeouts,
    /// What happens to a job whose transfer the device dropped (went offline, or stalled).
    pub interrupted: Interrupted,
    /// UpdateStarts per target before the cloud gives up ([`policy`]).
    pub max_attempts: u32,
    /// Finished jobs whose status the cloud keeps per device (the newest; an older one is
    /// forgotten when a newer one finishes). A finished job keeps only its summary
    /// ([`super::JobInfo`]), never its file ([`super::footprint`]).
    pub finished_jobs_kept: usize,
}

/// What the cloud does with a transfer the device dropped mid-way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interrupted {
    /// Keep the job queued and start it again (the device resumes from its synced state) at
    /// the next connection, as product releases are delivered until the device runs them.
    #[default]
    Retry,
    /// The job fails and `spark/flash/status` `failed ` is published, as the single-device
    /// flash in the field captures shows (offline, then `failed ` 5 ms later); the next
    /// attempt is a new flash.
    Fail,
}

impl CloudConfig {
    pub fn new(server_key: SigningKey) -> CloudConfig {
        CloudConfig {
            server_key,
            // 2024-01-01T00:00:00Z.
            unix_time_at_epoch: 1_704_067_200,
            chunk_size: 512,
            pending_event_delay: Duration::from_secs(1),
            settle_quiet: Duration::from_secs(1),
            settle_max: Duration::from_secs(5),
            idle_timeout: None,
            hole_holdoff: Duration::from_millis(250),
            silence_timeout: Duration::from_secs(1),
            silence_resend: 2,
            stall_limit: Duration::from_secs(300),
            paced_sender: true,
            coap: EndpointConfig::default(),
            dtls_timeouts: RetransmitTimeouts::default(),
            interrupted: Interrupted::Retry,
            max_attempts: policy::DEFAULT_MAX_ATTEMPTS,
            finished_jobs_kept: FINISHED_JOBS_KEPT,
        }
    }

    pub(super) fn valid_chunk_size(&self) -> u32 {
        (self
            .chunk_size
            .clamp(MIN_OTA_CHUNK_SIZE, MAX_OTA_CHUNK_SIZE)
            / 4)
            * 4
    }
}
