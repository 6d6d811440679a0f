//! The RFC 7250 option: in raw-public-key mode the server may send its key in a Certificate
//! message (RFC 7250 section 3, as GnuTLS does and expects) instead of Particle's way of sending
//! none. Off by default on both sides; each side refuses the other way clearly.

use std::net::SocketAddr;
use std::time::Duration;

use protocol::dtls::handshake::*;
use protocol::dtls::keys::{signing_key_from_der, spki_of, verifying_key_from_spki};
use protocol::dtls::record::parse_datagram;
use protocol::dtls::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/vectors/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn configs(client_rfc7250: bool, server_rfc7250: bool) -> (ClientConfig, ServerConfig) {
    let server_pub = verifying_key_from_spki(&read("wire/keys/server_public_key.der")).unwrap();
    let device_pub = verifying_key_from_spki(&read("wire/keys/device_public_key.der")).unwrap();
    let mut c = ClientConfig::new(
        signing_key_from_der(&read("wire/keys/device_private_key.der")).unwrap(),
        server_pub,
    );
    c.rfc7250_server_certificate = client_rfc7250;
    let mut s = ServerConfig::new(
        signing_key_from_der(&read("wire/keys/server_private_key.der")).unwrap(),
        vec![device_pub],
    );
    s.rfc7250_server_certificate = server_rfc7250;
    (c, s)
}

/// Every datagram (to server?, bytes), the client's events and the server's events.
type Exchange = (Vec<(bool, Vec<u8>)>, Vec<Event>, Vec<ServerEvent>);

/// A lossless exchange to quiescence.
fn run(c: ClientConfig, s: ServerConfig) -> Exchange {
    let mut client = Client::connect(c, ChaCha8Rng::seed_from_u64(1), Duration::ZERO);
    let mut server = Server::new(s, ChaCha8Rng::seed_from_u64(2));
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let now = Duration::from_secs(1);
    let (mut sent, mut ce, mut se) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let mut progress = false;
        while let Some(d) = client.poll_transmit() {
            server.handle_datagram(now, peer, &d);
            sent.push((true, d));
            progress = true;
        }
        while let Some(t) = server.poll_transmit() {
            client.handle_datagram(now, &t.payload);
            sent.push((false, t.payload));
            progress = true;
        }
        ce.extend(std::iter::from_fn(|| client.poll_event()));
        se.extend(std::iter::from_fn(|| server.poll_event()));
        if !progress {
            return (sent, ce, se);
        }
    }
}

/// The handshake messages (type, body) of a plaintext datagram.
fn messages(datagram: &[u8]) -> Vec<(u8, Vec<u8>)> {
    parse_datagram(datagram, 0)
        .unwrap()
        .iter()
        .flat_map(|r| FragmentRepr::parse_all(r.fragment).unwrap())
        .map(|f| (f.msg_type, f.fragment.to_vec()))
        .collect()
}

#[test]
fn both_sides_with_the_option_connect_and_the_server_sends_its_spki() {
    let (c, s) = configs(true, true);
    let server_spki = spki_of(s.server_key.verifying_key());
    let (sent, ce, se) = run(c, s);
    assert_eq!(ce, vec![Event::Connected]);
    assert!(matches!(se[0], ServerEvent::Connected { .. }), "{se:?}");
    // The server's flight: ServerHello, Certificate (its raw key), ServerKeyExchange,
    // CertificateRequest, ServerHelloDone.
    let flight = messages(&sent[3].1);
    let types: Vec<u8> = flight.iter().map(|m| m.0).collect();
    assert_eq!(types, vec![2, 11, 12, 13, 14]);
    assert_eq!(
        Certificate::parse(&flight[1].1, true).unwrap(),
        Certificate::RawPublicKey(server_spki)
    );
}

#[test]
fn the_default_is_particles_way_without_a_server_certificate() {
    let (c, s) = configs(false, false);
    assert!(!c.rfc7250_server_certificate && !s.rfc7250_server_certificate);
    let (sent, ce, _) = run(c, s);
    assert_eq!(ce, vec![Event::Connected]);
    let types: Vec<u8> = messages(&sent[3].1).iter().map(|m| m.0).collect();
    assert_eq!(types, vec![2, 12, 13, 14]);
}

#[test]
fn a_client_expecting_the_certificate_refuses_a_particle_server() {
    let (c, s) = configs(true, false);
    let (_, ce, _) = run(c, s);
    assert_eq!(
        ce,
        vec![Event::Closed(CloseReason::Error(
            DtlsError::UnexpectedMessage {
                got: 12,
                expected: "Certificate"
            }
        ))]
    );
}

#[test]
fn a_particle_client_refuses_a_server_sending_the_certificate() {
    let (c, s) = configs(false, true);
    let (_, ce, _) = run(c, s);
    assert_eq!(
        ce,
        vec![Event::Closed(CloseReason::Error(
            DtlsError::UnexpectedMessage {
                got: 11,
                expected: "ServerKeyExchange (a raw-public-key server sends no Certificate)"
            }
        ))]
    );
}

#[test]
fn a_raw_key_certificate_with_another_key_is_refused() {
    let (mut c, s) = configs(true, true);
    // Pin the device's key instead of the server's: the Certificate does not carry it.
    c.server_key = verifying_key_from_spki(&read("wire/keys/device_public_key.der")).unwrap();
    let (_, ce, _) = run(c, s);
    assert_eq!(
        ce,
        vec![Event::Closed(CloseReason::Error(
            DtlsError::ServerKeyMismatch
        ))]
    );
}
