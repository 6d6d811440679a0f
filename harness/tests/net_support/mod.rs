//! Nodes for the transport tests: `protocol::dtls::{Client, Server}` adapted to
//! [`harness::net::Node`] (the same way the cloud and the emulated device adapt), and a plain
//! ping/echo pair that costs nothing but the network itself.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use harness::net::Node;
use p256::ecdsa::SigningKey;
use protocol::dtls::{
    Client, ClientConfig, CloseReason, Event, Server, ServerConfig, ServerEvent, SessionState,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub fn key(seed: u64) -> SigningKey {
    SigningKey::random(&mut ChaCha8Rng::seed_from_u64(seed))
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address literal")
}

/// A Particle-profile server that knows the devices `device_seeds` (keys from [`key`]).
pub fn dtls_server(server_seed: u64, device_seeds: &[u64], rng_seed: u64) -> DtlsServerNode {
    let keys = device_seeds
        .iter()
        .map(|&s| *key(s).verifying_key())
        .collect();
    DtlsServerNode::new(Server::new(
        ServerConfig::new(key(server_seed), keys),
        ChaCha8Rng::seed_from_u64(rng_seed),
    ))
}

/// A Particle-profile client with the key `device_seed` pinning the key `server_seed`.
pub fn dtls_client(
    device_seed: u64,
    server_seed: u64,
    server: SocketAddr,
    rng_seed: u64,
) -> DtlsClientNode {
    let config = ClientConfig::new(key(device_seed), *key(server_seed).verifying_key());
    DtlsClientNode::new(config, server, rng_seed)
}

/// A DTLS client that talks to one server, sends what is put in its outbox once connected, and
/// optionally a "ping" every `ping_every` (the device's keepalive, reference 1.9).
pub struct DtlsClientNode {
    pub client: Client<ChaCha8Rng>,
    config: ClientConfig,
    rng_seed: u64,
    pub server: SocketAddr,
    pub events: Vec<Event>,
    pub received: Vec<Vec<u8>>,
    pub outbox: VecDeque<Vec<u8>>,
    pub ping_every: Option<Duration>,
    next_ping: Option<Duration>,
    pub pings_sent: u64,
    pub connects: u32,
    generation: u32,
}

impl DtlsClientNode {
    pub fn new(config: ClientConfig, server: SocketAddr, rng_seed: u64) -> Self {
        let client = Client::connect(
            config.clone(),
            ChaCha8Rng::seed_from_u64(rng_seed),
            Duration::ZERO,
        );
        Self {
            client,
            config,
            rng_seed,
            server,
            events: Vec::new(),
            received: Vec::new(),
            outbox: VecDeque::new(),
            ping_every: None,
            next_ping: None,
            pings_sent: 0,
            connects: 0,
            generation: 0,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    pub fn closed(&self) -> Option<&CloseReason> {
        self.events.iter().find_map(|e| match e {
            Event::Closed(r) => Some(r),
            _ => None,
        })
    }

    /// Queues `data`, sent at once if connected.
    pub fn send(&mut self, now: Duration, data: &[u8]) {
        self.outbox.push_back(data.to_vec());
        self.flush(now);
    }

    /// A reset: a new socket (new source port) and handshake-less resumption of the session.
    pub fn reset_and_resume(&mut self, now: Duration) -> Option<SessionState> {
        let session = self.client.export_session()?;
        self.rng_seed += 1;
        self.client = Client::resume(
            self.config.clone(),
            &session,
            ChaCha8Rng::seed_from_u64(self.rng_seed),
            now,
        );
        self.generation += 1;
        self.next_ping = None;
        self.drain(now);
        Some(session)
    }

    /// A reset with a full handshake from a new socket.
    pub fn reset_and_connect(&mut self, now: Duration) {
        self.rng_seed += 1;
        self.client = Client::connect(
            self.config.clone(),
            ChaCha8Rng::seed_from_u64(self.rng_seed),
            now,
        );
        self.generation += 1;
        self.next_ping = None;
    }

    fn flush(&mut self, now: Duration) {
        if !self.client.is_connected() {
            return;
        }
        while let Some(data) = self.outbox.pop_front() {
            if self.client.send_application_data(now, &data).is_err() {
                break;
            }
        }
    }

    fn drain(&mut self, now: Duration) {
        while let Some(event) = self.client.poll_event() {
            match &event {
                Event::Connected => {
                    self.connects += 1;
                    self.next_ping = self.ping_every.map(|p| now + p);
                }
                Event::ApplicationData(data) => self.received.push(data.clone()),
                Event::Closed(_) => self.next_ping = None,
            }
            self.events.push(event);
        }
        self.flush(now);
    }
}

impl Node for DtlsClientNode {
    fn handle_datagram(&mut self, now: Duration, from: SocketAddr, data: &[u8]) {
        if from == self.server {
            self.client.handle_datagram(now, data);
        }
        self.drain(now);
    }

    fn handle_timeout(&mut self, now: Duration) {
        if let (Some(at), Some(every)) = (self.next_ping, self.ping_every) {
            if now >= at {
                let ping = format!("ping {}", self.pings_sent);
                if self
                    .client
                    .send_application_data(now, ping.as_bytes())
                    .is_ok()
                {
                    self.pings_sent += 1;
                }
                self.next_ping = Some(now + every);
            }
        }
        self.client.handle_timeout(now);
        self.drain(now);
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.client.poll_transmit().map(|d| (self.server, d))
    }

    fn poll_timeout(&self) -> Option<Duration> {
        match (self.client.poll_timeout(), self.next_ping) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn local_addr_generation(&self) -> u32 {
        self.generation
    }
}

/// A DTLS server for many clients that answers every record with "echo: " + the record.
pub struct DtlsServerNode {
    pub server: Server<ChaCha8Rng>,
    pub events: Vec<ServerEvent>,
    pub echoed: u64,
}

impl DtlsServerNode {
    pub fn new(server: Server<ChaCha8Rng>) -> Self {
        Self {
            server,
            events: Vec::new(),
            echoed: 0,
        }
    }

    pub fn connected(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, ServerEvent::Connected { .. }))
            .count()
    }

    pub fn moves(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::Moved { from, to, .. } => Some((*from, *to)),
                _ => None,
            })
            .collect()
    }

    fn drain(&mut self, now: Duration) {
        while let Some(event) = self.server.poll_event() {
            if let ServerEvent::ApplicationData { handle, data } = &event {
                let mut reply = b"echo: ".to_vec();
                reply.extend_from_slice(data);
                if self
                    .server
                    .send_application_data(now, *handle, &reply)
                    .is_ok()
                {
                    self.echoed += 1;
                }
            }
            self.events.push(event);
        }
    }
}

impl Node for DtlsServerNode {
    fn handle_datagram(&mut self, now: Duration, from: SocketAddr, data: &[u8]) {
        self.server.handle_datagram(now, from, data);
        self.drain(now);
    }

    fn handle_timeout(&mut self, now: Duration) {
        self.server.handle_timeout(now);
        self.drain(now);
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.server
            .poll_transmit()
            .map(|t| (t.destination, t.payload))
    }

    fn poll_timeout(&self) -> Option<Duration> {
        self.server.poll_timeout()
    }
}

/// Sends "ping N" to `peer` every `every`, counts the answers (no crypto: measures the
/// network alone).
pub struct Pinger {
    pub peer: SocketAddr,
    pub every: Duration,
    next: Duration,
    pub sent: u64,
    pub answers: u64,
    outbox: VecDeque<Vec<u8>>,
    pub generation: u32,
}

impl Pinger {
    pub fn new(peer: SocketAddr, every: Duration) -> Self {
        Self {
            peer,
            every,
            next: Duration::ZERO,
            sent: 0,
            answers: 0,
            outbox: VecDeque::new(),
            generation: 0,
        }
    }
}

impl Node for Pinger {
    fn handle_datagram(&mut self, _now: Duration, from: SocketAddr, data: &[u8]) {
        if from == self.peer && data.starts_with(b"pong") {
            self.answers += 1;
        }
    }

    fn handle_timeout(&mut self, now: Duration) {
        while self.next <= now {
            self.outbox
                .push_back(format!("ping {}", self.sent).into_bytes());
            self.sent += 1;
            self.next += self.every;
        }
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.outbox.pop_front().map(|d| (self.peer, d))
    }

    fn poll_timeout(&self) -> Option<Duration> {
        Some(self.next)
    }

    fn local_addr_generation(&self) -> u32 {
        self.generation
    }
}

/// Answers every "ping N" with "pong N"; remembers every datagram as (from, bytes).
#[derive(Default)]
pub struct Echo {
    pub seen: Vec<(SocketAddr, Vec<u8>)>,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
}

impl Node for Echo {
    fn handle_datagram(&mut self, _now: Duration, from: SocketAddr, data: &[u8]) {
        self.seen.push((from, data.to_vec()));
        if let Some(rest) = data.strip_prefix(b"ping") {
            let mut reply = b"pong".to_vec();
            reply.extend_from_slice(rest);
            self.outbox.push_back((from, reply));
        }
    }

    fn handle_timeout(&mut self, _now: Duration) {}

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.outbox.pop_front()
    }

    fn poll_timeout(&self) -> Option<Duration> {
        None
    }
}
