//! The debug probe of a board behind the [`DebugProbe`] trait, in the shape of probe-rs
//! (`Probe` -> `Session` -> `Core`): attach by chip name, flash a binary at an address, reset,
//! halt, read memory (module headers, to learn what is installed), RTT logs. The probe-rs
//! implementation is behind the cargo feature `probe-rs` (it needs libusb; see
//! `boards/README.md`); [`RecordingProbe`] is the test double, and
//! [`super::emulated::EmulatedProbe`] programs an emulated board's flash.

use std::fmt;

/// Why the probe could not do something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError(pub String);

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "debug probe: {}", self.0)
    }
}

impl std::error::Error for ProbeError {}

/// A debug probe attached to one board's MCU.
pub trait DebugProbe: Send {
    /// Attaches to the target chip (`nRF52840_xxAA`, ...) and returns its name.
    fn attach(&mut self) -> Result<String, ProbeError>;
    /// Writes `image` to flash at `address` (erasing what it covers).
    fn flash(&mut self, address: u32, image: &[u8]) -> Result<(), ProbeError>;
    /// Resets the MCU and lets it run.
    fn reset(&mut self) -> Result<(), ProbeError>;
    /// Halts the core.
    fn halt(&mut self) -> Result<(), ProbeError>;
    /// Reads `len` bytes of memory at `address`.
    fn read_memory(&mut self, address: u32, len: usize) -> Result<Vec<u8>, ProbeError>;
    /// RTT log bytes since the last call (empty when the firmware has no RTT channel).
    fn rtt_read(&mut self) -> Result<Vec<u8>, ProbeError> {
        Ok(Vec::new())
    }
}

/// What a [`RecordingProbe`] was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeCall {
    Attach,
    Flash { address: u32, len: usize },
    Reset,
    Halt,
    Read { address: u32, len: usize },
}

/// A test double: records every call, answers reads with 0xFF, and fails every call once
/// [`RecordingProbe::fail`] is set (a probe that lost its USB connection).
#[derive(Debug, Default)]
pub struct RecordingProbe {
    pub chip: String,
    pub calls: std::sync::Arc<std::sync::Mutex<Vec<ProbeCall>>>,
    pub fail: Option<String>,
}

impl RecordingProbe {
    pub fn new(chip: &str) -> Self {
        RecordingProbe {
            chip: chip.to_string(),
            ..Self::default()
        }
    }

    fn record(&mut self, call: ProbeCall) -> Result<(), ProbeError> {
        if let Some(why) = &self.fail {
            return Err(ProbeError(why.clone()));
        }
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
        Ok(())
    }
}

impl DebugProbe for RecordingProbe {
    fn attach(&mut self) -> Result<String, ProbeError> {
        self.record(ProbeCall::Attach)?;
        Ok(self.chip.clone())
    }
    fn flash(&mut self, address: u32, image: &[u8]) -> Result<(), ProbeError> {
        self.record(ProbeCall::Flash {
            address,
            len: image.len(),
        })
    }
    fn reset(&mut self) -> Result<(), ProbeError> {
        self.record(ProbeCall::Reset)
    }
    fn halt(&mut self) -> Result<(), ProbeError> {
        self.record(ProbeCall::Halt)
    }
    fn read_memory(&mut self, address: u32, len: usize) -> Result<Vec<u8>, ProbeError> {
        self.record(ProbeCall::Read { address, len })?;
        Ok(vec![0xFF; len])
    }
}
