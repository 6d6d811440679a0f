//! One device of a simulated fleet: the emulated Device OS (the real protocol: DTLS handshake,
//! CoAP, OTA v3, flash writes) plus what surrounds it in the field — its power, its network
//! and its application's habits — as a [`Node`] of the simulated network. The behaviour
//! schedule is this node's own timers, so the network's one priority queue holds every timer
//! of the fleet and a device with nothing due costs nothing.
//!
//! Its state (running version, updating, failed, safe mode, online, bricked) is kept in the
//! fleet's shared [`Tally`], updated only when it changes, so the per-minute curve costs
//! nothing per device.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use emulator::bootloader::BootState;
use emulator::flash::CutMode;
use emulator::os::{
    DeviceEvent, DeviceOs, FirmwareUpdateEvent, SleepConfig, SleepMode, SleepNetwork, SystemEvent,
};
use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;

use super::model::{Behaviour, Periods};
use crate::net::Node;

/// Counts of one cohort's devices by state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CohortCounts {
    /// Devices by running product version (unbootable devices are not counted here).
    pub versions: std::collections::BTreeMap<u16, u32>,
    pub updating: u32,
    pub failed: u32,
    pub safe_mode: u32,
    pub online: u32,
    pub bricked: u32,
}

/// The fleet's live counts, shared by every device node and the runner.
#[derive(Debug, Default)]
pub struct Tally {
    pub cohorts: Vec<CohortCounts>,
    /// Transfers that started while the application had updates disabled.
    pub updated_while_busy: u64,
    /// Power losses the schedule caused during downloads.
    pub power_losses_during_update: u64,
    /// When each device that was sent an update started its first transfer (a resumed or
    /// retried transfer is not a new one).
    pub first_transfers: Vec<Duration>,
    /// Full handshakes started by devices (a reconnect storm's size).
    pub handshakes: u64,
    pub resumptions: u64,
}

/// What one device contributes to the tally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Mark {
    version: Option<u16>,
    updating: bool,
    failed: bool,
    safe_mode: bool,
    online: bool,
    bricked: bool,
}

impl Tally {
    fn apply(&mut self, cohort: usize, mark: Mark, sign: i64) {
        let c = &mut self.cohorts[cohort];
        let add = |n: &mut u32, on: bool| {
            if on {
                *n = (*n as i64 + sign) as u32;
            }
        };
        if let Some(v) = mark.version.filter(|_| !mark.bricked) {
            let n = c.versions.entry(v).or_default();
            *n = (*n as i64 + sign) as u32;
        }
        add(&mut c.updating, mark.updating);
        add(&mut c.failed, mark.failed);
        add(&mut c.safe_mode, mark.safe_mode);
        add(&mut c.online, mark.online);
        add(&mut c.bricked, mark.bricked);
    }
}

/// Exponential draw with mean `mean` (inverse transform; never zero).
fn exp_draw(rng: &mut ChaCha8Rng, mean: Duration) -> Duration {
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    let x = -(1.0 - u).ln() * mean.as_secs_f64();
    Duration::from_millis((x * 1000.0).max(1.0) as u64)
}

/// Uniform in `0..=max`.
pub(super) fn uniform(rng: &mut ChaCha8Rng, max: Duration) -> Duration {
    let ms = max.as_millis() as u64;
    Duration::from_millis(if ms == 0 {
        0
    } else {
        rng.next_u64() % (ms + 1)
    })
}

fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    p > 0.0 && ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
}

/// A scheduled period: when it next starts and, while on, when it ends.
#[derive(Debug, Clone, Copy, Default)]
struct Period {
    next_start: Option<Duration>,
    until: Option<Duration>,
}

impl Period {
    fn new(rng: &mut ChaCha8Rng, periods: Option<Periods>, from: Duration) -> Period {
        Period {
            next_start: periods.map(|p| from + exp_draw(rng, p.every.0)),
            until: None,
        }
    }

    fn deadline(&self) -> Option<Duration> {
        self.until.or(self.next_start)
    }

    fn on(&self) -> bool {
        self.until.is_some()
    }
}

/// A fleet device on the simulated network.
pub struct FleetDevice {
    pub os: DeviceOs,
    server: SocketAddr,
    rng: ChaCha8Rng,
    cohort: usize,
    behaviour: Behaviour,
    /// Versions whose application never lets the device reach the cloud (bad builds).
    bad_versions: Rc<[u16]>,
    tally: Rc<RefCell<Tally>>,
    mark: Mark,
    /// First power-on.
    boot_at: Option<Duration>,
    /// Power comes back then (after a scheduled cycle or a loss during an update).
    power_on_at: Option<Duration>,
    power_cycle: Period,
    offline: Period,
    sleep: Period,
    busy: Period,
    /// Running a bad build: the network is gone for good.
    dead_app: bool,
    /// A power cut armed at an OTA chunk by the schedule.
    cut_armed: bool,
    /// A transfer to this device has started (counted in [`Tally::first_transfers`]).
    transferred: bool,
    powered: bool,
    now: Duration,
}

impl FleetDevice {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        os: DeviceOs,
        server: SocketAddr,
        rng: ChaCha8Rng,
        cohort: usize,
        behaviour: Behaviour,
        bad_versions: Rc<[u16]>,
        tally: Rc<RefCell<Tally>>,
        boot_at: Duration,
        app: u16,
    ) -> FleetDevice {
        // Counted from the start with the version its flash holds.
        let mark = Mark {
            version: Some(app),
            ..Mark::default()
        };
        tally.borrow_mut().apply(cohort, mark, 1);
        FleetDevice {
            os,
            server,
            rng,
            cohort,
            behaviour,
            bad_versions,
            tally,
            mark,
            boot_at: Some(boot_at),
            power_on_at: None,
            power_cycle: Period::default(),
            offline: Period::default(),
            sleep: Period::default(),
            busy: Period::default(),
            dead_app: false,
            cut_armed: false,
            transferred: false,
            powered: false,
            now: Duration::ZERO,
        }
    }

    fn network_down(&self) -> bool {
        self.dead_app || self.offline.on()
    }

    fn own_deadline(&self) -> Option<Duration> {
        [
            self.boot_at,
            self.power_on_at,
            self.power_cycle.deadline(),
            self.offline.deadline(),
            self.sleep.deadline(),
            self.busy.deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the schedule's due actions.
    fn run_schedule(&mut self, now: Duration) {
        if self.boot_at.is_some_and(|t| t <= now) {
            self.boot_at = None;
            self.powered = true;
            self.os.power_on(now);
            let b = self.behaviour;
            self.power_cycle = Period::new(&mut self.rng, b.power_cycle, now);
            self.offline = Period::new(&mut self.rng, b.offline, now);
            self.sleep = Period::new(&mut self.rng, b.sleep, now);
            self.busy = Period::new(&mut self.rng, b.busy, now);
        }
        if self.power_on_at.is_some_and(|t| t <= now) {
            self.power_on_at = None;
            self.powered = true;
            self.os.power_on(now);
        }
        // Power cycle.
        if let Some(p) = self.behaviour.power_cycle {
            if self.power_cycle.next_start.is_some_and(|t| t <= now) {
                let off = exp_draw(&mut self.rng, p.length.0);
                self.power_cycle.next_start = Some(now + off + exp_draw(&mut self.rng, p.every.0));
                if self.powered {
                    self.powered = false;
                    self.os.power_cut(now);
                    self.power_on_at = Some(now + off);
                }
            }
        }
        // Network outages.
        if let Some(p) = self.behaviour.offline {
            if self.offline.until.is_some_and(|t| t <= now) {
                self.offline.until = None;
                self.offline.next_start = Some(now + exp_draw(&mut self.rng, p.every.0));
            } else if self.offline.next_start.is_some_and(|t| t <= now) {
                self.offline.next_start = None;
                self.offline.until = Some(now + exp_draw(&mut self.rng, p.length.0));
            }
        }
        // Sleep: the emulated Device OS wakes itself (RTC) after the drawn length.
        if let Some(p) = self.behaviour.sleep {
            if self.sleep.next_start.is_some_and(|t| t <= now) {
                let length = exp_draw(&mut self.rng, p.length.0);
                self.sleep.next_start = Some(now + length + exp_draw(&mut self.rng, p.every.0));
                if self.powered {
                    let _ = self.os.sleep(
                        now,
                        SleepConfig {
                            mode: SleepMode::Stop,
                            duration: Some(length),
                            network: SleepNetwork::Off,
                        },
                    );
                }
            }
        }
        // Busy: updates disabled by the application.
        if let Some(p) = self.behaviour.busy {
            if self.busy.until.is_some_and(|t| t <= now) {
                self.busy.until = None;
                self.busy.next_start = Some(now + exp_draw(&mut self.rng, p.every.0));
                if self.powered {
                    self.os.enable_updates(now);
                }
            } else if self.busy.next_start.is_some_and(|t| t <= now) {
                self.busy.next_start = None;
                self.busy.until = Some(now + exp_draw(&mut self.rng, p.length.0));
                if self.powered {
                    self.os.disable_updates(now);
                }
            }
        }
    }

    /// Takes the device's events into its mark and the tally.
    fn drain(&mut self, now: Duration) {
        self.now = self.now.max(now);
        let before = self.mark;
        while let Some(event) = self.os.poll_event() {
            self.on_event(event);
        }
        if self.mark != before {
            let mut t = self.tally.borrow_mut();
            t.apply(self.cohort, before, -1);
            t.apply(self.cohort, self.mark, 1);
        }
    }

    fn on_event(&mut self, event: DeviceEvent) {
        match event {
            DeviceEvent::Booted {
                state, versions, ..
            } => {
                self.powered = true;
                self.mark.version = versions.product_version;
                self.mark.bricked = matches!(state, BootState::Unbootable { .. });
                self.mark.safe_mode = matches!(state, BootState::SafeMode(_));
                if self.mark.updating {
                    self.mark.updating = false;
                }
                self.mark.failed = false;
                self.dead_app = !self.mark.safe_mode
                    && versions
                        .product_version
                        .is_some_and(|v| self.bad_versions.contains(&v));
                // The application ran setup() again: a busy period goes on.
                if self.busy.on() && !self.mark.safe_mode {
                    self.os.disable_updates(self.now);
                }
            }
            DeviceEvent::SafeMode { .. } => self.mark.safe_mode = true,
            DeviceEvent::PoweredOff => {
                self.mark.online = false;
                if self.mark.updating {
                    self.mark.updating = false;
                    self.mark.failed = true;
                }
                if self.powered {
                    // Not the schedule's own cycle: a cut armed at a chunk fired.
                    self.powered = false;
                    self.cut_armed = false;
                    let back =
                        Duration::from_secs(5) + uniform(&mut self.rng, Duration::from_secs(115));
                    self.power_on_at = Some(self.now + back);
                }
            }
            DeviceEvent::Connecting { resume } => {
                let mut t = self.tally.borrow_mut();
                if resume {
                    t.resumptions += 1;
                } else {
                    t.handshakes += 1;
                }
            }
            DeviceEvent::Connected { .. } => self.mark.online = true,
            DeviceEvent::Disconnected { .. } => self.mark.online = false,
            DeviceEvent::OtaStarted { file_size, .. } => {
                self.mark.updating = true;
                if !self.transferred {
                    self.transferred = true;
                    self.tally.borrow_mut().first_transfers.push(self.now);
                }
                if self.busy.on() {
                    self.tally.borrow_mut().updated_while_busy += 1;
                }
                if !self.cut_armed && chance(&mut self.rng, self.behaviour.power_loss_during_update)
                {
                    let chunks = file_size.div_ceil(512).max(1);
                    let chunk = 1 + (self.rng.next_u32() % chunks);
                    self.os.cut_power_at_chunk(chunk, CutMode::Torn);
                    self.cut_armed = true;
                    self.tally.borrow_mut().power_losses_during_update += 1;
                }
            }
            DeviceEvent::OtaFailed { .. }
            | DeviceEvent::SystemEvent(SystemEvent::FirmwareUpdate(FirmwareUpdateEvent::Failed))
                if self.mark.updating =>
            {
                self.mark.updating = false;
                self.mark.failed = true;
            }
            _ => {}
        }
    }
}

impl Node for FleetDevice {
    fn handle_datagram(&mut self, now: Duration, from: SocketAddr, data: &[u8]) {
        if from == self.server && !self.network_down() {
            self.os.handle_datagram(now, data);
        }
        self.drain(now);
    }

    fn handle_timeout(&mut self, now: Duration) {
        self.drain(now);
        if self.own_deadline().is_some_and(|t| t <= now) {
            self.run_schedule(now);
            self.drain(now);
        }
        if self.os.poll_timeout().is_some_and(|t| t <= now) {
            self.os.handle_timeout(now);
        }
        self.drain(now);
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        loop {
            let d = self.os.poll_transmit()?;
            if !self.network_down() {
                return Some((self.server, d));
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        match (self.os.poll_timeout(), self.own_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn local_addr_generation(&self) -> u32 {
        self.os.socket_generation()
    }
}
