//! Keepalive pings (reference 1.9): the interval per board, measured from the last message
//! received, and the 30 s ping timeout that ends the connection.

mod device_os_support;

use std::time::Duration;

use device_os_support::*;
use emulator::firmware::Versions;
use emulator::os::{AppBehaviour, DeviceEvent, DisconnectReason};
use protocol::coap::{Code, MessageType};

fn pings(sim: &Sim) -> Vec<Duration> {
    sim.cloud
        .sent_by_device()
        .iter()
        .filter(|s| s.message.kind == MessageType::Confirmable && s.message.code == Code::EMPTY)
        .map(|s| s.at)
        .collect()
}

/// When the device last heard from the cloud.
fn last_received(sim: &Sim) -> Duration {
    sim.cloud
        .seen
        .iter()
        .filter(|s| s.dir == Dir::CloudToDevice)
        .map(|s| s.at + sim.latency)
        .max()
        .unwrap()
}

#[test]
fn a_boron_pings_after_23_minutes_of_silence() {
    let mut sim = Sim::boron();
    sim.connect();
    sim.run_for(Duration::from_secs(1));
    let quiet_since = last_received(&sim);
    sim.run_for(Duration::from_secs(23 * 60 + 1));
    let p = pings(&sim);
    assert_eq!(
        p,
        vec![quiet_since + Duration::from_secs(23 * 60) + sim.latency]
    );
    // The next one 23 minutes after the ping's ACK arrived (the cloud saw the ping one latency
    // after it left, the device the ACK one latency after that).
    let acked = p[0] + sim.latency;
    sim.run_for(Duration::from_secs(23 * 60));
    assert_eq!(
        pings(&sim),
        vec![p[0], acked + Duration::from_secs(23 * 60) + sim.latency]
    );
    assert!(sim.device.status().connected);
}

#[test]
fn an_argon_pings_every_25_seconds() {
    let mut sim = Sim::new("argon", &Versions::BASELINE, AppBehaviour::default(), 5);
    sim.connect();
    sim.run_for(Duration::from_secs(100));
    let p = pings(&sim);
    assert_eq!(p.len(), 3, "{p:?}");
    for pair in p.windows(2) {
        // 25 s after the previous ping's ACK (two one-way latencies after the ping).
        assert_eq!(pair[1] - pair[0], Duration::from_secs(25) + 2 * sim.latency);
    }
}

#[test]
fn incoming_messages_postpone_the_ping() {
    let mut sim = Sim::new("argon", &Versions::BASELINE, AppBehaviour::default(), 5);
    sim.connect();
    for _ in 0..5 {
        sim.run_for(Duration::from_secs(20));
        let now = sim.now;
        sim.cloud.send_event(now, "spark/status", "online");
    }
    assert!(pings(&sim).is_empty());
}

#[test]
fn an_unanswered_ping_ends_the_connection_after_30_seconds_and_the_session_is_resumed() {
    let mut sim = Sim::boron();
    sim.connect();
    let generation = sim.device.socket_generation();
    sim.drop_to_device = true;
    assert!(sim.run_until(Duration::from_secs(24 * 60), |e| matches!(
        e,
        DeviceEvent::Disconnected {
            reason: DisconnectReason::PingTimeout
        }
    )));
    let (at, _) = sim
        .trace
        .iter()
        .find(|(_, e)| {
            matches!(
                e,
                DeviceEvent::Disconnected {
                    reason: DisconnectReason::PingTimeout
                }
            )
        })
        .unwrap();
    // 30 s after the ping left the device (the cloud saw it one latency later).
    assert_eq!(*at, pings(&sim)[0] - sim.latency + Duration::from_secs(30));
    assert!(
        sim.device.status().has_session,
        "a ping timeout keeps the session"
    );
    sim.drop_to_device = false;
    assert!(sim.run_until(Duration::from_secs(5), |e| *e
        == DeviceEvent::Connected { resumed: true }));
    assert_eq!(sim.device.socket_generation(), generation + 1);
}
