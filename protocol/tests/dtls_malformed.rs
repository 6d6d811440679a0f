//! Malformed and truncated input gives errors, never panics: every prefix and many single-byte
//! corruptions of every captured datagram and handshake message go through the parsers, and
//! through a connected server and client.

use std::net::SocketAddr;
use std::time::Duration;

use protocol::dtls::handshake::*;
use protocol::dtls::keys::{signing_key_from_der, spki_from_certificate, verifying_key_from_spki};
use protocol::dtls::record::{parse_datagram, RecordRepr};
use protocol::dtls::*;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/vectors/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn captured_datagrams() -> Vec<Vec<u8>> {
    String::from_utf8(read("wire/datagrams.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            hex::decode(v["hex"].as_str().unwrap()).unwrap()
        })
        .collect()
}

/// Every parser on `bytes`; only the absence of panics matters here.
fn parse_everything(bytes: &[u8]) {
    for cid in [0, 8] {
        let _ = parse_datagram(bytes, cid);
    }
    let _ = FragmentRepr::parse_all(bytes);
    let _ = ClientHello::parse(bytes);
    let _ = ServerHello::parse(bytes);
    let _ = HelloVerifyRequest::parse(bytes);
    let _ = ServerKeyExchange::parse(bytes);
    let _ = CertificateRequest::parse(bytes);
    let _ = Certificate::parse(bytes, true);
    let _ = Certificate::parse(bytes, false);
    let _ = ClientKeyExchange::parse(bytes);
    let _ = CertificateVerify::parse(bytes);
    let _ = Finished::parse(bytes);
    let _ = Alert::parse(bytes);
    let _ = SessionState::from_bytes(bytes);
    let _ = spki_from_certificate(bytes);
    let _ = verifying_key_from_spki(bytes);
    let _ = signing_key_from_der(bytes);
}

/// Every prefix, and `n` random single-byte corruptions.
fn variants(bytes: &[u8], rng: &mut ChaCha8Rng, n: usize) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..bytes.len()).map(|i| bytes[..i].to_vec()).collect();
    for _ in 0..n {
        let mut v = bytes.to_vec();
        if !v.is_empty() {
            let at = rng.next_u32() as usize % v.len();
            v[at] = rng.next_u32() as u8;
        }
        out.push(v);
    }
    out
}

#[test]
fn truncated_records_are_reported_with_what_and_where() {
    let d = &captured_datagrams()[4]; // the device's 5-record flight
    assert_eq!(
        parse_datagram(&d[..20], 8),
        Err(DtlsError::Truncated {
            what: "record fragment",
            offset: 20
        })
    );
    // A cut inside the third record is reported at its position in the datagram.
    let err = parse_datagram(&d[..250], 8).unwrap_err();
    assert!(
        matches!(err, DtlsError::Truncated { offset: 250, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "record fragment is truncated at byte 250",
        "errors read as one sentence"
    );
    assert_eq!(
        RecordRepr::parse(&[99, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0),
        Err(DtlsError::UnknownContentType(99))
    );
    assert_eq!(
        ClientHello::parse(&[0xfe]),
        Err(DtlsError::Truncated {
            what: "ClientHello",
            offset: 1
        })
    );
}

#[test]
fn every_prefix_and_corruption_of_captured_bytes_gives_errors_not_panics() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xbad);
    for d in captured_datagrams() {
        for v in variants(&d, &mut rng, 64) {
            parse_everything(&v);
        }
        // Each record's fragment and each handshake body, too.
        for rec in parse_datagram(&d, 8).unwrap() {
            for v in variants(rec.fragment, &mut rng, 32) {
                parse_everything(&v);
            }
            if let Ok(frags) = FragmentRepr::parse_all(rec.fragment) {
                for f in frags {
                    for v in variants(f.fragment, &mut rng, 32) {
                        parse_everything(&v);
                    }
                }
            }
        }
    }
    for name in [
        "x509/server_cert.der",
        "wire/keys/device_private_key.der",
        "wire/keys/server_public_key.der",
    ] {
        for v in variants(&read(name), &mut rng, 64) {
            parse_everything(&v);
        }
    }
}

fn keys() -> (ClientConfig, ServerConfig) {
    let device_key = signing_key_from_der(&read("wire/keys/device_private_key.der")).unwrap();
    let server_key = signing_key_from_der(&read("wire/keys/server_private_key.der")).unwrap();
    let c = ClientConfig::new(device_key.clone(), *server_key.verifying_key());
    let s = ServerConfig::new(server_key, vec![*device_key.verifying_key()]);
    (c, s)
}

/// Feeds corrupted copies of every datagram of a real handshake into fresh endpoints at each
/// step of the handshake: whatever happens, nothing panics.
#[test]
fn corrupted_handshake_datagrams_never_panic_the_state_machines() {
    let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let now = Duration::from_secs(1);
    // Record a clean handshake: the datagrams in order.
    let (c, s) = keys();
    let mut client = Client::connect(c.clone(), ChaCha8Rng::seed_from_u64(1), Duration::ZERO);
    let mut server = Server::new(s.clone(), ChaCha8Rng::seed_from_u64(2));
    let mut log: Vec<(bool, Vec<u8>)> = Vec::new();
    for _ in 0..10 {
        while let Some(d) = client.poll_transmit() {
            server.handle_datagram(now, peer, &d);
            log.push((true, d));
        }
        while let Some(t) = server.poll_transmit() {
            client.handle_datagram(now, &t.payload);
            log.push((false, t.payload));
        }
    }
    assert!(client.is_connected());
    client.send_application_data(now, b"data").unwrap();
    log.push((true, client.poll_transmit().unwrap()));

    // Replay the same handshake (same seeds) up to step k, then corrupt datagram k.
    for k in 0..log.len() {
        // Every 16th prefix and a few corruptions: each variant replays a handshake.
        let d = &log[k].1;
        let cuts = (0..d.len()).step_by(16).map(|i| d[..i].to_vec());
        let corrupt: Vec<Vec<u8>> = (0..6)
            .map(|_| {
                let mut v = d.clone();
                let at = rng.next_u32() as usize % v.len();
                v[at] ^= 1 << (rng.next_u32() % 8);
                v
            })
            .collect();
        for v in cuts.chain(corrupt) {
            let mut client =
                Client::connect(c.clone(), ChaCha8Rng::seed_from_u64(1), Duration::ZERO);
            let mut server = Server::new(s.clone(), ChaCha8Rng::seed_from_u64(2));
            for (to_server, d) in &log[..k] {
                if *to_server {
                    server.handle_datagram(now, peer, d);
                } else {
                    client.handle_datagram(now, d);
                }
            }
            server.handle_datagram(now, peer, &v);
            client.handle_datagram(now, &v);
            server.handle_timeout(now * 100);
            client.handle_timeout(now * 100);
            while server.poll_transmit().is_some() || client.poll_transmit().is_some() {}
            while server.poll_event().is_some() || client.poll_event().is_some() {}
        }
    }
}
