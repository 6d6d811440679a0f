//! [`DeviceOs`]: one emulated Particle device's Device OS, sans-IO (reference sections 1, 2.3,
//! 3 and 5.5). This file holds the device's life: power, boot, reset, sleep, the application's
//! controls and the system flags, and composes the parts that own their own state: the
//! [`CloudConnection`] (`cloud.rs`) and the [`OtaLink`] (`ota_link.rs`). Neither reaches into
//! the device: each reads what it needs from arguments and answers with effects
//! ([`CloudEffect`], [`OtaEffect`]) that [`DeviceOs`] applies in order, so it is the only part
//! that touches all the others.
//!
//! Time is a [`Duration`] since any epoch the caller picks; randomness comes from the seed.
//! Nothing here reads a clock or touches a socket: the caller moves datagrams
//! ([`DeviceOs::handle_datagram`], [`DeviceOs::poll_transmit`]) and time
//! ([`DeviceOs::poll_timeout`], [`DeviceOs::handle_timeout`]), and rebinds its UDP socket when
//! [`DeviceOs::socket_generation`] changes.

use core::time::Duration;
use std::collections::VecDeque;

use protocol::coap::{IncomingRequest, Message};
use protocol::message::{Body, CatalogueError, Event};
use rand_core::{RngCore, SeedableRng};

use crate::assets::{self, AssetFs, AssetScan, ConsumerState};
use crate::bootloader::{BootError, BootReport, BootState, SafeModeReason};
use crate::device::{Device, DeviceError};
use crate::flash::{Activity, ActivityCut, CutMode};

use super::cloud::{AfterClose, CloudConnection, CloudEffect, DeviceView};
use super::flags::{
    data_to_flag, flag_data, update_control_event, SystemFlags, UpdateControlEvent, UpdateStatus,
};
use super::identity::Identity;
use super::link::Rng;
use super::mutation::Mutation;
use super::ota_link::{OtaEffect, OtaLink, OtaResponse};
use super::profile::{self, event_name, reset_reason};
use super::session::Retained;
use super::sleep::{SleepConfig, SleepMode, SleepNetwork};
use super::system_info::SystemInfo;
use super::trace::{DeviceEvent, DeviceStatus, DisconnectReason, SystemEvent};

/// What the application firmware does that the system cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppBehaviour {
    /// `System.disableUpdates()` at boot when false, in the part of the application
    /// [`AppBehaviour::disable_updates_in`] names.
    pub updates_enabled_at_boot: bool,
    /// `System.disableReset()` in `setup()` when false.
    pub reset_enabled_at_boot: bool,
    /// Where the application calls `System.disableUpdates()` (when
    /// [`AppBehaviour::updates_enabled_at_boot`] is false): `STARTUP()` runs before anything
    /// else, `setup()` when the system mode and thread setting let it ([`AppStage`]).
    pub disable_updates_in: AppStage,
    /// `SYSTEM_THREAD(ENABLED)`: without it the application's calls wait while a transfer runs.
    pub system_thread: bool,
    /// `Particle.setDisconnectOptions(CloudDisconnectOptions().graceful(true))`: resets and
    /// sleep send a Goodbye and wait for it to be acknowledged. Device OS's default is false
    /// (see [`super::profile`]).
    pub graceful_disconnect: bool,
    /// `SYSTEM_MODE(...)`: whether the system connects at boot.
    pub mode: SystemMode,
    /// `System.onAssetOta(callback)` in `STARTUP()`, and what the callback does.
    pub on_asset_ota: AssetOtaHook,
}

/// The part of the application a call is made from (reference particle-cloud-api.md 5.4).
///
/// When each part runs, as the emulator plays it (the choices in one place, [`super::profile`]):
/// - `STARTUP()` runs first at every boot whose application runs (not in safe mode), before
///   the system connects.
/// - `setup()` runs at boot, before the system connects, with `SYSTEM_THREAD(ENABLED)` in any
///   mode, and without it in `SEMI_AUTOMATIC` and `MANUAL` (the system connects only when the
///   application asks).
/// - Without the system thread in `AUTOMATIC`, `setup()` runs only after the cloud connection
///   is up: [`super::profile::NON_THREADED_SETUP_DELAY`] after it, and not while a transfer runs
///   (then when it ends; a transfer that commits resets the device first, so that boot's
///   `setup()` never runs). An update the cloud starts at connect cannot be stopped there.
/// - `loop()` (the harness's application calls) runs once `setup()` has returned; without the
///   system thread not while a transfer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppStage {
    /// `STARTUP(...)`: Device OS documents `System.disableUpdates()` there as not to be done
    /// (particle-cloud-api.md 5.1); the emulator applies it before the first connection.
    Startup,
    /// `setup()`.
    #[default]
    Setup,
}

/// The application's `System.onAssetOta` callback (reference 6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssetOtaHook {
    /// No callback registered.
    #[default]
    None,
    /// The callback reads the assets and calls `System.assetsHandled(true)`: it runs once per
    /// newly stored asset.
    Handles,
    /// The callback leaves them unhandled (`assetsHandled(false)` or no call): it runs at every
    /// boot.
    LeavesUnhandled,
}

/// `SYSTEM_MODE(...)` (reference particle-cloud-api.md 5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SystemMode {
    /// Connects at boot (the default).
    #[default]
    Automatic,
    /// Connects only when the application calls `Particle.connect()`.
    SemiAutomatic,
    /// As semi-automatic here. Device OS also needs the application to call
    /// `Particle.process()` every ~20 s; the emulated application's loop does (a choice: an
    /// application that stops calling it is not modelled).
    Manual,
}

impl Default for AppBehaviour {
    /// An application that leaves every control at Device OS's default, threaded.
    fn default() -> Self {
        AppBehaviour {
            updates_enabled_at_boot: true,
            reset_enabled_at_boot: true,
            disable_updates_in: AppStage::Setup,
            system_thread: true,
            graceful_disconnect: false,
            mode: SystemMode::Automatic,
            on_asset_ota: AssetOtaHook::None,
        }
    }
}

/// Whether the device has power and is awake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Power {
    Off,
    On,
    Sleeping {
        /// The RTC wake, if any.
        wake_at: Option<Duration>,
        network_kept: bool,
        /// Incoming data wakes the device (network standby, not inactive standby).
        wake_on_data: bool,
        /// Waking is a reset (HIBERNATE).
        hibernate: bool,
    },
}

/// Where this boot's `setup()` is ([`AppStage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetupState {
    /// It ran (or the application does not run this boot: safe mode, nothing bootable).
    Done,
    /// Non-threaded AUTOMATIC: waiting for the cloud connection.
    AfterConnect,
    /// Non-threaded AUTOMATIC: runs at this time, or when the running transfer ends.
    Due(Duration),
}

/// An application call deferred while a transfer runs (single-threaded mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AppCall {
    SetUpdatesEnabled(bool),
    SetResetEnabled(bool),
    SystemReset,
    Sleep(SleepConfig),
    /// `Particle.connect()`.
    Connect,
    /// `Particle.disconnect()`.
    Disconnect,
}

/// One emulated device's Device OS, sans-IO: datagrams and time in
/// ([`DeviceOs::handle_datagram`], [`DeviceOs::handle_timeout`]), datagrams, timers and trace
/// events out ([`DeviceOs::poll_transmit`], [`DeviceOs::poll_timeout`], [`DeviceOs::poll_event`]).
/// A real-UDP driver rebinds its socket whenever [`DeviceOs::socket_generation`] changes.
///
/// ```no_run
/// # use emulator::os::*;
/// # fn drive(mut os: DeviceOs, socket: std::net::UdpSocket) -> std::io::Result<()> {
/// let start = std::time::Instant::now();
/// os.power_on(start.elapsed());
/// let mut buf = [0u8; 2048];
/// loop {
///     while let Some(d) = os.poll_transmit() {
///         socket.send(&d)?;
///     }
///     while let Some(event) = os.poll_event() {
///         println!("{event:?}");
///     }
///     let wait = os.poll_timeout().map(|t| t.saturating_sub(start.elapsed()));
///     socket.set_read_timeout(wait.filter(|w| !w.is_zero()).or(Some(std::time::Duration::from_millis(1))))?;
///     match socket.recv(&mut buf) {
///         Ok(n) => os.handle_datagram(start.elapsed(), &buf[..n]),
///         Err(_) => os.handle_timeout(start.elapsed()),
///     }
/// }
/// # }
/// ```
pub struct DeviceOs {
    identity: Identity,
    device: Device,
    app: AppBehaviour,
    rng: Rng,
    power: Power,
    /// This boot: how it ended and what the system reports about itself.
    boot_state: Option<BootState>,
    system: Option<SystemInfo>,
    /// Why this boot happened (`spark/device/last_reset`), and whether that was published.
    reset_reason: u32,
    last_reset_published: bool,
    flags: SystemFlags,
    /// A `particle/device/updates/pending` event arrived this boot.
    pending_event_received: bool,
    /// Reason of the reset a committed update waits for (`system_pending_shutdown`).
    pending_reset_reason: u32,
    retained: Retained,
    /// The cloud connection: sockets, post-connect sequence, keepalive, reconnects.
    cloud: CloudConnection,
    /// The application wants the cloud: set at boot in automatic mode, by
    /// `Particle.connect()`, cleared by `Particle.disconnect()`.
    cloud_wanted: bool,
    /// The OTA v3 receiver on the wire.
    ota: OtaLink,
    deferred: Vec<AppCall>,
    setup: SetupState,
    events: VecDeque<DeviceEvent>,
    malformed: u64,
    /// A behaviour broken on purpose (tests only; [`super::mutation`]).
    mutation: Option<Mutation>,
}

impl core::fmt::Debug for DeviceOs {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceOs")
            .field("identity", &self.identity)
            .field("power", &self.power)
            .field("flags", &self.flags)
            .field("cloud", &self.cloud)
            .finish_non_exhaustive()
    }
}

impl DeviceOs {
    /// A device with `identity` and `device`'s flash, powered off.
    pub fn new(identity: Identity, device: Device, app: AppBehaviour, seed: u64) -> Self {
        let keepalive = profile::keepalive_interval(&device.board().name);
        let ota = OtaLink::new(&device);
        DeviceOs {
            identity,
            device,
            app,
            rng: Rng::seed_from_u64(seed),
            power: Power::Off,
            boot_state: None,
            system: None,
            reset_reason: reset_reason::NONE,
            last_reset_published: false,
            flags: SystemFlags::default(),
            pending_event_received: false,
            pending_reset_reason: reset_reason::UPDATE,
            retained: Retained::default(),
            cloud: CloudConnection::new(keepalive),
            cloud_wanted: false,
            ota,
            deferred: Vec::new(),
            setup: SetupState::Done,
            events: VecDeque::new(),
            malformed: 0,
            mutation: None,
        }
    }

    // ----- power -------------------------------------------------------------------------

    /// Powers the device on: the bootloader applies staged slots and validates, then the system
    /// connects to the cloud. Does nothing if it is already on.
    pub fn power_on(&mut self, now: Duration) {
        if self.power != Power::Off {
            self.log("power_on ignored: the device is already on");
            return;
        }
        self.device.power_on();
        self.power = Power::On;
        self.boot(now);
        self.after(now);
    }

    /// A reset the application has no say in: the RESET pin (`reset_reason::PIN_RESET`) or a
    /// watchdog (`reset_reason::WATCHDOG`). It works in safe mode too (the application does
    /// not run there). RAM goes without a Goodbye; the bootloader applies staged slots.
    pub fn hardware_reset(&mut self, now: Duration, reason: u32) {
        if self.power != Power::On {
            self.log("hardware reset ignored: the device is off or asleep");
            return;
        }
        self.reset_now(now, reason, false);
        self.after(now);
    }

    /// Loses power at the first flash operation of writing OTA chunk `chunk` (the 1-based
    /// Chunk-Index of a transfer, counted from its resume offset), in `mode`, in whichever
    /// transfer first writes such a chunk. A duplicate of a chunk already held writes nothing
    /// and does not count.
    ///
    /// The cut is the flash's: an [`ActivityCut`] aimed at the operations labelled
    /// [`Activity::OtaChunk`] (the OTA link labels each chunk's writes), so it survives power
    /// cycles like any activity cut and the Device OS model keeps no state for it.
    pub fn cut_power_at_chunk(&mut self, chunk: u32, mode: CutMode) {
        self.device.flash_mut().schedule_activity_cut(ActivityCut {
            activity: Activity::OtaChunk(chunk),
            skip: 0,
            mode,
        });
    }

    /// Whether a cut asked for by [`DeviceOs::cut_power_at_chunk`] is still waiting.
    pub fn chunk_cut_pending(&self) -> bool {
        self.device
            .flash()
            .pending_activity_cuts()
            .iter()
            .any(|c| matches!(c.activity, Activity::OtaChunk(_)))
    }

    /// Cuts the power: RAM is lost (DTLS session, flags, transfer state), flash is kept.
    pub fn power_cut(&mut self, now: Duration) {
        if self.power == Power::Off {
            return;
        }
        self.device.flash_mut().lose_power();
        self.lose_power(now);
    }

    /// Everything in RAM goes; what was handed to the socket already is gone too.
    fn lose_power(&mut self, _now: Duration) {
        if self.cloud.lose_power() {
            self.events.push_back(DeviceEvent::Disconnected {
                reason: DisconnectReason::PowerLost,
            });
        }
        self.ota.lose_ram();
        self.retained = Retained::default();
        self.power = Power::Off;
        self.system = None;
        self.boot_state = None;
        self.deferred.clear();
        self.events.push_back(DeviceEvent::PoweredOff);
    }

    /// Boots: the bootloader runs, RAM starts fresh (retained RAM survives), and the system
    /// connects unless nothing can run.
    fn boot(&mut self, now: Duration) {
        let reason = self
            .retained
            .reset_reason
            .take()
            .unwrap_or(reset_reason::POWER_DOWN);
        self.reset_reason = reason;
        self.last_reset_published = false;
        self.flags = SystemFlags::default();
        self.setup = SetupState::Done;
        self.pending_event_received = false;
        self.pending_reset_reason = reset_reason::UPDATE;
        self.deferred.clear();
        self.cloud.on_boot();
        self.cloud_wanted = self.app.mode == SystemMode::Automatic;
        self.system = None;
        self.boot_state = None;
        let mut report = match self.device.boot() {
            Ok(report) => report,
            Err(BootError::PowerLost(_)) => return self.lose_power(now),
            Err(e) => {
                // The store or the flash refuses to work: nothing runs.
                self.log(format!("boot failed: {e}"));
                return;
            }
        };
        for e in &report.bootloader_copy_errors {
            self.log(format!(
                "bootloader update of itself stopped by a flash error ({e}); the bootloader \
                 reset and did the step again"
            ));
        }
        // The asset storage (reference 5.5, 6.3): invalid files go, and an application whose
        // assets are missing does not run.
        let scan = if matches!(report.state, BootState::Unbootable { .. }) {
            AssetScan::default()
        } else {
            match self.check_assets(&mut report) {
                Ok(scan) => scan,
                Err(e) if e.is_power_loss() => return self.lose_power(now),
                Err(e) => {
                    self.log(format!("asset storage unusable: {e}"));
                    AssetScan::default()
                }
            }
        };
        let mut system =
            match SystemInfo::collect(self.device.board(), self.device.flash(), &report) {
                Ok(system) => system,
                Err(_) => return self.lose_power(now),
            };
        system.add_assets(&scan.assets);
        self.events.push_back(DeviceEvent::Booted {
            reset_reason: reason,
            applied: report.applied.clone(),
            refused: report.refused.clone(),
            factory_restored: report.factory_restored,
            state: report.state.clone(),
            versions: system.versions,
        });
        if let BootState::SafeMode(reason) = &report.state {
            self.events.push_back(DeviceEvent::SafeMode {
                reason: reason.clone(),
            });
        }
        let runs = !matches!(report.state, BootState::Unbootable { .. });
        let app_runs = report.state == BootState::Running;
        self.boot_state = Some(report.state);
        self.system = Some(system);
        if app_runs && self.app.on_asset_ota != AssetOtaHook::None {
            if let Err(e) = self.asset_ota_callback(&scan) {
                if e.is_power_loss() {
                    return self.lose_power(now);
                }
                self.log(format!("asset consumer state: {e}"));
            }
        }
        if app_runs {
            self.start_application(now);
        }
        if runs {
            self.connect(now);
        }
    }

    /// The application starts (a boot whose application runs): `STARTUP()` at once, `setup()`
    /// at once or after the cloud connection ([`AppStage`]).
    fn start_application(&mut self, now: Duration) {
        if !self.app.updates_enabled_at_boot && self.app.disable_updates_in == AppStage::Startup {
            self.flags.updates_enabled = false;
        }
        let setup_waits_for_cloud = !self.app.system_thread
            && self.app.mode == SystemMode::Automatic
            && self.mutation != Some(Mutation::SetupAtBoot);
        if setup_waits_for_cloud {
            self.setup = SetupState::AfterConnect;
        } else {
            self.run_setup(now);
        }
    }

    /// `setup()`: the application's boot-time calls (nothing is published before the
    /// connection; once connected, a changed flag is).
    fn run_setup(&mut self, now: Duration) {
        self.setup = SetupState::Done;
        if !self.app.updates_enabled_at_boot && self.app.disable_updates_in == AppStage::Setup {
            self.apply(now, AppCall::SetUpdatesEnabled(false));
        }
        if !self.app.reset_enabled_at_boot {
            self.apply(now, AppCall::SetResetEnabled(false));
        }
    }

    /// The cloud connection came up: a `setup()` waiting for it is due after
    /// [`profile::NON_THREADED_SETUP_DELAY`].
    fn on_cloud_connected(&mut self, now: Duration) {
        if self.setup == SetupState::AfterConnect {
            self.setup = SetupState::Due(now.saturating_add(profile::NON_THREADED_SETUP_DELAY));
        }
    }

    /// When a due `setup()` runs: its time has come and no transfer runs.
    fn setup_due(&self, now: Duration) -> bool {
        matches!(self.setup, SetupState::Due(at) if at <= now) && !self.ota.is_running()
    }

    /// Whether the application's loop runs now: after `setup()`, and without the system thread
    /// not while a transfer runs.
    fn app_loop_runs(&self) -> bool {
        self.setup == SetupState::Done && (self.app.system_thread || !self.ota.is_running())
    }

    /// Deletes invalid asset files (logged) and turns a running boot into safe mode when the
    /// running application requires an asset storage lacks.
    fn check_assets(&mut self, report: &mut BootReport) -> Result<AssetScan, DeviceError> {
        let scan = AssetFs::validate(&mut self.device)?;
        for (name, why) in &scan.deleted {
            self.log(format!("invalid asset file {name:?} deleted: {why}"));
        }
        if report.state == BootState::Running {
            let required = assets::required_by_running_app(&self.device)?;
            let missing: Vec<String> = scan
                .missing(&required)
                .into_iter()
                .map(|d| d.name.clone())
                .collect();
            if !missing.is_empty() {
                report.state =
                    BootState::SafeMode(SafeModeReason::AssetsMissing { names: missing });
            }
        }
        Ok(scan)
    }

    /// `System.onAssetOta` (reference 6.4): on the first loop of a boot, before `setup()`, the
    /// callback gets every available asset while the consumer state is WANT.
    fn asset_ota_callback(&mut self, scan: &AssetScan) -> Result<(), DeviceError> {
        if AssetFs::consumer_state(&mut self.device)? != ConsumerState::Want {
            return Ok(());
        }
        let handled = self.app.on_asset_ota == AssetOtaHook::Handles;
        self.events.push_back(DeviceEvent::AssetOta {
            assets: scan.assets.iter().map(|a| a.name.clone()).collect(),
            handled,
        });
        if handled {
            AssetFs::set_consumer_state(&mut self.device, ConsumerState::Handled)?;
        }
        Ok(())
    }

    /// A reset: the cloud connection ends (without a word unless graceful), retained RAM keeps
    /// the session and the reason, and the bootloader runs.
    fn reset_now(&mut self, now: Duration, reason: u32, goodbye: bool) {
        if !goodbye {
            // No disconnect command runs before a reset without Goodbye: the transfer is not
            // cancelled, RAM just goes (its resume state stays as last synced).
            self.ota.lose_ram();
        }
        self.teardown(
            now,
            DisconnectReason::Reset {
                reset_reason: reason,
                goodbye,
            },
            true,
        );
        self.ota.lose_ram();
        self.retained.reset_reason = Some(reason);
        self.power = Power::On;
        self.boot(now);
    }

    /// Starts a reset for `reason`: with graceful disconnects, a Goodbye first.
    fn begin_reset(&mut self, now: Duration, reason: u32) {
        if self.app.graceful_disconnect && self.start_goodbye(now, AfterClose::Reset(reason)) {
            return;
        }
        self.reset_now(now, reason, false);
    }

    /// Breaks one behaviour on purpose so a test can show the fixtures covering it fail
    /// ([`super::mutation`]); `None` restores Device OS's behaviour. Tests only.
    #[doc(hidden)]
    pub fn set_mutation(&mut self, mutation: Option<Mutation>) {
        self.mutation = mutation;
        self.ota
            .set_resume_sync(mutation != Some(Mutation::NoResumeStateSync));
    }

    /// `system_shutdown_if_needed`: a committed update resets when resets are enabled.
    fn shutdown_if_needed(&mut self, now: Duration) {
        let reset_enabled =
            self.flags.reset_enabled || self.mutation == Some(Mutation::ResetIgnoresDisabled);
        if self.power != Power::On || !self.flags.reset_pending || !reset_enabled {
            return;
        }
        if self.cloud.is_closing() {
            return;
        }
        self.events
            .push_back(DeviceEvent::SystemEvent(SystemEvent::Reset));
        self.begin_reset(now, self.pending_reset_reason);
    }

    /// `system_pending_shutdown(reason)`: flags the reset once and tells the application.
    fn pending_shutdown(&mut self, now: Duration, reason: u32) {
        if !self.flags.reset_pending {
            self.flags.reset_pending = true;
            self.pending_reset_reason = reason;
            self.events
                .push_back(DeviceEvent::SystemEvent(SystemEvent::ResetPending));
        }
        self.shutdown_if_needed(now);
    }

    // ----- the application's controls ----------------------------------------------------

    /// What the application does at boot, from the next boot on (a test application keeping
    /// its `setup()` choices in EEPROM, `boards/firmware/`).
    pub fn set_app_behaviour(&mut self, app: AppBehaviour) {
        self.app = app;
    }

    pub fn app_behaviour(&self) -> AppBehaviour {
        self.app
    }

    /// `System.disableUpdates()`.
    pub fn disable_updates(&mut self, now: Duration) {
        self.app_call(now, AppCall::SetUpdatesEnabled(false));
    }

    /// `System.enableUpdates()`.
    pub fn enable_updates(&mut self, now: Duration) {
        self.app_call(now, AppCall::SetUpdatesEnabled(true));
    }

    /// `System.disableReset()`.
    pub fn disable_reset(&mut self, now: Duration) {
        self.app_call(now, AppCall::SetResetEnabled(false));
    }

    /// `System.enableReset()`: a reset waiting for it happens now.
    pub fn enable_reset(&mut self, now: Duration) {
        self.app_call(now, AppCall::SetResetEnabled(true));
    }

    /// `System.reset()` (reset reason `user`): the bootloader applies any staged update.
    pub fn system_reset(&mut self, now: Duration) {
        self.app_call(now, AppCall::SystemReset);
    }

    /// `System.sleep(config)`. A running transfer is cancelled first; its resumable state is
    /// kept. A configuration Device OS refuses on this board ([`SleepConfig::refusal`]) is an
    /// error and the device keeps running. In single-threaded mode during a transfer the call
    /// waits for the transfer to end (and is checked then).
    pub fn sleep(&mut self, now: Duration, config: SleepConfig) -> Result<(), String> {
        if let Some(why) = config.refusal(self.device.board()) {
            self.log(format!("System.sleep refused: {why}"));
            return Err(why);
        }
        self.app_call(now, AppCall::Sleep(config));
        Ok(())
    }

    /// `Particle.connect()`: the system connects now (and after every disconnect).
    pub fn particle_connect(&mut self, now: Duration) {
        self.app_call(now, AppCall::Connect);
    }

    /// `Particle.disconnect()`: the connection ends (a running transfer is cancelled, its
    /// resumable state kept) and stays down until `Particle.connect()`.
    pub fn particle_disconnect(&mut self, now: Duration) {
        self.app_call(now, AppCall::Disconnect);
    }

    /// A graceful `Particle.disconnect()`: a Goodbye (reason "user") once the connection is
    /// up, the cloud's acknowledgement awaited (at most the disconnect timeout), then the
    /// connection stays down. Without a connection that is up, the same as
    /// [`DeviceOs::particle_disconnect`]. `hil device` does this on SIGTERM and Ctrl-C.
    pub fn disconnect_gracefully(&mut self, now: Duration) {
        if !self.start_goodbye(now, AfterClose::Disconnect) {
            self.particle_disconnect(now);
        }
    }

    /// `Particle.keepAlive(interval)`: the ping interval (reference 1.9) from now on.
    pub fn set_keepalive(&mut self, interval: Duration) {
        self.cloud.set_keepalive(interval);
    }

    /// Whether the device has no connection and is not trying to make one.
    pub fn is_disconnected(&self) -> bool {
        !self.cloud.is_open()
    }

    /// Wakes a sleeping device (a pin or another wake source).
    pub fn wake(&mut self, now: Duration) {
        if let Power::Sleeping {
            network_kept,
            hibernate,
            ..
        } = self.power
        {
            self.power = Power::On;
            self.events.push_back(DeviceEvent::Woke);
            if hibernate {
                // UNCONFIRMED: the reset reason after HIBERNATE is power management, and
                // retained RAM (the DTLS session) survives it.
                self.retained.reset_reason = Some(reset_reason::POWER_MANAGEMENT);
                self.boot(now);
                self.after(now);
                return;
            }
            if network_kept {
                let fx = self.cloud.force_ping(now);
                self.apply_cloud(now, fx);
            } else {
                self.connect(now);
            }
            self.after(now);
        }
    }

    fn app_call(&mut self, now: Duration, call: AppCall) {
        if self.power == Power::Off {
            self.log(format!("{call:?} ignored: the device is off"));
            return;
        }
        if !self.app_loop_runs() {
            self.deferred.push(call);
            return;
        }
        self.apply(now, call);
        self.after(now);
    }

    fn apply(&mut self, now: Duration, call: AppCall) {
        match call {
            AppCall::SetUpdatesEnabled(enabled) => {
                if self.flags.updates_enabled != enabled {
                    self.flags.updates_enabled = enabled;
                    self.publish(
                        now,
                        profile::event_name::UPDATES_ENABLED,
                        flag_data(enabled),
                    );
                }
            }
            AppCall::SetResetEnabled(enabled) => {
                self.flags.reset_enabled = enabled;
                if enabled {
                    self.shutdown_if_needed(now);
                }
            }
            AppCall::SystemReset => self.begin_reset(now, reset_reason::USER),
            AppCall::Sleep(config) => self.enter_sleep(now, config),
            AppCall::Connect => {
                self.cloud_wanted = true;
                self.connect(now);
            }
            AppCall::Disconnect => {
                self.cloud_wanted = false;
                self.cloud.cancel_reconnect();
                self.teardown(now, DisconnectReason::Requested, true);
            }
        }
    }

    fn enter_sleep(&mut self, now: Duration, config: SleepConfig) {
        if self.power != Power::On {
            return;
        }
        // system_sleep_ext_impl cancels the firmware update before anything else.
        self.ota_cancel(now);
        let network_kept = config.network != SleepNetwork::Off;
        let wake_at = config.duration.map(|d| now.saturating_add(d));
        self.events.push_back(DeviceEvent::Sleeping {
            duration: config.duration,
            network_kept,
        });
        let hibernate = config.mode == SleepMode::Hibernate;
        if network_kept {
            self.power = Power::Sleeping {
                wake_at,
                network_kept: true,
                wake_on_data: config.network == SleepNetwork::Standby,
                hibernate,
            };
            return;
        }
        if self.app.graceful_disconnect && self.start_goodbye(now, AfterClose::Sleep(config)) {
            return;
        }
        self.teardown(now, DisconnectReason::Sleep { goodbye: false }, true);
        self.cloud.cancel_reconnect();
        self.power = Power::Sleeping {
            wake_at,
            network_kept: false,
            wake_on_data: false,
            hibernate,
        };
    }

    /// Falls asleep after the Goodbye of a graceful sleep was acknowledged.
    fn sleep_after_goodbye(&mut self, now: Duration, config: SleepConfig) {
        self.teardown(now, DisconnectReason::Sleep { goodbye: true }, true);
        self.cloud.cancel_reconnect();
        self.power = Power::Sleeping {
            wake_at: config.duration.map(|d| now.saturating_add(d)),
            network_kept: false,
            wake_on_data: false,
            hibernate: config.mode == SleepMode::Hibernate,
        };
    }

    // ----- the driver's interface --------------------------------------------------------

    /// Takes a datagram from the server.
    pub fn handle_datagram(&mut self, now: Duration, datagram: &[u8]) {
        match self.power {
            Power::Off
            | Power::Sleeping {
                network_kept: false,
                ..
            } => return,
            Power::Sleeping {
                wake_on_data: false,
                ..
            } => return,
            Power::Sleeping {
                wake_on_data: true, ..
            } => self.wake(now),
            Power::On => {}
        }
        self.cloud_datagram(now, datagram);
        self.after(now);
    }

    /// Lets every timer due at `now` fire.
    pub fn handle_timeout(&mut self, now: Duration) {
        match self.power {
            Power::Off => return,
            Power::Sleeping { wake_at, .. } => {
                if wake_at.is_some_and(|t| now >= t) {
                    self.wake(now);
                }
                return;
            }
            Power::On => {}
        }
        if self.cloud.take_due_reconnect(now) {
            self.connect(now);
        }
        self.cloud_timeout(now);
        self.ota_timeout(now);
        self.after(now);
    }

    /// The next datagram for the server.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.cloud.poll_transmit()
    }

    /// When [`DeviceOs::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Duration> {
        match self.power {
            Power::Off => None,
            Power::Sleeping { wake_at, .. } => wake_at,
            Power::On => [
                self.cloud.poll_timeout(self.ota.is_running()),
                self.ota.poll_timeout(),
                match self.setup {
                    SetupState::Due(at) if !self.ota.is_running() => Some(at),
                    _ => None,
                },
            ]
            .into_iter()
            .flatten()
            .min(),
        }
    }

    /// Bumped whenever Device OS opens a new UDP socket (each connection attempt): a real-UDP
    /// driver rebinds so that the cloud sees a new source port.
    pub fn socket_generation(&self) -> u32 {
        self.cloud.socket_generation()
    }

    /// The next entry of the device's trace.
    pub fn poll_event(&mut self) -> Option<DeviceEvent> {
        self.events.pop_front()
    }

    /// The CONs the device sent to the cloud and has no ACK for yet (what it is retrying).
    pub fn unacknowledged_cons(&self) -> Vec<protocol::coap::UnacknowledgedCon<'_>> {
        self.cloud.unacknowledged_cons()
    }

    /// A snapshot of the device.
    pub fn status(&self) -> DeviceStatus {
        DeviceStatus {
            powered: self.power != Power::Off,
            sleeping: matches!(self.power, Power::Sleeping { .. }),
            connected: self.cloud.is_connected(),
            safe_mode: matches!(self.boot_state, Some(BootState::SafeMode(_))),
            boot_state: self.boot_state.clone(),
            versions: self.system.as_ref().map(|s| s.versions).unwrap_or_default(),
            flags: self.flags,
            update_status: self.update_status(),
            ota: self.ota.progress(),
            has_session: self.retained.session.is_some(),
            socket_generation: self.cloud.socket_generation(),
            malformed: self.malformed,
        }
    }

    /// The device's flash and store.
    /// The system describe this boot reports (None while off or unbootable).
    pub fn system_describe(&self) -> Option<&protocol::message::SystemDescribe> {
        self.system.as_ref().map(|s| &s.describe)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The device's flash and store, e.g. to schedule a power cut at a flash operation.
    pub fn device_mut(&mut self) -> &mut Device {
        &mut self.device
    }

    /// The device's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// `System.updateStatus()`.
    pub fn update_status(&self) -> UpdateStatus {
        if self.ota.is_running() {
            UpdateStatus::InProgress
        } else if !self.pending_event_received {
            UpdateStatus::Unknown
        } else if self.flags.updates_pending {
            UpdateStatus::Pending
        } else {
            UpdateStatus::NotAvailable
        }
    }

    // ----- the cloud connection ----------------------------------------------------------

    /// The connection and what it reads of the rest of the device, borrowed side by side.
    fn cloud_and_view(&mut self) -> (&mut CloudConnection, DeviceView<'_>) {
        (
            &mut self.cloud,
            DeviceView {
                identity: &self.identity,
                system: self.system.as_ref(),
                retained: &mut self.retained,
            },
        )
    }

    /// Opens a new socket when the system runs, is on and the application wants the cloud.
    fn connect(&mut self, now: Duration) {
        if self.cloud.is_open()
            || self.power != Power::On
            || self.system.is_none()
            || !self.cloud_wanted
        {
            return;
        }
        let dtls_seed = self.next_seed();
        let coap_seed = self.next_seed();
        let (cloud, view) = self.cloud_and_view();
        let fx = cloud.open(now, view, dtls_seed, coap_seed);
        self.apply_cloud(now, fx);
        self.process_link(now);
    }

    /// Ends the connection (see [`CloudConnection::close`]) and cancels a running transfer
    /// (resumable). Returns whether the connection had not come up yet.
    fn teardown(&mut self, now: Duration, reason: DisconnectReason, keep_session: bool) -> bool {
        let Some((failed, fx)) = self.cloud.close(reason, keep_session, &mut self.retained) else {
            return false;
        };
        self.apply_cloud(now, fx);
        self.ota_cancel(now);
        failed
    }

    /// A connection error: tear down and reconnect, at once after a connection that was up,
    /// after the back-off when the handshake failed (`cloud_connection_failed`).
    fn connection_error(&mut self, now: Duration, reason: DisconnectReason, keep_session: bool) {
        let failed = self.teardown(now, reason, keep_session);
        if self.power == Power::On {
            self.cloud.schedule_reconnect(now, failed);
        }
    }

    /// A datagram for the connection.
    fn cloud_datagram(&mut self, now: Duration, datagram: &[u8]) {
        if self.cloud.handle_datagram(now, datagram) {
            self.process_link(now);
        }
    }

    /// The connection's timers: the link's, the pinger, the end of a graceful disconnect.
    fn cloud_timeout(&mut self, now: Duration) {
        self.cloud.handle_link_timeout(now);
        self.process_link(now);
        let fx = self.cloud.handle_timeout(now, self.ota.is_running());
        self.apply_cloud(now, fx);
        self.check_closing(now);
    }

    /// Handles everything the link has to say, until it is quiet.
    fn process_link(&mut self, now: Duration) {
        // Handling an event may end this connection and even start the next one (a reset
        // after a commit): the rest of this socket's events are then lost with it.
        let generation = self.cloud.socket_generation();
        loop {
            let Some(events) = self.cloud.poll_link(now) else {
                return;
            };
            if events.is_empty() {
                break;
            }
            for event in events {
                if !self.cloud.is_open() || self.cloud.socket_generation() != generation {
                    return;
                }
                let (cloud, view) = self.cloud_and_view();
                let fx = cloud.on_link_event(now, event, view);
                self.apply_cloud(now, fx);
            }
        }
        self.check_connected(now);
        self.check_closing(now);
    }

    fn check_connected(&mut self, now: Duration) {
        let fx = self.cloud.check_connected();
        self.apply_cloud(now, fx);
    }

    fn check_closing(&mut self, now: Duration) {
        let fx = self.cloud.check_closing(now);
        self.apply_cloud(now, fx);
    }

    /// Does what the connection asked, in order.
    fn apply_cloud(&mut self, now: Duration, effects: Vec<CloudEffect>) {
        for effect in effects {
            match effect {
                CloudEffect::Trace(event) => self.events.push_back(event),
                CloudEffect::Malformed => self.malformed += 1,
                CloudEffect::Lost {
                    reason,
                    keep_session,
                } => self.connection_error(now, reason, keep_session),
                CloudEffect::SystemEvents => self.publish_system_state(now),
                CloudEffect::Connected { resumed } => {
                    self.events.push_back(DeviceEvent::Connected { resumed });
                    // The first boot of new firmware ends with its first connection.
                    if self.device.flash().activity() == Activity::FirstBoot {
                        self.device.set_activity(Activity::Other);
                    }
                    self.on_cloud_connected(now);
                }
                CloudEffect::Event(event) => self.on_cloud_event(now, event),
                CloudEffect::OtaRequest {
                    request,
                    message,
                    parsed,
                } => self.ota_request(now, request, message, parsed),
                CloudEffect::OtaAnswered(response) => {
                    self.ota_answered(now, response);
                    self.check_connected(now);
                }
                CloudEffect::Closed(then) => match then {
                    AfterClose::Reset(reason) => self.reset_now(now, reason, true),
                    AfterClose::Sleep(config) => self.sleep_after_goodbye(now, config),
                    AfterClose::Disconnect => {
                        self.cloud_wanted = false;
                        self.cloud.cancel_reconnect();
                        self.teardown(now, DisconnectReason::Requested, true);
                    }
                },
            }
        }
    }

    /// The system's part of `Spark_Handshake`: `spark/device/safemode` (safe mode only),
    /// `spark/device/last_reset` (once per boot), both update flags (always); then the
    /// application state and the check that the connection is up.
    fn publish_system_state(&mut self, now: Duration) {
        if self.system.as_ref().is_some_and(|s| s.safe_mode) {
            self.publish(now, event_name::SAFE_MODE, "");
        }
        if !self.last_reset_published {
            self.last_reset_published = true;
            if self.reset_reason != reset_reason::NONE {
                let name = reset_reason::name(self.reset_reason);
                self.publish(now, event_name::LAST_RESET, &name);
            }
        }
        // Send_Firmware_Update_Flags: both flags, at every connection.
        self.publish(
            now,
            event_name::UPDATES_ENABLED,
            flag_data(self.flags.updates_enabled),
        );
        self.publish(
            now,
            event_name::UPDATES_FORCED,
            flag_data(self.flags.updates_forced),
        );
        let (cloud, view) = self.cloud_and_view();
        let fx = cloud.send_app_state(now, view);
        self.apply_cloud(now, fx);
        self.check_connected(now);
    }

    /// Publishes an event if the connection is up far enough (`spark_send_event` with ASYNC).
    fn publish(&mut self, now: Duration, name: &str, data: &str) {
        let fx = self.cloud.publish(now, name, data);
        self.apply_cloud(now, fx);
    }

    /// An empty ACK for a CON request.
    fn accept(&mut self, now: Duration, request: &IncomingRequest) {
        let fx = self.cloud.accept(now, request);
        self.apply_cloud(now, fx);
    }

    /// Answers a request; see [`CloudConnection::respond`].
    fn respond(
        &mut self,
        now: Duration,
        request: &IncomingRequest,
        message: Message,
        ota: Option<OtaResponse>,
    ) {
        let fx = self.cloud.respond(now, request, message, ota);
        self.apply_cloud(now, fx);
    }

    /// RST for a request.
    fn reject(&mut self, now: Duration, request: &IncomingRequest) {
        let fx = self.cloud.reject(now, request);
        self.apply_cloud(now, fx);
    }

    /// Starts a graceful disconnect: whether there was a connection to close so.
    fn start_goodbye(&mut self, now: Duration, then: AfterClose) -> bool {
        let started = match then {
            AfterClose::Reset(reason) => self.cloud.start_goodbye_reset(now, reason),
            AfterClose::Sleep(config) => self.cloud.start_goodbye_sleep(now, config),
            AfterClose::Disconnect => self.cloud.start_goodbye_disconnect(now),
        };
        match started {
            Some(fx) => {
                self.apply_cloud(now, fx);
                true
            }
            None => false,
        }
    }

    /// An event from the cloud: the system handler reads the update control events
    /// (reference 3, `systemEventHandler`).
    fn on_cloud_event(&mut self, now: Duration, event: Event) {
        self.events.push_back(DeviceEvent::Received {
            name: event.name.clone(),
            data: String::from_utf8_lossy(&event.data).into_owned(),
        });
        let Some(kind) = update_control_event(&event.name) else {
            return;
        };
        let value = data_to_flag(&event.data);
        match kind {
            UpdateControlEvent::Forced => {
                if self.flags.updates_forced != value {
                    self.flags.updates_forced = value;
                    // Acknowledged by echoing the new value.
                    self.publish(now, event_name::UPDATES_FORCED, flag_data(value));
                }
            }
            UpdateControlEvent::Pending => {
                let before = self.update_status();
                self.pending_event_received = true;
                let was = self.flags.updates_pending;
                self.flags.updates_pending = value;
                if value && !was {
                    self.events
                        .push_back(DeviceEvent::SystemEvent(SystemEvent::FirmwareUpdatePending));
                }
                let after = self.update_status();
                if after != before {
                    self.events.push_back(DeviceEvent::SystemEvent(
                        SystemEvent::FirmwareUpdateStatus(after),
                    ));
                }
            }
        }
    }

    // ----- the OTA link ------------------------------------------------------------------

    /// An OTA request (`S`, `C` or `F`) from the cloud.
    fn ota_request(
        &mut self,
        now: Duration,
        request: IncomingRequest,
        message: Message,
        parsed: Result<Body, CatalogueError>,
    ) {
        let chunk = matches!(parsed, Ok(Body::UpdateChunk(_)));
        let allowed =
            self.flags.updates_allowed() || self.mutation == Some(Mutation::IgnoreUpdatesDisabled);
        let fx = self
            .ota
            .request(now, &mut self.device, &request, &message, parsed, allowed);
        self.apply_ota(now, Some(&request), fx);
        if chunk {
            // The UpdateAcks a chunk made due, after what the chunk did to the connection.
            let fx = self.ota.poll(now, &self.device, false);
            self.apply_ota(now, None, fx);
        }
        let fx = self.ota.events();
        self.apply_ota(now, None, fx);
    }

    /// The cloud acknowledged an OTA response of the device.
    fn ota_answered(&mut self, now: Duration, response: OtaResponse) {
        let fx = self.ota.answered(&mut self.device, response);
        self.apply_ota(now, None, fx);
    }

    /// Any disconnect, sleep or reset: a running transfer is cancelled, its resumable state
    /// kept.
    fn ota_cancel(&mut self, now: Duration) {
        let fx = self.ota.cancel(&mut self.device);
        self.apply_ota(now, None, fx);
    }

    /// The OTA receiver's timers.
    fn ota_timeout(&mut self, now: Duration) {
        let fx = self.ota.handle_timeout(now, &mut self.device);
        self.apply_ota(now, None, fx);
    }

    /// After every entry point: UpdateAcks that became due, events to report.
    fn ota_poll(&mut self, now: Duration) {
        let fx = self.ota.poll(now, &self.device, true);
        self.apply_ota(now, None, fx);
    }

    /// Does what the OTA link asked, in order; `request` is the request it answered.
    fn apply_ota(
        &mut self,
        now: Duration,
        request: Option<&IncomingRequest>,
        effects: Vec<OtaEffect>,
    ) {
        for effect in effects {
            match effect {
                OtaEffect::Trace(event) => self.events.push_back(event),
                OtaEffect::Malformed => self.malformed += 1,
                OtaEffect::Accept => {
                    if let Some(request) = request {
                        self.accept(now, request);
                    }
                }
                OtaEffect::Respond { message, kind } => {
                    if let Some(request) = request {
                        self.respond(now, request, message, kind);
                    }
                }
                OtaEffect::Reject => {
                    if let Some(request) = request {
                        self.reject(now, request);
                    }
                }
                OtaEffect::SendAck(ack) => {
                    let fx = self.cloud.send_update_ack(now, ack);
                    self.apply_cloud(now, fx);
                }
                OtaEffect::Started => self.flags.updates_pending = false,
                OtaEffect::Committed => self.pending_shutdown(now, reset_reason::UPDATE),
                OtaEffect::Disconnect(reason) => self.connection_error(now, reason, true),
            }
        }
    }

    // ----- housekeeping ------------------------------------------------------------------

    /// After every entry point: collect what the link produced, let the OTA receiver speak,
    /// run deferred application calls, and notice a power loss the flash scheduled.
    fn after(&mut self, now: Duration) {
        for _ in 0..8 {
            if self.power != Power::Off && self.device.flash().power_lost() {
                self.lose_power(now);
                return;
            }
            self.ota_poll(now);
            self.cloud.drain_link();
            if self.power == Power::On && self.setup_due(now) {
                self.run_setup(now);
                continue;
            }
            if !self.deferred.is_empty() && self.app_loop_runs() {
                for call in std::mem::take(&mut self.deferred) {
                    self.apply(now, call);
                }
                continue;
            }
            break;
        }
        if self.power != Power::Off && self.device.flash().power_lost() {
            self.lose_power(now);
        }
    }

    /// A seed for a new component's RNG.
    fn next_seed(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn log(&mut self, line: impl Into<String>) {
        self.events.push_back(DeviceEvent::Log(line.into()));
    }
}
