//! System modes (`Particle.connect()` / `disconnect()`) and the sleep variants (reference
//! particle-cloud-api.md 5.4, 5.5): what connects when, what wakes the device, and HIBERNATE
//! waking like a reset.

mod device_os_support;

use std::time::Duration;

use device_os_support::*;
use emulator::firmware::Versions;
use emulator::os::{
    AppBehaviour, DeviceEvent, DisconnectReason, SleepConfig, SleepMode, SleepNetwork, SystemMode,
};

const SECOND: Duration = Duration::from_secs(1);

fn semi_automatic() -> AppBehaviour {
    AppBehaviour {
        mode: SystemMode::SemiAutomatic,
        ..AppBehaviour::default()
    }
}

fn connected_events(sim: &Sim) -> usize {
    sim.trace
        .iter()
        .filter(|(_, e)| matches!(e, DeviceEvent::Connected { .. }))
        .count()
}

#[test]
fn semi_automatic_connects_only_when_the_application_asks_and_disconnect_stays_down() {
    let mut sim = Sim::new("boron", &Versions::BASELINE, semi_automatic(), 7);
    let now = sim.now;
    sim.device.power_on(now);
    sim.run_for(120 * SECOND);
    assert!(sim.device.status().powered);
    assert!(!sim.device.status().connected);
    assert!(
        sim.device_datagrams.is_empty(),
        "nothing is sent before Particle.connect()"
    );

    let now = sim.now;
    sim.device.particle_connect(now);
    assert!(sim.run_until(60 * SECOND, |e| matches!(e, DeviceEvent::Connected { .. })));

    let now = sim.now;
    sim.device.particle_disconnect(now);
    sim.run_for(600 * SECOND);
    assert!(!sim.device.status().connected);
    assert!(sim.trace.iter().any(|(_, e)| *e
        == DeviceEvent::Disconnected {
            reason: DisconnectReason::Requested
        }));
    assert_eq!(
        connected_events(&sim),
        1,
        "no reconnection after Particle.disconnect()"
    );

    // A reset starts over in semi-automatic mode: down until asked.
    let now = sim.now;
    sim.device.system_reset(now);
    sim.run_for(60 * SECOND);
    assert!(!sim.device.status().connected);
    let now = sim.now;
    sim.device.particle_connect(now);
    assert!(sim.run_until(60 * SECOND, |e| matches!(e, DeviceEvent::Connected { .. })));
}

#[test]
fn hibernate_wakes_like_a_reset_and_applies_a_staged_update() {
    let mut sim = Sim::boron();
    sim.connect();
    let update = app_module("boron", &v4());
    stage_update(sim.device.device_mut(), &update);
    let now = sim.now;
    sim.device
        .sleep(
            now,
            SleepConfig {
                mode: SleepMode::Hibernate,
                duration: None,
                network: SleepNetwork::Off,
            },
        )
        .unwrap();
    sim.run_for(3600 * SECOND);
    assert!(sim.device.status().sleeping, "no RTC wake in hibernate");
    let now = sim.now;
    sim.device.wake(now);
    assert!(sim.run_until(60 * SECOND, |e| matches!(e, DeviceEvent::Connected { .. })));
    let booted: Vec<_> = sim
        .trace
        .iter()
        .filter_map(|(_, e)| match e {
            DeviceEvent::Booted {
                reset_reason,
                versions,
                ..
            } => Some((*reset_reason, versions.product_version)),
            _ => None,
        })
        .collect();
    // power_down at first, then power_management (30) running the staged v4.
    assert_eq!(booted, vec![(40, Some(3)), (30, Some(4))]);
    assert!(sim
        .cloud
        .published()
        .contains(&("spark/device/last_reset".into(), "power_management".into())));
}

#[test]
fn gen3_refuses_a_timed_hibernate_and_keeps_running() {
    let mut sim = Sim::boron();
    sim.connect();
    let now = sim.now;
    let refused = sim.device.sleep(
        now,
        SleepConfig {
            mode: SleepMode::Hibernate,
            duration: Some(60 * SECOND),
            network: SleepNetwork::Off,
        },
    );
    assert!(refused.unwrap_err().contains("cannot wake from HIBERNATE"));
    sim.run_for(10 * SECOND);
    assert!(!sim.device.status().sleeping);
    assert!(sim.device.status().connected);
}

#[test]
fn the_p2_can_hibernate_for_a_duration() {
    let mut sim = Sim::new("p2", &Versions::BASELINE, AppBehaviour::default(), 9);
    sim.connect();
    let now = sim.now;
    sim.device
        .sleep(
            now,
            SleepConfig {
                mode: SleepMode::Hibernate,
                duration: Some(60 * SECOND),
                network: SleepNetwork::Off,
            },
        )
        .unwrap();
    sim.run_for(30 * SECOND);
    assert!(sim.device.status().sleeping);
    assert!(sim.run_until(60 * SECOND, |e| matches!(e, DeviceEvent::Connected { .. })));
}

#[test]
fn inactive_standby_keeps_the_connection_but_data_does_not_wake_the_device() {
    let mut sim = Sim::boron();
    sim.connect();
    let generation = sim.device.socket_generation();
    let now = sim.now;
    sim.device
        .sleep(
            now,
            SleepConfig {
                mode: SleepMode::Stop,
                duration: Some(300 * SECOND),
                network: SleepNetwork::InactiveStandby,
            },
        )
        .unwrap();
    sim.run_for(10 * SECOND);
    let now = sim.now;
    sim.cloud
        .send_event(now, "particle/device/updates/forced", "true");
    sim.run_for(10 * SECOND);
    let status = sim.device.status();
    assert!(status.sleeping, "data does not wake it");
    assert!(
        !status.flags.updates_forced,
        "what arrived while asleep is lost"
    );
    // The RTC wakes it; the session is still there (same socket, no new handshake).
    sim.run_for(300 * SECOND);
    let status = sim.device.status();
    assert!(!status.sleeping);
    assert!(status.connected);
    assert_eq!(sim.device.socket_generation(), generation);
}
