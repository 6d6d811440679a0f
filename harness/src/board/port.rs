//! The host's end of a board's serial port: finds the port (a path, or a Particle USB device
//! by serial number), opens it with tokio-serial, sends [`Request`]s and matches their replies,
//! keeps the unsolicited lines in order, and reopens the port after the board re-enumerates
//! (every reset, reference particle-cloud-api.md 5.8).

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_serial::{SerialPortBuilderExt, SerialPortType, SerialStream};

use super::protocol::{BoardLine, Command, LineError, LineReader, ReplyBody, Request};

/// Particle's USB vendor id.
pub const PARTICLE_VID: u16 = 0x2B04;

/// Where a board's serial port is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortLocator {
    /// A fixed path (`/dev/ttyACM0`, an emulator's `/dev/pts/N`).
    Path(String),
    /// The Particle USB device (vendor 0x2B04) with this USB serial number; its path changes
    /// when it re-enumerates.
    UsbSerial(String),
}

impl fmt::Display for PortLocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortLocator::Path(p) => f.write_str(p),
            PortLocator::UsbSerial(s) => write!(f, "USB serial number {s}"),
        }
    }
}

/// What went wrong talking to a board. Every variant is an infrastructure problem (the board or
/// its cabling), not a test failure, except [`PortError::Refused`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortError {
    /// No port matches the locator.
    NotFound(String),
    /// The port could not be opened or failed.
    Io(String),
    /// No reply to a request in time.
    NoAnswer { command: String, after: Duration },
    /// The board answers in another protocol version.
    Version { found: u32 },
    /// The application refused the command (its reason).
    Refused { command: String, why: String },
    /// The reply did not carry what the command asks for.
    Unexpected { command: String },
}

impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortError::NotFound(what) => write!(f, "no serial port for {what}"),
            PortError::Io(why) => write!(f, "serial port: {why}"),
            PortError::NoAnswer { command, after } => write!(
                f,
                "the board did not answer `{command}` within {:.1} s",
                after.as_secs_f64()
            ),
            PortError::Version { found } => write!(
                f,
                "the board speaks test-control protocol version {found}, the harness {}",
                super::protocol::PROTOCOL_VERSION
            ),
            PortError::Refused { command, why } => write!(f, "`{command}` refused: {why}"),
            PortError::Unexpected { command } => {
                write!(f, "the board's reply to `{command}` lacks its result")
            }
        }
    }
}

impl std::error::Error for PortError {}

/// The path of the port `locator` names now.
pub fn find_port(locator: &PortLocator) -> Result<String, PortError> {
    match locator {
        PortLocator::Path(p) => Ok(p.clone()),
        PortLocator::UsbSerial(serial) => {
            let ports =
                tokio_serial::available_ports().map_err(|e| PortError::Io(e.to_string()))?;
            ports
                .into_iter()
                .find(|p| match &p.port_type {
                    SerialPortType::UsbPort(usb) => {
                        usb.vid == PARTICLE_VID
                            && usb
                                .serial_number
                                .as_deref()
                                .is_some_and(|s| s.eq_ignore_ascii_case(serial))
                    }
                    _ => false,
                })
                .map(|p| p.port_name)
                .ok_or_else(|| PortError::NotFound(locator.to_string()))
        }
    }
}

/// An open connection to a board's test application.
pub struct BoardPort {
    locator: PortLocator,
    stream: Option<SerialStream>,
    reader: LineReader,
    next_id: u32,
    /// Lines that were not the reply being waited for, oldest first.
    unsolicited: VecDeque<BoardLine>,
    /// Lines that did not parse (kept for the trace).
    bad: Vec<LineError>,
}

impl BoardPort {
    /// A port not opened yet (see [`BoardPort::reopen`]).
    pub fn new(locator: PortLocator) -> BoardPort {
        BoardPort {
            locator,
            stream: None,
            reader: LineReader::new(),
            next_id: 1,
            unsolicited: VecDeque::new(),
            bad: Vec::new(),
        }
    }

    pub fn locator(&self) -> &PortLocator {
        &self.locator
    }

    /// Opens the port now (must run inside a tokio runtime).
    fn open_now(&mut self) -> Result<(), PortError> {
        let path = find_port(&self.locator)?;
        let stream = tokio_serial::new(&path, 115_200)
            .timeout(Duration::from_millis(100))
            .open_native_async()
            .map_err(|e| PortError::Io(format!("opening {path}: {e}")))?;
        self.stream = Some(stream);
        self.reader = LineReader::new();
        Ok(())
    }

    /// (Re)opens the port, retrying until `limit` while the board re-enumerates.
    pub async fn reopen(&mut self, limit: Duration) -> Result<(), PortError> {
        self.stream = None;
        let deadline = Instant::now() + limit;
        loop {
            match self.open_now() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    /// Reads what arrives within `wait` (returns earlier once a line arrived). A port that
    /// failed is closed; the caller reopens it.
    pub async fn poll(&mut self, wait: Duration) -> Result<(), PortError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(PortError::Io("the port is closed".into()));
        };
        let mut buf = [0u8; 512];
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Err(_) => Ok(()),
            Ok(Ok(0)) => {
                self.stream = None;
                Err(PortError::Io(
                    "the port closed (the board re-enumerates?)".into(),
                ))
            }
            Ok(Ok(n)) => {
                self.reader.push(&buf[..n]);
                self.parse_ready();
                Ok(())
            }
            Ok(Err(e)) => {
                self.stream = None;
                Err(PortError::Io(e.to_string()))
            }
        }
    }

    fn parse_ready(&mut self) {
        while let Some(line) = self.reader.next_line() {
            match line.and_then(|(n, text)| {
                if text.trim().is_empty() {
                    Ok(None)
                } else {
                    BoardLine::parse(n, &text).map(Some)
                }
            }) {
                Ok(Some(line)) => self.unsolicited.push_back(line),
                Ok(None) => {}
                Err(e) => self.bad.push(e),
            }
        }
    }

    /// Sends `command` and waits at most `limit` for its reply; lines that arrive meanwhile
    /// are kept for [`BoardPort::take_lines`].
    pub async fn request(
        &mut self,
        command: Command,
        limit: Duration,
    ) -> Result<ReplyBody, PortError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let name = command.name().to_string();
        let mut line = Request { id, command }.to_line();
        line.push('\n');
        let Some(stream) = self.stream.as_mut() else {
            return Err(PortError::Io("the port is closed".into()));
        };
        if let Err(e) = stream.write_all(line.as_bytes()).await {
            self.stream = None;
            return Err(PortError::Io(e.to_string()));
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = self
                .unsolicited
                .iter()
                .position(|l| matches!(l, BoardLine::Reply(r) if r.id == id))
            {
                let Some(BoardLine::Reply(reply)) = self.unsolicited.remove(i) else {
                    continue;
                };
                return reply
                    .result
                    .map_err(|why| PortError::Refused { command: name, why });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PortError::NoAnswer {
                    command: name,
                    after: limit,
                });
            }
            self.poll(deadline - now).await?;
        }
    }

    /// The lines received that were not replies to a request, oldest first (replies nobody
    /// waits for any more are dropped).
    pub fn take_lines(&mut self) -> Vec<BoardLine> {
        self.unsolicited
            .drain(..)
            .filter(|l| !matches!(l, BoardLine::Reply(_)))
            .collect()
    }

    /// Lines that did not parse since the last call.
    pub fn take_bad_lines(&mut self) -> Vec<LineError> {
        std::mem::take(&mut self.bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usb_serial_number_no_particle_port_has_is_not_found() {
        let locator = PortLocator::UsbSerial("E00FCE68FFFFFFFFFFFFFFFF".into());
        assert_eq!(
            find_port(&locator),
            Err(PortError::NotFound(
                "USB serial number E00FCE68FFFFFFFFFFFFFFFF".into()
            ))
        );
        assert_eq!(
            find_port(&PortLocator::Path("/dev/ttyACM7".into())),
            Ok("/dev/ttyACM7".into())
        );
    }

    #[tokio::test]
    async fn a_port_that_cannot_open_is_an_error_after_the_limit() {
        let mut port = BoardPort::new(PortLocator::Path("/nonexistent/ttyACM0".into()));
        let e = port.reopen(Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(e, PortError::Io(_)), "{e}");
        assert!(e.to_string().contains("/nonexistent/ttyACM0"), "{e}");
        let e = port
            .request(Command::Hello, Duration::from_millis(10))
            .await;
        assert_eq!(e, Err(PortError::Io("the port is closed".into())));
    }
}
