//! What Device OS keeps in retained RAM (`.backup_system`, reference 1.4): the DTLS session
//! for handshake-less resumption with its CoAP message id, use counter and the cached
//! application state, plus the reason of the next reset. It survives resets and sleep and is
//! lost with power.

use protocol::dtls::SessionState;

use super::profile::MAXIMUM_SESSION_USES;

/// The application state the cloud last acknowledged (`AppStateDescriptor`). A field is `None`
/// until it has been persisted in this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppState {
    pub system_version: Option<u16>,
    pub system_describe_crc: Option<u32>,
    pub protocol_flags: Option<u16>,
    pub max_message_size: Option<u16>,
    pub max_binary_size: Option<u32>,
    pub ota_chunk_size: Option<u16>,
    pub app_describe_crc: Option<u32>,
    pub subscriptions_crc: Option<u32>,
}

impl AppState {
    /// Whether a resumption may skip the Hello: every field but the application describe and
    /// subscription checksums (the system sends those itself, device-initiated describe) equals
    /// the current value (`Protocol::begin`).
    pub fn allows_skipping_hello(&self, current: &AppState) -> bool {
        self.system_version == current.system_version
            && self.system_describe_crc == current.system_describe_crc
            && self.protocol_flags == current.protocol_flags
            && self.max_message_size == current.max_message_size
            && self.max_binary_size == current.max_binary_size
            && self.ota_chunk_size == current.ota_chunk_size
    }
}

/// A DTLS session kept for resumption (`SessionPersistData`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedSession {
    pub dtls: SessionState,
    /// The last CoAP message id sent (ids are pre-incremented).
    pub last_message_id: u16,
    /// Resumptions since the server was last heard from.
    pub use_count: u8,
    pub app_state: AppState,
}

impl PersistedSession {
    /// `has_expired`: used [`MAXIMUM_SESSION_USES`] times without an answer.
    pub fn has_expired(&self) -> bool {
        self.use_count >= MAXIMUM_SESSION_USES
    }
}

/// Retained RAM.
#[derive(Debug, Clone, Default)]
pub struct Retained {
    pub session: Option<PersistedSession>,
    /// Set by a software reset for the next boot (`BKP_DR_02`); `None` means a hardware reset.
    pub reset_reason: Option<u32>,
    /// The RTC holds a valid time (UNCONFIRMED choice in [`super::profile`]).
    pub rtc_valid: bool,
}
