//! Our client against our server in one process, in virtual time, over a simulated link that
//! can lose, duplicate and reorder datagrams. Every run is fixed by its seed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use p256::ecdsa::SigningKey;
use protocol::dtls::handshake::*;
use protocol::dtls::keys::{signing_key_from_der, verifying_key_from_spki};
use protocol::dtls::record::{parse_datagram, ContentType};
use protocol::dtls::*;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/vectors/wire/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn device_key() -> SigningKey {
    signing_key_from_der(&vector("keys/device_private_key.der")).unwrap()
}

fn server_key() -> SigningKey {
    signing_key_from_der(&vector("keys/server_private_key.der")).unwrap()
}

fn random_key(seed: u64) -> SigningKey {
    SigningKey::random(&mut ChaCha8Rng::seed_from_u64(seed))
}

fn client_config() -> ClientConfig {
    let server_pub = verifying_key_from_spki(&vector("keys/server_public_key.der")).unwrap();
    ClientConfig::new(device_key(), server_pub)
}

fn server_config() -> ServerConfig {
    let device_pub = verifying_key_from_spki(&vector("keys/device_public_key.der")).unwrap();
    ServerConfig::new(server_key(), vec![device_pub])
}

const CLIENT_ADDR: &str = "127.0.0.1:45283";
const SERVER_ADDR: &str = "127.0.0.61:5684";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Link faults, in percent per datagram, and the largest extra delay (reordering).
#[derive(Clone, Copy, Default)]
struct Faults {
    loss: u32,
    duplicate: u32,
    max_delay_ms: u64,
}

struct Sim {
    now: Duration,
    client: Client<ChaCha8Rng>,
    client_addr: SocketAddr,
    server: Server<ChaCha8Rng>,
    faults: Faults,
    rng: ChaCha8Rng,
    /// (deliver at, order) -> (to server?, from, bytes)
    in_flight: BTreeMap<(Duration, u64), (bool, SocketAddr, Vec<u8>)>,
    order: u64,
    client_events: Vec<Event>,
    server_events: Vec<ServerEvent>,
    /// Every datagram as sent (before faults): (to server?, bytes).
    sent: Vec<(bool, Vec<u8>)>,
}

impl Sim {
    fn new(
        seed: u64,
        client_config: ClientConfig,
        server_config: ServerConfig,
        faults: Faults,
    ) -> Self {
        let server = Server::new(server_config, ChaCha8Rng::seed_from_u64(seed ^ 0x5e));
        let client = Client::connect(
            client_config,
            ChaCha8Rng::seed_from_u64(seed ^ 0xc1),
            Duration::ZERO,
        );
        Self {
            now: Duration::ZERO,
            client,
            client_addr: addr(CLIENT_ADDR),
            server,
            faults,
            rng: ChaCha8Rng::seed_from_u64(seed),
            in_flight: BTreeMap::new(),
            order: 0,
            client_events: Vec::new(),
            server_events: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn send(&mut self, to_server: bool, from: SocketAddr, bytes: Vec<u8>) {
        self.sent.push((to_server, bytes.clone()));
        if self.rng.next_u32() % 100 < self.faults.loss {
            return;
        }
        let copies = if self.rng.next_u32() % 100 < self.faults.duplicate {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = 1 + self.rng.next_u64() % (self.faults.max_delay_ms + 1);
            self.order += 1;
            self.in_flight.insert(
                (self.now + Duration::from_millis(delay), self.order),
                (to_server, from, bytes.clone()),
            );
        }
    }

    fn pump(&mut self) {
        while let Some(d) = self.client.poll_transmit() {
            let from = self.client_addr;
            self.send(true, from, d);
        }
        while let Some(t) = self.server.poll_transmit() {
            assert_eq!(
                t.destination, self.client_addr,
                "the server answers the client's current address"
            );
            self.send(false, addr(SERVER_ADDR), t.payload);
        }
        while let Some(e) = self.client.poll_event() {
            self.client_events.push(e);
        }
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(e);
        }
    }

    /// Runs until `done` holds or `limit` of virtual time passes.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Sim) -> bool) {
        self.pump();
        while !done(self) {
            let next_packet = self.in_flight.keys().next().map(|k| k.0);
            let next = [
                next_packet,
                self.client.poll_timeout(),
                self.server.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else { break };
            if next > limit {
                break;
            }
            self.now = self.now.max(next);
            if next_packet == Some(next) {
                let key = *self.in_flight.keys().next().unwrap();
                let (to_server, from, bytes) = self.in_flight.remove(&key).unwrap();
                if to_server {
                    self.server.handle_datagram(self.now, from, &bytes);
                } else {
                    self.client.handle_datagram(self.now, &bytes);
                }
            } else {
                self.client.handle_timeout(self.now);
                self.server.handle_timeout(self.now);
            }
            self.pump();
        }
    }

    fn run_handshake(&mut self) {
        self.run_until(Duration::from_secs(600), |s| {
            s.client.is_closed()
                || (s.client.is_connected()
                    && s.server_events
                        .iter()
                        .any(|e| matches!(e, ServerEvent::Connected { .. }))
                    && s.in_flight.is_empty())
        });
    }

    fn handle(&self) -> ConnectionHandle {
        self.server_events
            .iter()
            .find_map(|e| match e {
                ServerEvent::Connected { handle, .. } => Some(*handle),
                _ => None,
            })
            .expect("server connected")
    }

    fn server_data(&self) -> Vec<Vec<u8>> {
        self.server_events
            .iter()
            .filter_map(|e| match e {
                ServerEvent::ApplicationData { data, .. } => Some(data.clone()),
                _ => None,
            })
            .collect()
    }

    fn client_data(&self) -> Vec<Vec<u8>> {
        self.client_events
            .iter()
            .filter_map(|e| match e {
                Event::ApplicationData(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn client_and_server_complete_the_particle_handshake_and_exchange_data() {
    let mut sim = Sim::new(1, client_config(), server_config(), Faults::default());
    sim.run_handshake();
    assert_eq!(sim.client_events, vec![Event::Connected]);
    let h = sim.handle();
    let device_pub = verifying_key_from_spki(&vector("keys/device_public_key.der")).unwrap();
    assert!(
        matches!(sim.server_events[0], ServerEvent::Connected { device_key: Some(k), .. } if k == device_pub)
    );
    // 8-byte CID assigned by the server, used by the client.
    assert_eq!(sim.client.connection_id().map(<[u8]>::len), Some(8));
    assert_eq!(sim.client.connection_id(), sim.server.connection_id(h));
    // Both sides log the same NSS key log line.
    let line = sim.client.key_log_line().unwrap();
    assert!(line.starts_with("CLIENT_RANDOM ") && line.len() == 14 + 64 + 1 + 96);
    assert_eq!(Some(line), sim.server.key_log_line(h));

    sim.client
        .send_application_data(sim.now, b"hello cloud")
        .unwrap();
    sim.server
        .send_application_data(sim.now, h, b"hello device")
        .unwrap();
    sim.run_until(Duration::from_secs(700), |s| s.in_flight.is_empty());
    assert_eq!(sim.server_data(), vec![b"hello cloud".to_vec()]);
    assert_eq!(sim.client_data(), vec![b"hello device".to_vec()]);

    // The datagram sequence of the capture: CH, HVR, CH+cookie, 4 records, 5 records, 2 records.
    let shapes: Vec<(bool, Vec<u8>)> = sim
        .sent
        .iter()
        .map(|(to_server, d)| {
            let cid = if *to_server { 8 } else { 0 };
            (
                *to_server,
                parse_datagram(d, cid)
                    .unwrap()
                    .iter()
                    .map(|r| r.content_type.to_u8())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        shapes,
        vec![
            (true, vec![22]),
            (false, vec![22]),
            (true, vec![22]),
            (false, vec![22, 22, 22, 22]),
            (true, vec![22, 22, 22, 20, 25]),
            (false, vec![20, 22]),
            (true, vec![25]),
            (false, vec![23]),
        ]
    );
}

#[test]
fn client_hello_is_byte_identical_to_the_device_apart_from_random_and_cookie() {
    let capture: Vec<serde_json::Value> = std::str::from_utf8(&vector("datagrams.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let device_first = hex::decode(capture[0]["hex"].as_str().unwrap()).unwrap();
    let device_second = hex::decode(capture[2]["hex"].as_str().unwrap()).unwrap();

    let mut sim = Sim::new(7, client_config(), server_config(), Faults::default());
    sim.run_handshake();
    let ours_first = &sim.sent[0].1;
    let ours_second = &sim.sent[2].1;
    assert_eq!(ours_first.len(), 116);
    assert_eq!(ours_second.len(), 148);
    // Put the device's random and cookie into ours: the rest must be identical.
    let random_at = 13 + 12 + 2;
    let mut patched = ours_first.clone();
    patched[random_at..random_at + 32].copy_from_slice(&device_first[random_at..random_at + 32]);
    assert_eq!(patched, device_first);
    let mut patched = ours_second.clone();
    patched[random_at..random_at + 32].copy_from_slice(&device_second[random_at..random_at + 32]);
    let cookie_at = random_at + 32 + 1 + 1;
    patched[cookie_at..cookie_at + 32].copy_from_slice(&device_second[cookie_at..cookie_at + 32]);
    assert_eq!(patched, device_second);
}

#[test]
fn server_flight_has_the_structure_of_the_capture() {
    let mut sim = Sim::new(3, client_config(), server_config(), Faults::default());
    sim.run_handshake();
    // HelloVerifyRequest: 60 bytes as in the capture, 32-byte cookie.
    assert_eq!(sim.sent[1].1.len(), 60);
    let flight = parse_datagram(&sim.sent[3].1, 0).unwrap();
    let msgs: Vec<FragmentRepr> = flight
        .iter()
        .flat_map(|r| FragmentRepr::parse_all(r.fragment).unwrap())
        .collect();
    let types: Vec<u8> = msgs.iter().map(|m| m.msg_type).collect();
    assert_eq!(
        types,
        vec![2, 12, 13, 14],
        "no Certificate message in raw-public-key mode"
    );
    let seqs: Vec<u16> = msgs.iter().map(|m| m.message_seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    let sh = ServerHello::parse(msgs[0].fragment).unwrap();
    let ext_types: Vec<u16> = sh.extensions.iter().map(|e| e.typ).collect();
    assert_eq!(ext_types, vec![0xff01, 254, 11, 19, 20]);
    assert_eq!(sh.session_id.len(), 32);
    // The CertificateRequest is byte-identical to the capture's.
    assert_eq!(
        hex::encode(msgs[2].fragment),
        "020140000c0501050304010403020102030000"
    );
}

#[test]
fn a_wrong_server_key_is_refused_by_the_client() {
    let mut config = server_config();
    config.server_key = random_key(99);
    let mut sim = Sim::new(4, client_config(), config, Faults::default());
    sim.run_handshake();
    assert_eq!(
        sim.client_events,
        vec![Event::Closed(CloseReason::Error(
            DtlsError::ServerKeyMismatch
        ))]
    );
    assert_eq!(
        CloseReason::Error(DtlsError::ServerKeyMismatch).to_string(),
        "the server's key exchange is not signed by the pinned server key"
    );
    sim.run_until(Duration::from_secs(100), |s| s.in_flight.is_empty());
    assert!(sim.server_events.iter().any(|e| matches!(
        e,
        ServerEvent::Closed {
            reason: CloseReason::Error(DtlsError::PeerAlert(alert::DECRYPT_ERROR)),
            ..
        }
    )));
}

#[test]
fn an_unknown_device_key_is_refused_by_the_server() {
    let mut config = client_config();
    config.device_key = random_key(98);
    let mut sim = Sim::new(5, config, server_config(), Faults::default());
    sim.run_handshake();
    assert!(sim.server_events.iter().any(|e| matches!(
        e,
        ServerEvent::Closed {
            reason: CloseReason::Error(DtlsError::UnknownDeviceKey),
            ..
        }
    )));
    assert_eq!(
        sim.client_events,
        vec![Event::Closed(CloseReason::Error(DtlsError::PeerAlert(
            alert::BAD_CERTIFICATE
        )))]
    );
    assert!(sim.server.connections().is_empty());
}

#[test]
fn retransmission_timer_doubles_from_3s_to_24s_then_gives_up() {
    let mut client = Client::connect(
        client_config(),
        ChaCha8Rng::seed_from_u64(1),
        Duration::ZERO,
    );
    let mut sent_at = Vec::new();
    let mut now = Duration::ZERO;
    loop {
        while let Some(d) = client.poll_transmit() {
            assert_eq!(d.len(), 116);
            sent_at.push(now.as_secs());
        }
        let Some(t) = client.poll_timeout() else {
            break;
        };
        now = t;
        client.handle_timeout(now);
    }
    assert_eq!(sent_at, vec![0, 3, 9, 21]);
    assert_eq!(now, Duration::from_secs(45));
    assert_eq!(
        client.poll_event(),
        Some(Event::Closed(CloseReason::Error(
            DtlsError::HandshakeTimeout
        )))
    );
}

#[test]
fn retransmissions_use_fresh_record_sequence_numbers() {
    let mut client = Client::connect(
        client_config(),
        ChaCha8Rng::seed_from_u64(1),
        Duration::ZERO,
    );
    let first = client.poll_transmit().unwrap();
    client.handle_timeout(Duration::from_secs(3));
    let second = client.poll_transmit().unwrap();
    let (a, b) = (
        &parse_datagram(&first, 0).unwrap()[0],
        &parse_datagram(&second, 0).unwrap()[0],
    );
    assert_eq!((a.seq, b.seq), (0, 1));
    assert_eq!(a.fragment, b.fragment);
}

#[test]
fn handshake_completes_over_a_lossy_duplicating_reordering_link() {
    for seed in 0..40 {
        let faults = Faults {
            loss: 15,
            duplicate: 15,
            max_delay_ms: 40,
        };
        let mut c = client_config();
        let mut s = server_config();
        // More attempts than the device's 4, so that every seed gets through 15 % loss.
        c.timeouts.max = Duration::from_secs(3 * 64);
        s.timeouts.max = Duration::from_secs(3 * 64);
        let mut sim = Sim::new(seed, c, s, faults);
        sim.run_handshake();
        assert!(
            sim.client.is_connected(),
            "seed {seed}: {:?} {:?}",
            sim.client_events,
            sim.server_events
        );
        let h = sim.handle();
        // Application data in both directions still arrives exactly once, in any order.
        for i in 0..20u8 {
            sim.client.send_application_data(sim.now, &[i]).unwrap();
            sim.server.send_application_data(sim.now, h, &[i]).unwrap();
        }
        sim.faults.loss = 0;
        sim.run_until(sim.now + Duration::from_secs(10), |s| {
            s.in_flight.is_empty()
        });
        let mut got = sim.server_data();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 20, "seed {seed}");
        assert_eq!(
            sim.server_data().len(),
            20,
            "seed {seed}: a duplicated record was delivered twice"
        );
        assert_eq!(sim.client_data().len(), 20, "seed {seed}");
    }
}

#[test]
fn small_mtu_fragments_every_flight_and_still_connects() {
    let mut c = client_config();
    let mut s = server_config();
    c.mtu = 90;
    s.mtu = 90;
    let mut sim = Sim::new(
        11,
        c,
        s,
        Faults {
            loss: 0,
            duplicate: 20,
            max_delay_ms: 30,
        },
    );
    sim.run_handshake();
    assert!(sim.client.is_connected());
    // Every datagram stays within the MTU, except the ClientHello, which always goes whole.
    assert!(sim
        .sent
        .iter()
        .all(|(_, d)| d.len() <= 90 || d.len() == 116 || d.len() == 148));
    // The ServerKeyExchange (145 bytes) did not fit in one record: it went in fragments.
    let fragmented = sim
        .sent
        .iter()
        .filter(|(to_server, _)| !to_server)
        .any(|(_, d)| {
            parse_datagram(d, 0).unwrap().iter().any(|r| {
                r.content_type == ContentType::Handshake
                    && r.epoch == 0
                    && FragmentRepr::parse_all(r.fragment)
                        .unwrap()
                        .iter()
                        .any(|f| f.fragment.len() < f.length)
            })
        });
    assert!(fragmented);
}

#[test]
fn a_client_hello_with_a_wrong_cookie_gets_another_hello_verify_request_and_no_state() {
    let mut server = Server::new(server_config(), ChaCha8Rng::seed_from_u64(1));
    let mut client = Client::connect(
        client_config(),
        ChaCha8Rng::seed_from_u64(2),
        Duration::ZERO,
    );
    let ch = client.poll_transmit().unwrap();
    server.handle_datagram(Duration::ZERO, addr(CLIENT_ADDR), &ch);
    let hvr = server.poll_transmit().unwrap();
    let records = parse_datagram(&hvr.payload, 0).unwrap();
    let frag = &FragmentRepr::parse_all(records[0].fragment).unwrap()[0];
    assert_eq!(frag.msg_type, msg_type::HELLO_VERIFY_REQUEST);
    let cookie = HelloVerifyRequest::parse(frag.fragment).unwrap().cookie;
    assert_eq!(cookie.len(), 32);
    // The same ClientHello from another address needs another cookie.
    server.handle_datagram(Duration::ZERO, addr("127.0.0.2:1000"), &ch);
    let other = server.poll_transmit().unwrap();
    assert_ne!(other.payload, hvr.payload);
    assert_eq!(
        server.poll_timeout(),
        None,
        "no association is kept before the cookie is verified"
    );
}

#[test]
fn replayed_and_tampered_records_are_dropped() {
    let mut sim = Sim::new(21, client_config(), server_config(), Faults::default());
    sim.run_handshake();
    let h = sim.handle();
    sim.client.send_application_data(sim.now, b"once").unwrap();
    let record = sim.client.poll_transmit().unwrap();
    let from = sim.client_addr;
    sim.server.handle_datagram(sim.now, from, &record);
    sim.server.handle_datagram(sim.now, from, &record);
    let mut tampered = record.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x80;
    sim.server.handle_datagram(sim.now, from, &tampered);
    sim.pump();
    assert_eq!(sim.server_data(), vec![b"once".to_vec()]);
    assert_eq!(sim.server.dropped_records(h), 2);
    assert!(
        sim.server.connections().contains(&h),
        "bad records do not close the association"
    );
}

#[test]
fn close_notify_closes_both_sides() {
    let mut sim = Sim::new(22, client_config(), server_config(), Faults::default());
    sim.run_handshake();
    let h = sim.handle();
    sim.client.close(sim.now);
    sim.run_until(sim.now + Duration::from_secs(1), |s| s.in_flight.is_empty());
    assert_eq!(
        sim.client_events.last(),
        Some(&Event::Closed(CloseReason::Local))
    );
    assert!(sim.server_events.contains(&ServerEvent::Closed {
        handle: h,
        reason: CloseReason::PeerClosed
    }));
    assert_eq!(
        sim.client.send_application_data(sim.now, b"x"),
        Err(DtlsError::NotConnected)
    );
}

#[test]
fn application_data_over_the_device_limit_is_refused() {
    let mut sim = Sim::new(23, client_config(), server_config(), Faults::default());
    sim.run_handshake();
    let big = vec![0u8; MAX_PLAINTEXT + 1];
    assert_eq!(
        sim.client.send_application_data(sim.now, &big),
        Err(DtlsError::TooLarge {
            len: MAX_PLAINTEXT + 1,
            max: MAX_PLAINTEXT
        })
    );
    sim.client
        .send_application_data(sim.now, &big[..MAX_PLAINTEXT])
        .unwrap();
    sim.run_until(sim.now + Duration::from_secs(1), |s| s.in_flight.is_empty());
    assert_eq!(sim.server_data()[0].len(), MAX_PLAINTEXT);
}

fn record_types(datagram: &[u8]) -> Vec<u8> {
    parse_datagram(datagram, 8)
        .unwrap()
        .iter()
        .map(|r| r.content_type.to_u8())
        .collect()
}

#[test]
fn resumed_client_sends_at_once_with_type_253_and_the_server_moves_the_session() {
    let mut sim = Sim::new(31, client_config(), server_config(), Faults::default());
    sim.run_handshake();
    let h = sim.handle();
    sim.client
        .send_application_data(sim.now, b"before reset")
        .unwrap();
    sim.run_until(sim.now + Duration::from_secs(1), |s| s.in_flight.is_empty());
    let old_record = sim.sent.last().unwrap().1.clone();

    // The device saves its session (as bytes, like retained RAM) and resets.
    let blob = sim.client.export_session().unwrap().to_bytes();
    let state = SessionState::from_bytes(&blob).unwrap();
    assert_eq!(state.cid, sim.server.connection_id(h).unwrap());
    let sent_before = sim.sent.len();

    // New socket, new port; no handshake at all.
    sim.client_addr = addr("127.0.0.1:35580");
    sim.client = Client::resume(
        client_config(),
        &state,
        ChaCha8Rng::seed_from_u64(77),
        sim.now,
    );
    assert!(sim.client.is_connected() && sim.client.is_moving_session());
    assert_eq!(sim.client.poll_event(), Some(Event::Connected));
    sim.client
        .send_application_data(sim.now, b"resumed 1")
        .unwrap();
    sim.client
        .send_application_data(sim.now, b"resumed 2")
        .unwrap();
    sim.run_until(sim.now + Duration::from_secs(1), |s| s.in_flight.is_empty());
    assert_eq!(
        sim.sent.len(),
        sent_before + 2,
        "nothing but the two records was sent"
    );
    for (_, d) in &sim.sent[sent_before..] {
        assert_eq!(record_types(d), vec![253]);
    }
    assert!(sim.server_events.contains(&ServerEvent::Moved {
        handle: h,
        from: addr(CLIENT_ADDR),
        to: addr("127.0.0.1:35580"),
    }));
    assert_eq!(
        sim.server_data()[1..],
        [b"resumed 1".to_vec(), b"resumed 2".to_vec()]
    );
    assert_eq!(sim.server.peer(h), Some(addr("127.0.0.1:35580")));

    // The server answers at the new address; after that the client is back to type 25.
    sim.server
        .send_application_data(sim.now, h, b"welcome back")
        .unwrap();
    sim.run_until(sim.now + Duration::from_secs(1), |s| s.in_flight.is_empty());
    assert_eq!(sim.client_data(), vec![b"welcome back".to_vec()]);
    assert!(!sim.client.is_moving_session());
    sim.client
        .send_application_data(sim.now, b"normal")
        .unwrap();
    sim.run_until(sim.now + Duration::from_secs(1), |s| s.in_flight.is_empty());
    assert_eq!(record_types(&sim.sent.last().unwrap().1), vec![25]);

    // A replayed record from the old address neither delivers data nor moves the session back.
    sim.server
        .handle_datagram(sim.now, addr(CLIENT_ADDR), &old_record);
    sim.pump();
    assert_eq!(sim.server.peer(h), Some(addr("127.0.0.1:35580")));
    assert_eq!(sim.server_data().len(), 4);
}

#[test]
fn a_resumed_session_with_a_forged_cid_record_is_not_moved() {
    let mut sim = Sim::new(32, client_config(), server_config(), Faults::default());
    sim.run_handshake();
    let h = sim.handle();
    let state = sim.client.export_session().unwrap();
    // Someone else knows the CID but not the keys.
    let mut forged = state.clone();
    forged.master_secret = [7; 48];
    let mut attacker = Client::resume(
        client_config(),
        &forged,
        ChaCha8Rng::seed_from_u64(1),
        sim.now,
    );
    attacker.send_application_data(sim.now, b"evil").unwrap();
    let d = attacker.poll_transmit().unwrap();
    sim.server
        .handle_datagram(sim.now, addr("10.0.0.9:4000"), &d);
    sim.pump();
    assert_eq!(sim.server.peer(h), Some(addr(CLIENT_ADDR)));
    assert_eq!(sim.server.dropped_records(h), 1);
    assert!(sim.server_data().is_empty());
}

#[test]
fn session_blob_round_trips_and_rejects_garbage() {
    let mut sim = Sim::new(33, client_config(), server_config(), Faults::default());
    sim.run_handshake();
    let state = sim.client.export_session().unwrap();
    let blob = state.to_bytes();
    assert_eq!(blob.len(), 140 + 8);
    assert_eq!(SessionState::from_bytes(&blob).unwrap(), state);
    for n in 0..blob.len() {
        assert!(SessionState::from_bytes(&blob[..n]).is_err());
    }
    let mut bad = blob.clone();
    bad[0] = 9;
    assert_eq!(
        SessionState::from_bytes(&bad),
        Err(DtlsError::BadSessionBlob("unknown format version"))
    );
}

#[test]
fn a_new_full_handshake_from_the_same_address_replaces_the_old_association() {
    let mut sim = Sim::new(34, client_config(), server_config(), Faults::default());
    sim.run_handshake();
    let old = sim.handle();
    let old_cid = sim.server.connection_id(old).unwrap().to_vec();
    // The device discarded its session and handshakes again from the same port.
    sim.client = Client::connect(client_config(), ChaCha8Rng::seed_from_u64(35), sim.now);
    sim.server_events.clear();
    sim.run_handshake();
    assert!(sim.client.is_connected());
    let new = sim.handle();
    assert_ne!(new, old);
    assert_eq!(sim.server.connections(), vec![new]);
    assert_ne!(sim.server.connection_id(new).unwrap(), &old_cid[..]);
    sim.client
        .send_application_data(sim.now, b"after re-handshake")
        .unwrap();
    sim.run_until(sim.now + Duration::from_secs(1), |s| s.in_flight.is_empty());
    assert_eq!(sim.server_data(), vec![b"after re-handshake".to_vec()]);
}
