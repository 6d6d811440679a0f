//! OTA v3 on the wire (reference 2.2-2.5): the CoAP side of UpdateStart / UpdateChunk /
//! UpdateFinish / UpdateAck, wired to the OTA receiver.
//!
//! PLACEHOLDER until the OTA receiver (`emulator::os::ota`) is merged: every UpdateStart is
//! acknowledged and then refused with NOT_SUPPORTED, chunks get an RST, UpdateFinish an error.

use core::time::Duration;

use protocol::coap::{IncomingRequest, Message};
use protocol::message::{
    coap_code_for_system_error, Body, CatalogueError, Diagnostic, SystemError,
};

use crate::device::Device;

use super::cloud::{response, Purpose};
use super::device_os::DeviceOs;
use super::profile::reset_reason;
use super::trace::OtaProgress;

/// Which OTA response a device CON carries, to know what its ACK means.
// Placeholder: the receiver constructs the other variants.
#[allow(dead_code)]
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

/// The OTA receiver and the wire state around it.
#[derive(Debug, Default)]
pub struct OtaLink {}

impl OtaLink {
    pub fn new(_device: &Device) -> Self {
        OtaLink {}
    }

    pub fn is_running(&self) -> bool {
        false
    }

    pub fn progress(&self) -> Option<OtaProgress> {
        None
    }

    pub fn poll_timeout(&self) -> Option<Duration> {
        None
    }

    /// RAM is lost (power cut, reset): the transfer state in RAM goes.
    pub fn lose_ram(&mut self, _device: &Device) {}
}

impl DeviceOs {
    pub(super) fn ota_request(
        &mut self,
        now: Duration,
        request: IncomingRequest,
        _message: Message,
        parsed: Result<Body, CatalogueError>,
    ) {
        let diagnostic = Diagnostic::new(SystemError::NOT_SUPPORTED, "OTA receiver not available");
        match parsed {
            Ok(Body::UpdateChunk(_)) => self.reject(now, &request),
            _ => {
                self.accept(now, &request);
                let code = coap_code_for_system_error(diagnostic.code);
                let error = response(code, Vec::new(), diagnostic.emit(1024));
                if let Some(handle) = self.respond(now, &request, error) {
                    if let Some(cloud) = self.cloud.as_mut() {
                        cloud
                            .requests
                            .insert(handle, Purpose::Ota(OtaResponse::Error));
                    }
                }
            }
        }
    }

    pub(super) fn ota_answered(
        &mut self,
        now: Duration,
        response: OtaResponse,
        _answer: Option<Message>,
    ) {
        match response {
            OtaResponse::Finished => self.pending_shutdown(now, reset_reason::UPDATE),
            OtaResponse::Started | OtaResponse::Cancelled | OtaResponse::Error => {}
        }
    }

    pub(super) fn ota_cancel(&mut self, _now: Duration) {}

    pub(super) fn ota_poll(&mut self, _now: Duration) {}

    pub(super) fn ota_timeout(&mut self, _now: Duration) {}
}
