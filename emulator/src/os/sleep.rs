//! The application's `System.sleep(config)` (reference particle-cloud-api.md 5.5): the sleep
//! modes, what the network does meanwhile, and which configurations Device OS refuses.

use core::time::Duration;

/// `SystemSleepMode` (reference particle-cloud-api.md 5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepMode {
    /// RAM kept; execution continues after the sleep call.
    Stop,
    /// As `Stop`, with fewer wake sources on a real board (the same here).
    UltraLowPower,
    /// Wakes like a reset: `setup()` runs again and a staged update is applied.
    Hibernate,
}

/// What the network does while the device sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepNetwork {
    /// Radio off; the device reconnects (resuming its session) when it wakes.
    Off,
    /// `.network(interface)`: the radio stays connected and incoming cloud data wakes the
    /// device.
    Standby,
    /// `.network(interface, INACTIVE_STANDBY)`: the radio stays connected but data does not
    /// wake the device; what arrives while it sleeps is lost.
    InactiveStandby,
}

/// A `SystemSleepConfiguration`: mode, the network, and an RTC wake after `duration` (none:
/// only [`super::DeviceOs::wake`], a GPIO, wakes it, or data in network standby).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SleepConfig {
    pub mode: SleepMode,
    pub duration: Option<Duration>,
    pub network: SleepNetwork,
}

impl SleepConfig {
    /// Why Device OS refuses this configuration on `board` (`System.sleep` returns
    /// `SYSTEM_ERROR_NOT_SUPPORTED` and the device keeps running), if it does.
    ///
    /// UNCONFIRMED choices (reference 5.5): Gen3 (nRF52840) cannot wake from HIBERNATE by time
    /// (no RTC then), so a duration is refused there; network standby is refused with
    /// HIBERNATE on every platform (the radio is off in hibernate).
    pub fn refusal(&self, board: &crate::board::Board) -> Option<String> {
        if self.mode != SleepMode::Hibernate {
            return None;
        }
        if self.duration.is_some() && board.mcu == crate::board::McuFamily::Nrf52840 {
            return Some(format!(
                "{} (nRF52840) cannot wake from HIBERNATE after a duration: the RTC does not run \
                 in hibernate; wake it with a pin (app.wake)",
                board.name
            ));
        }
        if self.network != SleepNetwork::Off {
            return Some("HIBERNATE turns the radio off: network standby is not supported".into());
        }
        None
    }
}
