//! Desired state, reconciled: the [`Cloud`] gathers what it knows of a device (its own describe
//! on this connection, its update flags, its jobs, its armed product target, the Device OS
//! library), asks [`policy::next_step`], and acts: start a transfer, hold and say pending,
//! succeed a job whose firmware already runs, or give up with the reason. It runs whenever
//! something may have changed: every message from the device, every timer, a flash, a fleet
//! change, a forced flag.

use std::sync::Arc;
use std::time::Duration;

use protocol::coap::Message;
use protocol::message::{
    Body, DescribeFlags, DescribeRequest, DescribeResponse, Response, SystemDescribe,
};
use sha2::{Digest, Sha256};

use super::assets::TargetAsset;
use super::firmware::{compare, expected_modules, Comparison, ExpectedModule};
use super::fleet::TargetFirmware;
use super::job::{Job, JobKind};
use super::policy::{self, Heal, Step};
use super::products::Delivery;
use super::session::{Purpose, Session};
use super::{names, Cloud, DeviceId, DeviceRecord, JobId, JobStatus, OtaEventKind};

/// The product firmware the cloud delivers to a device, with what the comparison with its
/// describe needs worked out once (not at every look).
#[derive(Debug, Clone)]
pub(super) struct Armed {
    pub firmware: TargetFirmware,
    pub expected: Option<Vec<ExpectedModule>>,
    /// The assets of a bundle ([`super::assets`]).
    pub assets: Vec<TargetAsset>,
}

impl Armed {
    pub fn new(firmware: TargetFirmware) -> Armed {
        let (expected, assets) = match super::assets::unpack(firmware.file.clone()) {
            Ok(u) => (expected_modules(&u.file), u.assets),
            Err(_) => (expected_modules(&firmware.file), Vec::new()),
        };
        Armed {
            expected,
            assets,
            firmware,
        }
    }
}

/// What the device should run, as far as a job or the armed target says.
enum Target {
    /// A job at the front of the queue, or a committed job waiting for healing.
    Job(JobId),
    /// The armed product firmware (no job for it yet).
    Armed,
}

impl Cloud {
    /// When the post-connect sequence of this connection has settled: the Hello is known,
    /// the pending event went out, none of our CONs but events is unacknowledged, and the device sent no
    /// request for `settle_quiet`, or `settle_max` after the connection started at the latest.
    pub(super) fn settle_deadline(
        &self,
        device: &DeviceRecord,
        session: &Session,
    ) -> Option<Duration> {
        if !session.online
            || !session.pending_sent
            || device.hello.is_none()
            || session.endpoint.as_ref().is_none_or(|e| {
                // An event of ours still unacknowledged (its ACK lost) does not hold a job
                // back: events are not part of the update. UNCONFIRMED what Particle's cloud
                // waits for; a describe request or an OTA message outstanding does hold it.
                let events = session
                    .purposes
                    .values()
                    .filter(|p| **p == Purpose::Event)
                    .count();
                e.unacknowledged() > events
            })
        {
            return None;
        }
        Some(
            (session.last_request + self.config.settle_quiet)
                .min(session.started_at + self.config.settle_max),
        )
    }

    /// Compares the device with its target and acts (rules in [`policy`]).
    pub(super) fn reconcile(&mut self, now: Duration, id: DeviceId) {
        // Each pass either acts once and returns, or finishes a target (a job that turns out
        // to be on target) and looks again; bounded by the jobs there are.
        for _ in 0..16 {
            if !self.reconcile_once(now, id) {
                return;
            }
        }
    }

    /// One decision; `true` if another pass may find more to do.
    fn reconcile_once(&mut self, now: Duration, id: DeviceId) -> bool {
        let Some(d) = self.devices.get(&id) else {
            return false;
        };
        let Some(s) = d.session.as_ref() else {
            return false;
        };
        if !s.online || s.endpoint.is_none() || self.active_job(&id).is_some() {
            return false;
        }
        match self.settle_deadline(d, s) {
            Some(at) if now >= at => {}
            _ => return false,
        }
        if let Some(s) = self.session_mut(&id) {
            s.reconciled_at = Some(now);
        }
        let Some(s) = self.devices.get(&id).and_then(|d| d.session.as_ref()) else {
            return false;
        };
        if !s.describe_seen {
            if !s.describe_requested {
                self.request_describe(now, id, None);
            }
            return false;
        }
        // A stalled transfer: wait until the device is heard from again.
        if s.stalled_at.is_some_and(|t| s.last_heard <= t) {
            return false;
        }
        let Some(d) = self.devices.get(&id) else {
            return false;
        };
        let Some(describe) = d.system_describe.clone() else {
            return false;
        };
        // A committed update waits for the device's reset and the describe after it: the
        // cloud makes no job of its own meanwhile (the describe it has is from before the
        // commit). A flash queued behind it still goes (a device with resets disabled stages
        // the newer file).
        let verdict_pending = d
            .committed
            .iter()
            .any(|j| self.jobs.get(j).is_some_and(|job| !job.awaiting_heal));
        if verdict_pending && d.queue.is_empty() {
            return false;
        }
        let hello = d.hello.clone();
        let platform = hello.as_ref().map_or(0, |h| h.platform_id);

        // The target: the queue's front job, a committed job waiting for healing, else the
        // armed product firmware.
        let front = d.queue.front().copied();
        let waiting_heal = d
            .committed
            .iter()
            .copied()
            .find(|j| self.jobs.get(j).is_some_and(|job| job.awaiting_heal));
        // An armed target superseded by the fleet (a new release, an unlock): its queued job
        // gives way.
        if let Some(job) = front {
            if let Some(JobKind::Product { version, .. }) = self.jobs.get(&job).map(|j| &j.kind) {
                let still = d
                    .armed
                    .as_ref()
                    .is_some_and(|a| a.firmware.version == *version);
                if !still {
                    self.fail_job(
                        now,
                        job,
                        None,
                        "superseded: the device's product target changed".into(),
                        false,
                    );
                    return true;
                }
            }
        }
        let target = front.or(waiting_heal).map(Target::Job).or_else(|| {
            d.armed
                .as_ref()
                .filter(|a| d.gave_up_on(&a.firmware.sha256).is_none())
                .map(|_| Target::Armed)
        });
        let (comparison, attempts, last_reason) = match &target {
            Some(Target::Job(job)) => {
                let Some(job) = self.jobs.get(job) else {
                    return false;
                };
                let cmp = match &job.expected {
                    Some(e) => compare(e, hello.as_ref(), &describe),
                    // Not a module file: nothing to compare; the device decides.
                    None => Comparison::Differs("the file holds no modules to compare".into()),
                };
                (Some(cmp), job.attempts, job.last_reason.clone())
            }
            Some(Target::Armed) => {
                let cmp = match d.armed.as_ref().and_then(|a| a.expected.as_ref()) {
                    Some(e) => compare(e, hello.as_ref(), &describe),
                    None => Comparison::Differs("not a module file".into()),
                };
                (Some(cmp), 0, None)
            }
            None => (None, 0, None),
        };
        // A bundle's assets (super::assets): once the target's modules run, the missing
        // assets follow, one transfer each.
        if comparison == Some(Comparison::OnTarget) {
            let (job, target_assets) = match &target {
                Some(Target::Job(j)) => (
                    Some(*j),
                    self.jobs
                        .get(j)
                        .map(|x| x.assets.clone())
                        .unwrap_or_default(),
                ),
                Some(Target::Armed) => (
                    None,
                    d.armed
                        .as_ref()
                        .map(|a| a.assets.clone())
                        .unwrap_or_default(),
                ),
                None => (None, Vec::new()),
            };
            let gate = policy::gate(d.updates_enabled, d.forced_setting, d.updates_forced);
            if let Some(again) =
                self.reconcile_assets(now, id, job, &target_assets, &describe, gate)
            {
                return again;
            }
        }
        let Some(d) = self.devices.get(&id) else {
            return false;
        };
        let heal = policy::heal(&describe, platform, &self.library);
        let heal = match heal {
            Heal::Send(m) if d.gave_up_on(&sha256(&m.file)).is_some() => {
                Heal::Stuck(format!("{} could not be installed before", m.describe()))
            }
            other => other,
        };
        let gate = policy::gate(d.updates_enabled, d.forced_setting, d.updates_forced);
        let step = policy::next_step(
            comparison.as_ref(),
            heal,
            gate,
            attempts,
            self.config.max_attempts,
            last_reason.as_deref(),
        );
        let heal_module = match &step {
            Step::Heal(m) => Some((*m).clone()),
            _ => None,
        };
        match step {
            Step::Nothing => false,
            Step::OnTarget => match target {
                Some(Target::Job(job)) => {
                    if let Some(d) = self.devices.get_mut(&id) {
                        d.queue.retain(|j| *j != job);
                        d.committed.retain(|j| *j != job);
                    }
                    self.succeed_job(now, job);
                    true
                }
                _ => false,
            },
            Step::SendTarget => {
                let job = match target {
                    Some(Target::Job(job)) => job,
                    Some(Target::Armed) => match self.create_product_job(now, id) {
                        Some(job) => job,
                        None => return false,
                    },
                    None => return false,
                };
                if matches!(
                    self.jobs.get(&job).map(|j| &j.kind),
                    Some(JobKind::Product { .. })
                ) && self.jobs.get(&job).is_some_and(|j| j.attempts == 0)
                {
                    // Before a cloud-initiated update (reference 4.8).
                    self.publish_cloud(now, id, names::STATUS, "auto-update");
                }
                self.start_job(now, id, job);
                false
            }
            Step::Heal(_) => {
                let Some(module) = heal_module else {
                    return false;
                };
                let job = self.create_job(
                    now,
                    id,
                    JobKind::Heal {
                        module: module.describe(),
                    },
                    module.file.clone(),
                );
                if let Some(d) = self.devices.get_mut(&id) {
                    d.queue.push_front(job);
                }
                self.publish_cloud(
                    now,
                    id,
                    names::SAFE_MODE_UPDATER,
                    &policy::updater_data(&module),
                );
                self.start_job(now, id, job);
                false
            }
            Step::Hold => {
                let job = match target {
                    Some(Target::Job(job)) => Some(job),
                    Some(Target::Armed) => self.create_product_job(now, id),
                    None => None,
                };
                if let Some(job) = job {
                    if self
                        .jobs
                        .get(&job)
                        .is_some_and(|j| j.status != JobStatus::Held)
                    {
                        self.hold_job(now, job, None);
                    }
                }
                false
            }
            Step::GiveUp(reason) => {
                let job = match target {
                    Some(Target::Job(job)) => Some(job),
                    Some(Target::Armed) => self.create_product_job(now, id),
                    None => None,
                };
                if let Some(job) = job {
                    if let Some(d) = self.devices.get_mut(&id) {
                        d.committed.retain(|j| *j != job);
                    }
                    self.fail_job(now, job, None, reason, false);
                    return true;
                }
                false
            }
        }
    }

    /// A job for the device's armed product firmware, at the front of its queue.
    pub(super) fn create_product_job(&mut self, now: Duration, id: DeviceId) -> Option<JobId> {
        let d = self.devices.get(&id)?;
        let armed = d.armed.clone()?.firmware;
        // A minor Device OS bump goes with the app in one combined transfer (policy).
        let platform = d.hello.as_ref().map_or(0, |h| h.platform_id);
        let file = d
            .system_describe
            .as_ref()
            .and_then(|describe| {
                policy::combined_upgrade(describe, platform, &self.library, &armed.file)
            })
            .unwrap_or_else(|| armed.file.clone());
        let job = self.create_job(
            now,
            id,
            JobKind::Product {
                product: armed.product,
                version: armed.version,
            },
            file,
        );
        if let Some(d) = self.devices.get_mut(&id) {
            d.queue.push_front(job);
        }
        Some(job)
    }

    /// A job the cloud creates itself (product firmware, healing).
    fn create_job(
        &mut self,
        now: Duration,
        id: DeviceId,
        kind: JobKind,
        file: Arc<Vec<u8>>,
    ) -> JobId {
        let job_id = JobId(self.next_job);
        self.next_job += 1;
        let what = kind.to_string();
        self.jobs.insert(job_id, Job::new(kind, id, file));
        self.ota_event(now, job_id, id, OtaEventKind::Created { what });
        job_id
    }

    /// Asks the device for its system describe (GET `d`, reference 1.10); `block` for the
    /// next Block2 block of a large one.
    fn request_describe(&mut self, now: Duration, id: DeviceId, block: Option<u32>) {
        let body = Body::DescribeRequest(DescribeRequest {
            flags: DescribeFlags::SYSTEM,
            block2: block.map(|num| protocol::coap::BlockOption {
                num,
                more: false,
                size: protocol::coap::BlockSize::B1024,
            }),
        });
        if self.send_con(now, id, body, Purpose::Describe).is_some() {
            if let Some(s) = self.session_mut(&id) {
                s.describe_requested = true;
            }
        }
    }

    /// The device's answer to our describe request.
    pub(super) fn on_describe_response(&mut self, now: Duration, id: DeviceId, message: &Message) {
        let response = Response {
            code: message.code,
            options: message.options.clone(),
            payload: message.payload.clone(),
        };
        let parsed = match DescribeResponse::parse(&response) {
            Ok(r) => r,
            Err(e) => {
                self.stats.malformed += 1;
                self.dropped(Some(id), format!("describe response: {e}"));
                return;
            }
        };
        let payload = match parsed.block2 {
            Some(block) => {
                let Some(s) = self.session_mut(&id) else {
                    return;
                };
                if block.num == 0 {
                    s.describe_blocks.clear();
                }
                s.describe_blocks.extend_from_slice(&parsed.payload);
                if block.more {
                    self.request_describe(now, id, Some(block.num + 1));
                    return;
                }
                std::mem::take(&mut s.describe_blocks)
            }
            None => parsed.payload,
        };
        match SystemDescribe::parse(&payload) {
            Ok(describe) => {
                self.on_system_describe(now, id, describe);
                self.service(now, id);
            }
            Err(e) => {
                self.stats.malformed += 1;
                self.dropped(Some(id), format!("system describe: {e}"));
            }
        }
    }

    /// Acts on a change of the fleet for these devices (see [`super::products`]): the target
    /// is armed at once for [`Delivery::Now`]; for [`Delivery::NextHandshake`] it is armed at
    /// the device's next full handshake, but a device that no longer has a product target
    /// (made a development device, unlocked with nothing released, removed) stops receiving
    /// at once.
    pub(super) fn fleet_changed(
        &mut self,
        now: Duration,
        devices: &[DeviceId],
        delivery: Delivery,
    ) {
        for device in devices {
            let target = self
                .fleet
                .target(*device)
                .firmware()
                .cloned()
                .map(Armed::new);
            let Some(d) = self.devices.get_mut(device) else {
                continue;
            };
            match (delivery, target) {
                (Delivery::Now, target) => d.armed = target,
                (Delivery::NextHandshake, None) => d.armed = None,
                (Delivery::NextHandshake, Some(_)) => {}
            }
            self.service(now, *device);
        }
        self.retime_touched();
    }
}

fn sha256(file: &[u8]) -> [u8; 32] {
    Sha256::digest(file).into()
}
