#![no_main]
//! Arbitrary datagrams (2-byte big-endian length prefixes) into a server and a client that are
//! part-way through a real handshake: no panics, whatever arrives.

use std::net::SocketAddr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use protocol::dtls::{Client, ClientConfig, Server, ServerConfig};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn keys() -> (ClientConfig, ServerConfig) {
    use protocol::dtls::keys::signing_key_from_der;
    let device = signing_key_from_der(include_bytes!("../../tests/vectors/wire/keys/device_private_key.der")).unwrap();
    let server = signing_key_from_der(include_bytes!("../../tests/vectors/wire/keys/server_private_key.der")).unwrap();
    (
        ClientConfig::new(device.clone(), *server.verifying_key()),
        ServerConfig::new(server, vec![*device.verifying_key()]),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&steps, mut rest)) = data.split_first() else { return };
    let (c, s) = keys();
    let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let now = Duration::from_secs(1);
    let mut client = Client::connect(c, ChaCha8Rng::seed_from_u64(1), Duration::ZERO);
    let mut server = Server::new(s, ChaCha8Rng::seed_from_u64(2));
    // Let the real handshake run `steps % 4` round trips first.
    for _ in 0..steps % 4 {
        while let Some(d) = client.poll_transmit() {
            server.handle_datagram(now, peer, &d);
        }
        while let Some(t) = server.poll_transmit() {
            client.handle_datagram(now, &t.payload);
        }
    }
    while rest.len() >= 2 {
        let n = (usize::from(rest[0]) << 8 | usize::from(rest[1])).min(rest.len() - 2);
        let d = &rest[2..2 + n];
        rest = &rest[2 + n..];
        server.handle_datagram(now, peer, d);
        client.handle_datagram(now, d);
    }
    server.handle_timeout(now * 100);
    client.handle_timeout(now * 100);
    while server.poll_transmit().is_some() || client.poll_transmit().is_some() {}
    while server.poll_event().is_some() || client.poll_event().is_some() {}
});
