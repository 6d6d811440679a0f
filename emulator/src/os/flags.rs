//! The system flags the cloud and the application see (reference 3): updates enabled /
//! pending / forced, reset enabled / pending. RAM only: every boot starts from the defaults
//! (`systemFlags[]` in `system_update.cpp`), with the application's choices at boot applied.

/// The OTA-related system flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemFlags {
    /// Flag 1 `OTA_UPDATE_ENABLED` (`System.disableUpdates()` / `enableUpdates()`).
    pub updates_enabled: bool,
    /// Flag 0 `OTA_UPDATE_PENDING`, set by the cloud's `particle/device/updates/pending`.
    pub updates_pending: bool,
    /// Flag 9 `OTA_UPDATE_FORCED`, set by the cloud's `particle/device/updates/forced`.
    pub updates_forced: bool,
    /// Flag 3 `RESET_ENABLED` (`System.disableReset()` / `enableReset()`).
    pub reset_enabled: bool,
    /// Flag 2 `RESET_PENDING`: an update was committed and waits for its reset.
    pub reset_pending: bool,
}

impl Default for SystemFlags {
    fn default() -> Self {
        SystemFlags {
            updates_enabled: true,
            updates_pending: false,
            updates_forced: false,
            reset_enabled: true,
            reset_pending: false,
        }
    }
}

impl SystemFlags {
    /// Whether an UpdateStart may be accepted: updates enabled, or forced by the cloud.
    pub fn updates_allowed(&self) -> bool {
        self.updates_enabled || self.updates_forced
    }
}

/// `System.updateStatus()` (reference 3): what the application learns about pending updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateStatus {
    /// No `particle/device/updates/pending` event has arrived yet (0).
    Unknown,
    /// The cloud has nothing for this device (1).
    NotAvailable,
    /// The cloud holds an update back (2).
    Pending,
    /// A transfer is running (3).
    InProgress,
}

impl UpdateStatus {
    /// The numeric value Device OS passes with `firmware_update_status`.
    pub fn code(self) -> i32 {
        match self {
            UpdateStatus::Unknown => 0,
            UpdateStatus::NotAvailable => 1,
            UpdateStatus::Pending => 2,
            UpdateStatus::InProgress => 3,
        }
    }
}

/// Device OS's reading of a flag event's data (`dataToFlag`): true iff
/// `strncmp(data, "true", strlen(data)) == 0`, i.e. the data up to its first NUL is a prefix of
/// `true`. So `""`, `t`, `tr`, `tru` and `true` are all true, `truex` and `false` are false.
pub fn data_to_flag(data: &[u8]) -> bool {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    b"true".starts_with(&data[..end])
}

/// Which update control event a name is, read the way Device OS reads it: the part after
/// `particle/device/updates/` must be a prefix of `forced` (checked first) or of `pending`
/// (`isSuffix` compares only `strlen(name) - strlen(prefix)` characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateControlEvent {
    Forced,
    Pending,
}

/// Classifies an incoming event name; `None` for anything else.
pub fn update_control_event(name: &str) -> Option<UpdateControlEvent> {
    let rest = name.strip_prefix(super::profile::event_name::DEVICE_UPDATES_PREFIX)?;
    if "forced".starts_with(rest) {
        Some(UpdateControlEvent::Forced)
    } else if "pending".starts_with(rest) {
        Some(UpdateControlEvent::Pending)
    } else {
        None
    }
}

/// `true` / `false`, as the system publishes a flag.
pub fn flag_data(value: bool) -> &'static str {
    if value {
        "true"
    } else {
        "false"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_data_is_true_for_every_prefix_of_true() {
        for (data, expected) in [
            (&b""[..], true),
            (b"t", true),
            (b"tr", true),
            (b"tru", true),
            (b"true", true),
            (b"true\0junk", true),
            (b"truex", false),
            (b"false", false),
            (b"TRUE", false),
            (b"1", false),
        ] {
            assert_eq!(
                data_to_flag(data),
                expected,
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn event_names_match_on_a_prefix_of_the_suffix() {
        use UpdateControlEvent::*;
        for (name, expected) in [
            ("particle/device/updates/forced", Some(Forced)),
            ("particle/device/updates/f", Some(Forced)),
            ("particle/device/updates/", Some(Forced)),
            ("particle/device/updates/pending", Some(Pending)),
            ("particle/device/updates/pend", Some(Pending)),
            ("particle/device/updates/forcedx", None),
            ("particle/device/updates/enabled", None),
            ("spark/device/updates/forced", None),
        ] {
            assert_eq!(update_control_event(name), expected, "{name}");
        }
    }
}
