//! The OTA side of the [`Cloud`]: starting jobs, the OTA v3 exchange around the sender of
//! [`super::transfer`] (UpdateStart / 2.01, chunks, UpdateAck, UpdateFinish / 2.04), commit,
//! failure, requeue, and the verdict once the device comes back (reference 2.2-2.5, section 8).

use std::time::Duration;

use protocol::coap::{Code, Message};
use protocol::message::{
    Body, Diagnostic, FinishStats, Hello, HelloFlags, SystemDescribe, UpdateAck, UpdateChunk,
    UpdateFinish, UpdateStart, UpdateStartResponse,
};

use super::assets;
use super::firmware::{compare, Comparison};
use super::footprint::GaveUp;
use super::job::JobKind;
use super::policy;
use super::session::Purpose;
use super::DeviceId;
use super::{names, Cloud, JobId, JobStatus, OtaEventKind, SenderTiming, Transfer};

impl Cloud {
    /// The job at the front of the device's queue if UpdateStart went out for it.
    pub(super) fn active_job(&self, id: &DeviceId) -> Option<JobId> {
        let job = *self.devices.get(id)?.queue.front()?;
        self.jobs.get(&job)?.status.is_active().then_some(job)
    }

    pub(super) fn start_job(&mut self, now: Duration, id: DeviceId, job_id: JobId) {
        let flags = self
            .devices
            .get(&id)
            .and_then(|d| d.hello.as_ref())
            .map(|h| h.flags);
        let Some(flags) = flags else {
            return;
        };
        if !flags.contains(HelloFlags::OTA_PROTOCOL_V3) {
            self.fail_job(
                now,
                job_id,
                None,
                format!(
                    "the device does not speak OTA v3 (Hello flags {:#06x} lack 0x80); the legacy chunked protocol is not supported",
                    flags.0
                ),
                true,
            );
            return;
        }
        // A flash queued before the cloud knew the device's platform: its bundle is checked
        // against the platform's asset limits now, before its application goes out.
        let platform = self
            .devices
            .get(&id)
            .and_then(|d| d.hello.as_ref())
            .map(|h| h.platform_id);
        let too_large = self.jobs.get(&job_id).and_then(|j| match j.kind {
            JobKind::Asset { .. } => None,
            _ => platform.and_then(|p| super::assets::limit_refusal(&j.assets, p)),
        });
        if let Some(message) = too_large {
            self.fail_job(now, job_id, None, message, true);
            return;
        }
        let chunk_size = self.config.valid_chunk_size();
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let file_size = job.file.len() as u32;
        let start = UpdateStart {
            file_size,
            file_sha256: Some(job.sha256),
            chunk_size,
            discard_data: false,
            // An asset's own transfer says so (reference 2.2, 6.3): the device's size checks.
            module_function: matches!(job.kind, JobKind::Asset { .. })
                .then_some(u32::from(u8::from(protocol::module::ModuleFunction::Asset))),
        };
        job.attempts += 1;
        job.transfer = None;
        let attempt = job.attempts;
        if self
            .send_con(
                now,
                id,
                Body::UpdateStart(start),
                Purpose::UpdateStart(job_id),
            )
            .is_none()
        {
            return;
        }
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.status = JobStatus::Starting;
        }
        self.ota_event(
            now,
            job_id,
            id,
            OtaEventKind::Started {
                attempt,
                file_size,
                chunk_size,
            },
        );
        self.publish_cloud(now, id, names::FLASH_STATUS, names::FLASH_STARTED);
    }

    pub(super) fn on_start_response(
        &mut self,
        now: Duration,
        id: DeviceId,
        job_id: JobId,
        message: &Message,
    ) {
        if self.job(job_id) != Some(&JobStatus::Starting) {
            return;
        }
        if message.code != Code::CREATED {
            self.fail_from_response(now, job_id, "UpdateStart", message);
            return;
        }
        let response = protocol::message::Response {
            code: message.code,
            options: message.options.clone(),
            payload: message.payload.clone(),
        };
        let accepted = match UpdateStartResponse::parse(&response) {
            Ok(r) => r,
            Err(e) => {
                self.fail_job(
                    now,
                    job_id,
                    None,
                    format!("unusable UpdateStart response: {e}"),
                    true,
                );
                return;
            }
        };
        let timing = SenderTiming {
            hole_holdoff: self.config.hole_holdoff,
            silence_timeout: self.config.silence_timeout,
            silence_resend: self.config.silence_resend,
            stall_limit: self.config.stall_limit,
            paced: self.config.paced_sender,
        };
        let chunk_size = self.config.valid_chunk_size();
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let transfer = match Transfer::new(
            now,
            job.file.len() as u32,
            chunk_size,
            accepted.resume_offset,
            accepted.window_size,
            timing,
        ) {
            Ok(t) => t,
            Err(e) => {
                self.fail_job(now, job_id, None, e.to_string(), true);
                return;
            }
        };
        let (window, chunks) = (transfer.window, transfer.chunks);
        job.transfer = Some(transfer);
        self.update_transfer_status(job_id);
        self.ota_event(
            now,
            job_id,
            id,
            OtaEventKind::Accepted {
                window,
                resume_offset: accepted.resume_offset,
                chunks,
            },
        );
        self.advance_transfer(now, id, job_id);
    }

    /// Sends what the window allows, or UpdateFinish once everything is held.
    pub(super) fn advance_transfer(&mut self, now: Duration, id: DeviceId, job_id: JobId) {
        let Some(transfer) = self.jobs.get_mut(&job_id).and_then(|j| j.transfer.as_mut()) else {
            return;
        };
        if transfer.is_complete() {
            self.send_finish(now, id, job_id);
            return;
        }
        let next = transfer.next_chunks(now);
        if !next.is_empty() {
            self.send_chunks(now, id, job_id, &next);
            self.update_transfer_status(job_id);
        }
    }

    pub(super) fn send_chunks(
        &mut self,
        now: Duration,
        id: DeviceId,
        job_id: JobId,
        indices: &[u32],
    ) {
        let Some((file, chunk_size)) = self.jobs.get(&job_id).and_then(|j| {
            j.transfer
                .as_ref()
                .map(|t| (j.file.clone(), t.chunk_size as usize))
        }) else {
            return;
        };
        // What the endpoint still queues goes first, so that the chunks leave in order after it.
        self.flush_endpoint(now, id);
        // One buffer for the burst: each chunk is encoded straight from the file into it (no
        // copy of its bytes into a message first), then sealed into its record.
        let mut coap = Vec::with_capacity(chunk_size + 32);
        for &index in indices {
            let Some(range) = self
                .jobs
                .get(&job_id)
                .and_then(|j| j.transfer.as_ref())
                .map(|t| t.chunk_range(index))
            else {
                return;
            };
            coap.clear();
            let data = file.get(range).unwrap_or_default();
            // Encoded with message id 0, which is then patched: a chunk that cannot be encoded
            // takes no message id.
            if let Err(e) = UpdateChunk::emit_coap_into(0, index, data, &mut coap) {
                self.dropped(Some(id), format!("could not encode a chunk: {e}"));
                continue;
            }
            self.touched.push(id);
            let Some(session) = self.devices.get_mut(&id).and_then(|d| d.session.as_mut()) else {
                return;
            };
            let handle = session.handle;
            let Some(endpoint) = session.endpoint.as_mut() else {
                return;
            };
            let (_, message_id) = endpoint.reserve_unanswered_non();
            coap[2..4].copy_from_slice(&message_id.to_be_bytes());
            let failure = self
                .server
                .send_application_data(now, handle, &coap)
                .err()
                .map(|e| format!("could not send {} bytes: {e}", coap.len()));
            session.remember_chunk(message_id, index);
            if let Some(failure) = failure {
                self.dropped(Some(id), failure);
            }
        }
    }

    pub(super) fn update_transfer_status(&mut self, job_id: JobId) {
        if let Some(job) = self.jobs.get_mut(&job_id) {
            if let Some(t) = &job.transfer {
                job.status = JobStatus::Transferring {
                    resume_offset: t.resume_offset,
                    window: t.window,
                    chunks: t.chunks,
                    sent: t.sent(),
                    acked: t.acked(),
                    retransmissions: t.retransmissions,
                };
            }
        }
    }

    pub(super) fn on_update_ack(&mut self, now: Duration, id: DeviceId, ack: UpdateAck) {
        let Some(job_id) = self.active_job(&id) else {
            return; // a late ack after the transfer (the device's delayed ack): nothing to do
        };
        let Some(transfer) = self.jobs.get_mut(&job_id).and_then(|j| j.transfer.as_mut()) else {
            return;
        };
        if transfer.is_complete() {
            return;
        }
        let acked_before = transfer.acked();
        let resend = match transfer.on_ack(now, &ack) {
            Ok(r) => r,
            Err(e) => {
                self.dropped(Some(id), e.to_string());
                return;
            }
        };
        let (sent, acked, chunks) = (transfer.sent(), transfer.acked(), transfer.chunks);
        if !resend.is_empty() {
            self.send_chunks(now, id, job_id, &resend);
            self.ota_event(
                now,
                job_id,
                id,
                OtaEventKind::Retransmitted {
                    indices: resend.clone(),
                },
            );
        }
        if acked != acked_before {
            self.ota_event(
                now,
                job_id,
                id,
                OtaEventKind::Progress {
                    sent,
                    acked,
                    chunks,
                },
            );
        }
        self.update_transfer_status(job_id);
        self.advance_transfer(now, id, job_id);
    }

    pub(super) fn send_finish(&mut self, now: Duration, id: DeviceId, job_id: JobId) {
        let body = Body::UpdateFinish(UpdateFinish::default());
        let Some(token) = self.send_con(now, id, body, Purpose::UpdateFinish(job_id)) else {
            return;
        };
        if let Some(job) = self.jobs.get_mut(&job_id) {
            job.finish_token = Some(token);
            job.status = JobStatus::Finishing;
        }
        self.ota_event(now, job_id, id, OtaEventKind::Finishing);
    }

    pub(super) fn on_finish_response(&mut self, now: Duration, job_id: JobId, message: &Message) {
        if self.job(job_id) != Some(&JobStatus::Finishing) {
            return;
        }
        if message.code != Code::CHANGED {
            self.fail_from_response(now, job_id, "UpdateFinish", message);
            return;
        }
        // The endpoint ACKs the separate 2.04 as it delivers it: that ACK is the commit point.
        let stats = FinishStats::parse(&message.payload).ok();
        self.commit_job(now, job_id, stats);
    }

    /// The device committed: `success ` on the stream (Particle's "handed to the device"),
    /// the job waits for the device's describe after its reset.
    fn commit_job(&mut self, now: Duration, job_id: JobId, stats: Option<FinishStats>) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        job.status = JobStatus::Committed { stats };
        job.committed_at = Some(now);
        job.maybe_committed = false;
        job.transfer = None;
        let id = job.device_id;
        if let Some(d) = self.devices.get_mut(&id) {
            d.queue.retain(|j| *j != job_id);
            if !d.committed.contains(&job_id) {
                d.committed.push(job_id);
            }
        }
        self.ota_event(now, job_id, id, OtaEventKind::Committed { stats });
        self.publish_cloud(now, id, names::FLASH_STATUS, names::FLASH_SUCCESS);
    }

    /// A 2.04 that matched no request of ours (its UpdateFinish timed out, or the connection
    /// was taken for lost): the endpoint has ACKed it, so the device commits. If its token is
    /// the last UpdateFinish of the device's job, that job is committed. `true` if it was.
    pub(super) fn late_finish_response(
        &mut self,
        now: Duration,
        id: DeviceId,
        message: &Message,
    ) -> bool {
        if message.token.is_empty() {
            return false;
        }
        let job = self.devices.get(&id).and_then(|d| {
            d.queue.iter().copied().find(|j| {
                self.jobs.get(j).is_some_and(|job| {
                    job.finish_token.as_deref() == Some(message.token.as_slice())
                        && (job.maybe_committed || job.status == JobStatus::Finishing)
                })
            })
        });
        let Some(job) = job else {
            return false;
        };
        let stats = FinishStats::parse(&message.payload).ok();
        self.commit_job(now, job, stats);
        true
    }

    pub(super) fn fail_from_response(
        &mut self,
        now: Duration,
        job_id: JobId,
        what: &str,
        message: &Message,
    ) {
        let (code, text) = match Diagnostic::parse(&message.payload) {
            Ok(d) => (Some(d.code), d.message),
            Err(_) => (
                None,
                format!(
                    "the device answered {what} with {} {}",
                    message.code,
                    String::from_utf8_lossy(&message.payload)
                )
                .trim_end()
                .to_string(),
            ),
        };
        match code {
            Some(policy::UPDATES_DISABLED) => self.hold_job(now, job_id, Some(text)),
            Some(c) if !policy::is_permanent(c) => {
                self.requeue_job(
                    now,
                    job_id,
                    format!("the device answered {what}: {text} ({c})"),
                );
                self.publish_for(job_id, now, names::FLASH_FAILED);
            }
            _ => self.fail_job(now, job_id, code, text, true),
        }
    }

    fn publish_for(&mut self, job_id: JobId, now: Duration, data: &str) {
        if let Some(id) = self.jobs.get(&job_id).map(|j| j.device_id) {
            self.publish_cloud(now, id, names::FLASH_STATUS, data);
        }
    }

    /// Back to the queue for another attempt (bounded by the policy).
    fn requeue_job(&mut self, now: Duration, job_id: JobId, reason: String) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        job.status = JobStatus::Queued;
        job.transfer = None;
        job.last_reason = Some(reason);
        let id = job.device_id;
        self.ota_event(now, job_id, id, OtaEventKind::Requeued { resume_hint: 0 });
    }

    /// The device has updates disabled: the job waits for them to be enabled (or forced).
    pub(super) fn hold_job(&mut self, now: Duration, job_id: JobId, reason: Option<String>) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let was_held = job.status == JobStatus::Held;
        job.status = JobStatus::Held;
        job.transfer = None;
        if reason.is_some() {
            job.last_reason = reason;
        }
        let id = job.device_id;
        if let Some(d) = self.devices.get_mut(&id) {
            // The device refused with -1380: its updates are disabled whatever it said before.
            d.updates_enabled = Some(false);
        }
        if !was_held {
            self.ota_event(now, job_id, id, OtaEventKind::Held);
        }
        let say = self
            .session_mut(&id)
            .is_some_and(|s| s.online && s.pending_sent && !s.pending_true_sent);
        if say {
            if let Some(s) = self.session_mut(&id) {
                s.pending_true_sent = true;
            }
            if self.send_event(now, id, names::UPDATES_PENDING, "true") {
                self.publish_cloud(now, id, names::UPDATES_PENDING, "true");
            }
        }
    }

    /// The device's held job, if one is held.
    pub(super) fn held_job(&self, id: &DeviceId) -> Option<JobId> {
        let job = *self.devices.get(id)?.queue.front()?;
        (self.jobs.get(&job)?.status == JobStatus::Held).then_some(job)
    }

    /// The device dropped the active transfer: requeued or failed per
    /// [`CloudConfig::interrupted`](super::CloudConfig).
    pub(super) fn interrupt_active(&mut self, now: Duration, id: DeviceId, why: &str) {
        match self.config.interrupted {
            super::Interrupted::Retry => self.requeue_active(now, id),
            super::Interrupted::Fail => {
                if let Some(job_id) = self.active_job(&id) {
                    self.fail_job(now, job_id, None, why.to_string(), true);
                }
            }
        }
    }

    pub(super) fn requeue_active(&mut self, now: Duration, id: DeviceId) {
        let Some(job_id) = self.active_job(&id) else {
            return;
        };
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let resume_hint = job.transfer.as_ref().map_or(0, |t| {
            t.resume_offset
                .saturating_add(t.cumulative().saturating_mul(t.chunk_size))
                .min(t.file_size)
        });
        job.maybe_committed = job.status == JobStatus::Finishing;
        job.status = JobStatus::Queued;
        job.transfer = None;
        job.last_reason = Some("the transfer was interrupted".into());
        self.ota_event(now, job_id, id, OtaEventKind::Requeued { resume_hint });
    }

    pub(super) fn succeed_job(&mut self, now: Duration, job_id: JobId) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        job.status = JobStatus::Succeeded;
        // A finished job keeps its status, not its file (a cloud that runs for weeks).
        job.transfer = None;
        job.file = std::sync::Arc::new(Vec::new());
        let id = job.device_id;
        self.ota_event(now, job_id, id, OtaEventKind::Succeeded);
        self.retire_job(job_id);
    }

    pub(super) fn fail_job(
        &mut self,
        now: Duration,
        job_id: JobId,
        code: Option<i32>,
        message: String,
        publish: bool,
    ) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        job.status = JobStatus::Failed {
            code,
            message: message.clone(),
        };
        job.transfer = None;
        job.file = std::sync::Arc::new(Vec::new());
        let automatic = job.kind != JobKind::Flash;
        let sha = job.sha256;
        let id = job.device_id;
        if automatic {
            // Never retried: the same file would fail the same way (superseded jobs are
            // not given up: a later target may name the same file again).
            if !message.starts_with("superseded") {
                if let Some(d) = self.devices.get_mut(&id) {
                    d.give_up(GaveUp {
                        sha256: sha,
                        code,
                        message: message.clone(),
                    });
                }
            }
        }
        if let Some(d) = self.devices.get_mut(&id) {
            d.queue.retain(|j| *j != job_id);
            d.committed.retain(|j| *j != job_id);
        }
        self.ota_event(now, job_id, id, OtaEventKind::Failed { code, message });
        if publish && self.devices.contains_key(&id) {
            self.publish_cloud(now, id, names::FLASH_STATUS, names::FLASH_FAILED);
        }
        self.retire_job(job_id);
    }

    /// Committed jobs (and a job requeued while finishing): does the device, in a connection
    /// that started after the commit, now run their firmware? Running it (listed, matching,
    /// valid) is success. Installed but waiting for Device OS modules keeps the job committed
    /// while healing runs ([`policy`]). Anything else sends the job back for another attempt.
    pub(super) fn check_committed(
        &mut self,
        now: Duration,
        id: DeviceId,
        describe: &SystemDescribe,
        hello: Option<&Hello>,
        started_at: Duration,
    ) {
        let committed: Vec<JobId> = self
            .devices
            .get(&id)
            .map(|d| d.committed.clone())
            .unwrap_or_default();
        for job_id in committed {
            let Some(job) = self.jobs.get(&job_id) else {
                continue;
            };
            if job.committed_at.is_none_or(|at| started_at <= at) {
                continue; // same connection as the commit: the device has not rebooted
            }
            let heal = matches!(job.kind, JobKind::Heal { .. });
            let verdict = match &job.expected {
                Some(expected) => compare(expected, hello, describe),
                None => Comparison::OnTarget,
            };
            // A bundle's assets (reference 6.3): the application runs but assets are still to
            // come => installed and waiting, like healing; an asset job's asset not listed =>
            // the device came back without it.
            let verdict = match (verdict, assets::verdict(&job.kind, &job.assets, describe)) {
                (Comparison::OnTarget, assets::AssetVerdict::Awaiting(message)) => {
                    Comparison::Invalid {
                        message,
                        unmet_dependency: true,
                    }
                }
                (Comparison::OnTarget, assets::AssetVerdict::Missing(message)) => {
                    Comparison::Differs(message)
                }
                (verdict, _) => verdict,
            };
            match verdict {
                Comparison::OnTarget => {
                    self.remove_committed(id, job_id);
                    self.succeed_job(now, job_id);
                }
                // A Device OS module is delivered once installed, even while its own
                // dependencies wait for the next one.
                Comparison::Invalid {
                    unmet_dependency: true,
                    ..
                } if heal => {
                    self.remove_committed(id, job_id);
                    self.succeed_job(now, job_id);
                }
                // Installed; the device waits in safe mode for Device OS modules: healing
                // (reconcile) sends them and the job stays committed until the app runs.
                Comparison::Invalid {
                    unmet_dependency: true,
                    message,
                } => {
                    if let Some(job) = self.jobs.get_mut(&job_id) {
                        job.last_reason = Some(message);
                        job.awaiting_heal = true;
                    }
                }
                Comparison::Invalid { message, .. } | Comparison::Differs(message) => {
                    self.remove_committed(id, job_id);
                    let reason = format!(
                        "the update was committed but the device came back without it: {message}"
                    );
                    let Some(job) = self.jobs.get_mut(&job_id) else {
                        continue;
                    };
                    job.status = JobStatus::Queued;
                    job.committed_at = None;
                    job.awaiting_heal = false;
                    job.last_reason = Some(reason.clone());
                    if let Some(d) = self.devices.get_mut(&id) {
                        d.queue.push_front(job_id);
                    }
                    self.ota_event(now, job_id, id, OtaEventKind::Retrying { reason });
                }
            }
        }
        // A job requeued while finishing may have been committed before the link went.
        let front = self.devices.get(&id).and_then(|d| d.queue.front().copied());
        if let Some(job_id) = front {
            let done = self.jobs.get(&job_id).is_some_and(|j| {
                j.maybe_committed
                    && j.status == JobStatus::Queued
                    && j.expected
                        .as_ref()
                        .is_some_and(|e| compare(e, hello, describe) == Comparison::OnTarget)
                    && assets::first_missing(&j.assets, describe).is_none()
            });
            if done {
                if let Some(d) = self.devices.get_mut(&id) {
                    d.queue.pop_front();
                }
                self.succeed_job(now, job_id);
            }
        }
    }

    fn remove_committed(&mut self, id: DeviceId, job_id: JobId) {
        if let Some(d) = self.devices.get_mut(&id) {
            d.committed.retain(|j| *j != job_id);
        }
    }
}
