//! Session persistence and handshake-less resumption (reference 1.4): what survives a reset,
//! sleep and a power cut, the type-253 records of a resumed session, the ping that replaces the
//! Hello when nothing changed, and when the session is given up.

mod device_os_support;

use std::time::Duration;

use device_os_support::*;
use emulator::os::{DeviceEvent, DisconnectReason};
use protocol::coap::{Code, MessageType};
use protocol::message::{Body, Hello};

const SECOND: Duration = Duration::from_secs(1);

fn kinds_since(sim: &Sim, from: usize) -> Vec<String> {
    sim.cloud.sent_by_device()[from..]
        .iter()
        .map(|s| match s.particle().map(|p| p.body) {
            Some(Body::Ping) => "ping".to_string(),
            Some(Body::Hello(_)) => "hello".to_string(),
            Some(Body::Describe(d)) => format!("describe {}", d.flags.0),
            Some(Body::TimeRequest) => "time".to_string(),
            Some(Body::Event(e)) => {
                format!("event {}={}", e.name, String::from_utf8_lossy(&e.data))
            }
            Some(Body::Subscribe(s)) => format!("subscribe {}", s.filter),
            Some(Body::Goodbye(_)) => "goodbye".to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn system_reset_resumes_the_session_with_type_253_records_and_a_ping() {
    let mut sim = Sim::boron();
    sim.connect();
    let generation = sim.device.socket_generation();
    let last_id = sim
        .cloud
        .sent_by_device()
        .last()
        .unwrap()
        .message
        .message_id;
    let (datagrams, messages) = (sim.device_datagrams.len(), sim.cloud.sent_by_device().len());
    let now = sim.now;
    sim.device.system_reset(now);
    assert!(sim.run_until(10 * SECOND, |e| matches!(e, DeviceEvent::Connected { .. })));
    assert!(sim
        .trace
        .iter()
        .any(|(_, e)| *e == DeviceEvent::Connected { resumed: true }));
    assert_eq!(
        sim.device.socket_generation(),
        generation + 1,
        "a new socket"
    );
    // No handshake: every record until the server is heard from is a type-253 CID record
    // (the ping and the events all go out before the first answer)...
    let after: Vec<u8> = sim.device_datagrams[datagrams..]
        .iter()
        .map(|(_, d)| first_record_type(d))
        .collect();
    assert_eq!(after, vec![253; 4]);
    // Unchanged state: a ping instead of Hello, no describe, no time (the RTC kept its time),
    // no subscriptions; the reset reason and the update flags.
    assert_eq!(
        kinds_since(&sim, messages),
        vec![
            "ping",
            "event spark/device/last_reset=user",
            "event particle/device/updates/enabled=true",
            "event particle/device/updates/forced=false",
        ]
    );
    // The CoAP message ids continue from the persisted session.
    let ping = &sim.cloud.sent_by_device()[messages];
    assert_eq!(ping.message.kind, MessageType::Confirmable);
    assert_eq!(ping.message.code, Code::EMPTY);
    assert_eq!(ping.message.message_id, last_id.wrapping_add(1));
    // The cloud saw the association move to the new port, no new handshake.
    assert_eq!(sim.cloud.server.connections().len(), 1);
    // ... and once it answered, records are type 25 again.
    let now = sim.now;
    sim.device.disable_updates(now);
    sim.run_for(SECOND);
    assert_eq!(
        first_record_type(&sim.device_datagrams.last().unwrap().1),
        25
    );
}

#[test]
fn a_power_cut_loses_the_session_and_the_next_connection_is_a_full_handshake() {
    let mut sim = Sim::boron();
    sim.connect();
    let (datagrams, messages) = (sim.device_datagrams.len(), sim.cloud.sent_by_device().len());
    let now = sim.now;
    sim.device.power_cut(now);
    assert!(!sim.device.status().powered);
    assert!(!sim.device.status().has_session);
    sim.run_for(SECOND);
    sim.connect();
    assert_eq!(first_record_type(&sim.device_datagrams[datagrams].1), 22);
    let kinds = kinds_since(&sim, messages);
    assert_eq!(kinds[0], "hello");
    assert!(kinds.contains(&"event spark/device/last_reset=power_down".to_string()));
    assert!(kinds.contains(&"time".to_string()), "{kinds:?}");
    // Message ids start again from 1.
    assert_eq!(sim.cloud.sent_by_device()[messages].message.message_id, 1);
}

#[test]
fn new_firmware_after_a_reset_sends_hello_and_describes_again_in_the_resumed_session() {
    let mut sim = Sim::boron();
    sim.connect();
    let messages = sim.cloud.sent_by_device().len();
    stage_update(sim.device.device_mut(), &app_module("boron", &v4()));
    let now = sim.now;
    sim.device.system_reset(now);
    assert!(sim.run_until(10 * SECOND, |e| matches!(e, DeviceEvent::Connected { .. })));
    // The session resumed (no ClientHello) but the system describe checksum changed.
    assert!(sim
        .trace
        .iter()
        .any(|(_, e)| *e == DeviceEvent::Connected { resumed: true }));
    assert_eq!(
        kinds_since(&sim, messages),
        vec![
            "hello",
            "describe 1",
            "time",
            "event spark/device/last_reset=user",
            "event particle/device/updates/enabled=true",
            "event particle/device/updates/forced=false",
            "describe 2",
            "subscribe particle",
            "subscribe spark",
        ]
    );
    let hello =
        Hello::parse_payload(&sim.cloud.sent_by_device()[messages].message.payload).unwrap();
    assert_eq!(hello.product_version, 4);
    assert_eq!(sim.device.status().versions.user_part, Some(7));
}

#[test]
fn an_unanswered_resumption_is_given_up_after_three_uses() {
    let mut sim = Sim::boron();
    sim.connect();
    // The cloud forgets the session: resumed records with its CID are dropped.
    let h = sim.cloud.connection().unwrap();
    sim.cloud.server.remove(h);
    for attempt in 1..=3 {
        let now = sim.now;
        sim.device.system_reset(now);
        sim.run_for(5 * SECOND);
        assert!(
            sim.trace_since(0)
                .contains(&DeviceEvent::Connecting { resume: true }),
            "attempt {attempt}"
        );
        assert!(!sim.device.status().connected);
    }
    let from = sim.trace.len();
    let now = sim.now;
    sim.device.system_reset(now);
    sim.run_for(5 * SECOND);
    let trace = sim.trace_since(from);
    assert!(
        trace.contains(&DeviceEvent::Connecting { resume: false }),
        "{trace:#?}"
    );
    assert!(trace.contains(&DeviceEvent::Connected { resumed: false }));
}

#[test]
fn an_unanswered_resumed_ping_times_out_and_the_device_starts_over() {
    let mut sim = Sim::boron();
    sim.connect();
    let h = sim.cloud.connection().unwrap();
    sim.cloud.server.remove(h);
    let from = sim.trace.len();
    let now = sim.now;
    sim.device.system_reset(now);
    // The ping is retransmitted 3 times (4, 8, 16 s plus up to 50 %) then gives up.
    assert!(sim.run_until(100 * SECOND, |e| matches!(
        e,
        DeviceEvent::Disconnected {
            reason: DisconnectReason::MessageTimeout
        }
    )));
    assert!(sim.run_until(5 * SECOND, |e| *e
        == DeviceEvent::Connected { resumed: false }));
    let trace = sim.trace_since(from);
    assert!(trace.contains(&DeviceEvent::Connecting { resume: false }));
}

#[test]
fn an_rst_from_the_server_discards_the_session() {
    let mut sim = Sim::boron();
    sim.connect();
    sim.cloud.reset_next_request = true;
    let now = sim.now;
    sim.device.disable_updates(now);
    assert!(sim.run_until(SECOND, |e| matches!(
        e,
        DeviceEvent::Disconnected {
            reason: DisconnectReason::ResetByServer
        }
    )));
    assert!(!sim.device.status().has_session);
    assert!(sim.run_until(5 * SECOND, |e| *e
        == DeviceEvent::Connected { resumed: false }));
}

#[test]
fn datagrams_that_are_not_dtls_or_not_coap_are_counted_and_dropped() {
    let mut sim = Sim::boron();
    sim.connect();
    let now = sim.now;
    for junk in [&[][..], &[0x17], &[0x17, 0xfe, 0xfd, 0, 1], &[0xff; 40]] {
        sim.device.handle_datagram(now, junk);
    }
    // Authenticated records whose plaintext is not CoAP.
    let h = sim.cloud.connection().unwrap();
    for junk in [&[0xff, 0xff][..], &[0x40], &[0x4f, 0, 0, 1]] {
        sim.cloud
            .server
            .send_application_data(now, h, junk)
            .unwrap();
    }
    sim.run_for(SECOND);
    assert!(sim.device.status().connected);
    assert_eq!(sim.device.status().malformed, 3);
}
