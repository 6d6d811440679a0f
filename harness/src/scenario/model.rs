//! The typed form of a scenario file: set-up, steps and expectations (format in
//! `fixtures/README.md`). Every step and expectation knows the target [`Capability`]s it needs
//! and prints itself in one canonical line, used in traces and failure reports.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use emulator::firmware::Versions;
use emulator::flash::CutMode;

/// The seed of a scenario that names none (and is not given one on the command line).
pub const DEFAULT_SEED: u64 = 1;

/// One scenario file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The file as the user named it (used in every message).
    pub file: PathBuf,
    pub name: String,
    pub description: Option<String>,
    /// The file's seed; the command line's `--seed` overrides it.
    pub seed: Option<u64>,
    pub setup: Setup,
    pub steps: Vec<StepAt>,
    /// Checked after the last step.
    pub expect: Vec<Expectation>,
    /// The `[report]` table of a field-bug reproduction, kept as written (key, TOML text).
    pub report: Vec<(String, String)>,
}

impl Scenario {
    /// The seed a run uses: the override, else the file's, else [`DEFAULT_SEED`].
    pub fn seed(&self, seed_override: Option<u64>) -> u64 {
        seed_override.or(self.seed).unwrap_or(DEFAULT_SEED)
    }

    /// The sweep step, if the scenario has one (at most one; the parser enforces it).
    pub fn sweep(&self) -> Option<(&StepAt, &Sweep)> {
        self.steps.iter().find_map(|s| match &s.step {
            Step::Sweep(sweep) => Some((s, sweep)),
            _ => None,
        })
    }
}

/// Something a target can do or observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// Build and install the initial firmware at given versions.
    InstallFirmware,
    /// Ask the cloud to flash a file to the device.
    CloudFlash,
    /// Set the cloud's "updates forced" for the device.
    CloudForceUpdates,
    /// Products: upload, release, lock, groups, development devices.
    CloudProducts,
    /// Several devices in one scenario, one cloud.
    SeveralDevices,
    /// Cut power now and restore it.
    PowerControl,
    /// Cut power at a numbered flash operation (or one of a phase), before/torn/after.
    PowerCutAtFlashOp,
    /// Cut power when a given OTA chunk is written.
    PowerCutAtChunk,
    /// Drive the application: update and reset controls, `System.reset`.
    AppControl,
    /// Put the application to sleep and wake it.
    Sleep,
    /// Loss, duplication and reordering rates; dropping the next N datagrams.
    LinkFaults,
    /// Partition the link for a duration.
    LinkPartition,
    /// Time is simulated: waits cost no wall time, so hundreds of sweep cases are cheap.
    VirtualTime,
    /// The cloud's event stream.
    ObserveEvents,
    /// Power, connection, safe mode, last reset reason.
    ObserveState,
    /// The running firmware's versions.
    ObserveVersions,
    /// Device OS system flags (updates enabled / pending / forced, reset enabled / pending).
    ObserveFlags,
    /// The OTA transfer's state and progress.
    ObserveOta,
    /// Read the flash to check that nothing was lost.
    FlashInspection,
    /// Count the device's completed boots (a wait for the next boot).
    ObserveBoots,
    /// Whether the device's connection resumed its DTLS session or made a full handshake.
    ObserveSession,
    /// Reset the device as its RESET pin or a watchdog does (no application involved).
    HardwareReset,
    /// Read the CoAP messages inside the link's DTLS datagrams: drop the next one of a kind.
    LinkMessages,
    /// Make a flash write or erase of a phase fail with an I/O error.
    FlashFaults,
}

impl Capability {
    pub const ALL: [Capability; 24] = [
        Capability::SeveralDevices,
        Capability::InstallFirmware,
        Capability::CloudFlash,
        Capability::CloudForceUpdates,
        Capability::CloudProducts,
        Capability::PowerControl,
        Capability::PowerCutAtFlashOp,
        Capability::PowerCutAtChunk,
        Capability::AppControl,
        Capability::Sleep,
        Capability::LinkFaults,
        Capability::LinkPartition,
        Capability::VirtualTime,
        Capability::ObserveEvents,
        Capability::ObserveState,
        Capability::ObserveVersions,
        Capability::ObserveFlags,
        Capability::ObserveOta,
        Capability::FlashInspection,
        Capability::ObserveBoots,
        Capability::ObserveSession,
        Capability::HardwareReset,
        Capability::LinkMessages,
        Capability::FlashFaults,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::InstallFirmware => "install-firmware",
            Capability::CloudFlash => "cloud-flash",
            Capability::CloudForceUpdates => "cloud-force-updates",
            Capability::CloudProducts => "cloud-products",
            Capability::SeveralDevices => "several-devices",
            Capability::PowerControl => "power-control",
            Capability::PowerCutAtFlashOp => "power-cut-at-flash-op",
            Capability::PowerCutAtChunk => "power-cut-at-chunk",
            Capability::AppControl => "app-control",
            Capability::Sleep => "sleep",
            Capability::LinkFaults => "link-faults",
            Capability::LinkPartition => "link-partition",
            Capability::VirtualTime => "virtual-time",
            Capability::ObserveEvents => "observe-events",
            Capability::ObserveState => "observe-state",
            Capability::ObserveVersions => "observe-versions",
            Capability::ObserveFlags => "observe-flags",
            Capability::ObserveOta => "observe-ota",
            Capability::FlashInspection => "flash-inspection",
            Capability::ObserveBoots => "observe-boots",
            Capability::ObserveSession => "observe-session",
            Capability::HardwareReset => "hardware-reset",
            Capability::LinkMessages => "link-messages",
            Capability::FlashFaults => "flash-faults",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Versions of the firmware a device runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningVersions {
    pub device_os: DeviceOsVersion,
    /// Product version of the application (`PRODUCT_VERSION`).
    pub app: u16,
    pub bootloader: u16,
}

/// What exists before the first step.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    /// A built-in board name (`hil boards`).
    pub board: String,
    pub firmware: InitialFirmware,
    pub app: AppBehaviour,
    pub cloud: CloudSetup,
}

impl Setup {
    /// Capabilities a target needs to establish this set-up.
    pub fn capabilities(&self) -> Vec<Capability> {
        let mut caps = vec![Capability::InstallFirmware];
        if self.app != AppBehaviour::default() {
            caps.push(Capability::AppControl);
        }
        if self.cloud.devices.iter().any(|d| d.updates_forced) {
            caps.push(Capability::CloudForceUpdates);
        }
        if self.cloud.devices.len() > 1 {
            caps.push(Capability::SeveralDevices);
        }
        if self.cloud.product.is_some() || !self.cloud.device_os.is_empty() {
            caps.push(Capability::CloudProducts);
        }
        caps
    }
}

/// A Device OS version as a module version number (6.2.0 = 6200).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeviceOsVersion(pub u16);

impl DeviceOsVersion {
    /// Parses `major.minor.patch` (minor < 10, patch < 100, as module versions encode them).
    pub fn parse(text: &str) -> Option<DeviceOsVersion> {
        let mut parts = text.split('.');
        let major: u16 = parts.next()?.parse().ok()?;
        let minor: u16 = parts.next()?.parse().ok()?;
        let patch: u16 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || minor >= 10 || patch >= 100 || major >= 65 {
            return None;
        }
        Some(DeviceOsVersion(major * 1000 + minor * 100 + patch))
    }
}

impl fmt::Display for DeviceOsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(f, "{}.{}.{}", v / 1000, (v / 100) % 10, v % 100)
    }
}

/// The firmware installed before the first step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitialFirmware {
    pub device_os: DeviceOsVersion,
    /// The application's product version (`PRODUCT_VERSION(n)`).
    pub app: u16,
    /// The user part's module version.
    pub app_module: u16,
    /// Default: the bootloader the Device OS release ships
    /// ([`emulator::firmware::device_os_release`]), else the baseline's.
    pub bootloader: u16,
    /// The radio stack (SoftDevice) module version on nRF52840 boards.
    pub radio_stack: u16,
    /// Size of the installed user part in bytes (default: the target's firmware set's).
    pub app_size: Option<u32>,
}

impl Default for InitialFirmware {
    fn default() -> Self {
        let b = Versions::BASELINE;
        InitialFirmware {
            device_os: DeviceOsVersion(b.system_part),
            app: b.product_version,
            app_module: b.user_part,
            bootloader: b.bootloader,
            radio_stack: b.radio_stack,
            app_size: None,
        }
    }
}

impl InitialFirmware {
    /// A device on Device OS `device_os` with the bootloader and radio stack that release
    /// installs (the baseline's for a release the table does not know).
    pub fn release(device_os: DeviceOsVersion) -> InitialFirmware {
        let r = Versions::release(device_os.0).unwrap_or(Versions::BASELINE);
        InitialFirmware {
            device_os,
            bootloader: r.bootloader,
            radio_stack: r.radio_stack,
            ..InitialFirmware::default()
        }
    }

    /// The module versions the emulator's firmware set builds: the system part depends on the
    /// bootloader its release requires (on the set's own bootloader for an unknown release).
    pub fn versions(&self) -> Versions {
        Versions {
            bootloader: self.bootloader,
            system_part: self.device_os.0,
            user_part: self.app_module,
            product_version: self.app,
            radio_stack: self.radio_stack,
            bootloader_dependency: Versions::release(self.device_os.0)
                .and_then(|r| r.bootloader_dependency),
        }
    }
}

/// How the application behaves from boot (reference: particle-cloud-api.md 5.1-5.4): the
/// scenario's `[app]` table is the emulator's own model of it, one type for both.
pub use emulator::os::AppBehaviour;

/// The part of the application a call is made from, named in scenario files by these words.
pub use emulator::os::AppStage;

pub const APP_STAGE_WORDS: [(&str, AppStage); 2] =
    [("startup", AppStage::Startup), ("setup", AppStage::Setup)];

/// The emulated Device OS's `System.onAssetOta` hook, named in scenario files by these words.
pub use emulator::os::AssetOtaHook;

pub const ASSET_OTA_WORDS: [(&str, AssetOtaHook); 3] = [
    ("none", AssetOtaHook::None),
    ("handles", AssetOtaHook::Handles),
    ("leaves_unhandled", AssetOtaHook::LeavesUnhandled),
];

/// The CoAP message kinds `link.drop_next` names (`MessageKind::WORDS`).
pub use crate::message_kind::MessageKind;

/// `SYSTEM_MODE(...)`, `SystemSleepMode` and the sleep network: the emulated Device OS's own
/// types, named in scenario files by these words.
pub use emulator::os::{SleepMode, SleepNetwork, SystemMode};

pub const SYSTEM_MODE_WORDS: [(&str, SystemMode); 3] = [
    ("automatic", SystemMode::Automatic),
    ("semi_automatic", SystemMode::SemiAutomatic),
    ("manual", SystemMode::Manual),
];

pub const SLEEP_MODE_WORDS: [(&str, SleepMode); 3] = [
    ("stop", SleepMode::Stop),
    ("ultra_low_power", SleepMode::UltraLowPower),
    ("hibernate", SleepMode::Hibernate),
];

pub const SLEEP_NETWORK_WORDS: [(&str, SleepNetwork); 3] = [
    ("off", SleepNetwork::Off),
    ("standby", SleepNetwork::Standby),
    ("inactive_standby", SleepNetwork::InactiveStandby),
];

/// The local cloud before the first step. Products, releases and groups come with the fleet
/// issue; the parser refuses them with a clear message until then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudSetup {
    /// Exactly one today: the device under test.
    pub devices: Vec<CloudDevice>,
    /// What the cloud does with a transfer the device drops (offline mid-transfer).
    pub interrupted_transfer: Interrupted,
    /// The device is in a product (`[cloud.product]`).
    pub product: Option<ProductSetup>,
    /// Device OS versions whose modules (system part, and the bootloader it needs) the cloud
    /// holds for safe-mode healing (`[cloud] device_os = ["6.2.0"]`).
    pub device_os: Vec<DeviceOsVersion>,
}

/// `[cloud.product]`: the device under test is a product device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductSetup {
    pub id: u32,
    pub groups: Vec<String>,
    pub development: bool,
}

pub use crate::cloud::Interrupted;

pub const INTERRUPTED_WORDS: [(&str, Interrupted); 2] =
    [("retry", Interrupted::Retry), ("fail", Interrupted::Fail)];

impl Default for CloudSetup {
    fn default() -> Self {
        CloudSetup {
            devices: vec![CloudDevice::default()],
            interrupted_transfer: Interrupted::Retry,
            product: None,
            device_os: Vec::new(),
        }
    }
}

/// A device the cloud knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudDevice {
    pub name: String,
    /// 24 lowercase hex characters; derived from the seed when absent.
    pub id: Option<String>,
    /// The cloud forces updates for this device from the start (`updates/forced` = true).
    pub updates_forced: bool,
    /// This device's app version instead of `[firmware] app`.
    pub app: Option<u16>,
    /// This device's `[app] updates_enabled` (a busy device).
    pub updates_enabled: Option<bool>,
    /// This device's groups and development flag in `[cloud.product]` (instead of the
    /// product's defaults).
    pub groups: Option<Vec<String>>,
    pub development: Option<bool>,
}

impl Default for CloudDevice {
    fn default() -> Self {
        CloudDevice {
            name: "dut".into(),
            id: None,
            updates_forced: false,
            app: None,
            updates_enabled: None,
            groups: None,
            development: None,
        }
    }
}

/// Most devices a scenario may declare.
pub const MAX_SCENARIO_DEVICES: usize = 16;

/// A step with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct StepAt {
    /// 1-based position in the scenario's step list.
    pub index: usize,
    /// Line and column of the step in its file.
    pub line: usize,
    pub column: usize,
    pub step: Step,
    /// The device the step is for (`device = "name"`, a `[[cloud.device]]`); `None`: the
    /// first device. A `wait.event` with a device matches only that device's events.
    pub device: Option<String>,
}

/// One step of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Something the target does (cloud, power, application, link).
    Action(Action),
    Wait(Wait),
    /// Checks at this point; several may share a step.
    Expect(Vec<Expectation>),
    /// Cut power at every flash operation of a phase: expands into one case per cut point.
    Sweep(Sweep),
    /// Inner steps run again and again: a number of times, or until a condition holds
    /// (checked before each iteration, at most `max` iterations).
    Repeat(Repeat),
}

/// `do = "repeat"`: a bounded loop over inner steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Repeat {
    pub count: RepeatCount,
    /// The inner steps (never a sweep or another repeat).
    pub steps: Vec<StepAt>,
}

/// Why the hardware reset the device (`device.reset reason = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HardwareReset {
    /// The RESET pin (`last_reset` = `pin_reset`).
    Pin,
    /// A hardware watchdog expired (`last_reset` = `watchdog`).
    Watchdog,
}

impl HardwareReset {
    pub const WORDS: [(&'static str, HardwareReset); 2] = [
        ("pin", HardwareReset::Pin),
        ("watchdog", HardwareReset::Watchdog),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HardwareReset::Pin => "pin",
            HardwareReset::Watchdog => "watchdog",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RepeatCount {
    /// Exactly this many iterations.
    Times(u32),
    /// Until every expectation holds, checked before each iteration; the step fails if it
    /// still does not hold after `max` iterations.
    Until {
        condition: Vec<Expectation>,
        max: u32,
    },
}

/// The most iterations a `repeat` may ask for (a loop is bounded, and a typo like
/// `times = 1000000` is a mistake, not a plan).
pub const MAX_REPEAT: u32 = 10_000;

impl Step {
    /// The step kind as written after `do =` (declared in `steps.rs`).
    pub fn kind(&self) -> &'static str {
        super::steps::kind(self)
    }

    /// Capabilities the target needs for the step as a whole (for `expect`, see each
    /// expectation instead: they are checked or skipped one by one).
    pub fn capabilities(&self) -> Vec<Capability> {
        super::steps::capabilities(self)
    }
}

/// Everything a target is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The cloud flashes the device with a file built from the spec (single-device OTA).
    CloudFlash(FirmwareSpec),
    /// The cloud sets or clears "updates forced" for the device.
    CloudForceUpdates {
        forced: bool,
    },
    PowerCut(PowerCut),
    PowerOn,
    /// A reset the application has no say in (works in safe mode too).
    HardwareReset(HardwareReset),
    /// A flash write or erase of a phase fails with an I/O error.
    FlashFail(FlashFail),
    App(AppAction),
    Link(LinkAction),
    /// The device's product (reference `particle-cloud-api.md` 2.2-2.3, 4.2-4.5).
    Product(ProductAction),
}

/// What a scenario does to the device's product in the cloud.
#[derive(Debug, Clone, PartialEq)]
pub enum ProductAction {
    /// Upload product firmware: the app at `firmware.app` (its version), built as `cloud.flash`
    /// builds files.
    Upload(FirmwareSpec),
    /// Release a version to the product default and/or groups.
    Release {
        version: u16,
        product_default: bool,
        groups: Vec<String>,
        intelligent: bool,
    },
    /// Lock the device to a version (with "flash now" or not).
    Lock {
        version: u16,
        flash_now: bool,
    },
    Unlock,
    /// The device's groups.
    Groups(Vec<String>),
    /// Mark or unmark the device as a development device.
    Development(bool),
    /// Several product-device settings at once (`cloud.product`).
    Settings {
        development: Option<bool>,
        groups: Option<Vec<String>>,
        updates_forced: Option<bool>,
    },
}

/// What file the cloud flashes, built with the module builder for the scenario's board.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FirmwareSpec {
    /// A user part with this product version.
    pub app: Option<u16>,
    /// A system part at this Device OS version.
    pub device_os: Option<DeviceOsVersion>,
    /// A bootloader at this module version.
    pub bootloader: Option<u16>,
    /// A radio stack (SoftDevice, module 8/0) at this module version (nRF52840 boards).
    pub radio_stack: Option<u16>,
    /// The Device OS the app was compiled against: the user part's dependency names this
    /// system part version instead of the one the file carries or the device runs (an app built
    /// for a newer Device OS than the device has). Needs `app`.
    pub built_against: Option<DeviceOsVersion>,
    /// Compress the module(s) (reference 4.5).
    pub compressed: bool,
    /// Send the modules as one combined file (reference 4.6); needs two modules.
    pub combined: bool,
    /// Build for this other built-in board instead (a module for the wrong platform).
    pub platform: Option<String>,
    /// Damage the file after building it.
    pub corrupt: Option<Corruption>,
    /// Size of the user part in bytes (default: the firmware set's).
    pub size: Option<u32>,
    /// Make the file an asset bundle (reference 6.1): the app with one dependency per asset.
    /// Needs `app`, uncompressed and not combined.
    pub assets: Vec<AssetSpec>,
}

/// One asset of a bundle a scenario flashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetSpec {
    pub name: String,
    pub size: u32,
    pub content: AssetContent,
    /// The bundle carries other bytes than the app's dependency names (one byte flipped after
    /// the app was made): a bundle the cloud must refuse.
    pub mismatch: bool,
}

/// What an asset's bytes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssetContent {
    /// Repeated text: deflates well, travels compressed.
    Text,
    /// Seeded noise: does not deflate, travels as a plain asset module.
    Noise,
}

impl AssetContent {
    pub const WORDS: [(&'static str, AssetContent); 2] =
        [("text", AssetContent::Text), ("noise", AssetContent::Noise)];
}

/// How a built file is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// One byte of the first module's body flipped: the module CRC no longer matches.
    Crc,
    /// The last quarter of the file cut off.
    Truncated,
}

impl Corruption {
    pub const WORDS: [(&'static str, Corruption); 2] = [
        ("crc", Corruption::Crc),
        ("truncated", Corruption::Truncated),
    ];
}

/// A flash operation that fails with an I/O error (`flash.fail`): the `op`-th (0-based)
/// operation of the next occurrence of `phase`, counting only operations of `kind` if given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashFail {
    pub phase: FailPhase,
    pub op: u64,
    pub kind: Option<emulator::flash::OpKind>,
}

/// Where a `flash.fail` aims: a phase of the update, or a part of one that power cuts and
/// sweeps do not count separately (the asset store is within the commit, the bootloader's
/// copy of itself within the apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailPhase {
    Phase(Phase),
    /// An asset module written to the asset file system at the commit.
    AssetStore,
    /// The bootloader's update of itself in the apply: the user-app backup, the staged
    /// bootloader, the MBR's copy record and copy.
    BootloaderCopy,
}

impl FailPhase {
    pub const WORDS: [(&'static str, FailPhase); 6] = [
        ("download", FailPhase::Phase(Phase::Download)),
        ("commit", FailPhase::Phase(Phase::Commit)),
        ("apply", FailPhase::Phase(Phase::Apply)),
        ("first_boot", FailPhase::Phase(Phase::FirstBoot)),
        ("asset_store", FailPhase::AssetStore),
        ("bootloader_copy", FailPhase::BootloaderCopy),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailPhase::Phase(p) => p.as_str(),
            FailPhase::AssetStore => "asset_store",
            FailPhase::BootloaderCopy => "bootloader_copy",
        }
    }
}

/// `kind = "write"|"erase"` of `flash.fail`.
pub const FLASH_OP_KIND_WORDS: [(&str, emulator::flash::OpKind); 2] = [
    ("write", emulator::flash::OpKind::Program),
    ("erase", emulator::flash::OpKind::Erase),
];

pub fn flash_op_kind_str(kind: emulator::flash::OpKind) -> &'static str {
    match kind {
        emulator::flash::OpKind::Program => "write",
        emulator::flash::OpKind::Erase => "erase",
    }
}

/// Where power is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerCut {
    pub at: CutPoint,
    /// Before, during (torn) or after the flash operation; `Before` for [`CutPoint::Now`].
    pub mode: CutMode,
    /// Power comes back by itself after this long (virtual time); otherwise `power.on`.
    pub off_for: Option<Duration>,
}

/// When an armed power cut fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutPoint {
    /// Immediately.
    Now,
    /// At the Nth flash operation (0-based) after the step.
    FlashOp(u64),
    /// At the first flash operation that writes OTA chunk K (0-based) to the staging area.
    Chunk(u32),
    /// At the Nth flash operation (0-based) of the next occurrence of a phase.
    Phase { phase: Phase, op: u64 },
}

/// The phases of an update, as flash operations see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Chunks written to the OTA staging area (and the resume state synced).
    Download,
    /// Validation done: the DCT module slots written.
    Commit,
    /// The bootloader copies staged modules into place.
    Apply,
    /// The first boot of the new firmware (validation, safe-mode decision).
    FirstBoot,
}

impl Phase {
    pub const WORDS: [(&'static str, Phase); 4] = [
        ("download", Phase::Download),
        ("commit", Phase::Commit),
        ("apply", Phase::Apply),
        ("first_boot", Phase::FirstBoot),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Download => "download",
            Phase::Commit => "commit",
            Phase::Apply => "apply",
            Phase::FirstBoot => "first_boot",
        }
    }
}

pub const CUT_MODE_WORDS: [(&str, CutMode); 3] = [
    ("before", CutMode::Before),
    ("torn", CutMode::Torn),
    ("after", CutMode::After),
];

pub fn cut_mode_str(mode: CutMode) -> &'static str {
    match mode {
        CutMode::Before => "before",
        CutMode::Torn => "torn",
        CutMode::After => "after",
    }
}

/// What the application does when told (reference: particle-cloud-api.md 5.1, 5.2, 5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppAction {
    DisableUpdates,
    EnableUpdates,
    DisableReset,
    EnableReset,
    /// `System.reset()`; `no_wait` = `RESET_NO_WAIT`.
    Reset {
        no_wait: bool,
    },
    Sleep(Sleep),
    /// Wake a sleeping device now (a GPIO wake source).
    Wake,
    /// `Particle.connect()` (semi-automatic and manual modes connect only then).
    Connect,
    /// `Particle.disconnect()`.
    Disconnect,
}

/// `System.sleep(SystemSleepConfiguration)`: mode, an RTC wake after `duration` (without it
/// the device sleeps until `app.wake`, or network data in standby), the network.
pub type Sleep = emulator::os::SleepConfig;

/// Faults on the device <-> cloud link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinkAction {
    /// Rates from 0 to 1, delay and bandwidth, for every datagram from now on (all zero = a
    /// clean link).
    Faults {
        loss: f64,
        duplicate: f64,
        reorder: f64,
        /// One-way delay of every datagram.
        latency: Duration,
        /// Extra uniform delay in `0..=jitter` per datagram.
        jitter: Duration,
        /// Bytes per second each direction carries (0 = unlimited).
        bandwidth: u64,
        /// Which way these faults apply (the other keeps its own).
        direction: Direction,
    },
    /// Drop the next N datagrams of a direction (`Both`: N each way).
    Drop { next: u32, direction: Direction },
    /// Drop the next `count` datagrams of a direction that carry a CoAP message of `kind`
    /// (`Both`: counted over both ways).
    DropNext {
        kind: MessageKind,
        count: u32,
        direction: Direction,
    },
    /// Nothing passes for this long.
    Partition { duration: Duration },
}

/// Waiting, in the target's time. No wait is satisfied by what happened before it unless it
/// says so (`wait.event from = "start"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// Until a matching event appears in the event stream, searched from `from`.
    Event {
        event: EventPattern,
        timeout: Duration,
        from: EventsFrom,
    },
    /// Until the device is in a state (in the boot `boot` names, running `running` when given).
    State {
        state: DeviceState,
        timeout: Duration,
        boot: WhichBoot,
        running: Option<RunningExpect>,
    },
    /// Until a transfer has received at least this much of its file (counting a resumed
    /// prefix): the one running when the step starts or a later one (`current`), or only one
    /// that begins after the step starts (`next`). Never a transfer that ended before.
    Ota {
        progress: OtaProgress,
        timeout: Duration,
        transfer: WhichTransfer,
    },
    /// For a duration.
    Time(Duration),
}

/// Which way a link fault applies, between the cloud and the step's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    Both,
    /// Datagrams the cloud sends to the device.
    ToDevice,
    /// Datagrams the device sends to the cloud.
    ToCloud,
}

impl Direction {
    pub const WORDS: [(&'static str, Direction); 3] = [
        ("both", Direction::Both),
        ("to_device", Direction::ToDevice),
        ("to_cloud", Direction::ToCloud),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Both => "both",
            Direction::ToDevice => "to_device",
            Direction::ToCloud => "to_cloud",
        }
    }
}

/// Where `wait.event` looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventsFrom {
    /// After the last event an earlier `wait.event` (with the same device filter) matched; the
    /// match moves that cursor past it.
    #[default]
    Cursor,
    /// Only events published after this step starts; moves the cursor past the match.
    Step,
    /// Any event since the case began, matched before or not; the cursor does not move.
    Start,
}

impl EventsFrom {
    pub const WORDS: [(&'static str, EventsFrom); 3] = [
        ("cursor", EventsFrom::Cursor),
        ("step", EventsFrom::Step),
        ("start", EventsFrom::Start),
    ];
}

/// Which boot `wait.state` is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhichBoot {
    /// The device's state now or later, whatever booted it.
    #[default]
    Any,
    /// A boot that completes after the step starts (the state before the update's reset does
    /// not count).
    Next,
}

/// Which transfer `wait.ota` is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhichTransfer {
    /// The transfer running when the step starts, or one that begins later.
    #[default]
    Current,
    /// Only a transfer that begins after the step starts.
    Next,
}

/// How far a transfer has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtaProgress {
    /// Percent of the file, 1-100.
    Percent(u8),
    /// Bytes of the file.
    Bytes(u32),
}

impl OtaProgress {
    /// Whether `received` of `total` bytes reach this point (never for an unknown total).
    pub fn reached(self, received: u64, total: u64) -> bool {
        match self {
            OtaProgress::Percent(p) => total > 0 && received * 100 >= total * p as u64,
            OtaProgress::Bytes(b) => total > 0 && received >= b as u64,
        }
    }
}

impl fmt::Display for OtaProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtaProgress::Percent(p) => write!(f, "min_percent={p}"),
            OtaProgress::Bytes(b) => write!(f, "received={b}"),
        }
    }
}

/// Timeout of a wait that names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// An event by name and, optionally, data. Data is compared with surrounding whitespace
/// trimmed on both sides (the cloud's `spark/flash/status` values end in a space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPattern {
    pub name: String,
    pub data: Option<String>,
}

impl EventPattern {
    pub fn matches(&self, name: &str, data: &str) -> bool {
        self.name == name && self.data.as_deref().is_none_or(|d| d.trim() == data.trim())
    }
}

impl fmt::Display for EventPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.data {
            Some(d) => write!(f, "{}={:?}", self.name, d),
            None => write!(f, "{}", self.name),
        }
    }
}

/// States a wait can wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Connected to the cloud.
    Online,
    Offline,
    PoweredOff,
    /// Powered, booted, running its application (not safe mode).
    Running,
    SafeMode,
    Sleeping,
    /// An OTA transfer is running.
    Updating,
    /// `System.resetPending()`.
    ResetPending,
    /// `System.updatesPending()`.
    UpdatePending,
}

impl DeviceState {
    pub const WORDS: [(&'static str, DeviceState); 9] = [
        ("online", DeviceState::Online),
        ("offline", DeviceState::Offline),
        ("powered_off", DeviceState::PoweredOff),
        ("running", DeviceState::Running),
        ("safe_mode", DeviceState::SafeMode),
        ("sleeping", DeviceState::Sleeping),
        ("updating", DeviceState::Updating),
        ("reset_pending", DeviceState::ResetPending),
        ("update_pending", DeviceState::UpdatePending),
    ];

    pub fn as_str(self) -> &'static str {
        Self::WORDS
            .iter()
            .find(|(_, s)| *s == self)
            .map(|(w, _)| *w)
            .unwrap_or("?")
    }

    /// What the target must observe to tell this state.
    pub fn capability(self) -> Capability {
        match self {
            DeviceState::ResetPending | DeviceState::UpdatePending => Capability::ObserveFlags,
            DeviceState::Updating => Capability::ObserveOta,
            _ => Capability::ObserveState,
        }
    }
}

/// One check of the device or the event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expectation {
    /// The running firmware's versions (only the ones given are compared).
    Running(RunningExpect),
    /// In safe mode (`true`) or running the application (`false`).
    SafeMode(bool),
    /// These events appeared, in this order (others may come between).
    Events(Vec<EventPattern>),
    /// None of these events appeared.
    EventsAbsent(Vec<EventPattern>),
    /// Each event seen exactly this many times so far (`event_counts`).
    EventCounts(Vec<(EventPattern, u32)>),
    /// The device's last connection resumed its session (`true`) or was a full handshake
    /// (`session = "resumed" | "handshake"`).
    SessionResumed(bool),
    /// Transfers begun since the current boot (`transfers_since_boot = 0`: no new transfer).
    TransfersSinceBoot(u32),
    /// System flags (only the ones given are compared).
    Flags(FlagsExpect),
    /// The OTA transfer's state (only the fields given are compared).
    Ota(OtaExpect),
    /// Nothing lost: the old firmware is intact, or the new one complete (never a mix, never
    /// a half-written module reported valid).
    NothingLost,
    /// `spark/device/last_reset` of the current boot.
    LastReset(String),
    /// Connected to the cloud (`true`) or not.
    Online(bool),
}

impl Expectation {
    /// The key it is written under in an `expect` table.
    pub fn key(&self) -> &'static str {
        match self {
            Expectation::Running(_) => "running",
            Expectation::SafeMode(_) => "safe_mode",
            Expectation::Events(_) => "events",
            Expectation::EventsAbsent(_) => "events_absent",
            Expectation::EventCounts(_) => "event_counts",
            Expectation::SessionResumed(_) => "session",
            Expectation::TransfersSinceBoot(_) => "transfers_since_boot",
            Expectation::Flags(_) => "flags",
            Expectation::Ota(_) => "ota",
            Expectation::NothingLost => "nothing_lost",
            Expectation::LastReset(_) => "last_reset",
            Expectation::Online(_) => "online",
        }
    }

    pub fn capabilities(&self) -> Vec<Capability> {
        use Capability::*;
        match self {
            Expectation::Running(_) => vec![ObserveVersions],
            Expectation::SafeMode(_) | Expectation::Online(_) | Expectation::LastReset(_) => {
                vec![ObserveState]
            }
            Expectation::Events(_) | Expectation::EventsAbsent(_) | Expectation::EventCounts(_) => {
                vec![ObserveEvents]
            }
            Expectation::SessionResumed(_) => vec![ObserveSession],
            Expectation::TransfersSinceBoot(_) => vec![ObserveOta, ObserveBoots],
            Expectation::Flags(_) => vec![ObserveFlags],
            Expectation::Ota(_) => vec![ObserveOta],
            Expectation::NothingLost => vec![FlashInspection],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunningExpect {
    pub device_os: Option<DeviceOsVersion>,
    /// Product version of the application.
    pub app: Option<u16>,
    pub bootloader: Option<u16>,
}

/// Device OS system flags (reference: particle-protocol.md 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlagsExpect {
    pub updates_enabled: Option<bool>,
    pub updates_pending: Option<bool>,
    pub updates_forced: Option<bool>,
    pub reset_enabled: Option<bool>,
    pub reset_pending: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OtaExpect {
    pub state: Option<OtaState>,
    /// At least this percentage of the file received.
    pub min_percent: Option<u8>,
    /// Whether the last transfer resumed from a persisted offset (not from zero).
    pub resumed: Option<bool>,
    /// The Device OS error code the last transfer failed with (e.g. -1360).
    pub error: Option<i32>,
}

/// The state of the last OTA transfer, as the device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtaState {
    /// No transfer seen since the device booted.
    Idle,
    InProgress,
    /// Received, validated and committed (a reset applies it).
    Complete,
    Failed,
    /// Cancelled (sleep, connection loss) with resumable state kept.
    Cancelled,
}

impl OtaState {
    pub const WORDS: [(&'static str, OtaState); 5] = [
        ("idle", OtaState::Idle),
        ("in_progress", OtaState::InProgress),
        ("complete", OtaState::Complete),
        ("failed", OtaState::Failed),
        ("cancelled", OtaState::Cancelled),
    ];

    pub fn as_str(self) -> &'static str {
        Self::WORDS
            .iter()
            .find(|(_, s)| *s == self)
            .map(|(w, _)| *w)
            .unwrap_or("?")
    }
}

/// The sweep: one case per (flash operation of the phase, mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sweep {
    pub phase: Phase,
    pub modes: Vec<CutMode>,
    /// How long power stays off after each cut.
    pub off_for: Duration,
}

/// Writes a duration the way scenario files do: `1m30s`, `250ms`, `0s`.
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

/// Reads `250ms`, `30s`, `5m`, `2h`, `1d` and sums like `1m30s`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total: u128 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u128 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(scale)?)?;
    }
    Some(Duration::from_millis(u64::try_from(total).ok()?))
}

impl fmt::Display for FirmwareSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(app) = self.app {
            parts.push(format!("app={app}"));
        }
        if let Some(v) = self.device_os {
            parts.push(format!("device_os={v}"));
        }
        if let Some(v) = self.bootloader {
            parts.push(format!("bootloader={v}"));
        }
        if let Some(v) = self.radio_stack {
            parts.push(format!("radio_stack={v}"));
        }
        if let Some(v) = self.built_against {
            parts.push(format!("built_against={v}"));
        }
        if self.compressed {
            parts.push("compressed".into());
        }
        if self.combined {
            parts.push("combined".into());
        }
        if !self.assets.is_empty() {
            let names: Vec<&str> = self.assets.iter().map(|a| a.name.as_str()).collect();
            parts.push(format!("assets=[{}]", names.join(",")));
        }
        if let Some(p) = &self.platform {
            parts.push(format!("platform={p}"));
        }
        if let Some(c) = self.corrupt {
            parts.push(format!(
                "corrupt={}",
                match c {
                    Corruption::Crc => "crc",
                    Corruption::Truncated => "truncated",
                }
            ));
        }
        if let Some(s) = self.size {
            parts.push(format!("size={s}"));
        }
        f.write_str(&parts.join(" "))
    }
}

fn opt<T: fmt::Display>(parts: &mut Vec<String>, key: &str, v: Option<T>) {
    if let Some(v) = v {
        parts.push(format!("{key}={v}"));
    }
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |l: &[EventPattern]| {
            l.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Expectation::Running(r) => {
                let mut p = Vec::new();
                opt(&mut p, "device_os", r.device_os);
                opt(&mut p, "app", r.app);
                opt(&mut p, "bootloader", r.bootloader);
                write!(f, "running {}", p.join(" "))
            }
            Expectation::SafeMode(b) => write!(f, "safe_mode={b}"),
            Expectation::Events(l) => write!(f, "events [{}]", list(l)),
            Expectation::EventsAbsent(l) => write!(f, "events_absent [{}]", list(l)),
            Expectation::SessionResumed(r) => {
                write!(f, "session={}", if *r { "resumed" } else { "handshake" })
            }
            Expectation::TransfersSinceBoot(n) => write!(f, "transfers_since_boot={n}"),
            Expectation::EventCounts(l) => {
                let parts: Vec<String> = l.iter().map(|(e, n)| format!("{e} x{n}")).collect();
                write!(f, "event_counts [{}]", parts.join(", "))
            }
            Expectation::Flags(x) => {
                let mut p = Vec::new();
                opt(&mut p, "updates_enabled", x.updates_enabled);
                opt(&mut p, "updates_pending", x.updates_pending);
                opt(&mut p, "updates_forced", x.updates_forced);
                opt(&mut p, "reset_enabled", x.reset_enabled);
                opt(&mut p, "reset_pending", x.reset_pending);
                write!(f, "flags {}", p.join(" "))
            }
            Expectation::Ota(o) => {
                let mut p = Vec::new();
                opt(&mut p, "state", o.state.map(OtaState::as_str));
                opt(&mut p, "min_percent", o.min_percent);
                opt(&mut p, "resumed", o.resumed);
                opt(&mut p, "error", o.error);
                write!(f, "ota {}", p.join(" "))
            }
            Expectation::NothingLost => f.write_str("nothing_lost"),
            Expectation::LastReset(r) => write!(f, "last_reset={r:?}"),
            Expectation::Online(b) => write!(f, "online={b}"),
        }
    }
}

/// An action's canonical line: its step's.
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::steps::show(&Step::Action(self.clone())))
    }
}

/// A wait's canonical line: its step's.
impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::steps::show(&Step::Wait(self.clone())))
    }
}

/// The canonical line of a step (declared in `steps.rs`).
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::steps::show(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_write_in_the_same_form() {
        for (text, ms) in [
            ("250ms", 250),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1m30s", 90_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("0s", 0),
        ] {
            let d = parse_duration(text).unwrap();
            assert_eq!(d, Duration::from_millis(ms), "{text}");
            assert_eq!(format_duration(d), text);
        }
        for bad in [
            "",
            "5",
            "s",
            "5x",
            "-1s",
            "1.5s",
            "99999999999999999999999d",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn device_os_versions_are_module_versions() {
        assert_eq!(DeviceOsVersion::parse("6.2.0"), Some(DeviceOsVersion(6200)));
        assert_eq!(
            DeviceOsVersion::parse("5.5.12"),
            Some(DeviceOsVersion(5512))
        );
        assert_eq!(DeviceOsVersion(3100).to_string(), "3.1.0");
        for bad in ["6.2", "6.10.0", "6.2.0-rc.1", "x.y.z", "6.2.0.1"] {
            assert_eq!(DeviceOsVersion::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn event_data_is_compared_trimmed() {
        let p = EventPattern {
            name: "spark/flash/status".into(),
            data: Some("started".into()),
        };
        assert!(p.matches("spark/flash/status", "started "));
        assert!(!p.matches("spark/flash/status", "success "));
        assert!(!p.matches("spark/status", "started"));
    }
}
