//! The UDP drivers over loopback with the DTLS client and server as nodes: handshake and data,
//! many clients on one server socket, a client that resets onto a new source port, graceful
//! shutdown, garbage and unreachable peers. Real time is used but never asserted: every wait
//! has a generous limit and the tests finish as soon as the condition holds.

mod net_support;

use std::net::SocketAddr;
use std::time::Duration;

use harness::net::udp::UdpNode;
use net_support::*;
use protocol::dtls::{CloseReason, ServerEvent};

/// How long any condition may take before the test fails (they hold in milliseconds).
const LIMIT: Duration = Duration::from_secs(10);

async fn server(devices: &[u64]) -> UdpNode<DtlsServerNode> {
    UdpNode::server(dtls_server(1, devices, 7), addr("127.0.0.1:0"))
        .await
        .expect("bind a loopback server socket")
}

async fn client(device: u64, server: SocketAddr) -> UdpNode<DtlsClientNode> {
    UdpNode::client(dtls_client(device, 1, server, device), server)
        .await
        .expect("bind a loopback client socket")
}

#[tokio::test]
async fn dtls_client_and_server_handshake_and_echo_over_loopback() {
    let server = server(&[2]).await;
    let client = client(2, server.local_addr()).await;
    client.with_node(|n, now| n.send(now, b"hello over udp"));
    assert!(
        client.wait_for(LIMIT, |n| !n.received.is_empty()).await,
        "no echo: {:?}",
        client.with_node(|n, _| n.closed().cloned())
    );
    let c = client.shutdown().await.unwrap();
    assert_eq!(c.received, vec![b"echo: hello over udp".to_vec()]);
    let s = server.shutdown().await.unwrap();
    assert_eq!(s.connected(), 1);
    assert_eq!(s.echoed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_socket_serves_many_clients() {
    let devices: Vec<u64> = (10..16).collect();
    let server = server(&devices).await;
    let mut clients = Vec::new();
    for &d in &devices {
        let c = client(d, server.local_addr()).await;
        c.with_node(|n, now| n.send(now, format!("from {d}").as_bytes()));
        clients.push(c);
    }
    for (c, d) in clients.iter().zip(&devices) {
        assert!(c.wait_for(LIMIT, |n| !n.received.is_empty()).await);
        let got = c.with_node(|n, _| n.received.clone());
        assert_eq!(got, vec![format!("echo: from {d}").into_bytes()]);
    }
    assert!(server.wait_for(LIMIT, |s| s.connected() == 6).await);
    let peers: std::collections::BTreeSet<SocketAddr> =
        clients.iter().map(|c| c.local_addr()).collect();
    assert_eq!(peers.len(), 6);
    for c in clients {
        c.shutdown().await.unwrap();
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_resets_binds_a_new_port_and_its_resumed_session_moves() {
    let server = server(&[2]).await;
    let client = client(2, server.local_addr()).await;
    assert!(client.wait_for(LIMIT, |n| n.is_connected()).await);
    let old = client.local_addr();
    client.with_node(|n, now| {
        n.reset_and_resume(now).expect("a session to resume");
        n.send(now, b"after reset");
    });
    assert!(
        client
            .wait_for(LIMIT, |n| n
                .received
                .contains(&b"echo: after reset".to_vec()))
            .await
    );
    let new = client.local_addr();
    assert_ne!(old.port(), new.port(), "no new socket after the reset");
    assert_eq!(client.stats().rebinds, 1);
    assert!(server.wait_for(LIMIT, |s| !s.moves().is_empty()).await);
    let s = server.shutdown().await.unwrap();
    assert_eq!(s.moves(), vec![(old, new)]);
    assert_eq!(s.connected(), 1, "resumed without a handshake");
    client.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_sends_what_the_node_queued_last() {
    let server = server(&[2]).await;
    let client = client(2, server.local_addr()).await;
    assert!(client.wait_for(LIMIT, |n| n.is_connected()).await);
    // close_notify is queued and the driver asked to stop in the same breath.
    client.with_node(|n, now| n.client.close(now));
    let c = client.shutdown().await.unwrap();
    assert!(c.client.is_closed());
    assert!(
        server
            .wait_for(LIMIT, |s| s.events.iter().any(|e| matches!(
                e,
                ServerEvent::Closed {
                    reason: CloseReason::PeerClosed,
                    ..
                }
            )))
            .await,
        "the server never saw close_notify"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn garbage_datagrams_do_not_stop_the_server() {
    let server = server(&[2]).await;
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut sent = 0;
    for len in [0usize, 1, 3, 13, 25, 100, 1500, 9000] {
        let mut d: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
        if len > 3 {
            d[0] = 22;
            d[1] = 0xfe;
            d[2] = 0xfd;
        }
        junk.send_to(&d, server.local_addr()).await.unwrap();
        sent += 1;
    }
    let client = client(2, server.local_addr()).await;
    client.with_node(|n, now| n.send(now, b"still there?"));
    assert!(client.wait_for(LIMIT, |n| !n.received.is_empty()).await);
    // The junk was queued on the server socket before the client's first datagram.
    assert!(server.stats().received >= sent);
    assert!(!server.is_finished());
    client.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_whose_server_is_not_there_keeps_running_and_stops_cleanly() {
    // A port that was just free: nothing listens, ICMP port unreachable comes back.
    let gone = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let client = client(2, gone).await;
    // The ClientHello goes out; its "port unreachable" must not end the driver.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!client.is_finished());
    let c = client.shutdown().await.unwrap();
    assert!(!c.is_connected());
}

#[tokio::test]
async fn dropping_the_handle_stops_the_driver() {
    let server = server(&[2]).await;
    let addr = server.local_addr();
    drop(server);
    // The port is released once the driver has stopped: binding it again eventually works.
    let mut bound = false;
    for _ in 0..200 {
        if tokio::net::UdpSocket::bind(addr).await.is_ok() {
            bound = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(bound, "the dropped driver still holds {addr}");
}
