//! The local Device Cloud, sans-IO: what Particle's cloud does for Gen3 devices, enough to run
//! real OTA updates against emulated and physical devices (reference `particle-protocol.md`
//! sections 1.4-1.11, 2.2-2.7, 3 and the "Cloud simulator must" list of section 8;
//! `particle-cloud-api.md` sections 3 and 4.8 for the event stream).
//!
//! - DTLS for many devices ([`protocol::dtls::Server`]: raw public keys, no Certificate message,
//!   8-byte CIDs, sessions by CID, address migration); a device is identified by the key it
//!   authenticated with, and its Hello must carry the same device id.
//! - One CoAP endpoint per connection ([`protocol::coap::Endpoint`]): every device CON is ACKed
//!   (Hello, describe blocks, events, pings, separate responses), never RST; 1-byte tokens;
//!   Uri-Path first; time requests answered.
//! - The event stream ([`CloudEvent`]): what devices publish, the cloud's `spark/status` and
//!   `spark/flash/status`, session changes and typed OTA progress.
//! - Single-device OTA ([`Cloud::flash`]) with the OTA v3 sender ([`Transfer`]): windowed NON
//!   chunks, retransmission from UpdateAck, resume from the device's offset, UpdateFinish, the ACK
//!   of the 2.04 as commit point, the device's errors with their code and message.
//!
//! Nothing here reads a clock or a socket: time is a [`Duration`] since the caller's epoch
//! (virtual time in tests, `Instant::elapsed()` over real UDP), randomness comes from the seed.
//! Drive it like the DTLS server: `handle_datagram` / `handle_timeout` in, `poll_transmit` /
//! `poll_timeout` / `poll_event` out.
//!
//! # Choices where the reference is silent or UNCONFIRMED
//! All in this one place (timing values are the defaults of [`CloudConfig::new`]):
//! - **Online** is when the first message of a connection arrives (the Hello after a handshake,
//!   anything after a resumption); `spark/status` `online` is published then, `offline` when
//!   the device says Goodbye, goes silent, makes a new handshake, resumes again while online,
//!   leaves a CON of ours unacknowledged, or its association closes.
//! - **Silent** means nothing heard for twice the keepalive of the device's platform: cellular
//!   platforms (Boron 13, B-SoM 23, B5-SoM 25, Tracker 26, Tracker M 28, M-SoM 35) 2 x 23 min,
//!   others 2 x 25 s (reference 1.9, `particle-cloud-api.md` 4.8); [`CloudConfig::idle_timeout`]
//!   overrides it. A silent device keeps its session: it may resume.
//! - **Resumption** is a record of type 253 on a known CID (once per run of 253 records), or any
//!   record on a session the cloud had taken offline. It is treated like a connection (online,
//!   pending event, the describe asked for, then jobs start) but not as a new secure session:
//!   standard releases wait for a full handshake ([`fleet`], UNCONFIRMED).
//! - **`particle/device/updates/pending`** `false` is sent [`CloudConfig::pending_event_delay`]
//!   (1 s) after the connection started, once online, on every connection including
//!   resumptions; it also appears on the stream (as in the captures). If updates are forced for
//!   the device ([`Cloud::set_updates_forced`]) `particle/device/updates/forced` `true` follows
//!   at the same point, because the device's flag does not survive its reboots.
//! - **Events to devices** are CON POST `E` + the name as one Uri-Path option, no token.
//! - **Settled**: queued jobs start once the Hello is known, the pending event went out, none
//!   of our CONs but events is unacknowledged (a lost event ACK holds nothing back, UNCONFIRMED), and the device sent no request for
//!   [`CloudConfig::settle_quiet`] (1 s), or [`CloudConfig::settle_max`] (5 s) after the
//!   connection started at the latest. A job flashed to an online settled device starts at once.
//! - **UpdateStart** always carries File-Sha256 (resumable) and the configured chunk size (512,
//!   clamped to 512..=1136 and a multiple of 4), never Discard-Data or Module-Function.
//!   Every attempt publishes `spark/flash/status` `started `.
//! - **Retransmission** (paced sender, [`CloudConfig::paced_sender`], details in the `transfer` module):
//!   a congestion window bounds the chunks outstanding; a chunk missing with three later ones
//!   held is resent (and halves the window once per window of data), a chunk already resent
//!   goes again only after srtt + 4 rttvar (at least [`CloudConfig::hole_holdoff`], 250 ms);
//!   with no new ack information for the retransmission timeout (at least
//!   [`CloudConfig::silence_timeout`], 1 s, doubled per silence, at most 60 s) while chunks are
//!   outstanding, the first [`CloudConfig::silence_resend`] (2) unacknowledged chunks go
//!   again. UNCONFIRMED how Particle's cloud paces: these are a reliable transport's rules
//!   within Device OS's window and 300 s timeout. With no UpdateAck at all for [`CloudConfig::stall_limit`] (300 s, the device's
//!   own transfer timeout) the job is requeued and, the device still online, started again
//!   with a new UpdateStart (whose CON times out if the device is gone).
//! - **`spark/flash/status` `success `** is published at the commit point (the 2.04 ACKed), as
//!   in the captures where it precedes `spark/status` `offline` ("the transfer was handed to
//!   the device"). That is the stream, Particle's events and timing. The job's own status is
//!   the truth: [`JobStatus::Succeeded`] only when the device's describe, in a connection that
//!   started after the commit, shows the file's modules listed, matching and valid
//!   ([`compare`]). A device back without them (power lost before the commit, the final ACK
//!   lost, a failed apply) gets the file again, up to [`CloudConfig::max_attempts`]
//!   UpdateStarts, then the job fails with "gave up after N attempts" and the last reason.
//!   `failed ` is published when the device reports an error.
//! - **Desired state** ([`policy`], acted on by `reconcile`): whenever something changes
//!   (a message, a timer, a flash, a fleet change, a flag) the cloud compares the device's own
//!   describe with its target (a single-device flash; else the product firmware armed for it,
//!   [`fleet`]; then the Device OS modules its firmware lacks) and sends the first missing
//!   module, holds it while updates are disabled (`particle/device/updates/pending` `true`), or
//!   finishes a job whose firmware already runs (flashing what a device runs needs no
//!   transfer). After a resumption the cloud asks for the describe (GET `d`) before it acts.
//!   A 2.04 that arrives after its UpdateFinish timed out commits the job (the endpoint ACKed
//!   it, so the device commits). A transfer that stalled (no UpdateAck for the stall limit) is
//!   not restarted until the device is heard from again (a sleeping device is not sent an
//!   UpdateStart every 300 s).
//! - **Safe-mode healing**: a device whose describe shows a module failing its dependency
//!   check is sent the Device OS modules it lacks from the cloud's library
//!   ([`Cloud::add_device_os_module`]), one transfer and one reboot each; nothing in the
//!   library that satisfies it fails the job with the reason.
//! - **A new flash supersedes** the device's jobs still queued (offline, or requeued after a
//!   disconnect): they fail with "superseded" and no stream event; a job whose transfer is
//!   running keeps going and the new one waits behind it.
//! - **Disconnect mid-transfer** (Starting, Transferring, Finishing), with the default
//!   [`Interrupted::Retry`], requeues the job; with [`Interrupted::Fail`] it fails with
//!   `failed `. Requeued, the next
//!   attempt is a new UpdateStart and the device says where it resumes. A job requeued while
//!   Finishing succeeds without a new transfer if the device reconnects running its firmware.
//! - **Refusals**: every refused or failed handshake is a [`SessionChange::Refused`] with the
//!   reason, the address, the id its Hello claimed and the key it used. A handshake with the
//!   key of a device that has a session replaces that session only once its Hello carries the
//!   same id (so a client with the key and another id never disturbs it; the replacement is
//!   timed at the Hello, not at the handshake). A Hello whose device id differs from the one
//!   registered for the key closes the association (close_notify) and reports both ids; a device whose Hello lacks flag 0x80
//!   (OTA v3) fails its jobs (the legacy chunked protocol is not supported); an RST from the
//!   device for the message id of one of our recent chunks (it refused the chunk) fails the
//!   job; any other unmatched message is reported and otherwise ignored.
//! - `spark/device/app-hash` is published when a system describe shows a user-part hash other
//!   than the last one published.
//! - **`spark/status/safe-mode`** (the legacy JSON describe) is published once per connection
//!   of a device in safe mode: the device said `spark/device/safemode` or its describe shows a
//!   module failing a check, at the post-connect point of the pending event or once the
//!   connection's describe arrives (the rule and why: [`safe_mode`]).

pub mod api;
pub mod assets;
mod config;
mod connection;
mod device_id;
mod event;
mod firmware;
pub mod fleet;
pub mod footprint;
mod job;
mod ota;
pub mod policy;
mod products;
mod reconcile;
mod requests;
pub mod rollout;
pub mod safe_mode;
mod session;
pub mod store;
mod transfer;

pub use config::{CloudConfig, Interrupted, FINISHED_JOBS_KEPT};
pub use device_id::DeviceId;
pub use event::{
    device_id_hex, iso8601_millis, CloudEvent, DisconnectReason, OtaEvent, OtaEventKind, Publisher,
    SessionChange, StreamEvent,
};
pub use firmware::{compare, expected_modules, verify, Comparison, ExpectedModule};
pub use fleet::Fleet;
pub use footprint::Footprint;
pub use job::{JobId, JobInfo, JobKind, JobStatus};
pub use policy::{DeviceOsLibrary, LibraryModule};
pub use transfer::{SenderTiming, Transfer, TransferError};

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use p256::ecdsa::VerifyingKey;
use protocol::coap::{Endpoint, EndpointEvent, MessageType};
use protocol::dtls::{ConnectionHandle, Server, ServerConfig};
use protocol::message::{ApplicationDescribe, Body, Event, Hello, ParticleMessage, SystemDescribe};
use protocol::timer_queue::{Scheduled, TimerEntry, TimerQueue};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use connection::{record_kind, RecordKind};
use footprint::GaveUp;
use job::Job;
use session::{Purpose, Session};

/// Event names the cloud uses.
pub mod names {
    pub const STATUS: &str = "spark/status";
    pub const FLASH_STATUS: &str = "spark/flash/status";
    pub const APP_HASH: &str = "spark/device/app-hash";
    pub const LAST_RESET: &str = "spark/device/last_reset";
    pub const UPDATES_PENDING: &str = "particle/device/updates/pending";
    pub const UPDATES_FORCED: &str = "particle/device/updates/forced";
    pub const UPDATES_ENABLED: &str = "particle/device/updates/enabled";
    /// Published by the device at connect, only in safe mode.
    pub const DEVICE_SAFE_MODE: &str = "spark/device/safemode";
    /// Published by the cloud for a device in safe mode, with its modules.
    pub const SAFE_MODE: &str = "spark/status/safe-mode";
    /// Published by the cloud before each Device OS module it sends a device to heal it
    /// (the "safe mode healer" of reference 3; data: [`super::policy::updater_data`]).
    pub const SAFE_MODE_UPDATER: &str = "spark/safe-mode-updater/updating";
    /// `spark/flash/status` data, with the trailing space of the 2024 captures.
    pub const FLASH_STARTED: &str = "started ";
    pub const FLASH_SUCCESS: &str = "success ";
    pub const FLASH_FAILED: &str = "failed ";
}

/// Counters of what came in and what could not be used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloudStats {
    pub datagrams: u64,
    /// Application records from devices.
    pub messages: u64,
    /// CoAP or catalogue messages that did not parse.
    pub malformed: u64,
    /// [`CloudEvent::Dropped`] reports.
    pub dropped: u64,
    /// Handshakes and sessions refused ([`SessionChange::Refused`]).
    pub refused: u64,
}

/// A device's session as `hil cloud --state` keeps it across a restart ([`store`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedSession {
    pub device_id: DeviceId,
    pub dtls: protocol::dtls::ExportedSession,
    /// The last Hello (platform and versions until the device says Hello again).
    pub hello: Option<Hello>,
}

/// What the cloud knows about a device, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    pub device_id: DeviceId,
    pub online: bool,
    /// Current (or last) address of its session.
    pub address: Option<SocketAddr>,
    /// The current connection is a handshake-less resumption.
    pub resumed: bool,
    pub connection_id: Option<Vec<u8>>,
    /// The last Hello: product id / version, system version, platform, flags.
    pub hello: Option<Hello>,
    pub system_describe: Option<SystemDescribe>,
    pub application_describe: Option<ApplicationDescribe>,
    pub subscriptions: Vec<String>,
    /// Last values the device published for `particle/device/updates/enabled` and `/forced`.
    pub updates_enabled: Option<bool>,
    pub updates_forced: Option<bool>,
    /// The cloud's force-enable setting for the device.
    pub updates_forced_setting: bool,
    pub last_reset: Option<String>,
    /// Jobs not finished, in order (the first is the current one).
    pub jobs: Vec<JobId>,
}

#[derive(Debug)]
struct DeviceRecord {
    key: VerifyingKey,
    session: Option<Session>,
    last_address: Option<SocketAddr>,
    hello: Option<Hello>,
    system_describe: Option<SystemDescribe>,
    application_describe: Option<ApplicationDescribe>,
    subscriptions: Vec<String>,
    updates_enabled: Option<bool>,
    updates_forced: Option<bool>,
    forced_setting: bool,
    last_reset: Option<String>,
    app_hash: Option<Vec<u8>>,
    /// Queued and active jobs; the first is the current one.
    queue: VecDeque<JobId>,
    /// Committed jobs waiting for the device to come back running their firmware.
    committed: Vec<JobId>,
    /// The product firmware the cloud delivers to this device (armed at each full handshake
    /// for a standard release, at once for an intelligent one; [`policy`]).
    armed: Option<reconcile::Armed>,
    /// The files the cloud gave up delivering automatically (product firmware, Device OS
    /// modules or assets that can never be installed): not retried. The newest
    /// [`footprint::GAVE_UP_KEPT`], one entry per file.
    gave_up: VecDeque<GaveUp>,
    /// Finished jobs whose summary is kept, oldest first ([`CloudConfig::finished_jobs_kept`]).
    finished: VecDeque<JobId>,
    /// When [`Cloud::handle_timeout`] must look at this device next ([`Cloud::device_deadline`]
    /// as of the last change), and the time of its live entry in [`Cloud::timers`].
    timer: Option<Duration>,
    scheduled: Scheduled,
}

/// The timer queue's view of a device: its deadline as last worked out.
fn timer_entry(
    devices: &mut BTreeMap<DeviceId, Box<DeviceRecord>>,
    id: DeviceId,
) -> Option<TimerEntry<'_>> {
    devices.get_mut(&id).map(|d| TimerEntry {
        deadline: d.timer,
        scheduled: &mut d.scheduled,
    })
}

fn key_bytes(key: &VerifyingKey) -> Vec<u8> {
    key.to_encoded_point(true).as_bytes().to_vec()
}

fn parse_flag(data: &[u8]) -> bool {
    data == b"true"
}

/// The local Device Cloud. See the [module documentation](self).
pub struct Cloud {
    config: CloudConfig,
    rng: ChaCha8Rng,
    server: Server<ChaCha8Rng>,
    /// Boxed: a record is large and a B-tree node holds up to eleven of them inline, often
    /// half empty.
    devices: BTreeMap<DeviceId, Box<DeviceRecord>>,
    by_key: BTreeMap<Vec<u8>, DeviceId>,
    by_handle: BTreeMap<ConnectionHandle, DeviceId>,
    /// Handshakes of devices that have a session, until their Hello shows the device id.
    pending: BTreeMap<ConnectionHandle, connection::PendingHandshake>,
    jobs: BTreeMap<JobId, Job>,
    next_job: u64,
    events: VecDeque<CloudEvent>,
    stats: CloudStats,
    fleet: Fleet,
    /// Staged rollouts by product (`rollout`, driven from `products.rs`).
    rollouts: BTreeMap<fleet::ProductId, rollout::Rollout>,
    /// Rollouts replaced by a newer one of their product, oldest first (for the API's list).
    rollout_history: BTreeMap<fleet::ProductId, Vec<rollout::Rollout>>,
    library: DeviceOsLibrary,
    /// Device deadlines. The queue is tidied after every call, so [`Cloud::poll_timeout`] is a
    /// peek and a device with nothing due costs nothing per timeout.
    timers: TimerQueue<DeviceId>,
    /// Devices whose state changed since their deadline was last worked out.
    touched: Vec<DeviceId>,
    /// Finished jobs of devices the cloud does not know (a flash refused as unregistered),
    /// oldest first, at most [`CloudConfig::finished_jobs_kept`].
    unowned_finished: VecDeque<JobId>,
}

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloud")
            .field("devices", &self.devices.len())
            .field("jobs", &self.jobs.len())
            .finish()
    }
}

impl Cloud {
    pub fn new(config: CloudConfig, seed: u64) -> Cloud {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut dtls = ServerConfig::new(config.server_key.clone(), Vec::new());
        dtls.timeouts = config.dtls_timeouts;
        let server = Server::new(dtls, ChaCha8Rng::seed_from_u64(rng.next_u64()));
        Cloud {
            config,
            rng,
            server,
            devices: BTreeMap::new(),
            by_key: BTreeMap::new(),
            by_handle: BTreeMap::new(),
            pending: BTreeMap::new(),
            jobs: BTreeMap::new(),
            next_job: 1,
            events: VecDeque::new(),
            stats: CloudStats::default(),
            fleet: Fleet::new(),
            rollouts: BTreeMap::new(),
            rollout_history: BTreeMap::new(),
            library: DeviceOsLibrary::default(),
            timers: TimerQueue::new(),
            touched: Vec::new(),
            unowned_finished: VecDeque::new(),
        }
    }

    /// Registers a device: its id and the public key it authenticates with. Registering the
    /// same id again replaces its key; a key registered for another id moves to this one.
    pub fn register_device(&mut self, device_id: impl Into<DeviceId>, public_key: VerifyingKey) {
        let device_id: DeviceId = device_id.into();
        let bytes = key_bytes(&public_key);
        if let Some(old) = self.devices.get(&device_id).map(|d| key_bytes(&d.key)) {
            self.by_key.remove(&old);
        }
        self.by_key.insert(bytes, device_id);
        self.server.register_device_key(public_key);
        match self.devices.get_mut(&device_id) {
            Some(d) => d.key = public_key,
            None => {
                self.devices.insert(
                    device_id,
                    Box::new(DeviceRecord {
                        key: public_key,
                        session: None,
                        last_address: None,
                        hello: None,
                        system_describe: None,
                        application_describe: None,
                        subscriptions: Vec::new(),
                        updates_enabled: None,
                        updates_forced: None,
                        forced_setting: false,
                        last_reset: None,
                        app_hash: None,
                        queue: VecDeque::new(),
                        committed: Vec::new(),
                        armed: None,
                        gave_up: VecDeque::new(),
                        finished: VecDeque::new(),
                        timer: None,
                        scheduled: Scheduled::default(),
                    }),
                );
            }
        }
    }

    /// Removes a device's key: new handshakes with it are refused and its session (if any)
    /// is closed (close_notify) and forgotten, so it cannot resume either. The device's record
    /// (jobs, describe, settings) stays; registering a key again lets it connect. `false` if
    /// the device is not registered.
    pub fn unregister_device(&mut self, now: Duration, device_id: impl Into<DeviceId>) -> bool {
        let device_id: DeviceId = device_id.into();
        let Some(key) = self.devices.get(&device_id).map(|d| d.key) else {
            return false;
        };
        self.by_key.remove(&key_bytes(&key));
        self.server.unregister_device_key(&key);
        let pending: Vec<ConnectionHandle> = self
            .pending
            .iter()
            .filter(|(_, p)| p.device_id == device_id)
            .map(|(h, _)| *h)
            .collect();
        for h in pending {
            self.pending.remove(&h);
            self.server.close(now, h);
        }
        if let Some(handle) = self.session_mut(&device_id).map(|s| s.handle) {
            self.go_offline(
                now,
                device_id,
                DisconnectReason::Refused("the device's key was removed".into()),
            );
            self.end_session(device_id);
            self.server.close(now, handle);
            self.process_server_events(now, &RecordKind::Other);
        }
        self.retime_touched();
        true
    }

    /// Whether the device's key is registered (it may connect).
    pub fn is_registered(&self, device_id: impl Into<DeviceId>) -> bool {
        let device_id: DeviceId = device_id.into();
        self.devices
            .get(&device_id)
            .is_some_and(|d| self.by_key.get(&key_bytes(&d.key)) == Some(&device_id))
    }

    /// Every device session that can be resumed (its handshake completed), as it is now.
    pub fn saved_sessions(&self) -> Vec<SavedSession> {
        self.devices
            .iter()
            .filter_map(|(id, d)| {
                let s = d.session.as_ref()?;
                let dtls = self.server.export_session(s.handle)?;
                Some(SavedSession {
                    device_id: *id,
                    dtls,
                    hello: d.hello.clone(),
                })
            })
            .collect()
    }

    /// Takes back a session a cloud that ran before saved ([`Cloud::saved_sessions`]): the
    /// device is offline until its next record, which is a resumption (reference 1.4), so it
    /// comes back online without a handshake. Refused (with the reason) when the device is not
    /// registered, its key changed, or it has a session already.
    pub fn restore_session(&mut self, now: Duration, saved: &SavedSession) -> Result<(), String> {
        let id = saved.device_id;
        let hex = device_id_hex(&id);
        let Some(d) = self.devices.get(&id) else {
            return Err(format!("device {hex} is not registered"));
        };
        if self.by_key.get(&key_bytes(&d.key)) != Some(&id) || d.key != saved.dtls.device_key {
            return Err(format!("device {hex}: its key is no longer the session's"));
        }
        if d.session.is_some() {
            return Err(format!("device {hex} has a session already"));
        }
        let handle = self
            .server
            .restore_session(&saved.dtls)
            .map_err(|e| format!("device {hex}: {e}"))?;
        let cid = self.server.connection_id(handle).map(<[u8]>::to_vec);
        let mut session = Session::new(handle, cid, saved.dtls.peer, now);
        // Not a handshake: the next record resumes it.
        session.fresh = false;
        // Armed as the cloud that made the session armed it at the handshake.
        let armed = self
            .fleet
            .target(id)
            .firmware()
            .cloned()
            .map(reconcile::Armed::new);
        if let Some(d) = self.devices.get_mut(&id) {
            d.armed = armed;
            d.session = Some(session);
            d.last_address = Some(saved.dtls.peer);
            if d.hello.is_none() {
                d.hello = saved.hello.clone();
            }
        }
        self.by_handle.insert(handle, id);
        self.touched.push(id);
        self.retime_touched();
        Ok(())
    }

    /// Registered device ids.
    pub fn devices(&self) -> Vec<DeviceId> {
        self.devices.keys().copied().collect()
    }

    /// Feeds one UDP payload received from `from`.
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, datagram: &[u8]) {
        self.stats.datagrams += 1;
        let kind = record_kind(datagram);
        self.server.handle_datagram(now, from, datagram);
        self.process_server_events(now, &kind);
        self.retime_touched();
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.server.handle_timeout(now);
        self.process_server_events(now, &RecordKind::Other);
        self.retime_touched();
        // The devices with something due, in id order (the order every device was looked at
        // in when each timeout walked the whole fleet).
        let due = self.timers.pop_due(now, &mut self.devices, timer_entry);
        for id in due {
            self.touched.push(id);
            let events = match self.endpoint(&id) {
                Some(e) => {
                    e.handle_timeout(now);
                    drain_events(e)
                }
                None => continue,
            };
            self.handle_endpoint_events(now, id, events);
            if let Some(deadline) = self.idle_deadline(&id) {
                if now >= deadline {
                    self.go_offline(now, id, DisconnectReason::Silent);
                    continue;
                }
            }
            self.service(now, id);
        }
        self.service_rollouts(now);
        self.retime_touched();
    }

    /// The next datagram to send and its destination.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.server
            .poll_transmit()
            .map(|t| (t.destination, t.payload))
    }

    /// When [`Cloud::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let devices = self.timers.next();
        debug_assert_eq!(
            devices,
            self.devices
                .iter()
                .filter_map(|(id, d)| self.device_deadline(id, d))
                .min(),
            "the timer queue disagrees with the devices' deadlines (a change not retimed)"
        );
        [self.server.poll_timeout(), devices]
            .into_iter()
            .chain(self.rollouts.values().map(|r| r.deadline()))
            .flatten()
            .min()
    }

    /// When the device needs [`Cloud::handle_timeout`] next: its CoAP retransmissions, and
    /// while it is online its silence limit, its pending event, its settle point (with news
    /// since the last look) and its transfer's timers.
    fn device_deadline(&self, id: &DeviceId, device: &DeviceRecord) -> Option<Duration> {
        let session = device.session.as_ref()?;
        let endpoint = session.endpoint.as_ref()?;
        let mut next = endpoint.poll_timeout();
        let mut consider = |t: Option<Duration>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if !session.online {
            return next;
        }
        consider(self.idle_deadline(id));
        if !session.pending_sent {
            consider(Some(session.started_at + self.config.pending_event_delay));
        }
        // Settled with news since the last look (a request: a flag, an event...).
        if let Some(at) = self
            .settle_deadline(device, session)
            .filter(|_| self.active_job(id).is_none())
        {
            if session.reconciled_at.is_none_or(|r| at > r) {
                consider(Some(at));
            }
        }
        if let Some(job) = device.queue.front().and_then(|j| self.jobs.get(j)) {
            consider(job.transfer.as_ref().and_then(|t| t.deadline()));
        }
        next
    }

    /// Works out the deadlines of the devices changed since the last time.
    fn retime_touched(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for id in &touched {
            let Some(d) = self.devices.get(id) else {
                continue;
            };
            let timer = self.device_deadline(id, d);
            let Some(d) = self.devices.get_mut(id) else {
                continue;
            };
            d.timer = timer;
            self.timers.schedule(
                *id,
                TimerEntry {
                    deadline: timer,
                    scheduled: &mut d.scheduled,
                },
            );
        }
        touched.clear();
        // Keep the allocation.
        self.touched = touched;
        // Superseded entries wait until their time comes up: when they outnumber the devices,
        // the queue is rebuilt from the live ones (at most one per device), so it stays
        // within twice the fleet whatever the rate of changes.
        self.timers.tidy(&mut self.devices, timer_entry);
        self.timers.compact(
            self.devices.len(),
            self.devices.iter().map(|(id, d)| (*id, d.scheduled)),
        );
        self.timers.tidy(&mut self.devices, timer_entry);
    }

    /// The next event of the stream.
    pub fn poll_event(&mut self) -> Option<CloudEvent> {
        self.events.pop_front()
    }

    pub fn stats(&self) -> CloudStats {
        self.stats
    }

    /// Products, their firmware and devices.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Adds a Device OS module (bootloader, system part, radio stack) that safe-mode healing
    /// may send ([`policy`]).
    pub fn add_device_os_module(&mut self, file: Vec<u8>) -> Result<LibraryModule, String> {
        self.library.add(file)
    }

    pub fn device_os_library(&self) -> &DeviceOsLibrary {
        &self.library
    }

    /// The NSS key log line of the device's current session (for Wireshark).
    pub fn key_log_line(&self, device_id: impl Into<DeviceId>) -> Option<String> {
        let device_id: DeviceId = device_id.into();
        let handle = self.devices.get(&device_id)?.session.as_ref()?.handle;
        self.server.key_log_line(handle)
    }

    /// "Flash this file to the device": queued, started when the device is online and its
    /// post-connect sequence settled (at once if it already is).
    pub fn flash(&mut self, now: Duration, device_id: impl Into<DeviceId>, file: Vec<u8>) -> JobId {
        let device_id: DeviceId = device_id.into();
        let id = JobId(self.next_job);
        self.next_job += 1;
        let refusal = if !self.devices.contains_key(&device_id) {
            Some(format!(
                "device {} is not registered with this cloud",
                device_id_hex(&device_id)
            ))
        } else if file.is_empty() {
            Some("the file is empty (the device refuses a File-Size of 0)".to_string())
        } else if u32::try_from(file.len()).is_err() {
            Some(format!(
                "the file is {} bytes, beyond what File-Size can carry",
                file.len()
            ))
        } else {
            let platform = self
                .devices
                .get(&device_id)
                .and_then(|d| d.hello.as_ref())
                .map(|h| h.platform_id);
            assets::refusal(&file, platform)
        };
        self.jobs.insert(
            id,
            Job::new(JobKind::Flash, device_id, std::sync::Arc::new(file)),
        );
        self.ota_event(now, id, device_id, OtaEventKind::Queued);
        if let Some(message) = refusal {
            self.fail_job(now, id, None, message, true);
            return id;
        }
        // The newest flash wins over jobs still waiting for the device (offline, or requeued
        // after a disconnect): the cloud delivers what was flashed last, once. A job with a
        // transfer running (or committed) is left to finish; the new one queues behind it.
        let waiting: Vec<JobId> = self
            .devices
            .get(&device_id)
            .map(|d| {
                d.queue
                    .iter()
                    .copied()
                    .filter(|j| {
                        self.jobs.get(j).is_some_and(|job| {
                            matches!(job.status, JobStatus::Queued | JobStatus::Held)
                                && !job.maybe_committed
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        for old in waiting {
            self.fail_job(now, old, None, format!("superseded by job {}", id.0), false);
        }
        if let Some(d) = self.devices.get_mut(&device_id) {
            d.queue.push_back(id);
        }
        self.service(now, device_id);
        self.retime_touched();
        id
    }

    pub fn job(&self, id: JobId) -> Option<&JobStatus> {
        self.jobs.get(&id).map(|j| &j.status)
    }

    /// A job's kind, status, attempts and the reason its last attempt did not end it.
    pub fn job_info(&self, id: JobId) -> Option<JobInfo> {
        self.jobs.get(&id).map(|j| JobInfo {
            kind: j.kind.clone(),
            device_id: j.device_id,
            status: j.status.clone(),
            attempts: j.attempts,
            last_reason: j.last_reason.clone(),
        })
    }

    /// The device a job is for.
    pub fn job_device(&self, id: JobId) -> Option<DeviceId> {
        self.jobs.get(&id).map(|j| j.device_id)
    }

    /// Force-enables (or not) updates for a device (reference 4.6): the setting is kept and the
    /// device is sent `particle/device/updates/forced` now if online (and at each connection
    /// while true).
    /// Paces the OTA sender (the default) or not (the sender of before), for transfers
    /// started from now on ([`CloudConfig::paced_sender`]).
    pub fn set_paced_sender(&mut self, paced: bool) {
        self.config.paced_sender = paced;
    }

    /// Changes what happens to transfers the device drops from now on.
    pub fn set_interrupted(&mut self, policy: Interrupted) {
        self.config.interrupted = policy;
    }

    pub fn set_updates_forced(
        &mut self,
        now: Duration,
        device_id: impl Into<DeviceId>,
        forced: bool,
    ) {
        let device_id: DeviceId = device_id.into();
        let Some(d) = self.devices.get_mut(&device_id) else {
            return;
        };
        d.forced_setting = forced;
        if self.is_online(&device_id) {
            self.send_event(
                now,
                device_id,
                names::UPDATES_FORCED,
                if forced { "true" } else { "false" },
            );
        }
        self.service(now, device_id);
        self.retime_touched();
    }

    /// Sends an event to an online device (CON POST `E/<name>`); `false` if it is offline.
    pub fn send_event(
        &mut self,
        now: Duration,
        device_id: impl Into<DeviceId>,
        name: &str,
        data: &str,
    ) -> bool {
        let device_id: DeviceId = device_id.into();
        let message = ParticleMessage {
            kind: MessageType::Confirmable,
            message_id: 0,
            token: Vec::new(),
            body: Body::Event(Event::new(name, data.as_bytes().to_vec())),
        };
        let sent = self
            .send_request(now, device_id, message, Purpose::Event)
            .is_some();
        self.touched.push(device_id);
        self.retime_touched();
        sent
    }

    pub fn device(&self, device_id: impl Into<DeviceId>) -> Option<DeviceView> {
        let device_id: DeviceId = device_id.into();
        let d = self.devices.get(&device_id)?;
        let session = d.session.as_ref();
        Some(DeviceView {
            device_id,
            online: session.is_some_and(|s| s.online),
            address: session.map(|s| s.address).or(d.last_address),
            resumed: session.is_some_and(|s| s.resumed),
            connection_id: session.and_then(|s| s.cid.clone()),
            hello: d.hello.clone(),
            system_describe: d.system_describe.clone(),
            application_describe: d.application_describe.clone(),
            subscriptions: d.subscriptions.clone(),
            updates_enabled: d.updates_enabled,
            updates_forced: d.updates_forced,
            updates_forced_setting: d.forced_setting,
            last_reset: d.last_reset.clone(),
            jobs: d.queue.iter().chain(d.committed.iter()).copied().collect(),
        })
    }

    // ---- timers ----

    /// The data of `spark/status/safe-mode` if it is due for this connection now (rule in
    /// [`safe_mode`]).
    fn safe_mode_due(&self, now: Duration, id: &DeviceId) -> Option<String> {
        let d = self.devices.get(id)?;
        let s = d.session.as_ref()?;
        if !s.online
            || s.safe_mode_published
            || !s.describe_seen
            || now < s.started_at + self.config.pending_event_delay
        {
            return None;
        }
        let describe = d.system_describe.as_ref()?;
        if !s.safe_mode_said && !safe_mode::shows_failed_checks(describe) {
            return None;
        }
        let platform = d.hello.as_ref().map(|h| h.platform_id);
        Some(safe_mode::legacy_describe_json(platform, describe))
    }

    /// Post-connect steps and job starts that are due.
    fn service(&mut self, now: Duration, id: DeviceId) {
        self.touched.push(id);
        if let Some(data) = self.safe_mode_due(now, &id) {
            if let Some(s) = self.session_mut(&id) {
                s.safe_mode_published = true;
            }
            self.publish_cloud(now, id, names::SAFE_MODE, &data);
        }
        let delay = self.config.pending_event_delay;
        let due_pending = self
            .session_mut(&id)
            .is_some_and(|s| s.online && !s.pending_sent && now >= s.started_at + delay);
        if due_pending {
            // A held update says so at once; otherwise `false`, as in the captures.
            let held = self.held_job(&id).is_some();
            if let Some(s) = self.session_mut(&id) {
                s.pending_sent = true;
                s.pending_true_sent = held;
            }
            let data = if held { "true" } else { "false" };
            if self.send_event(now, id, names::UPDATES_PENDING, data) {
                self.publish_cloud(now, id, names::UPDATES_PENDING, data);
            }
            if self.devices.get(&id).is_some_and(|d| d.forced_setting) {
                self.send_event(now, id, names::UPDATES_FORCED, "true");
            }
        }
        // A transfer without any UpdateAck for the stall limit starts over (new UpdateStart).
        if let Some(job) = self.active_job(&id) {
            let stalled = self
                .jobs
                .get(&job)
                .and_then(|j| j.transfer.as_ref())
                .is_some_and(|t| t.is_stalled(now));
            if stalled {
                self.interrupt_active(now, id, "no UpdateAck for the stall limit");
                // Not again on this silence: a sleeping device would get an UpdateStart
                // (and the stream a `started `) every stall limit.
                if let Some(s) = self.session_mut(&id) {
                    s.stalled_at = Some(now);
                }
            }
        }
        // Silence during a transfer.
        if let Some(job) = self.active_job(&id) {
            let resend = self
                .jobs
                .get_mut(&job)
                .and_then(|j| j.transfer.as_mut())
                .map(|t| t.on_timeout(now))
                .unwrap_or_default();
            if !resend.is_empty() {
                self.send_chunks(now, id, job, &resend);
                self.ota_event(
                    now,
                    job,
                    id,
                    OtaEventKind::Retransmitted { indices: resend },
                );
                self.update_transfer_status(job);
            }
        }
        self.reconcile(now, id);
    }

    // ---- event stream ----

    fn ota_event(&mut self, now: Duration, job: JobId, device_id: DeviceId, kind: OtaEventKind) {
        self.events.push_back(CloudEvent::Ota(OtaEvent {
            at: now,
            job,
            device_id,
            kind,
        }));
    }

    fn dropped(&mut self, device_id: Option<DeviceId>, reason: String) {
        self.stats.dropped += 1;
        self.events
            .push_back(CloudEvent::Dropped { device_id, reason });
    }

    fn publish_cloud(&mut self, now: Duration, id: DeviceId, name: &str, data: &str) {
        self.publish(now, id, Publisher::Cloud, name, data, 60, false);
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &mut self,
        now: Duration,
        id: DeviceId,
        publisher: Publisher,
        name: &str,
        data: &str,
        ttl: u32,
        public: bool,
    ) {
        let (product_id, product_version) = self
            .devices
            .get(&id)
            .and_then(|d| d.hello.as_ref())
            .map_or((0xFFFF, 0xFFFF), |h| (h.product_id, h.product_version));
        let event = StreamEvent {
            at: now,
            device_id: id,
            publisher,
            name: name.to_string(),
            data: data.to_string(),
            ttl,
            public,
            product_id,
            product_version,
        };
        self.observe_rollouts(&event);
        self.events.push_back(CloudEvent::Stream(event));
    }
}

fn drain_events(endpoint: &mut Endpoint<ChaCha8Rng>) -> Vec<EndpointEvent> {
    std::iter::from_fn(|| endpoint.poll_event()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::SigningKey;

    #[test]
    fn the_cloud_can_move_to_a_transport_thread() {
        fn send<T: Send + 'static>() {}
        send::<Cloud>();
        send::<CloudEvent>();
    }

    #[test]
    fn chunk_size_is_kept_within_what_the_device_accepts() {
        let key = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let mut config = CloudConfig::new(key);
        for (asked, used) in [
            (512, 512),
            (100, 512),
            (1024, 1024),
            (1023, 1020),
            (4096, 1136),
        ] {
            config.chunk_size = asked;
            assert_eq!(config.valid_chunk_size(), used);
        }
    }

    #[test]
    fn record_kind_reads_the_cid_of_a_move_record() {
        let mut datagram = vec![253, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 5];
        datagram.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 0]);
        assert_eq!(
            record_kind(&datagram),
            RecordKind::Move(vec![1, 2, 3, 4, 5, 6, 7, 8])
        );
        assert_eq!(record_kind(&[253, 1]), RecordKind::Other);
        assert_eq!(record_kind(&[25]), RecordKind::Cid);
        assert_eq!(record_kind(&[]), RecordKind::Other);
    }
}
