//! A board's power behind the [`PowerSwitch`] trait: [`CommandPowerSwitch`] runs configured
//! command lines (`uhubctl -l 1-1 -p 2 -a off`, a relay or PDU tool) with a timeout and checks
//! their exit codes; [`RecordingPower`] is the test double.

use std::fmt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Why power could not be switched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerError(pub String);

impl fmt::Display for PowerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "power switch: {}", self.0)
    }
}

impl std::error::Error for PowerError {}

/// Switches one board's power.
pub trait PowerSwitch: Send {
    fn set(&mut self, on: bool) -> Result<(), PowerError>;
}

/// Runs a command line to switch power off and another to switch it on. A command that does
/// not finish within the timeout is killed and is an error, as is a non-zero exit code.
#[derive(Debug, Clone)]
pub struct CommandPowerSwitch {
    /// Program and arguments (no shell).
    pub off: Vec<String>,
    pub on: Vec<String>,
    pub timeout: Duration,
}

impl CommandPowerSwitch {
    fn run(&self, argv: &[String]) -> Result<(), PowerError> {
        let Some((program, args)) = argv.split_first() else {
            return Err(PowerError("no command configured".into()));
        };
        let shown = argv.join(" ");
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| PowerError(format!("`{shown}` could not start: {e}")))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(PowerError(format!("`{shown}` failed ({status})")));
                }
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(PowerError(format!(
                        "`{shown}` did not finish within {:.1} s (killed)",
                        self.timeout.as_secs_f64()
                    )));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(PowerError(format!("`{shown}`: {e}"))),
            }
        }
    }
}

impl PowerSwitch for CommandPowerSwitch {
    fn set(&mut self, on: bool) -> Result<(), PowerError> {
        self.run(if on { &self.on } else { &self.off })
    }
}

/// A test double: records the switches, and fails them all once `fail` is set.
#[derive(Debug, Default, Clone)]
pub struct RecordingPower {
    pub switched: std::sync::Arc<std::sync::Mutex<Vec<bool>>>,
    pub fail: Option<String>,
}

impl PowerSwitch for RecordingPower {
    fn set(&mut self, on: bool) -> Result<(), PowerError> {
        if let Some(why) = &self.fail {
            return Err(PowerError(why.clone()));
        }
        self.switched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(on);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switch(off: &[&str], on: &[&str]) -> CommandPowerSwitch {
        CommandPowerSwitch {
            off: off.iter().map(|s| s.to_string()).collect(),
            on: on.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_millis(500),
        }
    }

    #[test]
    fn a_command_that_exits_zero_switches() {
        assert_eq!(switch(&["true"], &["true"]).set(true), Ok(()));
    }

    #[test]
    fn a_failing_command_is_an_error_with_its_exit_code() {
        let e = switch(&["false"], &["true"]).set(false).unwrap_err();
        assert!(e.to_string().contains("`false` failed"), "{e}");
    }

    #[test]
    fn a_command_that_hangs_is_killed_at_the_timeout() {
        let t = Instant::now();
        let e = switch(&["sleep", "5"], &["true"]).set(false).unwrap_err();
        assert!(e.to_string().contains("did not finish"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn a_missing_program_or_no_command_is_an_error() {
        assert!(switch(&["/nonexistent/uhubctl"], &[]).set(false).is_err());
        assert!(switch(&[], &[]).set(true).is_err());
    }
}
