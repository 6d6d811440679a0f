//! What the cloud's OTA sender does to a slow, lossy link (issue 13): one transfer over the
//! simulated network with a bandwidth cap, a bounded queue and random loss, measured in virtual
//! time, with the paced sender or the one of before ([`crate::cloud::CloudConfig::paced_sender`]).
//! `hil bench pacing` prints both side by side; a test pins the paced figures.
//!
//! The file is `file_size` pseudo-random bytes, not a module: only the transfer is measured
//! (from the device's UpdateStart response to the UpdateFinish), the device's validation after
//! it fails and is not part of the figures.

use std::time::Duration;

use emulator::board::Board;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::cloud::{CloudEvent, JobStatus, OtaEventKind};
use crate::net::sim::{DropReason, LinkFaults};
use crate::testbed::{DeviceSpec, Testbed, TestbedError};

/// The link between the cloud and the device, both directions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowLink {
    /// Bytes per second each direction carries.
    pub bandwidth: u64,
    /// The longest a datagram waits in the queue before it is dropped.
    pub queue: Duration,
    /// Random loss, each direction.
    pub loss: f64,
    /// One-way delay.
    pub latency: Duration,
}

impl SlowLink {
    /// The issue's link: 20 KB/s, a 2 s queue, 5 % loss, 50 ms each way.
    pub const ISSUE: SlowLink = SlowLink {
        bandwidth: 20_000,
        queue: Duration::from_secs(2),
        loss: 0.05,
        latency: Duration::from_millis(50),
    };
}

/// What one transfer did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransferFigures {
    /// Chunks the file needs.
    pub chunks: u32,
    /// Chunk datagrams the cloud sent (first sends and retransmissions).
    pub chunk_datagrams: u32,
    /// Of those, retransmissions.
    pub retransmissions: u32,
    /// Datagrams from the cloud to the device delivered, beyond one per chunk: duplicates the
    /// device received (plus the few other messages of the transfer).
    pub duplicates_delivered: u64,
    /// Datagrams the bounded queue dropped (cloud to device).
    pub queue_drops: u64,
    /// From the device's UpdateStart response to the UpdateFinish.
    pub seconds: f64,
    /// File bytes per second over that time.
    pub goodput: f64,
    /// Goodput over the link's bandwidth.
    pub goodput_share: f64,
}

impl TransferFigures {
    /// Chunk datagrams sent per chunk needed.
    pub fn datagrams_per_chunk(&self) -> f64 {
        f64::from(self.chunk_datagrams) / f64::from(self.chunks.max(1))
    }
}

/// One transfer of `file_size` bytes to an emulated Boron over `link`, in virtual time.
pub fn measure(
    link: SlowLink,
    file_size: usize,
    paced: bool,
    seed: u64,
) -> Result<TransferFigures, String> {
    let err = |e: TestbedError| e.to_string();
    let board = Board::builtin("boron").map_err(|e| e.to_string())?;
    let mut bed = Testbed::new(seed).map_err(err)?;
    bed.cloud_mut().set_paced_sender(paced);
    let dev = bed.add_device(&DeviceSpec::new(board, 3)).map_err(err)?;
    bed.power_on(dev).map_err(err)?;
    bed.run_until("device online", Duration::from_secs(60), |b| {
        b.status(dev).map(|s| s.connected).unwrap_or(false)
    })
    .map_err(err)?;
    let mut file = vec![0u8; file_size];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut file);
    let faults = LinkFaults {
        latency: link.latency,
        loss: link.loss,
        bandwidth: link.bandwidth,
        queue_limit: link.queue,
        ..LinkFaults::PERFECT
    };
    let cloud = bed.cloud_node();
    let device = bed.device_node(dev).ok_or("no device node")?;
    bed.net.set_link_faults(cloud, device, faults);
    bed.net.set_link_faults(device, cloud, faults);
    let job = bed.flash(dev, file).map_err(err)?;
    bed.run_until("transfer started", Duration::from_secs(600), |b| {
        matches!(b.job(job), Some(JobStatus::Transferring { .. }))
    })
    .map_err(err)?;
    let before = bed.net.link_stats(cloud, device);
    bed.run_until("transfer finished", Duration::from_secs(7200), |b| {
        !matches!(
            b.job(job),
            Some(JobStatus::Transferring { .. } | JobStatus::Starting | JobStatus::Queued)
        )
    })
    .map_err(err)?;
    let after = bed.net.link_stats(cloud, device);
    let mut accepted = None;
    let mut finishing = None;
    let mut chunks = 0;
    let mut retransmissions = 0u32;
    for (at, e) in bed.cloud_events() {
        let CloudEvent::Ota(o) = e else { continue };
        if o.job != job {
            continue;
        }
        match &o.kind {
            OtaEventKind::Accepted { chunks: c, .. } => {
                accepted = Some(*at);
                chunks = *c;
            }
            OtaEventKind::Retransmitted { indices } => {
                retransmissions += indices.len() as u32;
            }
            OtaEventKind::Finishing => {
                finishing.get_or_insert(*at);
            }
            _ => {}
        }
    }
    let (Some(start), Some(end)) = (accepted, finishing) else {
        return Err(format!(
            "the transfer did not run to its UpdateFinish: {:?}",
            bed.job(job)
        ));
    };
    let seconds = end.saturating_sub(start).as_secs_f64();
    let delivered = after.delivered.saturating_sub(before.delivered);
    let queue_drops = after
        .dropped_for(DropReason::QueueFull)
        .saturating_sub(before.dropped_for(DropReason::QueueFull));
    let goodput = file_size as f64 / seconds.max(f64::EPSILON);
    Ok(TransferFigures {
        chunks,
        chunk_datagrams: chunks + retransmissions,
        retransmissions,
        duplicates_delivered: delivered.saturating_sub(u64::from(chunks)),
        queue_drops,
        seconds,
        goodput,
        goodput_share: goodput / link.bandwidth as f64,
    })
}
