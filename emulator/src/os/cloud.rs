//! The cloud connection (reference 1.4-1.12, 3): [`CloudConnection`] owns the sockets and
//! their DTLS handshakes or resumptions, the post-connect sequence (Hello or ping, system
//! describe, time, application describe, subscriptions), keepalive pings, incoming requests,
//! graceful disconnects, the reconnect back-off, and what each failure does to the session.
//! It reads the rest of the device through a [`DeviceView`] and answers with [`CloudEffect`]s:
//! what the system ([`super::DeviceOs`]) does about the connection (trace it, publish its
//! state, hand an OTA request over, reset or sleep after a Goodbye).
//!
//! The post-connect sequence, as `Protocol::begin` and `Spark_Handshake` run it:
//! 1. full handshake, or a resumption whose application state changed: Hello, sent alone
//!    (Device OS waits for its ACK); then the system describe (POST `d`, flags 1, protobuf);
//!    a resumption with unchanged state: a CoAP ping instead, and no describe;
//! 2. a time request, unless the Hello was skipped and the RTC is valid;
//! 3. `spark/device/safemode` (safe mode only), `spark/device/last_reset` (once per boot),
//!    `particle/device/updates/enabled` and `/forced` (always): the system's part
//!    ([`CloudEffect::SystemEvents`]);
//! 4. the application describe (flags 2) and the subscriptions `particle` and `spark`, each only
//!    if its checksum differs from what this session's cloud acknowledged
//!    ([`CloudConnection::send_app_state`]).
//!
//! The connection counts as established ([`CloudEffect::Connected`]) once all of these are
//! acknowledged.

use core::time::Duration;
use std::collections::{HashMap, VecDeque};

use protocol::coap::{
    option, Code, EndpointEvent, IncomingRequest, Message, MessageType, RequestHandle,
    UnacknowledgedCon,
};
use protocol::dtls::ClientConfig;
use protocol::message::{
    ApplicationDescribe, Body, CatalogueError, Describe, DescribeFlags, DescribeRequest,
    DescribeResponse, Event, Goodbye, ParticleMessage, Subscribe, TimeResponse, UpdateAck,
    CONTENT_FORMAT_OCTET_STREAM,
};
use rand_core::SeedableRng;

use super::identity::Identity;
use super::link::{response, Link, LinkEvent, Rng};
use super::ota_link::OtaResponse;
use super::profile::{
    connection_backoff, event_name, DISCONNECT_TIMEOUT, MAX_MESSAGE_SIZE, PING_TIMEOUT,
};
use super::session::{AppState, PersistedSession, Retained};
use super::sleep::SleepConfig;
use super::system_info::SystemInfo;
use super::trace::{DeviceEvent, DisconnectReason};

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
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
enum Purpose {
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

/// What the connection reads of the rest of the device, and the retained RAM its session
/// lives in.
pub(super) struct DeviceView<'a> {
    pub identity: &'a Identity,
    /// What the system reports about itself this boot (None while nothing runs).
    pub system: Option<&'a SystemInfo>,
    pub retained: &'a mut Retained,
}

/// What the connection asks of the system, in the order Device OS does it.
#[derive(Debug)]
pub(super) enum CloudEffect {
    /// An entry of the device's trace.
    Trace(DeviceEvent),
    /// A record or request that is not what it should be (counted in
    /// [`super::DeviceStatus::malformed`]).
    Malformed,
    /// The connection failed: tear it down, keeping the session or not, and reconnect
    /// (`cloud_connection_failed`; [`CloudConnection::schedule_reconnect`]).
    Lost {
        reason: DisconnectReason,
        keep_session: bool,
    },
    /// `Spark_Handshake` reached the system events (safe mode, last reset, update flags): the
    /// system publishes them, then calls [`CloudConnection::send_app_state`] and
    /// [`CloudConnection::check_connected`].
    SystemEvents,
    /// Every post-connect message is acknowledged: the connection is up.
    Connected { resumed: bool },
    /// An event from the cloud (already acknowledged).
    Event(Event),
    /// An OTA request (`S`, `C` or `F`), for the OTA link to answer.
    OtaRequest {
        request: IncomingRequest,
        message: Message,
        parsed: Result<Body, CatalogueError>,
    },
    /// The cloud acknowledged an OTA response of the device; the system then calls
    /// [`CloudConnection::check_connected`].
    OtaAnswered(OtaResponse),
    /// A graceful disconnect is over (every CON acknowledged, or the wait timed out).
    Closed(AfterClose),
}

type Effects = Vec<CloudEffect>;

fn log(fx: &mut Effects, line: impl Into<String>) {
    fx.push(CloudEffect::Trace(DeviceEvent::Log(line.into())));
}

/// One socket: its protocol stack and the system's state about it.
struct Socket {
    link: Link,
    phase: Phase,
    requests: HashMap<RequestHandle, Purpose>,
    /// Last message received, or Hello / ping sent (`last_message_millis`).
    last_message_at: Duration,
    expecting_ping_ack: bool,
    /// [`CloudEffect::Connected`] was reported.
    connected: bool,
    /// Block1 blocks of the system describe still to send.
    describe_blocks: VecDeque<Describe>,
    /// Subscriptions not yet acknowledged.
    subscriptions: Vec<RequestHandle>,
}

impl core::fmt::Debug for Socket {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Socket")
            .field("phase", &self.phase)
            .field("connected", &self.connected)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

/// The device's cloud connection: the current socket (if any), the datagrams it sent, the
/// reconnect back-off and the keepalive interval.
#[derive(Debug)]
pub(super) struct CloudConnection {
    socket: Option<Socket>,
    outbox: VecDeque<Vec<u8>>,
    reconnect_at: Option<Duration>,
    failed_attempts: u32,
    socket_generation: u32,
    keepalive: Duration,
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

/// What the cloud should have cached about this device now.
fn current_app_state(system: Option<&SystemInfo>) -> AppState {
    let Some(system) = system else {
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

impl CloudConnection {
    /// No socket yet; pings after `keepalive` of silence.
    pub(super) fn new(keepalive: Duration) -> Self {
        CloudConnection {
            socket: None,
            outbox: VecDeque::new(),
            reconnect_at: None,
            failed_attempts: 0,
            socket_generation: 0,
            keepalive,
        }
    }

    // ----- sockets -----------------------------------------------------------------------

    /// Opens a new socket and starts a DTLS handshake, or resumes the retained session
    /// (reference 1.4: at most [`super::profile::MAXIMUM_SESSION_USES`] unanswered
    /// resumptions). The caller then lets the link speak ([`CloudConnection::poll_link`]).
    pub(super) fn open(
        &mut self,
        now: Duration,
        view: DeviceView<'_>,
        dtls_seed: u64,
        coap_seed: u64,
    ) -> Effects {
        let mut fx = Effects::new();
        self.reconnect_at = None;
        self.socket_generation = self.socket_generation.wrapping_add(1);
        let config = ClientConfig::new(view.identity.key.clone(), view.identity.server_key);
        let dtls_rng = Rng::seed_from_u64(dtls_seed);
        let coap_rng = Rng::seed_from_u64(coap_seed);
        let retained = view.retained;
        if retained
            .session
            .as_ref()
            .is_some_and(PersistedSession::has_expired)
        {
            log(
                &mut fx,
                "the DTLS session expired after 3 unanswered resumptions",
            );
            retained.session = None;
        }
        let link = match retained.session.as_mut() {
            Some(session) => {
                session.use_count += 1;
                Link::resume(config, session, dtls_rng, coap_rng, now)
            }
            None => Link::connect(config, dtls_rng, coap_rng, now),
        };
        fx.push(CloudEffect::Trace(DeviceEvent::Connecting {
            resume: link.resumed,
        }));
        self.socket = Some(Socket {
            link,
            phase: Phase::Handshake,
            requests: HashMap::new(),
            last_message_at: now,
            expecting_ping_ack: false,
            connected: false,
            describe_blocks: VecDeque::new(),
            subscriptions: Vec::new(),
        });
        fx
    }

    /// Ends the connection: what the socket already sent stays sent, the session is kept in
    /// `retained` (with its counters brought up to date) or discarded. `None` without a
    /// socket; else whether the connection had not come up yet, and the trace. The system
    /// cancels a running transfer after it.
    pub(super) fn close(
        &mut self,
        reason: DisconnectReason,
        keep_session: bool,
        retained: &mut Retained,
    ) -> Option<(bool, Effects)> {
        let mut socket = self.socket.take()?;
        while let Some(d) = socket.link.poll_transmit() {
            self.outbox.push_back(d);
        }
        if !keep_session {
            retained.session = None;
        } else if let (Some((state, last_message_id)), Some(session)) =
            (socket.link.export(), retained.session.as_mut())
        {
            session.dtls = state;
            session.last_message_id = last_message_id;
        }
        let fx = vec![CloudEffect::Trace(DeviceEvent::Disconnected { reason })];
        Some((!socket.connected, fx))
    }

    /// After a connection error: reconnect at once after a connection that was up, after the
    /// back-off when the handshake `failed` (`cloud_connection_failed`).
    pub(super) fn schedule_reconnect(&mut self, now: Duration, failed: bool) {
        if failed {
            self.failed_attempts = self.failed_attempts.saturating_add(1);
        }
        self.reconnect_at = Some(now.saturating_add(connection_backoff(self.failed_attempts)));
    }

    /// Whether a scheduled reconnect is due (no socket, its time has come); it is then
    /// consumed.
    pub(super) fn take_due_reconnect(&mut self, now: Duration) -> bool {
        if self.reconnect_at.is_some_and(|t| t <= now) && self.socket.is_none() {
            self.reconnect_at = None;
            return true;
        }
        false
    }

    pub(super) fn cancel_reconnect(&mut self) {
        self.reconnect_at = None;
    }

    /// A new boot: no reconnect scheduled, no failed attempts counted.
    pub(super) fn on_boot(&mut self) {
        self.failed_attempts = 0;
        self.reconnect_at = None;
    }

    /// Power is lost: the socket and what it had queued go without a word. Whether there was
    /// a socket.
    pub(super) fn lose_power(&mut self) -> bool {
        let had_socket = self.socket.take().is_some();
        self.outbox.clear();
        self.reconnect_at = None;
        had_socket
    }

    /// Moves what the socket sealed to the outbox.
    pub(super) fn drain_link(&mut self) {
        if let Some(socket) = self.socket.as_mut() {
            while let Some(d) = socket.link.poll_transmit() {
                self.outbox.push_back(d);
            }
        }
    }

    /// The next datagram for the server.
    pub(super) fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_front()
    }

    /// `Particle.keepAlive(interval)`.
    pub(super) fn set_keepalive(&mut self, interval: Duration) {
        self.keepalive = interval;
    }

    /// A socket exists (connecting, up or closing).
    pub(super) fn is_open(&self) -> bool {
        self.socket.is_some()
    }

    pub(super) fn is_connected(&self) -> bool {
        self.socket.as_ref().is_some_and(|s| s.connected)
    }

    pub(super) fn is_closing(&self) -> bool {
        self.socket
            .as_ref()
            .is_some_and(|s| matches!(s.phase, Phase::Closing { .. }))
    }

    /// Bumped at every new socket.
    pub(super) fn socket_generation(&self) -> u32 {
        self.socket_generation
    }

    /// The CONs sent and not yet acknowledged.
    pub(super) fn unacknowledged_cons(&self) -> Vec<UnacknowledgedCon<'_>> {
        self.socket
            .as_ref()
            .map(|s| s.link.unacknowledged_cons())
            .unwrap_or_default()
    }

    /// Whether the system can publish now (the handshake got past the Hello).
    fn can_send(&self) -> bool {
        self.socket
            .as_ref()
            .is_some_and(|s| s.phase == Phase::Established)
    }

    // ----- driving -----------------------------------------------------------------------

    /// Takes a datagram from the server; the caller then lets the link speak. Whether it
    /// reached a socket.
    pub(super) fn handle_datagram(&mut self, now: Duration, datagram: &[u8]) -> bool {
        // 0- and 1-byte datagrams are NAT keepalives (reference 1.1).
        if datagram.len() <= 1 {
            return false;
        }
        let Some(socket) = self.socket.as_mut() else {
            return false;
        };
        socket.link.handle_datagram(now, datagram);
        true
    }

    /// Lets the link's timers fire; the caller then lets the link speak.
    pub(super) fn handle_link_timeout(&mut self, now: Duration) {
        if let Some(socket) = self.socket.as_mut() {
            socket.link.handle_timeout(now);
        }
    }

    /// What the link has to say (None without a socket); each event goes to
    /// [`CloudConnection::on_link_event`] while the socket lives.
    pub(super) fn poll_link(&mut self, now: Duration) -> Option<Vec<LinkEvent>> {
        Some(self.socket.as_mut()?.link.poll_events(now))
    }

    /// When the link's timers, the pinger, a graceful disconnect's deadline or a reconnect are
    /// due. No pings while a transfer runs.
    pub(super) fn poll_timeout(&self, ota_running: bool) -> Option<Duration> {
        let Some(socket) = self.socket.as_ref() else {
            return self.reconnect_at;
        };
        let ping = (socket.phase == Phase::Established && !ota_running).then(|| {
            if socket.expecting_ping_ack {
                socket.last_message_at.saturating_add(PING_TIMEOUT)
            } else {
                socket.last_message_at.saturating_add(self.keepalive)
            }
        });
        let closing = match socket.phase {
            Phase::Closing { deadline, .. } => Some(deadline),
            _ => None,
        };
        [socket.link.poll_timeout(), ping, closing]
            .into_iter()
            .flatten()
            .min()
    }

    /// The system's timer on this connection: the pinger (after the link's timers and what
    /// they produced; the end of a graceful disconnect is [`CloudConnection::check_closing`]).
    pub(super) fn handle_timeout(&mut self, now: Duration, ota_running: bool) -> Effects {
        let mut fx = Effects::new();
        self.pinger(now, ota_running, &mut fx);
        fx
    }

    pub(super) fn on_link_event(
        &mut self,
        now: Duration,
        event: LinkEvent,
        view: DeviceView<'_>,
    ) -> Effects {
        let mut fx = Effects::new();
        match event {
            LinkEvent::Connected => self.on_dtls_connected(now, view, &mut fx),
            LinkEvent::Closed(reason) => fx.push(CloudEffect::Lost {
                reason: DisconnectReason::Dtls {
                    error: reason.to_string(),
                },
                keep_session: false,
            }),
            LinkEvent::Received => {
                if let Some(socket) = self.socket.as_mut() {
                    socket.last_message_at = now;
                    socket.expecting_ping_ack = false;
                }
                // cancel_move_session: the server answered, the session is good again.
                if let Some(session) = view.retained.session.as_mut() {
                    session.use_count = 0;
                }
            }
            LinkEvent::Malformed(error) => {
                fx.push(CloudEffect::Malformed);
                log(
                    &mut fx,
                    format!("dropped a record that is not CoAP: {error}"),
                );
            }
            LinkEvent::Coap(event) => self.on_coap(now, event, view, &mut fx),
        }
        fx
    }

    fn on_coap(
        &mut self,
        now: Duration,
        event: EndpointEvent,
        view: DeviceView<'_>,
        fx: &mut Effects,
    ) {
        match event {
            EndpointEvent::Request { request, message } => {
                self.on_request(now, request, message, view, fx)
            }
            EndpointEvent::Response { handle, message } => {
                self.on_answer(now, handle, Some(message), view, fx)
            }
            EndpointEvent::Acknowledged { handle } => self.on_answer(now, handle, None, view, fx),
            EndpointEvent::Reset { .. } => {
                // CoAPMessageStore: an RST from the server discards the session.
                fx.push(CloudEffect::Lost {
                    reason: DisconnectReason::ResetByServer,
                    keep_session: false,
                })
            }
            EndpointEvent::TimedOut { .. } => {
                // MESSAGE_TIMEOUT: the channel is closed and the session discarded.
                fx.push(CloudEffect::Lost {
                    reason: DisconnectReason::MessageTimeout,
                    keep_session: false,
                })
            }
            EndpointEvent::Unmatched { message } => log(
                fx,
                format!(
                    "ignored an unmatched {} {} (message id {})",
                    message.kind, message.code, message.message_id
                ),
            ),
        }
    }

    // ----- the post-connect sequence -----------------------------------------------------

    fn on_dtls_connected(&mut self, now: Duration, view: DeviceView<'_>, fx: &mut Effects) {
        let current = current_app_state(view.system);
        let Some(socket) = self.socket.as_mut() else {
            return;
        };
        if !socket.link.resumed {
            // A full handshake: this session is what retained RAM keeps from now on.
            view.retained.session =
                socket
                    .link
                    .export()
                    .map(|(dtls, last_message_id)| PersistedSession {
                        dtls,
                        last_message_id,
                        use_count: 0,
                        app_state: AppState::default(),
                    });
            self.send_hello(now, &view, fx);
            return;
        }
        let unchanged = view
            .retained
            .session
            .as_ref()
            .is_some_and(|s| s.app_state.allows_skipping_hello(&current));
        if unchanged {
            socket.last_message_at = now;
            self.send(
                now,
                MessageType::Confirmable,
                false,
                Body::Ping,
                Purpose::Ping,
                fx,
            );
            self.system_handshake(now, true, view.retained, fx);
        } else {
            // The state changed (e.g. new firmware): everything is sent again.
            if let Some(session) = view.retained.session.as_mut() {
                session.app_state = AppState::default();
            }
            self.send_hello(now, &view, fx);
        }
    }

    fn send_hello(&mut self, now: Duration, view: &DeviceView<'_>, fx: &mut Effects) {
        let Some(hello) = view.system.map(|s| s.hello(view.identity)) else {
            return;
        };
        if let Some(socket) = self.socket.as_mut() {
            socket.last_message_at = now;
        }
        if let Some(handle) = self.send(
            now,
            MessageType::Confirmable,
            false,
            Body::Hello(hello),
            Purpose::Hello,
            fx,
        ) {
            if let Some(socket) = self.socket.as_mut() {
                socket.phase = Phase::AwaitHello(handle);
            }
        }
    }

    fn on_hello_acked(&mut self, now: Duration, view: DeviceView<'_>, fx: &mut Effects) {
        let current = current_app_state(view.system);
        if let Some(session) = view.retained.session.as_mut() {
            let cached = &mut session.app_state;
            cached.protocol_flags = current.protocol_flags;
            cached.system_version = current.system_version;
            cached.max_message_size = current.max_message_size;
            cached.max_binary_size = current.max_binary_size;
            cached.ota_chunk_size = current.ota_chunk_size;
        }
        // Device-initiated describe: the system describe follows the Hello, always.
        if let Some(system) = view.system {
            let payload = system.describe.emit();
            let mut blocks: VecDeque<Describe> = Describe::blocks(
                DescribeFlags::SYSTEM,
                Some(CONTENT_FORMAT_OCTET_STREAM),
                &payload,
                usize::from(MAX_MESSAGE_SIZE),
            )
            .into();
            if let Some(first) = blocks.pop_front() {
                if let Some(socket) = self.socket.as_mut() {
                    socket.describe_blocks = blocks;
                }
                self.send(
                    now,
                    MessageType::Confirmable,
                    true,
                    Body::Describe(first),
                    Purpose::SystemDescribe,
                    fx,
                );
            }
        }
        self.system_handshake(now, false, view.retained, fx);
    }

    /// `Spark_Handshake` after `Protocol::begin`: the time, then the system's events
    /// ([`CloudEffect::SystemEvents`]).
    fn system_handshake(
        &mut self,
        now: Duration,
        hello_skipped: bool,
        retained: &Retained,
        fx: &mut Effects,
    ) {
        let Some(socket) = self.socket.as_mut() else {
            return;
        };
        socket.phase = Phase::Established;
        if !hello_skipped || !retained.rtc_valid {
            self.send(
                now,
                MessageType::Confirmable,
                true,
                Body::TimeRequest,
                Purpose::Time,
                fx,
            );
        }
        fx.push(CloudEffect::SystemEvents);
    }

    /// The end of `Spark_Handshake`, after the system's events (`sendApplicationDescription`
    /// and the subscriptions): each skipped when the cloud has it already.
    pub(super) fn send_app_state(&mut self, now: Duration, view: DeviceView<'_>) -> Effects {
        let mut fx = Effects::new();
        let current = current_app_state(view.system);
        let cached = view
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
                &mut fx,
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
                    &mut fx,
                ) {
                    if let Some(socket) = self.socket.as_mut() {
                        socket.subscriptions.push(handle);
                    }
                }
            }
        }
        fx
    }

    /// Whether the connection just came up: every post-connect message acknowledged.
    pub(super) fn check_connected(&mut self) -> Effects {
        let Some(socket) = self.socket.as_mut() else {
            return Effects::new();
        };
        if socket.phase == Phase::Established
            && !socket.connected
            && socket.link.unacknowledged() == 0
            && socket.describe_blocks.is_empty()
        {
            socket.connected = true;
            let resumed = socket.link.resumed;
            self.failed_attempts = 0;
            return vec![CloudEffect::Connected { resumed }];
        }
        Effects::new()
    }

    /// An answer to something the device sent: a piggy-backed or separate response, or an empty
    /// ACK.
    fn on_answer(
        &mut self,
        now: Duration,
        handle: RequestHandle,
        answer: Option<Message>,
        view: DeviceView<'_>,
        fx: &mut Effects,
    ) {
        let Some(socket) = self.socket.as_mut() else {
            return;
        };
        let Some(purpose) = socket.requests.remove(&handle) else {
            return;
        };
        if purpose == Purpose::Time && answer.is_none() {
            // An empty ACK: the time comes in a separate response.
            socket.requests.insert(handle, purpose);
            return;
        }
        let success = answer.as_ref().is_none_or(|m| m.code.class() == 2);
        let current = current_app_state(view.system);
        match purpose {
            Purpose::Hello => {
                // The handshake that follows ends in the system checking the connection.
                self.on_hello_acked(now, view, fx);
                return;
            }
            Purpose::SystemDescribe => {
                let next = self
                    .socket
                    .as_mut()
                    .and_then(|s| s.describe_blocks.pop_front());
                match next {
                    Some(block) if success => {
                        self.send(
                            now,
                            MessageType::Confirmable,
                            true,
                            Body::Describe(block),
                            Purpose::SystemDescribe,
                            fx,
                        );
                    }
                    Some(_) => {
                        if let Some(socket) = self.socket.as_mut() {
                            socket.describe_blocks.clear();
                        }
                    }
                    None if success => {
                        if let Some(s) = view.retained.session.as_mut() {
                            s.app_state.system_describe_crc = current.system_describe_crc;
                        }
                    }
                    None => {}
                }
            }
            Purpose::AppDescribe if success => {
                if let Some(s) = view.retained.session.as_mut() {
                    s.app_state.app_describe_crc = current.app_describe_crc;
                }
            }
            Purpose::Subscribe => {
                if let Some(socket) = self.socket.as_mut() {
                    if !success {
                        socket.subscriptions.clear();
                    } else if socket.subscriptions.contains(&handle) {
                        socket.subscriptions.retain(|h| *h != handle);
                        if socket.subscriptions.is_empty() {
                            if let Some(s) = view.retained.session.as_mut() {
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
                        log(fx, format!("time response {} not understood", m.code));
                    }
                }
                view.retained.rtc_valid = true;
            }
            Purpose::Ota(response) => {
                // The system checks the connection after the OTA link acted on it.
                fx.push(CloudEffect::OtaAnswered(response));
                return;
            }
            _ => {}
        }
        fx.extend(self.check_connected());
    }

    /// Sends a CON or NON the device originates; `token` gives it a fresh 1-byte token.
    fn send(
        &mut self,
        now: Duration,
        kind: MessageType,
        token: bool,
        body: Body,
        purpose: Purpose,
        fx: &mut Effects,
    ) -> Option<RequestHandle> {
        let socket = self.socket.as_mut()?;
        let token = if token {
            socket.link.coap().next_token()
        } else {
            Vec::new()
        };
        let Some(msg) = message(kind, token, body) else {
            log(fx, "could not encode a message");
            return None;
        };
        let answerable = kind == MessageType::Confirmable || !msg.token.is_empty();
        match socket.link.send(now, msg) {
            Ok(handle) => {
                if answerable {
                    socket.requests.insert(handle, purpose);
                }
                Some(handle)
            }
            Err(e) => {
                log(fx, format!("could not send a message: {e}"));
                None
            }
        }
    }

    /// Publishes an event (CON, private, TTL 60) if the connection is up far enough.
    pub(super) fn publish(&mut self, now: Duration, name: &str, data: &str) -> Effects {
        let mut fx = Effects::new();
        if !self.can_send() {
            return fx;
        }
        let sent = self
            .send(
                now,
                MessageType::Confirmable,
                false,
                Body::Event(Event::new(name, data.as_bytes().to_vec())),
                Purpose::Event,
                &mut fx,
            )
            .is_some();
        if sent {
            fx.push(CloudEffect::Trace(DeviceEvent::Published {
                name: name.to_string(),
                data: data.to_string(),
            }));
        }
        fx
    }

    /// An UpdateAck (NON POST `A`, never answered); nothing without a socket.
    pub(super) fn send_update_ack(&mut self, now: Duration, ack: UpdateAck) -> Effects {
        let mut fx = Effects::new();
        self.send(
            now,
            MessageType::NonConfirmable,
            false,
            Body::UpdateAck(ack),
            Purpose::UpdateAck,
            &mut fx,
        );
        fx
    }

    // ----- keepalive ---------------------------------------------------------------------

    /// The pinger (reference 1.9): a ping after the keepalive interval of silence, a
    /// disconnect 30 s after an unanswered ping; neither while a transfer runs.
    fn pinger(&mut self, now: Duration, ota_running: bool, fx: &mut Effects) {
        if ota_running {
            return;
        }
        let keepalive = self.keepalive;
        let Some(socket) = self.socket.as_mut() else {
            return;
        };
        if socket.phase != Phase::Established {
            return;
        }
        let silent = now.saturating_sub(socket.last_message_at);
        if socket.expecting_ping_ack {
            if silent >= PING_TIMEOUT {
                fx.push(CloudEffect::Lost {
                    reason: DisconnectReason::PingTimeout,
                    keep_session: true,
                });
            }
        } else if silent >= keepalive {
            socket.expecting_ping_ack = true;
            socket.last_message_at = now;
            self.send(
                now,
                MessageType::Confirmable,
                false,
                Body::Ping,
                Purpose::Ping,
                fx,
            );
        }
    }

    /// `ProtocolCommands::PING` (after a sleep that kept the network).
    pub(super) fn force_ping(&mut self, now: Duration) -> Effects {
        let mut fx = Effects::new();
        let Some(socket) = self.socket.as_mut() else {
            return fx;
        };
        if socket.phase != Phase::Established || socket.expecting_ping_ack {
            return fx;
        }
        socket.expecting_ping_ack = true;
        socket.last_message_at = now;
        self.send(
            now,
            MessageType::Confirmable,
            false,
            Body::Ping,
            Purpose::Ping,
            &mut fx,
        );
        fx
    }

    // ----- graceful disconnects ----------------------------------------------------------

    /// `None` when there is no connection that is up to close gracefully.
    fn start_goodbye(
        &mut self,
        now: Duration,
        goodbye: Goodbye,
        then: AfterClose,
    ) -> Option<Effects> {
        if !self.is_connected() || self.is_closing() {
            return None;
        }
        let mut fx = Effects::new();
        self.send(
            now,
            MessageType::Confirmable,
            false,
            Body::Goodbye(goodbye),
            Purpose::Goodbye,
            &mut fx,
        );
        if let Some(socket) = self.socket.as_mut() {
            socket.phase = Phase::Closing {
                deadline: now.saturating_add(DISCONNECT_TIMEOUT),
                then,
            };
        }
        self.drain_link();
        Some(fx)
    }

    /// Goodbye (cloud reason 5 "system reset" with the reset reason), then the reset.
    pub(super) fn start_goodbye_reset(&mut self, now: Duration, reason: u32) -> Option<Effects> {
        let goodbye = Goodbye {
            cloud_reason: Some(protocol::message::CloudDisconnectReason::SYSTEM_RESET),
            reset_reason: Some(reason),
            ..Goodbye::default()
        };
        self.start_goodbye(now, goodbye, AfterClose::Reset(reason))
    }

    /// Goodbye (cloud reason 6 "sleep" with the duration in seconds), then sleep.
    pub(super) fn start_goodbye_sleep(
        &mut self,
        now: Duration,
        config: SleepConfig,
    ) -> Option<Effects> {
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
    pub(super) fn start_goodbye_disconnect(&mut self, now: Duration) -> Option<Effects> {
        let goodbye = Goodbye {
            cloud_reason: Some(protocol::message::CloudDisconnectReason::USER),
            ..Goodbye::default()
        };
        self.start_goodbye(now, goodbye, AfterClose::Disconnect)
    }

    /// Ends a graceful disconnect once every CON is acknowledged or the wait timed out.
    pub(super) fn check_closing(&self, now: Duration) -> Effects {
        let Some(socket) = self.socket.as_ref() else {
            return Effects::new();
        };
        let Phase::Closing { deadline, then } = socket.phase else {
            return Effects::new();
        };
        if socket.link.unacknowledged() > 0 && now < deadline {
            return Effects::new();
        }
        vec![CloudEffect::Closed(then)]
    }

    // ----- requests from the cloud -------------------------------------------------------

    fn on_request(
        &mut self,
        now: Duration,
        request: IncomingRequest,
        message: Message,
        view: DeviceView<'_>,
        fx: &mut Effects,
    ) {
        let path = first_path(&message).map(<[u8]>::to_vec);
        let parsed = ParticleMessage::from_coap(&message).map(|m| m.body);
        if message.code == Code::POST && matches!(path.as_deref(), Some(b"S" | b"C" | b"F")) {
            fx.push(CloudEffect::OtaRequest {
                request,
                message,
                parsed,
            });
            return;
        }
        let body = match parsed {
            Ok(body) => body,
            Err(e) => {
                fx.push(CloudEffect::Malformed);
                log(
                    fx,
                    format!("refused a malformed {} request: {e}", message.code),
                );
                fx.extend(self.respond(
                    now,
                    &request,
                    response(Code::BAD_REQUEST, Vec::new(), Vec::new()),
                    None,
                ));
                return;
            }
        };
        match body {
            Body::Event(event) => {
                fx.extend(self.accept(now, &request));
                fx.push(CloudEffect::Event(event));
            }
            Body::Hello(_) => fx.extend(self.accept(now, &request)),
            Body::DescribeRequest(describe) => {
                self.on_describe_request(now, &request, describe, view.system, fx)
            }
            Body::Other(other) if other.code == Code::PUT && path.as_deref() == Some(b"k") => {
                fx.extend(self.accept(now, &request));
                if other.payload.first() == Some(&1) {
                    fx.push(CloudEffect::Lost {
                        reason: DisconnectReason::SessionDiscarded,
                        keep_session: false,
                    });
                }
            }
            other => {
                log(
                    fx,
                    format!(
                        "no handler for a {} {} request ({:?})",
                        message.kind,
                        message.code,
                        path.map(|p| String::from_utf8_lossy(&p).into_owned())
                    ),
                );
                if !matches!(other, Body::Ping) {
                    fx.extend(self.respond(
                        now,
                        &request,
                        response(Code::NOT_FOUND, Vec::new(), Vec::new()),
                        None,
                    ));
                }
            }
        }
    }

    /// An empty ACK for a CON request (nothing for a NON).
    pub(super) fn accept(&mut self, now: Duration, request: &IncomingRequest) -> Effects {
        let mut fx = Effects::new();
        if let Some(socket) = self.socket.as_mut() {
            if let Err(e) = socket.link.coap().accept(now, request) {
                log(&mut fx, format!("could not acknowledge: {e}"));
            }
            socket.link.flush_now(now);
        }
        fx
    }

    /// Answers a request: piggy-backed if not yet acknowledged, else separately. The ACK of a
    /// separate response to an OTA request comes back as [`CloudEffect::OtaAnswered`]`(ota)`.
    pub(super) fn respond(
        &mut self,
        now: Duration,
        request: &IncomingRequest,
        message: Message,
        ota: Option<OtaResponse>,
    ) -> Effects {
        let mut fx = Effects::new();
        if let (Some(handle), Some(kind)) =
            (self.respond_inner(now, request, message, &mut fx), ota)
        {
            if let Some(socket) = self.socket.as_mut() {
                socket.requests.insert(handle, Purpose::Ota(kind));
            }
        }
        fx
    }

    /// Answers a request; the separate response's handle, if it is one.
    fn respond_inner(
        &mut self,
        now: Duration,
        request: &IncomingRequest,
        message: Message,
        fx: &mut Effects,
    ) -> Option<RequestHandle> {
        let socket = self.socket.as_mut()?;
        if request.kind != MessageType::Confirmable && request.token.is_empty() {
            return None; // a NON without token cannot be answered
        }
        let result = socket.link.coap().respond(now, request, message);
        socket.link.flush_now(now);
        match result {
            Ok(handle) => handle,
            Err(e) => {
                log(fx, format!("could not respond: {e}"));
                None
            }
        }
    }

    /// RST for a request (a chunk nobody expected, a bad chunk).
    pub(super) fn reject(&mut self, now: Duration, request: &IncomingRequest) -> Effects {
        let mut fx = Effects::new();
        if let Some(socket) = self.socket.as_mut() {
            let result = socket.link.coap().reject(now, request);
            socket.link.flush_now(now);
            if let Err(e) = result {
                log(&mut fx, format!("could not reset: {e}"));
            }
        }
        fx
    }

    fn on_describe_request(
        &mut self,
        now: Duration,
        request: &IncomingRequest,
        describe: DescribeRequest,
        system: Option<&SystemInfo>,
        fx: &mut Effects,
    ) {
        fx.extend(self.accept(now, request));
        let (content_format, payload) = if describe.flags.0 & DescribeFlags::SYSTEM.0 != 0 {
            let payload = system.map(|s| s.describe.emit()).unwrap_or_default();
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
                    self.respond_inner(now, request, response(r.code, r.options, r.payload), fx)
                {
                    if let Some(socket) = self.socket.as_mut() {
                        socket.requests.insert(handle, Purpose::DescribeResponse);
                    }
                }
            }
            Err(e) => log(fx, format!("could not encode a describe: {e}")),
        }
    }
}
