//! CoAP decoder and exchange layer: any bytes give a message or a typed error, never a panic; a
//! message that decodes re-encodes to exactly the same bytes; the endpoint takes anything.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use protocol::coap::{Endpoint, EndpointConfig, Message};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::parse(data) {
        let emitted = message.emit().expect("a decoded message encodes");
        assert_eq!(emitted, data, "re-encoding differs");
    }
    // The same bytes, twice, through an endpoint (the second time as a duplicate).
    let mut endpoint = Endpoint::new(EndpointConfig::default(), ChaCha8Rng::seed_from_u64(0));
    let now = Duration::ZERO;
    let _ = endpoint.handle_message(now, data);
    let _ = endpoint.handle_message(now + Duration::from_secs(1), data);
    while endpoint.poll_transmit().is_some() {}
    while endpoint.poll_event().is_some() {}
    endpoint.handle_timeout(now + Duration::from_secs(100));
});
