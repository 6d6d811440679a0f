//! Fidelity of the emulated Device OS's connection with the captured Device OS 6.2.0 session
//! (`protocol/tests/vectors/wire`): the ClientHello, the Hello, the post-connect messages and
//! their order, the system describe (reference 1.3, 1.7, 1.8, 1.10).
//!
//! The capture comes from Device OS's host build (platform `gcc`, told to be a Boron), so a few
//! values legitimately differ from a real Boron and are compared against the reference instead:
//! the product id/version (host defaults), the max binary size (the host's 10 MiB), the
//! COMPRESSED_OTA Hello flag (the host has no bootloader), and `spark/device/last_reset`, which
//! the host build never publishes (its `HAL_Core_Get_Last_Reset_Info` returns -1).

mod device_os_support;

use std::time::Duration;

use device_os_support::*;
use emulator::firmware::Versions;
use emulator::os::{AppBehaviour, DeviceEvent};
use protocol::coap::{option, MessageType};
use protocol::message::{Body, FirmwareModuleType, Hello, HelloFlags, SystemDescribe};

fn capture_datagram(n: usize) -> Vec<u8> {
    let all = jsonl("datagrams.jsonl");
    hex::decode(all[n]["hex"].as_str().unwrap()).unwrap()
}

/// The device's CoAP messages of the capture's first session, up to the OTA transfer.
fn captured_post_connect() -> Vec<serde_json::Value> {
    jsonl("coap.jsonl")
        .into_iter()
        .filter(|m| m["session"] == 1 && m["dir"] == "device_to_cloud")
        .take_while(|m| m["label"] != "Empty ACK (for UpdateStart)")
        .collect()
}

/// A message reduced to what must match the capture: type, code, token present, options
/// (number and value) — not message ids or token values.
fn shape(kind: &str, code: u8, has_token: bool, options: Vec<(u16, Vec<u8>)>) -> String {
    let opts: Vec<String> = options
        .iter()
        .map(|(n, v)| format!("{n}={}", String::from_utf8_lossy(v)))
        .collect();
    format!("{kind} {code} token={has_token} [{}]", opts.join(", "))
}

fn captured_shape(m: &serde_json::Value) -> String {
    let options = m["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o[0].as_u64().unwrap() as u16,
                hex::decode(o[1].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    shape(
        m["type"].as_str().unwrap(),
        m["code_byte"].as_u64().unwrap() as u8,
        !m["token_hex"].as_str().unwrap().is_empty(),
        options,
    )
}

fn kind_name(kind: MessageType) -> &'static str {
    match kind {
        MessageType::Confirmable => "CON",
        MessageType::NonConfirmable => "NON",
        MessageType::Acknowledgement => "ACK",
        MessageType::Reset => "RST",
    }
}

fn our_shape(s: &Seen) -> String {
    shape(
        kind_name(s.message.kind),
        s.message.code.0,
        !s.message.token.is_empty(),
        s.message
            .options
            .iter()
            .map(|o| (o.number, o.value.clone()))
            .collect(),
    )
}

#[test]
fn client_hello_is_the_captured_device_hello_apart_from_random_and_cookie() {
    let mut sim = Sim::boron();
    sim.connect();
    let ours_first = &sim.device_datagrams[0].1;
    let ours_second = &sim.device_datagrams[1].1;
    let (device_first, device_second) = (capture_datagram(0), capture_datagram(2));
    assert_eq!(ours_first.len(), 116);
    assert_eq!(
        ours_second.len(),
        148,
        "ClientHello with the 32-byte cookie"
    );
    // Record header (13) + handshake header (12) + client_version (2), then the random.
    let random_at = 13 + 12 + 2;
    let mut patched = ours_first.clone();
    patched[random_at..random_at + 32].copy_from_slice(&device_first[random_at..random_at + 32]);
    assert_eq!(patched, device_first);
    let cookie_at = random_at + 32 + 1 + 1;
    let mut patched = ours_second.clone();
    patched[random_at..random_at + 32].copy_from_slice(&device_second[random_at..random_at + 32]);
    patched[cookie_at..cookie_at + 32].copy_from_slice(&device_second[cookie_at..cookie_at + 32]);
    assert_eq!(patched, device_second);
}

#[test]
fn hello_has_the_captured_layout_with_boron_values() {
    let mut sim = Sim::boron();
    sim.connect();
    let hello = sim.cloud.sent_by_device()[0].clone();
    // 40 02 00 01 B1 68 FF: CON POST, message id 1, no token, Uri-Path "h".
    assert_eq!(hello.message.kind, MessageType::Confirmable);
    assert_eq!(hello.message.message_id, 1);
    assert!(hello.message.token.is_empty());
    let ours = &hello.message.payload;
    assert_eq!(ours.len(), 32);
    let parsed = Hello::parse_payload(ours).unwrap();
    assert_eq!(
        parsed,
        Hello {
            product_id: 13,
            product_version: 3,
            flags: HelloFlags(0x00F6),
            platform_id: 13,
            reserved: 0,
            device_id: sim.device.identity().device_id,
            system_version: 6200,
            max_message_size: 1152,
            max_binary_size: 1_536_000,
            ota_chunk_size: 512,
        }
    );
    // The capture's Hello, with the host build's product fields, max binary size and missing
    // COMPRESSED_OTA flag replaced by a Boron's, is byte for byte ours.
    let captured =
        hex::decode(captured_post_connect()[0]["payload_hex"].as_str().unwrap()).unwrap();
    let mut patched = captured.clone();
    patched[0..2].copy_from_slice(&13u16.to_be_bytes());
    patched[2..4].copy_from_slice(&3u16.to_be_bytes());
    patched[4..6].copy_from_slice(&(0x00B6u16 | HelloFlags::COMPRESSED_OTA).to_be_bytes());
    patched[26..30].copy_from_slice(&1_536_000u32.to_be_bytes());
    assert_eq!(&patched, ours);
}

#[test]
fn hello_without_a_compressed_ota_bootloader_has_the_captured_flags() {
    let old_bootloader = Versions {
        bootloader: 501,
        ..Versions::BASELINE
    };
    let mut sim = Sim::new("boron", &old_bootloader, AppBehaviour::default(), 5);
    sim.connect();
    let hello = Hello::parse_payload(&sim.cloud.sent_by_device()[0].message.payload).unwrap();
    assert_eq!(hello.flags, HelloFlags(0x00B6));
}

#[test]
fn post_connect_messages_follow_the_captured_order() {
    let mut sim = Sim::boron();
    sim.connect();
    let ours: Vec<&Seen> = sim.cloud.sent_by_device();
    // Our extra message: the reset reason, which the host build does not publish. It comes
    // after the time request and before the update flags (Spark_Handshake).
    let last_reset = ours
        .iter()
        .position(|s| {
            s.event()
                .is_some_and(|(n, _)| n == "spark/device/last_reset")
        })
        .expect("last_reset published");
    assert_eq!(
        ours[last_reset].event().unwrap().1,
        "power_down",
        "a first power-on is a power-down reset"
    );
    let time = ours
        .iter()
        .position(|s| matches!(s.particle().map(|p| p.body), Some(Body::TimeRequest)))
        .unwrap();
    assert_eq!(last_reset, time + 1);
    let ours: Vec<String> = ours
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != last_reset)
        .map(|(_, s)| our_shape(s))
        .collect();
    let expected: Vec<String> = captured_post_connect().iter().map(captured_shape).collect();
    assert_eq!(expected.len(), 8);
    assert_eq!(ours, expected);
}

#[test]
fn post_connect_payloads_match_the_capture_where_the_device_state_is_the_same() {
    let mut sim = Sim::boron();
    sim.connect();
    let ours = sim.cloud.sent_by_device();
    let captured = captured_post_connect();
    let payload = |m: &serde_json::Value| hex::decode(m["payload_hex"].as_str().unwrap()).unwrap();
    // Update flags (true/false), application describe (empty), subscriptions (none).
    let events: Vec<_> = ours.iter().filter_map(|s| s.event()).collect();
    assert_eq!(
        events,
        vec![
            ("spark/device/last_reset".into(), "power_down".into()),
            ("particle/device/updates/enabled".into(), "true".into()),
            ("particle/device/updates/forced".into(), "false".into()),
        ]
    );
    let app_describe = ours
        .iter()
        .find(|s| s.message.option(option::URI_QUERY) == Some(&[2][..]))
        .unwrap();
    assert_eq!(app_describe.message.payload, payload(&captured[5]));
    assert_eq!(app_describe.message.payload, br#"{"f":[],"v":{}}"#.to_vec());
}

#[test]
fn system_describe_lists_the_modules_the_bootloader_found() {
    let mut sim = Sim::boron();
    sim.connect();
    let describe = sim
        .cloud
        .sent_by_device()
        .into_iter()
        .find(|s| s.message.option(option::URI_QUERY) == Some(&[1][..]))
        .unwrap()
        .clone();
    let d = SystemDescribe::parse(&describe.message.payload).unwrap();
    let summary: Vec<(i32, u32, u32, u32, u32, bool)> = d
        .firmware_modules
        .iter()
        .map(|m| {
            (
                m.r#type,
                m.index,
                m.version,
                m.checked_flags,
                m.passed_flags,
                m.hash.is_some(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                FirmwareModuleType::BootloaderModule as i32,
                0,
                3100,
                0x1E,
                0x1E,
                false
            ),
            (
                FirmwareModuleType::SystemPartModule as i32,
                1,
                6200,
                0x1E,
                0x1E,
                false
            ),
            (
                FirmwareModuleType::UserPartModule as i32,
                2,
                6,
                0x1E,
                0x1E,
                true
            ),
            (
                FirmwareModuleType::RadioStackModule as i32,
                0,
                202,
                0x1E,
                0x1E,
                false
            ),
        ]
    );
    // The capture's describe has the same two leading modules: bootloader 3100 and system part
    // 1 (the host build's version) depending on bootloader 3100, checked and passed 0x1E.
    let captured = SystemDescribe::parse(
        &hex::decode(captured_post_connect()[1]["payload_hex"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    for (ours, theirs) in d
        .firmware_modules
        .iter()
        .zip(&captured.firmware_modules)
        .take(2)
    {
        assert_eq!(ours.r#type, theirs.r#type);
        assert_eq!(ours.index, theirs.index);
        assert_eq!(
            (ours.checked_flags, ours.passed_flags),
            (theirs.checked_flags, theirs.passed_flags)
        );
    }
    assert_eq!(
        captured.firmware_modules[0].version,
        d.firmware_modules[0].version
    );
    assert_eq!(
        d.firmware_modules[1].dependencies[0],
        captured.firmware_modules[1].dependencies[0]
    );
    // Max sizes are the regions' (reference 5.1), sizes the modules' with their CRC.
    assert_eq!(d.firmware_modules[1].max_size, 0x8C000);
    assert_eq!(d.firmware_modules[2].max_size, 0x40000);
    assert_eq!(d.firmware_modules[2].size, small_sizes().user_part);
}

#[test]
fn connected_is_reported_when_every_handshake_message_is_acknowledged() {
    let mut sim = Sim::boron();
    sim.connect();
    let (at, _) = sim
        .trace
        .iter()
        .find(|(_, e)| matches!(e, DeviceEvent::Connected { resumed: false }))
        .unwrap();
    let last_ack = sim
        .cloud
        .seen
        .iter()
        .filter(|s| s.dir == Dir::CloudToDevice)
        .map(|s| s.at)
        .max()
        .unwrap();
    // One-way latency after the last acknowledgement left the cloud.
    assert_eq!(*at, last_ack + sim.latency);
    assert!(sim.device.status().connected);
    let events: Vec<_> = sim.trace.iter().map(|(_, e)| e.clone()).collect();
    assert!(matches!(
        events[0],
        DeviceEvent::Booted {
            reset_reason: 40,
            ..
        }
    ));
    assert_eq!(events[1], DeviceEvent::Connecting { resume: false });
}

#[test]
fn nothing_follows_the_hello_until_it_is_acknowledged() {
    let mut sim = Sim::boron();
    sim.device.power_on(sim.now);
    while sim.cloud.sent_by_device().is_empty() {
        assert!(sim.step(Duration::from_secs(10)));
    }
    sim.drop_to_device = true;
    sim.run_for(Duration::from_secs(30));
    let sent = sim.cloud.sent_by_device();
    assert!(
        sent.len() >= 3,
        "the Hello is retransmitted: {}",
        sent.len()
    );
    assert!(sent
        .iter()
        .all(|s| s.message.message_id == 1 && s.message.payload.len() == 32));
}

#[test]
fn a_describe_request_is_acknowledged_then_answered_separately() {
    use protocol::coap::Code;
    use protocol::message::{DescribeFlags, DescribeRequest};
    let mut sim = Sim::boron();
    sim.connect();
    let request = sim.cloud_request(
        MessageType::Confirmable,
        Body::DescribeRequest(DescribeRequest {
            flags: DescribeFlags::SYSTEM,
            block2: None,
        }),
    );
    sim.run_for(Duration::from_secs(1));
    let answer = sim.cloud_response(request).expect("answered");
    assert_eq!(answer.kind, MessageType::Confirmable, "separate response");
    assert_eq!(answer.code, Code::CONTENT);
    assert_eq!(answer.option(option::CONTENT_FORMAT), Some(&[42][..]));
    let d = SystemDescribe::parse(&answer.payload).unwrap();
    assert_eq!(d.firmware_modules.len(), 4);
    // The empty ACK came first.
    let acks = sim
        .cloud
        .sent_by_device()
        .iter()
        .filter(|s| s.message.kind == MessageType::Acknowledgement)
        .count();
    assert_eq!(acks, 1);
}
