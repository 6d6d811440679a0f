//! Driving the sans-IO client and server over real UDP sockets on loopback (the way a test rig
//! or the interop tests do it), and against `openssl s_server` and `openssl s_client` in X.509
//! mode with CCM8. The openssl tests run whenever `openssl` is on PATH; without it they print
//! `skipped: openssl not found`, unless `HIL_REQUIRE_INTEROP=1` (CI) makes that a failure.

mod support;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use protocol::dtls::keys::{signing_key_from_der, spki_from_certificate, verifying_key_from_spki};
use protocol::dtls::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use support::{drive_client, free_udp_port, read, require_tool, vector_path, Guarded};

/// Everything one openssl test may take; a hung tool fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(10);

/// Short retransmission timers, so that a ClientHello sent before `s_server` listens is
/// repeated at once rather than after the profile's 3 s.
fn quick_timeouts() -> RetransmitTimeouts {
    RetransmitTimeouts {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(1),
    }
}

#[test]
fn our_client_and_server_over_loopback_udp() {
    let server_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server_addr = server_socket.local_addr().unwrap();
    let device_pub = verifying_key_from_spki(&read("wire/keys/device_public_key.der")).unwrap();
    let server_pub = verifying_key_from_spki(&read("wire/keys/server_public_key.der")).unwrap();
    let server_key = signing_key_from_der(&read("wire/keys/server_private_key.der")).unwrap();
    let device_key = signing_key_from_der(&read("wire/keys/device_private_key.der")).unwrap();

    let server_thread = std::thread::spawn(move || {
        let mut server = Server::new(
            ServerConfig::new(server_key, vec![device_pub]),
            ChaCha8Rng::seed_from_u64(1),
        );
        let start = Instant::now();
        let mut buf = [0u8; 2048];
        server_socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok((n, from)) = server_socket.recv_from(&mut buf) {
                server.handle_datagram(start.elapsed(), from, &buf[..n]);
            }
            server.handle_timeout(start.elapsed());
            while let Some(e) = server.poll_event() {
                match e {
                    ServerEvent::ApplicationData { handle, data } => {
                        let mut reply = b"echo: ".to_vec();
                        reply.extend_from_slice(&data);
                        server
                            .send_application_data(start.elapsed(), handle, &reply)
                            .unwrap();
                    }
                    ServerEvent::Closed { .. } => return,
                    _ => {}
                }
            }
            while let Some(t) = server.poll_transmit() {
                server_socket.send_to(&t.payload, t.destination).unwrap();
            }
        }
    });

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(server_addr).unwrap();
    let start = Instant::now();
    let mut client = Client::connect(
        ClientConfig::new(device_key, server_pub),
        ChaCha8Rng::seed_from_u64(2),
        start.elapsed(),
    );
    let events = drive_client(
        &mut client,
        &socket,
        start,
        Duration::from_secs(10),
        |c, e| match e {
            Event::Connected => {
                c.send_application_data(start.elapsed(), b"hello").unwrap();
                false
            }
            Event::ApplicationData(_) => {
                c.close(start.elapsed());
                true
            }
            Event::Closed(_) => true,
        },
    );
    assert_eq!(
        events,
        vec![
            Event::Connected,
            Event::ApplicationData(b"echo: hello".to_vec())
        ]
    );
    server_thread.join().unwrap();
}

/// Our client (X.509 mode, no CID) against `openssl s_server -dtls1_2` with CCM8: the record
/// we send arrives on s_server's stdout.
#[test]
fn our_client_against_openssl_s_server() {
    if !require_tool("openssl", &["version"]) {
        return;
    }
    let port = free_udp_port();
    let server = Guarded::spawn(
        Command::new("openssl")
            .args([
                "s_server",
                "-dtls1_2",
                "-cipher",
                "ECDHE-ECDSA-AES128-CCM8",
                "-naccept",
                "1",
                "-quiet",
            ])
            .args([
                "-cert",
                &vector_path("x509/server_cert.der"),
                "-certform",
                "DER",
            ])
            .args([
                "-key",
                &vector_path("wire/keys/server_private_key.der"),
                "-keyform",
                "DER",
            ])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    std::thread::sleep(Duration::from_millis(200));
    let server_pub =
        verifying_key_from_spki(&spki_from_certificate(&read("x509/server_cert.der")).unwrap())
            .unwrap();
    let mut config = ClientConfig::new(
        signing_key_from_der(&read("wire/keys/device_private_key.der")).unwrap(),
        server_pub,
    );
    config.mode = CertificateMode::X509;
    config.offer_connection_id = false;
    config.timeouts = quick_timeouts();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(("127.0.0.1", port)).unwrap();
    let start = Instant::now();
    let mut client = Client::connect(config, ChaCha8Rng::seed_from_u64(3), start.elapsed());
    let events = drive_client(&mut client, &socket, start, LIMIT, |c, e| {
        if *e == Event::Connected {
            c.send_application_data(start.elapsed(), b"hello openssl\n")
                .unwrap();
            c.close(start.elapsed());
        }
        true
    });
    // s_server exits after its one connection closes (-naccept 1).
    let (out, _) = server.finish(Duration::from_secs(2));
    assert_eq!(events, vec![Event::Connected], "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello openssl"),
        "{out:?}"
    );
}

/// `openssl s_client -dtls1_2` with CCM8 against our server (X.509 mode, no client
/// certificate): a line written to s_client's stdin arrives as one record.
#[test]
fn openssl_s_client_against_our_server() {
    use std::io::Write;
    if !require_tool("openssl", &["version"]) {
        return;
    }
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let mut config = ServerConfig::new(
        signing_key_from_der(&read("wire/keys/server_private_key.der")).unwrap(),
        vec![],
    );
    config.mode = CertificateMode::X509;
    config.server_certificate = Some(read("x509/server_cert.der"));
    config.require_client_certificate = false;
    let mut server = Server::new(config, ChaCha8Rng::seed_from_u64(4));
    let mut child = Guarded::spawn(
        Command::new("openssl")
            .args([
                "s_client",
                "-dtls1_2",
                "-cipher",
                "ECDHE-ECDSA-AES128-CCM8",
                "-quiet",
            ])
            .args(["-connect", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stdin = child.child().stdin.take().unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    while start.elapsed() < LIMIT && got.is_empty() {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            server.handle_datagram(start.elapsed(), from, &buf[..n]);
        }
        server.handle_timeout(start.elapsed());
        while let Some(e) = server.poll_event() {
            match e {
                ServerEvent::Connected { .. } => stdin.write_all(b"hello server\n").unwrap(),
                ServerEvent::ApplicationData { data, .. } => got = data,
                _ => {}
            }
        }
        while let Some(t) = server.poll_transmit() {
            socket.send_to(&t.payload, t.destination).unwrap();
        }
    }
    drop(stdin);
    let (out, _) = child.finish(Duration::ZERO);
    assert_eq!(got, b"hello server\n", "{out:?}");
}
