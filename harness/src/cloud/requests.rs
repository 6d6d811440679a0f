//! The cloud's CoAP side: one endpoint per connection, what devices ask (Hello, describe,
//! time, events, subscriptions, Goodbye, UpdateAck) and the answers to our own requests.

use std::time::Duration;

use protocol::coap::{
    Code, Endpoint, EndpointEvent, IncomingRequest, Message, MessageType, RequestHandle,
};
use protocol::message::{
    ApplicationDescribe, Body, DescribeFlags, Event, ParticleMessage, SystemDescribe, TimeResponse,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::session::{DescribeProgress, Purpose, Session};
use super::*;

impl Cloud {
    pub(super) fn new_endpoint(&mut self) -> Endpoint<ChaCha8Rng> {
        Endpoint::new(
            self.config.coap.clone(),
            ChaCha8Rng::seed_from_u64(self.rng.next_u64()),
        )
    }

    /// The device's session, to change it (the device's deadline is worked out again at the
    /// end of the call into the cloud).
    pub(super) fn session_mut(&mut self, id: &DeviceId) -> Option<&mut Session> {
        self.touched.push(*id);
        self.devices.get_mut(id)?.session.as_mut()
    }

    pub(super) fn endpoint(&mut self, id: &DeviceId) -> Option<&mut Endpoint<ChaCha8Rng>> {
        self.session_mut(id)?.endpoint.as_mut()
    }

    pub(super) fn is_online(&self, id: &DeviceId) -> bool {
        self.devices
            .get(id)
            .and_then(|d| d.session.as_ref())
            .is_some_and(|s| s.online && s.endpoint.is_some())
    }

    /// Moves the endpoint's datagrams into DTLS records; returns the message id of the last.
    pub(super) fn flush_endpoint(&mut self, now: Duration, id: DeviceId) -> Option<u16> {
        self.touched.push(id);
        let s = self.devices.get_mut(&id).and_then(|d| d.session.as_mut())?;
        let handle = s.handle;
        let endpoint = s.endpoint.as_mut()?;
        let mut failures = Vec::new();
        let mut last = None;
        while let Some(bytes) = endpoint.poll_transmit() {
            last = bytes.get(2..4).map(|m| u16::from_be_bytes([m[0], m[1]]));
            if let Err(e) = self.server.send_application_data(now, handle, &bytes) {
                failures.push(format!("could not send {} bytes: {e}", bytes.len()));
            }
        }
        for f in failures {
            self.dropped(Some(id), f);
        }
        last
    }

    pub(super) fn send_request(
        &mut self,
        now: Duration,
        id: DeviceId,
        message: ParticleMessage,
        purpose: Purpose,
    ) -> Option<RequestHandle> {
        if !self.is_online(&id) {
            return None;
        }
        let coap = match message.to_coap() {
            Ok(m) => m,
            Err(e) => {
                self.dropped(Some(id), format!("could not encode a message: {e}"));
                return None;
            }
        };
        let result = self.endpoint(&id)?.send(now, coap);
        match result {
            Ok(handle) => {
                if let Some(s) = self.session_mut(&id) {
                    s.purposes.insert(handle, purpose);
                }
                self.flush_endpoint(now, id);
                Some(handle)
            }
            Err(e) => {
                self.dropped(Some(id), format!("could not send a message: {e}"));
                None
            }
        }
    }

    /// Sends a CON request with a fresh token; the token, if it went out.
    pub(super) fn send_con(
        &mut self,
        now: Duration,
        id: DeviceId,
        body: Body,
        purpose: Purpose,
    ) -> Option<Vec<u8>> {
        let token = self.endpoint(&id)?.next_token();
        let message = ParticleMessage {
            kind: MessageType::Confirmable,
            message_id: 0,
            token: token.clone(),
            body,
        };
        self.send_request(now, id, message, purpose)?;
        Some(token)
    }

    pub(super) fn accept(&mut self, now: Duration, id: DeviceId, request: &IncomingRequest) {
        let result = match self.endpoint(&id) {
            Some(e) => e.accept(now, request),
            None => return,
        };
        if let Err(e) = result {
            self.dropped(Some(id), format!("could not acknowledge: {e}"));
        }
        self.flush_endpoint(now, id);
    }

    pub(super) fn handle_endpoint_events(
        &mut self,
        now: Duration,
        id: DeviceId,
        events: Vec<EndpointEvent>,
    ) {
        for event in events {
            if !self.is_online(&id) && !self.session_mut(&id).is_some_and(|s| s.fresh) {
                break; // went offline while handling an earlier event
            }
            match event {
                EndpointEvent::Request { request, message } => {
                    self.on_request(now, id, request, message)
                }
                EndpointEvent::Response { handle, message } => {
                    self.on_response(now, id, handle, message)
                }
                EndpointEvent::Acknowledged { handle } => {
                    if let Some(s) = self.session_mut(&id) {
                        if s.purposes.get(&handle) == Some(&Purpose::Event) {
                            s.purposes.remove(&handle);
                        }
                    }
                }
                EndpointEvent::Reset { handle } => self.on_reset(now, id, handle),
                EndpointEvent::TimedOut { .. } => {
                    self.go_offline(now, id, DisconnectReason::MessageTimeout)
                }
                EndpointEvent::Unmatched { message } => self.on_unmatched(now, id, message),
            }
        }
        self.flush_endpoint(now, id);
    }

    pub(super) fn on_request(
        &mut self,
        now: Duration,
        id: DeviceId,
        request: IncomingRequest,
        message: Message,
    ) {
        if let Some(s) = self.session_mut(&id) {
            s.last_request = now;
        }
        let parsed = match ParticleMessage::from_coap(&message) {
            Ok(p) => p,
            Err(e) => {
                self.stats.malformed += 1;
                // Never RST casually (reference 1.4): a CON we cannot use is still ACKed.
                self.accept(now, id, &request);
                self.dropped(Some(id), format!("malformed {} request: {e}", message.code));
                if self.session_mut(&id).is_some_and(|s| s.fresh) {
                    self.go_online(now, id);
                }
                return;
            }
        };
        if let Body::Hello(hello) = &parsed.body {
            if hello.device_id != id {
                let reason = format!(
                    "the Hello carries device id {} but the DTLS key is registered for {}",
                    device_id_hex(&DeviceId(hello.device_id)),
                    device_id_hex(&id)
                );
                if let Some(address) = self.session_mut(&id).map(|s| s.address) {
                    let claimed = Some(DeviceId(hello.device_id));
                    self.refused_handshake(now, address, claimed, Some(id), None, reason.clone());
                }
                self.refuse(now, id, reason);
                return;
            }
            if let Some(d) = self.devices.get_mut(&id) {
                d.hello = Some(hello.clone());
            }
            self.accept(now, id, &request);
            self.go_online(now, id);
            return;
        }
        if self.session_mut(&id).is_some_and(|s| s.fresh) {
            self.go_online(now, id);
        }
        match parsed.body {
            Body::TimeRequest => {
                let unix = self.config.unix_time_at_epoch.saturating_add(now.as_secs());
                let response = TimeResponse {
                    unix_time: Some(u32::try_from(unix).unwrap_or(u32::MAX)),
                }
                .emit();
                let mut reply = Message::new(MessageType::Acknowledgement, response.code, 0);
                reply.options = response.options;
                reply.payload = response.payload;
                let result = match self.endpoint(&id) {
                    Some(e) => e.respond(now, &request, reply),
                    None => return,
                };
                if let Err(e) = result {
                    self.dropped(Some(id), format!("could not answer a time request: {e}"));
                }
            }
            Body::Describe(describe) => {
                self.accept(now, id, &request);
                self.on_describe(now, id, describe);
            }
            Body::Event(event) => {
                self.accept(now, id, &request);
                self.on_device_event(now, id, event);
            }
            Body::Subscribe(subscribe) => {
                self.accept(now, id, &request);
                if let Some(d) = self.devices.get_mut(&id) {
                    if !d.subscriptions.contains(&subscribe.filter) {
                        d.subscriptions.push(subscribe.filter);
                    }
                }
            }
            Body::Goodbye(goodbye) => {
                self.accept(now, id, &request);
                self.go_offline(
                    now,
                    id,
                    DisconnectReason::Goodbye {
                        cloud_reason: goodbye.cloud_reason,
                        reset_reason: goodbye.reset_reason,
                    },
                );
            }
            Body::UpdateAck(ack) => self.on_update_ack(now, id, ack),
            other => {
                self.accept(now, id, &request);
                self.dropped(
                    Some(id),
                    format!("unexpected request from the device: {other:?}"),
                );
            }
        }
        self.flush_endpoint(now, id);
    }

    pub(super) fn on_describe(
        &mut self,
        now: Duration,
        id: DeviceId,
        describe: protocol::message::Describe,
    ) {
        let progress = match self.session_mut(&id) {
            Some(s) => s.describe.add(describe),
            None => return,
        };
        let (flags, payload) = match progress {
            DescribeProgress::Partial => return,
            DescribeProgress::OutOfSequence { expected, got } => {
                self.dropped(
                    Some(id),
                    format!("describe block {got} arrived while block {expected} was expected"),
                );
                return;
            }
            DescribeProgress::Complete { flags, payload, .. } => (flags, payload),
        };
        if flags.0 & DescribeFlags::SYSTEM.0 != 0 {
            match SystemDescribe::parse(&payload) {
                Ok(describe) => self.on_system_describe(now, id, describe),
                Err(e) => {
                    self.stats.malformed += 1;
                    self.dropped(Some(id), format!("system describe: {e}"));
                }
            }
        } else if flags.0 & DescribeFlags::APPLICATION.0 != 0 {
            match ApplicationDescribe::parse(&payload) {
                Ok(describe) => {
                    if let Some(d) = self.devices.get_mut(&id) {
                        d.application_describe = Some(describe);
                    }
                }
                Err(e) => {
                    self.stats.malformed += 1;
                    self.dropped(Some(id), format!("application describe: {e}"));
                }
            }
        }
    }

    pub(super) fn on_system_describe(
        &mut self,
        now: Duration,
        id: DeviceId,
        describe: SystemDescribe,
    ) {
        let user_hash = describe
            .firmware_modules
            .iter()
            .find(|m| m.r#type == 5)
            .and_then(|m| m.hash.clone())
            .filter(|h| !h.is_empty());
        let (publish_hash, hello, started_at) = {
            let Some(d) = self.devices.get_mut(&id) else {
                return;
            };
            let publish = user_hash.is_some() && d.app_hash != user_hash;
            if publish {
                d.app_hash = user_hash.clone();
            }
            d.system_describe = Some(describe.clone());
            if let Some(s) = d.session.as_mut() {
                s.describe_seen = true;
            }
            let started = d.session.as_ref().map_or(now, |s| s.started_at);
            (publish, d.hello.clone(), started)
        };
        if publish_hash {
            let hex: String = user_hash
                .unwrap_or_default()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            self.publish_cloud(now, id, names::APP_HASH, &hex);
        }
        self.check_committed(now, id, &describe, hello.as_ref(), started_at);
    }

    pub(super) fn on_device_event(&mut self, now: Duration, id: DeviceId, event: Event) {
        if let Some(d) = self.devices.get_mut(&id) {
            match event.name.as_str() {
                names::UPDATES_ENABLED => d.updates_enabled = Some(parse_flag(&event.data)),
                names::UPDATES_FORCED => d.updates_forced = Some(parse_flag(&event.data)),
                names::LAST_RESET => {
                    d.last_reset = Some(String::from_utf8_lossy(&event.data).into_owned())
                }
                names::DEVICE_SAFE_MODE => {
                    if let Some(s) = d.session.as_mut() {
                        s.safe_mode_said = true;
                    }
                }
                _ => {}
            }
        }
        let public = event.scope == protocol::message::EventScope::Public;
        self.publish(
            now,
            id,
            Publisher::Device,
            &event.name,
            &String::from_utf8_lossy(&event.data),
            event.ttl(),
            public,
        );
    }

    pub(super) fn on_response(
        &mut self,
        now: Duration,
        id: DeviceId,
        handle: RequestHandle,
        message: Message,
    ) {
        let purpose = self
            .session_mut(&id)
            .and_then(|s| s.purposes.remove(&handle));
        match purpose {
            Some(Purpose::UpdateStart(job)) => self.on_start_response(now, id, job, &message),
            Some(Purpose::UpdateFinish(job)) => self.on_finish_response(now, job, &message),
            Some(Purpose::Describe) => self.on_describe_response(now, id, &message),
            Some(Purpose::Event) | None => {
                if message.code.class() != 2 {
                    self.dropped(
                        Some(id),
                        format!("the device answered {} to a message of ours", message.code),
                    );
                }
            }
        }
    }

    pub(super) fn on_reset(&mut self, now: Duration, id: DeviceId, handle: RequestHandle) {
        let purpose = self
            .session_mut(&id)
            .and_then(|s| s.purposes.remove(&handle));
        match purpose {
            Some(Purpose::UpdateStart(job)) | Some(Purpose::UpdateFinish(job)) => self.fail_job(
                now,
                job,
                None,
                "the device answered the OTA request with RST".into(),
                true,
            ),
            _ => self.dropped(
                Some(id),
                "the device answered a message of ours with RST".into(),
            ),
        }
    }

    pub(super) fn on_unmatched(&mut self, now: Duration, id: DeviceId, message: Message) {
        if message.code == Code::CHANGED && self.late_finish_response(now, id, &message) {
            return;
        }
        if message.kind == MessageType::Reset {
            let chunk = self
                .session_mut(&id)
                .and_then(|s| s.chunk_of(message.message_id));
            if let (Some(index), Some(job)) = (chunk, self.active_job(&id)) {
                self.fail_job(
                    now,
                    job,
                    None,
                    format!(
                        "the device refused chunk {index} (RST for message id {})",
                        message.message_id
                    ),
                    true,
                );
                return;
            }
        }
        // Duplicate ACKs of retransmitted CONs are normal; anything else is reported.
        if !(message.kind == MessageType::Acknowledgement && message.code == Code::EMPTY) {
            self.dropped(
                Some(id),
                format!(
                    "unmatched {:?} {} message id {}",
                    message.kind, message.code, message.message_id
                ),
            );
        }
    }
}
