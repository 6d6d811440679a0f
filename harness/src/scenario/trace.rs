//! The trace of a run: what happened, in the target's time, rendered as stable text lines for
//! snapshots. Nothing in it depends on the machine: timestamps are the target's (virtual for
//! the emulator), randomness comes from the printed seed.

use std::fmt;
use std::time::Duration;

use super::model::{OtaState, RunningVersions};

/// Who published an event of the cloud's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    Device,
    Cloud,
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceKind {
    /// An event of the cloud's event stream.
    Event {
        source: EventSource,
        name: String,
        data: String,
    },
    /// A boot completed: what runs (`None`: nothing bootable).
    Boot {
        running: Option<RunningVersions>,
        safe_mode: bool,
    },
    /// A reset (reason as `spark/device/last_reset` names it).
    Reset {
        reason: String,
    },
    Power {
        on: bool,
    },
    /// An OTA milestone (begin, resumed, progress, complete, failed).
    Ota {
        state: OtaState,
        received: u64,
        total: u64,
        detail: String,
    },
    /// A fault injected (power cut fired, link faults set, partition).
    Fault {
        what: String,
    },
    /// Anything else a target wants in the trace.
    Note {
        text: String,
    },
    /// The runner started a step.
    Step {
        index: usize,
        text: String,
    },
    /// The runner skipped a step or expectation.
    Skipped {
        index: Option<usize>,
        text: String,
        reason: String,
    },
    /// An expectation was checked.
    Checked {
        index: Option<usize>,
        text: String,
        ok: bool,
        detail: String,
    },
}

/// One timestamped trace entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    pub at: Duration,
    pub kind: TraceKind,
    /// The device it concerns, in a scenario with several (`[[cloud.device]] name`).
    pub device: Option<String>,
}

impl TraceEntry {
    pub fn new(at: Duration, kind: TraceKind) -> Self {
        TraceEntry {
            at,
            kind,
            device: None,
        }
    }

    /// The same entry, tagged with the device it concerns.
    pub fn on(mut self, device: Option<&str>) -> Self {
        self.device = device.map(str::to_string);
        self
    }
}

fn step_label(index: Option<usize>) -> String {
    match index {
        Some(i) => format!("step {i}"),
        None => "final".into(),
    }
}

impl fmt::Display for TraceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceKind::Event { source, name, data } => {
                let who = match source {
                    EventSource::Device => "device",
                    EventSource::Cloud => "cloud",
                };
                write!(f, "event {who} {name} {data:?}")
            }
            TraceKind::Boot { running, safe_mode } => match running {
                Some(r) => write!(
                    f,
                    "boot device_os={} app={} bootloader={}{}",
                    r.device_os,
                    r.app,
                    r.bootloader,
                    if *safe_mode { " safe_mode" } else { "" }
                ),
                None => f.write_str("boot nothing bootable"),
            },
            TraceKind::Reset { reason } => write!(f, "reset {reason}"),
            TraceKind::Power { on } => write!(f, "power {}", if *on { "on" } else { "off" }),
            TraceKind::Ota {
                state,
                received,
                total,
                detail,
            } => {
                write!(f, "ota {} {received}/{total}", state.as_str())?;
                if !detail.is_empty() {
                    write!(f, " {detail}")?;
                }
                Ok(())
            }
            TraceKind::Fault { what } => write!(f, "fault {what}"),
            TraceKind::Note { text } => write!(f, "note {text}"),
            TraceKind::Step { index, text } => write!(f, "step {index}: {text}"),
            TraceKind::Skipped {
                index,
                text,
                reason,
            } => write!(f, "skip {}: {text} ({reason})", step_label(*index)),
            TraceKind::Checked {
                index,
                text,
                ok,
                detail,
            } => {
                write!(
                    f,
                    "{} {}: {text}",
                    if *ok { "ok" } else { "FAIL" },
                    step_label(*index)
                )?;
                if !detail.is_empty() {
                    write!(f, " ({detail})")?;
                }
                Ok(())
            }
        }
    }
}

/// Formats a timestamp as seconds with milliseconds, right-aligned.
pub fn format_time(at: Duration) -> String {
    format!("{:>4}.{:03}s", at.as_secs(), at.subsec_millis())
}

impl fmt::Display for TraceEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.device {
            Some(d) => write!(f, "{}  [{d}] {}", format_time(self.at), self.kind),
            None => write!(f, "{}  {}", format_time(self.at), self.kind),
        }
    }
}

/// The trace of one case: a header (scenario, case, seed, target) and the entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trace {
    pub header: Vec<String>,
    pub entries: Vec<TraceEntry>,
}

impl Trace {
    pub fn push(&mut self, at: Duration, kind: TraceKind) {
        self.entries.push(TraceEntry::new(at, kind));
    }

    pub fn push_entry(&mut self, entry: TraceEntry) {
        self.entries.push(entry);
    }

    /// Every line: the header lines, then one line per entry.
    pub fn lines(&self) -> Vec<String> {
        self.header
            .iter()
            .cloned()
            .chain(self.entries.iter().map(|e| e.to_string()))
            .collect()
    }

    /// The last `n` entry lines.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let skip = self.entries.len().saturating_sub(n);
        self.entries
            .iter()
            .skip(skip)
            .map(|e| e.to_string())
            .collect()
    }

    /// The stable text form (what snapshots hold).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in self.lines() {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::model::DeviceOsVersion;

    #[test]
    fn entries_render_on_one_stable_line() {
        let mut t = Trace {
            header: vec!["scenario x.toml".into()],
            ..Trace::default()
        };
        t.push(
            Duration::from_millis(3_305),
            TraceKind::Event {
                source: EventSource::Cloud,
                name: "spark/flash/status".into(),
                data: "success ".into(),
            },
        );
        t.push(
            Duration::from_secs(12),
            TraceKind::Boot {
                running: Some(RunningVersions {
                    device_os: DeviceOsVersion(6200),
                    app: 4,
                    bootloader: 3100,
                }),
                safe_mode: false,
            },
        );
        assert_eq!(
            t.render(),
            "scenario x.toml\n   3.305s  event cloud spark/flash/status \"success \"\n  12.000s  boot device_os=6.2.0 app=4 bootloader=3100\n"
        );
        assert_eq!(t.last_lines(1).len(), 1);
    }
}
