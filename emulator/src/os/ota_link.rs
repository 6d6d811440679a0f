//! OTA v3 on the wire (reference 2.2-2.5, `communication/src/firmware_update.cpp`): the CoAP
//! side of UpdateStart / UpdateChunk / UpdateFinish / UpdateAck, wired to the
//! [`OtaReceiver`](super::ota::OtaReceiver), and what the system does around it (flags, resets,
//! disconnects, system events).
//!
//! | Cloud sends | Device answers |
//! |---|---|
//! | UpdateStart, options invalid | piggy-backed error ACK (token echoed, diagnostic JSON), nothing else |
//! | UpdateStart | empty ACK, then separate CON 2.01 Window-Size + File-Size (resume offset), or separate CON error |
//! | UpdateChunk | nothing (UpdateAcks follow as NON `A`); RST when no update runs; RST and reconnect for a bad chunk |
//! | UpdateFinish | empty ACK, then separate CON 2.04 with the JSON stats (or without payload for Cancel-Update), or separate CON error |
//! | ACK of that 2.04 | commit (module slots written), `reset_pending`, reset with reason update when resets are enabled |
//! | ACK of an error response while an update runs | cancel, reconnect |
//!
//! A malformed OTA request is refused as `decodeStartRequest` & co. refuse it: a confirmable
//! one with a piggy-backed -240 error ACK, a non-confirmable one with RST (or a separate error
//! if it has a token) and a reconnect.

use core::time::Duration;

use protocol::coap::{IncomingRequest, Message, MessageType};
use protocol::message::{
    coap_code_for_system_error, Body, CatalogueError, Diagnostic, SystemError, UpdateAck,
    UpdateChunk, UpdateFinish, UpdateStart,
};

use crate::device::Device;
use crate::flash::Activity;

use super::cloud::{response, Purpose};
use super::device_os::DeviceOs;
use super::ota::{self, ChunkOutcome, FinishOutcome, OtaConfig, OtaError, OtaEvent, OtaReceiver};
use super::profile::{reset_reason, OTA_PROGRESS_STEPS};
use super::trace::{DeviceEvent, DisconnectReason, FirmwareUpdateEvent, SystemEvent};

/// Longest diagnostic payload in an error response.
const MAX_DIAGNOSTIC_LEN: usize = 1024;

/// Which OTA response a device CON carries, to know what its ACK means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtaResponse {
    /// The separate 2.01 to an UpdateStart.
    Started,
    /// The separate 2.04 with the stats: its ACK is the commit point.
    Finished,
    /// The separate 2.04 to a cancelling UpdateFinish.
    Cancelled,
    /// A separate error response.
    Error,
}

/// The OTA receiver of a device, and how much of its progress the trace has shown.
#[derive(Debug)]
pub struct OtaLink {
    config: OtaConfig,
    pub(super) receiver: OtaReceiver,
    /// Progress steps (tenths of the file) already reported in this transfer.
    reported_steps: u32,
    /// The error of the last separate error response, for the disconnect its ACK causes.
    last_error: i32,
}

impl OtaLink {
    pub fn new(device: &Device) -> Self {
        let config = OtaConfig::for_board(device.board());
        OtaLink {
            config,
            receiver: OtaReceiver::new(config),
            reported_steps: 0,
            last_error: SystemError::PROTOCOL,
        }
    }

    /// A transfer is running (from an accepted UpdateStart until the commit or a cancel).
    pub fn is_running(&self) -> bool {
        self.receiver.is_running()
    }

    pub fn progress(&self) -> Option<ota::OtaProgress> {
        self.receiver.progress()
    }

    pub fn poll_timeout(&self) -> Option<Duration> {
        self.receiver.poll_timeout()
    }

    /// Whether the resume state is synced to flash at all (off only for a mutation test).
    pub fn set_resume_sync(&mut self, on: bool) {
        let default = OtaConfig::default().sync_interval;
        self.config.sync_interval = if on { default } else { Duration::MAX };
        self.receiver = OtaReceiver::new(self.config);
    }

    /// RAM is lost (power cut, or a reset that does not disconnect first): the transfer in RAM
    /// goes without a word to flash; `/sys/fw_transfer` keeps what was last synced.
    pub fn lose_ram(&mut self) {
        self.receiver = OtaReceiver::new(self.config);
        self.reported_steps = 0;
    }
}

/// An error response message for `error`.
fn error_response(error: &Diagnostic) -> Message {
    response(
        coap_code_for_system_error(error.code),
        Vec::new(),
        error.emit(MAX_DIAGNOSTIC_LEN),
    )
}

impl DeviceOs {
    /// The flash lost power during the last receiver call: stop here, `after` powers off.
    fn ota_power_lost(&self) -> bool {
        self.device.flash().power_lost()
    }

    /// An OTA request (`S`, `C` or `F`) from the cloud.
    pub(super) fn ota_request(
        &mut self,
        now: Duration,
        request: IncomingRequest,
        message: Message,
        parsed: Result<Body, CatalogueError>,
    ) {
        match parsed {
            Ok(Body::UpdateStart(start)) => self.update_start(now, &request, &start),
            Ok(Body::UpdateChunk(chunk)) => self.update_chunk(now, &request, &chunk),
            Ok(Body::UpdateFinish(finish)) => self.update_finish(now, &request, &finish),
            Ok(_) => self.ota_malformed(now, &request, "Invalid message".to_string()),
            Err(e) => {
                self.malformed += 1;
                self.log(format!("malformed OTA request {}: {e}", message.code));
                self.ota_malformed(now, &request, e.to_string());
            }
        }
        self.ota_events();
    }

    /// `handleRequest` refusing a request whose options do not decode.
    fn ota_malformed(&mut self, now: Duration, request: &IncomingRequest, message: String) {
        let diagnostic = Diagnostic::new(SystemError::PROTOCOL, message);
        if request.kind == MessageType::Confirmable {
            // Piggy-backed error ACK, token echoed (none if the request had none).
            self.respond(now, request, error_response(&diagnostic));
            return;
        }
        if request.token.is_empty() {
            self.reject(now, request);
        } else {
            self.respond(now, request, error_response(&diagnostic));
        }
        self.ota_fail(now, SystemError::PROTOCOL);
    }

    /// Runs `f` with the flash operations it causes labelled `activity` (see
    /// [`crate::flash::Activity`]), back to `Other` after.
    fn in_activity<R>(&mut self, activity: Activity, f: impl FnOnce(&mut Self) -> R) -> R {
        self.device.set_activity(activity);
        let r = f(self);
        self.device.set_activity(Activity::Other);
        r
    }

    /// Ends the running update and the connection after an OTA protocol error.
    fn ota_fail(&mut self, now: Duration, code: i32) {
        self.ota_cancel(now);
        if !self.ota_power_lost() {
            self.connection_error(now, DisconnectReason::OtaError { code }, true);
        }
    }

    fn update_start(&mut self, now: Duration, request: &IncomingRequest, start: &UpdateStart) {
        if let Err(e) = self.ota.receiver.check_start(start) {
            self.respond(now, request, error_response(&e.diagnostic()));
            return;
        }
        self.accept(now, request);
        let allowed = self.flags.updates_allowed()
            || self.mutation == Some(super::Mutation::IgnoreUpdatesDisabled);
        let started = self.in_activity(Activity::Download, |os| {
            os.ota.receiver.start(now, &mut os.device, start, allowed)
        });
        match started {
            Ok(accepted) => {
                // startUpdate clears the "updates pending" flag.
                self.flags.updates_pending = false;
                self.ota.reported_steps = 0;
                self.events.push_back(DeviceEvent::OtaStarted {
                    file_size: start.file_size,
                    resume_offset: accepted.resume_offset,
                });
                let r = accepted.response().emit();
                self.respond_ota(
                    now,
                    request,
                    response(r.code, r.options, r.payload),
                    OtaResponse::Started,
                );
            }
            Err(e) if e.is_power_loss() => {}
            Err(e) => self.refuse(now, request, &e),
        }
    }

    fn update_chunk(&mut self, now: Duration, request: &IncomingRequest, chunk: &UpdateChunk) {
        // The chunk's writes are labelled with its Chunk-Index, for a harness's cut "while
        // chunk K is written" (a duplicate or out-of-window chunk writes nothing).
        let outcome = self.in_activity(Activity::Download, |os| {
            os.device
                .flash_mut()
                .set_part(Some(Activity::OtaChunk(chunk.index)));
            let outcome = os.ota.receiver.chunk(now, &mut os.device, chunk);
            os.device.flash_mut().set_part(None);
            outcome
        });
        match outcome {
            ChunkOutcome::Written | ChunkOutcome::Duplicate | ChunkOutcome::OutOfWindow => {}
            ChunkOutcome::NotRunning => self.reject(now, request),
            ChunkOutcome::Rejected(e) => {
                self.reject(now, request);
                self.ota_trace_error(&e);
                self.ota_events();
                self.connection_error(now, DisconnectReason::OtaError { code: e.code }, true);
            }
            ChunkOutcome::PowerLost => {}
        }
        self.send_update_acks(now);
    }

    fn update_finish(&mut self, now: Duration, request: &IncomingRequest, finish: &UpdateFinish) {
        self.accept(now, request);
        let finished = self.in_activity(Activity::Download, |os| {
            os.ota.receiver.finish(now, &mut os.device, finish)
        });
        match finished {
            Ok(FinishOutcome::Validated(stats)) => {
                let r = stats.response();
                self.respond_ota(
                    now,
                    request,
                    response(r.code, r.options, r.payload),
                    OtaResponse::Finished,
                );
            }
            Ok(FinishOutcome::Cancelled) => {
                let m = response(protocol::coap::Code::CHANGED, Vec::new(), Vec::new());
                self.respond_ota(now, request, m, OtaResponse::Cancelled);
            }
            Err(e) if e.is_power_loss() => {}
            Err(e) => self.refuse(now, request, &e),
        }
    }

    /// A separate CON error response; an update that is still running ends when the cloud
    /// acknowledges it.
    fn refuse(&mut self, now: Duration, request: &IncomingRequest, e: &OtaError) {
        self.ota_trace_error(e);
        self.ota.last_error = e.code;
        self.respond_ota(
            now,
            request,
            error_response(&e.diagnostic()),
            OtaResponse::Error,
        );
    }

    fn ota_trace_error(&mut self, e: &OtaError) {
        self.events.push_back(DeviceEvent::OtaFailed {
            code: e.code,
            message: e.to_string(),
        });
    }

    fn respond_ota(
        &mut self,
        now: Duration,
        request: &IncomingRequest,
        message: Message,
        kind: OtaResponse,
    ) {
        if let Some(handle) = self.respond(now, request, message) {
            if let Some(cloud) = self.cloud.as_mut() {
                cloud.requests.insert(handle, Purpose::Ota(kind));
            }
        }
    }

    /// The cloud acknowledged an OTA response of the device.
    pub(super) fn ota_answered(
        &mut self,
        now: Duration,
        response: OtaResponse,
        _answer: Option<Message>,
    ) {
        match response {
            OtaResponse::Started | OtaResponse::Cancelled => {}
            OtaResponse::Finished => {
                // The commit point (`responseAck`).
                let result = self.in_activity(Activity::Commit, |os| {
                    os.ota.receiver.commit(&mut os.device)
                });
                self.ota_events();
                match result {
                    Ok(()) => self.pending_shutdown(now, reset_reason::UPDATE),
                    Err(e) if e.is_power_loss() => {}
                    Err(e) => {
                        self.ota_trace_error(&e);
                        self.connection_error(
                            now,
                            DisconnectReason::OtaError { code: e.code },
                            true,
                        );
                    }
                }
            }
            OtaResponse::Error => {
                if self.ota.is_running() {
                    self.ota_fail(now, self.ota.last_error);
                }
            }
        }
    }

    /// Any disconnect, sleep or reset (`FirmwareUpdate::reset`): the transfer is cancelled,
    /// its resumable state kept.
    pub(super) fn ota_cancel(&mut self, _now: Duration) {
        if !self.ota.is_running() {
            return;
        }
        // Only a power loss can fail, and `after` notices it.
        let _ = self.in_activity(Activity::Download, |os| {
            os.ota.receiver.cancel(&mut os.device, false)
        });
        self.ota_events();
    }

    /// Timers of the receiver: the delayed UpdateAck, the state sync, the 300 s timeout.
    pub(super) fn ota_timeout(&mut self, now: Duration) {
        if !self.ota.is_running() {
            return;
        }
        let ended = self.in_activity(Activity::Download, |os| {
            os.ota.receiver.handle_timeout(now, &mut os.device)
        });
        self.ota_events();
        match ended {
            Some(e) if e.is_power_loss() => {}
            Some(_) => self.connection_error(now, DisconnectReason::TransferTimeout, true),
            None => self.send_update_acks(now),
        }
    }

    /// After every entry point: acks that became due, events to report.
    pub(super) fn ota_poll(&mut self, now: Duration) {
        self.send_update_acks(now);
        self.ota_events();
    }

    /// UpdateAcks: NON POST `A`, cumulative index + selective bitmap, never retransmitted.
    fn send_update_acks(&mut self, now: Duration) {
        if self.ota_power_lost() {
            return;
        }
        while let Some(ack) = self.ota.receiver.poll_ack(now) {
            self.send_update_ack(now, ack);
        }
    }

    fn send_update_ack(&mut self, now: Duration, ack: UpdateAck) {
        if self.cloud.is_some() {
            self.send(
                now,
                MessageType::NonConfirmable,
                false,
                Body::UpdateAck(ack),
                Purpose::UpdateAck,
            );
        }
    }

    /// The receiver's events, in the trace: `firmware_update` system events, progress in
    /// [`OTA_PROGRESS_STEPS`] steps, failures.
    fn ota_events(&mut self) {
        while let Some(event) = self.ota.receiver.poll_event() {
            let update = |e| DeviceEvent::SystemEvent(SystemEvent::FirmwareUpdate(e));
            match event {
                OtaEvent::Begin { .. } => self.events.push_back(update(FirmwareUpdateEvent::Begin)),
                OtaEvent::Progress {
                    received_bytes,
                    file_size,
                } => {
                    let step = (u64::from(received_bytes) * u64::from(OTA_PROGRESS_STEPS)
                        / u64::from(file_size.max(1))) as u32;
                    if step > self.ota.reported_steps {
                        self.ota.reported_steps = step;
                        self.events.push_back(update(FirmwareUpdateEvent::Progress));
                        self.events.push_back(DeviceEvent::OtaProgress {
                            received: received_bytes,
                            file_size,
                        });
                    }
                }
                OtaEvent::Validated => self.log("the update file passed validation"),
                OtaEvent::Complete => self.events.push_back(update(FirmwareUpdateEvent::Complete)),
                OtaEvent::Failed { code } => {
                    self.events.push_back(update(FirmwareUpdateEvent::Failed));
                    self.log(format!(
                        "firmware update ended: {} ({code})",
                        ota::default_message(code)
                    ));
                }
            }
        }
    }
}
