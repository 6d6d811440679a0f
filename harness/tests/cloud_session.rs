//! The local Device Cloud against a scripted device, in virtual time: handshake, the
//! post-connect sequence, time, the event stream, identity, address migration, resumption and
//! disconnects (reference `particle-protocol.md` 1.4-1.12, `particle-cloud-api.md` 3-4.8).

mod cloud_support;

use cloud_support::*;
use harness::cloud::{CloudEvent, DisconnectReason, SessionChange};
use protocol::coap::{option, Code, MessageType};
use protocol::message::{
    Body, FirmwareModule, FirmwareModuleDependency, Goodbye, SystemDescribe, TimeResponse,
};
use std::time::Duration;

fn sessions(world: &World) -> Vec<SessionChange> {
    world
        .events
        .iter()
        .filter_map(|e| match e {
            CloudEvent::Session(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn every_post_connect_con_is_acknowledged_and_nothing_is_reset() {
    let mut w = World::new(1, 1);
    let id = device_id(0);
    w.connect(0, hello(id, 12, 3, GEN3_FLAGS), &system_describe([3; 32]));
    let d = w.device(0);
    // Hello, 2 describes, 3 events, 2 subscriptions: empty ACKs; the time request: a response.
    assert_eq!(d.acknowledged.len(), 8);
    assert_eq!(d.responses.len(), 1);
    assert!(d.timed_out.is_empty() && d.resets.is_empty());
    assert!(d.received.iter().all(|m| m.body != Body::Reset));
    assert_eq!(d.coap.unacknowledged(), 0);

    let view = w.cloud.device(id).unwrap();
    assert!(view.online);
    assert!(!view.resumed);
    assert_eq!(view.connection_id.as_ref().map(Vec::len), Some(8));
    assert_eq!(view.hello.as_ref().map(|h| h.product_version), Some(3));
    assert_eq!(view.system_describe, Some(system_describe([3; 32])));
    assert_eq!(view.subscriptions, vec!["particle", "spark"]);
    let app = view.application_describe.as_ref().unwrap();
    assert_eq!(app.functions, vec!["reboot"]);
    assert_eq!(app.variables, vec![("version".to_string(), 2)]);
    assert_eq!(view.updates_enabled, Some(true));
    assert_eq!(view.updates_forced, Some(false));
    assert_eq!(view.last_reset.as_deref(), Some("pin_reset"));
    assert!(matches!(
        sessions(&w).as_slice(),
        [SessionChange::Connected { device_id, .. }] if *device_id == id
    ));
    assert_eq!(w.cloud.stats().malformed, 0);
}

#[test]
fn a_large_describe_arrives_in_block1_blocks_each_acknowledged() {
    let mut w = World::new(2, 1);
    let id = device_id(0);
    w.handshake(0);
    let now = w.now;
    w.device(0).send_hello(now, hello(id, 12, 3, GEN3_FLAGS));
    let mut describe = system_describe([9; 32]);
    describe.modem_firmware_version = Some("R".repeat(2500));
    let handles = w.device(0).send_system_describe(now, &describe);
    assert!(handles.len() >= 2, "the describe must need blocks");
    w.pump();
    for h in &handles {
        assert!(w.devices[0].acknowledged.contains(h));
    }
    assert_eq!(w.cloud.device(id).unwrap().system_describe, Some(describe));
}

#[test]
fn time_request_gets_the_unix_time_big_endian_in_a_piggybacked_2_05() {
    let mut w = World::new(3, 1);
    let id = device_id(0);
    w.handshake(0);
    w.advance(ms(10_700));
    let now = w.now;
    w.device(0).send_hello(now, hello(id, 12, 3, GEN3_FLAGS));
    let handle = w.device(0).send_time_request(now);
    w.pump();
    let (h, message) = w.devices[0].responses.last().cloned().unwrap();
    assert_eq!(h, handle);
    assert_eq!(message.kind, MessageType::Acknowledgement);
    assert_eq!(message.code, Code::CONTENT);
    assert_eq!(message.token.len(), 1);
    let expected = (1_704_067_200u64 + 10) as u32;
    assert_eq!(message.payload, expected.to_be_bytes().to_vec());
    let response = protocol::message::Response {
        code: message.code,
        options: message.options,
        payload: message.payload,
    };
    assert_eq!(
        TimeResponse::parse(&response).unwrap().unix_time,
        Some(expected)
    );
}

#[test]
fn stream_has_online_then_device_events_then_pending_false_a_second_after_connect() {
    let mut w = World::new(4, 1);
    let id = device_id(0);
    w.connect(0, hello(id, 12, 3, GEN3_FLAGS), &system_describe([3; 32]));
    // Not yet: the pending event waits ~1 s.
    assert!(!w
        .stream()
        .iter()
        .any(|(n, _)| n == "particle/device/updates/pending"));
    w.advance(ms(1500));
    assert_eq!(
        w.stream(),
        pairs(&[
            ("spark/status", "online"),
            ("spark/device/app-hash", &"03".repeat(32)),
            ("spark/device/last_reset", "pin_reset"),
            ("particle/device/updates/enabled", "true"),
            ("particle/device/updates/forced", "false"),
            ("particle/device/updates/pending", "false"),
        ])
    );
    let pending: Vec<_> = w
        .stream_events()
        .filter(|e| e.name == "particle/device/updates/pending")
        .collect();
    assert_eq!(pending[0].at, ms(1000));
    assert_eq!(pending[0].product_version, 3);

    // The device got it as a CON POST E with the whole name as one Uri-Path option.
    let (request, message) = w
        .device(0)
        .take(|m| matches!(&m.body, Body::Event(_)))
        .unwrap();
    assert_eq!(request.kind, MessageType::Confirmable);
    let coap = message.to_coap().unwrap();
    assert_eq!(coap.code, Code::POST);
    assert!(coap.token.is_empty());
    let paths: Vec<&[u8]> = coap.option_values(option::URI_PATH).collect();
    assert_eq!(
        paths,
        vec![&b"E"[..], &b"particle/device/updates/pending"[..]]
    );
    assert_eq!(coap.payload, b"false");
    // Uri-Path comes first.
    assert_eq!(coap.options[0].number, option::URI_PATH);
}

#[test]
fn sse_rendering_of_a_cloud_event() {
    let mut w = World::new(5, 1);
    let id = device_id(0);
    w.connect(0, hello(id, 12, 3, GEN3_FLAGS), &system_describe([3; 32]));
    let online = w.stream_events().next().unwrap().clone();
    assert_eq!(
        online.to_sse(1_704_067_200),
        "event: spark/status\ndata: {\"data\":\"online\",\"ttl\":60,\
         \"published_at\":\"2024-01-01T00:00:00.000Z\",\"coreid\":\"d0d0d0d0d0d0d0d0d0d0d000\",\
         \"userid\":\"\",\"version\":3,\"public\":false,\"productID\":12}\n\n"
    );
}

#[test]
fn goodbye_takes_the_device_offline_and_is_acknowledged() {
    let mut w = World::new(6, 1);
    let id = device_id(0);
    w.connect(0, hello(id, 12, 3, GEN3_FLAGS), &system_describe([3; 32]));
    w.advance(secs(2));
    let now = w.now;
    let handle = w.device(0).send(
        now,
        MessageType::Confirmable,
        Vec::new(),
        Body::Goodbye(Goodbye {
            cloud_reason: Some(5),
            reset_reason: Some(70),
            sleep_duration: None,
            network_reason: None,
            no_response: false,
        }),
    );
    w.pump();
    assert!(w.devices[0].acknowledged.contains(&handle));
    assert!(!w.cloud.device(id).unwrap().online);
    assert_eq!(
        w.stream().last().unwrap(),
        &pairs(&[("spark/status", "offline")])[0]
    );
    assert!(matches!(
        sessions(&w).last(),
        Some(SessionChange::Disconnected {
            reason: DisconnectReason::Goodbye {
                cloud_reason: Some(5),
                reset_reason: Some(70)
            },
            ..
        })
    ));
}

#[test]
fn hello_with_another_device_id_is_refused_and_the_session_closed() {
    let mut w = World::new(7, 2);
    let other = device_id(1);
    w.handshake(0);
    let now = w.now;
    w.device(0).send_hello(now, hello(other, 12, 3, GEN3_FLAGS));
    w.pump();
    assert!(!w.devices[0].connected);
    assert_eq!(w.devices[0].closed, vec!["the peer sent close_notify"]);
    assert!(w.stream().is_empty(), "a refused device never comes online");
    let refused = sessions(&w)
        .into_iter()
        .find_map(|s| match s {
            SessionChange::Disconnected {
                reason: DisconnectReason::Refused(r),
                ..
            } => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        refused,
        "the Hello carries device id d0d0d0d0d0d0d0d0d0d0d001 but the DTLS key is registered for d0d0d0d0d0d0d0d0d0d0d000"
    );
    assert!(!w.cloud.device(device_id(0)).unwrap().online);
    assert!(!w.cloud.device(other).unwrap().online);
}

#[test]
fn a_new_address_moves_the_session_and_replies_follow_it() {
    let mut w = World::new(8, 1);
    let id = device_id(0);
    w.connect(0, hello(id, 12, 3, GEN3_FLAGS), &system_describe([3; 32]));
    let new = addr("10.0.9.9:50000");
    w.device(0).addr = new;
    let now = w.now;
    let handle = w.device(0).send_time_request(now);
    w.pump();
    assert!(w.devices[0].responses.iter().any(|(h, _)| *h == handle));
    assert!(sessions(&w).iter().any(|s| matches!(
        s,
        SessionChange::Moved { to, .. } if *to == new
    )));
    assert_eq!(w.cloud.device(id).unwrap().address, Some(new));
    assert!(w.cloud.device(id).unwrap().online);
}

#[test]
fn resumption_with_type_253_is_reported_and_the_post_connect_runs_again() {
    let mut w = World::new(9, 1);
    let id = device_id(0);
    w.connect(0, hello(id, 12, 3, GEN3_FLAGS), &system_describe([3; 32]));
    w.advance(secs(2));
    let session = w.devices[0].export_session().unwrap();
    // The device resets (session kept in retained RAM) and comes back from a new port.
    w.advance(secs(3));
    let now = w.now;
    let new = addr("10.0.1.1:40001");
    w.device(0).resume(now, &session, new);
    let ping = w
        .device(0)
        .send(now, MessageType::Confirmable, Vec::new(), Body::Ping);
    w.pump();
    assert!(w.devices[0].acknowledged.contains(&ping));
    let view = w.cloud.device(id).unwrap();
    assert!(view.online && view.resumed);
    assert_eq!(view.address, Some(new));
    let changes = sessions(&w);
    let tail: Vec<_> = changes.iter().skip(1).collect();
    assert!(
        matches!(
            tail.as_slice(),
            [
                SessionChange::Disconnected {
                    reason: DisconnectReason::ResumedAgain,
                    ..
                },
                SessionChange::Resumed { address, .. },
                SessionChange::Moved { to, .. },
            ] if *address == new && *to == new
        ),
        "{tail:?}"
    );
    // offline (missed drop) then online, then pending false again a second later.
    w.advance(secs(2));
    let cloud = w.cloud_stream();
    assert_eq!(
        cloud[cloud.len() - 3..],
        pairs(&[
            ("spark/status", "offline"),
            ("spark/status", "online"),
            ("particle/device/updates/pending", "false"),
        ])
    );
}

#[test]
fn a_silent_device_goes_offline_after_twice_its_keepalive_and_may_resume() {
    let mut w = World::new(10, 2);
    // Argon (Wi-Fi, 25 s keepalive) and Boron (cellular, 23 min).
    w.connect(
        0,
        hello(device_id(0), 12, 3, GEN3_FLAGS),
        &system_describe([3; 32]),
    );
    w.connect(
        1,
        hello(device_id(1), 13, 3, GEN3_FLAGS),
        &system_describe([3; 32]),
    );
    w.advance(secs(49));
    assert!(w.cloud.device(device_id(0)).unwrap().online);
    w.advance(secs(2));
    assert!(!w.cloud.device(device_id(0)).unwrap().online);
    assert!(w.cloud.device(device_id(1)).unwrap().online);
    assert!(sessions(&w).iter().any(|s| matches!(
        s,
        SessionChange::Disconnected {
            reason: DisconnectReason::Silent,
            ..
        }
    )));
    // The same session keeps working: a ping brings the device back, as a resumption.
    let now = w.now;
    w.device(0)
        .send(now, MessageType::Confirmable, Vec::new(), Body::Ping);
    w.pump();
    let view = w.cloud.device(device_id(0)).unwrap();
    assert!(view.online && view.resumed);
    w.advance(secs(46 * 60));
    assert!(!w.cloud.device(device_id(1)).unwrap().online);
}

#[test]
fn a_new_handshake_replaces_the_session() {
    let mut w = World::new(11, 1);
    let id = device_id(0);
    w.connect(0, hello(id, 12, 3, GEN3_FLAGS), &system_describe([3; 32]));
    let first_cid = w.cloud.device(id).unwrap().connection_id;
    w.advance(secs(5));
    w.connect(0, hello(id, 12, 3, GEN3_FLAGS), &system_describe([3; 32]));
    let view = w.cloud.device(id).unwrap();
    assert!(view.online && !view.resumed);
    assert_ne!(view.connection_id, first_cid);
    let changes = sessions(&w);
    assert!(matches!(
        changes.as_slice(),
        [
            SessionChange::Connected { .. },
            SessionChange::Disconnected {
                reason: DisconnectReason::Replaced,
                ..
            },
            SessionChange::Connected { .. },
        ]
    ));
    let cloud = w.cloud_stream();
    assert_eq!(
        cloud,
        pairs(&[
            ("spark/status", "online"),
            ("spark/device/app-hash", &"03".repeat(32)),
            ("particle/device/updates/pending", "false"),
            ("spark/status", "offline"),
            ("spark/status", "online"),
        ])
    );
}

#[test]
fn a_malformed_request_is_counted_reported_and_still_acknowledged() {
    let mut w = World::new(12, 1);
    let id = device_id(0);
    w.connect(0, hello(id, 12, 3, GEN3_FLAGS), &system_describe([3; 32]));
    let now = w.now;
    // POST E without an event name: valid CoAP, not a valid event.
    let mut message = protocol::coap::Message::new(MessageType::Confirmable, Code::POST, 0);
    message.push_option(protocol::coap::CoapOption::new(
        option::URI_PATH,
        b"E".to_vec(),
    ));
    let handle = w.device(0).coap.send(now, message).unwrap();
    w.pump();
    assert!(w.devices[0].acknowledged.contains(&handle));
    assert_eq!(w.cloud.stats().malformed, 1);
    assert!(w.events.iter().any(|e| matches!(
        e,
        CloudEvent::Dropped { reason, .. } if reason.starts_with("malformed 0.02 request")
    )));
    assert!(w.cloud.device(id).unwrap().online);
}

#[test]
fn garbage_datagrams_change_nothing() {
    let mut w = World::new(13, 1);
    let id = device_id(0);
    w.connect(0, hello(id, 12, 3, GEN3_FLAGS), &system_describe([3; 32]));
    let now = w.now;
    let from = w.devices[0].addr;
    for garbage in [
        &[][..],
        &[0x00],
        &[25, 0xfe, 0xfd, 0, 1],
        &[253; 40],
        &[23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 9, 0, 3, 1, 2, 3],
    ] {
        w.cloud.handle_datagram(now, from, garbage);
    }
    w.pump();
    assert!(w.cloud.device(id).unwrap().online);
    let handle = w.device(0).send_time_request(now);
    w.pump();
    assert!(w.devices[0].responses.iter().any(|(h, _)| *h == handle));
}

#[test]
fn forcing_updates_sends_the_forced_event_now_and_at_each_connection() {
    let mut w = World::new(14, 1);
    let id = device_id(0);
    w.connect(0, hello(id, 12, 3, GEN3_FLAGS), &system_describe([3; 32]));
    w.advance(secs(2));
    w.device(0).inbox.clear();
    let now = w.now;
    w.cloud.set_updates_forced(now, id, true);
    w.pump();
    let names: Vec<(String, Vec<u8>)> = w.devices[0]
        .inbox
        .iter()
        .filter_map(|(_, m)| match &m.body {
            Body::Event(e) => Some((e.name.clone(), e.data.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        names,
        vec![(
            "particle/device/updates/forced".to_string(),
            b"true".to_vec()
        )]
    );
    assert!(w.cloud.device(id).unwrap().updates_forced_setting);
    w.device(0).inbox.clear();
    w.advance(secs(1));
    w.connect(0, hello(id, 12, 3, GEN3_FLAGS), &system_describe([3; 32]));
    w.advance(secs(2));
    let names: Vec<String> = w.devices[0]
        .inbox
        .iter()
        .filter_map(|(_, m)| match &m.body {
            Body::Event(e) => Some(e.name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        names,
        vec![
            "particle/device/updates/pending",
            "particle/device/updates/forced"
        ]
    );
}

/// The describe of a Boron in safe mode after an app that needs Device OS 6.2.0 was installed
/// on 5.8.0: the user part's dependency check fails (checked 0x1e, passed 0x1a).
fn safe_mode_describe() -> SystemDescribe {
    let module =
        |r#type, index, version, max_size, passed, deps: Vec<(i32, u32, u32)>| FirmwareModule {
            r#type,
            index,
            version,
            store: 0,
            max_size,
            checked_flags: 0x1e,
            passed_flags: passed,
            hash: (r#type == 5).then(|| vec![0x5c; 32]),
            dependencies: deps
                .into_iter()
                .map(|(r#type, index, version)| FirmwareModuleDependency {
                    r#type,
                    index,
                    version,
                })
                .collect(),
            size: 1024,
            ..Default::default()
        };
    SystemDescribe {
        firmware_modules: vec![
            module(2, 0, 2300, 49_152, 0x1e, vec![]),
            module(4, 1, 5800, 671_744, 0x1e, vec![(2, 0, 2300)]),
            module(5, 1, 6, 262_144, 0x1a, vec![(4, 1, 6200)]),
        ],
        imei: Some("352753090000000".into()),
        ..Default::default()
    }
}

/// Handshake and what Device OS sends after it in safe mode (reference 1.8): Hello, the system
/// describe, `spark/device/safemode` (when `says_so`), last_reset.
fn connect_in_safe_mode(w: &mut World, describe: &SystemDescribe, says_so: bool) {
    w.handshake(0);
    let now = w.now;
    let d = w.device(0);
    d.send_hello(now, hello(device_id(0), 13, 0xFFFF, GEN3_FLAGS));
    d.send_system_describe(now, describe);
    if says_so {
        d.publish(now, "spark/device/safemode", "");
    }
    d.publish(now, "spark/device/last_reset", "update");
    w.pump();
}

fn safe_mode_events(w: &World) -> Vec<(Duration, String)> {
    w.stream_events()
        .filter(|e| e.name == "spark/status/safe-mode")
        .map(|e| (e.at, e.data.clone()))
        .collect()
}

#[test]
fn a_device_in_safe_mode_gets_spark_status_safe_mode_with_its_modules_once_per_connection() {
    let mut w = World::new(15, 1);
    connect_in_safe_mode(&mut w, &safe_mode_describe(), true);
    // Not at the describe: at the post-connect point, after the device's connect events.
    assert!(safe_mode_events(&w).is_empty());
    w.advance(secs(3));
    let events = safe_mode_events(&w);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, ms(1000));
    let json: serde_json::Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(json["p"], 13);
    assert_eq!(json["imei"], "352753090000000");
    assert!(json.get("iccid").is_none() && json.get("cellfw").is_none());
    let m = json["m"].as_array().unwrap();
    assert_eq!(m.len(), 3);
    assert_eq!(m[0]["f"], "b");
    assert_eq!(m[0]["n"], "0");
    assert_eq!(m[0]["s"], 49_152);
    assert_eq!(m[0]["l"], "m");
    assert_eq!(m[0]["d"], serde_json::json!([]));
    assert!(m[0].get("u").is_none());
    assert_eq!(m[1]["f"], "s");
    assert_eq!(m[1]["v"], 5800);
    assert_eq!(
        m[1]["d"],
        serde_json::json!([{"f": "b", "n": "0", "v": 2300}])
    );
    assert_eq!(m[2]["f"], "u");
    assert_eq!(m[2]["n"], "1");
    assert_eq!(
        (m[2]["vc"].as_u64(), m[2]["vv"].as_u64()),
        (Some(30), Some(26))
    );
    assert_eq!(m[2]["u"], "5c".repeat(32));
    assert_eq!(
        m[2]["d"],
        serde_json::json!([{"f": "s", "n": "1", "v": 6200}])
    );
    // The order of the captures: the device's events, then safe-mode, then pending.
    let names: Vec<String> = w.stream().into_iter().map(|(n, _)| n).collect();
    let at = |name: &str| names.iter().position(|n| n == name).unwrap();
    assert!(at("spark/device/safemode") < at("spark/status/safe-mode"));
    assert!(at("spark/device/last_reset") < at("spark/status/safe-mode"));
    assert!(at("spark/status/safe-mode") < at("particle/device/updates/pending"));
    // Once per connection: another describe on the same connection publishes nothing.
    let now = w.now;
    w.device(0).send_system_describe(now, &safe_mode_describe());
    w.advance(secs(3));
    assert_eq!(safe_mode_events(&w).len(), 1);
    // A new connection in safe mode: again.
    connect_in_safe_mode(&mut w, &safe_mode_describe(), true);
    w.advance(secs(3));
    assert_eq!(safe_mode_events(&w).len(), 2);
}

#[test]
fn safe_mode_is_known_from_the_devices_word_or_from_a_failed_check() {
    // The device says so, and no module fails a check (an app that fails its CRC is left out
    // of the describe): published.
    let mut w = World::new(16, 1);
    connect_in_safe_mode(&mut w, &system_describe([3; 32]), true);
    w.advance(secs(3));
    let events = safe_mode_events(&w);
    assert_eq!(events.len(), 1);
    let json: serde_json::Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(json["m"][1]["f"], "u");
    // A module fails a check and the device's event is missing: published too.
    let mut w = World::new(17, 1);
    connect_in_safe_mode(&mut w, &safe_mode_describe(), false);
    w.advance(secs(3));
    assert_eq!(safe_mode_events(&w).len(), 1);
    // Neither: nothing (a running device, as every other test here shows in its stream).
    let mut w = World::new(18, 1);
    connect_in_safe_mode(&mut w, &system_describe([3; 32]), false);
    w.advance(secs(3));
    assert!(safe_mode_events(&w).is_empty());
}

#[test]
fn a_late_describe_publishes_safe_mode_when_it_arrives() {
    let mut w = World::new(19, 1);
    w.handshake(0);
    let now = w.now;
    let d = w.device(0);
    d.send_hello(now, hello(device_id(0), 13, 0xFFFF, GEN3_FLAGS));
    d.publish(now, "spark/device/safemode", "");
    w.pump();
    w.advance(secs(3));
    // Without the describe of this connection the cloud has no module list yet.
    assert!(safe_mode_events(&w).is_empty());
    let now = w.now;
    w.device(0).send_system_describe(now, &safe_mode_describe());
    w.pump();
    let events = safe_mode_events(&w);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, now);
}
