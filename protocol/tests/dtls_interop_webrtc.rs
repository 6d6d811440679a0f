//! Interop with an independent Rust implementation: the `dtls` crate (webrtc-rs), in X.509 mode
//! with TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, over real UDP on loopback, both directions:
//! our client against its server, its client against our server. Mutual authentication with
//! the certificates of `tests/vectors/x509` over the keys of `tests/vectors/wire/keys`.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dtls::cipher_suite::CipherSuiteId;
use dtls::config::{ClientAuthType, Config};
use dtls::conn::DTLSConn;
use dtls::crypto::{Certificate, CryptoPrivateKey};
use p256::pkcs8::EncodePrivateKey;
use protocol::dtls::keys::{signing_key_from_der, spki_from_certificate, verifying_key_from_spki};
use protocol::dtls::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use support::{drive_client, read};

/// Everything one test may take; a hung peer fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(10);

/// A `dtls` crate certificate from one of our fixtures (certificate DER + SEC1 key DER).
fn their_certificate(cert: &str, key: &str) -> Certificate {
    let key = signing_key_from_der(&read(key)).unwrap();
    let pkcs8 = key.to_pkcs8_der().unwrap();
    let key_pair = rcgen::KeyPair::try_from(pkcs8.as_bytes()).unwrap();
    Certificate {
        certificate: vec![read(cert).into()],
        private_key: CryptoPrivateKey::from_key_pair(&key_pair).unwrap(),
    }
}

fn their_config(cert: &str, key: &str) -> Config {
    Config {
        certificates: vec![their_certificate(cert, key)],
        cipher_suites: vec![CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm_8],
        // Self-signed fixtures: the chain is not verified; the test checks after the
        // handshake that the peer presented exactly the expected certificate.
        insecure_skip_verify: true,
        client_auth: ClientAuthType::RequireAnyClientCert,
        ..Config::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn our_client_against_the_dtls_crate_server() {
    let client_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let client_addr = client_socket.local_addr().unwrap();
    let server_std = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server_addr = server_std.local_addr().unwrap();
    server_std.set_nonblocking(true).unwrap();

    // Their server: a handshake, then echo one record back with a prefix, then close.
    let server = std::thread::spawn(move || -> Result<Vec<Vec<u8>>, String> {
        runtime().block_on(async move {
            let socket = tokio::net::UdpSocket::from_std(server_std).map_err(|e| e.to_string())?;
            socket
                .connect(client_addr)
                .await
                .map_err(|e| e.to_string())?;
            let config = their_config("x509/server_cert.der", "wire/keys/server_private_key.der");
            let conn =
                tokio::time::timeout(LIMIT, DTLSConn::new(Arc::new(socket), config, false, None))
                    .await
                    .map_err(|_| "their server: handshake timed out".to_string())?
                    .map_err(|e| format!("their server: handshake failed: {e}"))?;
            let mut buf = vec![0u8; 2048];
            let n = conn
                .read(&mut buf, Some(LIMIT))
                .await
                .map_err(|e| format!("their server: read: {e}"))?;
            let mut reply = b"echo: ".to_vec();
            reply.extend_from_slice(&buf[..n]);
            conn.write(&reply, Some(LIMIT))
                .await
                .map_err(|e| format!("their server: write: {e}"))?;
            let peer_certificates = conn.connection_state().await.peer_certificates;
            // Give our client time to read the echo before close_notify follows it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = conn.close().await;
            Ok(peer_certificates)
        })
    });

    let server_pub =
        verifying_key_from_spki(&spki_from_certificate(&read("x509/server_cert.der")).unwrap())
            .unwrap();
    let mut config = ClientConfig::new(
        signing_key_from_der(&read("wire/keys/device_private_key.der")).unwrap(),
        server_pub,
    );
    config.mode = CertificateMode::X509;
    config.device_certificate = Some(read("x509/device_cert.der"));
    config.offer_connection_id = false;
    client_socket.connect(server_addr).unwrap();
    let start = Instant::now();
    let mut client = Client::connect(config, ChaCha8Rng::seed_from_u64(11), start.elapsed());
    let events = drive_client(&mut client, &client_socket, start, LIMIT, |c, e| match e {
        Event::Connected => {
            c.send_application_data(start.elapsed(), b"hello from hil")
                .unwrap();
            false
        }
        _ => true,
    });
    let peer_certificates = server.join().unwrap().unwrap();
    assert_eq!(
        events,
        vec![
            Event::Connected,
            Event::ApplicationData(b"echo: hello from hil".to_vec())
        ]
    );
    assert_eq!(peer_certificates, vec![read("x509/device_cert.der")]);
}

#[test]
fn the_dtls_crate_client_against_our_server() {
    let server_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server_addr: SocketAddr = server_socket.local_addr().unwrap();
    let client_std = UdpSocket::bind("127.0.0.1:0").unwrap();
    client_std.set_nonblocking(true).unwrap();

    // Their client: a handshake, one record out, one record back, then close.
    let client = std::thread::spawn(move || -> Result<(Vec<u8>, Vec<Vec<u8>>), String> {
        runtime().block_on(async move {
            let socket = tokio::net::UdpSocket::from_std(client_std).map_err(|e| e.to_string())?;
            socket
                .connect(server_addr)
                .await
                .map_err(|e| e.to_string())?;
            let config = their_config("x509/device_cert.der", "wire/keys/device_private_key.der");
            let conn =
                tokio::time::timeout(LIMIT, DTLSConn::new(Arc::new(socket), config, true, None))
                    .await
                    .map_err(|_| "their client: handshake timed out".to_string())?
                    .map_err(|e| format!("their client: handshake failed: {e}"))?;
            conn.write(b"hello from webrtc-rs", Some(LIMIT))
                .await
                .map_err(|e| format!("their client: write: {e}"))?;
            let mut buf = vec![0u8; 2048];
            let n = conn
                .read(&mut buf, Some(LIMIT))
                .await
                .map_err(|e| format!("their client: read: {e}"))?;
            let peer_certificates = conn.connection_state().await.peer_certificates;
            let _ = conn.close().await;
            Ok((buf[..n].to_vec(), peer_certificates))
        })
    });

    let device_pub = verifying_key_from_spki(&read("wire/keys/device_public_key.der")).unwrap();
    let mut config = ServerConfig::new(
        signing_key_from_der(&read("wire/keys/server_private_key.der")).unwrap(),
        vec![device_pub],
    );
    config.mode = CertificateMode::X509;
    config.server_certificate = Some(read("x509/server_cert.der"));
    let mut server = Server::new(config, ChaCha8Rng::seed_from_u64(12));
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    let mut events = Vec::new();
    server_socket
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    while start.elapsed() < LIMIT && !client.is_finished() {
        if let Ok((n, from)) = server_socket.recv_from(&mut buf) {
            server.handle_datagram(start.elapsed(), from, &buf[..n]);
        }
        server.handle_timeout(start.elapsed());
        while let Some(e) = server.poll_event() {
            if let ServerEvent::ApplicationData { handle, data } = &e {
                let mut reply = b"echo: ".to_vec();
                reply.extend_from_slice(data);
                server
                    .send_application_data(start.elapsed(), *handle, &reply)
                    .unwrap();
            }
            events.push(e);
        }
        while let Some(t) = server.poll_transmit() {
            server_socket.send_to(&t.payload, t.destination).unwrap();
        }
    }
    let (echo, peer_certificates) = client.join().unwrap().unwrap();
    assert_eq!(echo, b"echo: hello from webrtc-rs");
    assert_eq!(peer_certificates, vec![read("x509/server_cert.der")]);
    assert!(
        matches!(events[0], ServerEvent::Connected { device_key: Some(k), .. } if k == device_pub),
        "{events:?}"
    );
    assert!(
        matches!(&events[1], ServerEvent::ApplicationData { data, .. } if data == b"hello from webrtc-rs"),
        "{events:?}"
    );
}
