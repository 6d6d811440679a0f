//! Device OS's OTA v3 receiver on the emulated flash (reference 2.2-2.6, 3 and 5.4), sans-IO.
//!
//! [`OtaReceiver`] is what `communication/src/firmware_update.cpp` (protocol side: window,
//! selective acks, ack timing, transfer timeout, statistics) and `system/src/firmware_update.cpp`
//! (system side: erase, chunk writes, `/sys/fw_transfer` resume state, validation, commit) do
//! together. It never touches a socket or a clock: time is a [`Duration`] since the caller's
//! epoch, passed in; the caller (the emulated cloud connection) turns the outcomes into CoAP
//! messages:
//!
//! | Call | Device OS answer on the wire |
//! |---|---|
//! | [`OtaReceiver::check_start`] `Err` | piggy-backed error ACK (no other effect) |
//! | [`OtaReceiver::start`] `Ok` | empty ACK, then separate CON 2.01 with [`StartAccepted::response`] |
//! | [`OtaReceiver::start`] `Err` | empty ACK, then separate CON error response ([`OtaError::diagnostic`]; -1380 is a 5.03) |
//! | [`OtaReceiver::chunk`] | nothing, or RST ([`ChunkOutcome`]); acks come from [`OtaReceiver::poll_ack`] |
//! | [`OtaReceiver::finish`] `Ok(Validated)` | empty ACK, separate CON 2.04 with the JSON stats; **commit on its ACK** |
//! | [`OtaReceiver::finish`] `Ok(Cancelled)` | empty ACK, separate CON 2.04 without payload |
//! | [`OtaReceiver::finish`] `Err` | empty ACK, separate CON error response; when the cloud ACKs it, [`OtaReceiver::cancel`] and reconnect |
//! | [`OtaReceiver::commit`] | nothing; `Ok` => `reset_pending`, reset with reason update; `Err` => drop the connection |
//! | [`OtaReceiver::handle_timeout`] `Some` | the transfer timed out: reconnect |
//!
//! Every flash and store access goes through [`Device`], so a power cut can hit any chunk
//! write, state sync or commit. A power loss is never an ordinary error: it comes back as
//! [`ChunkOutcome::PowerLost`] or an [`OtaError`] with [`OtaError::is_power_loss`], the
//! receiver forgets the transfer (RAM is gone), and the caller stops and powers the device on
//! again. Nothing is committed before [`OtaReceiver::commit`], so the old firmware keeps
//! running through any interrupted download (reference 5.4).
//!
//! # Resumption (reference 2.4)
//! Only when UpdateStart carries File-Sha256 and no Discard-Data. The state lives in the
//! device's store under [`TRANSFER_STATE_KEY`] in Device OS's record format ([`TransferFile`],
//! [`TransferRecord`]). It advances over the contiguous prefix only, is written to the open file
//! at every advance but reaches flash (the store) only when synced: at most every
//! [`OtaConfig::sync_interval`], and when the transfer ends. A power loss therefore loses up to
//! one sync interval of progress; a cancel (disconnect, sleep, reset) loses none.

// UNCONFIRMED choices and known divergences, kept in one place (referred to as U1..U10):
//
// U1  Power loss is reported with the sentinel code `OtaError::POWER_LOST` (not a Device OS
//     code, never sent on the wire) and `ChunkOutcome::PowerLost`.
// U2  Module range failures map to -1300, not -1350: in Device OS 6.2.0 `fetch_module` returns
//     false when the module end is outside the expected bounds, so `fetchModules` answers
//     OTA_MODULE_NOT_FOUND; the RANGE validity bit is always set once fetching succeeds, so
//     -1350 is unreachable on Gen3. `DeviceError::OutsideRegion` also fires when only the start
//     is below the region, which Device OS would accept at OTA time (the bootloader refuses it).
// U3  Checks run in `Device::validate_staged`'s order (parse, CRC, platform, region) and then
//     dependencies, format and compression per module. Device OS reports the first failed bit
//     in the order integrity, dependencies, range, platform; the two orders differ only for a
//     module with several faults at once. Trailing bytes after a non-combined module and more
//     than two combined modules are refused here (-1300); Device OS ignores the extra bytes.
// U4  A compressed module whose deflate stream is broken (valid CRC) fails validation with
//     -1320 here (the device model inflates to check); Device OS only finds out in the
//     bootloader.
// U5  A dependency on a module the board has no region for (e.g. the Tracker's NCP) counts as
//     met, as in the emulator's bootloader; Device OS would refuse it.
// U6  The firmware_update `failed` event carries a code: the error that ended the transfer, or
//     -140 (cancelled) for a cancel, -160 for the transfer timeout. Device OS's event has none.
// U7  `Progress::received_bytes` counts the resume offset plus every chunk written (out of
//     order included); Device OS's event carries the chunk's address and size instead.
// U8  `proc_time` is virtual time spent in flash operations, which is 0 (virtual time does not
//     advance inside a call).
// U9  A chunk overwriting staged bytes that differ (possible only after resuming a file whose
//     later bytes were written by an earlier, different attempt) programs the AND of old and
//     new bytes, as NOR flash does without an erase; the final SHA-256 or CRC check catches it.
// U10 The transfer timeout returns -160 (TIMEOUT) "Transfer timeout"; Device OS returns the
//     protocol error MESSAGE_TIMEOUT, which the connection layer turns into a reconnect.

mod transfer_state;
mod window;

pub use transfer_state::{
    TransferFile, TransferFileProblem, TransferRecord, FILE_BLOCK_LEN, RECORD_LEN,
    TRANSFER_STATE_KEY,
};
pub use window::{Placement, ReceiveWindow};

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use protocol::message::{
    Diagnostic, FinishStats, SystemError, UpdateAck, UpdateChunk, UpdateFinish, UpdateStart,
    UpdateStartResponse, MAX_OTA_CHUNK_SIZE, MIN_OTA_CHUNK_SIZE, OTA_RECEIVE_WINDOW_SIZE,
};
use protocol::module::{split_combined, Dependency, Module, ModuleFlags, ModuleFunction};
use sha2::{Digest, Sha256};

use crate::assets::{self, AssetFs, ConsumerState};
use crate::board::{Board, McuFamily};
use crate::device::{Device, DeviceError, StagedModule};
use crate::flash::{Activity, FlashError};
use crate::installed::{read_region, RegionContent};
use crate::placement::PlacementError;
use protocol::bundle::AssetModule;

/// Timing and sizes of the receiver; [`OtaConfig::default`] is Device OS 6.2.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtaConfig {
    /// `OTA_CHUNK_ACK_DELAY`: an ack is sent when this much time passed since the previous
    /// chunk, and a delayed ack this long after the last chunk.
    pub ack_delay: Duration,
    /// `OTA_CHUNK_ACK_COUNT`: an ack at least every this many chunks.
    pub ack_count: u32,
    /// `OTA_RECEIVE_WINDOW_SIZE` in bytes; the window in chunks is this / chunk size.
    pub window_bytes: u32,
    /// `OTA_TRANSFER_TIMEOUT`: time without a chunk (or since the start) that cancels.
    pub transfer_timeout: Duration,
    /// `TRANSFER_STATE_SYNC_INTERVAL`: the resume state reaches flash at most this often.
    pub sync_interval: Duration,
    /// `HAL_PLATFORM_ERROR_MESSAGES`: error responses carry Device OS's specific message
    /// ("Incomplete file transfer") rather than the code's default text ("Protocol error").
    /// Off on nRF52840 platforms, on for rtl872x.
    pub error_messages: bool,
}

impl OtaConfig {
    /// Device OS 6.2.0 on an nRF52840 platform (Boron, Argon, B-SoM, Tracker ...).
    pub const DEVICE_OS_6_2_0: OtaConfig = OtaConfig {
        ack_delay: Duration::from_millis(200),
        ack_count: 2,
        window_bytes: OTA_RECEIVE_WINDOW_SIZE,
        transfer_timeout: Duration::from_secs(300),
        sync_interval: Duration::from_secs(30),
        error_messages: false,
    };

    /// Device OS 6.2.0 on `board`'s MCU family.
    pub fn for_board(board: &Board) -> OtaConfig {
        OtaConfig {
            error_messages: board.mcu == McuFamily::Rtl872x,
            ..OtaConfig::DEVICE_OS_6_2_0
        }
    }
}

impl Default for OtaConfig {
    fn default() -> Self {
        OtaConfig::DEVICE_OS_6_2_0
    }
}

/// An OTA failure as Device OS reports it: a system error code and the diagnostic message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtaError {
    /// Negative Device OS system error (`SystemError`), e.g. -1360; or [`OtaError::POWER_LOST`].
    pub code: i32,
    /// The text of the diagnostic payload, as the platform would send it.
    pub message: String,
    /// What the emulator found, for people (logs, test failures); never sent.
    pub detail: String,
}

impl OtaError {
    /// Not a Device OS code (U1): the power went during a flash operation. Nothing is sent;
    /// the device must be powered on again.
    pub const POWER_LOST: i32 = i32::MIN;

    pub fn new(code: i32, message: impl Into<String>) -> OtaError {
        OtaError {
            code,
            message: message.into(),
            detail: String::new(),
        }
    }

    fn with_detail(mut self, detail: impl Into<String>) -> OtaError {
        self.detail = detail.into();
        self
    }

    fn power_lost(detail: impl fmt::Display) -> OtaError {
        OtaError::new(OtaError::POWER_LOST, "Power lost").with_detail(detail.to_string())
    }

    pub fn is_power_loss(&self) -> bool {
        self.code == OtaError::POWER_LOST
    }

    /// The `{"code":..,"message":..}` payload of the error response.
    pub fn diagnostic(&self) -> Diagnostic {
        Diagnostic::new(self.code, self.message.clone())
    }
}

impl fmt::Display for OtaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)?;
        if !self.detail.is_empty() && self.detail != self.message {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for OtaError {}

/// Device OS's default text for a system error (`services/inc/system_error.h`), used in
/// diagnostics when the platform has no specific messages.
pub fn default_message(code: i32) -> &'static str {
    match code {
        -100 => "Unknown error",
        -110 => "Resource busy",
        -120 => "Not supported",
        -130 => "Not allowed",
        -140 => "Operation cancelled",
        -150 => "Operation aborted",
        -160 => "Timeout error",
        -170 => "Not found",
        -180 => "Already exists",
        -190 => "Too large data",
        -191 => "Not enough data",
        -200 => "Limit exceeded",
        -210 => "Invalid state",
        -219 => "Flash IO error",
        -220 => "IO error",
        -240 => "Protocol error",
        -250 => "Internal error",
        -260 => "Memory allocation error",
        -270 => "Invalid argument",
        -280 => "Invalid data format",
        -290 => "Out of range",
        -300 => "Deprecated",
        -1000 => "CoAP error",
        -1300 => "Module not found",
        -1310 => "Unsupported module",
        -1320 => "Module validation failed",
        -1330 => "Module integrity check failed",
        -1331 => "Resumed update failed",
        -1340 => "Module dependency check failed",
        -1350 => "Invalid module address",
        -1351 => "Invalid module size",
        -1360 => "Invalid module platform",
        -1370 => "Invalid module format",
        -1380 => "Firmware updates are disabled",
        -1390 => "Firmware update error",
        -1801 => "Protected device",
        _ => "Unknown error",
    }
}

/// An accepted UpdateStart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartAccepted {
    /// Receive window in chunks (`window_bytes / chunk_size`).
    pub window_size: u32,
    /// Bytes already held from an earlier transfer of the same file; chunk 1 starts here.
    pub resume_offset: u32,
}

impl StartAccepted {
    /// The separate 2.01 response.
    pub fn response(&self) -> UpdateStartResponse {
        UpdateStartResponse {
            window_size: self.window_size,
            resume_offset: self.resume_offset,
        }
    }
}

/// What became of an UpdateChunk. Acks are collected with [`OtaReceiver::poll_ack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// A new chunk, written at its file offset.
    Written,
    /// Already received: not written again (an ack is due).
    Duplicate,
    /// Beyond the receive window: ignored.
    OutOfWindow,
    /// No update is running: reply RST only, no error.
    NotRunning,
    /// Bad index or size, or the flash refused the write: reply RST; the update is cancelled
    /// and this is a protocol error (the connection is closed and re-established).
    Rejected(OtaError),
    /// The power went during the write or the state sync (U1): stop; power the device on.
    PowerLost,
}

/// What became of an UpdateFinish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishOutcome {
    /// Validated: send the separate 2.04 with these stats; call [`OtaReceiver::commit`] when
    /// the cloud ACKs it.
    Validated(FinishStats),
    /// Cancel-Update: the update is cancelled; send 2.04 without payload.
    Cancelled,
}

/// Device OS's `firmware_update` system events (reference 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtaEvent {
    /// `firmware_update_begin`: a transfer started (or resumed).
    Begin { file_size: u32 },
    /// `firmware_update_progress`: a chunk was written (U7).
    Progress { received_bytes: u32, file_size: u32 },
    /// The file passed validation at UpdateFinish (no Device OS event; for traces).
    Validated,
    /// `firmware_update_complete`: the update is committed (module slots written).
    Complete,
    /// `firmware_update_failed` (U6).
    Failed { code: i32 },
}

/// Where a running transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtaProgress {
    pub file_size: u32,
    pub chunk_size: u32,
    pub resume_offset: u32,
    /// Chunks to receive after the resume offset.
    pub chunk_count: u32,
    /// Chunks 1..=cumulative_chunks are received.
    pub cumulative_chunks: u32,
    /// Bytes [0, contiguous_bytes) of the file are received.
    pub contiguous_bytes: u32,
    /// The transfer can be resumed (File-Sha256 given, no Discard-Data, state usable).
    pub resumable: bool,
    /// The partial size the store holds now (what a power loss would resume from).
    pub synced_bytes: Option<u32>,
    /// UpdateFinish validated the file; waiting for the cloud's ACK of the 2.04.
    pub validated: bool,
    pub stats: FinishStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Receiving,
    /// Validated at UpdateFinish; the 2.04 is out, the commit waits for its ACK.
    Validated,
}

/// The open `/sys/fw_transfer` (`detail::TransferState`).
#[derive(Debug, Clone)]
struct ResumeState {
    /// The current record as RAM holds it.
    record: TransferRecord,
    /// SHA-256 context over [0, record.partial_size).
    hasher: Sha256,
    /// The file as the open handle sees it (synced or not).
    file: TransferFile,
    last_sync: Duration,
    /// Bytes of progress not yet synced; > 0 means the file has unsynced writes.
    bytes_to_sync: u32,
    /// Partial size when this transfer started.
    start_offset: u32,
    /// Partial size the store holds (`None`: no record stored).
    synced_partial: Option<u32>,
}

#[derive(Debug, Clone)]
struct Transfer {
    phase: Phase,
    file_size: u32,
    chunk_size: u32,
    resume_offset: u32,
    /// `fileOffset_`: bytes [0, offset) received without a gap.
    offset: u32,
    chunk_count: u32,
    window: ReceiveWindow,
    unacked: u32,
    had_gaps: bool,
    /// Time of the last chunk, or of the start before any chunk.
    last_chunk: Duration,
    written_bytes: u32,
    stats: FinishStats,
    /// `discardData_`: Discard-Data of UpdateFinish, or set by a failed validation.
    discard: bool,
    /// Error that will end the transfer when the cloud acknowledges its error response.
    failure: Option<i32>,
    resume: Option<ResumeState>,
    staged: Vec<StagedModule>,
}

/// Device OS's OTA v3 receiver for one emulated device. See the module documentation.
#[derive(Debug, Clone)]
pub struct OtaReceiver {
    config: OtaConfig,
    transfer: Option<Transfer>,
    acks: VecDeque<UpdateAck>,
    events: VecDeque<OtaEvent>,
}

/// Bytes read at a time when hashing the staged prefix (a bound on memory, not on behaviour).
const HASH_READ_BLOCK: u32 = 64 * 1024;

/// Validity bits of `hal_module_t` (`hal/inc/ota_flash_hal.h`), for rtl872x messages.
mod validity {
    pub const INTEGRITY: u32 = 1 << 1;
    pub const DEPENDENCIES: u32 = 1 << 2;
    pub const RANGE: u32 = 1 << 3;
    pub const PLATFORM: u32 = 1 << 4;
    pub const DEPENDENCIES_FULL: u32 = 1 << 6;
    /// What `HAL_FLASH_OTA_Validate(true, INTEGRITY | DEPENDENCIES_FULL)` checks.
    pub const CHECKED: u32 = RANGE | DEPENDENCIES | PLATFORM | INTEGRITY | DEPENDENCIES_FULL;
}

impl OtaReceiver {
    pub fn new(config: OtaConfig) -> OtaReceiver {
        OtaReceiver {
            config,
            transfer: None,
            acks: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &OtaConfig {
        &self.config
    }

    /// An error with the wire message this platform sends: `specific` when the platform has
    /// error messages, else the code's default text.
    fn error(&self, code: i32, specific: impl Into<String>) -> OtaError {
        let specific = specific.into();
        let message = if self.config.error_messages && !specific.is_empty() {
            specific.clone()
        } else {
            default_message(code).to_string()
        };
        OtaError::new(code, message).with_detail(specific)
    }

    /// Maps a flash or store failure outside validation: power loss (U1) or FLASH_IO.
    fn io_error(&self, what: &str, e: &DeviceError) -> OtaError {
        if e.is_power_loss() {
            OtaError::power_lost(format!("{what}: {e}"))
        } else {
            self.error(SystemError::FLASH_IO, format!("{what}: {e}"))
        }
    }

    /// The option checks Device OS makes before anything else (`decodeStartRequest`). An error
    /// here is answered with a piggy-backed error ACK and changes nothing (a running update
    /// goes on). [`OtaReceiver::start`] makes the same checks.
    pub fn check_start(&self, request: &UpdateStart) -> Result<(), OtaError> {
        if request.file_size == 0 {
            return Err(self.error(SystemError::PROTOCOL, "Invalid file size: 0"));
        }
        let cs = request.chunk_size;
        if !(MIN_OTA_CHUNK_SIZE..=MAX_OTA_CHUNK_SIZE).contains(&cs) || !cs.is_multiple_of(4) {
            return Err(self.error(SystemError::PROTOCOL, format!("Invalid chunk size: {cs}")));
        }
        Ok(())
    }

    /// UpdateStart (`handleStartRequest` + `startUpdate`). A running update is cancelled
    /// first (its resumable state kept), even when this start is then refused.
    /// `updates_allowed` is `System.updatesEnabled() || System.updatesForced()`. On success the
    /// caller clears the "updates pending" flag (Device OS does it here).
    pub fn start(
        &mut self,
        now: Duration,
        device: &mut Device,
        request: &UpdateStart,
        updates_allowed: bool,
    ) -> Result<StartAccepted, OtaError> {
        self.check_start(request)?;
        if let Some(running) = self.transfer.take() {
            self.end_cancelled(device, running, false, SystemError::CANCELLED)?;
        }
        self.acks.clear();
        if !updates_allowed {
            return Err(self.error(SystemError::OTA_UPDATES_DISABLED, ""));
        }
        // Asset OTA (reference 6.3, `prepareForOta`): size checks first; see crate::assets.
        let is_asset = request.module_function == Some(u32::from(u8::from(ModuleFunction::Asset)));
        let wipe_assets = assets::size_check(device.board(), request.file_size, is_asset)
            .map_err(|why| self.error(SystemError::TOO_LARGE, "").with_detail(why))?;
        let max = device.board().ota.max_binary_size;
        if request.file_size > max {
            return Err(self
                .error(SystemError::OTA_INVALID_SIZE, "")
                .with_detail(format!(
                    "file of {} bytes is larger than the {max}-byte OTA area",
                    request.file_size
                )));
        }
        let resumable_hash = match request.file_sha256 {
            Some(hash) if !request.discard_data => Some(hash),
            _ => None,
        };
        let mut resume = None;
        match resumable_hash {
            None => self.clear_state(device)?,
            Some(hash) => match self.open_state(now, device, request.file_size, hash) {
                Ok(state) => resume = Some(state),
                Err(e) if e.is_power_loss() => {
                    return Err(OtaError::power_lost(format!(
                        "opening {TRANSFER_STATE_KEY}: {e}"
                    )))
                }
                // Not critical in Device OS: the transfer goes on without resumption.
                Err(_) => self.clear_state(device)?,
            },
        }
        let offset = resume.as_ref().map_or(0, |s| s.record.partial_size);
        // UNCONFIRMED (crate::assets A2): the asset region is wiped only when the staging area
        // is erased, not when a transfer resumes (its staged bytes already cover that region).
        if offset == 0 && wipe_assets {
            AssetFs::wipe(device).map_err(|e| self.io_error("wiping the asset storage", &e))?;
        }
        if offset == 0 {
            device
                .begin_staging(request.file_size as usize)
                .map_err(|e| self.io_error("erasing the OTA area", &e))?;
        }
        let transfer_size = request.file_size - offset;
        let chunk_count = transfer_size.div_ceil(request.chunk_size);
        let window = (self.config.window_bytes / request.chunk_size).max(1);
        self.transfer = Some(Transfer {
            phase: Phase::Receiving,
            file_size: request.file_size,
            chunk_size: request.chunk_size,
            resume_offset: offset,
            offset,
            chunk_count,
            window: ReceiveWindow::new(window),
            unacked: 0,
            had_gaps: false,
            last_chunk: now,
            written_bytes: offset,
            stats: FinishStats::default(),
            discard: false,
            failure: None,
            resume,
            staged: Vec::new(),
        });
        self.events.push_back(OtaEvent::Begin {
            file_size: request.file_size,
        });
        Ok(StartAccepted {
            window_size: window,
            resume_offset: offset,
        })
    }

    /// `initTransferState`: resume from the stored record when it names this file and the
    /// staged prefix still hashes to it; otherwise remove the file and start a new record.
    fn open_state(
        &self,
        now: Duration,
        device: &mut Device,
        file_size: u32,
        file_hash: [u8; 32],
    ) -> Result<ResumeState, DeviceError> {
        if let Some(bytes) = device.store_get(TRANSFER_STATE_KEY)? {
            let file = TransferFile::from_bytes(bytes);
            if let Ok(record) = file.current() {
                if record.file_size == file_size
                    && record.partial_size <= file_size
                    && record.file_hash == file_hash
                {
                    let hasher = hash_staged(device, record.partial_size)?;
                    if <[u8; 32]>::from(hasher.clone().finalize()) == record.partial_hash {
                        return Ok(ResumeState {
                            record,
                            hasher,
                            file,
                            last_sync: now,
                            bytes_to_sync: 0,
                            start_offset: record.partial_size,
                            synced_partial: Some(record.partial_size),
                        });
                    }
                }
            }
        }
        device.store_remove(TRANSFER_STATE_KEY)?;
        Ok(ResumeState {
            record: TransferRecord {
                file_hash,
                partial_hash: [0; 32],
                file_size,
                partial_size: 0,
            },
            hasher: Sha256::new(),
            file: TransferFile::new(),
            last_sync: now,
            bytes_to_sync: 0,
            start_offset: 0,
            synced_partial: None,
        })
    }

    /// `clearTransferState`: removes `/sys/fw_transfer`. Only a power loss is an error.
    fn clear_state(&self, device: &mut Device) -> Result<(), OtaError> {
        match device.store_remove(TRANSFER_STATE_KEY) {
            Err(e) if e.is_power_loss() => Err(OtaError::power_lost(format!(
                "removing {TRANSFER_STATE_KEY}: {e}"
            ))),
            // Device OS only logs a failed removal.
            _ => Ok(()),
        }
    }

    /// UpdateChunk (`handleChunkRequest` + `saveChunk`).
    pub fn chunk(
        &mut self,
        now: Duration,
        device: &mut Device,
        chunk: &UpdateChunk,
    ) -> ChunkOutcome {
        let Some(mut t) = self.transfer.take() else {
            return ChunkOutcome::NotRunning;
        };
        t.stats.recv_chunks += 1;
        let index = chunk.index;
        let len = u32::try_from(chunk.data.len()).unwrap_or(u32::MAX);
        if index == 0 || index > t.chunk_count {
            let e = self.error(
                SystemError::PROTOCOL,
                format!("Invalid chunk index: {index}"),
            );
            return self.reject(device, t, e);
        }
        let transfer_size = u64::from(t.file_size - t.resume_offset);
        let end = u64::from(index - 1) * u64::from(t.chunk_size) + u64::from(len);
        if (index < t.chunk_count && len != t.chunk_size)
            || (index == t.chunk_count && end != transfer_size)
        {
            let e = self.error(SystemError::PROTOCOL, format!("Invalid chunk size: {len}"));
            return self.reject(device, t, e);
        }
        let placement = t.window.place(index);
        let outcome = match placement {
            Placement::Duplicate => {
                t.stats.dup_chunks += 1;
                ChunkOutcome::Duplicate
            }
            Placement::OutOfWindow => ChunkOutcome::OutOfWindow,
            Placement::New {
                relative,
                out_of_order,
                advanced,
            } => {
                if out_of_order {
                    t.stats.ooo_chunks += 1;
                }
                let chunk_offset = t.offset + relative * t.chunk_size;
                t.offset = t
                    .offset
                    .saturating_add(advanced.saturating_mul(t.chunk_size))
                    .min(t.file_size);
                if let Err(e) = write_chunk(device, chunk_offset, &chunk.data) {
                    if e.is_power_loss() {
                        return self.power_lost();
                    }
                    let e = self.error(
                        SystemError::FLASH_IO,
                        format!("Failed to save firmware data: {e}"),
                    );
                    // `saveChunk` ends the update itself; the state is closed as it stands.
                    return self.reject(device, t, e);
                }
                // Only a power loss comes back from here.
                if self
                    .advance_state(now, device, &mut t, chunk_offset, &chunk.data)
                    .is_err()
                {
                    return self.power_lost();
                }
                t.written_bytes = t.written_bytes.saturating_add(len).min(t.file_size);
                self.events.push_back(OtaEvent::Progress {
                    received_bytes: t.written_bytes,
                    file_size: t.file_size,
                });
                ChunkOutcome::Written
            }
        };
        let has_gaps = t.window.has_gaps();
        t.unacked += 1;
        if placement == Placement::Duplicate
            || has_gaps
            || has_gaps != t.had_gaps
            || t.window.cumulative() == t.chunk_count
            || t.unacked >= self.config.ack_count
            || now.saturating_sub(t.last_chunk) >= self.config.ack_delay
        {
            self.acks.push_back(t.window.ack());
            t.unacked = 0;
            t.stats.sent_acks += 1;
        }
        t.had_gaps = has_gaps;
        t.last_chunk = now;
        self.transfer = Some(t);
        outcome
    }

    /// A rejected chunk: the update is cancelled (resumable state kept unless already marked
    /// for discard) and the caller replies RST.
    fn reject(&mut self, device: &mut Device, t: Transfer, e: OtaError) -> ChunkOutcome {
        let discard = t.discard;
        match self.end_cancelled(device, t, discard, e.code) {
            Err(_) => self.power_lost(),
            Ok(()) => ChunkOutcome::Rejected(e),
        }
    }

    fn power_lost(&mut self) -> ChunkOutcome {
        self.forget();
        ChunkOutcome::PowerLost
    }

    /// RAM is gone: nothing of the transfer survives but what flash holds.
    fn forget(&mut self) {
        self.transfer = None;
        self.acks.clear();
    }

    /// `updateTransferState`: extend the hashed prefix over this chunk and any gap it filled,
    /// save the record to the open file, and sync it when the interval has passed. Only a
    /// power loss is an error; other failures drop resumption, as Device OS does.
    fn advance_state(
        &self,
        now: Duration,
        device: &mut Device,
        t: &mut Transfer,
        chunk_offset: u32,
        data: &[u8],
    ) -> Result<(), OtaError> {
        let Some(state) = t.resume.as_mut() else {
            return Ok(());
        };
        match update_state(
            state,
            now,
            device,
            chunk_offset,
            data,
            t.offset,
            self.config.sync_interval,
        ) {
            Ok(()) => Ok(()),
            Err(e) if e.is_power_loss() => Err(OtaError::power_lost(e)),
            Err(_) => {
                t.resume = None;
                self.clear_state(device)
            }
        }
    }

    /// The next ack to send: one decided by a chunk, or the delayed ack once
    /// [`OtaConfig::ack_delay`] has passed since the last chunk with chunks unacknowledged.
    /// Call after every [`OtaReceiver::chunk`] and at every deadline from
    /// [`OtaReceiver::poll_timeout`] until it returns `None`.
    pub fn poll_ack(&mut self, now: Duration) -> Option<UpdateAck> {
        if let Some(ack) = self.acks.pop_front() {
            return Some(ack);
        }
        let t = self.transfer.as_mut()?;
        if t.unacked > 0 && now.saturating_sub(t.last_chunk) >= self.config.ack_delay {
            t.unacked = 0;
            t.stats.sent_acks += 1;
            return Some(t.window.ack());
        }
        None
    }

    /// The earliest time [`OtaReceiver::poll_ack`] or [`OtaReceiver::handle_timeout`] has work:
    /// a queued ack (zero: already due), the delayed ack, the state sync, the transfer timeout.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if !self.acks.is_empty() {
            return Some(Duration::ZERO);
        }
        let t = self.transfer.as_ref()?;
        let mut next = t.last_chunk.saturating_add(self.config.transfer_timeout);
        if t.unacked > 0 {
            next = next.min(t.last_chunk.saturating_add(self.config.ack_delay));
        }
        if let Some(state) = t.resume.as_ref().filter(|s| s.bytes_to_sync > 0) {
            next = next.min(state.last_sync.saturating_add(self.config.sync_interval));
        }
        Some(next)
    }

    /// Timers: syncs the resume state when its interval has passed (Device OS's idle-loop
    /// sync), and cancels the update after [`OtaConfig::transfer_timeout`] without a chunk
    /// (also while the 2.04 waits for its ACK). `Some` means the update ended: the connection
    /// layer closes the connection and reconnects; or the power went (U1).
    pub fn handle_timeout(&mut self, now: Duration, device: &mut Device) -> Option<OtaError> {
        let mut t = self.transfer.take()?;
        if let Some(state) = t.resume.as_mut() {
            if state.bytes_to_sync > 0
                && now.saturating_sub(state.last_sync) >= self.config.sync_interval
            {
                match sync_state(state, now, device) {
                    Ok(()) => {}
                    Err(e) if e.is_power_loss() => {
                        self.forget();
                        return Some(OtaError::power_lost(e));
                    }
                    Err(_) => {
                        t.resume = None;
                        if let Err(e) = self.clear_state(device) {
                            self.forget();
                            return Some(e);
                        }
                    }
                }
            }
        }
        if now.saturating_sub(t.last_chunk) >= self.config.transfer_timeout {
            let e = self.error(SystemError::TIMEOUT, "Transfer timeout");
            let discard = t.discard;
            return Some(
                match self.end_cancelled(device, t, discard, SystemError::TIMEOUT) {
                    Ok(()) => e,
                    Err(power) => power,
                },
            );
        }
        self.transfer = Some(t);
        None
    }

    /// UpdateFinish (`handleFinishRequest`). With Cancel-Update the update is cancelled
    /// (Discard-Data also clears the resume state). Otherwise the file must be complete, and is
    /// validated as `HAL_FLASH_OTA_Validate` does; nothing is committed yet.
    ///
    /// On `Err` the update is still running, as in Device OS until the cloud ACKs the error
    /// response: call [`OtaReceiver::cancel`] then. A failed validation marks the resume state
    /// for discard (the next attempt restarts at 0) whatever `cancel` is given; an incomplete
    /// transfer does not.
    pub fn finish(
        &mut self,
        _now: Duration,
        device: &mut Device,
        request: &UpdateFinish,
    ) -> Result<FinishOutcome, OtaError> {
        let Some(mut t) = self.transfer.take() else {
            return Err(self.error(SystemError::INVALID_STATE, ""));
        };
        if request.cancel {
            self.end_cancelled(device, t, request.discard_data, SystemError::CANCELLED)?;
            return Ok(FinishOutcome::Cancelled);
        }
        if t.offset != t.file_size {
            let e = self
                .error(SystemError::PROTOCOL, "Incomplete file transfer")
                .with_detail(format!(
                    "Incomplete file transfer: {} of {} bytes received",
                    t.offset, t.file_size
                ));
            t.failure = Some(e.code);
            self.transfer = Some(t);
            return Err(e);
        }
        t.discard = request.discard_data;
        match self.validate(device, t.file_size) {
            Ok(staged) => {
                t.staged = staged;
                t.phase = Phase::Validated;
                t.failure = None;
                let stats = t.stats;
                self.transfer = Some(t);
                self.events.push_back(OtaEvent::Validated);
                Ok(FinishOutcome::Validated(stats))
            }
            Err(e) if e.is_power_loss() => {
                self.forget();
                Err(e)
            }
            Err(e) => {
                t.discard = true;
                t.failure = Some(e.code);
                self.transfer = Some(t);
                Err(e)
            }
        }
    }

    /// The cloud ACKed the 2.04 (`responseAck` + `finishUpdate(0 | DISCARD_DATA)`): the final
    /// SHA-256 check of a resumable transfer, then `HAL_FLASH_End` (validation again, module
    /// slots written: the commit point). After `Ok` the caller sets `reset_pending` and resets
    /// with reason update (when resets are enabled); the bootloader applies the slots. After
    /// `Err` the update is over (failed) and the connection is dropped.
    pub fn commit(&mut self, device: &mut Device) -> Result<(), OtaError> {
        let Some(mut t) = self.transfer.take() else {
            return Err(self.error(SystemError::INVALID_STATE, ""));
        };
        if t.phase != Phase::Validated {
            self.transfer = Some(t);
            return Err(self
                .error(SystemError::INVALID_STATE, "")
                .with_detail("commit before UpdateFinish validated the file"));
        }
        self.acks.clear();
        let mut result = Ok(());
        if let Some(state) = t.resume.take() {
            result = self.finalize_state(device, state, t.file_size);
        }
        if let Err(e) = &result {
            if e.is_power_loss() {
                self.forget();
                return result;
            }
        }
        if result.is_err() || t.discard {
            if let Err(e) = self.clear_state(device) {
                self.forget();
                return Err(e);
            }
        }
        if result.is_ok() {
            result = match self.staged_asset(device, t.file_size) {
                // `HAL_FLASH_End` for an asset: stored in the asset file system at once.
                Ok(Some(module)) => {
                    device.flash_mut().set_part(Some(Activity::AssetStore));
                    let stored = self.store_asset(device, &module);
                    device.flash_mut().set_part(None);
                    stored
                }
                Ok(None) => self.validate(device, t.file_size).and_then(|staged| {
                    t.staged = staged;
                    device
                        .commit_staged(&t.staged)
                        .map_err(|e| self.commit_error(&e))
                }),
                Err(e) => Err(e),
            };
        }
        match &result {
            Err(e) if e.is_power_loss() => self.forget(),
            Err(e) => self.events.push_back(OtaEvent::Failed { code: e.code }),
            Ok(()) => self.events.push_back(OtaEvent::Complete),
        }
        result
    }

    /// `finalizeTransferState`: the whole file must have been hashed and match File-Sha256;
    /// then the file is closed (synced). It stays: re-sending the same file resumes at its end.
    fn finalize_state(
        &self,
        device: &mut Device,
        mut state: ResumeState,
        file_size: u32,
    ) -> Result<(), OtaError> {
        if state.record.partial_size != file_size {
            return Err(self
                .error(SystemError::OTA_INVALID_SIZE, "")
                .with_detail(format!(
                    "resume state covers {} of {file_size} bytes",
                    state.record.partial_size
                )));
        }
        if state.record.partial_hash != state.record.file_hash {
            return Err(self.error(
                SystemError::OTA_RESUMED_UPDATE_FAILED,
                "Integrity check of a resumed update has failed",
            ));
        }
        close_state(&mut state, device).map_err(|e| self.io_error("closing the resume state", &e))
    }

    fn commit_error(&self, e: &DeviceError) -> OtaError {
        match e {
            DeviceError::NoFreeSlot => {
                self.error(SystemError::NO_MEMORY, "No module slot available")
            }
            other => self.io_error("writing the module slots", other),
        }
    }

    /// Disconnect, sleep, reset, or the cloud ACKed an error response
    /// (`FirmwareUpdate::reset` / `cancelUpdate`): a running update is cancelled. The resume
    /// state is synced and kept (`CANCEL`), or removed when `discard` or a failed validation
    /// asked for it (`CANCEL | DISCARD_DATA`). Only a power loss is an error.
    pub fn cancel(&mut self, device: &mut Device, discard: bool) -> Result<(), OtaError> {
        self.acks.clear();
        let Some(t) = self.transfer.take() else {
            return Ok(());
        };
        let discard = discard || t.discard;
        let code = t.failure.unwrap_or(SystemError::CANCELLED);
        self.end_cancelled(device, t, discard, code)
    }

    /// `finishUpdate(CANCEL [| DISCARD_DATA])` + `endUpdate(false)`.
    fn end_cancelled(
        &mut self,
        device: &mut Device,
        mut t: Transfer,
        discard: bool,
        code: i32,
    ) -> Result<(), OtaError> {
        self.acks.clear();
        if discard {
            t.resume = None;
            if let Err(e) = self.clear_state(device) {
                self.forget();
                return Err(e);
            }
        } else if let Some(state) = t.resume.as_mut() {
            match close_state(state, device) {
                Err(e) if e.is_power_loss() => {
                    self.forget();
                    return Err(OtaError::power_lost(format!(
                        "closing the resume state: {e}"
                    )));
                }
                // Device OS only logs a failed close.
                _ => {}
            }
        }
        self.events.push_back(OtaEvent::Failed { code });
        Ok(())
    }

    /// Validation as `HAL_FLASH_OTA_Validate(userDepsOptional = true, INTEGRITY |
    /// DEPENDENCIES_FULL)` and `validateModules` do it, returning the slots that would apply
    /// the file.
    fn validate(&self, device: &mut Device, file_size: u32) -> Result<Vec<StagedModule>, OtaError> {
        if self.staged_asset(device, file_size)?.is_some() {
            return Ok(Vec::new());
        }
        let staged = device
            .validate_staged(file_size as usize)
            .map_err(|e| self.validation_error(&e))?;
        let file = device
            .read_staging(0, file_size as usize)
            .map_err(|e| self.io_error("reading the OTA area", &e))?;
        let ranges = split_combined(&file).map_err(|e| {
            self.error(SystemError::OTA_MODULE_NOT_FOUND, "Unable to fetch module")
                .with_detail(e.to_string())
        })?;
        for range in ranges {
            let part = file.get(range).unwrap_or_default();
            let module = Module::parse(part).map_err(|e| {
                self.error(SystemError::OTA_MODULE_NOT_FOUND, "Unable to fetch module")
                    .with_detail(e.to_string())
            })?;
            if let Some(unmet) = unmet_dependency(device, &module)
                .map_err(|e| self.io_error("reading installed modules", &e))?
            {
                let result =
                    validity::CHECKED & !(validity::DEPENDENCIES | validity::DEPENDENCIES_FULL);
                return Err(self
                    .validity_error(SystemError::OTA_DEPENDENCY_CHECK_FAILED, result)
                    .with_detail(unmet));
            }
            let p = &module.prefix;
            let compressed = p.flags.contains(ModuleFlags::COMPRESSED);
            if module.prefix_offset > 0
                && (compressed || p.flags.contains(ModuleFlags::DROP_MODULE_INFO))
            {
                return Err(self.error(SystemError::OTA_INVALID_FORMAT, "Invalid module format"));
            }
            if compressed
                && !matches!(
                    p.function,
                    ModuleFunction::UserPart | ModuleFunction::SystemPart | ModuleFunction::Asset
                )
            {
                return Err(self.error(
                    SystemError::OTA_UNSUPPORTED_MODULE,
                    "Unsupported compressed module",
                ));
            }
        }
        Ok(staged)
    }

    /// The staged file when it is an asset module (function 9), checked as Device OS's
    /// `AssetReader::validate` does; `Ok(None)` for any other file.
    ///
    /// UNCONFIRMED: the asset checks are made at UpdateFinish (an error response, nothing
    /// stored) as well as at the commit; a CRC mismatch is -1330, anything else -1320.
    fn staged_asset(&self, device: &Device, file_size: u32) -> Result<Option<Vec<u8>>, OtaError> {
        let file = device
            .read_staging(0, file_size as usize)
            .map_err(|e| self.io_error("reading the OTA area", &e))?;
        let is_asset =
            Module::parse(&file).is_ok_and(|m| m.prefix.function == ModuleFunction::Asset);
        if !is_asset {
            return Ok(None);
        }
        match AssetModule::parse(&file) {
            Ok(_) => Ok(Some(file)),
            Err(e) => {
                let crc = Module::parse(&file).is_ok_and(|m| !m.crc_valid());
                let code = if crc {
                    SystemError::OTA_INTEGRITY_CHECK_FAILED
                } else {
                    SystemError::OTA_VALIDATION_FAILED
                };
                Err(self.error(code, "").with_detail(e.to_string()))
            }
        }
    }

    /// `AssetManager::storeAsset` (reference 6.3): files the running application does not
    /// require are removed, the module is written, the consumer state becomes WANT.
    ///
    /// A flash I/O error here fails the commit with FLASH_IO (-219) like a failed slot write
    /// (`HAL_FLASH_End` returns the error; PR #2270's path: the device reconnects without a
    /// reset and keeps running). UNCONFIRMED: that Device OS keeps the closed transfer file, so
    /// that the cloud's next attempt resumes at its end; the asset store is power-safe, so
    /// what was stored before the error (and the removals) stays as written.
    fn store_asset(&self, device: &mut Device, module: &[u8]) -> Result<(), OtaError> {
        let required = assets::required_by_running_app(device)
            .map_err(|e| self.io_error("reading the application", &e))?;
        AssetFs::store(device, module, &required)
            .map_err(|e| self.io_error("storing the asset", &e))?;
        AssetFs::set_consumer_state(device, ConsumerState::Want)
            .map_err(|e| self.io_error("writing the asset consumer state", &e))
    }

    /// `validateModules`' message for a module whose validity `result` lacks checked bits.
    fn validity_error(&self, code: i32, result: u32) -> OtaError {
        self.error(
            code,
            format!(
                "Validation failed; result: 0x{result:02x}; checked: 0x{:02x}",
                validity::CHECKED
            ),
        )
    }

    /// The one place where the device model's staging validation errors become Device OS's
    /// OTA error codes (`fetchModules`, `validityResultToSystemError`, see U2-U4):
    ///
    /// | `DeviceError` | Device OS | code |
    /// |---|---|---|
    /// | `Module` (not a module file) | `fetch_module` fails | -1300 |
    /// | `Placement(Unparsable)` | `fetch_module` fails | -1300 |
    /// | `Placement(BadCompression)` | not checked at OTA (U4) | -1320 |
    /// | `Placement(NoRegion)` | no bounds for function/index: `fetch_module` fails | -1300 |
    /// | `Placement(OutsideRegion)` | module end outside the bounds: `fetch_module` fails (U2) | -1300 |
    /// | `Placement(CrcMismatch)` | INTEGRITY bit missing | -1330 |
    /// | `Placement(WrongPlatform)` | PLATFORM bit missing | -1360 |
    /// | `TooLarge`, `Empty` | file size | -1351 |
    /// | flash or store failure | power loss (U1), else FLASH_IO | -219 |
    ///
    /// Dependency (-1340), format (-1370) and compression (-1310) checks are made by
    /// [`OtaReceiver::validate`] after this.
    fn validation_error(&self, e: &DeviceError) -> OtaError {
        let fetch_failed = || {
            self.error(SystemError::OTA_MODULE_NOT_FOUND, "Unable to fetch module")
                .with_detail(e.to_string())
        };
        match e {
            DeviceError::Placement {
                source: PlacementError::BadCompression(_),
                ..
            } => self
                .error(SystemError::OTA_VALIDATION_FAILED, "")
                .with_detail(e.to_string()),
            DeviceError::Module { .. }
            | DeviceError::Placement {
                source:
                    PlacementError::Unparsable(_)
                    | PlacementError::NoRegion { .. }
                    | PlacementError::OutsideRegion { .. },
                ..
            } => fetch_failed(),
            DeviceError::Placement {
                source: PlacementError::CrcMismatch { .. },
                ..
            } => self
                .validity_error(
                    SystemError::OTA_INTEGRITY_CHECK_FAILED,
                    validity::CHECKED & !validity::INTEGRITY,
                )
                .with_detail(e.to_string()),
            DeviceError::Placement {
                source: PlacementError::WrongPlatform { .. },
                ..
            } => self
                .validity_error(
                    SystemError::OTA_INVALID_PLATFORM,
                    validity::CHECKED & !validity::PLATFORM,
                )
                .with_detail(e.to_string()),
            DeviceError::TooLarge { .. } | DeviceError::Empty => self
                .error(SystemError::OTA_INVALID_SIZE, "")
                .with_detail(e.to_string()),
            DeviceError::Asset(_) => self
                .error(SystemError::OTA_VALIDATION_FAILED, "")
                .with_detail(e.to_string()),
            DeviceError::NoFreeSlot
            | DeviceError::MissingRegion { .. }
            | DeviceError::Flash(_)
            | DeviceError::Store(_) => self.io_error("validating the OTA area", e),
        }
    }

    pub fn is_running(&self) -> bool {
        self.transfer.is_some()
    }

    pub fn progress(&self) -> Option<OtaProgress> {
        let t = self.transfer.as_ref()?;
        Some(OtaProgress {
            file_size: t.file_size,
            chunk_size: t.chunk_size,
            resume_offset: t.resume_offset,
            chunk_count: t.chunk_count,
            cumulative_chunks: t.window.cumulative(),
            contiguous_bytes: t.offset,
            resumable: t.resume.is_some(),
            synced_bytes: t.resume.as_ref().and_then(|s| s.synced_partial),
            validated: t.phase == Phase::Validated,
            stats: t.stats,
        })
    }

    /// The next system event, oldest first.
    pub fn poll_event(&mut self) -> Option<OtaEvent> {
        self.events.pop_front()
    }
}

/// `HAL_FLASH_Update`, with NOR semantics when the bytes there differ (U9).
fn write_chunk(device: &mut Device, offset: u32, data: &[u8]) -> Result<(), DeviceError> {
    match device.write_staging(offset, data) {
        Err(DeviceError::Flash(FlashError::ProgramWouldSetBits { .. })) => {
            let old = device.read_staging(offset, data.len())?;
            let merged: Vec<u8> = old.iter().zip(data).map(|(o, n)| o & n).collect();
            device.write_staging(offset, &merged)
        }
        other => other,
    }
}

/// SHA-256 context over staged bytes [0, len).
fn hash_staged(device: &Device, len: u32) -> Result<Sha256, DeviceError> {
    let mut hasher = Sha256::new();
    extend_hash(device, &mut hasher, 0, len)?;
    Ok(hasher)
}

fn extend_hash(
    device: &Device,
    hasher: &mut Sha256,
    from: u32,
    to: u32,
) -> Result<(), DeviceError> {
    let mut at = from;
    while at < to {
        let n = (to - at).min(HASH_READ_BLOCK);
        hasher.update(device.read_staging(at, n as usize)?);
        at += n;
    }
    Ok(())
}

/// `updateTransferState` on an open state. `partial` is the protocol's contiguous offset after
/// this chunk.
fn update_state(
    state: &mut ResumeState,
    now: Duration,
    device: &mut Device,
    chunk_offset: u32,
    data: &[u8],
    partial: u32,
    sync_interval: Duration,
) -> Result<(), DeviceError> {
    let before = state.record.partial_size;
    let chunk_end = chunk_offset.saturating_add(u32::try_from(data.len()).unwrap_or(u32::MAX));
    if before >= chunk_offset && before < chunk_end {
        let from = (before - chunk_offset) as usize;
        state.hasher.update(data.get(from..).unwrap_or_default());
        state.record.partial_size = chunk_end;
    }
    if partial > state.record.partial_size {
        extend_hash(
            device,
            &mut state.hasher,
            state.record.partial_size,
            partial,
        )?;
        state.record.partial_size = partial;
    }
    if state.record.partial_size > before {
        state.record.partial_hash = state.hasher.clone().finalize().into();
        state.file.save(&state.record);
        // Device OS avoids syncing at the very first chunk of a transfer.
        if before == state.start_offset {
            state.last_sync = now;
        }
        state.bytes_to_sync += state.record.partial_size - before;
    }
    if state.bytes_to_sync > 0 && now.saturating_sub(state.last_sync) >= sync_interval {
        sync_state(state, now, device)?;
    }
    Ok(())
}

/// `lfs_file_sync`: the open file reaches flash (one atomic store write).
fn sync_state(
    state: &mut ResumeState,
    now: Duration,
    device: &mut Device,
) -> Result<(), DeviceError> {
    device.store_put(TRANSFER_STATE_KEY, state.file.as_bytes())?;
    state.last_sync = now;
    state.bytes_to_sync = 0;
    state.synced_partial = Some(state.record.partial_size);
    Ok(())
}

/// `lfs_file_close`: unsynced writes reach flash.
fn close_state(state: &mut ResumeState, device: &mut Device) -> Result<(), DeviceError> {
    if state.bytes_to_sync > 0 {
        let last = state.last_sync;
        sync_state(state, last, device)?;
    }
    Ok(())
}

/// `validate_module_dependencies(userOptional = true, fullDeps = true)` for a staged module:
/// `Some(reason)` when a dependency is not met by what is installed.
fn unmet_dependency(device: &Device, module: &Module) -> Result<Option<String>, DeviceError> {
    let p = &module.prefix;
    let [first, second] = p.dependencies;
    // User-part dependencies are optional at OTA time (an app needing a newer Device OS is
    // accepted and runs in safe mode after the reboot); with no first dependency the second
    // is not looked at either.
    if p.function == ModuleFunction::UserPart || first.function == ModuleFunction::None {
        return full_dependencies(device, module);
    }
    if let Some(reason) = dependency_unmet(device, &first)? {
        return Ok(Some(reason));
    }
    // A second dependency on the bootloader is optional too (`userOptional`).
    if !matches!(
        second.function,
        ModuleFunction::None | ModuleFunction::Bootloader
    ) {
        if let Some(reason) = dependency_unmet(device, &second)? {
            return Ok(Some(reason));
        }
    }
    full_dependencies(device, module)
}

/// Whether the installed module `dep` names is at least its version.
fn dependency_unmet(device: &Device, dep: &Dependency) -> Result<Option<String>, DeviceError> {
    let (function, index) = (u8::from(dep.function), dep.index);
    let Some(region) = device.board().region_for_module(function, index) else {
        // U5: not modelled on this board.
        return Ok(None);
    };
    let installed = match read_region(device.board(), device.flash(), region)? {
        RegionContent::Module(m) => Some(m.prefix.version),
        _ => None,
    };
    Ok(match installed {
        Some(v) if v >= dep.version => None,
        other => Some(format!(
            "needs module {function}/{index} version {} or later, installed: {}",
            dep.version,
            other.map_or("none".to_string(), |v| v.to_string())
        )),
    })
}

/// `validate_module_dependencies_full`: a new system part must still satisfy every other
/// installed system part that depends on it.
fn full_dependencies(device: &Device, module: &Module) -> Result<Option<String>, DeviceError> {
    let p = &module.prefix;
    if p.function != ModuleFunction::SystemPart {
        return Ok(None);
    }
    let board = device.board();
    for region in board.module_regions() {
        let Some(id) = region.module else { continue };
        if id.function != u8::from(ModuleFunction::SystemPart) {
            continue;
        }
        let RegionContent::Module(m) = read_region(board, device.flash(), region)? else {
            continue;
        };
        if m.prefix.start_address == p.start_address && m.prefix.index == p.index {
            continue; // the module being replaced
        }
        for dep in m.prefix.dependencies {
            if dep.function == p.function && dep.index == p.index && p.version < dep.version {
                return Ok(Some(format!(
                    "installed system part {}/{} needs version {} of this module, which is {}",
                    id.function, id.index, dep.version, p.version
                )));
            }
        }
    }
    Ok(None)
}
