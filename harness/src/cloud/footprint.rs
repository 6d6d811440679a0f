//! What the cloud holds in memory, counted ([`Cloud::footprint`]), and the retention rules that
//! keep it bounded for a `hil cloud` that runs for weeks (issue 13: the cloud's memory flat
//! over repeated flashes, restarts and device kills).
//!
//! # Retention
//! What the cloud keeps grows with the devices registered, never with the flashes made, the
//! sessions made or the time run:
//! - **Devices**: one record each (key, last Hello and describes, settings), until the key is
//!   registered again under another id; a device whose key is removed keeps its record.
//! - **Sessions**: at most one per device (a new handshake replaces it), kept while the device
//!   is offline so that it may resume. Handshakes made with the key of a device that has a
//!   session, waiting for their Hello: at most [`PENDING_PER_DEVICE`] per device; another
//!   closes the oldest.
//! - **Jobs**: unfinished jobs in full (file, transfer state, expected modules). A job that
//!   finishes drops its file, its transfer state, its expected modules and its assets at once
//!   and keeps only its summary (kind, status, attempts, last reason, SHA-256): the newest
//!   [`CloudConfig::finished_jobs_kept`](super::CloudConfig) per device; when one more
//!   finishes, the oldest summary is forgotten ([`Cloud::job`] answers `None` for it).
//! - **Given up**: the files the cloud will not deliver again automatically, one entry per
//!   file and at most [`GAVE_UP_KEPT`] per device (the oldest is forgotten: that file may be
//!   tried once more).
//! - **Events**: the cloud keeps no history; its queue holds what the driver has not polled
//!   yet (`hil cloud` drains it in every loop, the API's stream is a bounded channel).
//! - **Timers**: one live entry per device with something due, plus entries superseded by an
//!   earlier deadline until they come up; past twice the devices (plus 64) the queue is
//!   rebuilt from the live entries.

use std::collections::BTreeSet;
use std::fmt;
use std::mem::size_of;
use std::sync::Arc;

use super::job::Job;
use super::session::Session;
use super::*;

/// Handshakes waiting for their Hello kept per device (a device retrying, a client holding its
/// key); one more closes the oldest.
pub const PENDING_PER_DEVICE: usize = 2;

/// Given-up files remembered per device.
pub const GAVE_UP_KEPT: usize = 16;

/// A file the cloud gave up delivering to a device, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GaveUp {
    pub sha256: [u8; 32],
    pub code: Option<i32>,
    pub message: String,
}

/// What the cloud holds, counted. [`Footprint::bytes`] estimates the memory behind it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Device records.
    pub devices: usize,
    /// Devices with a session (online, or offline and resumable).
    pub sessions: usize,
    pub online: usize,
    /// DTLS associations the server holds (handshaking or connected).
    pub associations: usize,
    /// Handshakes with the key of a device that has a session, waiting for their Hello.
    pub pending_handshakes: usize,
    /// Jobs queued, held, running or committed (kept in full).
    pub jobs_unfinished: usize,
    /// Finished jobs whose summary is kept.
    pub jobs_finished: usize,
    /// Bytes of the distinct files and asset modules the jobs hold.
    pub job_file_bytes: usize,
    /// Transfers running, and the bytes of their per-chunk state.
    pub transfers: usize,
    pub transfer_bytes: usize,
    /// Requests of ours waiting for an answer, over all sessions.
    pub requests_outstanding: usize,
    /// Bytes of describes being reassembled from blocks.
    pub describe_bytes: usize,
    /// Events raised and not polled yet, and the bytes of their text.
    pub events_queued: usize,
    pub event_bytes: usize,
    /// Entries of the cloud's timer queue.
    pub timers: usize,
    /// Given-up files remembered, over all devices.
    pub gave_up: usize,
}

impl Footprint {
    /// An estimate of the memory all this takes: each record's size times the records, plus
    /// the buffers they own (files, transfer state, describes, event text). Allocator slack,
    /// the library, the fleet and the fixed parts of the cloud are not in it.
    pub fn bytes(&self) -> usize {
        self.devices * (size_of::<DeviceRecord>() + size_of::<DeviceId>())
            + self.sessions * size_of::<Session>()
            + self.associations * ASSOCIATION_BYTES
            + self.pending_handshakes * size_of::<connection::PendingHandshake>()
            + (self.jobs_unfinished + self.jobs_finished) * (size_of::<Job>() + size_of::<JobId>())
            + self.job_file_bytes
            + self.transfers * size_of::<Transfer>()
            + self.transfer_bytes
            + self.requests_outstanding * REQUEST_BYTES
            + self.describe_bytes
            + self.events_queued * size_of::<CloudEvent>()
            + self.event_bytes
            + self.timers * size_of::<(Duration, DeviceId)>()
            + self.gave_up * size_of::<GaveUp>()
    }
}

/// Roughly what the DTLS server keeps per association (keys, replay window, handshake
/// transcript while it lasts): counted as a constant, the server's type being opaque here.
const ASSOCIATION_BYTES: usize = 1024;
/// A request's entry in its session (purpose) and in the CoAP endpoint (the message kept
/// for retransmission, at most a chunk).
const REQUEST_BYTES: usize = 64;

impl fmt::Display for Footprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} KiB: {} devices, {} sessions ({} online), {} associations, {} pending handshakes, \
             {} jobs unfinished, {} finished kept, {} B of job files, {} transfers ({} B), \
             {} requests outstanding, {} B of describes, {} events queued ({} B), {} timers, \
             {} given up",
            self.bytes().div_ceil(1024),
            self.devices,
            self.sessions,
            self.online,
            self.associations,
            self.pending_handshakes,
            self.jobs_unfinished,
            self.jobs_finished,
            self.job_file_bytes,
            self.transfers,
            self.transfer_bytes,
            self.requests_outstanding,
            self.describe_bytes,
            self.events_queued,
            self.event_bytes,
            self.timers,
            self.gave_up,
        )
    }
}

fn event_text_bytes(event: &CloudEvent) -> usize {
    match event {
        CloudEvent::Stream(s) => s.name.len() + s.data.len(),
        CloudEvent::Dropped { reason, .. } => reason.len(),
        CloudEvent::Ota(o) => match &o.kind {
            OtaEventKind::Failed { message, .. } => message.len(),
            OtaEventKind::Retransmitted { indices } => indices.len() * size_of::<u32>(),
            OtaEventKind::Created { what } => what.len(),
            OtaEventKind::Retrying { reason } => reason.len(),
            _ => 0,
        },
        CloudEvent::Session(SessionChange::Refused { reason, .. }) => reason.len(),
        CloudEvent::Session(_) => 0,
    }
}

impl Cloud {
    /// What the cloud holds now, counted (the retention rules: [module docs](self)).
    pub fn footprint(&self) -> Footprint {
        let mut files = BTreeSet::new();
        let mut f = Footprint {
            devices: self.devices.len(),
            associations: self.server.association_count(),
            pending_handshakes: self.pending.len(),
            events_queued: self.events.len(),
            event_bytes: self.events.iter().map(event_text_bytes).sum(),
            timers: self.timers.len(),
            ..Footprint::default()
        };
        for d in self.devices.values() {
            f.gave_up += d.gave_up.len();
            let Some(s) = &d.session else {
                continue;
            };
            f.sessions += 1;
            f.online += usize::from(s.online);
            f.requests_outstanding += s.purposes.len();
            f.describe_bytes += s.describe.buffered() + s.describe_blocks.len();
        }
        for job in self.jobs.values() {
            if job.status.is_finished() {
                f.jobs_finished += 1;
            } else {
                f.jobs_unfinished += 1;
            }
            let held = std::iter::once(&job.file).chain(job.assets.iter().map(|a| &a.module));
            for file in held {
                if !file.is_empty() && files.insert(Arc::as_ptr(file)) {
                    f.job_file_bytes += file.len();
                }
            }
            if let Some(t) = &job.transfer {
                f.transfers += 1;
                f.transfer_bytes += t.state_bytes();
            }
        }
        f
    }

    /// A job just finished: it keeps only its summary, and the device's oldest finished
    /// summaries beyond [`CloudConfig::finished_jobs_kept`] are forgotten.
    pub(super) fn retire_job(&mut self, job_id: JobId) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        job.transfer = None;
        job.file = Arc::default();
        job.expected = None;
        job.assets = Vec::new();
        job.finish_token = None;
        let device = job.device_id;
        let kept = self.config.finished_jobs_kept.max(1);
        let finished = match self.devices.get_mut(&device) {
            Some(d) => &mut d.finished,
            None => &mut self.unowned_finished,
        };
        if finished.contains(&job_id) {
            return;
        }
        finished.push_back(job_id);
        let mut forget = Vec::new();
        while finished.len() > kept {
            forget.extend(finished.pop_front());
        }
        for old in forget {
            self.jobs.remove(&old);
        }
    }
}

impl DeviceRecord {
    /// Why the cloud gave up delivering the file with this SHA-256, if it did.
    pub(super) fn gave_up_on(&self, sha256: &[u8; 32]) -> Option<&GaveUp> {
        self.gave_up.iter().find(|g| &g.sha256 == sha256)
    }

    /// Remembers a file the cloud will not deliver again (one entry per file, the newest
    /// [`GAVE_UP_KEPT`]).
    pub(super) fn give_up(&mut self, gave_up: GaveUp) {
        self.gave_up.retain(|g| g.sha256 != gave_up.sha256);
        self.gave_up.push_back(gave_up);
        while self.gave_up.len() > GAVE_UP_KEPT {
            self.gave_up.pop_front();
        }
    }
}
