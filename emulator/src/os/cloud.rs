//! The cloud connection of [`DeviceOs`] (reference 1.4-1.12, 3): sockets and their DTLS
//! handshakes or resumptions, the post-connect sequence (Hello or ping, system describe, time,
//! system events, application describe, subscriptions), keepalive pings, incoming requests and
//! events, graceful disconnects, and what each failure does to the session.
//!
//! The post-connect sequence, as `Protocol::begin` and `Spark_Handshake` run it:
//! 1. full handshake, or a resumption whose application state changed: Hello, sent alone
//!    (Device OS waits for its ACK); then the system describe (POST `d`, flags 1, protobuf);
//!    a resumption with unchanged state: a CoAP ping instead, and no describe;
//! 2. a time request, unless the Hello was skipped and the RTC is valid;
//! 3. `spark/device/safemode` (safe mode only), `spark/device/last_reset` (once per boot),
//!    `particle/device/updates/enabled` and `/forced` (always);
//! 4. the application describe (flags 2) and the subscriptions `particle` and `spark`, each only
//!    if its checksum differs from what this session's cloud acknowledged.
//!
//! The connection counts as established ([`DeviceEvent::Connected`]) once all of these are
//! acknowledged.

use core::time::Duration;
use std::collections::{HashMap, VecDeque};

use protocol::coap::{
    option, Code, EndpointEvent, IncomingRequest, Message, MessageType, RequestHandle,
};
use protocol::dtls::ClientConfig;
use protocol::message::{
    ApplicationDescribe, Body, Describe, DescribeFlags, DescribeRequest, DescribeResponse, Event,
    Goodbye, ParticleMessage, Subscribe, TimeResponse, CONTENT_FORMAT_OCTET_STREAM,
};
use rand_core::SeedableRng;

use super::device_os::{DeviceOs, Power, SleepConfig};
use super::flags::{data_to_flag, flag_data, update_control_event, UpdateControlEvent};
use super::link::{response, Link, LinkEvent, Rng};
use super::ota_link::OtaResponse;
use super::profile::{
    connection_backoff, event_name, reset_reason, DISCONNECT_TIMEOUT, MAX_MESSAGE_SIZE,
    PING_TIMEOUT,
};
use super::session::{AppState, PersistedSession};
use super::trace::{DeviceEvent, DisconnectReason, SystemEvent};
use crate::flash::Activity;

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// DTLS handshake running.
    Handshake,
    /// Hello sent; nothing else goes out until it is acknowledged.
    AwaitHello(RequestHandle),
    /// The post-connect messages are out; the connection is up once they are acknowledged.
    Established,
    /// A Goodbye was sent; waiting for the outstanding CONs, then `then`.
    Closing {
        deadline: Duration,
        then: AfterClose,
    },
}

/// What a graceful disconnect leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterClose {
    Reset(u32),
    Sleep(SleepConfig),
    /// The connection stays down until `Particle.connect()`.
    Disconnect,
}

/// Why the device sent a message, to know what its answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    Hello,
    Ping,
    SystemDescribe,
    AppDescribe,
    Time,
    Event,
    Subscribe,
    Goodbye,
    DescribeResponse,
    /// NON, never answered: not remembered.
    UpdateAck,
    Ota(OtaResponse),
}

/// One connection: its socket's protocol stack and the system's state about it.
pub(super) struct Cloud {
    pub(super) link: Link,
    pub(super) phase: Phase,
    pub(super) requests: HashMap<RequestHandle, Purpose>,
    /// Last message received, or Hello / ping sent (`last_message_millis`).
    pub(super) last_message_at: Duration,
    pub(super) expecting_ping_ack: bool,
    /// [`DeviceEvent::Connected`] was reported.
    pub(super) connected: bool,
    /// Block1 blocks of the system describe still to send.
    pub(super) describe_blocks: VecDeque<Describe>,
    /// Subscriptions not yet acknowledged.
    pub(super) subscriptions: Vec<RequestHandle>,
}

impl core::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cloud")
            .field("phase", &self.phase)
            .field("connected", &self.connected)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

/// A 1-byte-token-less CON or NON carrying `body`.
fn message(kind: MessageType, token: Vec<u8>, body: Body) -> Option<Message> {
    ParticleMessage {
        kind,
        message_id: 0,
        token,
        body,
    }
    .to_coap()
    .ok()
}

/// The first Uri-Path segment, as the device dispatches on it.
fn first_path(message: &Message) -> Option<&[u8]> {
    message
        .options
        .first()
        .filter(|o| o.number == option::URI_PATH)
        .map(|o| o.value.as_slice())
}

impl DeviceOs {
    // ----- sockets -----------------------------------------------------------------------

    /// Opens a new socket and starts a DTLS handshake, or resumes the retained session
    /// (reference 1.4: at most [`profile::MAXIMUM_SESSION_USES`] unanswered resumptions).
    pub(super) fn connect(&mut self, now: Duration) {
        if self.cloud.is_some()
            || self.power != Power::On
            || self.system.is_none()
            || !self.cloud_wanted
        {
            return;
        }
        self.reconnect_at = None;
        self.socket_generation = self.socket_generation.wrapping_add(1);
        let config = ClientConfig::new(self.identity.key.clone(), self.identity.server_key);
        let dtls_rng = Rng::seed_from_u64(self.next_seed());
        let coap_rng = Rng::seed_from_u64(self.next_seed());
        if self
            .retained
            .session
            .as_ref()
            .is_some_and(PersistedSession::has_expired)
        {
            self.log("the DTLS session expired after 3 unanswered resumptions");
            self.retained.session = None;
        }
        let link = match self.retained.session.as_mut() {
            Some(session) => {
                session.use_count += 1;
                Link::resume(config, session, dtls_rng, coap_rng, now)
            }
            None => Link::connect(config, dtls_rng, coap_rng, now),
        };
        self.events.push_back(DeviceEvent::Connecting {
            resume: link.resumed,
        });
        self.cloud = Some(Cloud {
            link,
            phase: Phase::Handshake,
            requests: HashMap::new(),
            last_message_at: now,
            expecting_ping_ack: false,
            connected: false,
            describe_blocks: VecDeque::new(),
            subscriptions: Vec::new(),
        });
        self.process_link(now);
    }

    /// Ends the connection: what the socket already sent stays sent, the session is kept in
    /// retained RAM (with its counters brought up to date) or discarded, and a running transfer
    /// is cancelled (resumable). Returns whether the connection had not come up yet.
    pub(super) fn teardown(&mut self, now: Duration, reason: DisconnectReason, keep: bool) -> bool {
        let Some(mut cloud) = self.cloud.take() else {
            return false;
        };
        while let Some(d) = cloud.link.poll_transmit() {
            self.outbox.push_back(d);
        }
        if !keep {
            self.retained.session = None;
        } else if let (Some((state, last_message_id)), Some(session)) =
            (cloud.link.export(), self.retained.session.as_mut())
        {
            session.dtls = state;
            session.last_message_id = last_message_id;
        }
        self.events.push_back(DeviceEvent::Disconnected { reason });
        self.ota_cancel(now);
        !cloud.connected
    }

    /// A connection error: tear down and reconnect, at once after a connection that was up,
    /// after the back-off when the handshake failed (`cloud_connection_failed`).
    pub(super) fn connection_error(&mut self, now: Duration, reason: DisconnectReason, keep: bool) {
        let failed = self.teardown(now, reason, keep);
        if self.power == Power::On {
            if failed {
                self.failed_attempts = self.failed_attempts.saturating_add(1);
            }
            self.reconnect_at = Some(now.saturating_add(connection_backoff(self.failed_attempts)));
        }
    }

    pub(super) fn drain_link(&mut self) {
        if let Some(cloud) = self.cloud.as_mut() {
            while let Some(d) = cloud.link.poll_transmit() {
                self.outbox.push_back(d);
            }
        }
    }

    pub(super) fn is_cloud_connected(&self) -> bool {
        self.cloud.as_ref().is_some_and(|c| c.connected)
    }

    pub(super) fn is_closing(&self) -> bool {
        self.cloud
            .as_ref()
            .is_some_and(|c| matches!(c.phase, Phase::Closing { .. }))
    }

    /// Whether the system can publish now (the handshake got past the Hello).
    fn can_send(&self) -> bool {
        self.cloud
            .as_ref()
            .is_some_and(|c| c.phase == Phase::Established)
    }

    // ----- driving -----------------------------------------------------------------------

    pub(super) fn cloud_datagram(&mut self, now: Duration, datagram: &[u8]) {
        // 0- and 1-byte datagrams are NAT keepalives (reference 1.1).
        if datagram.len() <= 1 {
            return;
        }
        let Some(cloud) = self.cloud.as_mut() else {
            return;
        };
        cloud.link.handle_datagram(now, datagram);
        self.process_link(now);
    }

    pub(super) fn cloud_timeout(&mut self, now: Duration) {
        if let Some(cloud) = self.cloud.as_mut() {
            cloud.link.handle_timeout(now);
        }
        self.process_link(now);
        self.pinger(now);
        self.check_closing(now);
    }

    pub(super) fn cloud_poll_timeout(&self) -> Option<Duration> {
        let cloud = self.cloud.as_ref()?;
        let ping = (cloud.phase == Phase::Established && !self.ota.is_running()).then(|| {
            if cloud.expecting_ping_ack {
                cloud.last_message_at.saturating_add(PING_TIMEOUT)
            } else {
                cloud.last_message_at.saturating_add(self.keepalive)
            }
        });
        let closing = match cloud.phase {
            Phase::Closing { deadline, .. } => Some(deadline),
            _ => None,
        };
        [cloud.link.poll_timeout(), ping, closing]
            .into_iter()
            .flatten()
            .min()
    }

    /// Handles everything the link has to say, until it is quiet.
    fn process_link(&mut self, now: Duration) {
        // Handling an event may end this connection and even start the next one (a reset
        // after a commit): the rest of this socket's events are then lost with it.
        let generation = self.socket_generation;
        loop {
            let Some(cloud) = self.cloud.as_mut() else {
                return;
            };
            let events = cloud.link.poll_events(now);
            if events.is_empty() {
                break;
            }
            for event in events {
                if self.cloud.is_none() || self.socket_generation != generation {
                    return;
                }
                self.on_link_event(now, event);
            }
        }
        self.check_connected(now);
        self.check_closing(now);
    }

    fn on_link_event(&mut self, now: Duration, event: LinkEvent) {
        match event {
            LinkEvent::Connected => self.on_dtls_connected(now),
            LinkEvent::Closed(reason) => self.connection_error(
                now,
                DisconnectReason::Dtls {
                    error: reason.to_string(),
                },
                false,
            ),
            LinkEvent::Received => {
                if let Some(cloud) = self.cloud.as_mut() {
                    cloud.last_message_at = now;
                    cloud.expecting_ping_ack = false;
                }
                // cancel_move_session: the server answered, the session is good again.
                if let Some(session) = self.retained.session.as_mut() {
                    session.use_count = 0;
                }
            }
            LinkEvent::Malformed(error) => {
                self.malformed += 1;
                self.log(format!("dropped a record that is not CoAP: {error}"));
            }
            LinkEvent::Coap(event) => self.on_coap(now, event),
        }
    }

    fn on_coap(&mut self, now: Duration, event: EndpointEvent) {
        match event {
            EndpointEvent::Request { request, message } => self.on_request(now, request, message),
            EndpointEvent::Response { handle, message } => {
                self.on_answer(now, handle, Some(message))
            }
            EndpointEvent::Acknowledged { handle } => self.on_answer(now, handle, None),
            EndpointEvent::Reset { .. } => {
                // CoAPMessageStore: an RST from the server discards the session.
                self.connection_error(now, DisconnectReason::ResetByServer, false)
            }
            EndpointEvent::TimedOut { .. } => {
                // MESSAGE_TIMEOUT: the channel is closed and the session discarded.
                self.connection_error(now, DisconnectReason::MessageTimeout, false)
            }
            EndpointEvent::Unmatched { message } => self.log(format!(
                "ignored an unmatched {} {} (message id {})",
                message.kind, message.code, message.message_id
            )),
        }
    }

    // ----- the post-connect sequence -----------------------------------------------------

    /// What the cloud should have cached about this device now.
    fn current_app_state(&self) -> AppState {
        let Some(system) = self.system.as_ref() else {
            return AppState::default();
        };
        AppState {
            system_version: Some(system.versions.system_part.unwrap_or(0)),
            system_describe_crc: Some(system.describe_checksum),
            protocol_flags: Some(system.hello_flags),
            max_message_size: Some(MAX_MESSAGE_SIZE),
            max_binary_size: Some(system.max_binary_size),
            ota_chunk_size: Some(system.ota_chunk_size),
            app_describe_crc: Some(crc32fast::hash(&ApplicationDescribe::default().emit())),
            subscriptions_crc: Some(crc32fast::hash(
                event_name::SYSTEM_SUBSCRIPTIONS.join("\0").as_bytes(),
            )),
        }
    }

    fn on_dtls_connected(&mut self, now: Duration) {
        let current = self.current_app_state();
        let Some(cloud) = self.cloud.as_mut() else {
            return;
        };
        if !cloud.link.resumed {
            // A full handshake: this session is what retained RAM keeps from now on.
            self.retained.session =
                cloud
                    .link
                    .export()
                    .map(|(dtls, last_message_id)| PersistedSession {
                        dtls,
                        last_message_id,
                        use_count: 0,
                        app_state: AppState::default(),
                    });
            self.send_hello(now);
            return;
        }
        let unchanged = self
            .retained
            .session
            .as_ref()
            .is_some_and(|s| s.app_state.allows_skipping_hello(&current));
        if unchanged {
            if let Some(cloud) = self.cloud.as_mut() {
                cloud.last_message_at = now;
            }
            self.send(
                now,
                MessageType::Confirmable,
                false,
                Body::Ping,
                Purpose::Ping,
            );
            self.system_handshake(now, true);
        } else {
            // The state changed (e.g. new firmware): everything is sent again.
            if let Some(session) = self.retained.session.as_mut() {
                session.app_state = AppState::default();
            }
            self.send_hello(now);
        }
    }

    fn send_hello(&mut self, now: Duration) {
        let Some(hello) = self.system.as_ref().map(|s| s.hello(&self.identity)) else {
            return;
        };
        if let Some(cloud) = self.cloud.as_mut() {
            cloud.last_message_at = now;
        }
        if let Some(handle) = self.send(
            now,
            MessageType::Confirmable,
            false,
            Body::Hello(hello),
            Purpose::Hello,
        ) {
            if let Some(cloud) = self.cloud.as_mut() {
                cloud.phase = Phase::AwaitHello(handle);
            }
        }
    }

    fn on_hello_acked(&mut self, now: Duration) {
        let current = self.current_app_state();
        if let Some(session) = self.retained.session.as_mut() {
            let cached = &mut session.app_state;
            cached.protocol_flags = current.protocol_flags;
            cached.system_version = current.system_version;
            cached.max_message_size = current.max_message_size;
            cached.max_binary_size = current.max_binary_size;
            cached.ota_chunk_size = current.ota_chunk_size;
        }
        // Device-initiated describe: the system describe follows the Hello, always.
        if let Some(system) = self.system.as_ref() {
            let payload = system.describe.emit();
            let mut blocks: VecDeque<Describe> = Describe::blocks(
                DescribeFlags::SYSTEM,
                Some(CONTENT_FORMAT_OCTET_STREAM),
                &payload,
                usize::from(MAX_MESSAGE_SIZE),
            )
            .into();
            if let Some(first) = blocks.pop_front() {
                if let Some(cloud) = self.cloud.as_mut() {
                    cloud.describe_blocks = blocks;
                }
                self.send(
                    now,
                    MessageType::Confirmable,
                    true,
                    Body::Describe(first),
                    Purpose::SystemDescribe,
                );
            }
        }
        self.system_handshake(now, false);
    }

    /// `Spark_Handshake` after `Protocol::begin`: time, system events, application state.
    fn system_handshake(&mut self, now: Duration, hello_skipped: bool) {
        let Some(cloud) = self.cloud.as_mut() else {
            return;
        };
        cloud.phase = Phase::Established;
        if !hello_skipped || !self.retained.rtc_valid {
            self.send(
                now,
                MessageType::Confirmable,
                true,
                Body::TimeRequest,
                Purpose::Time,
            );
        }
        if self.system.as_ref().is_some_and(|s| s.safe_mode) {
            self.publish(now, event_name::SAFE_MODE, "");
        }
        if !self.last_reset_published {
            self.last_reset_published = true;
            if self.reset_reason != reset_reason::NONE {
                let name = reset_reason::name(self.reset_reason);
                self.publish(now, event_name::LAST_RESET, &name);
            }
        }
        // Send_Firmware_Update_Flags: both flags, at every connection.
        self.publish(
            now,
            event_name::UPDATES_ENABLED,
            flag_data(self.flags.updates_enabled),
        );
        self.publish(
            now,
            event_name::UPDATES_FORCED,
            flag_data(self.flags.updates_forced),
        );
        // sendApplicationDescription: skipped when the cloud has it already.
        let current = self.current_app_state();
        let cached = self
            .retained
            .session
            .as_ref()
            .map(|s| s.app_state)
            .unwrap_or_default();
        if cached.app_describe_crc != current.app_describe_crc {
            let describe = Describe {
                flags: DescribeFlags::APPLICATION,
                content_format: None,
                block1: None,
                payload: ApplicationDescribe::default().emit(),
            };
            self.send(
                now,
                MessageType::Confirmable,
                true,
                Body::Describe(describe),
                Purpose::AppDescribe,
            );
        }
        if cached.subscriptions_crc != current.subscriptions_crc {
            for filter in event_name::SYSTEM_SUBSCRIPTIONS {
                if let Some(handle) = self.send(
                    now,
                    MessageType::Confirmable,
                    false,
                    Body::Subscribe(Subscribe::new(filter)),
                    Purpose::Subscribe,
                ) {
                    if let Some(cloud) = self.cloud.as_mut() {
                        cloud.subscriptions.push(handle);
                    }
                }
            }
        }
        self.check_connected(now);
    }

    fn check_connected(&mut self, now: Duration) {
        let Some(cloud) = self.cloud.as_mut() else {
            return;
        };
        if cloud.phase == Phase::Established
            && !cloud.connected
            && cloud.link.unacknowledged() == 0
            && cloud.describe_blocks.is_empty()
        {
            cloud.connected = true;
            let resumed = cloud.link.resumed;
            self.failed_attempts = 0;
            self.events.push_back(DeviceEvent::Connected { resumed });
            // The first boot of new firmware ends with its first connection.
            if self.device.flash().activity() == Activity::FirstBoot {
                self.device.set_activity(Activity::Other);
            }
            self.on_cloud_connected(now);
        }
    }

    /// An answer to something the device sent: a piggy-backed or separate response, or an empty
    /// ACK.
    fn on_answer(&mut self, now: Duration, handle: RequestHandle, answer: Option<Message>) {
        let Some(cloud) = self.cloud.as_mut() else {
            return;
        };
        let Some(purpose) = cloud.requests.remove(&handle) else {
            return;
        };
        if purpose == Purpose::Time && answer.is_none() {
            // An empty ACK: the time comes in a separate response.
            cloud.requests.insert(handle, purpose);
            return;
        }
        let success = answer.as_ref().is_none_or(|m| m.code.class() == 2);
        let current = self.current_app_state();
        match purpose {
            Purpose::Hello => self.on_hello_acked(now),
            Purpose::SystemDescribe => {
                let next = self
                    .cloud
                    .as_mut()
                    .and_then(|c| c.describe_blocks.pop_front());
                match next {
                    Some(block) if success => {
                        self.send(
                            now,
                            MessageType::Confirmable,
                            true,
                            Body::Describe(block),
                            Purpose::SystemDescribe,
                        );
                    }
                    Some(_) => {
                        if let Some(cloud) = self.cloud.as_mut() {
                            cloud.describe_blocks.clear();
                        }
                    }
                    None if success => {
                        if let Some(s) = self.retained.session.as_mut() {
                            s.app_state.system_describe_crc = current.system_describe_crc;
                        }
                    }
                    None => {}
                }
            }
            Purpose::AppDescribe if success => {
                if let Some(s) = self.retained.session.as_mut() {
                    s.app_state.app_describe_crc = current.app_describe_crc;
                }
            }
            Purpose::Subscribe => {
                if let Some(cloud) = self.cloud.as_mut() {
                    if !success {
                        cloud.subscriptions.clear();
                    } else if cloud.subscriptions.contains(&handle) {
                        cloud.subscriptions.retain(|h| *h != handle);
                        if cloud.subscriptions.is_empty() {
                            if let Some(s) = self.retained.session.as_mut() {
                                s.app_state.subscriptions_crc = current.subscriptions_crc;
                            }
                        }
                    }
                }
            }
            Purpose::Time => {
                if let Some(m) = &answer {
                    let parsed = TimeResponse::parse(&protocol::message::Response {
                        code: m.code,
                        options: m.options.clone(),
                        payload: m.payload.clone(),
                    });
                    if parsed.is_err() {
                        self.log(format!("time response {} not understood", m.code));
                    }
                }
                self.retained.rtc_valid = true;
            }
            Purpose::Ota(response) => self.ota_answered(now, response),
            _ => {}
        }
        self.check_connected(now);
    }

    /// Sends a CON or NON the device originates; `token` gives it a fresh 1-byte token.
    pub(super) fn send(
        &mut self,
        now: Duration,
        kind: MessageType,
        token: bool,
        body: Body,
        purpose: Purpose,
    ) -> Option<RequestHandle> {
        let cloud = self.cloud.as_mut()?;
        let token = if token {
            cloud.link.coap().next_token()
        } else {
            Vec::new()
        };
        let Some(msg) = message(kind, token, body) else {
            self.log("could not encode a message");
            return None;
        };
        let answerable = kind == MessageType::Confirmable || !msg.token.is_empty();
        match cloud.link.send(now, msg) {
            Ok(handle) => {
                if answerable {
                    cloud.requests.insert(handle, purpose);
                }
                Some(handle)
            }
            Err(e) => {
                self.log(format!("could not send a message: {e}"));
                None
            }
        }
    }

    /// Publishes an event (CON, private, TTL 60) if the connection is up far enough.
    pub(super) fn publish(&mut self, now: Duration, name: &str, data: &str) -> bool {
        if !self.can_send() {
            return false;
        }
        let sent = self
            .send(
                now,
                MessageType::Confirmable,
                false,
                Body::Event(Event::new(name, data.as_bytes().to_vec())),
                Purpose::Event,
            )
            .is_some();
        if sent {
            self.events.push_back(DeviceEvent::Published {
                name: name.to_string(),
                data: data.to_string(),
            });
        }
        sent
    }

    /// A system flag event (`spark_send_event` with ASYNC): only while connected.
    pub(super) fn publish_system_event(&mut self, now: Duration, name: &str, data: &str) {
        self.publish(now, name, data);
    }

    // ----- keepalive ---------------------------------------------------------------------

    /// The pinger (reference 1.9): a ping after the keepalive interval of silence, a
    /// disconnect 30 s after an unanswered ping; neither while a transfer runs.
    fn pinger(&mut self, now: Duration) {
        if self.ota.is_running() {
            return;
        }
        let keepalive = self.keepalive;
        let Some(cloud) = self.cloud.as_mut() else {
            return;
        };
        if cloud.phase != Phase::Established {
            return;
        }
        let silent = now.saturating_sub(cloud.last_message_at);
        if cloud.expecting_ping_ack {
            if silent >= PING_TIMEOUT {
                self.connection_error(now, DisconnectReason::PingTimeout, true);
            }
        } else if silent >= keepalive {
            cloud.expecting_ping_ack = true;
            cloud.last_message_at = now;
            self.send(
                now,
                MessageType::Confirmable,
                false,
                Body::Ping,
                Purpose::Ping,
            );
        }
    }

    /// `ProtocolCommands::PING` (after a sleep that kept the network).
    pub(super) fn force_ping(&mut self, now: Duration) {
        let Some(cloud) = self.cloud.as_mut() else {
            return;
        };
        if cloud.phase != Phase::Established || cloud.expecting_ping_ack {
            return;
        }
        cloud.expecting_ping_ack = true;
        cloud.last_message_at = now;
        self.send(
            now,
            MessageType::Confirmable,
            false,
            Body::Ping,
            Purpose::Ping,
        );
    }

    // ----- graceful disconnects ----------------------------------------------------------

    fn start_goodbye(&mut self, now: Duration, goodbye: Goodbye, then: AfterClose) -> bool {
        if !self.is_cloud_connected() || self.is_closing() {
            return false;
        }
        self.send(
            now,
            MessageType::Confirmable,
            false,
            Body::Goodbye(goodbye),
            Purpose::Goodbye,
        );
        if let Some(cloud) = self.cloud.as_mut() {
            cloud.phase = Phase::Closing {
                deadline: now.saturating_add(DISCONNECT_TIMEOUT),
                then,
            };
        }
        self.drain_link();
        true
    }

    /// Goodbye (cloud reason 5 "system reset" with the reset reason), then the reset.
    pub(super) fn start_goodbye_reset(&mut self, now: Duration, reason: u32) -> bool {
        let goodbye = Goodbye {
            cloud_reason: Some(protocol::message::CloudDisconnectReason::SYSTEM_RESET),
            reset_reason: Some(reason),
            ..Goodbye::default()
        };
        self.start_goodbye(now, goodbye, AfterClose::Reset(reason))
    }

    /// Goodbye (cloud reason 6 "sleep" with the duration in seconds), then sleep.
    pub(super) fn start_goodbye_sleep(&mut self, now: Duration, config: SleepConfig) -> bool {
        let duration = config.duration.unwrap_or(Duration::ZERO);
        let seconds = u32::try_from(duration.as_secs()).unwrap_or(u32::MAX);
        let goodbye = Goodbye {
            cloud_reason: Some(protocol::message::CloudDisconnectReason::SLEEP),
            sleep_duration: (seconds != 0).then_some(seconds),
            ..Goodbye::default()
        };
        self.start_goodbye(now, goodbye, AfterClose::Sleep(config))
    }

    /// Goodbye (cloud reason 2 "user"), then the connection stays down (`Particle.disconnect()`
    /// with the graceful option). UNCONFIRMED which reason Device OS names for a user
    /// disconnect: `CloudDisconnectReason::USER` is the one the reference lists for it.
    /// `false` when there is no connection to close gracefully.
    pub(super) fn start_goodbye_disconnect(&mut self, now: Duration) -> bool {
        let goodbye = Goodbye {
            cloud_reason: Some(protocol::message::CloudDisconnectReason::USER),
            ..Goodbye::default()
        };
        self.start_goodbye(now, goodbye, AfterClose::Disconnect)
    }

    /// Ends a graceful disconnect once every CON is acknowledged or the wait timed out.
    fn check_closing(&mut self, now: Duration) {
        let Some(cloud) = self.cloud.as_ref() else {
            return;
        };
        let Phase::Closing { deadline, then } = cloud.phase else {
            return;
        };
        if cloud.link.unacknowledged() > 0 && now < deadline {
            return;
        }
        match then {
            AfterClose::Reset(reason) => self.reset_now(now, reason, true),
            AfterClose::Sleep(config) => self.sleep_after_goodbye(now, config),
            AfterClose::Disconnect => {
                self.cloud_wanted = false;
                self.reconnect_at = None;
                self.teardown(now, DisconnectReason::Requested, true);
            }
        }
    }

    // ----- requests from the cloud -------------------------------------------------------

    fn on_request(&mut self, now: Duration, request: IncomingRequest, message: Message) {
        let path = first_path(&message).map(<[u8]>::to_vec);
        let parsed = ParticleMessage::from_coap(&message).map(|m| m.body);
        if message.code == Code::POST && matches!(path.as_deref(), Some(b"S" | b"C" | b"F")) {
            self.ota_request(now, request, message, parsed);
            return;
        }
        let body = match parsed {
            Ok(body) => body,
            Err(e) => {
                self.malformed += 1;
                self.log(format!("refused a malformed {} request: {e}", message.code));
                self.respond(
                    now,
                    &request,
                    response(Code::BAD_REQUEST, Vec::new(), Vec::new()),
                );
                return;
            }
        };
        match body {
            Body::Event(event) => {
                self.accept(now, &request);
                self.on_cloud_event(now, event);
            }
            Body::Hello(_) => self.accept(now, &request),
            Body::DescribeRequest(describe) => self.on_describe_request(now, &request, describe),
            Body::Other(other) if other.code == Code::PUT && path.as_deref() == Some(b"k") => {
                self.accept(now, &request);
                if other.payload.first() == Some(&1) {
                    self.connection_error(now, DisconnectReason::SessionDiscarded, false);
                }
            }
            other => {
                self.log(format!(
                    "no handler for a {} {} request ({:?})",
                    message.kind,
                    message.code,
                    path.map(|p| String::from_utf8_lossy(&p).into_owned())
                ));
                if !matches!(other, Body::Ping) {
                    self.respond(
                        now,
                        &request,
                        response(Code::NOT_FOUND, Vec::new(), Vec::new()),
                    );
                }
            }
        }
    }

    /// An empty ACK for a CON request (nothing for a NON).
    pub(super) fn accept(&mut self, now: Duration, request: &IncomingRequest) {
        if let Some(cloud) = self.cloud.as_mut() {
            if let Err(e) = cloud.link.coap().accept(now, request) {
                self.log(format!("could not acknowledge: {e}"));
            }
            if let Some(cloud) = self.cloud.as_mut() {
                cloud.link.flush_now(now);
            }
        }
    }

    /// Answers a request: piggy-backed if not yet acknowledged, else separately (returns the
    /// separate response's handle).
    pub(super) fn respond(
        &mut self,
        now: Duration,
        request: &IncomingRequest,
        message: Message,
    ) -> Option<RequestHandle> {
        let cloud = self.cloud.as_mut()?;
        if request.kind != MessageType::Confirmable && request.token.is_empty() {
            return None; // a NON without token cannot be answered
        }
        let result = cloud.link.coap().respond(now, request, message);
        cloud.link.flush_now(now);
        match result {
            Ok(handle) => handle,
            Err(e) => {
                self.log(format!("could not respond: {e}"));
                None
            }
        }
    }

    /// Answers an OTA request; the ACK of a separate response goes back to the OTA link.
    pub(super) fn respond_ota(
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

    /// RST for a request (a chunk nobody expected, a bad chunk).
    pub(super) fn reject(&mut self, now: Duration, request: &IncomingRequest) {
        if let Some(cloud) = self.cloud.as_mut() {
            let result = cloud.link.coap().reject(now, request);
            cloud.link.flush_now(now);
            if let Err(e) = result {
                self.log(format!("could not reset: {e}"));
            }
        }
    }

    fn on_describe_request(
        &mut self,
        now: Duration,
        request: &IncomingRequest,
        describe: DescribeRequest,
    ) {
        self.accept(now, request);
        let (content_format, payload) = if describe.flags.0 & DescribeFlags::SYSTEM.0 != 0 {
            let payload = self
                .system
                .as_ref()
                .map(|s| s.describe.emit())
                .unwrap_or_default();
            (Some(CONTENT_FORMAT_OCTET_STREAM), payload)
        } else {
            (None, ApplicationDescribe::default().emit())
        };
        let answer = DescribeResponse {
            etag: None,
            content_format,
            block2: None,
            payload,
        }
        .emit();
        match answer {
            Ok(r) => {
                if let Some(handle) =
                    self.respond(now, request, response(r.code, r.options, r.payload))
                {
                    if let Some(cloud) = self.cloud.as_mut() {
                        cloud.requests.insert(handle, Purpose::DescribeResponse);
                    }
                }
            }
            Err(e) => self.log(format!("could not encode a describe: {e}")),
        }
    }

    /// An event from the cloud: the system handler reads the update control events
    /// (reference 3, `systemEventHandler`).
    fn on_cloud_event(&mut self, now: Duration, event: Event) {
        self.events.push_back(DeviceEvent::Received {
            name: event.name.clone(),
            data: String::from_utf8_lossy(&event.data).into_owned(),
        });
        let Some(kind) = update_control_event(&event.name) else {
            return;
        };
        let value = data_to_flag(&event.data);
        match kind {
            UpdateControlEvent::Forced => {
                if self.flags.updates_forced != value {
                    self.flags.updates_forced = value;
                    // Acknowledged by echoing the new value.
                    self.publish_system_event(now, event_name::UPDATES_FORCED, flag_data(value));
                }
            }
            UpdateControlEvent::Pending => {
                let before = self.update_status();
                self.pending_event_received = true;
                let was = self.flags.updates_pending;
                self.flags.updates_pending = value;
                if value && !was {
                    self.events
                        .push_back(DeviceEvent::SystemEvent(SystemEvent::FirmwareUpdatePending));
                }
                let after = self.update_status();
                if after != before {
                    self.events.push_back(DeviceEvent::SystemEvent(
                        SystemEvent::FirmwareUpdateStatus(after),
                    ));
                }
            }
        }
    }
}
