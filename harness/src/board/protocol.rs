//! The test-control protocol between the harness and the test application on a board
//! (`boards/firmware/`), or the emulator serving it on a pseudo-terminal: one JSON object per
//! line over USB serial. Documented, with every field, in `boards/README.md`.
//!
//! - The host sends [`Request`]s: `{"id":7,"cmd":"updates.disable"}`. Every request has an `id`
//!   the board echoes in its one [`Reply`] line.
//! - The board sends replies and, unsolicited, a [`Boot`] line when the application starts
//!   (with the protocol version and the reset reason), Device OS system events
//!   ([`BoardEvent`], `System.on`, reference particle-cloud-api.md 5.3) and log lines.
//!
//! Bytes arrive in pieces of any size: [`LineReader`] reassembles lines across reads and
//! never loses one; a line that is not valid UTF-8, too long, or not a message of this
//! protocol is an [`LineError`] naming the line number and the column.

use std::fmt;

use serde_json::{json, Map, Value};

/// The protocol version: the `v` of the boot line and of the `hello` reply. A host refuses a
/// board that speaks another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest line either side accepts, in bytes without the newline (the firmware's buffer).
pub const MAX_LINE: usize = 1024;

/// A bad line: where it is (1-based line number on this port and column in characters) and
/// what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: u64,
    pub column: usize,
    pub what: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "serial line {}, column {}: {}",
            self.line, self.column, self.what
        )
    }
}

impl std::error::Error for LineError {}

/// Splits a byte stream into lines (`\n`, an optional `\r` before it dropped), whatever the
/// sizes of the reads. A line longer than [`MAX_LINE`] is reported once and skipped up to its
/// newline; the lines after it are kept.
#[derive(Debug, Default)]
pub struct LineReader {
    partial: Vec<u8>,
    /// The current line overflowed: drop bytes until the newline.
    overflowed: bool,
    /// Lines completed so far (the number of the next one is this + 1).
    lines: u64,
    ready: std::collections::VecDeque<Result<(u64, String), LineError>>,
}

impl LineReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the port.
    pub fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.lines += 1;
                let line = std::mem::take(&mut self.partial);
                if std::mem::take(&mut self.overflowed) {
                    continue;
                }
                self.finish(line);
            } else if self.overflowed {
                continue;
            } else if self.partial.len() == MAX_LINE {
                self.overflowed = true;
                self.partial.clear();
                self.ready.push_back(Err(LineError {
                    line: self.lines + 1,
                    column: MAX_LINE + 1,
                    what: format!("line longer than {MAX_LINE} bytes (skipped)"),
                }));
            } else {
                self.partial.push(b);
            }
        }
    }

    fn finish(&mut self, mut line: Vec<u8>) {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let n = self.lines;
        let item = match String::from_utf8(line) {
            Ok(text) => Ok((n, text)),
            Err(e) => {
                let good = e.utf8_error().valid_up_to();
                let column = String::from_utf8_lossy(&e.as_bytes()[..good])
                    .chars()
                    .count()
                    + 1;
                Err(LineError {
                    line: n,
                    column,
                    what: "not UTF-8".into(),
                })
            }
        };
        self.ready.push_back(item);
    }

    /// The next complete line (its number and text, without the newline) or error. Empty lines
    /// are returned too (the parsers skip them).
    pub fn next_line(&mut self) -> Option<Result<(u64, String), LineError>> {
        self.ready.pop_front()
    }

    /// Bytes of an incomplete line waiting for its newline.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}

/// `SystemSleepMode` (reference 5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepMode {
    Stop,
    UltraLowPower,
    Hibernate,
}

impl SleepMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SleepMode::Stop => "stop",
            SleepMode::UltraLowPower => "ultra_low_power",
            SleepMode::Hibernate => "hibernate",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "stop" => SleepMode::Stop,
            "ultra_low_power" => SleepMode::UltraLowPower,
            "hibernate" => SleepMode::Hibernate,
            _ => return None,
        })
    }
}

/// What the network does during sleep (reference 5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SleepNetwork {
    #[default]
    Off,
    Standby,
    InactiveStandby,
}

impl SleepNetwork {
    pub fn as_str(self) -> &'static str {
        match self {
            SleepNetwork::Off => "off",
            SleepNetwork::Standby => "standby",
            SleepNetwork::InactiveStandby => "inactive_standby",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "off" => SleepNetwork::Off,
            "standby" => SleepNetwork::Standby,
            "inactive_standby" => SleepNetwork::InactiveStandby,
            _ => return None,
        })
    }
}

/// What the host asks the application to do (the `cmd` of a request line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `hello`: the board answers with its protocol version and identity.
    Hello,
    /// `updates.disable` / `updates.enable`: `System.disableUpdates()` / `enableUpdates()`.
    Updates {
        enabled: bool,
    },
    /// `reset.disable` / `reset.enable`: `System.disableReset()` / `enableReset()`.
    Resets {
        enabled: bool,
    },
    /// `reset`: `System.reset()` (`RESET_NO_WAIT` with `no_wait`). The reply is sent before.
    Reset {
        no_wait: bool,
    },
    /// `sleep`: `System.sleep(SystemSleepConfiguration)`; the reply is sent before sleeping.
    Sleep {
        mode: SleepMode,
        duration_ms: Option<u64>,
        network: SleepNetwork,
    },
    /// `setup`: what `setup()` does at every boot from now on (kept in EEPROM):
    /// `System.disableUpdates()` when `updates_enabled` is false, `System.disableReset()` when
    /// `reset_enabled` is false. Takes effect at the next boot.
    Setup {
        updates_enabled: bool,
        reset_enabled: bool,
    },
    /// `connect` / `disconnect`: `Particle.connect()` / `Particle.disconnect()`.
    Connect,
    Disconnect,
    /// `status`: flags, connection and versions ([`BoardStatus`]).
    Status,
    /// `modules`: the modules the application can tell about ([`ModuleInfo`]).
    Modules,
    /// `assets`: `System.assetsAvailable()` ([`AssetInfo`]).
    Assets,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Hello => "hello",
            Command::Updates { enabled: false } => "updates.disable",
            Command::Updates { enabled: true } => "updates.enable",
            Command::Resets { enabled: false } => "reset.disable",
            Command::Resets { enabled: true } => "reset.enable",
            Command::Reset { .. } => "reset",
            Command::Sleep { .. } => "sleep",
            Command::Setup { .. } => "setup",
            Command::Connect => "connect",
            Command::Disconnect => "disconnect",
            Command::Status => "status",
            Command::Modules => "modules",
            Command::Assets => "assets",
        }
    }
}

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: u32,
    pub command: Command,
}

impl Request {
    /// The line to send, without the newline.
    pub fn to_line(&self) -> String {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("cmd".into(), json!(self.command.name()));
        match &self.command {
            Command::Reset { no_wait: true } => {
                m.insert("no_wait".into(), json!(true));
            }
            Command::Sleep {
                mode,
                duration_ms,
                network,
            } => {
                m.insert("mode".into(), json!(mode.as_str()));
                if let Some(ms) = duration_ms {
                    m.insert("duration_ms".into(), json!(ms));
                }
                m.insert("network".into(), json!(network.as_str()));
            }
            Command::Setup {
                updates_enabled,
                reset_enabled,
            } => {
                m.insert("updates_enabled".into(), json!(updates_enabled));
                m.insert("reset_enabled".into(), json!(reset_enabled));
            }
            _ => {}
        }
        Value::Object(m).to_string()
    }

    /// Parses a request line (the board's side; the emulator serves with it).
    pub fn parse(line_no: u64, text: &str) -> Result<Request, LineError> {
        let obj = object(line_no, text)?;
        let at = Locator { line_no, text };
        let id = at.uint(&obj, "id")?;
        let id = u32::try_from(id).map_err(|_| at.err("id", "`id` does not fit in 32 bits"))?;
        let cmd = at.str(&obj, "cmd")?;
        let command = match cmd {
            "hello" => Command::Hello,
            "updates.disable" => Command::Updates { enabled: false },
            "updates.enable" => Command::Updates { enabled: true },
            "reset.disable" => Command::Resets { enabled: false },
            "reset.enable" => Command::Resets { enabled: true },
            "reset" => Command::Reset {
                no_wait: at.opt_bool(&obj, "no_wait")?.unwrap_or(false),
            },
            "sleep" => {
                let mode = at.str(&obj, "mode")?;
                let mode = SleepMode::parse(mode).ok_or_else(|| {
                    at.err(
                        "mode",
                        &format!("unknown sleep mode {mode:?} (stop, ultra_low_power, hibernate)"),
                    )
                })?;
                let network = match at.opt_str(&obj, "network")? {
                    None => SleepNetwork::Off,
                    Some(n) => SleepNetwork::parse(n).ok_or_else(|| {
                        at.err(
                            "network",
                            &format!("unknown network {n:?} (off, standby, inactive_standby)"),
                        )
                    })?,
                };
                let duration_ms = match obj.get("duration_ms") {
                    None => None,
                    Some(_) => Some(at.uint(&obj, "duration_ms")?),
                };
                Command::Sleep {
                    mode,
                    duration_ms,
                    network,
                }
            }
            "setup" => Command::Setup {
                updates_enabled: at.bool(&obj, "updates_enabled")?,
                reset_enabled: at.bool(&obj, "reset_enabled")?,
            },
            "connect" => Command::Connect,
            "disconnect" => Command::Disconnect,
            "status" => Command::Status,
            "modules" => Command::Modules,
            "assets" => Command::Assets,
            other => return Err(at.err("cmd", &format!("unknown command {other:?}"))),
        };
        Ok(Request { id, command })
    }
}

/// The board's state (`status` reply).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BoardStatus {
    /// `Particle.connected()`.
    pub online: bool,
    /// Safe mode (a real application never answers in safe mode; the emulator tells).
    pub safe_mode: bool,
    pub updates_enabled: bool,
    pub updates_pending: bool,
    pub updates_forced: bool,
    pub reset_enabled: bool,
    pub reset_pending: bool,
    /// `System.updateStatus()` (reference 5.1).
    pub update_status: i32,
    /// Device OS version as a module version (6200 for 6.2.0).
    pub system_version: u16,
    /// `PRODUCT_VERSION` of the running application.
    pub app: u16,
    /// `System.resetReason()` of this boot.
    pub reset_reason: u32,
    /// Milliseconds since boot.
    pub uptime_ms: u64,
}

/// A module the application reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// `bootloader`, `system`, `user`, `radio`, `ncp`.
    pub function: String,
    pub index: u8,
    pub version: u16,
    pub valid: bool,
}

/// An asset `System.assetsAvailable()` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetInfo {
    pub name: String,
    pub size: u64,
    /// SHA-256, hex.
    pub hash: String,
}

/// What a successful reply carries besides `ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    /// Done (the commands that only act).
    Done,
    Hello {
        version: u32,
        device_id: String,
        platform_id: u16,
    },
    Status(BoardStatus),
    Modules(Vec<ModuleInfo>),
    Assets(Vec<AssetInfo>),
}

/// A reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub id: u32,
    /// The body, or the board's reason for refusing (`"sleep refused: ..."`).
    pub result: Result<ReplyBody, String>,
}

/// The unsolicited line at application start (`setup()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    pub version: u32,
    /// `System.resetReason()` (reference 5.2): 70 update, 40 power down, 140 user...
    pub reset_reason: u32,
    pub device_id: String,
    pub platform_id: u16,
    pub system_version: u16,
    pub app: u16,
}

/// A Device OS system event (`System.on`, reference 5.3), as the application saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoardEvent {
    /// `firmware_update` with its parameter: 0 begin, 2 progress, 1 complete, -1 failed.
    FirmwareUpdate(i32),
    FirmwareUpdatePending,
    ResetPending,
    Reset,
    /// `firmware_update_status` with the new `UpdateStatus`.
    FirmwareUpdateStatus(i32),
    /// `cloud_status` with its parameter (0 disconnected ... 8 connected).
    CloudStatus(i32),
    /// `out_of_memory` with the size that failed.
    OutOfMemory(i32),
    /// Any other event the firmware forwards.
    Other {
        name: String,
        param: i64,
    },
}

impl BoardEvent {
    pub fn name(&self) -> &str {
        match self {
            BoardEvent::FirmwareUpdate(_) => "firmware_update",
            BoardEvent::FirmwareUpdatePending => "firmware_update_pending",
            BoardEvent::ResetPending => "reset_pending",
            BoardEvent::Reset => "reset",
            BoardEvent::FirmwareUpdateStatus(_) => "firmware_update_status",
            BoardEvent::CloudStatus(_) => "cloud_status",
            BoardEvent::OutOfMemory(_) => "out_of_memory",
            BoardEvent::Other { name, .. } => name,
        }
    }

    pub fn param(&self) -> i64 {
        match self {
            BoardEvent::FirmwareUpdate(p)
            | BoardEvent::FirmwareUpdateStatus(p)
            | BoardEvent::CloudStatus(p)
            | BoardEvent::OutOfMemory(p) => i64::from(*p),
            BoardEvent::Other { param, .. } => *param,
            _ => 0,
        }
    }

    fn from_wire(name: &str, param: i64) -> BoardEvent {
        let p = i32::try_from(param).ok();
        match (name, p) {
            ("firmware_update", Some(p)) => BoardEvent::FirmwareUpdate(p),
            ("firmware_update_pending", _) => BoardEvent::FirmwareUpdatePending,
            ("reset_pending", _) => BoardEvent::ResetPending,
            ("reset", _) => BoardEvent::Reset,
            ("firmware_update_status", Some(p)) => BoardEvent::FirmwareUpdateStatus(p),
            ("cloud_status", Some(p)) => BoardEvent::CloudStatus(p),
            ("out_of_memory", Some(p)) => BoardEvent::OutOfMemory(p),
            _ => BoardEvent::Other {
                name: name.to_string(),
                param,
            },
        }
    }
}

/// A log line (`SerialLogHandler` output, forwarded as JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: String,
    pub category: String,
    pub message: String,
}

/// Any line the board sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoardLine {
    Reply(Reply),
    Boot(Boot),
    Event(BoardEvent),
    Log(LogLine),
}

impl BoardLine {
    /// The line to send, without the newline.
    pub fn to_line(&self) -> String {
        let v = match self {
            BoardLine::Reply(r) => {
                let mut m = Map::new();
                m.insert("id".into(), json!(r.id));
                match &r.result {
                    Err(why) => {
                        m.insert("ok".into(), json!(false));
                        m.insert("error".into(), json!(why));
                    }
                    Ok(body) => {
                        m.insert("ok".into(), json!(true));
                        match body {
                            ReplyBody::Done => {}
                            ReplyBody::Hello {
                                version,
                                device_id,
                                platform_id,
                            } => {
                                m.insert(
                                    "hello".into(),
                                    json!({"v": version, "device_id": device_id,
                                           "platform_id": platform_id}),
                                );
                            }
                            ReplyBody::Status(s) => {
                                m.insert(
                                    "status".into(),
                                    json!({
                                        "online": s.online, "safe_mode": s.safe_mode,
                                        "updates_enabled": s.updates_enabled,
                                        "updates_pending": s.updates_pending,
                                        "updates_forced": s.updates_forced,
                                        "reset_enabled": s.reset_enabled,
                                        "reset_pending": s.reset_pending,
                                        "update_status": s.update_status,
                                        "system_version": s.system_version, "app": s.app,
                                        "reset_reason": s.reset_reason,
                                        "uptime_ms": s.uptime_ms,
                                    }),
                                );
                            }
                            ReplyBody::Modules(list) => {
                                let list: Vec<Value> = list
                                    .iter()
                                    .map(|m| {
                                        json!({"function": m.function, "index": m.index,
                                               "version": m.version, "valid": m.valid})
                                    })
                                    .collect();
                                m.insert("modules".into(), Value::Array(list));
                            }
                            ReplyBody::Assets(list) => {
                                let list: Vec<Value> = list
                                    .iter()
                                    .map(
                                        |a| json!({"name": a.name, "size": a.size, "hash": a.hash}),
                                    )
                                    .collect();
                                m.insert("assets".into(), Value::Array(list));
                            }
                        }
                    }
                }
                Value::Object(m)
            }
            BoardLine::Boot(b) => json!({"boot": {
                "v": b.version, "reset_reason": b.reset_reason, "device_id": b.device_id,
                "platform_id": b.platform_id, "system_version": b.system_version, "app": b.app,
            }}),
            BoardLine::Event(e) => json!({"event": {"name": e.name(), "param": e.param()}}),
            BoardLine::Log(l) => json!({"log": {
                "level": l.level, "category": l.category, "message": l.message,
            }}),
        };
        v.to_string()
    }

    /// Parses a line from the board (the host's side).
    pub fn parse(line_no: u64, text: &str) -> Result<BoardLine, LineError> {
        let obj = object(line_no, text)?;
        let at = Locator { line_no, text };
        if let Some(boot) = obj.get("boot") {
            let b = at.sub(boot, "boot")?;
            let version = at.uint(b, "v")?;
            return Ok(BoardLine::Boot(Boot {
                version: at.fit(version, "v")?,
                reset_reason: at.fit(at.uint(b, "reset_reason")?, "reset_reason")?,
                device_id: at.str(b, "device_id")?.to_string(),
                platform_id: at.fit(at.uint(b, "platform_id")?, "platform_id")?,
                system_version: at.fit(at.uint(b, "system_version")?, "system_version")?,
                app: at.fit(at.uint(b, "app")?, "app")?,
            }));
        }
        if let Some(event) = obj.get("event") {
            let e = at.sub(event, "event")?;
            let name = at.str(e, "name")?;
            let param = match e.get("param") {
                None => 0,
                Some(p) => p
                    .as_i64()
                    .ok_or_else(|| at.err("param", "`param` must be an integer"))?,
            };
            return Ok(BoardLine::Event(BoardEvent::from_wire(name, param)));
        }
        if let Some(log) = obj.get("log") {
            let l = at.sub(log, "log")?;
            return Ok(BoardLine::Log(LogLine {
                level: at.opt_str(l, "level")?.unwrap_or("info").to_string(),
                category: at.opt_str(l, "category")?.unwrap_or("app").to_string(),
                message: at.str(l, "message")?.to_string(),
            }));
        }
        if !obj.contains_key("id") {
            return Err(at.err_at(
                1,
                "not a reply (`id`), `boot`, `event` or `log` line".into(),
            ));
        }
        let id = at.fit(at.uint(&obj, "id")?, "id")?;
        let ok = at.bool(&obj, "ok")?;
        if !ok {
            let why = at.opt_str(&obj, "error")?.unwrap_or("refused").to_string();
            return Ok(BoardLine::Reply(Reply {
                id,
                result: Err(why),
            }));
        }
        let body = if let Some(h) = obj.get("hello") {
            let h = at.sub(h, "hello")?;
            ReplyBody::Hello {
                version: at.fit(at.uint(h, "v")?, "v")?,
                device_id: at.str(h, "device_id")?.to_string(),
                platform_id: at.fit(at.uint(h, "platform_id")?, "platform_id")?,
            }
        } else if let Some(s) = obj.get("status") {
            let s = at.sub(s, "status")?;
            ReplyBody::Status(BoardStatus {
                online: at.bool(s, "online")?,
                safe_mode: at.opt_bool(s, "safe_mode")?.unwrap_or(false),
                updates_enabled: at.bool(s, "updates_enabled")?,
                updates_pending: at.bool(s, "updates_pending")?,
                updates_forced: at.bool(s, "updates_forced")?,
                reset_enabled: at.bool(s, "reset_enabled")?,
                reset_pending: at.bool(s, "reset_pending")?,
                update_status: at.int(s, "update_status")?,
                system_version: at.fit(at.uint(s, "system_version")?, "system_version")?,
                app: at.fit(at.uint(s, "app")?, "app")?,
                reset_reason: at.fit(at.uint(s, "reset_reason")?, "reset_reason")?,
                uptime_ms: at.uint(s, "uptime_ms")?,
            })
        } else if let Some(list) = obj.get("modules") {
            let list = list
                .as_array()
                .ok_or_else(|| at.err("modules", "`modules` must be a list"))?;
            let mut out = Vec::new();
            for m in list {
                let m = at.sub(m, "modules")?;
                out.push(ModuleInfo {
                    function: at.str(m, "function")?.to_string(),
                    index: at.fit(at.uint(m, "index")?, "index")?,
                    version: at.fit(at.uint(m, "version")?, "version")?,
                    valid: at.bool(m, "valid")?,
                });
            }
            ReplyBody::Modules(out)
        } else if let Some(list) = obj.get("assets") {
            let list = list
                .as_array()
                .ok_or_else(|| at.err("assets", "`assets` must be a list"))?;
            let mut out = Vec::new();
            for a in list {
                let a = at.sub(a, "assets")?;
                out.push(AssetInfo {
                    name: at.str(a, "name")?.to_string(),
                    size: at.uint(a, "size")?,
                    hash: at.str(a, "hash")?.to_string(),
                });
            }
            ReplyBody::Assets(out)
        } else {
            ReplyBody::Done
        };
        Ok(BoardLine::Reply(Reply {
            id,
            result: Ok(body),
        }))
    }
}

/// The JSON object a line holds.
fn object(line_no: u64, text: &str) -> Result<Map<String, Value>, LineError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(LineError {
            line: line_no,
            column: 1,
            what: "not a JSON object".into(),
        }),
        Err(e) => Err(LineError {
            line: line_no,
            column: e.column().max(1),
            what: format!("not JSON: {e}"),
        }),
    }
}

/// Field access with errors located at the field's key in the line.
struct Locator<'a> {
    line_no: u64,
    text: &'a str,
}

impl Locator<'_> {
    fn err_at(&self, column: usize, what: String) -> LineError {
        LineError {
            line: self.line_no,
            column,
            what,
        }
    }

    /// An error at the first occurrence of `"key"` in the line (column 1 if absent).
    fn err(&self, key: &str, what: &str) -> LineError {
        let column = self
            .text
            .find(&format!("\"{key}\""))
            .map_or(1, |byte| self.text[..byte].chars().count() + 1);
        self.err_at(column, what.to_string())
    }

    fn sub<'v>(&self, v: &'v Value, key: &str) -> Result<&'v Map<String, Value>, LineError> {
        v.as_object()
            .ok_or_else(|| self.err(key, &format!("`{key}` must be an object")))
    }

    fn get<'v>(&self, m: &'v Map<String, Value>, key: &str) -> Result<&'v Value, LineError> {
        m.get(key)
            .ok_or_else(|| self.err_at(1, format!("missing `{key}`")))
    }

    fn uint(&self, m: &Map<String, Value>, key: &str) -> Result<u64, LineError> {
        self.get(m, key)?
            .as_u64()
            .ok_or_else(|| self.err(key, &format!("`{key}` must be a non-negative integer")))
    }

    fn int(&self, m: &Map<String, Value>, key: &str) -> Result<i32, LineError> {
        self.get(m, key)?
            .as_i64()
            .and_then(|v| i32::try_from(v).ok())
            .ok_or_else(|| self.err(key, &format!("`{key}` must be a 32-bit integer")))
    }

    fn fit<T: TryFrom<u64>>(&self, v: u64, key: &str) -> Result<T, LineError> {
        T::try_from(v).map_err(|_| self.err(key, &format!("`{key}` is out of range: {v}")))
    }

    fn str<'v>(&self, m: &'v Map<String, Value>, key: &str) -> Result<&'v str, LineError> {
        self.get(m, key)?
            .as_str()
            .ok_or_else(|| self.err(key, &format!("`{key}` must be a string")))
    }

    fn opt_str<'v>(
        &self,
        m: &'v Map<String, Value>,
        key: &str,
    ) -> Result<Option<&'v str>, LineError> {
        match m.get(key) {
            None => Ok(None),
            Some(_) => self.str(m, key).map(Some),
        }
    }

    fn bool(&self, m: &Map<String, Value>, key: &str) -> Result<bool, LineError> {
        self.get(m, key)?
            .as_bool()
            .ok_or_else(|| self.err(key, &format!("`{key}` must be true or false")))
    }

    fn opt_bool(&self, m: &Map<String, Value>, key: &str) -> Result<Option<bool>, LineError> {
        match m.get(key) {
            None => Ok(None),
            Some(_) => self.bool(m, key).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board_lines() -> Vec<BoardLine> {
        vec![
            BoardLine::Boot(Boot {
                version: PROTOCOL_VERSION,
                reset_reason: 70,
                device_id: "0123456789abcdef01234567".into(),
                platform_id: 13,
                system_version: 6200,
                app: 3,
            }),
            BoardLine::Event(BoardEvent::FirmwareUpdate(-1)),
            BoardLine::Event(BoardEvent::ResetPending),
            BoardLine::Event(BoardEvent::Other {
                name: "button_status".into(),
                param: 3,
            }),
            BoardLine::Log(LogLine {
                level: "info".into(),
                category: "comm.ota".into(),
                message: "Received UpdateStart request, \"quoted\" é".into(),
            }),
            BoardLine::Reply(Reply {
                id: 1,
                result: Ok(ReplyBody::Done),
            }),
            BoardLine::Reply(Reply {
                id: 2,
                result: Err("sleep refused: hibernate with a duration".into()),
            }),
            BoardLine::Reply(Reply {
                id: 3,
                result: Ok(ReplyBody::Status(BoardStatus {
                    online: true,
                    updates_enabled: true,
                    reset_pending: true,
                    update_status: -1,
                    system_version: 6200,
                    app: 4,
                    reset_reason: 70,
                    uptime_ms: 12345,
                    ..BoardStatus::default()
                })),
            }),
            BoardLine::Reply(Reply {
                id: 4,
                result: Ok(ReplyBody::Modules(vec![ModuleInfo {
                    function: "system".into(),
                    index: 1,
                    version: 6200,
                    valid: true,
                }])),
            }),
            BoardLine::Reply(Reply {
                id: 5,
                result: Ok(ReplyBody::Assets(vec![AssetInfo {
                    name: "sound.bin".into(),
                    size: 4096,
                    hash: "ab".repeat(32),
                }])),
            }),
            BoardLine::Reply(Reply {
                id: 6,
                result: Ok(ReplyBody::Hello {
                    version: 1,
                    device_id: "0123456789abcdef01234567".into(),
                    platform_id: 32,
                }),
            }),
        ]
    }

    fn requests() -> Vec<Request> {
        let commands = [
            Command::Hello,
            Command::Updates { enabled: false },
            Command::Updates { enabled: true },
            Command::Resets { enabled: false },
            Command::Resets { enabled: true },
            Command::Reset { no_wait: false },
            Command::Reset { no_wait: true },
            Command::Sleep {
                mode: SleepMode::Stop,
                duration_ms: Some(600_000),
                network: SleepNetwork::Standby,
            },
            Command::Sleep {
                mode: SleepMode::Hibernate,
                duration_ms: None,
                network: SleepNetwork::Off,
            },
            Command::Setup {
                updates_enabled: false,
                reset_enabled: true,
            },
            Command::Connect,
            Command::Disconnect,
            Command::Status,
            Command::Modules,
            Command::Assets,
        ];
        commands
            .into_iter()
            .enumerate()
            .map(|(i, command)| Request {
                id: i as u32 + 1,
                command,
            })
            .collect()
    }

    #[test]
    fn every_board_line_reads_back_as_written() {
        for (i, line) in board_lines().into_iter().enumerate() {
            let text = line.to_line();
            assert!(!text.contains('\n'));
            assert_eq!(BoardLine::parse(i as u64 + 1, &text), Ok(line), "{text}");
        }
    }

    #[test]
    fn every_request_reads_back_as_written() {
        for r in requests() {
            let text = r.to_line();
            assert_eq!(Request::parse(1, &text), Ok(r), "{text}");
        }
    }

    /// Every way of cutting the stream into two or three reads gives the same lines.
    #[test]
    fn lines_split_across_reads_are_never_lost() {
        let lines: Vec<String> = board_lines().iter().map(BoardLine::to_line).collect();
        let mut stream = lines.join("\r\n").into_bytes();
        stream.push(b'\n');
        let whole = read_all(&[&stream]);
        assert_eq!(whole, lines);
        let n = stream.len();
        for a in 0..=n {
            assert_eq!(read_all(&[&stream[..a], &stream[a..]]), lines, "cut at {a}");
        }
        for a in (0..=n).step_by(7) {
            for b in (a..=n).step_by(5) {
                let parts = [&stream[..a], &stream[a..b], &stream[b..]];
                assert_eq!(read_all(&parts), lines, "cuts at {a} and {b}");
            }
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(read_all(&bytes), lines);
    }

    fn read_all(parts: &[&[u8]]) -> Vec<String> {
        let mut r = LineReader::new();
        let mut out = Vec::new();
        for p in parts {
            r.push(p);
            while let Some(line) = r.next_line() {
                out.push(line.expect("a good line").1);
            }
        }
        assert_eq!(r.pending(), 0);
        out
    }

    #[test]
    fn an_incomplete_line_waits_for_its_newline() {
        let mut r = LineReader::new();
        r.push(b"{\"event\":{\"name\":\"reset\"");
        assert!(r.next_line().is_none());
        r.push(b"}}\n");
        let (n, text) = r.next_line().unwrap().unwrap();
        assert_eq!(n, 1);
        assert_eq!(
            BoardLine::parse(n, &text),
            Ok(BoardLine::Event(BoardEvent::Reset))
        );
    }

    #[test]
    fn an_overlong_line_is_reported_once_and_the_next_line_kept() {
        let mut r = LineReader::new();
        r.push(&vec![b'x'; MAX_LINE + 500]);
        r.push(b"\n{\"id\":1,\"ok\":true}\n");
        let e = r.next_line().unwrap().unwrap_err();
        assert_eq!((e.line, e.column), (1, MAX_LINE + 1));
        assert_eq!(r.next_line().unwrap().unwrap().0, 2);
        assert!(r.next_line().is_none());
    }

    #[test]
    fn invalid_utf8_is_located() {
        let mut r = LineReader::new();
        r.push(b"ok\n{\"a\xff\":1}\n");
        assert_eq!(r.next_line().unwrap().unwrap().1, "ok");
        let e = r.next_line().unwrap().unwrap_err();
        assert_eq!((e.line, e.column), (2, 4));
    }

    #[test]
    fn bad_lines_are_rejected_with_a_located_error() {
        let cases: [(&str, usize, &str); 8] = [
            ("{\"id\":1,", 8, "not JSON"),
            ("[1,2]", 1, "not a JSON object"),
            ("{\"id\":1,\"cmd\":\"fly\"}", 9, "unknown command"),
            ("{\"id\":-1,\"cmd\":\"status\"}", 2, "non-negative"),
            ("{\"id\":1}", 1, "missing `cmd`"),
            (
                "{\"id\":1,\"cmd\":\"sleep\",\"mode\":\"nap\"}",
                23,
                "unknown sleep mode",
            ),
            (
                "{\"id\":1,\"cmd\":\"sleep\",\"mode\":\"stop\",\"duration_ms\":\"10m\"}",
                37,
                "non-negative integer",
            ),
            ("{\"id\":4294967296,\"cmd\":\"status\"}", 2, "32 bits"),
        ];
        for (text, column, what) in cases {
            let e = Request::parse(3, text).unwrap_err();
            assert_eq!(e.line, 3, "{text}");
            assert_eq!(e.column, column, "{text}: {e}");
            assert!(e.what.contains(what), "{text}: {e}");
        }
        let board: [(&str, usize, &str); 4] = [
            ("{\"hello\":1}", 1, "not a reply"),
            ("{\"boot\":{\"v\":1}}", 1, "missing `reset_reason`"),
            ("{\"id\":1,\"ok\":\"yes\"}", 9, "true or false"),
            (
                "{\"id\":1,\"ok\":true,\"status\":{\"online\":1}}",
                29,
                "true or false",
            ),
        ];
        for (text, column, what) in board {
            let e = BoardLine::parse(1, text).unwrap_err();
            assert_eq!(e.column, column, "{text}: {e}");
            assert!(e.what.contains(what), "{text}: {e}");
        }
    }

    #[test]
    fn errors_read_as_one_sentence() {
        let e = Request::parse(12, "{\"id\":1,\"cmd\":\"fly\"}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "serial line 12, column 9: unknown command \"fly\""
        );
    }
}
