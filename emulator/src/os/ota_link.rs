//! OTA v3 on the wire (reference 2.2-2.5, `communication/src/firmware_update.cpp`): the CoAP
//! side of UpdateStart / UpdateChunk / UpdateFinish / UpdateAck, wired to the
//! [`OtaReceiver`](super::ota::OtaReceiver). [`OtaLink`] owns the receiver and answers every
//! request, timer and acknowledgement with [`OtaEffect`]s: what to send on the request, what to
//! trace, and what the rest of the system does about it (flags, resets, disconnects), which
//! [`super::DeviceOs`] applies in order.
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

use super::link::response;
use super::ota::{self, ChunkOutcome, FinishOutcome, OtaConfig, OtaError, OtaEvent, OtaReceiver};
use super::profile::OTA_PROGRESS_STEPS;
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

/// What the OTA link asks of the rest of the system, in the order Device OS does it. The
/// request-bound ones (`Accept`, `Respond`, `Reject`) answer the request being handled.
#[derive(Debug)]
pub(super) enum OtaEffect {
    /// An entry of the device's trace.
    Trace(DeviceEvent),
    /// The request did not decode (counted in [`super::DeviceStatus::malformed`]).
    Malformed,
    /// An empty ACK for the request (nothing for a NON).
    Accept,
    /// An answer to the request, piggy-backed if not yet acknowledged, else separate; a
    /// separate response's acknowledgement comes back to [`OtaLink::answered`] as `kind`.
    Respond {
        message: Message,
        kind: Option<OtaResponse>,
    },
    /// RST for the request (a chunk nobody expected, a bad chunk, a malformed NON).
    Reject,
    /// An UpdateAck: NON POST `A`, never retransmitted; dropped without a connection.
    SendAck(UpdateAck),
    /// `startUpdate` clears the "updates pending" flag.
    Started,
    /// The update is committed: a reset with reason update is pending
    /// (`system_pending_shutdown`).
    Committed,
    /// The connection ends (the session kept) and reconnects, for `reason`.
    Disconnect(DisconnectReason),
}

/// The OTA receiver of a device, and how much of its progress the trace has shown.
#[derive(Debug)]
pub struct OtaLink {
    config: OtaConfig,
    receiver: OtaReceiver,
    /// Progress steps (tenths of the file) already reported in this transfer.
    reported_steps: u32,
    /// The error of the last separate error response, for the disconnect its ACK causes.
    last_error: i32,
}

/// An error response message for `error`.
fn error_response(error: &Diagnostic) -> Message {
    response(
        coap_code_for_system_error(error.code),
        Vec::new(),
        error.emit(MAX_DIAGNOSTIC_LEN),
    )
}

/// Runs `f` with the flash operations it causes labelled `activity` (see
/// [`crate::flash::Activity`]), back to `Other` after.
fn in_activity<R>(device: &mut Device, activity: Activity, f: impl FnOnce(&mut Device) -> R) -> R {
    device.set_activity(activity);
    let r = f(device);
    device.set_activity(Activity::Other);
    r
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

    // ----- requests from the cloud -------------------------------------------------------

    /// An OTA request (`S`, `C` or `F`) from the cloud, with its code for the log.
    /// `updates_allowed` is `System.updatesEnabled() || System.updatesForced()`. An
    /// UpdateChunk's UpdateAcks and the receiver's events follow from [`OtaLink::poll`].
    pub(super) fn request(
        &mut self,
        now: Duration,
        device: &mut Device,
        request: &IncomingRequest,
        message: &Message,
        parsed: Result<Body, CatalogueError>,
        updates_allowed: bool,
    ) -> Vec<OtaEffect> {
        let mut fx = Vec::new();
        match parsed {
            Ok(Body::UpdateStart(start)) => {
                self.update_start(now, device, &start, updates_allowed, &mut fx)
            }
            Ok(Body::UpdateChunk(chunk)) => self.update_chunk(now, device, &chunk, &mut fx),
            Ok(Body::UpdateFinish(finish)) => self.update_finish(now, device, &finish, &mut fx),
            Ok(_) => self.malformed(device, request, "Invalid message".to_string(), &mut fx),
            Err(e) => {
                fx.push(OtaEffect::Malformed);
                fx.push(log(format!("malformed OTA request {}: {e}", message.code)));
                self.malformed(device, request, e.to_string(), &mut fx);
            }
        }
        fx
    }

    /// `handleRequest` refusing a request whose options do not decode.
    fn malformed(
        &mut self,
        device: &mut Device,
        request: &IncomingRequest,
        message: String,
        fx: &mut Vec<OtaEffect>,
    ) {
        let diagnostic = Diagnostic::new(SystemError::PROTOCOL, message);
        let answer = OtaEffect::Respond {
            message: error_response(&diagnostic),
            kind: None,
        };
        if request.kind == MessageType::Confirmable {
            // Piggy-backed error ACK, token echoed (none if the request had none).
            fx.push(answer);
            return;
        }
        if request.token.is_empty() {
            fx.push(OtaEffect::Reject);
        } else {
            fx.push(answer);
        }
        self.fail(device, SystemError::PROTOCOL, fx);
    }

    /// Ends the running update and the connection after an OTA protocol error.
    fn fail(&mut self, device: &mut Device, code: i32, fx: &mut Vec<OtaEffect>) {
        self.cancel_into(device, fx);
        if !device.flash().power_lost() {
            fx.push(OtaEffect::Disconnect(DisconnectReason::OtaError { code }));
        }
    }

    fn update_start(
        &mut self,
        now: Duration,
        device: &mut Device,
        start: &UpdateStart,
        updates_allowed: bool,
        fx: &mut Vec<OtaEffect>,
    ) {
        if let Err(e) = self.receiver.check_start(start) {
            fx.push(OtaEffect::Respond {
                message: error_response(&e.diagnostic()),
                kind: None,
            });
            return;
        }
        fx.push(OtaEffect::Accept);
        let receiver = &mut self.receiver;
        let started = in_activity(device, Activity::Download, |device| {
            receiver.start(now, device, start, updates_allowed)
        });
        match started {
            Ok(accepted) => {
                // startUpdate clears the "updates pending" flag.
                fx.push(OtaEffect::Started);
                self.reported_steps = 0;
                fx.push(OtaEffect::Trace(DeviceEvent::OtaStarted {
                    file_size: start.file_size,
                    resume_offset: accepted.resume_offset,
                }));
                let r = accepted.response().emit();
                fx.push(OtaEffect::Respond {
                    message: response(r.code, r.options, r.payload),
                    kind: Some(OtaResponse::Started),
                });
            }
            Err(e) if e.is_power_loss() => {}
            Err(e) => self.refuse(&e, fx),
        }
    }

    fn update_chunk(
        &mut self,
        now: Duration,
        device: &mut Device,
        chunk: &UpdateChunk,
        fx: &mut Vec<OtaEffect>,
    ) {
        // The chunk's writes are labelled with its Chunk-Index, for a harness's cut "while
        // chunk K is written" (a duplicate or out-of-window chunk writes nothing).
        let receiver = &mut self.receiver;
        let outcome = in_activity(device, Activity::Download, |device| {
            device
                .flash_mut()
                .set_part(Some(Activity::OtaChunk(chunk.index)));
            let outcome = receiver.chunk(now, device, chunk);
            device.flash_mut().set_part(None);
            outcome
        });
        match outcome {
            ChunkOutcome::Written | ChunkOutcome::Duplicate | ChunkOutcome::OutOfWindow => {}
            ChunkOutcome::NotRunning => fx.push(OtaEffect::Reject),
            ChunkOutcome::Rejected(e) => {
                fx.push(OtaEffect::Reject);
                fx.push(trace_error(&e));
                self.events_into(fx);
                fx.push(OtaEffect::Disconnect(DisconnectReason::OtaError {
                    code: e.code,
                }));
            }
            ChunkOutcome::PowerLost => {}
        }
    }

    fn update_finish(
        &mut self,
        now: Duration,
        device: &mut Device,
        finish: &UpdateFinish,
        fx: &mut Vec<OtaEffect>,
    ) {
        fx.push(OtaEffect::Accept);
        let receiver = &mut self.receiver;
        let finished = in_activity(device, Activity::Download, |device| {
            receiver.finish(now, device, finish)
        });
        match finished {
            Ok(FinishOutcome::Validated(stats)) => {
                let r = stats.response();
                fx.push(OtaEffect::Respond {
                    message: response(r.code, r.options, r.payload),
                    kind: Some(OtaResponse::Finished),
                });
            }
            Ok(FinishOutcome::Cancelled) => {
                let m = response(protocol::coap::Code::CHANGED, Vec::new(), Vec::new());
                fx.push(OtaEffect::Respond {
                    message: m,
                    kind: Some(OtaResponse::Cancelled),
                });
            }
            Err(e) if e.is_power_loss() => {}
            Err(e) => self.refuse(&e, fx),
        }
    }

    /// A separate CON error response; an update that is still running ends when the cloud
    /// acknowledges it.
    fn refuse(&mut self, e: &OtaError, fx: &mut Vec<OtaEffect>) {
        fx.push(trace_error(e));
        self.last_error = e.code;
        fx.push(OtaEffect::Respond {
            message: error_response(&e.diagnostic()),
            kind: Some(OtaResponse::Error),
        });
    }

    // ----- acknowledgements, timers, cancels ---------------------------------------------

    /// The cloud acknowledged an OTA response of the device.
    pub(super) fn answered(
        &mut self,
        device: &mut Device,
        response: OtaResponse,
    ) -> Vec<OtaEffect> {
        let mut fx = Vec::new();
        match response {
            OtaResponse::Started | OtaResponse::Cancelled => {}
            OtaResponse::Finished => {
                // The commit point (`responseAck`).
                let receiver = &mut self.receiver;
                let result =
                    in_activity(device, Activity::Commit, |device| receiver.commit(device));
                self.events_into(&mut fx);
                match result {
                    Ok(()) => fx.push(OtaEffect::Committed),
                    Err(e) if e.is_power_loss() => {}
                    Err(e) => {
                        fx.push(trace_error(&e));
                        fx.push(OtaEffect::Disconnect(DisconnectReason::OtaError {
                            code: e.code,
                        }));
                    }
                }
            }
            OtaResponse::Error => {
                if self.is_running() {
                    self.fail(device, self.last_error, &mut fx);
                }
            }
        }
        fx
    }

    /// Any disconnect, sleep or reset (`FirmwareUpdate::reset`): the transfer is cancelled,
    /// its resumable state kept. Only trace entries come of it.
    pub(super) fn cancel(&mut self, device: &mut Device) -> Vec<OtaEffect> {
        let mut fx = Vec::new();
        self.cancel_into(device, &mut fx);
        fx
    }

    fn cancel_into(&mut self, device: &mut Device, fx: &mut Vec<OtaEffect>) {
        if !self.is_running() {
            return;
        }
        // Only a power loss can fail, and `DeviceOs::after` notices it.
        let receiver = &mut self.receiver;
        let _ = in_activity(device, Activity::Download, |device| {
            receiver.cancel(device, false)
        });
        self.events_into(fx);
    }

    /// Timers of the receiver: the delayed UpdateAck, the state sync, the 300 s timeout.
    pub(super) fn handle_timeout(&mut self, now: Duration, device: &mut Device) -> Vec<OtaEffect> {
        let mut fx = Vec::new();
        if !self.is_running() {
            return fx;
        }
        let receiver = &mut self.receiver;
        let ended = in_activity(device, Activity::Download, |device| {
            receiver.handle_timeout(now, device)
        });
        self.events_into(&mut fx);
        match ended {
            Some(e) if e.is_power_loss() => {}
            Some(_) => fx.push(OtaEffect::Disconnect(DisconnectReason::TransferTimeout)),
            None => self.acks_into(now, device, &mut fx),
        }
        fx
    }

    /// UpdateAcks that became due; with `events`, then the receiver's events too.
    pub(super) fn poll(&mut self, now: Duration, device: &Device, events: bool) -> Vec<OtaEffect> {
        let mut fx = Vec::new();
        self.acks_into(now, device, &mut fx);
        if events {
            self.events_into(&mut fx);
        }
        fx
    }

    /// The receiver's events not yet traced.
    pub(super) fn events(&mut self) -> Vec<OtaEffect> {
        let mut fx = Vec::new();
        self.events_into(&mut fx);
        fx
    }

    /// UpdateAcks: NON POST `A`, cumulative index + selective bitmap, never retransmitted.
    fn acks_into(&mut self, now: Duration, device: &Device, fx: &mut Vec<OtaEffect>) {
        // The flash lost power during the last receiver call: stop here.
        if device.flash().power_lost() {
            return;
        }
        while let Some(ack) = self.receiver.poll_ack(now) {
            fx.push(OtaEffect::SendAck(ack));
        }
    }

    /// The receiver's events, as trace entries: `firmware_update` system events, progress in
    /// [`OTA_PROGRESS_STEPS`] steps, failures.
    fn events_into(&mut self, fx: &mut Vec<OtaEffect>) {
        let update = |e| OtaEffect::Trace(DeviceEvent::SystemEvent(SystemEvent::FirmwareUpdate(e)));
        while let Some(event) = self.receiver.poll_event() {
            match event {
                OtaEvent::Begin { .. } => fx.push(update(FirmwareUpdateEvent::Begin)),
                OtaEvent::Progress {
                    received_bytes,
                    file_size,
                } => {
                    let step = (u64::from(received_bytes) * u64::from(OTA_PROGRESS_STEPS)
                        / u64::from(file_size.max(1))) as u32;
                    if step > self.reported_steps {
                        self.reported_steps = step;
                        fx.push(update(FirmwareUpdateEvent::Progress));
                        fx.push(OtaEffect::Trace(DeviceEvent::OtaProgress {
                            received: received_bytes,
                            file_size,
                        }));
                    }
                }
                OtaEvent::Validated => fx.push(log("the update file passed validation")),
                OtaEvent::Complete => fx.push(update(FirmwareUpdateEvent::Complete)),
                OtaEvent::Failed { code } => {
                    fx.push(update(FirmwareUpdateEvent::Failed));
                    fx.push(log(format!(
                        "firmware update ended: {} ({code})",
                        ota::default_message(code)
                    )));
                }
            }
        }
    }
}

fn log(line: impl Into<String>) -> OtaEffect {
    OtaEffect::Trace(DeviceEvent::Log(line.into()))
}

fn trace_error(e: &OtaError) -> OtaEffect {
    OtaEffect::Trace(DeviceEvent::OtaFailed {
        code: e.code,
        message: e.to_string(),
    })
}
