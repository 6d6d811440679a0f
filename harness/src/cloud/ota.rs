//! The OTA side of the [`Cloud`]: starting jobs, the OTA v3 exchange around the sender of
//! [`super::transfer`] (UpdateStart / 2.01, chunks, UpdateAck, UpdateFinish / 2.04), commit,
//! failure, requeue, and the verdict once the device comes back (reference 2.2-2.5, section 8).

use std::time::Duration;

use protocol::coap::{Code, Message, MessageType};
use protocol::message::{
    Body, Diagnostic, FinishStats, Hello, HelloFlags, ParticleMessage, SystemDescribe, UpdateAck,
    UpdateChunk, UpdateFinish, UpdateStart, UpdateStartResponse,
};

use super::session::Purpose;
use super::{names, verify, Cloud, JobId, JobStatus, OtaEventKind, SenderTiming, Transfer};

impl Cloud {
    /// The job at the front of the device's queue if UpdateStart went out for it.
    pub(super) fn active_job(&self, id: &[u8; 12]) -> Option<JobId> {
        let job = *self.devices.get(id)?.queue.front()?;
        self.jobs.get(&job)?.status.is_active().then_some(job)
    }

    pub(super) fn start_job(&mut self, now: Duration, id: [u8; 12], job_id: JobId) {
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
            module_function: None,
        };
        job.attempts += 1;
        job.transfer = None;
        let attempt = job.attempts;
        let token = match self.endpoint(&id) {
            Some(e) => e.next_token(),
            None => return,
        };
        let message = ParticleMessage {
            kind: MessageType::Confirmable,
            message_id: 0,
            token,
            body: Body::UpdateStart(start),
        };
        if self
            .send_request(now, id, message, Purpose::UpdateStart(job_id))
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
        id: [u8; 12],
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
    pub(super) fn advance_transfer(&mut self, now: Duration, id: [u8; 12], job_id: JobId) {
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
        id: [u8; 12],
        job_id: JobId,
        indices: &[u32],
    ) {
        let messages: Vec<ParticleMessage> = {
            let Some(job) = self.jobs.get(&job_id) else {
                return;
            };
            let Some(transfer) = job.transfer.as_ref() else {
                return;
            };
            indices
                .iter()
                .map(|&index| ParticleMessage {
                    kind: MessageType::NonConfirmable,
                    message_id: 0,
                    token: Vec::new(),
                    body: Body::UpdateChunk(UpdateChunk {
                        index,
                        data: job
                            .file
                            .get(transfer.chunk_range(index))
                            .unwrap_or_default()
                            .to_vec(),
                    }),
                })
                .collect()
        };
        // Flushed first, so that each chunk is the last datagram of its own flush.
        self.flush_endpoint(now, id);
        for (index, message) in indices.iter().zip(messages) {
            let coap = match message.to_coap() {
                Ok(m) => m,
                Err(e) => {
                    self.dropped(Some(id), format!("could not encode a chunk: {e}"));
                    continue;
                }
            };
            let result = match self.endpoint(&id) {
                Some(e) => e.send(now, coap),
                None => return,
            };
            if let Err(e) = result {
                self.dropped(Some(id), format!("could not send a chunk: {e}"));
                continue;
            }
            if let Some(mid) = self.flush_endpoint(now, id) {
                if let Some(s) = self.session_mut(&id) {
                    s.remember_chunk(mid, *index);
                }
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

    pub(super) fn on_update_ack(&mut self, now: Duration, id: [u8; 12], ack: UpdateAck) {
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

    pub(super) fn send_finish(&mut self, now: Duration, id: [u8; 12], job_id: JobId) {
        let token = match self.endpoint(&id) {
            Some(e) => e.next_token(),
            None => return,
        };
        let message = ParticleMessage {
            kind: MessageType::Confirmable,
            message_id: 0,
            token,
            body: Body::UpdateFinish(UpdateFinish::default()),
        };
        if self
            .send_request(now, id, message, Purpose::UpdateFinish(job_id))
            .is_none()
        {
            return;
        }
        if let Some(job) = self.jobs.get_mut(&job_id) {
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
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        job.status = JobStatus::Committed { stats };
        job.committed_at = Some(now);
        job.transfer = None;
        job.file = Vec::new(); // delivered; the verdict needs only the expected modules
        let id = job.device_id;
        if let Some(d) = self.devices.get_mut(&id) {
            d.queue.retain(|j| *j != job_id);
            d.committed.push(job_id);
        }
        self.ota_event(now, job_id, id, OtaEventKind::Committed { stats });
        self.publish_cloud(now, id, names::FLASH_STATUS, names::FLASH_SUCCESS);
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
        self.fail_job(now, job_id, code, text, true);
    }

    /// The device dropped the active transfer: requeued or failed per
    /// [`CloudConfig::interrupted`](super::CloudConfig).
    pub(super) fn interrupt_active(&mut self, now: Duration, id: [u8; 12], why: &str) {
        match self.config.interrupted {
            super::Interrupted::Retry => self.requeue_active(now, id),
            super::Interrupted::Fail => {
                if let Some(job_id) = self.active_job(&id) {
                    self.fail_job(now, job_id, None, why.to_string(), true);
                }
            }
        }
    }

    pub(super) fn requeue_active(&mut self, now: Duration, id: [u8; 12]) {
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
        self.ota_event(now, job_id, id, OtaEventKind::Requeued { resume_hint });
    }

    pub(super) fn succeed_job(&mut self, now: Duration, job_id: JobId) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        job.status = JobStatus::Succeeded;
        let id = job.device_id;
        self.ota_event(now, job_id, id, OtaEventKind::Succeeded);
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
        job.file = Vec::new();
        let id = job.device_id;
        if let Some(d) = self.devices.get_mut(&id) {
            d.queue.retain(|j| *j != job_id);
            d.committed.retain(|j| *j != job_id);
        }
        self.ota_event(now, job_id, id, OtaEventKind::Failed { code, message });
        if publish && self.devices.contains_key(&id) {
            self.publish_cloud(now, id, names::FLASH_STATUS, names::FLASH_FAILED);
        }
    }

    /// Committed jobs (and a job requeued while finishing): does the device, in a connection
    /// that started after the commit, now run their firmware?
    pub(super) fn check_committed(
        &mut self,
        now: Duration,
        id: [u8; 12],
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
            if job.committed_at.is_none_or(|at| started_at < at) {
                continue; // same connection as the commit: the device has not rebooted
            }
            let verdict = match &job.expected {
                Some(expected) => verify(expected, hello, describe),
                None => Ok(()),
            };
            if let Some(d) = self.devices.get_mut(&id) {
                d.committed.retain(|j| *j != job_id);
            }
            match verdict {
                Ok(()) => self.succeed_job(now, job_id),
                Err(message) => self.fail_job(
                    now,
                    job_id,
                    None,
                    format!(
                        "the update was committed but the device reconnected without it: {message}"
                    ),
                    false,
                ),
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
                        .is_some_and(|e| verify(e, hello, describe).is_ok())
            });
            if done {
                if let Some(d) = self.devices.get_mut(&id) {
                    d.queue.pop_front();
                }
                self.succeed_job(now, job_id);
            }
        }
    }
}
