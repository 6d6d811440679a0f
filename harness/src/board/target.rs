//! A physical board (or an emulated one behind a pseudo-terminal) as a scenario [`Target`]: the
//! test application over serial ([`BoardPort`], protocol of `boards/README.md`), an optional
//! [`DebugProbe`] to install firmware, an optional [`PowerSwitch`], and the local Device Cloud
//! (`crate::cloud`) over real UDP, which the board talks to as to Particle's.
//!
//! Time is wall-clock: the cloud node's clock since set-up. What a board can do is what
//! hardware allows; everything else is left out of its capabilities, so the runner skips those
//! steps with the reason: no power cut at a flash operation or an OTA chunk, no link faults, no
//! flash inspection, no OTA progress from the device, one device per scenario, no products.
//!
//! Errors of the hardware or its cabling (the port does not answer, the power switch fails,
//! the probe does not attach) are [`TargetError::Unavailable`]: infrastructure errors, which
//! the rack runner retries on another board; a refusal by the application is a step error.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emulator::board::Board;
use emulator::firmware::{FirmwareSet, ModuleSizes};
use emulator::os::profile::reset_reason;
use tokio::runtime::Handle;

use super::port::{BoardPort, PortError, PortLocator};
use super::power::PowerSwitch;
use super::probe::DebugProbe;
use super::protocol::{BoardEvent, BoardLine, BoardStatus, Command, ReplyBody, PROTOCOL_VERSION};
use crate::cloud::{CloudEvent, Publisher};
use crate::net::udp::UdpNode;
use crate::scenario::firmware::build_file;
use crate::scenario::model::{
    Action, AppAction, CutPoint, DeviceOsVersion, InitialFirmware, Phase, Setup, SystemMode,
};
use crate::scenario::target::{
    Capability, FirmwareIntegrity, Observation, RunningVersions, SystemFlags, Target, TargetError,
};
use crate::scenario::trace::{EventSource, TraceEntry, TraceKind};
use crate::testbed::CloudNode;

/// A probe or power switch shared by the successive targets of one board.
pub type Shared<T> = Arc<Mutex<T>>;

/// How long the board gets to answer a request.
const ANSWER: Duration = Duration::from_secs(3);
/// How long a board gets to come back on serial after power-up or a reset (USB enumeration,
/// boot, `setup()`).
const BOOT: Duration = Duration::from_secs(20);
/// The cloud publishes nothing about a board for this long before a case starts.
const QUIET_CLOUD: Duration = Duration::from_millis(1200);
/// Without a line for this long (awake, powered), the target asks `hello` to see that the
/// board still answers.
const QUIET: Duration = Duration::from_secs(2);

/// One board of a rack, as a target needs it.
#[derive(Clone)]
pub struct BoardConfig {
    /// The rack's name for it.
    pub name: String,
    /// Built-in board name (`boron`, ...).
    pub platform: String,
    pub device_id: [u8; 12],
    pub port: PortLocator,
    /// User part size the cloud's files are built with (the emulator target's: 24 KiB).
    pub sizes: ModuleSizes,
    /// Capabilities the rack file takes away from this board.
    pub without: Vec<Capability>,
}

/// The capabilities of a board with (or without) a probe and a power switch.
pub fn board_capabilities(
    probe: bool,
    power: bool,
    without: &[Capability],
) -> BTreeSet<Capability> {
    let mut caps: BTreeSet<Capability> = [
        Capability::CloudFlash,
        Capability::CloudForceUpdates,
        Capability::AppControl,
        Capability::Sleep,
        Capability::ObserveEvents,
        Capability::ObserveState,
        Capability::ObserveVersions,
        Capability::ObserveFlags,
    ]
    .into_iter()
    .collect();
    if probe {
        caps.insert(Capability::InstallFirmware);
    }
    if power {
        caps.insert(Capability::PowerControl);
    }
    for c in without {
        caps.remove(c);
    }
    caps
}

fn infra(e: impl std::fmt::Display) -> TargetError {
    TargetError::Unavailable(e.to_string())
}

fn port_err(board: &str, e: PortError) -> TargetError {
    match e {
        PortError::Refused { .. } => TargetError::Step(e.to_string()),
        other => TargetError::Unavailable(format!("board {board}: {other}")),
    }
}

pub struct BoardTarget {
    cfg: BoardConfig,
    caps: BTreeSet<Capability>,
    rt: Handle,
    cloud: Arc<UdpNode<CloudNode>>,
    port: BoardPort,
    probe: Option<Shared<Box<dyn DebugProbe>>>,
    power: Option<Shared<Box<dyn PowerSwitch>>>,
    board: Option<Board>,
    /// Cloud time at set-up: the target's time zero.
    base: Duration,
    seen_cloud: usize,
    queue: Vec<TraceEntry>,
    current: InitialFirmware,
    dev_seed: u64,
    powered: bool,
    /// Asleep since a `sleep` request, until the board speaks again.
    sleeping: bool,
    power_back_at: Option<Duration>,
    last_reset: Option<String>,
    /// Target time of the last line from the board.
    last_heard: Duration,
    /// Until the board's first `spark/status online` after set-up, a `spark/status offline`
    /// is the cloud closing the session the board had before its power cycle: not part of
    /// the scenario, and dropped.
    stale_session: bool,
}

impl BoardTarget {
    /// A target for `cfg`'s board; `rt` is the runtime the cloud runs on (the target's calls
    /// block on it, so they must not be made from inside it).
    pub fn new(
        cfg: BoardConfig,
        rt: Handle,
        cloud: Arc<UdpNode<CloudNode>>,
        probe: Option<Shared<Box<dyn DebugProbe>>>,
        power: Option<Shared<Box<dyn PowerSwitch>>>,
    ) -> BoardTarget {
        let caps = board_capabilities(probe.is_some(), power.is_some(), &cfg.without);
        BoardTarget {
            port: BoardPort::new(cfg.port.clone()),
            cfg,
            caps,
            rt,
            cloud,
            probe,
            power,
            board: None,
            base: Duration::ZERO,
            seen_cloud: 0,
            queue: Vec::new(),
            current: InitialFirmware::default(),
            dev_seed: 0,
            powered: true,
            sleeping: false,
            power_back_at: None,
            last_reset: None,
            last_heard: Duration::ZERO,
            stale_session: false,
        }
    }

    fn switch_power(&mut self, on: bool) -> Result<(), TargetError> {
        let Some(power) = &self.power else {
            return Err(TargetError::Step(format!(
                "board {} has no power switch",
                self.cfg.name
            )));
        };
        // Power on is stamped before the switch closes: a board can boot and reach the cloud
        // before `set` returns (under load, by tens of ms), and its first events must not be
        // traced ahead of the power that caused them. Power off is stamped after the switch
        // opens, so whatever the board sent until then comes first.
        let before = self.now();
        power
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(on)
            .map_err(|e| infra(format!("board {}: {e}", self.cfg.name)))?;
        self.powered = on;
        if on {
            self.sleeping = false;
        }
        let at = if on { before } else { self.now() };
        self.queue
            .push(TraceEntry::new(at, TraceKind::Power { on }));
        Ok(())
    }

    fn request(&mut self, command: Command, limit: Duration) -> Result<ReplyBody, TargetError> {
        let rt = self.rt.clone();
        let result = rt.block_on(async {
            if !self.port.is_open() {
                self.port.reopen(limit).await?;
            }
            self.port.request(command, limit).await
        });
        self.take_lines();
        result.map_err(|e| port_err(&self.cfg.name, e))
    }

    /// Waits until the board answers `hello` (after power-up or a reset), checking its
    /// protocol version and device id.
    fn wait_hello(&mut self) -> Result<(), TargetError> {
        let rt = self.rt.clone();
        let deadline = std::time::Instant::now() + BOOT;
        let answer = loop {
            let attempt = rt.block_on(async {
                if !self.port.is_open() {
                    self.port.reopen(Duration::from_millis(500)).await?;
                }
                self.port
                    .request(Command::Hello, Duration::from_millis(500))
                    .await
            });
            match attempt {
                Ok(body) => break body,
                Err(e) if std::time::Instant::now() >= deadline => {
                    return Err(infra(format!(
                        "board {} did not answer after {} s: {e}",
                        self.cfg.name,
                        BOOT.as_secs()
                    )))
                }
                Err(_) => {}
            }
        };
        self.take_lines();
        match answer {
            ReplyBody::Hello {
                version, device_id, ..
            } => {
                if version != PROTOCOL_VERSION {
                    return Err(port_err(
                        &self.cfg.name,
                        PortError::Version { found: version },
                    ));
                }
                if !device_id.eq_ignore_ascii_case(&hex::encode(self.cfg.device_id)) {
                    return Err(infra(format!(
                        "board {} answers as device {device_id}, the rack file says {}",
                        self.cfg.name,
                        hex::encode(self.cfg.device_id)
                    )));
                }
                Ok(())
            }
            _ => Err(infra(format!(
                "board {}: `hello` answered without a hello",
                self.cfg.name
            ))),
        }
    }

    fn status(&mut self, limit: Duration) -> Result<BoardStatus, TargetError> {
        match self.request(Command::Status, limit)? {
            ReplyBody::Status(s) => Ok(s),
            _ => Err(port_err(
                &self.cfg.name,
                PortError::Unexpected {
                    command: "status".into(),
                },
            )),
        }
    }

    /// Lines from the board into the trace and the target's state.
    fn take_lines(&mut self) {
        let now = self.now();
        let lines = self.port.take_lines();
        if !lines.is_empty() {
            self.sleeping = false;
            self.last_heard = now;
        }
        for line in lines {
            let text = match line {
                BoardLine::Boot(b) => {
                    let reason = reset_reason::name(b.reset_reason);
                    self.last_reset = Some(reason.clone());
                    self.current.device_os = DeviceOsVersion(b.system_version);
                    self.current.app = b.app;
                    format!(
                        "board: boot reset_reason={reason} device_os={} app={}",
                        DeviceOsVersion(b.system_version),
                        b.app
                    )
                }
                BoardLine::Event(e) => match e {
                    BoardEvent::Other { name, param } => {
                        format!("board: system event {name} {param}")
                    }
                    e => format!("board: system event {} {}", e.name(), e.param()),
                },
                BoardLine::Log(l) => {
                    format!("board: log {} {}: {}", l.level, l.category, l.message)
                }
                BoardLine::Reply(_) => continue,
            };
            self.queue
                .push(TraceEntry::new(now, TraceKind::Note { text }));
        }
        for e in self.port.take_bad_lines() {
            self.queue.push(TraceEntry::new(
                now,
                TraceKind::Note {
                    text: format!("board: {e}"),
                },
            ));
        }
    }

    /// Waits until the cloud has published nothing about this board for [`QUIET_CLOUD`] (at
    /// most [`BOOT`]).
    fn wait_cloud_quiet(&mut self) {
        let id = self.cfg.device_id;
        let count = |n: &mut CloudNode| {
            n.events
                .iter()
                .filter(|(_, e)| matches!(e, CloudEvent::Stream(s) if s.device_id == id))
                .count()
        };
        let start = std::time::Instant::now();
        let mut last = self.cloud.with_node(|n, _| count(n));
        let mut since = std::time::Instant::now();
        while since.elapsed() < QUIET_CLOUD && start.elapsed() < BOOT {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.cloud.with_node(|n, _| count(n));
            if now != last {
                last = now;
                since = std::time::Instant::now();
            }
        }
    }

    /// The cloud's stream events about this board since the last call.
    fn take_cloud_events(&mut self) {
        let id = self.cfg.device_id;
        let base = self.base;
        let seen = self.seen_cloud;
        let (events, len) = self.cloud.with_node(|n, _| {
            let new: Vec<TraceEntry> = n
                .events
                .get(seen..)
                .unwrap_or_default()
                .iter()
                .filter_map(|(at, e)| match e {
                    CloudEvent::Stream(s) if s.device_id == id => Some(TraceEntry::new(
                        at.saturating_sub(base),
                        TraceKind::Event {
                            source: match s.publisher {
                                Publisher::Device => EventSource::Device,
                                Publisher::Cloud => EventSource::Cloud,
                            },
                            name: s.name.clone(),
                            data: s.data.clone(),
                        },
                    )),
                    _ => None,
                })
                .collect();
            (new, n.events.len())
        });
        self.seen_cloud = len;
        for e in events {
            if let TraceKind::Event { name, data, .. } = &e.kind {
                if self.stale_session && name == "spark/status" {
                    if data == "offline" {
                        self.stale_session = false;
                        continue;
                    }
                    self.stale_session = false;
                }
            }
            self.queue.push(e);
        }
    }

    /// Installs the images of `want` (those the emulator target provisions) through the
    /// probe, each module only where the flash holds something else; resets the board when it
    /// wrote anything. Without a probe, nothing (set-up then checks the versions).
    fn install(&mut self, board: &Board, want: &InitialFirmware) -> Result<(), TargetError> {
        use emulator::board::RegionKind;
        let Some(probe) = self.probe.clone() else {
            return Ok(());
        };
        let (_, images) = FirmwareSet::new(board, self.cfg.sizes, self.dev_seed)
            .provision(&want.versions())
            .map_err(|e| TargetError::Step(e.to_string()))?;
        let mut probe = probe.lock().unwrap_or_else(|e| e.into_inner());
        let name = &self.cfg.name;
        let probe_err = |e| infra(format!("board {name}: {e}"));
        probe.attach().map_err(probe_err)?;
        let mut wrote = false;
        for (kind, image) in &images {
            if !matches!(
                kind,
                RegionKind::Bootloader | RegionKind::SystemPart | RegionKind::UserPart
            ) {
                continue;
            }
            let Some(region) = board.region(*kind) else {
                continue;
            };
            let held = probe
                .read_memory(region.start, image.len())
                .map_err(probe_err)?;
            if held != *image {
                if !wrote {
                    probe.halt().map_err(probe_err)?;
                }
                probe.flash(region.start, image).map_err(probe_err)?;
                wrote = true;
            }
        }
        // With a power switch the board stays halted: the set-up's power cycle boots the new
        // images, so their first connection to the cloud is the case's own (as on the
        // emulator target, whose cloud first hears of the device then). Without one, reset.
        if wrote && self.power.is_none() {
            probe.reset().map_err(probe_err)?;
            drop(probe);
            self.port = BoardPort::new(self.cfg.port.clone());
            self.wait_hello()?;
        }
        Ok(())
    }
}

impl Target for BoardTarget {
    fn name(&self) -> &str {
        "board"
    }

    fn capabilities(&self) -> &BTreeSet<Capability> {
        &self.caps
    }

    fn setup(&mut self, setup: &Setup, seed: u64) -> Result<(), TargetError> {
        if setup.board != self.cfg.platform {
            return Err(infra(format!(
                "board {} is a {}, the scenario needs a {}",
                self.cfg.name, self.cfg.platform, setup.board
            )));
        }
        if setup.app.mode != SystemMode::Automatic || !setup.app.system_thread {
            return Err(TargetError::Step(
                "the test firmware runs in AUTOMATIC mode with the system thread; this set-up \
                 needs another build of it"
                    .into(),
            ));
        }
        let board = Board::builtin(&setup.board).map_err(|e| TargetError::Step(e.to_string()))?;
        // As the emulator target derives its first device's seed, so files are the same.
        self.dev_seed = seed ^ (1u64 << 32);
        self.current = setup.firmware;
        // The firmware the scenario starts from, installed through the probe where the board
        // holds other images (the emulator target's images, so the traces compare), and what
        // `setup()` does at boot; then a clean start.
        if self.power.is_some() {
            self.switch_power(true)?;
        }
        self.wait_hello()?;
        self.request(
            Command::Setup {
                updates_enabled: setup.app.updates_enabled_at_boot,
                reset_enabled: setup.app.reset_enabled_at_boot,
            },
            ANSWER,
        )?;
        self.install(&board, &setup.firmware)?;
        // What the board's last session still publishes (the cloud's post-connect sequence
        // runs a second after a connection) belongs to the case before.
        self.wait_cloud_quiet();
        let id = self.cfg.device_id;
        let forced = setup
            .cloud
            .devices
            .first()
            .is_some_and(|d| d.updates_forced);
        let policy = setup.cloud.interrupted_transfer;
        let (base, seen) = self.cloud.with_node(|n, now| {
            n.act(now, |c, now| {
                c.set_interrupted(policy);
                c.set_updates_forced(now, id, forced);
            });
            (now, n.events.len())
        });
        // A clean start: power cycled (a reset when there is no power switch).
        if self.power.is_some() {
            self.switch_power(false)?;
        }
        self.base = base;
        self.seen_cloud = seen;
        self.queue.clear();
        self.stale_session = true;
        if self.power.is_some() {
            self.switch_power(true)?;
        } else {
            self.request(Command::Reset { no_wait: true }, ANSWER)?;
            self.port = BoardPort::new(self.cfg.port.clone());
        }
        self.wait_hello()?;
        let mut s = self.status(ANSWER)?;
        if (s.system_version, s.app) != (setup.firmware.device_os.0, setup.firmware.app)
            && self.probe.is_some()
            && self.power.is_some()
        {
            // An update the case before left staged (its transfer ended after that case did)
            // was applied at this boot: install once more, and start again.
            self.install(&board, &setup.firmware)?;
            self.wait_cloud_quiet();
            let (base, seen) = self.cloud.with_node(|n, now| (now, n.events.len()));
            self.switch_power(false)?;
            self.base = base;
            self.seen_cloud = seen;
            self.queue.clear();
            self.stale_session = true;
            self.switch_power(true)?;
            self.wait_hello()?;
            s = self.status(ANSWER)?;
        }
        if (s.system_version, s.app) != (setup.firmware.device_os.0, setup.firmware.app) {
            return Err(infra(format!(
                "board {} runs device_os={} app={}, the scenario starts from device_os={} app={}{}",
                self.cfg.name,
                DeviceOsVersion(s.system_version),
                s.app,
                setup.firmware.device_os,
                setup.firmware.app,
                if self.probe.is_none() {
                    " (it has no debug probe to install that)"
                } else {
                    ""
                }
            )));
        }
        self.last_reset = Some(reset_reason::name(s.reset_reason));
        self.board = Some(board);
        self.last_heard = self.now();
        self.take_cloud_events();
        Ok(())
    }

    fn apply(&mut self, action: &Action) -> Result<(), TargetError> {
        let name = self.cfg.name.clone();
        match action {
            Action::CloudFlash(spec) => {
                let board = self
                    .board
                    .clone()
                    .ok_or_else(|| TargetError::Step("the target is not set up".into()))?;
                let file = build_file(&board, spec, &self.current, self.cfg.sizes, self.dev_seed)
                    .map_err(|e| TargetError::Step(e.to_string()))?;
                let id = self.cfg.device_id;
                self.cloud
                    .with_node(|n, now| n.act(now, |c, now| c.flash(now, id, file)));
            }
            Action::CloudForceUpdates { forced } => {
                let id = self.cfg.device_id;
                self.cloud.with_node(|n, now| {
                    n.act(now, |c, now| c.set_updates_forced(now, id, *forced))
                });
            }
            Action::PowerCut(cut) => {
                if cut.at != CutPoint::Now {
                    return Err(TargetError::Step(format!(
                        "board {name} cuts power only now, not at a flash operation or chunk"
                    )));
                }
                self.switch_power(false)?;
                self.power_back_at = cut.off_for.map(|d| self.now() + d);
            }
            Action::PowerOn => {
                self.power_back_at = None;
                self.switch_power(true)?;
            }
            // Not declared (no RESET-pin line in the test-control protocol v1): skipped.
            Action::HardwareReset(_) => {
                return Err(TargetError::Step(
                    "a board target cannot pull the RESET pin (protocol v1)".into(),
                ))
            }
            // Not declared: a board's flash cannot be made to fail on request.
            Action::FlashFail(_) => {
                return Err(TargetError::Step(
                    "a board target cannot make its flash fail".into(),
                ))
            }
            Action::App(app) => {
                let command = match app {
                    AppAction::DisableUpdates => Command::Updates { enabled: false },
                    AppAction::EnableUpdates => Command::Updates { enabled: true },
                    AppAction::DisableReset => Command::Resets { enabled: false },
                    AppAction::EnableReset => Command::Resets { enabled: true },
                    AppAction::Reset { no_wait } => Command::Reset { no_wait: *no_wait },
                    AppAction::Sleep(s) => Command::Sleep {
                        mode: match s.mode {
                            emulator::os::SleepMode::Stop => super::protocol::SleepMode::Stop,
                            emulator::os::SleepMode::UltraLowPower => {
                                super::protocol::SleepMode::UltraLowPower
                            }
                            emulator::os::SleepMode::Hibernate => {
                                super::protocol::SleepMode::Hibernate
                            }
                        },
                        duration_ms: s.duration.map(|d| d.as_millis() as u64),
                        network: match s.network {
                            emulator::os::SleepNetwork::Off => super::protocol::SleepNetwork::Off,
                            emulator::os::SleepNetwork::Standby => {
                                super::protocol::SleepNetwork::Standby
                            }
                            emulator::os::SleepNetwork::InactiveStandby => {
                                super::protocol::SleepNetwork::InactiveStandby
                            }
                        },
                    },
                    AppAction::Wake => {
                        return Err(TargetError::Step(format!(
                            "board {name} has no wake pin wired to the harness"
                        )))
                    }
                    AppAction::Connect => Command::Connect,
                    AppAction::Disconnect => Command::Disconnect,
                };
                let sleep = matches!(command, Command::Sleep { .. });
                self.request(command, ANSWER)?;
                if sleep {
                    self.sleeping = true;
                }
                self.last_heard = self.now();
            }
            Action::Link(_) | Action::Product(_) => {
                return Err(TargetError::Step(format!(
                    "board {name} cannot do this (no link faults, no products)"
                )))
            }
        }
        self.take_cloud_events();
        Ok(())
    }

    fn now(&self) -> Duration {
        self.cloud.now().saturating_sub(self.base)
    }

    fn advance(&mut self, deadline: Duration) -> Result<(), TargetError> {
        if let Some(back) = self.power_back_at {
            if back <= self.now() {
                self.power_back_at = None;
                return self.switch_power(true);
            }
        }
        let deadline = match self.power_back_at {
            Some(back) => deadline.min(back),
            None => deadline,
        };
        let rt = self.rt.clone();
        loop {
            let now = self.now();
            if now >= deadline {
                return Ok(());
            }
            let slice = (deadline - now).min(Duration::from_millis(20));
            if self.powered {
                rt.block_on(async {
                    if self.port.is_open() {
                        // A failed port is closed here and reopened on the next round.
                        let _ = self.port.poll(slice).await;
                    } else {
                        let _ = self.port.reopen(Duration::ZERO).await;
                        tokio::time::sleep(slice).await;
                    }
                });
            } else {
                std::thread::sleep(slice);
            }
            self.take_lines();
            self.take_cloud_events();
            if !self.queue.is_empty() {
                return Ok(());
            }
            // A board that is on and awake and said nothing for a while must still answer; one
            // whose port is gone (re-enumerating after a reset) gets the time of a boot.
            let now = self.now();
            let silent = now.saturating_sub(self.last_heard);
            let due = if self.port.is_open() { QUIET } else { BOOT };
            if self.powered && !self.sleeping && silent >= due {
                self.request(Command::Hello, ANSWER)?;
                self.last_heard = self.now();
            }
        }
    }

    fn drain_trace(&mut self) -> Vec<TraceEntry> {
        self.take_cloud_events();
        let mut q = std::mem::take(&mut self.queue);
        q.sort_by_key(|e| e.at);
        q
    }

    fn observe(&mut self) -> Result<Observation, TargetError> {
        if !self.powered {
            return Ok(Observation {
                powered: Some(false),
                online: Some(false),
                sleeping: Some(false),
                running: Some(None),
                safe_mode: Some(false),
                flags: None,
                ota: None,
                last_reset: self.last_reset.clone(),
                boots: None,
                system: Some(None),
                session_resumed: None,
                transfers_since_boot: None,
            });
        }
        let limit = if self.sleeping {
            Duration::from_millis(300)
        } else {
            ANSWER
        };
        let s = match self.status(limit) {
            Ok(s) => s,
            Err(TargetError::Unavailable(_)) if self.sleeping => {
                return Ok(Observation {
                    powered: Some(true),
                    online: Some(false),
                    sleeping: Some(true),
                    running: None,
                    safe_mode: Some(false),
                    flags: None,
                    ota: None,
                    last_reset: self.last_reset.clone(),
                    boots: None,
                    system: None,
                    session_resumed: None,
                    transfers_since_boot: None,
                });
            }
            Err(e) => return Err(e),
        };
        self.sleeping = false;
        self.last_heard = self.now();
        Ok(Observation {
            powered: Some(true),
            online: Some(s.online),
            sleeping: Some(false),
            running: Some(Some(RunningVersions {
                device_os: DeviceOsVersion(s.system_version),
                app: s.app,
                bootloader: self.current.bootloader,
            })),
            safe_mode: Some(s.safe_mode),
            flags: Some(SystemFlags {
                updates_enabled: s.updates_enabled,
                updates_pending: s.updates_pending,
                updates_forced: s.updates_forced,
                reset_enabled: s.reset_enabled,
                reset_pending: s.reset_pending,
            }),
            ota: None,
            last_reset: Some(reset_reason::name(s.reset_reason)),
            boots: None,
            system: Some(Some(crate::scenario::target::SystemVersions {
                device_os: DeviceOsVersion(s.system_version),
                bootloader: self.current.bootloader,
            })),
            session_resumed: None,
            transfers_since_boot: None,
        })
    }

    fn inspect_firmware(&mut self) -> Result<FirmwareIntegrity, TargetError> {
        Err(TargetError::Step(format!(
            "board {} does not read its flash",
            self.cfg.name
        )))
    }

    fn phase_ops(&mut self, _phase: Phase) -> Result<Option<u64>, TargetError> {
        Ok(None)
    }
}
