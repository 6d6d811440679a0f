//! The emulated Device OS (reference sections 1, 2.2-2.5, 3 and 5.5): one Particle device's
//! system firmware, sans-IO, on top of the emulated flash and bootloader.
//!
//! - [`DeviceOs`] (`device_os.rs`): power, boot, reset, sleep, the application's controls;
//!   it composes `cloud.rs` (`CloudConnection`: sockets, the post-connect sequence, keepalive,
//!   reconnects) and `ota_link.rs` (`OtaLink`: OTA v3 on the wire), which answer with effects
//!   it applies.
//! - `sleep.rs`: the application's sleep configurations ([`SleepConfig`]).
//! - [`profile`]: every number the system uses and every UNCONFIRMED choice, in one place.
//! - [`trace`]: the device's trace ([`DeviceEvent`]) and status ([`DeviceStatus`]).
//! - [`flags`]: the system flags and Device OS's parsing of the cloud's flag events.
//! - [`system_info`]: Hello values and the system describe, from what the bootloader found.
//! - [`session`]: retained RAM (the DTLS session kept for resumption).
//! - [`link`]: DTLS client + CoAP endpoint of one socket.
//! - [`ota`]: the OTA v3 receiver (window, bitmap, transfer state, validation, commit).

mod cloud;
mod device_os;
pub mod flags;
pub mod identity;
pub mod link;
pub mod mutation;
pub mod ota;
mod ota_link;
pub mod profile;
pub mod session;
mod sleep;
pub mod system_info;
pub mod trace;

pub use device_os::{AppBehaviour, AppStage, AssetOtaHook, DeviceOs, SystemMode};
pub use flags::{SystemFlags, UpdateStatus};
pub use identity::Identity;
pub use mutation::Mutation;
pub use sleep::{SleepConfig, SleepMode, SleepNetwork};
pub use trace::{
    DeviceEvent, DeviceStatus, DisconnectReason, FirmwareUpdateEvent, RunningVersions, SystemEvent,
};
