//! [`DebugProbe`] on a real debug probe through probe-rs 0.32 (cargo feature `probe-rs`; not
//! built by `cargo test`): the probe is found by its serial number (`probe-rs list`), the
//! target attached by chip name (`nRF52840_xxAA` for Boron/Argon/B-SoM/Tracker; the P2's
//! RTL872x where probe-rs supports it), flashing through probe-rs's flash loader, memory reads
//! and resets through core 0, RTT from up-channel 0. Written against the probe-rs 0.32 sources;
//! not run against hardware here.

use std::time::Duration;

use probe_rs::flashing::DownloadOptions;
use probe_rs::probe::list::Lister;
use probe_rs::rtt::Rtt;
use probe_rs::{MemoryInterface, Permissions, Session};

use super::probe::{DebugProbe, ProbeError};

fn err(what: &str, e: impl std::fmt::Display) -> ProbeError {
    ProbeError(format!("{what}: {e}"))
}

pub struct ProbeRsProbe {
    serial: String,
    chip: String,
    session: Option<Session>,
    rtt: Option<Rtt>,
}

impl ProbeRsProbe {
    pub fn new(serial: &str, chip: &str) -> Self {
        ProbeRsProbe {
            serial: serial.to_string(),
            chip: chip.to_string(),
            session: None,
            rtt: None,
        }
    }

    fn session(&mut self) -> Result<&mut Session, ProbeError> {
        if self.session.is_none() {
            self.attach()?;
        }
        self.session
            .as_mut()
            .ok_or_else(|| ProbeError("not attached".into()))
    }
}

impl DebugProbe for ProbeRsProbe {
    fn attach(&mut self) -> Result<String, ProbeError> {
        let lister = Lister::new();
        let info = lister
            .list_all()
            .into_iter()
            .find(|p| p.serial_number.as_deref() == Some(self.serial.as_str()))
            .ok_or_else(|| ProbeError(format!("no probe with serial number {}", self.serial)))?;
        let probe = info.open().map_err(|e| err("opening the probe", e))?;
        let session = probe
            .attach(self.chip.as_str(), Permissions::default())
            .map_err(|e| err(&format!("attaching to {}", self.chip), e))?;
        self.session = Some(session);
        self.rtt = None;
        Ok(self.chip.clone())
    }

    fn flash(&mut self, address: u32, image: &[u8]) -> Result<(), ProbeError> {
        let session = self.session()?;
        let mut loader = session.target().flash_loader();
        loader
            .add_data(u64::from(address), image)
            .map_err(|e| err("flash", e))?;
        loader
            .commit(session, DownloadOptions::default())
            .map_err(|e| err("flash", e))
    }

    fn reset(&mut self) -> Result<(), ProbeError> {
        // The RTT control block moves with the new run.
        self.rtt = None;
        let session = self.session()?;
        let mut core = session.core(0).map_err(|e| err("core 0", e))?;
        core.reset().map_err(|e| err("reset", e))
    }

    fn halt(&mut self) -> Result<(), ProbeError> {
        let session = self.session()?;
        let mut core = session.core(0).map_err(|e| err("core 0", e))?;
        core.halt(Duration::from_millis(500))
            .map(drop)
            .map_err(|e| err("halt", e))
    }

    fn read_memory(&mut self, address: u32, len: usize) -> Result<Vec<u8>, ProbeError> {
        let session = self.session()?;
        let mut core = session.core(0).map_err(|e| err("core 0", e))?;
        let mut buf = vec![0u8; len];
        core.read(u64::from(address), &mut buf)
            .map_err(|e| err("read", e))?;
        Ok(buf)
    }

    fn rtt_read(&mut self) -> Result<Vec<u8>, ProbeError> {
        let mut rtt = self.rtt.take();
        let session = self.session()?;
        let mut core = session.core(0).map_err(|e| err("core 0", e))?;
        if rtt.is_none() {
            // A firmware without an RTT control block has no logs here.
            rtt = Rtt::attach(&mut core).ok();
        }
        let mut out = Vec::new();
        if let Some(r) = rtt.as_mut() {
            if let Some(channel) = r.up_channel(0) {
                let mut buf = [0u8; 1024];
                let n = channel
                    .read(&mut core, &mut buf)
                    .map_err(|e| err("RTT", e))?;
                out.extend_from_slice(&buf[..n]);
            }
        }
        drop(core);
        self.rtt = rtt;
        Ok(out)
    }
}
