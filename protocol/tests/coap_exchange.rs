//! The CoAP exchange layer (reference §1.5), driven in virtual time, checked against the bytes of
//! the real Device OS 6.2.0 session where the session shows the behaviour.

use std::time::Duration;

use protocol::coap::{
    option, CoapOption, Code, Endpoint, EndpointConfig, EndpointEvent, IncomingRequest, Message,
    MessageType,
};
use protocol::message::{Body, ParticleMessage, UpdateStartResponse};
use rand_core::RngCore;

/// An RNG that always returns the same value: the jitter is then known exactly.
struct FixedRng(u32);

impl RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        self.0
    }
    fn next_u64(&mut self) -> u64 {
        u64::from(self.0)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(self.0 as u8);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn endpoint(last_message_id: u16, jitter: u32) -> Endpoint<FixedRng> {
    Endpoint::new(
        EndpointConfig {
            last_message_id: Some(last_message_id),
            last_token: Some(0x30),
            ..EndpointConfig::default()
        },
        FixedRng(jitter),
    )
}

fn hello_request() -> Message {
    let bytes =
        hex("40020001b168ff0003ffff00b6000d000ca6e8c393e942e9ea3eb89d151838048000a000000200");
    Message::parse(&bytes).unwrap()
}

fn drain(endpoint: &mut Endpoint<FixedRng>) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| endpoint.poll_transmit()).collect()
}

fn events(endpoint: &mut Endpoint<FixedRng>) -> Vec<EndpointEvent> {
    std::iter::from_fn(|| endpoint.poll_event()).collect()
}

#[test]
fn device_hello_gets_message_id_one_and_piggybacked_ack_completes_it() {
    let t0 = Duration::ZERO;
    let mut device = endpoint(0, 0);
    let handle = device.send(t0, hello_request()).unwrap();
    assert_eq!(
        drain(&mut device),
        vec![hex(
            "40020001b168ff0003ffff00b6000d000ca6e8c393e942e9ea3eb89d151838048000a000000200"
        )]
    );
    // The cloud's ACK 2.04 from the capture.
    device.handle_message(t0, &hex("60440001")).unwrap();
    let got = events(&mut device);
    assert!(matches!(
        &got[..],
        [EndpointEvent::Response { handle: h, message }] if *h == handle && message.code == Code::CHANGED
    ));
    assert_eq!(device.poll_timeout(), None);
    device.handle_timeout(t0 + Duration::from_secs(100));
    assert!(drain(&mut device).is_empty());
}

#[test]
fn con_is_retransmitted_three_times_with_doubling_timeouts_then_times_out() {
    let t0 = Duration::ZERO;
    let mut device = endpoint(0, 0);
    let handle = device.send(t0, hello_request()).unwrap();
    assert_eq!(drain(&mut device).len(), 1);
    let mut sent_at = vec![Duration::ZERO];
    let mut now = t0;
    while let Some(deadline) = device.poll_timeout() {
        now = deadline;
        device.handle_timeout(now);
        if drain(&mut device).len() == 1 {
            sent_at.push(now - t0);
        }
    }
    let secs: Vec<u64> = sent_at.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, vec![0, 4, 12, 28], "4 s << n, no jitter");
    assert_eq!(now - t0, Duration::from_secs(60));
    assert_eq!(
        events(&mut device),
        vec![EndpointEvent::TimedOut { handle }]
    );
}

#[test]
fn retransmission_jitter_adds_at_most_half_the_timeout() {
    let t0 = Duration::ZERO;
    let mut device = endpoint(0, 255);
    device.send(t0, hello_request()).unwrap();
    let first = device.poll_timeout().unwrap() - t0;
    assert_eq!(
        first,
        Duration::from_nanos(4_000_000_000 + 4_000_000_000 * 255 / 512)
    );
    let mut now = t0;
    while let Some(deadline) = device.poll_timeout() {
        now = deadline;
        device.handle_timeout(now);
    }
    let give_up = now - t0;
    assert!(give_up > Duration::from_secs(89) && give_up < Duration::from_secs(93));
}

#[test]
fn update_start_is_acked_empty_then_answered_separately_as_in_the_capture() {
    let t0 = Duration::ZERO;
    // The device has sent 8 messages before UpdateStart; its 2.01 is message id 9.
    let mut device = endpoint(8, 0);
    // Record 31 of the capture.
    let update_start = hex(
        "4102020031b153e206f113884d139e738b4f295af2cc1d12fe1ac29674645471fb0623584e390dc1bef879e69de6420400",
    );
    device.handle_message(t0, &update_start).unwrap();
    let Some(EndpointEvent::Request { request, message }) = device.poll_event() else {
        panic!("no request")
    };
    assert!(matches!(
        ParticleMessage::from_coap(&message).unwrap().body,
        Body::UpdateStart(_)
    ));
    device.accept(t0, &request).unwrap();
    assert_eq!(drain(&mut device), vec![hex("60000200")]);

    let response = UpdateStartResponse {
        window_size: 128,
        resume_offset: 0,
    }
    .emit();
    let mut separate = Message::new(MessageType::Confirmable, response.code, 0);
    separate.options = response.options;
    let handle = device
        .respond(t0 + Duration::from_millis(1), &request, separate)
        .unwrap()
        .expect("a separate response");
    assert_eq!(drain(&mut device), vec![hex("4141000931e106f88040")]);

    // The cloud's empty ACK for it.
    device
        .handle_message(t0 + Duration::from_millis(2), &hex("60000009"))
        .unwrap();
    assert_eq!(
        events(&mut device),
        vec![EndpointEvent::Acknowledged { handle }]
    );
    assert_eq!(device.unacknowledged(), 0);
}

#[test]
fn duplicate_con_gets_the_cached_reply_and_is_not_delivered_twice() {
    let t0 = Duration::ZERO;
    let mut cloud = endpoint(0x1ff, 0);
    let hello = hello_request().emit().unwrap();
    cloud.handle_message(t0, &hello).unwrap();
    let Some(EndpointEvent::Request { request, .. }) = cloud.poll_event() else {
        panic!()
    };
    let ack = Message::new(MessageType::Acknowledgement, Code::CHANGED, 0);
    assert_eq!(cloud.respond(t0, &request, ack).unwrap(), None);
    assert_eq!(drain(&mut cloud), vec![hex("60440001")]);

    // The device did not get the ACK and retransmits: the cloud repeats it, nothing new.
    cloud
        .handle_message(t0 + Duration::from_secs(4), &hello)
        .unwrap();
    assert_eq!(drain(&mut cloud), vec![hex("60440001")]);
    assert!(events(&mut cloud).is_empty());

    // After 45 s the message id may be reused.
    cloud
        .handle_message(t0 + Duration::from_secs(46), &hello)
        .unwrap();
    assert!(drain(&mut cloud).is_empty());
    assert_eq!(events(&mut cloud).len(), 1);
}

#[test]
fn duplicate_before_an_answer_is_dropped_silently() {
    let t0 = Duration::ZERO;
    let mut cloud = endpoint(0, 0);
    let hello = hello_request().emit().unwrap();
    cloud.handle_message(t0, &hello).unwrap();
    cloud.handle_message(t0, &hello).unwrap();
    assert_eq!(events(&mut cloud).len(), 1);
    assert!(drain(&mut cloud).is_empty());
}

#[test]
fn ping_is_answered_with_an_empty_ack() {
    let t0 = Duration::ZERO;
    let mut device = endpoint(0, 0);
    device.handle_message(t0, &hex("40001234")).unwrap();
    assert_eq!(drain(&mut device), vec![hex("60001234")]);
    assert!(events(&mut device).is_empty());
}

#[test]
fn separate_response_from_the_peer_is_acked_and_matched_by_token() {
    let t0 = Duration::ZERO;
    let mut cloud = endpoint(0x1ff, 0);
    let mut start = Message::new(MessageType::Confirmable, Code::POST, 0);
    start.token = cloud.next_token();
    assert_eq!(start.token, vec![0x31]);
    start.options = vec![
        CoapOption::new(option::URI_PATH, b"S".to_vec()),
        CoapOption::uint(option::FILE_SIZE, 5000),
        CoapOption::uint(option::CHUNK_SIZE, 1024),
    ];
    let handle = cloud.send(t0, start).unwrap();
    drain(&mut cloud);
    cloud.handle_message(t0, &hex("60000200")).unwrap();
    assert_eq!(
        events(&mut cloud),
        vec![EndpointEvent::Acknowledged { handle }]
    );
    cloud
        .handle_message(t0, &hex("4141000931e106f88040"))
        .unwrap();
    assert_eq!(drain(&mut cloud), vec![hex("60000009")]);
    let got = events(&mut cloud);
    let [EndpointEvent::Response { handle: h, message }] = &got[..] else {
        panic!("{got:?}")
    };
    assert_eq!(*h, handle);
    let Body::Response(r) = ParticleMessage::from_coap(message).unwrap().body else {
        panic!()
    };
    assert_eq!(UpdateStartResponse::parse(&r).unwrap().window_size, 128);
    // A retransmitted 2.01 is acknowledged again and not delivered twice.
    cloud
        .handle_message(t0, &hex("4141000931e106f88040"))
        .unwrap();
    assert_eq!(drain(&mut cloud), vec![hex("60000009")]);
    assert!(events(&mut cloud).is_empty());
}

#[test]
fn reset_completes_a_pending_con() {
    let t0 = Duration::ZERO;
    let mut device = endpoint(0, 0);
    let handle = device.send(t0, hello_request()).unwrap();
    device.handle_message(t0, &hex("70000001")).unwrap();
    assert_eq!(events(&mut device), vec![EndpointEvent::Reset { handle }]);
    assert_eq!(device.poll_timeout(), None);
}

#[test]
fn non_messages_are_not_deduplicated_or_acknowledged() {
    let t0 = Duration::ZERO;
    let mut device = endpoint(0, 0);
    let chunk = hex("50020201b143e106e901ff00112233");
    device.handle_message(t0, &chunk).unwrap();
    device.handle_message(t0, &chunk).unwrap();
    assert_eq!(events(&mut device).len(), 2);
    assert!(drain(&mut device).is_empty());
}

#[test]
fn reject_answers_with_rst_and_caches_it() {
    let t0 = Duration::ZERO;
    let mut device = endpoint(0, 0);
    device.handle_message(t0, &hex("41020005aab153")).unwrap();
    let Some(EndpointEvent::Request { request, .. }) = device.poll_event() else {
        panic!()
    };
    device.reject(t0, &request).unwrap();
    assert_eq!(drain(&mut device), vec![hex("70000005")]);
    device.handle_message(t0, &hex("41020005aab153")).unwrap();
    assert_eq!(drain(&mut device), vec![hex("70000005")]);
    let request = IncomingRequest { ..request };
    assert!(device.reject(t0, &request).is_err(), "answered twice");
}

#[test]
fn malformed_input_is_an_error_and_changes_nothing() {
    let t0 = Duration::ZERO;
    let mut device = endpoint(0, 0);
    let handle = device.send(t0, hello_request()).unwrap();
    drain(&mut device);
    for bad in [&[][..], &[0x60], &[0x80, 0, 0, 1], &[0x61, 0, 0, 1, 0xAA]] {
        assert!(device.handle_message(t0, bad).is_err());
    }
    assert!(events(&mut device).is_empty());
    assert_eq!(device.unacknowledged(), 1);
    device.handle_message(t0, &hex("60000001")).unwrap();
    assert_eq!(
        events(&mut device),
        vec![EndpointEvent::Acknowledged { handle }]
    );
}

#[test]
fn unanswerable_requests_are_not_remembered() {
    let t0 = Duration::ZERO;
    let mut device = endpoint(9, 0);
    // 1000 UpdateAcks (NON, no token) leave nothing behind.
    for _ in 0..1000 {
        let mut ack = Message::new(MessageType::NonConfirmable, Code::POST, 0);
        ack.options = vec![
            CoapOption::new(option::URI_PATH, b"A".to_vec()),
            CoapOption::uint(option::CHUNK_INDEX, 1),
        ];
        device.send(t0, ack).unwrap();
    }
    assert_eq!(device.awaiting_responses(), 0);
    assert_eq!(device.poll_timeout(), None);
    // An event (CON, no token) is forgotten once acknowledged.
    let mut event = Message::new(MessageType::Confirmable, Code::POST, 0);
    event.options = vec![
        CoapOption::new(option::URI_PATH, b"E".to_vec()),
        CoapOption::new(option::URI_PATH, b"x".to_vec()),
    ];
    device.send(t0, event).unwrap();
    assert_eq!(device.awaiting_responses(), 1);
    device.handle_message(t0, &hex("600003f2")).unwrap();
    assert_eq!(device.awaiting_responses(), 0);
}

/// A seeded, lossy datagram link between a device endpoint and a cloud endpoint, in virtual time.
#[test]
fn lossy_link_delivers_each_request_once_and_ends_every_exchange() {
    use std::collections::{BTreeMap, BTreeSet};

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }
    impl RngCore for XorShift {
        fn next_u32(&mut self) -> u32 {
            self.next() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.next()
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.iter_mut().for_each(|b| *b = self.next() as u8);
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    for seed in [1u64, 2, 3, 0xDEAD_BEEF] {
        let t0 = Duration::ZERO;
        let config = EndpointConfig {
            last_message_id: Some(0),
            ..EndpointConfig::default()
        };
        let mut device = Endpoint::new(config.clone(), XorShift(seed));
        let mut cloud = Endpoint::new(config, XorShift(seed ^ 0x55));
        let mut link = XorShift(seed.wrapping_mul(31) | 1);
        let mut handles = BTreeSet::new();
        for i in 0..20 {
            let event = ParticleMessage {
                kind: MessageType::Confirmable,
                message_id: 0,
                token: Vec::new(),
                body: Body::Event(protocol::message::Event::new(format!("e/{i}"), "x")),
            };
            handles.insert(device.send(t0, event.to_coap().unwrap()).unwrap());
        }
        let mut delivered = BTreeMap::new();
        let mut ended = BTreeMap::new();
        let mut now = t0;
        for _ in 0..10_000 {
            // 30 % of datagrams are lost, both ways.
            while let Some(bytes) = device.poll_transmit() {
                if link.next() % 10 >= 3 {
                    cloud.handle_message(now, &bytes).unwrap();
                }
            }
            while let Some(event) = cloud.poll_event() {
                if let EndpointEvent::Request { request, message } = event {
                    *delivered.entry(message.message_id).or_insert(0) += 1;
                    let ack = Message::new(MessageType::Acknowledgement, Code::CHANGED, 0);
                    cloud.respond(now, &request, ack).unwrap();
                }
            }
            while let Some(bytes) = cloud.poll_transmit() {
                if link.next() % 10 >= 3 {
                    device.handle_message(now, &bytes).unwrap();
                }
            }
            while let Some(event) = device.poll_event() {
                match event {
                    EndpointEvent::Response { handle, .. } => {
                        assert!(ended.insert(handle, "response").is_none(), "seed {seed}")
                    }
                    EndpointEvent::TimedOut { handle } => {
                        assert!(ended.insert(handle, "timeout").is_none(), "seed {seed}")
                    }
                    EndpointEvent::Unmatched { .. } => {}
                    other => panic!("seed {seed}: unexpected {other:?}"),
                }
            }
            match device.poll_timeout() {
                Some(deadline) => {
                    now = deadline;
                    device.handle_timeout(now);
                }
                None => break,
            }
        }
        assert_eq!(
            ended.keys().copied().collect::<BTreeSet<_>>(),
            handles,
            "seed {seed}: every exchange ends once"
        );
        assert!(
            delivered.values().all(|&n| n == 1),
            "seed {seed}: a request was delivered twice: {delivered:?}"
        );
        let responses = ended.values().filter(|&&e| e == "response").count();
        assert!(
            responses >= 15,
            "seed {seed}: only {responses} of 20 answered"
        );
        // No retransmission outlives the give-up time of ~93 s.
        assert!(now - t0 < Duration::from_secs(94), "seed {seed}");
    }
}
