//! Device OS 6.2.0 as the emulator plays it: every number the emulated system uses, and every
//! choice the reference leaves open, in one place (reference sections 1.4-1.12, 2.3, 3).
//!
//! # Choices where the reference or the source is silent (UNCONFIRMED)
//! Each is the most plausible reading; change it here and nowhere else.
//! - **Graceful disconnects are off by default**, as in Device OS (`DEFAULT_DISCONNECT_GRACEFULLY
//!   = false` in `system_cloud_internal.h`): a reset after an OTA update, `System.reset()` and
//!   sleep close the socket without a Goodbye unless the application asked for graceful
//!   disconnects ([`super::AppBehaviour::graceful_disconnect`], i.e.
//!   `Particle.setDisconnectOptions(CloudDisconnectOptions().graceful(true))` or a sleep with
//!   `SystemSleepFlag::WAIT_CLOUD`). The captured 6.2.0 session confirms it: the device reset
//!   after the OTA commit without sending a Goodbye.
//! - A graceful disconnect waits for every outstanding CON to be acknowledged, at most
//!   [`DISCONNECT_TIMEOUT`] (`DEFAULT_DISCONNECT_COMMAND_TIMEOUT`), then closes the socket. No
//!   DTLS close_notify is sent (none was seen in the capture).
//! - The reset after a committed update happens at once when resets are enabled. Device OS
//!   notifies the application (`reset` system event) and resets when the handler returns; the
//!   capture shows about one second between the cloud's ACK and the new ClientHello.
//! - The RTC keeps a valid time across resets and sleep and loses it on power loss, so a
//!   resumed session after a reset sends no time request (`hal_rtc_time_is_valid`).
//! - A ping timeout keeps the DTLS session (only an RST from the server, a CON timeout, a
//!   KeyChange and DTLS errors discard it); the device reconnects at once with a resumption.
//! - A CoAP request the emulator does not implement (function call, variable, signal,
//!   ServerMoved, legacy OTA) is answered with a piggy-backed 4.04 when confirmable and ignored
//!   otherwise; a KeyChange (`PUT k`) with payload byte 1 is acknowledged and discards the
//!   session.
//! - In safe mode the application does not run, but Device OS still sends the application
//!   describe and the subscriptions (`Spark_Handshake` sends them when the system mode is not
//!   AUTOMATIC, and safe mode is its own mode); the application describe is then empty.
//! - The system describe lists module regions in the order of `module_bounds[]`
//!   (`hal/src/nRF52840/ota_module_bounds.c`, `rtl872x/ota_module_bounds.c`); a region without
//!   a readable module is left out, as are an invalid user part and the factory app.
//! - **When `setup()` runs** ([`super::AppStage`], reference particle-cloud-api.md 5.4 and
//!   particle-protocol.md 1.8): at boot, before the system connects, with the system thread
//!   or in SEMI_AUTOMATIC / MANUAL mode; without the system thread in AUTOMATIC mode only
//!   [`NON_THREADED_SETUP_DELAY`] after the connection is up, and not while a transfer runs.
//!   Device OS runs it on the first application loop after the cloud connected with no update
//!   in progress, and documents that an update delivered at boot cannot be prevented there.
//!   Particle's cloud starts a waiting update as part of the post-connect sequence; the
//!   harness's cloud starts it about 1 s after connect (its pending event, then a settled
//!   connection, at the latest 5 s after the connection started). UNCONFIRMED: the delay,
//!   chosen at that latest start so that the update at boot always comes first, as documented.
//!   `STARTUP()` code runs at boot before anything, in every mode. In safe mode neither runs.
//!   Not modelled: that the application describe and subscriptions wait for `setup()`.
//! - In single-threaded mode ([`super::AppBehaviour::system_thread`] false) the application's
//!   loop does not run while a transfer is in progress, so application calls made then
//!   (`disableUpdates`, `enableReset`, ...) take effect when the transfer ends.
//! - The trace reports transfer progress ([`super::DeviceEvent::OtaProgress`] and the
//!   `firmware_update` progress system event) once per tenth of the file
//!   ([`OTA_PROGRESS_STEPS`]), not for every chunk as Device OS raises its event.
//! - Incoming datagrams while the device is off, or asleep with the network off, are lost; a
//!   datagram while it sleeps with the network kept wakes it.

use core::time::Duration;

/// Progress entries in the trace per transfer (see the choices above).
pub const OTA_PROGRESS_STEPS: u32 = 10;

/// Largest CoAP message the device receives (`PROTOCOL_BUFFER_SIZE`, Hello offset 24).
pub const MAX_MESSAGE_SIZE: u16 = 1152;

/// Hello flags every Gen3 Device OS 6.2.0 sets (reference 1.7): diagnostics, immediate updates,
/// goodbye, device-initiated describe, OTA protocol v3. COMPRESSED_OTA is added when the
/// bootloader is recent enough.
pub const HELLO_BASE_FLAGS: u16 = 0x02 | 0x04 | 0x10 | 0x20 | 0x80;
/// Hello flag COMPRESSED_OTA (0x40).
pub const HELLO_FLAG_COMPRESSED_OTA: u16 = 0x40;
/// Bootloader module version from which compressed/combined OTA is advertised
/// (`COMPRESSED_OTA_MIN_BOOTLOADER_VERSION`, 2.0.0).
pub const COMPRESSED_OTA_MIN_BOOTLOADER_VERSION: u16 = 1000;

/// Resumptions of one DTLS session without hearing from the server before it is dropped
/// (`MAXIMUM_SESSION_USES`, `dtls_session_persist.h`).
pub const MAXIMUM_SESSION_USES: u8 = 3;

/// Keepalive interval of the cellular platforms (`HAL_PLATFORM_CELLULAR_CLOUD_KEEPALIVE_INTERVAL`).
pub const CELLULAR_KEEPALIVE: Duration = Duration::from_secs(23 * 60);
/// Keepalive interval of Wi-Fi platforms (`HAL_PLATFORM_DEFAULT_CLOUD_KEEPALIVE_INTERVAL`).
pub const WIFI_KEEPALIVE: Duration = Duration::from_secs(25);
/// A ping with nothing received for this long ends the connection (`PING_TIMEOUT`).
pub const PING_TIMEOUT: Duration = Duration::from_secs(30);

/// The keepalive (ping) interval of a board, by its built-in name (reference 1.9): the cellular
/// boards ping every 23 minutes, the Wi-Fi ones every 25 seconds. The M-SoM is counted as Wi-Fi
/// (its interval follows the active interface; the emulator models Wi-Fi). Unknown boards get
/// the Wi-Fi interval.
pub fn keepalive_interval(board_name: &str) -> Duration {
    match board_name {
        "boron" | "bsom" | "b5som" | "tracker" => CELLULAR_KEEPALIVE,
        "argon" | "p2" | "msom" => WIFI_KEEPALIVE,
        _ => WIFI_KEEPALIVE,
    }
}

/// Without the system thread in AUTOMATIC mode, `setup()` runs this long after the cloud
/// connection is up (see the choices above; UNCONFIRMED).
pub const NON_THREADED_SETUP_DELAY: Duration = Duration::from_secs(5);

/// How long a graceful disconnect waits for the outstanding CONs (Goodbye included).
pub const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Cloud connection back-off after `attempts` failed attempts (`backoff_period`,
/// `system_utilities.cpp`): 0 for none, then 1 s five times, 2 s five times, ... up to 128 s.
pub fn connection_backoff(attempts: u32) -> Duration {
    if attempts == 0 {
        return Duration::ZERO;
    }
    let exponent = ((attempts - 1) / 5).min(7);
    Duration::from_secs(1 << exponent)
}

/// Reset reasons (`System_Reset_Reason`, `services/inc/system_defs.h`) and their names in
/// `spark/device/last_reset`.
pub mod reset_reason {
    pub const NONE: u32 = 0;
    pub const UNKNOWN: u32 = 10;
    pub const PIN_RESET: u32 = 20;
    pub const POWER_MANAGEMENT: u32 = 30;
    pub const POWER_DOWN: u32 = 40;
    pub const POWER_BROWNOUT: u32 = 50;
    pub const WATCHDOG: u32 = 60;
    pub const UPDATE: u32 = 70;
    pub const UPDATE_ERROR: u32 = 80;
    pub const UPDATE_TIMEOUT: u32 = 90;
    pub const FACTORY_RESET: u32 = 100;
    pub const SAFE_MODE: u32 = 110;
    pub const DFU_MODE: u32 = 120;
    pub const PANIC: u32 = 130;
    pub const USER: u32 = 140;
    pub const CONFIG_UPDATE: u32 = 150;

    /// The event data Device OS publishes for `reason` (`resetReasonString`), or the number.
    pub fn name(reason: u32) -> String {
        let s = match reason {
            UNKNOWN => "unknown",
            PIN_RESET => "pin_reset",
            POWER_MANAGEMENT => "power_management",
            POWER_DOWN => "power_down",
            POWER_BROWNOUT => "power_brownout",
            WATCHDOG => "watchdog",
            UPDATE => "update",
            UPDATE_ERROR => "update_error",
            UPDATE_TIMEOUT => "update_timeout",
            FACTORY_RESET => "factory_reset",
            SAFE_MODE => "safe_mode",
            DFU_MODE => "dfu_mode",
            PANIC => "panic",
            USER => "user",
            CONFIG_UPDATE => "config_update",
            other => return other.to_string(),
        };
        s.to_string()
    }
}

/// Names of the events the system publishes and handles.
pub mod event_name {
    pub const SAFE_MODE: &str = "spark/device/safemode";
    pub const LAST_RESET: &str = "spark/device/last_reset";
    pub const UPDATES_ENABLED: &str = "particle/device/updates/enabled";
    pub const UPDATES_FORCED: &str = "particle/device/updates/forced";
    /// Prefix of the cloud's update control events (`DEVICE_UPDATES_EVENT`).
    pub const DEVICE_UPDATES_PREFIX: &str = "particle/device/updates/";
    /// The system's subscriptions (`registerSystemSubscriptions`), in the order it sends them.
    pub const SYSTEM_SUBSCRIPTIONS: [&str; 2] = ["particle", "spark"];
}

/// Validity flags of the system describe (`module_validation_flags_t`, reference 1.10).
pub mod validation {
    pub const INTEGRITY: u32 = 0x02;
    pub const DEPENDENCIES: u32 = 0x04;
    pub const RANGE: u32 = 0x08;
    pub const PLATFORM: u32 = 0x10;
    /// What `fetch_module` checks for the system describe: range, dependencies, platform and
    /// integrity.
    pub const CHECKED: u32 = INTEGRITY | DEPENDENCIES | RANGE | PLATFORM;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_every_five_attempts_up_to_128_seconds() {
        let secs: Vec<u64> = [0, 1, 5, 6, 10, 11, 36, 200]
            .iter()
            .map(|&a| connection_backoff(a).as_secs())
            .collect();
        assert_eq!(secs, vec![0, 1, 1, 2, 2, 4, 128, 128]);
    }

    #[test]
    fn cellular_boards_ping_every_23_minutes_wifi_boards_every_25_seconds() {
        for b in ["boron", "bsom", "b5som", "tracker"] {
            assert_eq!(keepalive_interval(b), Duration::from_secs(1380), "{b}");
        }
        for b in ["argon", "p2", "msom"] {
            assert_eq!(keepalive_interval(b), Duration::from_secs(25), "{b}");
        }
    }

    #[test]
    fn reset_reasons_are_named_like_device_os() {
        assert_eq!(reset_reason::name(reset_reason::UPDATE), "update");
        assert_eq!(reset_reason::name(reset_reason::POWER_DOWN), "power_down");
        assert_eq!(reset_reason::name(reset_reason::USER), "user");
        assert_eq!(reset_reason::name(7), "7");
    }
}
