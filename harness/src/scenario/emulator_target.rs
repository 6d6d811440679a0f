//! The emulator as a scenario [`Target`]: one emulated device and the local cloud on the
//! simulated network of a [`Testbed`], in virtual time.
//!
//! What it can do precisely: power cuts now, at a numbered flash operation, while OTA chunk K
//! is written (the emulated Device OS arms the cut at the first flash operation of writing the
//! chunk with that Chunk-Index, [`emulator::os::DeviceOs::cut_power_at_chunk`]), and at flash
//! operation N of a phase: the emulated firmware labels every flash operation with what it is
//! doing ([`Activity`]: download, commit, apply, first boot) and the flash cuts at the Nth
//! operation of that activity from the moment the cut is armed; the target groups the logged
//! operations into runs per phase to tell a sweep how many there are
//! ([`EmulatorTarget::phase_ops`]).
//!
//! The target adds no cloud behaviour of its own: holding an update while the device has
//! updates disabled, retries and healing are the local cloud's ([`crate::cloud::policy`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use emulator::board::{Board, RegionKind};
use emulator::firmware::{FirmwareSet, ModuleSizes};
use emulator::flash::{Activity, ActivityCut};
use emulator::os::DeviceEvent;

use super::firmware::{build_file, build_modules, device_os_release_modules};
use super::model::*;
use super::target::{
    Capability, FirmwareIntegrity, Observation, OtaStatus, RunningVersions, Target, TargetError,
};
use super::trace::{EventSource, TraceEntry, TraceKind};
use crate::cloud::fleet::{DeviceChange, Release};
use crate::cloud::{CloudEvent, DeviceId, Publisher};
use crate::testbed::{DeviceHandle, DeviceSpec, Testbed};

/// The latest run of flash operations per phase: where it started (absolute flash op) and
/// how many ops it took.
type PhaseRuns = BTreeMap<Phase, (u64, u64)>;

/// The flash activity of each phase (the emulated firmware labels its writes with these).
const PHASE_ACTIVITIES: [(Phase, Activity); 4] = [
    (Phase::Download, Activity::Download),
    (Phase::Commit, Activity::Commit),
    (Phase::Apply, Activity::Apply),
    (Phase::FirstBoot, Activity::FirstBoot),
];

fn phase_of(activity: Activity) -> Option<Phase> {
    PHASE_ACTIVITIES
        .iter()
        .find(|(_, a)| *a == activity)
        .map(|(p, _)| *p)
}

fn activity_of(phase: Phase) -> Activity {
    PHASE_ACTIVITIES
        .iter()
        .find(|(p, _)| *p == phase)
        .map_or(Activity::Other, |(_, a)| *a)
}

/// A trace line for an OTA milestone.
fn ota_entry(
    at: Duration,
    state: OtaState,
    received: u64,
    total: u64,
    detail: String,
) -> TraceEntry {
    TraceEntry::new(
        at,
        TraceKind::Ota {
            state,
            received,
            total,
            detail,
        },
    )
}

fn err(e: impl std::fmt::Display) -> TargetError {
    TargetError::Step(e.to_string())
}

/// One emulated device of the scenario and what the target tracks for it.
#[derive(Default)]
struct Dut {
    /// `[[cloud.device]] name`.
    name: String,
    dev: DeviceHandle,
    dev_seed: u64,
    current: InitialFirmware,
    old_images: BTreeMap<RegionKind, Vec<u8>>,
    /// What the latest flash, release or lock offers (the update `nothing_lost` judges whole).
    new_images: BTreeMap<RegionKind, Vec<u8>>,
    /// Every image offered before the latest one: each was legitimately installed at some
    /// point of the run, so a region holding one of them lost nothing.
    earlier_images: BTreeMap<RegionKind, Vec<Vec<u8>>>,
    seen_dev_events: usize,
    /// Power returns by itself at this time.
    power_back_at: Option<Duration>,
    /// A cut is armed at a flash op with `off_for`; once it fired, power returns after it.
    armed_off_for: Option<Duration>,
    forced: bool,
    runs: PhaseRuns,
    /// Cut power as soon as new firmware has booted (a first boot with no flash op to cut at);
    /// the inner value is the cut's `off_for`.
    boot_cut: Option<Option<Duration>>,
    /// The phase of the last logged op, and whether its run is still open.
    open_run: Option<Phase>,
    last_ota: Option<OtaStatus>,
    /// Transfers begun and boots completed since set-up (waits for the next one).
    transfers: u32,
    boots: u32,
    transfers_at_boot: u32,
    /// The last connection: resumed (true) or a full handshake.
    last_connect: Option<bool>,
}

pub struct EmulatorTarget {
    caps: BTreeSet<Capability>,
    bed: Option<Testbed>,
    board: Option<Board>,
    sizes: ModuleSizes,
    seen_trace: usize,
    seen_cloud_events: usize,
    queue: Vec<TraceEntry>,
    seed: u64,
    /// The device's product, when the scenario has `[cloud.product]`.
    product: Option<u32>,
    /// Images of each uploaded product firmware version (what a release or lock installs).
    product_images: BTreeMap<u16, BTreeMap<RegionKind, Vec<u8>>>,
    /// The selected device (actions and observations go to it).
    d: Dut,
    /// The other devices of a scenario with several.
    others: Vec<Dut>,
    /// The scenario has several devices: trace entries name theirs.
    several: bool,
    /// A Device OS behaviour broken on purpose in every device (mutation tests only).
    mutation: Option<emulator::os::Mutation>,
    /// What the network's hooks share with the target: faults to trace, drops armed by kind.
    link: std::rc::Rc<std::cell::RefCell<LinkWatch>>,
}

/// Shared by the simulated network's trace hook and filter and the target.
#[derive(Default)]
struct LinkWatch {
    /// Datagrams dropped, duplicated or delayed, not yet in the trace.
    faults: Vec<DatagramFault>,
    /// `link.drop_next` steps still waiting for their messages.
    armed: Vec<ArmedDrop>,
    /// The messages of the datagrams sent, by sender and first record.
    in_flight: crate::message_kind::InFlight,
}

/// One `link.drop_next`: drop the next `remaining` datagrams on `links` (sender, receiver)
/// that carry a message of `kind`.
struct ArmedDrop {
    kind: MessageKind,
    links: Vec<(crate::net::sim::NodeId, crate::net::sim::NodeId)>,
    remaining: u32,
}

/// A datagram the simulated network dropped, duplicated or delayed (from its trace hook).
struct DatagramFault {
    at: Duration,
    src: crate::net::sim::NodeId,
    dst: Option<crate::net::sim::NodeId>,
    fate: crate::net::sim::Fate,
    /// The CoAP messages it carried, when the session's keys opened it.
    found: Vec<crate::message_kind::FoundMessage>,
    /// Consecutive datagrams with the same fate and kinds between the same nodes, folded into
    /// one entry: how many, their bytes, when the last one was, its messages.
    count: u64,
    bytes: usize,
    until: Duration,
    last_found: Vec<crate::message_kind::FoundMessage>,
}

/// The kinds of some messages (chunk indices left out): what folds two faults into one line.
fn kinds(found: &[crate::message_kind::FoundMessage]) -> Vec<MessageKind> {
    found.iter().map(|m| m.kind).collect()
}

impl DatagramFault {
    /// "datagram to the cloud dropped (loss), 61 bytes: Event".
    fn describe(&self, cloud: crate::net::sim::NodeId) -> String {
        use crate::net::sim::{DropReason, Fate};
        let way = if self.src == cloud {
            "to the device"
        } else {
            "to the cloud"
        };
        let what = match self.fate {
            Fate::Duplicated => "duplicated".to_string(),
            Fate::Delayed(by) => format!("delayed {} (reorder)", format_duration(by)),
            Fate::Dropped(r) => format!(
                "dropped ({})",
                match r {
                    DropReason::Loss => "loss",
                    DropReason::DropNext => "link.drop",
                    DropReason::Cut => "partition",
                    DropReason::NoRoute => "no one at the address",
                    DropReason::Muted => "powered off or asleep",
                    // The target's only filter: `link.drop_next`.
                    DropReason::Filter => "link.drop_next",
                    DropReason::QueueFull => "queue full",
                }
            ),
            Fate::Sent | Fate::Delivered => "passed".to_string(),
        };
        let mut text = if self.count == 1 {
            format!("datagram {way} {what}, {} bytes", self.bytes)
        } else {
            format!(
                "{} datagrams {way} {what} until {}, {} bytes",
                self.count,
                super::trace::format_time(self.until).trim(),
                self.bytes
            )
        };
        if !self.found.is_empty() {
            text.push_str(": ");
            text.push_str(&crate::message_kind::describe(&self.found));
            if self.count > 1 && self.last_found != self.found {
                text.push_str(" .. ");
                text.push_str(&crate::message_kind::describe(&self.last_found));
            }
        }
        text
    }
}

impl Default for EmulatorTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl EmulatorTarget {
    pub fn new() -> Self {
        EmulatorTarget {
            caps: Capability::ALL.into_iter().collect(),
            bed: None,
            board: None,
            sizes: ModuleSizes {
                user_part: 24 * 1024,
                ..ModuleSizes::default()
            },
            seen_trace: 0,
            seen_cloud_events: 0,
            queue: Vec::new(),
            seed: 0,
            product: None,
            product_images: BTreeMap::new(),
            d: Dut::default(),
            others: Vec::new(),
            several: false,
            mutation: None,
            link: Default::default(),
        }
    }

    /// A target whose devices have `mutation`: one Device OS behaviour broken on purpose, to
    /// prove the fixtures covering it fail (`harness/tests/mutations.rs`).
    pub fn with_mutation(mutation: emulator::os::Mutation) -> Self {
        EmulatorTarget {
            mutation: Some(mutation),
            ..Self::new()
        }
    }

    fn bed(&mut self) -> Result<&mut Testbed, TargetError> {
        self.bed
            .as_mut()
            .ok_or_else(|| TargetError::Step("the target is not set up".into()))
    }

    fn device_id(&self) -> [u8; 12] {
        self.bed
            .as_ref()
            .and_then(|b| b.device_id(self.d.dev))
            .unwrap_or_default()
    }

    /// Moves new testbed lines and events into the queue; tracks the OTA state, the phase runs
    /// of the flash log, held updates and the first-boot cut.
    fn collect(&mut self) -> Result<(), TargetError> {
        self.collect_shared()?;
        let start = self.queue.len();
        let result = self.collect_device();
        self.tag_from(start);
        result?;
        for i in 0..self.others.len() {
            std::mem::swap(&mut self.d, &mut self.others[i]);
            let start = self.queue.len();
            let result = self.collect_device();
            self.tag_from(start);
            std::mem::swap(&mut self.d, &mut self.others[i]);
            result?;
        }
        // Datagrams no device can be named for (sent to an address no one holds any more).
        if let Some(bed) = self.bed.as_ref() {
            let cloud = bed.cloud_node();
            for f in self.link.borrow_mut().faults.drain(..) {
                let what = f.describe(cloud);
                self.queue
                    .push(TraceEntry::new(f.at, TraceKind::Fault { what }));
            }
        }
        Ok(())
    }

    /// Tags the queued entries from `start` on with the selected device's name (several
    /// devices only).
    fn tag_from(&mut self, start: usize) {
        if !self.several {
            return;
        }
        for e in self.queue.iter_mut().skip(start) {
            if e.device.is_none() {
                e.device = Some(self.d.name.clone());
            }
        }
    }

    /// The name of the device with this handle or id (several devices only).
    fn name_of(&self, handle: Option<DeviceHandle>, id: Option<[u8; 12]>) -> Option<String> {
        if !self.several {
            return None;
        }
        let bed = self.bed.as_ref()?;
        std::iter::once(&self.d)
            .chain(self.others.iter())
            .find(|d| Some(d.dev) == handle || (id.is_some() && bed.device_id(d.dev) == id))
            .map(|d| d.name.clone())
    }

    /// Testbed lines and the cloud's stream events, for every device.
    fn collect_shared(&mut self) -> Result<(), TargetError> {
        let ids: Vec<[u8; 12]> = match self.bed.as_ref() {
            Some(bed) => std::iter::once(&self.d)
                .chain(self.others.iter())
                .filter_map(|d| bed.device_id(d.dev))
                .collect(),
            None => return Ok(()),
        };
        let Some(bed) = self.bed.as_mut() else {
            return Ok(());
        };
        let lines: Vec<_> = bed.trace()[self.seen_trace..].to_vec();
        self.seen_trace = bed.trace().len();
        // Stream events from the cloud's record (device- and cloud-published).
        let cloud: Vec<_> = bed.cloud_events()[self.seen_cloud_events..].to_vec();
        self.seen_cloud_events = bed.cloud_events().len();
        for line in lines {
            // Stream events become events, the device's OTA milestones OTA entries (below).
            use crate::testbed::TracedEvent;
            use emulator::os::{FirmwareUpdateEvent, SystemEvent};
            if matches!(
                line.event,
                TracedEvent::Cloud(CloudEvent::Stream(_))
                    | TracedEvent::Device(
                        DeviceEvent::OtaProgress { .. }
                            | DeviceEvent::OtaStarted { .. }
                            | DeviceEvent::OtaFailed { .. }
                            | DeviceEvent::SystemEvent(SystemEvent::FirmwareUpdate(
                                FirmwareUpdateEvent::Progress
                            ))
                    )
            ) {
                continue;
            }
            let (who, device) = match line.source {
                crate::testbed::Source::Cloud => ("cloud", None),
                crate::testbed::Source::Device(h) => {
                    ("dev", self.name_of(Some(DeviceHandle(h)), None))
                }
            };
            self.queue.push(
                TraceEntry::new(
                    line.at,
                    TraceKind::Note {
                        text: format!("{who}: {}", line.text),
                    },
                )
                .on(device.as_deref()),
            );
        }
        for (at, event) in cloud {
            if let CloudEvent::Stream(e) = event {
                if !ids.iter().any(|i| e.device_id == *i) {
                    continue;
                }
                let source = match e.publisher {
                    Publisher::Device => EventSource::Device,
                    Publisher::Cloud => EventSource::Cloud,
                };
                let device = self.name_of(None, Some(e.device_id.0));
                self.queue.push(
                    TraceEntry::new(
                        at,
                        TraceKind::Event {
                            source,
                            name: e.name,
                            data: e.data,
                        },
                    )
                    .on(device.as_deref()),
                );
            }
        }
        Ok(())
    }

    /// The selected device's events, OTA state, phase runs of the flash log, first-boot cut and
    /// power coming back.
    fn collect_device(&mut self) -> Result<(), TargetError> {
        let dev = self.d.dev;
        let Some(bed) = self.bed.as_mut() else {
            return Ok(());
        };
        // This device's dropped or duplicated datagrams.
        if let Some(node) = bed.device_node(dev) {
            let cloud = bed.cloud_node();
            let mut link = self.link.borrow_mut();
            let faults = &mut link.faults;
            let mut i = 0;
            while i < faults.len() {
                if faults[i].src == node || faults[i].dst == Some(node) {
                    let f = faults.remove(i);
                    self.queue.push(TraceEntry::new(
                        f.at,
                        TraceKind::Fault {
                            what: f.describe(cloud),
                        },
                    ));
                } else {
                    i += 1;
                }
            }
        }
        let dev_events: Vec<_> = bed.device_events(dev)[self.d.seen_dev_events..].to_vec();
        self.d.seen_dev_events = bed.device_events(dev).len();
        let mut first_boots = 0;
        for (at, event) in &dev_events {
            match event {
                DeviceEvent::OtaStarted {
                    file_size,
                    resume_offset,
                } => {
                    self.queue.push(ota_entry(
                        *at,
                        OtaState::InProgress,
                        *resume_offset as u64,
                        *file_size as u64,
                        if *resume_offset > 0 {
                            format!("started, resuming at {resume_offset}")
                        } else {
                            "started".into()
                        },
                    ));
                    self.d.transfers += 1;
                    self.d.last_ota = Some(OtaStatus {
                        state: OtaState::InProgress,
                        received: *resume_offset as u64,
                        total: *file_size as u64,
                        resumed_from: (*resume_offset > 0).then_some(*resume_offset as u64),
                        error: None,
                        started: self.d.transfers,
                    });
                }
                DeviceEvent::OtaProgress {
                    received,
                    file_size,
                } => self.queue.push(ota_entry(
                    *at,
                    OtaState::InProgress,
                    *received as u64,
                    *file_size as u64,
                    String::new(),
                )),
                DeviceEvent::OtaFailed { code, message } => match &mut self.d.last_ota {
                    Some(o) if o.state == OtaState::InProgress => {
                        o.state = OtaState::Failed;
                        o.error = Some(*code);
                        self.queue.push(ota_entry(
                            *at,
                            OtaState::Failed,
                            o.received,
                            o.total,
                            format!("error {code}: {message}"),
                        ));
                    }
                    // No transfer runs: the device refused an UpdateStart (-1380 updates
                    // disabled, -1360 wrong platform ...). That refusal is the last OTA word.
                    _ => {
                        self.d.last_ota = Some(OtaStatus {
                            state: OtaState::Failed,
                            received: 0,
                            total: 0,
                            resumed_from: None,
                            error: Some(*code),
                            started: self.d.transfers,
                        });
                        self.queue.push(ota_entry(
                            *at,
                            OtaState::Failed,
                            0,
                            0,
                            format!("refused: error {code}: {message}"),
                        ));
                    }
                },
                DeviceEvent::SystemEvent(emulator::os::SystemEvent::FirmwareUpdate(
                    emulator::os::FirmwareUpdateEvent::Complete,
                )) => {
                    if let Some(o) = &mut self.d.last_ota {
                        o.state = OtaState::Complete;
                        o.received = o.total;
                        self.queue.push(ota_entry(
                            *at,
                            OtaState::Complete,
                            o.total,
                            o.total,
                            "committed".into(),
                        ));
                    }
                }
                DeviceEvent::SystemEvent(emulator::os::SystemEvent::ResetPending) => {
                    if let Some(o) = &mut self.d.last_ota {
                        o.state = OtaState::Complete;
                        o.received = o.total;
                    }
                }
                DeviceEvent::Connected { resumed } => self.d.last_connect = Some(*resumed),
                DeviceEvent::PoweredOff => {
                    self.queue
                        .push(TraceEntry::new(*at, TraceKind::Power { on: false }));
                }
                DeviceEvent::Booted {
                    applied,
                    factory_restored,
                    ..
                } => {
                    self.d.boots += 1;
                    self.d.transfers_at_boot = self.d.transfers;
                    if !applied.is_empty() || *factory_restored {
                        first_boots += 1;
                    }
                }
                _ => {}
            }
        }
        // Live progress of a running transfer.
        let status = bed.status(dev).map_err(err)?;
        if let Some(o) = &mut self.d.last_ota {
            match status.ota {
                // A failure the device reported stays the verdict while its receiver winds
                // down (it still shows the transfer until the error response is ACKed).
                Some(_) if o.state == OtaState::Failed => {}
                Some(p) => {
                    o.received = p.contiguous_bytes as u64;
                    o.state = if p.validated {
                        OtaState::Complete
                    } else {
                        OtaState::InProgress
                    };
                }
                // The transfer stopped without a commit or failure: cancelled (sleep, power),
                // even with every byte received (the commit is what completes it).
                None if o.state == OtaState::InProgress => {
                    o.state = OtaState::Cancelled;
                    self.queue.push(ota_entry(
                        bed.now(),
                        OtaState::Cancelled,
                        o.received,
                        o.total,
                        "stopped without a commit".into(),
                    ));
                }
                None => {}
            }
        }
        // Phase runs, from the op log: consecutive ops with the same activity form a run.
        let log = bed
            .with_device(dev, |os, _| os.device_mut().flash_mut().take_log())
            .map_err(err)?;
        for op in log {
            let phase = phase_of(op.activity);
            match (phase, self.d.open_run) {
                (Some(p), Some(open)) if p == open => {
                    if let Some(run) = self.d.runs.get_mut(&p) {
                        run.1 = op.seq - run.0 + 1;
                    }
                }
                (Some(p), _) => {
                    self.d.runs.insert(p, (op.seq, 1));
                }
                (None, _) => {}
            }
            self.d.open_run = phase;
        }
        // A first boot that wrote nothing still is a point to cut at: a zero-length run right
        // after its apply.
        if first_boots > 0 {
            if let Some(&(first, len)) = self.d.runs.get(&Phase::Apply) {
                let at = first + len;
                if self
                    .d
                    .runs
                    .get(&Phase::FirstBoot)
                    .is_none_or(|(f, _)| *f < at)
                {
                    self.d.runs.insert(Phase::FirstBoot, (at, 0));
                }
            }
            if let Some(off_for) = self.d.boot_cut.take() {
                bed.power_cut(dev).map_err(err)?;
                let now = bed.now();
                self.queue.push(TraceEntry::new(
                    now,
                    TraceKind::Fault {
                        what: "power cut as the new firmware booted (first boot)".into(),
                    },
                ));
                self.d.armed_off_for = off_for;
            }
        }
        // Power back after a fired cut.
        if !status.powered {
            if let Some(off) = self.d.armed_off_for.take() {
                self.d.power_back_at = Some(bed.now() + off);
            }
        }
        Ok(())
    }

    /// Does one action on the selected device (or the cloud, or the link).
    fn apply_to_selected(&mut self, action: &Action) -> Result<(), TargetError> {
        let dev = self.d.dev;
        let now = self.now();
        match action {
            Action::CloudFlash(spec) => {
                let board = self.board.clone().ok_or_else(|| err("not set up"))?;
                let file = build_file(&board, spec, &self.d.current, self.sizes, self.d.dev_seed)
                    .map_err(err)?;
                let images = self.images(spec, &file);
                self.d.offer(images);
                self.bed()?.flash(dev, file).map_err(err)?;
            }
            Action::CloudForceUpdates { forced } => {
                let id = self.device_id();
                self.d.forced = *forced;
                self.bed()?.cloud_mut().set_updates_forced(now, id, *forced);
            }
            Action::Product(p) => self.product_action(now, p)?,
            Action::PowerCut(cut) => {
                let what = match cut.at {
                    CutPoint::Now => {
                        self.bed()?.power_cut(dev).map_err(err)?;
                        if let Some(off) = cut.off_for {
                            self.d.power_back_at = Some(now + off);
                        }
                        "power cut now".to_string()
                    }
                    CutPoint::FlashOp(n) => {
                        let mode = cut.mode;
                        let at = self
                            .bed()?
                            .with_device(dev, |os, _| {
                                let at = os.device().flash().op_count() + n;
                                os.device_mut().schedule_cut(at, mode);
                                at
                            })
                            .map_err(err)?;
                        self.d.armed_off_for = cut.off_for;
                        format!("power cut armed at flash op {at} ({})", cut_mode_str(mode))
                    }
                    CutPoint::Chunk(k) => {
                        let mode = cut.mode;
                        self.bed()?
                            .with_device(dev, |os, _| os.cut_power_at_chunk(k, mode))
                            .map_err(err)?;
                        self.d.armed_off_for = cut.off_for;
                        format!(
                            "power cut armed at OTA chunk {k} ({})",
                            cut_mode_str(cut.mode)
                        )
                    }
                    CutPoint::Phase {
                        phase: Phase::FirstBoot,
                        op: 0,
                    } => {
                        // Op 0 of a first boot is the boot itself (Device OS may write
                        // nothing before it connects): power goes as soon as new firmware
                        // has booted. The mode does not apply.
                        self.d.boot_cut = Some(cut.off_for);
                        "power cut armed at the next first boot of new firmware, as it boots"
                            .to_string()
                    }
                    CutPoint::Phase { phase, op } => {
                        let activity = activity_of(phase);
                        // First boot: op 0 is the boot itself (above), op N its Nth write.
                        let skip = if phase == Phase::FirstBoot {
                            op - 1
                        } else {
                            op
                        };
                        let mode = cut.mode;
                        self.bed()?
                            .with_device(dev, |os, _| {
                                os.device_mut()
                                    .flash_mut()
                                    .schedule_activity_cut(ActivityCut {
                                        activity,
                                        skip,
                                        mode,
                                    })
                            })
                            .map_err(err)?;
                        self.d.armed_off_for = cut.off_for;
                        format!(
                            "power cut armed at {} op {op} ({})",
                            phase.as_str(),
                            cut_mode_str(mode)
                        )
                    }
                };
                self.queue
                    .push(TraceEntry::new(now, TraceKind::Fault { what }));
            }
            Action::FlashFail(x) => {
                let activity = match x.phase {
                    FailPhase::Phase(phase) => activity_of(phase),
                    FailPhase::AssetStore => Activity::AssetStore,
                    FailPhase::BootloaderCopy => Activity::BootloaderCopy,
                };
                let fault = emulator::flash::IoFault {
                    activity,
                    kind: x.kind,
                    skip: x.op,
                };
                self.bed()?
                    .with_device(dev, |os, _| {
                        os.device_mut().flash_mut().schedule_io_fault(fault)
                    })
                    .map_err(err)?;
                let kind = x.kind.map_or("operation", flash_op_kind_str);
                self.queue.push(TraceEntry::new(
                    now,
                    TraceKind::Fault {
                        what: format!(
                            "flash I/O error armed at {} {kind} {}",
                            x.phase.as_str(),
                            x.op
                        ),
                    },
                ));
            }
            Action::PowerOn => {
                self.d.power_back_at = None;
                self.bed()?.power_on(dev).map_err(err)?;
                self.queue
                    .push(TraceEntry::new(now, TraceKind::Power { on: true }));
            }
            Action::HardwareReset(r) => {
                let reason = match r {
                    HardwareReset::Pin => emulator::os::profile::reset_reason::PIN_RESET,
                    HardwareReset::Watchdog => emulator::os::profile::reset_reason::WATCHDOG,
                };
                self.bed()?
                    .with_device(dev, |os, now| os.hardware_reset(now, reason))
                    .map_err(err)?;
                self.queue.push(TraceEntry::new(
                    now,
                    TraceKind::Fault {
                        what: format!("{} reset", r.as_str()),
                    },
                ));
            }
            Action::App(a) => {
                let a = *a;
                let refused = self
                    .bed()?
                    .with_device(dev, |os, now| {
                        match a {
                            AppAction::DisableUpdates => os.disable_updates(now),
                            AppAction::EnableUpdates => os.enable_updates(now),
                            AppAction::DisableReset => os.disable_reset(now),
                            AppAction::EnableReset => os.enable_reset(now),
                            AppAction::Reset { .. } => os.system_reset(now),
                            AppAction::Sleep(config) => return os.sleep(now, config),
                            AppAction::Wake => os.wake(now),
                            AppAction::Connect => os.particle_connect(now),
                            AppAction::Disconnect => os.particle_disconnect(now),
                        }
                        Ok(())
                    })
                    .map_err(err)?;
                if let Err(why) = refused {
                    return Err(TargetError::Step(format!(
                        "Device OS refuses this sleep (System.sleep returns \
                         SYSTEM_ERROR_NOT_SUPPORTED): {why}"
                    )));
                }
            }
            Action::Link(l) => {
                let what = match *l {
                    LinkAction::Faults {
                        loss,
                        duplicate,
                        reorder,
                        latency,
                        jitter,
                        bandwidth,
                        direction,
                    } => {
                        // The testbed's clean link has 1 ms latency (zero lets two nodes
                        // answer each other forever at one instant).
                        let faults = crate::net::sim::LinkFaults {
                            latency: latency.max(Duration::from_millis(1)),
                            jitter,
                            loss,
                            duplicate,
                            reorder,
                            reorder_delay: Duration::from_millis(80),
                            bandwidth,
                            queue_limit: Duration::ZERO,
                        };
                        let bed = self.bed()?;
                        let (c, d) = (bed.cloud_node(), bed.device_node(dev));
                        match (direction, d) {
                            (Direction::Both, _) => bed.net.set_faults(faults),
                            (Direction::ToDevice, Some(d)) => bed.net.set_link_faults(c, d, faults),
                            (Direction::ToCloud, Some(d)) => bed.net.set_link_faults(d, c, faults),
                            (_, None) => return Err(err("the device has no network node")),
                        }
                        let mut what =
                            format!("link loss {loss} duplicate {duplicate} reorder {reorder}");
                        if direction != Direction::Both {
                            what.push_str(&format!(" ({})", direction.as_str()));
                        }
                        if !latency.is_zero() || !jitter.is_zero() {
                            what.push_str(&format!(
                                " latency {} jitter {}",
                                format_duration(latency),
                                format_duration(jitter)
                            ));
                        }
                        if bandwidth > 0 {
                            what.push_str(&format!(
                                " bandwidth {}",
                                super::units::format_rate(bandwidth)
                            ));
                        }
                        what
                    }
                    LinkAction::Drop { next, direction } => {
                        let bed = self.bed()?;
                        let (c, d) = (bed.cloud_node(), bed.device_node(dev));
                        if let Some(d) = d {
                            if direction != Direction::ToCloud {
                                bed.net.drop_next(c, d, next as u64);
                            }
                            if direction != Direction::ToDevice {
                                bed.net.drop_next(d, c, next as u64);
                            }
                        }
                        match direction {
                            Direction::Both => format!("drop the next {next} datagrams"),
                            Direction::ToDevice => {
                                format!("drop the next {next} datagrams to the device")
                            }
                            Direction::ToCloud => {
                                format!("drop the next {next} datagrams to the cloud")
                            }
                        }
                    }
                    LinkAction::DropNext {
                        kind,
                        count,
                        direction,
                    } => {
                        let bed = self.bed()?;
                        let c = bed.cloud_node();
                        let d = bed
                            .device_node(dev)
                            .ok_or_else(|| err("the device has no network node"))?;
                        let mut links = Vec::new();
                        if direction != Direction::ToCloud {
                            links.push((c, d));
                        }
                        if direction != Direction::ToDevice {
                            links.push((d, c));
                        }
                        self.link.borrow_mut().armed.push(ArmedDrop {
                            kind,
                            links,
                            remaining: count,
                        });
                        let what = if count == 1 {
                            format!("drop the next {kind}")
                        } else {
                            format!("drop the next {count} datagrams carrying {kind}")
                        };
                        match direction {
                            Direction::Both => what,
                            Direction::ToDevice => format!("{what} to the device"),
                            Direction::ToCloud => format!("{what} to the cloud"),
                        }
                    }
                    LinkAction::Partition { duration } => {
                        self.bed()?.net.partition(duration);
                        format!("partition for {}", format_duration(duration))
                    }
                };
                self.queue
                    .push(TraceEntry::new(now, TraceKind::Fault { what }));
            }
        }
        Ok(())
    }

    fn change_device(
        &mut self,
        now: Duration,
        product: u32,
        id: DeviceId,
        change: &DeviceChange,
        flash_now: bool,
    ) -> Result<(), TargetError> {
        self.bed()?
            .cloud_mut()
            .change_product_device(now, product, id, change, flash_now)
            .map_err(err)
    }

    fn product_action(&mut self, now: Duration, action: &ProductAction) -> Result<(), TargetError> {
        let product = self.product.ok_or_else(|| {
            err("the scenario has no [cloud.product]: the device is not a product device")
        })?;
        let id = DeviceId(self.device_id());
        match action {
            ProductAction::Upload(spec) => {
                let board = self.board.clone().ok_or_else(|| err("not set up"))?;
                let file = build_file(&board, spec, &self.d.current, self.sizes, self.d.dev_seed)
                    .map_err(err)?;
                let version = spec.app.unwrap_or_default();
                let images = self.images(spec, &file);
                self.product_images.insert(version, images);
                self.bed()?
                    .cloud_mut()
                    .upload_firmware(now, product, version, "", "", file)
                    .map_err(err)?;
            }
            ProductAction::Release {
                version,
                product_default,
                groups,
                intelligent,
            } => {
                if let Some(images) = self.product_images.get(version) {
                    let images = images.clone();
                    self.d.offer(images);
                }
                let release = Release {
                    product_default: *product_default,
                    groups: groups.iter().cloned().collect(),
                    intelligent: *intelligent,
                };
                self.bed()?
                    .cloud_mut()
                    .release_firmware(now, product, *version, &release)
                    .map_err(err)?;
            }
            ProductAction::Lock { version, flash_now } => {
                if let Some(images) = self.product_images.get(version) {
                    let images = images.clone();
                    self.d.offer(images);
                }
                let change = DeviceChange {
                    locked: Some(Some(*version)),
                    ..DeviceChange::default()
                };
                self.change_device(now, product, id, &change, *flash_now)?;
            }
            ProductAction::Unlock => {
                let change = DeviceChange {
                    locked: Some(None),
                    ..DeviceChange::default()
                };
                self.change_device(now, product, id, &change, false)?;
            }
            ProductAction::Groups(groups) => {
                let change = DeviceChange {
                    groups: Some(groups.iter().cloned().collect()),
                    ..DeviceChange::default()
                };
                self.change_device(now, product, id, &change, false)?;
            }
            ProductAction::Settings {
                development,
                groups,
                updates_forced,
            } => {
                let change = DeviceChange {
                    development: *development,
                    groups: groups.as_ref().map(|g| g.iter().cloned().collect()),
                    updates_forced: *updates_forced,
                    ..DeviceChange::default()
                };
                self.change_device(now, product, id, &change, false)?;
            }
            ProductAction::Development(development) => {
                let change = DeviceChange {
                    development: Some(*development),
                    ..DeviceChange::default()
                };
                self.change_device(now, product, id, &change, false)?;
            }
        }
        Ok(())
    }

    /// The images a complete install of `spec` leaves in the module regions: the modules
    /// `build_file` sends, as the same function builds them (none for a file that cannot
    /// install: wrong platform, corrupt; compressed modules are not compared). `file` is what
    /// `build_file` made of `spec`: a combined file's and a bundle's modules are read from it.
    fn images(&self, spec: &FirmwareSpec, file: &[u8]) -> BTreeMap<RegionKind, Vec<u8>> {
        let Some(board) = &self.board else {
            return BTreeMap::new();
        };
        if spec.platform.is_some() || spec.corrupt.is_some() || spec.compressed {
            return BTreeMap::new();
        }
        let Ok(modules) = build_modules(board, spec, &self.d.current, self.sizes, self.d.dev_seed)
        else {
            return BTreeMap::new();
        };
        if !spec.assets.is_empty() {
            // A bundle's application travels with its ASSET_DEPENDENCY extensions: that, not
            // the plain build, is what the device installs.
            let Ok(bundle) = protocol::bundle::Bundle::unpack(file) else {
                return BTreeMap::new();
            };
            return modules
                .into_iter()
                .map(|(kind, m)| match kind {
                    RegionKind::UserPart => (kind, bundle.app.clone()),
                    _ => (kind, m),
                })
                .collect();
        }
        if !spec.combined {
            return modules.into_iter().collect();
        }
        // A combined file's modules are installed as the file carries them: every one but the
        // last keeps its COMBINED flag (and the SHA-256 / CRC-32 made with it).
        let Ok(ranges) = protocol::module::split_combined(file) else {
            return BTreeMap::new();
        };
        modules
            .into_iter()
            .zip(ranges)
            .map(|((kind, _), range)| (kind, file[range].to_vec()))
            .collect()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && hay.len() >= needle.len()
        && (hay.starts_with(needle)
            || hay.ends_with(needle)
            || hay.windows(needle.len()).any(|w| w == needle))
}

impl Dut {
    /// A new update is offered: the one before it becomes part of the run's history.
    fn offer(&mut self, images: BTreeMap<RegionKind, Vec<u8>>) {
        for (kind, image) in std::mem::replace(&mut self.new_images, images) {
            let earlier = self.earlier_images.entry(kind).or_default();
            if !earlier.contains(&image) {
                earlier.push(image);
            }
        }
    }
}

impl Target for EmulatorTarget {
    fn name(&self) -> &str {
        "emulator"
    }

    fn capabilities(&self) -> &BTreeSet<Capability> {
        &self.caps
    }

    fn setup(&mut self, setup: &Setup, seed: u64) -> Result<(), TargetError> {
        self.seed = seed;
        let board = Board::builtin(&setup.board).map_err(err)?;
        let mut bed = Testbed::new(seed).map_err(err)?;
        // Every datagram a fault dropped, duplicated or delayed goes into the trace, with the
        // CoAP messages it carried; `link.drop_next` drops by those messages.
        let link = self.link.clone();
        *link.borrow_mut() = LinkWatch::default();
        let watch = bed.watch_messages();
        let cloud = bed.cloud_node();
        bed.net.set_trace(move |e| {
            use crate::message_kind::InFlight;
            use crate::net::sim::Fate;
            let mut link = link.borrow_mut();
            let key = InFlight::key(e.src.0, e.data);
            if e.fate == Fate::Sent {
                let found = match watch.lock() {
                    Ok(mut w) => w.classify(e.data, e.src == cloud),
                    Err(_) => Vec::new(),
                };
                if let Some(key) = key {
                    link.in_flight.insert(key, found);
                }
                return;
            }
            if e.fate == Fate::Delivered {
                return;
            }
            let found = key
                .map(|k| link.in_flight.get(k).to_vec())
                .unwrap_or_default();
            if let Some(last) = link.faults.last_mut() {
                if last.src == e.src
                    && last.dst == e.dst
                    && last.fate == e.fate
                    && kinds(&last.found) == kinds(&found)
                {
                    last.count += 1;
                    last.bytes += e.data.len();
                    last.until = e.at;
                    last.last_found = found;
                    return;
                }
            }
            link.faults.push(DatagramFault {
                at: e.at,
                src: e.src,
                dst: e.dst,
                fate: e.fate,
                last_found: found.clone(),
                found,
                count: 1,
                bytes: e.data.len(),
                until: e.at,
            });
        });
        let link = self.link.clone();
        bed.net.set_filter(move |e| {
            let mut link = link.borrow_mut();
            if link.armed.is_empty() {
                return true;
            }
            let Some(dst) = e.dst else { return true };
            let found = crate::message_kind::InFlight::key(e.src.0, e.data)
                .map(|k| link.in_flight.get(k).to_vec())
                .unwrap_or_default();
            let hit = link.armed.iter().position(|a| {
                a.links.contains(&(e.src, dst)) && found.iter().any(|m| a.kind.matches(m.kind))
            });
            match hit {
                Some(i) => {
                    link.armed[i].remaining -= 1;
                    if link.armed[i].remaining == 0 {
                        link.armed.remove(i);
                    }
                    false
                }
                None => true,
            }
        });
        self.board = Some(board.clone());
        bed.cloud_mut()
            .set_interrupted(setup.cloud.interrupted_transfer);
        let mut duts = Vec::new();
        for (i, cd) in setup.cloud.devices.iter().enumerate() {
            let mut current = setup.firmware;
            if let Some(app) = cd.app {
                current.app = app;
            }
            let mut spec = DeviceSpec::new(board.clone(), current.app);
            spec.versions = current.versions();
            let sizes = ModuleSizes {
                user_part: current.app_size.unwrap_or(self.sizes.user_part),
                ..self.sizes
            };
            spec.sizes = sizes;
            spec.app = AppBehaviour {
                updates_enabled_at_boot: cd
                    .updates_enabled
                    .unwrap_or(setup.app.updates_enabled_at_boot),
                ..setup.app
            };
            // Same derivation as Testbed::add_device, to know the images it provisions.
            let dev_seed = seed ^ ((i as u64 + 1) << 32);
            let (_, images) = FirmwareSet::new(&board, sizes, dev_seed)
                .provision(&spec.versions)
                .map_err(err)?;
            let old_images = images
                .into_iter()
                .filter(|(k, _)| {
                    matches!(
                        k,
                        RegionKind::UserPart | RegionKind::SystemPart | RegionKind::Bootloader
                    )
                })
                .collect();
            // The scenario's `[[cloud.device]] id` (a field reproduction keeps the real
            // device's id), else one derived from the seed.
            let id = match cd.id.as_deref() {
                Some(text) => {
                    let bytes = hex::decode(text).map_err(err)?;
                    let id: [u8; 12] = bytes
                        .try_into()
                        .map_err(|_| err(format!("device id {text:?} is not 12 bytes")))?;
                    Some(id)
                }
                None => None,
            };
            let dev = bed.add_device_as(&spec, id).map_err(err)?;
            let mutation = self.mutation;
            bed.with_device(dev, |os, _| {
                os.device_mut().flash_mut().enable_log();
                os.set_mutation(mutation);
            })
            .map_err(err)?;
            if cd.updates_forced {
                let id = bed.device_id(dev).unwrap_or_default();
                bed.cloud_mut().set_updates_forced(Duration::ZERO, id, true);
            }
            duts.push(Dut {
                name: cd.name.clone(),
                dev,
                dev_seed,
                current,
                old_images,
                forced: cd.updates_forced,
                ..Dut::default()
            });
        }
        if duts.is_empty() {
            return Err(err("the scenario declares no device"));
        }
        self.several = duts.len() > 1;
        // Device OS modules the cloud may heal with.
        for dos in &setup.cloud.device_os {
            let modules = device_os_release_modules(
                &board,
                *dos,
                &duts[0].current,
                self.sizes,
                duts[0].dev_seed,
            )
            .map_err(err)?;
            for (kind, file) in modules {
                // The healer may install it on any device: a legitimate image of its region.
                // So may a minor bump, sent combined with the app (reference 2.6): then the
                // module is installed as that file carries it, with its COMBINED flag (and the
                // SHA-256 / CRC-32 made with it).
                let combined = protocol::module::combine(&[file.as_slice(), file.as_slice()])
                    .ok()
                    .and_then(|c| {
                        let first = protocol::module::split_combined(&c)
                            .ok()?
                            .into_iter()
                            .next()?;
                        c.get(first).map(<[u8]>::to_vec)
                    });
                for dut in &mut duts {
                    let earlier = dut.earlier_images.entry(kind).or_default();
                    for image in std::iter::once(&file).chain(combined.as_ref()) {
                        if !earlier.contains(image) {
                            earlier.push(image.clone());
                        }
                    }
                }
                bed.cloud_mut().add_device_os_module(file).map_err(err)?;
            }
        }
        if let Some(product) = &setup.cloud.product {
            bed.cloud_mut()
                .create_product(product.id, "scenario product", board.platform_id)
                .map_err(err)?;
            for (dut, cd) in duts.iter().zip(&setup.cloud.devices) {
                let id = DeviceId(bed.device_id(dut.dev).unwrap_or_default());
                let cloud = bed.cloud_mut();
                cloud
                    .add_product_device(Duration::ZERO, product.id, id)
                    .map_err(err)?;
                let groups = cd.groups.as_ref().unwrap_or(&product.groups);
                let change = DeviceChange {
                    development: Some(cd.development.unwrap_or(product.development)),
                    groups: Some(groups.iter().cloned().collect()),
                    ..DeviceChange::default()
                };
                cloud
                    .change_product_device(Duration::ZERO, product.id, id, &change, false)
                    .map_err(err)?;
            }
            self.product = Some(product.id);
        }
        let mut duts = duts.into_iter();
        self.d = duts.next().unwrap_or_default();
        self.others = duts.collect();
        for dut in std::iter::once(&self.d).chain(self.others.iter()) {
            bed.power_on(dut.dev).map_err(err)?;
            let device = self.several.then(|| dut.name.clone());
            self.queue.push(
                TraceEntry::new(bed.now(), TraceKind::Power { on: true }).on(device.as_deref()),
            );
        }
        self.bed = Some(bed);
        self.collect()
    }

    fn select_device(&mut self, name: &str) -> Result<(), TargetError> {
        if self.d.name == name {
            return Ok(());
        }
        let i = self
            .others
            .iter()
            .position(|d| d.name == name)
            .ok_or_else(|| err(format!("the scenario has no device named `{name}`")))?;
        std::mem::swap(&mut self.d, &mut self.others[i]);
        Ok(())
    }

    fn apply(&mut self, action: &Action) -> Result<(), TargetError> {
        let start = self.queue.len();
        self.apply_to_selected(action)?;
        self.tag_from(start);
        self.collect()
    }

    fn now(&self) -> Duration {
        self.bed.as_ref().map(|b| b.now()).unwrap_or_default()
    }

    fn advance(&mut self, deadline: Duration) -> Result<(), TargetError> {
        let mut deadline = deadline;
        // Power coming back by itself, on whichever device it is due.
        let now = self.now();
        let due = std::iter::once(&self.d)
            .chain(self.others.iter())
            .position(|d| d.power_back_at.is_some_and(|back| back <= now));
        if let Some(i) = due {
            if i > 0 {
                std::mem::swap(&mut self.d, &mut self.others[i - 1]);
            }
            self.d.power_back_at = None;
            let dev = self.d.dev;
            let result = self.bed().and_then(|b| b.power_on(dev).map_err(err));
            let start = self.queue.len();
            self.queue
                .push(TraceEntry::new(now, TraceKind::Power { on: true }));
            self.tag_from(start);
            if i > 0 {
                std::mem::swap(&mut self.d, &mut self.others[i - 1]);
            }
            result?;
            return self.collect();
        }
        for back in std::iter::once(&self.d)
            .chain(self.others.iter())
            .filter_map(|d| d.power_back_at)
        {
            deadline = deadline.min(back);
        }
        let bed = self.bed()?;
        if bed.now() >= deadline {
            return Ok(());
        }
        if !bed.net.step(deadline).map_err(err)? {
            bed.net.run_until(deadline).map_err(err)?;
        }
        bed.run_for(Duration::ZERO).map_err(err)?;
        self.collect()
    }

    fn drain_trace(&mut self) -> Vec<TraceEntry> {
        let mut q = std::mem::take(&mut self.queue);
        q.sort_by_key(|e| e.at);
        q
    }

    fn observe(&mut self) -> Result<Observation, TargetError> {
        let bed = self.bed.as_ref().ok_or_else(|| err("not set up"))?;
        let s = bed.status(self.d.dev).map_err(err)?;
        let running = match (s.versions.system_part, s.versions.product_version) {
            (Some(dos), Some(app)) if s.powered => Some(RunningVersions {
                device_os: DeviceOsVersion(dos),
                app,
                bootloader: s.versions.bootloader.unwrap_or(0),
            }),
            _ => None,
        };
        // Device OS runs in safe mode too (the application does not).
        let system = match s.versions.system_part {
            Some(dos) if s.powered && (running.is_some() || s.safe_mode) => {
                Some(crate::scenario::target::SystemVersions {
                    device_os: DeviceOsVersion(dos),
                    bootloader: s.versions.bootloader.unwrap_or(0),
                })
            }
            _ => None,
        };
        let last_reset = bed
            .device_events(self.d.dev)
            .iter()
            .rev()
            .find_map(|(_, e)| match e {
                DeviceEvent::Booted { reset_reason, .. } => {
                    Some(emulator::os::profile::reset_reason::name(*reset_reason))
                }
                _ => None,
            });
        Ok(Observation {
            powered: Some(s.powered),
            online: Some(s.connected),
            sleeping: Some(s.sleeping),
            running: Some(running),
            safe_mode: Some(s.safe_mode),
            flags: Some(s.flags),
            ota: Some(self.d.last_ota.unwrap_or(OtaStatus {
                state: OtaState::Idle,
                received: 0,
                total: 0,
                resumed_from: None,
                error: None,
                started: 0,
            })),
            last_reset,
            boots: Some(self.d.boots),
            system: Some(system),
            session_resumed: self.d.last_connect,
            transfers_since_boot: Some(self.d.transfers - self.d.transfers_at_boot),
        })
    }

    fn inspect_firmware(&mut self) -> Result<FirmwareIntegrity, TargetError> {
        let board = self.board.clone().ok_or_else(|| err("not set up"))?;
        let bed = self.bed.as_ref().ok_or_else(|| err("not set up"))?;
        let flash = bed.os(self.d.dev).map_err(err)?.device().flash();
        // Every region must hold an image legitimately installed in this run (the initial
        // one, any update offered before the latest, a healing module), or the latest
        // update's; and the latest update's regions are all new or all not (never a mix of a
        // combined update).
        let mut regions: Vec<RegionKind> = self.d.old_images.keys().copied().collect();
        for k in self.d.new_images.keys() {
            if !regions.contains(k) {
                regions.push(*k);
            }
        }
        let mut detail = Vec::new();
        let (mut new_count, mut not_new) = (0usize, Vec::new());
        for kind in regions {
            let region = board
                .region(kind)
                .ok_or_else(|| err(format!("no region {kind}")))?;
            let chip = board.flash_chip(region.chip);
            let bytes = flash
                .read_vec(chip, region.start, (region.end - region.start) as usize)
                .map_err(err)?;
            let latest = self.d.new_images.get(&kind);
            let has_new = latest.is_some_and(|img| contains(&bytes, img));
            let has_earlier = self
                .d
                .old_images
                .get(&kind)
                .is_some_and(|img| contains(&bytes, img))
                || self
                    .d
                    .earlier_images
                    .get(&kind)
                    .is_some_and(|imgs| imgs.iter().any(|img| contains(&bytes, img)));
            if latest.is_some() {
                if has_new {
                    new_count += 1;
                } else {
                    not_new.push(kind);
                }
            }
            if !has_new && !has_earlier {
                detail.push(format!(
                    "{kind} holds none of the images installed in this run (the initial one, an update, a healing module)"
                ));
            }
        }
        Ok(if !detail.is_empty() {
            FirmwareIntegrity::Lost {
                detail: detail.join("; "),
            }
        } else if new_count > 0 && !not_new.is_empty() {
            FirmwareIntegrity::Lost {
                detail: format!(
                    "a mix of old and new modules: the latest update's {} not installed while its other modules are",
                    not_new
                        .iter()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        } else if new_count > 0 {
            FirmwareIntegrity::NewComplete
        } else {
            FirmwareIntegrity::OldIntact
        })
    }

    fn phase_ops(&mut self, phase: Phase) -> Result<Option<u64>, TargetError> {
        self.collect()?;
        // A first boot's cut points are the boot itself (op 0), then its flash operations.
        Ok(self
            .d
            .runs
            .get(&phase)
            .map(|(_, n)| if phase == Phase::FirstBoot { n + 1 } else { *n }))
    }
}
