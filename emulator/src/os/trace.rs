//! What an emulated device reports: its trace of events ([`DeviceEvent`], no wall-clock time in
//! it, so a scenario's trace can be snapshotted) and a snapshot of its state ([`DeviceStatus`]).

use core::time::Duration;

use crate::bootloader::{AppliedModule, BootState, RefusedSlot, SafeModeReason};

use super::flags::{SystemFlags, UpdateStatus};

/// One entry of a device's trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The bootloader ran: what it applied or refused, and how the device runs now.
    Booted {
        /// Why the device (re)started, as `spark/device/last_reset` will name it.
        reset_reason: u32,
        applied: Vec<AppliedModule>,
        refused: Vec<RefusedSlot>,
        factory_restored: bool,
        state: BootState,
        versions: RunningVersions,
    },
    /// The device booted into safe mode: user code does not run.
    SafeMode { reason: SafeModeReason },
    /// The application's `System.onAssetOta` callback ran (before `setup()`) with these
    /// assets; `handled`: it called `System.assetsHandled(true)`.
    AssetOta { assets: Vec<String>, handled: bool },
    /// The device lost power (a power cut, or one scheduled in the flash fired).
    PoweredOff,
    /// A new UDP socket and a DTLS handshake (`resume == false`) or a resumption.
    Connecting { resume: bool },
    /// Every handshake message was acknowledged (`cloud_status_connected`). `resumed`: the
    /// DTLS session was resumed without a handshake (a Hello is still sent when the firmware
    /// changed since the session was made).
    Connected { resumed: bool },
    /// The connection ended.
    Disconnected { reason: DisconnectReason },
    /// The device published an event.
    Published { name: String, data: String },
    /// The device received an event it is subscribed to.
    Received { name: String, data: String },
    /// A Device OS system event (`System.on(...)`).
    SystemEvent(SystemEvent),
    /// An UpdateStart was accepted.
    OtaStarted { file_size: u32, resume_offset: u32 },
    /// Transfer progress: bytes of the file received without a gap.
    OtaProgress { received: u32, file_size: u32 },
    /// An update failed with a Device OS system error.
    OtaFailed { code: i32, message: String },
    /// The application went to sleep.
    Sleeping {
        /// The RTC wake after this long, if any.
        duration: Option<Duration>,
        network_kept: bool,
    },
    /// The device woke up.
    Woke,
    /// Anything else worth a line in the log (malformed input, refused requests, ...).
    Log(String),
}

/// Device OS system events (`system/inc/system_event.h`) the emulator raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemEvent {
    /// `firmware_update` with its parameter.
    FirmwareUpdate(FirmwareUpdateEvent),
    /// `firmware_update_pending`: the cloud holds an update back.
    FirmwareUpdatePending,
    /// `firmware_update_status` with the new status.
    FirmwareUpdateStatus(UpdateStatus),
    /// `reset_pending`: an update is committed and waits for a reset.
    ResetPending,
    /// `reset`: the system is about to reset.
    Reset,
}

/// The parameter of `firmware_update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareUpdateEvent {
    /// 0: a transfer started.
    Begin,
    /// 2: a chunk was written.
    Progress,
    /// 1: the update is committed.
    Complete,
    /// -1: the update failed or was cancelled.
    Failed,
}

/// Why a cloud connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The device resets; a Goodbye (cloud reason 5 with the reset reason) was sent if graceful.
    Reset { reset_reason: u32, goodbye: bool },
    /// The application sleeps with the network off; Goodbye (reason 6) if graceful.
    Sleep { goodbye: bool },
    /// Power lost: nothing was sent.
    PowerLost,
    /// The application called `Particle.disconnect()`.
    Requested,
    /// The DTLS handshake or the Hello exchange failed.
    HandshakeFailed { error: String },
    /// A ping got no answer within 30 s.
    PingTimeout,
    /// A confirmable message was never acknowledged (the session is discarded).
    MessageTimeout,
    /// The server answered a confirmable message with RST (the session is discarded).
    ResetByServer,
    /// A KeyChange asked to discard the session.
    SessionDiscarded,
    /// No chunk for 300 s during a transfer.
    TransferTimeout,
    /// The OTA protocol failed (bad chunk, an acknowledged error response, a failed commit).
    OtaError { code: i32 },
    /// DTLS ended the association (alert, close_notify, record error).
    Dtls { error: String },
}

/// Versions of what runs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunningVersions {
    pub bootloader: Option<u16>,
    /// System part module version (6200 for 6.2.0), the Hello's system version.
    pub system_part: Option<u16>,
    /// User part module version.
    pub user_part: Option<u16>,
    /// Product firmware version (`PRODUCT_VERSION(n)`) of the running application.
    pub product_version: Option<u16>,
}

/// A snapshot of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    pub powered: bool,
    pub sleeping: bool,
    /// Connected to the cloud (handshake messages all acknowledged).
    pub connected: bool,
    pub safe_mode: bool,
    /// The state the last boot ended in.
    pub boot_state: Option<BootState>,
    pub versions: RunningVersions,
    pub flags: SystemFlags,
    pub update_status: UpdateStatus,
    /// The running transfer, if any.
    pub ota: Option<super::ota::OtaProgress>,
    /// A DTLS session is kept in retained RAM for resumption.
    pub has_session: bool,
    pub socket_generation: u32,
    /// Datagrams or messages dropped because they could not be decoded.
    pub malformed: u64,
}
