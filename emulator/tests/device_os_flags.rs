//! System flags and the application's controls as the cloud sees them (reference 3): the
//! update control events with Device OS's parsing quirk, `disableUpdates` / `enableUpdates`,
//! resets and sleep with their Goodbyes.

mod device_os_support;

use std::time::Duration;

use device_os_support::*;
use emulator::firmware::Versions;
use emulator::os::{AppBehaviour, DeviceEvent, DisconnectReason, SystemEvent, UpdateStatus};
use protocol::message::{Body, Goodbye};

const SECOND: Duration = Duration::from_secs(1);

fn graceful() -> AppBehaviour {
    AppBehaviour {
        graceful_disconnect: true,
        ..AppBehaviour::default()
    }
}

fn published_since(sim: &Sim, from: usize) -> Vec<(String, String)> {
    sim.cloud.published()[from..].to_vec()
}

fn goodbyes(sim: &Sim) -> Vec<Goodbye> {
    sim.cloud
        .sent_by_device()
        .iter()
        .filter_map(|s| match s.particle()?.body {
            Body::Goodbye(g) => Some(g),
            _ => None,
        })
        .collect()
}

#[test]
fn forced_updates_are_echoed_once_per_change_with_the_prefix_quirk() {
    let mut sim = Sim::boron();
    sim.connect();
    let from = sim.cloud.published().len();
    for data in ["true", "true", "t", "false", "", "truex"] {
        let now = sim.now;
        sim.cloud
            .send_event(now, "particle/device/updates/forced", data);
        sim.run_for(SECOND);
    }
    // "true" sets it (echo), "true" and "t" change nothing, "false" clears it (echo), "" is a
    // prefix of "true" (echo), "truex" is not (echo).
    let forced = |v: &str| ("particle/device/updates/forced".to_string(), v.to_string());
    assert_eq!(
        published_since(&sim, from),
        vec![
            forced("true"),
            forced("false"),
            forced("true"),
            forced("false")
        ]
    );
    assert!(!sim.device.status().flags.updates_forced);
}

#[test]
fn pending_updates_raise_system_events_and_are_not_echoed() {
    let mut sim = Sim::boron();
    sim.connect();
    assert_eq!(sim.device.status().update_status, UpdateStatus::Unknown);
    let (from, trace) = (sim.cloud.published().len(), sim.trace.len());
    let now = sim.now;
    sim.cloud
        .send_event(now, "particle/device/updates/pending", "true");
    sim.run_for(SECOND);
    assert!(published_since(&sim, from).is_empty());
    let events: Vec<_> = sim
        .trace_since(trace)
        .into_iter()
        .filter(|e| matches!(e, DeviceEvent::SystemEvent(_)))
        .collect();
    assert_eq!(
        events,
        vec![
            DeviceEvent::SystemEvent(SystemEvent::FirmwareUpdatePending),
            DeviceEvent::SystemEvent(SystemEvent::FirmwareUpdateStatus(UpdateStatus::Pending)),
        ]
    );
    let status = sim.device.status();
    assert!(status.flags.updates_pending);
    assert_eq!(status.update_status, UpdateStatus::Pending);
    let now = sim.now;
    sim.cloud
        .send_event(now, "particle/device/updates/pending", "false");
    sim.run_for(SECOND);
    assert_eq!(
        sim.device.status().update_status,
        UpdateStatus::NotAvailable
    );
}

#[test]
fn disabling_and_enabling_updates_publishes_each_change() {
    let mut sim = Sim::boron();
    sim.connect();
    let from = sim.cloud.published().len();
    for enable in [false, false, true, true, false] {
        let now = sim.now;
        if enable {
            sim.device.enable_updates(now);
        } else {
            sim.device.disable_updates(now);
        }
        sim.run_for(SECOND);
    }
    let enabled = |v: &str| ("particle/device/updates/enabled".to_string(), v.to_string());
    assert_eq!(
        published_since(&sim, from),
        vec![enabled("false"), enabled("true"), enabled("false")]
    );
    // The flag is RAM: re-sent at the next connection, back to the application's default
    // after a reset.
    let from = sim.cloud.published().len();
    let now = sim.now;
    sim.device.system_reset(now);
    sim.run_for(5 * SECOND);
    assert!(published_since(&sim, from).contains(&enabled("true")));
}

#[test]
fn an_application_that_disables_updates_at_boot_says_so_at_every_connection() {
    let app = AppBehaviour {
        updates_enabled_at_boot: false,
        ..AppBehaviour::default()
    };
    let mut sim = Sim::new("boron", &Versions::BASELINE, app, 5);
    sim.connect();
    assert!(sim.cloud.published().contains(&(
        "particle/device/updates/enabled".to_string(),
        "false".to_string()
    )));
    assert!(!sim.device.status().flags.updates_enabled);
}

#[test]
fn sleep_sends_goodbye_with_reason_6_and_the_duration_then_resumes_after_waking() {
    let mut sim = Sim::new("boron", &Versions::BASELINE, graceful(), 5);
    sim.connect();
    let (trace, messages) = (sim.trace.len(), sim.cloud.sent_by_device().len());
    let now = sim.now;
    sim.device
        .sleep(now, sleep_for(Duration::from_secs(600), false))
        .unwrap();
    sim.run_for(SECOND);
    assert_eq!(
        goodbyes(&sim),
        vec![Goodbye {
            cloud_reason: Some(6),
            sleep_duration: Some(600),
            ..Goodbye::default()
        }]
    );
    let goodbye = &sim.cloud.sent_by_device()[messages];
    assert_eq!(
        goodbye.message.kind,
        protocol::coap::MessageType::Confirmable
    );
    assert!(sim.device.status().sleeping);
    assert!(sim.trace_since(trace).contains(&DeviceEvent::Disconnected {
        reason: DisconnectReason::Sleep { goodbye: true }
    }));
    // Asleep with the network off: what the cloud sends is lost.
    let now = sim.now;
    sim.cloud
        .send_event(now, "particle/device/updates/forced", "true");
    sim.run_for(60 * SECOND);
    assert!(!sim.device.status().flags.updates_forced);
    // Wakes after 600 s and resumes the session; no last_reset (same boot).
    let from = sim.cloud.published().len();
    assert!(sim.run_until(600 * SECOND, |e| *e
        == DeviceEvent::Connected { resumed: true }));
    assert!(!sim
        .cloud
        .published()
        .iter()
        .skip(from)
        .any(|(n, _)| n == "spark/device/last_reset"));
}

#[test]
fn by_default_sleep_and_reset_close_the_socket_without_a_goodbye() {
    let mut sim = Sim::boron();
    sim.connect();
    let now = sim.now;
    sim.device
        .sleep(now, sleep_for(Duration::from_secs(10), false))
        .unwrap();
    sim.run_for(20 * SECOND);
    let now = sim.now;
    sim.device.system_reset(now);
    sim.run_for(5 * SECOND);
    assert!(goodbyes(&sim).is_empty());
    assert!(sim.trace.iter().any(|(_, e)| *e
        == DeviceEvent::Disconnected {
            reason: DisconnectReason::Sleep { goodbye: false }
        }));
    assert!(sim.device.status().connected);
}

#[test]
fn a_graceful_system_reset_says_goodbye_with_reason_5_and_reset_reason_user() {
    let mut sim = Sim::new("boron", &Versions::BASELINE, graceful(), 5);
    sim.connect();
    let now = sim.now;
    sim.device.system_reset(now);
    assert!(sim.run_until(5 * SECOND, |e| matches!(e, DeviceEvent::Connected { .. })));
    assert_eq!(
        goodbyes(&sim),
        vec![Goodbye {
            cloud_reason: Some(5),
            reset_reason: Some(140),
            ..Goodbye::default()
        }]
    );
    assert!(sim.trace.iter().any(|(_, e)| *e
        == DeviceEvent::Disconnected {
            reason: DisconnectReason::Reset {
                reset_reason: 140,
                goodbye: true
            }
        }));
}

#[test]
fn sleep_with_the_network_kept_stays_connected_and_a_message_wakes_the_device() {
    let mut sim = Sim::boron();
    sim.connect();
    let generation = sim.device.socket_generation();
    let now = sim.now;
    sim.device
        .sleep(now, sleep_for(Duration::from_secs(3600), true))
        .unwrap();
    sim.run_for(10 * SECOND);
    assert!(sim.device.status().sleeping);
    assert!(goodbyes(&sim).is_empty());
    let now = sim.now;
    sim.cloud
        .send_event(now, "particle/device/updates/forced", "true");
    sim.run_for(SECOND);
    let status = sim.device.status();
    assert!(!status.sleeping);
    assert!(status.flags.updates_forced);
    assert!(status.connected);
    assert_eq!(sim.device.socket_generation(), generation);
    assert!(sim.trace.iter().any(|(_, e)| *e == DeviceEvent::Woke));
}

#[test]
fn a_disabled_reset_waits_for_enable_reset() {
    let app = AppBehaviour {
        reset_enabled_at_boot: false,
        ..AppBehaviour::default()
    };
    let mut sim = Sim::new("boron", &Versions::BASELINE, app, 5);
    sim.connect();
    assert!(!sim.device.status().flags.reset_enabled);
    let now = sim.now;
    sim.device.enable_reset(now);
    sim.run_for(SECOND);
    assert!(sim.device.status().flags.reset_enabled);
    assert!(sim.device.status().connected, "nothing was pending");
}
