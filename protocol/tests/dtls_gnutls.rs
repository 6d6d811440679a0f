//! Raw public keys (RFC 7250) against GnuTLS: `gnutls-cli` against our server and our client
//! against `gnutls-serv`, both in RPK mode with TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 over DTLS 1.2.
//!
//! In Particle's profile they do not interoperate, and three tests pin down why (details in
//! `tests/INTEROP.md`): RFC 7250 has the server send a Certificate message carrying its
//! SubjectPublicKeyInfo, and GnuTLS does; Particle's profile sends none (the device pins the
//! server key and checks the ServerKeyExchange signature). So gnutls-cli aborts with
//! unexpected_message when our ServerKeyExchange arrives, and our client aborts when
//! gnutls-serv's Certificate arrives. Offering the draft-05 connection ID as the device does
//! fails earlier: GnuTLS does not answer extension 254, and the profile needs an 8-byte CID.
//!
//! With `rfc7250_server_certificate` (and no CID) both directions work: handshake with raw
//! keys both ways, one record through (gnutls-cli signs its CertificateVerify with ECDSA/SHA-384,
//! which our CertificateRequest — the cloud's, byte for byte — offers).
//!
//! Without gnutls-cli/gnutls-serv: `skipped: ... not found`, or a failure under
//! `HIL_REQUIRE_INTEROP=1`.

mod support;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use p256::pkcs8::EncodePrivateKey;
use protocol::dtls::keys::{signing_key_from_der, verifying_key_from_spki};
use protocol::dtls::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use support::{drive_client, free_udp_port, pem, read, require_tool, temp_dir, Guarded};

const LIMIT: Duration = Duration::from_secs(5);

/// DTLS 1.2, TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 only, P-256, raw public keys both ways.
const PRIORITY: &str = "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-CIPHER-ALL:+AES-128-CCM-8:-MAC-ALL:+AEAD:\
                        -KX-ALL:+ECDHE-ECDSA:-GROUP-ALL:+GROUP-SECP256R1:\
                        -CTYPE-ALL:+CTYPE-CLI-RAWPK:+CTYPE-SRV-RAWPK";

/// Writes `<who>_key.pem` (PKCS#8) and `<who>_pub.pem` (SPKI) for GnuTLS's --rawpk options.
fn key_files(dir: &std::path::Path, who: &str) -> (PathBuf, PathBuf) {
    let key = signing_key_from_der(&read(&format!("wire/keys/{who}_private_key.der"))).unwrap();
    let key_path = dir.join(format!("{who}_key.pem"));
    let pub_path = dir.join(format!("{who}_pub.pem"));
    let pkcs8 = key.to_pkcs8_der().unwrap();
    std::fs::write(&key_path, pem("PRIVATE KEY", pkcs8.as_bytes())).unwrap();
    std::fs::write(
        &pub_path,
        pem(
            "PUBLIC KEY",
            &read(&format!("wire/keys/{who}_public_key.der")),
        ),
    )
    .unwrap();
    (key_path, pub_path)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// gnutls-cli (raw keys both ways) against our server in raw-public-key mode; returns our
/// server's events (until it closes or gets a record), what gnutls-cli printed, and whether it
/// exited with success.
fn gnutls_cli_against_our_server(rfc7250_server_certificate: bool) -> (Vec<ServerEvent>, String) {
    use std::io::Write;
    let dir = temp_dir(&format!("gnutls-cli-{rfc7250_server_certificate}"));
    let (key, public) = key_files(&dir, "device");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let device_pub = verifying_key_from_spki(&read("wire/keys/device_public_key.der")).unwrap();
    let mut config = ServerConfig::new(
        signing_key_from_der(&read("wire/keys/server_private_key.der")).unwrap(),
        vec![device_pub],
    );
    config.rfc7250_server_certificate = rfc7250_server_certificate;
    let mut server = Server::new(config, ChaCha8Rng::seed_from_u64(31));
    let mut child = Guarded::spawn(
        Command::new("gnutls-cli")
            .args(["--udp", "--port", &port.to_string(), "127.0.0.1"])
            .args(["--priority", PRIORITY, "--insecure", "--debug", "4"])
            .arg("--rawpkkeyfile")
            .arg(&key)
            .arg("--rawpkfile")
            .arg(&public)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stdin = child.child().stdin.take();
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    let mut events = Vec::new();
    socket
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let done = |events: &[ServerEvent]| {
        events.iter().any(|e| {
            matches!(
                e,
                ServerEvent::Closed { .. } | ServerEvent::ApplicationData { .. }
            )
        })
    };
    while start.elapsed() < LIMIT && !done(&events) {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            server.handle_datagram(start.elapsed(), from, &buf[..n]);
        }
        server.handle_timeout(start.elapsed());
        while let Some(e) = server.poll_event() {
            if let (ServerEvent::Connected { .. }, Some(stdin)) = (&e, stdin.as_mut()) {
                let _ = stdin.write_all(b"hello from gnutls-cli\n");
            }
            events.push(e);
        }
        while let Some(t) = server.poll_transmit() {
            socket.send_to(&t.payload, t.destination).unwrap();
        }
    }
    drop(stdin.take());
    let (out, _) = child.finish(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
    (
        events,
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

#[test]
fn gnutls_cli_refuses_our_server_because_it_sends_no_certificate_message() {
    if !require_tool("gnutls-cli", &["--version"]) {
        return;
    }
    let (events, log) = gnutls_cli_against_our_server(false);
    // The failed handshake is reported (who and why), then closed.
    assert!(
        matches!(
            events.first(),
            Some(ServerEvent::Refused {
                reason: CloseReason::Error(DtlsError::PeerAlert(10)),
                ..
            })
        ),
        "{events:?}"
    );
    let events: Vec<ServerEvent> = events
        .into_iter()
        .filter(|e| !matches!(e, ServerEvent::Refused { .. }))
        .collect();
    // gnutls-cli accepts raw public keys both ways, then expects the server's Certificate and
    // gets our ServerKeyExchange: it sends a fatal unexpected_message (10) alert.
    assert!(
        log.contains("Selected server certificate type Raw Public Key"),
        "{log}"
    );
    assert_eq!(
        events.len(),
        1,
        "expected only the close, got {events:?}\n{log}"
    );
    assert!(
        matches!(
            &events[0],
            ServerEvent::Closed {
                reason: CloseReason::Error(DtlsError::PeerAlert(10)),
                ..
            }
        ),
        "{events:?}\n{log}"
    );
}

#[test]
fn gnutls_cli_connects_to_our_server_sending_an_rfc7250_certificate() {
    if !require_tool("gnutls-cli", &["--version"]) {
        return;
    }
    let (events, log) = gnutls_cli_against_our_server(true);
    let device_pub = verifying_key_from_spki(&read("wire/keys/device_public_key.der")).unwrap();
    assert!(
        matches!(&events[0], ServerEvent::Connected { device_key: Some(k), .. } if *k == device_pub),
        "{events:?}\n{log}"
    );
    assert!(
        matches!(&events[1], ServerEvent::ApplicationData { data, .. } if data == b"hello from gnutls-cli\n"),
        "{events:?}\n{log}"
    );
}

/// Our client in raw-public-key mode against gnutls-serv; returns our client's events and the
/// server's log.
fn our_client_against_gnutls_serv(
    offer_connection_id: bool,
    rfc7250_server_certificate: bool,
) -> (Vec<Event>, String) {
    let dir = temp_dir(&format!(
        "gnutls-serv-{offer_connection_id}-{rfc7250_server_certificate}"
    ));
    let (key, public) = key_files(&dir, "server");
    let port = free_udp_port();
    let server = Guarded::spawn(
        Command::new("gnutls-serv")
            .args(["--udp", "--port", &port.to_string(), "--echo"])
            .args(["--priority", PRIORITY, "--debug", "4"])
            .arg("--rawpkkeyfile")
            .arg(&key)
            .arg("--rawpkfile")
            .arg(&public)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let server_pub = verifying_key_from_spki(&read("wire/keys/server_public_key.der")).unwrap();
    let mut config = ClientConfig::new(
        signing_key_from_der(&read("wire/keys/device_private_key.der")).unwrap(),
        server_pub,
    );
    config.offer_connection_id = offer_connection_id;
    config.rfc7250_server_certificate = rfc7250_server_certificate;
    // Repeat the ClientHello quickly in case gnutls-serv is not listening yet.
    config.timeouts = RetransmitTimeouts {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(1),
    };
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(("127.0.0.1", port)).unwrap();
    let start = Instant::now();
    let mut client = Client::connect(config, ChaCha8Rng::seed_from_u64(32), start.elapsed());
    let events = drive_client(&mut client, &socket, start, LIMIT, |c, e| {
        if *e == Event::Connected {
            let _ = c.send_application_data(start.elapsed(), b"hello gnutls-serv\n");
            return false;
        }
        true
    });
    let (out, _) = server.finish(Duration::from_millis(200));
    let _ = std::fs::remove_dir_all(&dir);
    (
        events,
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

#[test]
fn our_client_refuses_gnutls_serv_because_it_sends_a_certificate_message() {
    if !require_tool("gnutls-serv", &["--version"]) {
        return;
    }
    let (events, log) = our_client_against_gnutls_serv(false, false);
    // gnutls-serv agrees on raw public keys both ways and queues Certificate (its SPKI); the
    // Particle profile expects ServerKeyExchange right after ServerHello.
    assert!(log.contains("CERTIFICATE was queued"), "{log}");
    assert_eq!(
        events,
        vec![Event::Closed(CloseReason::Error(
            DtlsError::UnexpectedMessage {
                got: 11,
                expected: "ServerKeyExchange (a raw-public-key server sends no Certificate)"
            }
        ))],
        "{log}"
    );
}

#[test]
fn our_client_offering_a_connection_id_refuses_gnutls_serv_which_assigns_none() {
    if !require_tool("gnutls-serv", &["--version"]) {
        return;
    }
    let (events, log) = our_client_against_gnutls_serv(true, false);
    assert_eq!(
        events,
        vec![Event::Closed(CloseReason::Error(
            DtlsError::BadConnectionId(0)
        ))],
        "{log}"
    );
}

#[test]
fn our_client_expecting_an_rfc7250_certificate_connects_to_gnutls_serv() {
    if !require_tool("gnutls-serv", &["--version"]) {
        return;
    }
    let (events, log) = our_client_against_gnutls_serv(false, true);
    // gnutls-serv --echo sends the record back.
    assert_eq!(
        events,
        vec![
            Event::Connected,
            Event::ApplicationData(b"hello gnutls-serv\n".to_vec())
        ],
        "{log}"
    );
}

#[test]
fn pem_armour_uses_standard_base64() {
    // RFC 4648 test vectors, then a line break every 64 characters.
    for (input, b64) in [
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(
            pem("X", input.as_bytes()),
            format!("-----BEGIN X-----\n{b64}\n-----END X-----\n")
        );
    }
    let long = pem("X", &[0u8; 60]);
    assert_eq!(long.lines().nth(1).unwrap().len(), 64);
    assert_eq!(long.lines().nth(2).unwrap(), "AAAAAAAAAAAAAAAA"); // 80 characters in all
}
