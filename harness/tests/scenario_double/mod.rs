//! A TEST DOUBLE of a scenario target: no device, no cloud, no flash. It follows a tiny script
//! (a cloud flash produces the cloud's events and a reboot into the new app after fixed
//! delays), records every call, and declares whatever capabilities a test gives it, so the
//! runner's semantics (skips, waits, failures, sweeps, traces) can be pinned without the
//! end-to-end stack. It says nothing about how the emulator behaves.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use harness::scenario::target::{
    FirmwareIntegrity, Observation, OtaStatus, RunningVersions, SystemFlags,
};
use harness::scenario::trace::EventSource;
use harness::scenario::{
    Action, AppAction, Capability, CutPoint, DeviceOsVersion, OtaState, Phase, Setup, Target,
    TargetError, TraceEntry, TraceKind,
};

/// What the double was asked, in order.
pub type Calls = Rc<RefCell<Vec<String>>>;

pub struct ScriptedTarget {
    caps: BTreeSet<Capability>,
    pub calls: Calls,
    now: Duration,
    /// Scheduled happenings: (time, entry, state change).
    timeline: Vec<(Duration, TraceKind, Change)>,
    out: Vec<TraceEntry>,
    powered: bool,
    online: bool,
    running: Option<RunningVersions>,
    flags: SystemFlags,
    ota: OtaStatus,
    last_reset: String,
    /// Boots since set-up (the power-on boot counts).
    boots: u32,
    /// Flash operations the double claims each phase took.
    pub phase_ops: Option<u64>,
    /// When set, `advance` never moves time (to test the stall guard).
    pub frozen: bool,
    /// Integrity the double reports.
    pub integrity: FirmwareIntegrity,
}

#[derive(Clone, Copy)]
enum Change {
    None,
    Online(bool),
    Boot(u16),
    OtaComplete,
}

impl ScriptedTarget {
    pub fn new(caps: impl IntoIterator<Item = Capability>, calls: Calls) -> Self {
        ScriptedTarget {
            caps: caps.into_iter().collect(),
            calls,
            now: Duration::ZERO,
            timeline: Vec::new(),
            out: Vec::new(),
            powered: false,
            online: false,
            running: None,
            flags: SystemFlags {
                updates_enabled: true,
                updates_pending: false,
                updates_forced: false,
                reset_enabled: true,
                reset_pending: false,
            },
            ota: OtaStatus {
                state: OtaState::Idle,
                received: 0,
                total: 0,
                resumed_from: None,
                error: None,
                started: 0,
            },
            last_reset: "power_down".into(),
            boots: 0,
            phase_ops: Some(2),
            frozen: false,
            integrity: FirmwareIntegrity::OldIntact,
        }
    }

    /// Every capability.
    pub fn full(calls: Calls) -> Self {
        Self::new(Capability::ALL, calls)
    }

    fn record(&self, call: String) {
        self.calls.borrow_mut().push(call);
    }

    fn at(&mut self, after: Duration, kind: TraceKind, change: Change) {
        self.timeline.push((self.now + after, kind, change));
        self.timeline.sort_by_key(|(t, _, _)| *t);
    }

    fn cloud(name: &str, data: &str) -> TraceKind {
        TraceKind::Event {
            source: EventSource::Cloud,
            name: name.into(),
            data: data.into(),
        }
    }

    fn device(name: &str, data: &str) -> TraceKind {
        TraceKind::Event {
            source: EventSource::Device,
            name: name.into(),
            data: data.into(),
        }
    }

    fn fire(&mut self, at: Duration, kind: TraceKind, change: Change) {
        match change {
            Change::None => {}
            Change::Online(on) => self.online = on,
            Change::OtaComplete => self.ota.state = OtaState::Complete,
            Change::Boot(app) => {
                if let Some(r) = &mut self.running {
                    r.app = app;
                }
                self.last_reset = "update".into();
                self.ota.state = OtaState::Idle;
                self.boots += 1;
            }
        }
        self.out.push(TraceEntry::new(at, kind));
    }
}

impl Target for ScriptedTarget {
    fn name(&self) -> &str {
        "double"
    }

    fn capabilities(&self) -> &BTreeSet<Capability> {
        &self.caps
    }

    fn setup(&mut self, setup: &Setup, seed: u64) -> Result<(), TargetError> {
        self.record(format!("setup {} seed={seed}", setup.board));
        self.powered = true;
        self.boots += 1;
        self.running = Some(RunningVersions {
            device_os: setup.firmware.device_os,
            app: setup.firmware.app,
            bootloader: setup.firmware.bootloader,
        });
        self.flags.updates_enabled = setup.app.updates_enabled_at_boot;
        self.out
            .push(TraceEntry::new(self.now, TraceKind::Power { on: true }));
        self.out.push(TraceEntry::new(
            self.now,
            TraceKind::Boot {
                running: self.running,
                safe_mode: false,
            },
        ));
        self.at(
            Duration::from_millis(1500),
            Self::cloud("spark/status", "online"),
            Change::Online(true),
        );
        Ok(())
    }

    fn apply(&mut self, action: &Action) -> Result<(), TargetError> {
        self.record(action.to_string());
        match action {
            Action::CloudFlash(spec) => {
                let Some(app) = spec.app else {
                    return Err(TargetError::Step("the double flashes apps only".into()));
                };
                self.ota = OtaStatus {
                    state: OtaState::InProgress,
                    received: 0,
                    total: 24576,
                    resumed_from: None,
                    error: None,
                    started: self.ota.started + 1,
                };
                self.at(
                    Duration::from_millis(5),
                    Self::cloud("spark/flash/status", "started "),
                    Change::None,
                );
                self.at(
                    Duration::from_millis(3300),
                    Self::cloud("spark/flash/status", "success "),
                    Change::OtaComplete,
                );
                self.at(
                    Duration::from_millis(3400),
                    Self::cloud("spark/status", "offline"),
                    Change::Online(false),
                );
                self.at(
                    Duration::from_millis(11_400),
                    TraceKind::Boot {
                        running: self.running.map(|r| RunningVersions { app, ..r }),
                        safe_mode: false,
                    },
                    Change::Boot(app),
                );
                self.at(
                    Duration::from_millis(11_500),
                    Self::cloud("spark/status", "online"),
                    Change::Online(true),
                );
                self.at(
                    Duration::from_millis(11_600),
                    Self::device("spark/device/last_reset", "update"),
                    Change::None,
                );
                Ok(())
            }
            Action::PowerCut(cut) => {
                let what = match cut.at {
                    CutPoint::Phase { phase, op } => {
                        format!("power cut armed at {} op {op}", phase.as_str())
                    }
                    CutPoint::Now => {
                        self.powered = false;
                        self.online = false;
                        "power cut now".into()
                    }
                    other => format!("power cut armed at {other:?}"),
                };
                self.out
                    .push(TraceEntry::new(self.now, TraceKind::Fault { what }));
                Ok(())
            }
            Action::PowerOn => {
                self.powered = true;
                self.out
                    .push(TraceEntry::new(self.now, TraceKind::Power { on: true }));
                Ok(())
            }
            Action::App(AppAction::DisableUpdates) => {
                self.flags.updates_enabled = false;
                self.out.push(TraceEntry::new(
                    self.now,
                    Self::device("particle/device/updates/enabled", "false"),
                ));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn now(&self) -> Duration {
        self.now
    }

    fn advance(&mut self, deadline: Duration) -> Result<(), TargetError> {
        self.record(format!("advance {}ms", deadline.as_millis()));
        if self.frozen {
            return Ok(());
        }
        match self.timeline.first() {
            Some((t, _, _)) if *t <= deadline => {
                let (t, kind, change) = self.timeline.remove(0);
                self.now = self.now.max(t);
                self.fire(t, kind, change);
            }
            _ => self.now = self.now.max(deadline),
        }
        Ok(())
    }

    fn drain_trace(&mut self) -> Vec<TraceEntry> {
        std::mem::take(&mut self.out)
    }

    fn observe(&mut self) -> Result<Observation, TargetError> {
        Ok(Observation {
            powered: Some(self.powered),
            online: Some(self.online),
            sleeping: Some(false),
            running: Some(if self.powered { self.running } else { None }),
            safe_mode: Some(false),
            flags: Some(self.flags),
            ota: Some(self.ota),
            last_reset: Some(self.last_reset.clone()),
            boots: Some(self.boots),
            system: Some(self.running.filter(|_| self.powered).map(|r| {
                harness::scenario::target::SystemVersions {
                    device_os: r.device_os,
                    bootloader: r.bootloader,
                }
            })),
            session_resumed: None,
            transfers_since_boot: None,
        })
    }

    fn inspect_firmware(&mut self) -> Result<FirmwareIntegrity, TargetError> {
        self.record("inspect_firmware".into());
        Ok(self.integrity.clone())
    }

    fn phase_ops(&mut self, phase: Phase) -> Result<Option<u64>, TargetError> {
        self.record(format!("phase_ops {}", phase.as_str()));
        Ok(self.phase_ops)
    }
}

/// Device OS 6.2.0.
pub const DOS_620: DeviceOsVersion = DeviceOsVersion(6200);
