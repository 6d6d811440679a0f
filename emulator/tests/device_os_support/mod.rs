//! Shared by the `device_os_*` fidelity tests: a minimal cloud (the protocol crate's DTLS
//! server and a CoAP endpoint per association, acknowledging everything and answering the
//! time) and a simulator that moves datagrams between it and one [`DeviceOs`] in virtual time,
//! recording every CoAP message both ways.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use emulator::board::Board;
use emulator::device::Device;
use emulator::firmware::{FirmwareSet, ModuleSizes, Versions};
use emulator::os::{AppBehaviour, DeviceEvent, DeviceOs, Identity};
use protocol::coap::{Code, Endpoint, EndpointConfig, EndpointEvent, Message, MessageType};
use protocol::dtls::keys::signing_key_from_der;
use protocol::dtls::{ConnectionHandle, Server, ServerConfig, ServerEvent};
use protocol::message::{Body, Event, ParticleMessage, Response, TimeResponse};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// The wire vectors of the captured Device OS 6.2.0 session.
pub fn vectors(name: &str) -> String {
    format!(
        "{}/../protocol/tests/vectors/wire/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

pub fn jsonl(name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(vectors(name))
        .expect("wire vectors")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// The captured device's identity: its id and key, and the capture's server key.
pub fn capture_identity() -> (Identity, p256::ecdsa::SigningKey) {
    let read = |f: &str| std::fs::read(vectors(&format!("keys/{f}"))).expect("key file");
    let device_key = signing_key_from_der(&read("device_private_key.der")).expect("device key");
    let server_key = signing_key_from_der(&read("server_private_key.der")).expect("server key");
    let id_hex = std::fs::read_to_string(vectors("keys/device_id.txt")).expect("device id");
    let id = hex::decode(id_hex.trim()).expect("hex id");
    let identity = Identity {
        device_id: id.try_into().expect("12 bytes"),
        key: device_key,
        server_key: *server_key.verifying_key(),
    };
    (identity, server_key)
}

pub fn small_sizes() -> ModuleSizes {
    ModuleSizes {
        user_part: 8 * 1024,
        system_part: 12 * 1024,
        bootloader: 6 * 1024,
        other: 4096,
    }
}

/// A board provisioned with Device OS 6.2.0 and the baseline application (product version 3).
pub fn provisioned(board: &str, versions: &Versions) -> Device {
    let b = Board::builtin(board).expect("built-in board");
    FirmwareSet::new(&b, small_sizes(), 11)
        .provision(versions)
        .expect("provision")
        .0
}

/// Which way a message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    DeviceToCloud,
    CloudToDevice,
}

/// One CoAP message seen by the cloud (decrypted) or sent by it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Duration,
    pub dir: Dir,
    pub connection: ConnectionHandle,
    pub message: Message,
}

impl Seen {
    pub fn particle(&self) -> Option<ParticleMessage> {
        ParticleMessage::from_coap(&self.message).ok()
    }

    /// The name of an event, if this is one.
    pub fn event(&self) -> Option<(String, String)> {
        match self.particle()?.body {
            Body::Event(e) => Some((e.name, String::from_utf8_lossy(&e.data).into_owned())),
            _ => None,
        }
    }
}

/// The test cloud.
pub struct TestCloud {
    pub server: Server<ChaCha20Rng>,
    pub endpoints: HashMap<ConnectionHandle, Endpoint<ChaCha20Rng>>,
    pub seen: Vec<Seen>,
    pub server_events: Vec<ServerEvent>,
    /// Answer requests piggy-backed with 2.04 / 2.05 as the capture's cloud does; otherwise
    /// with empty ACKs (and the time in a piggy-backed 2.05 all the same).
    pub piggyback: bool,
    pub unix_time: u32,
    /// Requests the cloud received, not answered automatically (OTA tests answer them).
    pub requests: Vec<(ConnectionHandle, protocol::coap::IncomingRequest, Message)>,
    /// Responses to the cloud's own requests.
    pub responses: Vec<(ConnectionHandle, EndpointEvent)>,
    /// Answer the next confirmable request with RST.
    pub reset_next_request: bool,
    seed: u64,
}

impl TestCloud {
    pub fn new(server_key: p256::ecdsa::SigningKey, device_key: p256::ecdsa::VerifyingKey) -> Self {
        TestCloud {
            server: Server::new(
                ServerConfig::new(server_key, vec![device_key]),
                ChaCha20Rng::seed_from_u64(99),
            ),
            endpoints: HashMap::new(),
            seen: Vec::new(),
            server_events: Vec::new(),
            piggyback: true,
            unix_time: 1_733_000_000,
            requests: Vec::new(),
            responses: Vec::new(),
            reset_next_request: false,
            seed: 1000,
        }
    }

    fn endpoint(&mut self, h: ConnectionHandle) -> &mut Endpoint<ChaCha20Rng> {
        let seed = self.seed;
        self.endpoints.entry(h).or_insert_with(|| {
            Endpoint::new(
                EndpointConfig {
                    last_message_id: Some(0x01FF),
                    last_token: Some(0x30),
                    ..EndpointConfig::default()
                },
                ChaCha20Rng::seed_from_u64(seed),
            )
        })
    }

    /// The current connection (the last one that completed a handshake).
    pub fn connection(&self) -> Option<ConnectionHandle> {
        self.server.connections().last().copied()
    }

    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, datagram: &[u8]) {
        self.server.handle_datagram(now, from, datagram);
        self.pump(now);
    }

    pub fn handle_timeout(&mut self, now: Duration) {
        self.server.handle_timeout(now);
        let handles: Vec<_> = self.endpoints.keys().copied().collect();
        for h in handles {
            self.endpoint(h).handle_timeout(now);
        }
        self.pump(now);
    }

    pub fn poll_timeout(&self) -> Option<Duration> {
        self.endpoints
            .values()
            .filter_map(|e| e.poll_timeout())
            .chain(self.server.poll_timeout())
            .min()
    }

    fn pump(&mut self, now: Duration) {
        while let Some(event) = self.server.poll_event() {
            if let ServerEvent::ApplicationData { handle, data } = &event {
                let (handle, data) = (*handle, data.clone());
                if let Ok(message) = Message::parse(&data) {
                    self.seen.push(Seen {
                        at: now,
                        dir: Dir::DeviceToCloud,
                        connection: handle,
                        message,
                    });
                }
                let _ = self.endpoint(handle).handle_message(now, &data);
                self.answer(now, handle);
            }
            self.server_events.push(event);
        }
        self.flush(now);
    }

    fn answer(&mut self, now: Duration, h: ConnectionHandle) {
        let piggyback = self.piggyback;
        let time = self.unix_time;
        while let Some(event) = self.endpoint(h).poll_event() {
            match event {
                EndpointEvent::Request { request, message } => {
                    let parsed = ParticleMessage::from_coap(&message).ok().map(|m| m.body);
                    let reply = match parsed {
                        Some(Body::TimeRequest) => Some(
                            TimeResponse {
                                unix_time: Some(time),
                            }
                            .emit(),
                        ),
                        Some(Body::UpdateAck(_)) => None,
                        Some(Body::Subscribe(_)) if piggyback => Some(Response::new(Code::CONTENT)),
                        Some(_) if piggyback => Some(Response::new(Code::CHANGED)),
                        _ => None,
                    };
                    self.requests.push((h, request.clone(), message));
                    if request.kind != MessageType::Confirmable {
                        continue;
                    }
                    if std::mem::take(&mut self.reset_next_request) {
                        let _ = self.endpoint(h).reject(now, &request);
                        continue;
                    }
                    let ep = self.endpoint(h);
                    match reply {
                        Some(r) => {
                            let mut m = Message::new(MessageType::Acknowledgement, r.code, 0);
                            m.options = r.options;
                            m.payload = r.payload;
                            let _ = ep.respond(now, &request, m);
                        }
                        None => {
                            let _ = ep.accept(now, &request);
                        }
                    }
                }
                other => self.responses.push((h, other)),
            }
        }
    }

    /// Seals what the endpoints queued.
    pub fn flush(&mut self, now: Duration) {
        let handles: Vec<_> = self.endpoints.keys().copied().collect();
        for h in handles {
            while let Some(bytes) = self.endpoint(h).poll_transmit() {
                if let Ok(message) = Message::parse(&bytes) {
                    self.seen.push(Seen {
                        at: now,
                        dir: Dir::CloudToDevice,
                        connection: h,
                        message,
                    });
                }
                let _ = self.server.send_application_data(now, h, &bytes);
            }
        }
    }

    /// Sends a message on the current connection (CON or NON, id and token as given or fresh).
    pub fn send(
        &mut self,
        now: Duration,
        mut message: Message,
    ) -> Option<protocol::coap::RequestHandle> {
        let h = self.connection()?;
        if message.kind == MessageType::Confirmable
            && message.token.is_empty()
            && message.code.is_request()
        {
            message.token = self.endpoint(h).next_token();
        }
        let handle = self.endpoint(h).send(now, message).ok();
        self.flush(now);
        handle
    }

    /// Publishes an event to the device (CON, as the cloud sends system events).
    pub fn send_event(&mut self, now: Duration, name: &str, data: &str) {
        let message = ParticleMessage {
            kind: MessageType::Confirmable,
            message_id: 0,
            token: Vec::new(),
            body: Body::Event(Event::new(name, data.as_bytes().to_vec())),
        }
        .to_coap()
        .expect("event");
        let h = self.connection().expect("connected");
        let _ = self.endpoint(h).send(now, message);
        self.flush(now);
    }

    pub fn poll_transmit(&mut self) -> Option<protocol::dtls::Transmit> {
        self.server.poll_transmit()
    }

    /// Messages the device sent, in order.
    pub fn sent_by_device(&self) -> Vec<&Seen> {
        self.seen
            .iter()
            .filter(|s| s.dir == Dir::DeviceToCloud)
            .collect()
    }

    /// Events the device published, in order.
    pub fn published(&self) -> Vec<(String, String)> {
        self.sent_by_device()
            .iter()
            .filter_map(|s| s.event())
            .collect()
    }
}

/// One device and the test cloud in virtual time.
pub struct Sim {
    pub now: Duration,
    pub device: DeviceOs,
    pub cloud: TestCloud,
    /// Every datagram the device sent, with the time.
    pub device_datagrams: Vec<(Duration, Vec<u8>)>,
    /// Everything the device reported.
    pub trace: Vec<(Duration, DeviceEvent)>,
    /// Drop device -> cloud datagrams while true (also those already in flight).
    pub drop_to_cloud: bool,
    /// Drop cloud -> device datagrams while true (also those already in flight).
    pub drop_to_device: bool,
    /// One-way latency.
    pub latency: Duration,
    in_flight: Vec<(Duration, bool, SocketAddr, Vec<u8>)>,
}

pub fn device_addr(generation: u32) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000 + (generation % 20000) as u16))
}

impl Sim {
    pub fn new(board: &str, versions: &Versions, app: AppBehaviour, seed: u64) -> Sim {
        let (identity, server_key) = capture_identity();
        let device_key = identity.public_key();
        let device = DeviceOs::new(identity, provisioned(board, versions), app, seed);
        Sim {
            now: Duration::ZERO,
            device,
            cloud: TestCloud::new(server_key, device_key),
            device_datagrams: Vec::new(),
            trace: Vec::new(),
            drop_to_cloud: false,
            drop_to_device: false,
            latency: Duration::from_millis(1),
            in_flight: Vec::new(),
        }
    }

    /// A Boron running the Device OS 6.2.0 baseline with a default application.
    pub fn boron() -> Sim {
        Sim::new("boron", &Versions::BASELINE, AppBehaviour::default(), 5)
    }

    fn collect(&mut self) {
        while let Some(e) = self.device.poll_event() {
            self.trace.push((self.now, e));
        }
        while let Some(d) = self.device.poll_transmit() {
            self.device_datagrams.push((self.now, d.clone()));
            if !self.drop_to_cloud {
                let from = device_addr(self.device.socket_generation());
                self.in_flight
                    .push((self.now + self.latency, true, from, d));
            }
        }
        while let Some(t) = self.cloud.poll_transmit() {
            if !self.drop_to_device {
                self.in_flight
                    .push((self.now + self.latency, false, t.destination, t.payload));
            }
        }
    }

    /// Advances to the next thing that happens (a delivery or a timer), at most to `limit`.
    /// Returns false when nothing is left to happen before `limit`.
    pub fn step(&mut self, limit: Duration) -> bool {
        self.collect();
        let next_delivery = self.in_flight.iter().map(|f| f.0).min();
        let next = [
            next_delivery,
            self.device.poll_timeout(),
            self.cloud.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next.filter(|t| *t <= limit) else {
            self.now = self.now.max(limit);
            return false;
        };
        self.now = self.now.max(next);
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|f| f.0 <= now);
        self.in_flight = later;
        for (_, to_cloud, addr, payload) in due {
            if to_cloud {
                if !self.drop_to_cloud {
                    self.cloud.handle_datagram(now, addr, &payload);
                }
            } else if !self.drop_to_device && addr == device_addr(self.device.socket_generation()) {
                self.device.handle_datagram(now, &payload);
            }
            self.collect();
        }
        if self.device.poll_timeout().is_some_and(|t| t <= now) {
            self.device.handle_timeout(now);
        }
        if self.cloud.poll_timeout().is_some_and(|t| t <= now) {
            self.cloud.handle_timeout(now);
        }
        self.collect();
        true
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let limit = self.now + duration;
        let mut steps = 0u64;
        while self.step(limit) {
            steps += 1;
            assert!(steps < 1_000_000, "simulation does not settle");
        }
    }

    /// Runs until `done` holds for the trace entry just recorded, at most `limit` from now.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&DeviceEvent) -> bool,
    ) -> bool {
        let end = self.now + limit;
        let mut seen = self.trace.len();
        loop {
            self.collect();
            if self.trace[seen..].iter().any(|(_, e)| done(e)) {
                return true;
            }
            seen = self.trace.len();
            if !self.step(end) {
                self.collect();
                return self.trace[seen..].iter().any(|(_, e)| done(e));
            }
        }
    }

    /// Powers on and runs until the device reports Connected.
    pub fn connect(&mut self) {
        let now = self.now;
        self.device.power_on(now);
        assert!(
            self.run_until(Duration::from_secs(120), |e| matches!(
                e,
                DeviceEvent::Connected { .. }
            )),
            "the device did not connect: {:#?}",
            self.trace
        );
    }

    /// Trace entries from `index` on.
    pub fn trace_since(&self, index: usize) -> Vec<DeviceEvent> {
        self.trace[index..].iter().map(|(_, e)| e.clone()).collect()
    }
}

/// The application module of `versions` for a Boron-like board, as an OTA file.
pub fn app_module(board: &str, versions: &Versions) -> Vec<u8> {
    let b = Board::builtin(board).expect("built-in board");
    FirmwareSet::new(&b, small_sizes(), 11)
        .module(
            emulator::board::RegionKind::UserPart,
            versions,
            small_sizes().user_part,
        )
        .expect("module")
}

/// The baseline application with product version 4 (module version 7).
pub fn v4() -> Versions {
    Versions {
        user_part: 7,
        product_version: 4,
        ..Versions::BASELINE
    }
}

/// Stages `file` and commits its slots the way a finished OTA update does, without the wire.
pub fn stage_update(device: &mut Device, file: &[u8]) {
    device.stage_file(file).expect("stage");
    let staged = device.validate_staged(file.len()).expect("validate");
    device.commit_staged(&staged).expect("commit");
}

/// The DTLS record content type of a datagram's first record.
pub fn first_record_type(datagram: &[u8]) -> u8 {
    datagram.first().copied().unwrap_or(0)
}

/// UpdateStart for `file` (with File-Sha256, as the cloud sends it).
pub fn update_start(file: &[u8], chunk_size: u32) -> Body {
    use sha2::Digest;
    Body::UpdateStart(protocol::message::UpdateStart {
        file_size: file.len() as u32,
        file_sha256: Some(sha2::Sha256::digest(file).into()),
        chunk_size,
        discard_data: false,
        module_function: None,
    })
}

/// UpdateChunk `index` (1-based, relative to `resume_offset`) of `file`.
pub fn update_chunk(file: &[u8], chunk_size: u32, resume_offset: u32, index: u32) -> Body {
    let start = resume_offset as usize + (index as usize - 1) * chunk_size as usize;
    let end = (start + chunk_size as usize).min(file.len());
    Body::UpdateChunk(protocol::message::UpdateChunk {
        index,
        data: file[start..end].to_vec(),
    })
}

/// UpdateFinish.
pub fn update_finish() -> Body {
    Body::UpdateFinish(protocol::message::UpdateFinish {
        cancel: false,
        discard_data: false,
    })
}

impl Sim {
    /// The cloud sends a request on the current connection (a CON request gets a fresh token).
    pub fn cloud_request(
        &mut self,
        kind: MessageType,
        body: Body,
    ) -> protocol::coap::RequestHandle {
        let message = ParticleMessage {
            kind,
            message_id: 0,
            token: Vec::new(),
            body,
        }
        .to_coap()
        .expect("encodes");
        let now = self.now;
        self.cloud.send(now, message).expect("sent")
    }

    /// The device's response to the cloud's request `handle`, once it arrived.
    pub fn cloud_response(&self, handle: protocol::coap::RequestHandle) -> Option<Message> {
        self.cloud.responses.iter().find_map(|(_, e)| match e {
            EndpointEvent::Response { handle: h, message } if *h == handle => Some(message.clone()),
            _ => None,
        })
    }

    /// UpdateAcks the device sent: (cumulative, bitmap words).
    pub fn update_acks(&self) -> Vec<(u32, Vec<u32>)> {
        self.cloud
            .sent_by_device()
            .iter()
            .filter_map(|s| match s.particle()?.body {
                Body::UpdateAck(a) => Some((a.cumulative, a.bitmap)),
                _ => None,
            })
            .collect()
    }

    /// Runs a whole transfer of `file` in order and returns the UpdateFinish handle; the
    /// commit happens when the device's 2.04 is acknowledged (by the time this returns, unless
    /// `drop_to_device` is set).
    pub fn transfer(&mut self, file: &[u8], chunk_size: u32) -> protocol::coap::RequestHandle {
        let start = self.cloud_request(MessageType::Confirmable, update_start(file, chunk_size));
        self.run_for(Duration::from_millis(100));
        let offset = self
            .cloud_response(start)
            .and_then(|m| {
                protocol::message::UpdateStartResponse::parse(&Response {
                    code: m.code,
                    options: m.options,
                    payload: m.payload,
                })
                .ok()
            })
            .expect("UpdateStart accepted")
            .resume_offset;
        let count = (file.len() as u32 - offset).div_ceil(chunk_size);
        for index in 1..=count {
            self.cloud_request(
                MessageType::NonConfirmable,
                update_chunk(file, chunk_size, offset, index),
            );
        }
        self.run_for(Duration::from_millis(500));
        let finish = self.cloud_request(MessageType::Confirmable, update_finish());
        self.run_for(Duration::from_millis(100));
        finish
    }
}

/// STOP mode for `duration`, the network kept (standby) or off.
pub fn sleep_for(duration: Duration, network_kept: bool) -> emulator::os::SleepConfig {
    emulator::os::SleepConfig {
        mode: emulator::os::SleepMode::Stop,
        duration: Some(duration),
        network: if network_kept {
            emulator::os::SleepNetwork::Standby
        } else {
            emulator::os::SleepNetwork::Off
        },
    }
}
