//! A Device OS serial log read alongside a field device's event stream (`hil fixture
//! from-events EVENTS --log SERIAL`): the facts the cloud's events cannot tell — where a
//! transfer resumed, whether the update was validated or cancelled, how the device connected,
//! when it rebooted.
//!
//! The line format is Device OS's default log handler's: the uptime in milliseconds (ten
//! digits), the category in brackets, the level, the message:
//! `0000012345 [comm.ota] INFO: Received UpdateStart request`. Lines in another form (the
//! application's own `Serial.print`, a terminal's noise) are skipped and counted. Messages are
//! recognised by the texts the OTA v3 receiver logs (`Received UpdateStart request`, `Start
//! offset: N`, `File size: N`, `Received UpdateFinish request`, `Validating firmware update`,
//! `Cancelling firmware update`) and the protocol's `Sending HELLO message`. UNCONFIRMED (no
//! source read for them; matched loosely, case-insensitively, and kept in one place here):
//! session resumption (`resum` with `session`), a full handshake (`handshake`), a disconnect
//! (`disconnect`), a reset reason (`reset reason`). A reboot is also read from the uptime
//! going backwards.

use std::fmt::Write as _;
use std::path::Path;

use super::field::{toml_string, EventsError};

/// One line of a serial log in Device OS's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// 1-based line in the file.
    pub line: usize,
    /// Device uptime in milliseconds.
    pub uptime_ms: u64,
    pub category: String,
    pub level: String,
    pub message: String,
}

/// What a serial log says happened, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFact {
    /// The device booted again (its uptime went backwards, or it is the first line).
    Booted {
        line: usize,
    },
    /// A reset reason the log names.
    ResetReason {
        line: usize,
        text: String,
    },
    /// The device said Hello (a cloud connection, fresh or resumed).
    Hello {
        line: usize,
    },
    /// The DTLS session was resumed (no handshake).
    SessionResumed {
        line: usize,
    },
    /// A full DTLS handshake.
    Handshake {
        line: usize,
    },
    Disconnected {
        line: usize,
        text: String,
    },
    /// An UpdateStart: file size and the offset it starts at (> 0: resumed).
    UpdateStarted {
        line: usize,
        file_size: Option<u64>,
        start_offset: Option<u64>,
    },
    /// UpdateFinish received and the file validated.
    UpdateValidating {
        line: usize,
    },
    UpdateCancelled {
        line: usize,
    },
}

/// Reads a serial log: the lines in Device OS's format, and how many others were skipped.
/// An error when no line has the format (not a Device OS log).
pub fn parse_serial_log(text: &str, file: &Path) -> Result<(Vec<LogLine>, usize), EventsError> {
    let mut out = Vec::new();
    let mut skipped = 0;
    for (i, raw) in text.lines().enumerate() {
        match parse_line(raw.trim_end_matches('\r')) {
            Some((uptime_ms, category, level, message)) => out.push(LogLine {
                line: i + 1,
                uptime_ms,
                category: category.to_string(),
                level: level.to_string(),
                message: message.to_string(),
            }),
            None if raw.trim().is_empty() => {}
            None => skipped += 1,
        }
    }
    if out.is_empty() {
        return Err(EventsError {
            file: file.to_path_buf(),
            line: 1,
            message: "no Device OS log line in the file: expected lines like `0000012345 [comm.ota] INFO: Received UpdateStart request`".into(),
        });
    }
    Ok((out, skipped))
}

/// `0000012345 [category] LEVEL: message`.
fn parse_line(line: &str) -> Option<(u64, &str, &str, &str)> {
    let (time, rest) = line.split_once(' ')?;
    if time.len() < 6 || !time.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let uptime_ms = time.parse().ok()?;
    let rest = rest.strip_prefix('[')?;
    let (category, rest) = rest.split_once("] ")?;
    let (level, message) = rest.split_once(": ")?;
    if level.is_empty() || !level.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    Some((uptime_ms, category, level, message))
}

/// The number after `prefix` at the start of `message`.
fn number_after(message: &str, prefix: &str) -> Option<u64> {
    message.strip_prefix(prefix)?.trim().parse().ok()
}

/// The facts of a log, in order.
pub fn facts(lines: &[LogLine]) -> Vec<LogFact> {
    let mut out = Vec::new();
    let mut last_uptime: Option<u64> = None;
    // The UpdateStart being read (its size and offset come on the lines after it).
    let mut start: Option<usize> = None;
    for l in lines {
        if last_uptime.is_none_or(|t| l.uptime_ms < t) {
            out.push(LogFact::Booted { line: l.line });
        }
        last_uptime = Some(l.uptime_ms);
        let m = l.message.as_str();
        let lower = m.to_ascii_lowercase();
        if m.starts_with("Received UpdateStart request") {
            out.push(LogFact::UpdateStarted {
                line: l.line,
                file_size: None,
                start_offset: None,
            });
            start = Some(out.len() - 1);
        } else if let Some(n) = number_after(m, "File size:") {
            if let Some(LogFact::UpdateStarted { file_size, .. }) = start.map(|i| &mut out[i]) {
                *file_size = Some(n);
            }
        } else if let Some(n) = number_after(m, "Start offset:") {
            if let Some(LogFact::UpdateStarted { start_offset, .. }) = start.map(|i| &mut out[i]) {
                *start_offset = Some(n);
            }
        } else if m.starts_with("Validating firmware update") {
            out.push(LogFact::UpdateValidating { line: l.line });
        } else if m.starts_with("Cancelling firmware update") {
            out.push(LogFact::UpdateCancelled { line: l.line });
        } else if m.starts_with("Sending HELLO message") {
            out.push(LogFact::Hello { line: l.line });
        } else if lower.contains("session") && lower.contains("resum") {
            out.push(LogFact::SessionResumed { line: l.line });
        } else if lower.contains("handshake") && !lower.contains("fail") {
            out.push(LogFact::Handshake { line: l.line });
        } else if lower.contains("reset reason") {
            out.push(LogFact::ResetReason {
                line: l.line,
                text: m.to_string(),
            });
        } else if lower.contains("disconnect") {
            out.push(LogFact::Disconnected {
                line: l.line,
                text: m.to_string(),
            });
        }
    }
    out
}

/// Adds what a serial log tells to a skeleton written by [`super::field::skeleton`]: the facts
/// as comments before the final `[expect]`, and the expectations they support in it.
pub fn add_to_skeleton(skeleton: &str, facts: &[LogFact], source: &str, skipped: usize) -> String {
    let mut notes = String::new();
    let w = &mut notes;
    let _ = writeln!(
        w,
        "# From the serial log {source}{}:",
        if skipped > 0 {
            format!(" ({skipped} lines in another format skipped)")
        } else {
            String::new()
        }
    );
    let boots = facts
        .iter()
        .filter(|f| matches!(f, LogFact::Booted { .. }))
        .count();
    let _ = writeln!(
        w,
        "#   {boots} boot(s) in the log (its uptime starts again at each)"
    );
    for f in facts {
        let text = match f {
            LogFact::Booted { line } => format!("line {line}: booted"),
            LogFact::ResetReason { line, text } => format!("line {line}: {text}"),
            LogFact::Hello { line } => format!("line {line}: Hello sent (connected to the cloud)"),
            LogFact::SessionResumed { line } => format!("line {line}: session resumed"),
            LogFact::Handshake { line } => format!("line {line}: full handshake"),
            LogFact::Disconnected { line, text } => {
                format!("line {line}: disconnected ({text}). TODO: a link fault, power, sleep?")
            }
            LogFact::UpdateStarted {
                line,
                file_size,
                start_offset,
            } => {
                let size = file_size.map_or("?".into(), |s| s.to_string());
                match start_offset {
                    Some(o) if *o > 0 => {
                        format!("line {line}: UpdateStart, {size} bytes, RESUMED at byte {o}")
                    }
                    Some(_) => format!("line {line}: UpdateStart, {size} bytes, from byte 0"),
                    None => format!("line {line}: UpdateStart, {size} bytes"),
                }
            }
            LogFact::UpdateValidating { line } => {
                format!("line {line}: UpdateFinish, the file is validated")
            }
            LogFact::UpdateCancelled { line } => {
                format!("line {line}: the transfer was CANCELLED (UpdateFinish with Cancel-Update)")
            }
        };
        let _ = writeln!(w, "#   {text}");
    }
    let _ = writeln!(w);

    // Expectations the log supports: how the last connection was made, whether the last
    // transfer resumed.
    let mut expect = String::new();
    let last_session = facts.iter().rev().find_map(|f| match f {
        LogFact::SessionResumed { line } => Some(("resumed", *line)),
        LogFact::Handshake { line } => Some(("handshake", *line)),
        _ => None,
    });
    if let Some((how, line)) = last_session {
        let _ = writeln!(
            expect,
            "session = {}   # serial log line {line} (TODO: as observed; is that the fixed behaviour?)",
            toml_string(how)
        );
    }
    let last_start = facts.iter().rev().find_map(|f| match f {
        LogFact::UpdateStarted {
            line, start_offset, ..
        } => Some((*line, *start_offset)),
        _ => None,
    });
    if let Some((line, Some(offset))) = last_start {
        let _ = writeln!(
            expect,
            "ota = {{ resumed = {} }}   # serial log line {line}: the last UpdateStart started at byte {offset}",
            offset > 0
        );
    }

    match skeleton.find("\n[expect]\n") {
        Some(at) => {
            let (head, tail) = skeleton.split_at(at + 1);
            let tail = tail.trim_start_matches("[expect]\n");
            format!("{head}{notes}[expect]\n{expect}{tail}")
        }
        None => format!("{skeleton}\n{notes}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log written for this test in Device OS's format: a transfer cut by a reboot, then a
    /// resumed one validated after a resumed session.
    const LOG: &str = "\
0000001021 [system] INFO: Device OS booting
0000003410 [comm.protocol] INFO: Sending HELLO message
0000004120 [comm.ota] INFO: Received UpdateStart request
0000004121 [comm.ota] INFO: File size: 24576
0000004121 [comm.ota] INFO: Chunk size: 512
0000004133 [comm.ota] INFO: Start offset: 0
0000004133 [comm.ota] INFO: Chunk count: 48
app says hello over Serial
0000000980 [system] INFO: Device OS booting
0000002002 [comm.protocol] INFO: Session resumed
0000002200 [comm.protocol] INFO: Sending HELLO message
0000003000 [comm.ota] INFO: Received UpdateStart request
0000003001 [comm.ota] INFO: File size: 24576
0000003010 [comm.ota] INFO: Start offset: 12288
0000005400 [comm.ota] INFO: Received UpdateFinish request
0000005401 [comm.ota] INFO: Validating firmware update
";

    #[test]
    fn a_log_gives_boots_transfers_and_how_the_device_connected() {
        let (lines, skipped) = parse_serial_log(LOG, Path::new("dev.log")).unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(lines[1].category, "comm.protocol");
        assert_eq!(lines[1].level, "INFO");
        assert_eq!(lines[1].uptime_ms, 3410);
        let f = facts(&lines);
        assert_eq!(
            f.iter()
                .filter(|f| matches!(f, LogFact::Booted { .. }))
                .count(),
            2
        );
        assert!(f.contains(&LogFact::UpdateStarted {
            line: 3,
            file_size: Some(24576),
            start_offset: Some(0)
        }));
        assert!(f.contains(&LogFact::UpdateStarted {
            line: 12,
            file_size: Some(24576),
            start_offset: Some(12288)
        }));
        assert!(f.contains(&LogFact::SessionResumed { line: 10 }));
        assert!(f.contains(&LogFact::UpdateValidating { line: 16 }));
    }

    #[test]
    fn the_skeleton_gains_the_facts_and_the_expectations_they_support() {
        let (lines, skipped) = parse_serial_log(LOG, Path::new("dev.log")).unwrap();
        let skeleton = "board = \"boron\"\n\n[expect]\nsafe_mode = false\n";
        let out = add_to_skeleton(skeleton, &facts(&lines), "dev.log", skipped);
        assert!(out.contains("#   2 boot(s)"), "{out}");
        assert!(out.contains("RESUMED at byte 12288"), "{out}");
        let expect = &out[out.find("[expect]\n").unwrap()..];
        assert!(expect.contains("session = \"resumed\""), "{out}");
        assert!(expect.contains("ota = { resumed = true }"), "{out}");
        assert!(expect.contains("safe_mode = false"), "{out}");
    }

    #[test]
    fn a_file_with_no_log_line_is_an_error_naming_the_form() {
        let e = parse_serial_log("hello\nworld\n", Path::new("x.log")).unwrap_err();
        assert!(
            e.to_string().contains("x.log:1: no Device OS log line"),
            "{e}"
        );
    }
}
