//! A minimal scripted device for driving the [`Cloud`] in tests: a DTLS client, a CoAP endpoint
//! and catalogue messages, linked to the cloud in virtual time with zero latency. The tests say
//! what the device sends and look at what it received; nothing here is a Device OS model.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use harness::cloud::{Cloud, CloudConfig, CloudEvent, Publisher, StreamEvent};
use p256::ecdsa::{SigningKey, VerifyingKey};
use protocol::coap::{
    Endpoint, EndpointConfig, EndpointEvent, IncomingRequest, Message, MessageType, RequestHandle,
};
use protocol::dtls::{Client, ClientConfig, Event as DtlsEvent, SessionState};
use protocol::message::{
    ApplicationDescribe, Body, Describe, DescribeFlags, Event, FirmwareModule, Hello, HelloFlags,
    ParticleMessage, Response, Subscribe, SystemDescribe, UpdateAck, CONTENT_FORMAT_OCTET_STREAM,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Hello flags of Device OS 6.2.0 on Gen3 (0x00F6, reference 1.7).
pub const GEN3_FLAGS: u16 = 0x00F6;

pub fn hello(id: [u8; 12], platform_id: u16, product_version: u16, flags: u16) -> Hello {
    Hello {
        product_id: platform_id,
        product_version,
        flags: HelloFlags(flags),
        platform_id,
        reserved: 0,
        device_id: id,
        system_version: 6200,
        max_message_size: 1152,
        max_binary_size: 1_536_000,
        ota_chunk_size: 512,
    }
}

/// A system describe with one user part whose hash is `app_hash`.
pub fn system_describe(app_hash: [u8; 32]) -> SystemDescribe {
    SystemDescribe {
        firmware_modules: vec![
            FirmwareModule {
                r#type: 4,
                index: 1,
                version: 6200,
                ..Default::default()
            },
            FirmwareModule {
                r#type: 5,
                index: 2,
                version: 6,
                hash: Some(app_hash.to_vec()),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// Decides whether a message from the cloud is lost on the way (true = drop).
pub type DropFilter = Box<dyn FnMut(&ParticleMessage) -> bool>;

/// A scripted device.
pub struct TestDevice {
    pub id: [u8; 12],
    pub key: SigningKey,
    pub addr: SocketAddr,
    server_key: VerifyingKey,
    rng: ChaCha8Rng,
    pub dtls: Option<Client<ChaCha8Rng>>,
    pub coap: Endpoint<ChaCha8Rng>,
    pub connected: bool,
    /// Datagrams in both directions are lost while the link is down.
    pub link_up: bool,
    /// Requests from the cloud the test has not taken yet.
    pub inbox: VecDeque<(IncomingRequest, ParticleMessage)>,
    /// Every message from the cloud, in arrival order (after `drop_incoming`).
    pub received: Vec<ParticleMessage>,
    pub responses: Vec<(RequestHandle, Message)>,
    pub acknowledged: Vec<RequestHandle>,
    pub resets: Vec<RequestHandle>,
    pub timed_out: Vec<RequestHandle>,
    pub closed: Vec<String>,
    /// Drops a message from the cloud before the endpoint sees it (returns true to drop).
    pub drop_incoming: Option<DropFilter>,
    /// ACK incoming CON events at once (as Device OS does).
    pub auto_accept_events: bool,
    /// The OTA receiver, when the test lets the device handle OTA by itself.
    pub ota: Option<AutoOta>,
    /// The system describe the device answers the cloud's describe requests with (set by
    /// the last [`World::post_connect`]); `None`: requests go to the inbox.
    pub describe: Option<SystemDescribe>,
}

impl TestDevice {
    pub fn new(seed: u64, id: [u8; 12], server_key: VerifyingKey, address: SocketAddr) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let key = SigningKey::random(&mut rng);
        let coap = Self::endpoint(&mut rng);
        TestDevice {
            id,
            key,
            addr: address,
            server_key,
            rng,
            dtls: None,
            coap,
            connected: false,
            link_up: true,
            inbox: VecDeque::new(),
            received: Vec::new(),
            responses: Vec::new(),
            acknowledged: Vec::new(),
            resets: Vec::new(),
            timed_out: Vec::new(),
            closed: Vec::new(),
            drop_incoming: None,
            auto_accept_events: true,
            ota: None,
            describe: None,
        }
    }

    fn endpoint(rng: &mut ChaCha8Rng) -> Endpoint<ChaCha8Rng> {
        let config = EndpointConfig {
            last_message_id: Some(0),
            ..EndpointConfig::default()
        };
        Endpoint::new(config, ChaCha8Rng::seed_from_u64(rng.next_u64()))
    }

    pub fn public_key(&self) -> VerifyingKey {
        *self.key.verifying_key()
    }

    fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.key.clone(), self.server_key)
    }

    /// Starts a full handshake.
    pub fn connect(&mut self, now: Duration) {
        let rng = ChaCha8Rng::seed_from_u64(self.rng.next_u64());
        self.dtls = Some(Client::connect(self.client_config(), rng, now));
        self.coap = Self::endpoint(&mut self.rng);
        self.connected = false;
    }

    /// What the device would keep in retained RAM.
    pub fn export_session(&self) -> Option<SessionState> {
        self.dtls.as_ref()?.export_session()
    }

    /// Handshake-less resumption (reference 1.4) from `address`.
    pub fn resume(&mut self, now: Duration, session: &SessionState, address: SocketAddr) {
        let rng = ChaCha8Rng::seed_from_u64(self.rng.next_u64());
        self.dtls = Some(Client::resume(self.client_config(), session, rng, now));
        self.coap = Self::endpoint(&mut self.rng);
        self.addr = address;
        self.connected = false;
        self.drain_dtls(now);
    }

    pub fn handle_datagram(&mut self, now: Duration, datagram: &[u8]) {
        if let Some(c) = self.dtls.as_mut() {
            c.handle_datagram(now, datagram);
        }
        self.drain_dtls(now);
    }

    pub fn handle_timeout(&mut self, now: Duration) {
        if let Some(c) = self.dtls.as_mut() {
            c.handle_timeout(now);
        }
        self.coap.handle_timeout(now);
        self.drain_dtls(now);
        self.drain_coap(now);
        if let Some(ota) = self.ota.as_mut() {
            ota.on_timeout(now, &mut self.coap);
        }
    }

    pub fn poll_timeout(&self) -> Option<Duration> {
        let a = self.dtls.as_ref().and_then(|c| c.poll_timeout());
        let b = self.coap.poll_timeout();
        let c = self.ota.as_ref().and_then(|o| o.deadline());
        [a, b, c].into_iter().flatten().min()
    }

    pub fn poll_transmit(&mut self, now: Duration) -> Option<Vec<u8>> {
        let client = self.dtls.as_mut()?;
        if client.is_connected() {
            while let Some(bytes) = self.coap.poll_transmit() {
                client
                    .send_application_data(now, &bytes)
                    .expect("test device sends small messages");
            }
        }
        client.poll_transmit()
    }

    fn drain_dtls(&mut self, now: Duration) {
        let mut data = Vec::new();
        if let Some(c) = self.dtls.as_mut() {
            while let Some(event) = c.poll_event() {
                match event {
                    DtlsEvent::Connected => self.connected = true,
                    DtlsEvent::ApplicationData(d) => data.push(d),
                    DtlsEvent::Closed(reason) => {
                        self.connected = false;
                        self.closed.push(reason.to_string());
                    }
                }
            }
        }
        for d in data {
            self.on_application_data(now, &d);
        }
    }

    fn on_application_data(&mut self, now: Duration, data: &[u8]) {
        let parsed = ParticleMessage::parse(data).expect("the cloud sends valid messages");
        if let Some(filter) = self.drop_incoming.as_mut() {
            if filter(&parsed) {
                return;
            }
        }
        self.received.push(parsed);
        self.coap
            .handle_message(now, data)
            .expect("the cloud sends valid CoAP");
        self.drain_coap(now);
    }

    fn drain_coap(&mut self, now: Duration) {
        while let Some(event) = self.coap.poll_event() {
            match event {
                EndpointEvent::Request { request, message } => {
                    let parsed = ParticleMessage::from_coap(&message)
                        .expect("the cloud sends catalogue messages");
                    if self.auto_accept_events && matches!(parsed.body, Body::Event(_)) {
                        self.coap.accept(now, &request).expect("accept event");
                    }
                    if let (Body::DescribeRequest(_), Some(describe)) =
                        (&parsed.body, self.describe.as_ref())
                    {
                        let mut reply = protocol::coap::Message::new(
                            MessageType::Acknowledgement,
                            protocol::coap::Code::CONTENT,
                            0,
                        );
                        reply.payload = describe.emit();
                        self.coap
                            .respond(now, &request, reply)
                            .expect("answer a describe request");
                        continue;
                    }
                    if let Some(ota) = self.ota.as_mut() {
                        if ota.handle(now, &mut self.coap, &request, &parsed) {
                            continue;
                        }
                    }
                    self.inbox.push_back((request, parsed));
                }
                EndpointEvent::Response { handle, message } => {
                    self.responses.push((handle, message))
                }
                EndpointEvent::Acknowledged { handle } => self.acknowledged.push(handle),
                EndpointEvent::Reset { handle } => self.resets.push(handle),
                EndpointEvent::TimedOut { handle } => self.timed_out.push(handle),
                EndpointEvent::Unmatched { .. } => {}
            }
        }
    }

    /// Sends a catalogue message.
    pub fn send(
        &mut self,
        now: Duration,
        kind: MessageType,
        token: Vec<u8>,
        body: Body,
    ) -> RequestHandle {
        let message = ParticleMessage {
            kind,
            message_id: 0,
            token,
            body,
        }
        .to_coap()
        .expect("test message encodes");
        self.coap.send(now, message).expect("test message sends")
    }

    pub fn send_hello(&mut self, now: Duration, hello: Hello) -> RequestHandle {
        self.send(
            now,
            MessageType::Confirmable,
            Vec::new(),
            Body::Hello(hello),
        )
    }

    pub fn send_system_describe(
        &mut self,
        now: Duration,
        describe: &SystemDescribe,
    ) -> Vec<RequestHandle> {
        let blocks = Describe::blocks(
            DescribeFlags::SYSTEM,
            Some(CONTENT_FORMAT_OCTET_STREAM),
            &describe.emit(),
            1152,
        );
        blocks
            .into_iter()
            .map(|b| {
                let token = self.coap.next_token();
                self.send(now, MessageType::Confirmable, token, Body::Describe(b))
            })
            .collect()
    }

    pub fn send_time_request(&mut self, now: Duration) -> RequestHandle {
        let token = self.coap.next_token();
        self.send(now, MessageType::Confirmable, token, Body::TimeRequest)
    }

    pub fn publish(&mut self, now: Duration, name: &str, data: &str) -> RequestHandle {
        self.send(
            now,
            MessageType::Confirmable,
            Vec::new(),
            Body::Event(Event::new(name, data.as_bytes().to_vec())),
        )
    }

    pub fn subscribe(&mut self, now: Duration, filter: &str) -> RequestHandle {
        self.send(
            now,
            MessageType::Confirmable,
            Vec::new(),
            Body::Subscribe(Subscribe::new(filter)),
        )
    }

    pub fn send_ack(&mut self, now: Duration, cumulative: u32, held: &[u32]) {
        self.send(
            now,
            MessageType::NonConfirmable,
            Vec::new(),
            Body::UpdateAck(UpdateAck::from_received(cumulative, held.iter().copied())),
        );
    }

    /// Takes the first request of the inbox matching `pred`.
    pub fn take(
        &mut self,
        pred: impl Fn(&ParticleMessage) -> bool,
    ) -> Option<(IncomingRequest, ParticleMessage)> {
        let index = self.inbox.iter().position(|(_, m)| pred(m))?;
        self.inbox.remove(index)
    }

    /// Answers a CON request with an empty ACK, then a separate response; returns the handle
    /// of the separate response (the cloud must ACK it).
    pub fn respond_separately(
        &mut self,
        now: Duration,
        request: &IncomingRequest,
        response: Response,
    ) -> RequestHandle {
        self.coap.accept(now, request).expect("accept");
        let mut message = Message::new(MessageType::Confirmable, response.code, 0);
        message.options = response.options;
        message.payload = response.payload;
        self.coap
            .respond(now, request, message)
            .expect("respond")
            .expect("a separate response")
    }

    /// Indices and data of the UpdateChunks received, in order.
    pub fn chunks(&self) -> Vec<(u32, Vec<u8>)> {
        self.received
            .iter()
            .filter_map(|m| match &m.body {
                Body::UpdateChunk(c) => Some((c.index, c.data.clone())),
                _ => None,
            })
            .collect()
    }
}

/// A small OTA v3 receiver for tests that need whole transfers: accepts UpdateStart with the
/// given window and resume offset, acks every chunk with cumulative + bitmap, answers
/// UpdateFinish with 2.04 stats (or a diagnostic error).
pub struct AutoOta {
    pub window: u32,
    pub resume_offset: u32,
    /// Answer UpdateFinish with this diagnostic instead of 2.04.
    pub finish_error: Option<(i32, String)>,
    pub file: Vec<u8>,
    pub file_size: u32,
    pub chunk_size: u32,
    pub held: std::collections::BTreeSet<u32>,
    pub cumulative: u32,
    pub chunk_count: u32,
    pub finished: bool,
    pub duplicates: u32,
    pub starts: u32,
    ack_due: Option<Duration>,
}

impl AutoOta {
    pub fn new(window: u32, resume_offset: u32) -> AutoOta {
        AutoOta {
            window,
            resume_offset,
            finish_error: None,
            file: Vec::new(),
            file_size: 0,
            chunk_size: 0,
            held: Default::default(),
            cumulative: 0,
            chunk_count: 0,
            finished: false,
            duplicates: 0,
            starts: 0,
            ack_due: None,
        }
    }

    fn deadline(&self) -> Option<Duration> {
        self.ack_due
    }

    fn send_ack(&mut self, coap: &mut Endpoint<ChaCha8Rng>, now: Duration) {
        self.ack_due = None;
        let ack = UpdateAck::from_received(self.cumulative, self.held.iter().copied());
        let message = ParticleMessage {
            kind: MessageType::NonConfirmable,
            message_id: 0,
            token: Vec::new(),
            body: Body::UpdateAck(ack),
        }
        .to_coap()
        .expect("ack encodes");
        coap.send(now, message).expect("ack sends");
    }

    fn on_timeout(&mut self, now: Duration, coap: &mut Endpoint<ChaCha8Rng>) {
        if self.ack_due.is_some_and(|t| now >= t) {
            self.send_ack(coap, now);
        }
    }

    /// Handles OTA requests; returns false for anything else.
    fn handle(
        &mut self,
        now: Duration,
        coap: &mut Endpoint<ChaCha8Rng>,
        request: &IncomingRequest,
        message: &ParticleMessage,
    ) -> bool {
        match &message.body {
            Body::UpdateStart(start) => {
                self.starts += 1;
                self.file_size = start.file_size;
                self.chunk_size = start.chunk_size;
                self.file.resize(start.file_size as usize, 0);
                self.chunk_count = start.chunk_count(self.resume_offset);
                self.held.clear();
                self.cumulative = 0;
                self.finished = false;
                coap.accept(now, request).expect("accept start");
                let response = protocol::message::UpdateStartResponse {
                    window_size: self.window,
                    resume_offset: self.resume_offset,
                }
                .emit();
                let mut m = Message::new(MessageType::Confirmable, response.code, 0);
                m.options = response.options;
                coap.respond(now, request, m).expect("respond start");
                true
            }
            Body::UpdateChunk(chunk) => {
                let index = chunk.index;
                if index <= self.cumulative || self.held.contains(&index) {
                    self.duplicates += 1;
                    self.send_ack(coap, now);
                    return true;
                }
                if index > self.cumulative + self.window {
                    return true;
                }
                let start =
                    self.resume_offset as usize + (index as usize - 1) * self.chunk_size as usize;
                self.file[start..start + chunk.data.len()].copy_from_slice(&chunk.data);
                self.held.insert(index);
                while self.held.remove(&(self.cumulative + 1)) {
                    self.cumulative += 1;
                }
                if !self.held.is_empty() || self.cumulative == self.chunk_count {
                    self.send_ack(coap, now);
                } else {
                    self.ack_due = Some(now + Duration::from_millis(200));
                }
                true
            }
            Body::UpdateFinish(_) => {
                coap.accept(now, request).expect("accept finish");
                let response = match &self.finish_error {
                    Some((code, text)) => Response {
                        code: protocol::message::coap_code_for_system_error(*code),
                        options: Vec::new(),
                        payload: protocol::message::Diagnostic::new(*code, text.clone()).emit(1024),
                    },
                    None => protocol::message::FinishStats {
                        recv_chunks: self.chunk_count,
                        dup_chunks: self.duplicates,
                        ..Default::default()
                    }
                    .response(),
                };
                let mut m = Message::new(MessageType::Confirmable, response.code, 0);
                m.payload = response.payload;
                coap.respond(now, request, m).expect("respond finish");
                self.finished = true;
                true
            }
            _ => false,
        }
    }
}

/// A cloud and scripted devices on a zero-latency link, in virtual time.
pub struct World {
    pub now: Duration,
    pub cloud: Cloud,
    pub devices: Vec<TestDevice>,
    pub events: Vec<CloudEvent>,
    pub server_key: SigningKey,
}

pub fn device_id(i: usize) -> [u8; 12] {
    let mut id = [0xd0; 12];
    id[11] = i as u8;
    id
}

impl World {
    /// A cloud with `n` registered devices (not connected).
    pub fn new(seed: u64, n: usize) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let server_key = SigningKey::random(&mut rng);
        World::with_config(seed, n, CloudConfig::new(server_key))
    }

    pub fn with_config(seed: u64, n: usize, config: CloudConfig) -> World {
        let server_key = config.server_key.clone();
        let mut cloud = Cloud::new(config, seed);
        let devices: Vec<TestDevice> = (0..n)
            .map(|i| {
                TestDevice::new(
                    seed.wrapping_mul(1000).wrapping_add(i as u64 + 1),
                    device_id(i),
                    *server_key.verifying_key(),
                    addr(&format!("10.0.1.{}:40000", i + 1)),
                )
            })
            .collect();
        for d in &devices {
            cloud.register_device(d.id, d.public_key());
        }
        World {
            now: Duration::ZERO,
            cloud,
            devices,
            events: Vec::new(),
            server_key,
        }
    }

    pub fn device(&mut self, i: usize) -> &mut TestDevice {
        &mut self.devices[i]
    }

    /// Moves datagrams until nobody has anything to send.
    pub fn pump(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            while let Some((to, bytes)) = self.cloud.poll_transmit() {
                moved = true;
                if let Some(d) = self.devices.iter_mut().find(|d| d.addr == to) {
                    if d.link_up {
                        d.handle_datagram(self.now, &bytes);
                    }
                }
            }
            for i in 0..self.devices.len() {
                while let Some(bytes) = self.devices[i].poll_transmit(self.now) {
                    moved = true;
                    if self.devices[i].link_up {
                        let from = self.devices[i].addr;
                        self.cloud.handle_datagram(self.now, from, &bytes);
                    }
                }
            }
            while let Some(e) = self.cloud.poll_event() {
                self.events.push(e);
            }
            if !moved {
                return;
            }
        }
        panic!("the link never went quiet");
    }

    /// Runs every timer until `now + dt`.
    pub fn advance(&mut self, dt: Duration) {
        let target = self.now + dt;
        for _ in 0..1_000_000 {
            self.pump();
            let next = std::iter::once(self.cloud.poll_timeout())
                .chain(self.devices.iter().map(|d| d.poll_timeout()))
                .flatten()
                .min();
            match next {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    self.cloud.handle_timeout(self.now);
                    for d in &mut self.devices {
                        d.handle_timeout(self.now);
                    }
                }
                _ => {
                    self.now = target;
                    self.cloud.handle_timeout(self.now);
                    for d in &mut self.devices {
                        d.handle_timeout(self.now);
                    }
                    self.pump();
                    return;
                }
            }
        }
        panic!("timers never settled");
    }

    /// Full handshake of device `i`.
    pub fn handshake(&mut self, i: usize) {
        let now = self.now;
        self.devices[i].connect(now);
        self.pump();
        assert!(self.devices[i].connected, "device {i} did not connect");
    }

    /// Handshake, then the messages Device OS sends after it (reference 1.8): Hello, system
    /// describe, time, last_reset, updates enabled / forced, subscriptions.
    pub fn connect(&mut self, i: usize, hello: Hello, describe: &SystemDescribe) {
        self.handshake(i);
        self.post_connect(i, hello, describe);
    }

    pub fn post_connect(&mut self, i: usize, hello: Hello, describe: &SystemDescribe) {
        let now = self.now;
        let d = &mut self.devices[i];
        d.describe = Some(describe.clone());
        d.send_hello(now, hello);
        d.send_system_describe(now, describe);
        d.send_time_request(now);
        d.publish(now, "spark/device/last_reset", "pin_reset");
        d.publish(now, "particle/device/updates/enabled", "true");
        d.publish(now, "particle/device/updates/forced", "false");
        let app = ApplicationDescribe {
            functions: vec!["reboot".into()],
            variables: vec![("version".into(), 2)],
        };
        let token = d.coap.next_token();
        d.send(
            now,
            MessageType::Confirmable,
            token,
            Body::Describe(Describe {
                flags: DescribeFlags::APPLICATION,
                content_format: None,
                block1: None,
                payload: app.emit(),
            }),
        );
        d.subscribe(now, "particle");
        d.subscribe(now, "spark");
        self.pump();
    }

    /// The stream events so far, as (name, data).
    pub fn stream(&self) -> Vec<(String, String)> {
        self.stream_events()
            .map(|e| (e.name.clone(), e.data.clone()))
            .collect()
    }

    pub fn stream_events(&self) -> impl Iterator<Item = &StreamEvent> {
        self.events.iter().filter_map(|e| match e {
            CloudEvent::Stream(s) => Some(s),
            _ => None,
        })
    }

    /// Stream events the cloud published, as (name, data).
    pub fn cloud_stream(&self) -> Vec<(String, String)> {
        self.stream_events()
            .filter(|e| e.publisher == Publisher::Cloud)
            .map(|e| (e.name.clone(), e.data.clone()))
            .collect()
    }
}

pub fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}
