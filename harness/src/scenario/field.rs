//! Field bugs as fixtures: reads a saved Particle event stream and writes a scenario skeleton
//! with the facts of the report (reference: particle-cloud-api.md 3.2 SSE wire format, 3.4
//! `particle subscribe` output, 4.8 the cloud's events around OTA).
//!
//! Both saved forms are read, even mixed: the SSE text (`:ok` and other comment lines,
//! `event:` / `data:` fields, a blank line ends each event, `id:` / `retry:` ignored) and one
//! JSON object per line with `name` appended, as `particle subscribe` prints (its "Subscribing
//! to ..." header is skipped). Anything else is an error naming the line.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use emulator::board::Board;
use serde_json::Value as Json;

use super::model::{format_duration, DeviceOsVersion};

/// One event of a saved stream.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldEvent {
    /// Line where the event starts in the file (1-based).
    pub line: usize,
    pub name: String,
    pub data: String,
    pub published_at: Option<String>,
    /// `published_at` in milliseconds since 1970 (when it could be read).
    pub at_ms: Option<i64>,
    pub coreid: Option<String>,
    /// Product firmware version the device reported at connect (product streams).
    pub version: Option<u64>,
    pub product_id: Option<u64>,
}

/// A problem in a saved event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for EventsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

impl std::error::Error for EventsError {}

/// Which form a stream was saved in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamForm {
    Sse,
    Subscribe,
    Mixed,
    Empty,
}

impl StreamForm {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamForm::Sse => "SSE event stream",
            StreamForm::Subscribe => "particle subscribe output",
            StreamForm::Mixed => "SSE and particle subscribe lines",
            StreamForm::Empty => "empty",
        }
    }
}

/// Reads a saved event stream.
pub fn parse_events(text: &str, file: &Path) -> Result<(Vec<FieldEvent>, StreamForm), EventsError> {
    let err = |line: usize, message: String| EventsError {
        file: file.to_path_buf(),
        line,
        message,
    };
    let mut out = Vec::new();
    let (mut sse, mut json_lines) = (false, false);
    // The SSE event being read: (start line, name, data lines).
    let mut pending: Option<(usize, Option<String>, Vec<String>)> = None;
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let dispatch = |pending: &mut Option<(usize, Option<String>, Vec<String>)>,
                    out: &mut Vec<FieldEvent>|
     -> Result<(), EventsError> {
        let Some((line, name, data)) = pending.take() else {
            return Ok(());
        };
        let Some(name) = name else {
            return Err(err(
                line,
                "`data:` without an `event:` line before it".into(),
            ));
        };
        if data.is_empty() {
            return Err(err(line, format!("event `{name}` has no `data:` line")));
        }
        let json: Json = serde_json::from_str(&data.join("\n"))
            .map_err(|e| err(line, format!("the data of event `{name}` is not JSON: {e}")))?;
        out.push(event_from_json(&json, Some(name), line).map_err(|m| err(line, m))?);
        Ok(())
    };
    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        let line = raw.trim_end();
        if line.is_empty() {
            dispatch(&mut pending, &mut out)?;
            continue;
        }
        if line.starts_with(':') {
            sse = true;
            continue;
        }
        if line.starts_with('{') && pending.is_none() {
            json_lines = true;
            let json: Json =
                serde_json::from_str(line).map_err(|e| err(n, format!("not a JSON event: {e}")))?;
            out.push(event_from_json(&json, None, n).map_err(|m| err(n, m))?);
            continue;
        }
        if line.starts_with("Subscribing to") || line.starts_with("Listening to") {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => {
                sse = true;
                match &mut pending {
                    Some((_, name @ None, _)) => *name = Some(value.to_string()),
                    Some((_, Some(_), _)) => {
                        return Err(err(
                            n,
                            "a second `event:` line before the blank line that ends the event"
                                .into(),
                        ))
                    }
                    None => pending = Some((n, Some(value.to_string()), Vec::new())),
                }
            }
            "data" => {
                sse = true;
                match &mut pending {
                    Some((_, _, data)) => data.push(value.to_string()),
                    None => pending = Some((n, None, vec![value.to_string()])),
                }
            }
            "id" | "retry" => sse = true,
            _ => {
                return Err(err(
                    n,
                    format!(
                        "not an event line: expected `event:`, `data:`, a `:` comment or a JSON object, found {:?}",
                        truncate(line, 60)
                    ),
                ))
            }
        }
    }
    dispatch(&mut pending, &mut out)?;
    let form = match (sse, json_lines) {
        (true, false) => StreamForm::Sse,
        (false, true) => StreamForm::Subscribe,
        (true, true) => StreamForm::Mixed,
        (false, false) => StreamForm::Empty,
    };
    Ok((out, form))
}

fn event_from_json(json: &Json, name: Option<String>, line: usize) -> Result<FieldEvent, String> {
    let obj = json
        .as_object()
        .ok_or("an event must be a JSON object with `data`, `ttl`, `published_at`, `coreid`")?;
    let name = match name {
        Some(n) => n,
        None => obj
            .get("name")
            .and_then(Json::as_str)
            .ok_or("the JSON event has no `name` (as `particle subscribe` prints it)")?
            .to_string(),
    };
    let data = match obj.get("data") {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Null) => String::new(),
        Some(other) => other.to_string(),
        None => return Err(format!("event `{name}` has no `data` key")),
    };
    let published_at = obj
        .get("published_at")
        .and_then(Json::as_str)
        .map(str::to_string);
    let number = |key: &str| match obj.get(key) {
        Some(Json::Number(n)) => n.as_u64(),
        Some(Json::String(s)) => s.parse().ok(),
        _ => None,
    };
    Ok(FieldEvent {
        line,
        at_ms: published_at.as_deref().and_then(parse_timestamp),
        published_at,
        coreid: obj.get("coreid").and_then(Json::as_str).map(str::to_string),
        version: number("version"),
        product_id: number("productID"),
        name,
        data,
    })
}

/// Reads `YYYY-MM-DDTHH:MM:SS[.fff]Z` (digit counts as loose as old captures write them).
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    let mut t = time.split(':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let sec_text = t.next()?;
    if d.next().is_some() || t.next().is_some() {
        return None;
    }
    let (sec, frac) = sec_text.split_once('.').unwrap_or((sec_text, "0"));
    let sec: i64 = sec.parse().ok()?;
    let frac = format!("{frac:0<3}");
    let ms: i64 = frac.get(..3)?.parse().ok()?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || sec > 60
    {
        return None;
    }
    // Days from civil (proleptic Gregorian), Howard Hinnant's algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((((days * 24 + hour) * 60 + minute) * 60 + sec) * 1000 + ms)
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// A TOML basic string.
pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What the legacy describe in `spark/status/safe-mode` says (reference: protocol 1.10).
#[derive(Debug, Clone, Default, PartialEq)]
struct Describe {
    platform: Option<u64>,
    system: Option<u64>,
    bootloader: Option<u64>,
    /// Modules whose checked flags are not all passed: "u1 v6 needs s1 v6200".
    failing: Vec<String>,
    /// The system part version a failing module depends on (what safe mode waits for).
    needed_system: Option<u64>,
    /// The system part version a failing user part depends on, when it is newer than the
    /// system part installed: an app built against a newer Device OS.
    app_built_against: Option<u64>,
}

fn read_describe(data: &str) -> Option<Describe> {
    let json: Json = serde_json::from_str(data).ok()?;
    let mut d = Describe {
        platform: json.get("p").and_then(Json::as_u64),
        ..Describe::default()
    };
    for m in json.get("m").and_then(Json::as_array).into_iter().flatten() {
        let f = m.get("f").and_then(Json::as_str).unwrap_or("?");
        let n = m.get("n").and_then(Json::as_str).unwrap_or("?");
        let v = m.get("v").and_then(Json::as_u64);
        match (f, v) {
            ("s", Some(v)) => d.system = Some(d.system.map_or(v, |s: u64| s.max(v))),
            ("b", Some(v)) if n == "0" => d.bootloader = Some(v),
            _ => {}
        }
        let vc = m.get("vc").and_then(Json::as_u64).unwrap_or(0);
        let vv = m.get("vv").and_then(Json::as_u64).unwrap_or(0);
        if vc != vv {
            for dep in m.get("d").and_then(Json::as_array).into_iter().flatten() {
                if dep.get("f").and_then(Json::as_str) == Some("s") {
                    let needed = dep.get("v").and_then(Json::as_u64);
                    d.needed_system = needed.or(d.needed_system);
                    if f == "u" {
                        d.app_built_against = needed.or(d.app_built_against);
                    }
                }
            }
            let deps: Vec<String> = m
                .get("d")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
                .map(|dep| {
                    format!(
                        "{}{} v{}",
                        dep.get("f").and_then(Json::as_str).unwrap_or("?"),
                        dep.get("n").and_then(Json::as_str).unwrap_or("?"),
                        dep.get("v").and_then(Json::as_u64).unwrap_or(0)
                    )
                })
                .collect();
            d.failing.push(format!(
                "{f}{n} v{} fails checks (checked 0x{vc:02x}, passed 0x{vv:02x}){}",
                v.unwrap_or(0),
                if deps.is_empty() {
                    String::new()
                } else {
                    format!("; depends on {}", deps.join(", "))
                }
            ));
        }
    }
    // Only a dependency on a newer system part than the one installed says "built against".
    if d.app_built_against
        .is_some_and(|v| d.system.is_none_or(|s| v <= s))
    {
        d.app_built_against = None;
    }
    Some(d)
}

/// A Device OS version as a scenario value: `"6.2.0"` when that form reads back as the same
/// module version, else the module version as an integer; `None` when it is no u16.
fn device_os_value(v: u64) -> Option<String> {
    let v = u16::try_from(v).ok()?;
    let text = DeviceOsVersion(v).to_string();
    Some(
        if DeviceOsVersion::parse(&text) == Some(DeviceOsVersion(v)) {
            toml_string(&text)
        } else {
            v.to_string()
        },
    )
}

fn board_for_platform(id: u64) -> Option<&'static str> {
    Board::builtin_names().iter().copied().find(|name| {
        Board::builtin(name)
            .map(|b| u64::from(b.platform_id) == id)
            .unwrap_or(false)
    })
}

/// Rounds a gap between events up into a generous wait timeout (twice the gap, at least 1m,
/// whole minutes).
fn timeout_for(gap_ms: Option<i64>) -> String {
    match gap_ms {
        Some(ms) if ms > 0 => {
            let minutes = (2 * ms as u64).div_ceil(60_000).max(1);
            format_duration(Duration::from_secs(minutes * 60))
        }
        _ => "10m".into(),
    }
}

fn is_device(coreid: &Option<String>) -> bool {
    !matches!(
        coreid.as_deref(),
        None | Some("api") | Some("particle-internal")
    )
}

/// Writes the scenario skeleton for a saved stream. `source` names the capture in the file.
pub fn skeleton(events: &[FieldEvent], form: StreamForm, source: &str) -> String {
    // The device: the id most events come from; other devices' events are left out.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in events.iter().filter(|e| is_device(&e.coreid)) {
        *counts.entry(e.coreid.as_deref().unwrap_or("")).or_default() += 1;
    }
    let device = counts
        .iter()
        .max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id)))
        .map(|(id, _)| id.to_string());
    let others: Vec<String> = counts
        .keys()
        .filter(|id| Some(id.to_string()) != device)
        .map(|s| s.to_string())
        .collect();
    let events: Vec<&FieldEvent> = events
        .iter()
        .filter(|e| !is_device(&e.coreid) || e.coreid == device)
        .collect();

    // Facts.
    let describe = events
        .iter()
        .filter(|e| e.name == "spark/status/safe-mode")
        .find_map(|e| read_describe(&e.data));
    let platform = describe.as_ref().and_then(|d| d.platform);
    let board = platform.and_then(board_for_platform);
    let product_id = events.iter().find_map(|e| e.product_id);
    let mut app_versions: Vec<u64> = Vec::new();
    for v in events.iter().filter_map(|e| e.version) {
        if v != 0 && app_versions.last() != Some(&v) {
            app_versions.push(v);
        }
    }
    let app_hashes: Vec<&str> = events
        .iter()
        .filter(|e| e.name == "spark/device/app-hash")
        .map(|e| e.data.as_str())
        .collect();
    let resets: Vec<&str> = events
        .iter()
        .filter(|e| e.name == "spark/device/last_reset")
        .map(|e| e.data.trim())
        .collect();
    let first_ms = events.iter().find_map(|e| e.at_ms);
    let rel = |e: &FieldEvent| match (e.at_ms, first_ms) {
        (Some(t), Some(f)) => format!(
            "+{}",
            format_duration(Duration::from_millis((t - f).max(0) as u64))
        ),
        _ => "+?".into(),
    };

    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "# Generated by `hil fixture from-events {source}`: a skeleton, not a finished"
    );
    let _ = writeln!(
        w,
        "# scenario. Fill in every TODO, then make it fail the way the device did."
    );
    let _ = writeln!(
        w,
        "name = {}",
        toml_string(&format!(
            "field: TODO one line on what went wrong ({source})"
        ))
    );
    match board {
        Some(b) => {
            let _ = writeln!(
                w,
                "board = {}   # platform {} in spark/status/safe-mode",
                toml_string(b),
                platform.unwrap_or(0)
            );
        }
        None => {
            let _ = writeln!(w, "board = \"boron\"   # TODO: the platform is not in the events (spark/status/safe-mode names it)");
        }
    }
    let _ = writeln!(w, "seed = 1");
    let _ = writeln!(w);

    // [firmware]
    let initial_app = events.iter().filter_map(|e| e.version).find(|v| *v != 0);
    let _ = writeln!(w, "[firmware]");
    match describe
        .as_ref()
        .and_then(|d| d.system)
        .and_then(device_os_value)
    {
        Some(value) => {
            let _ = writeln!(w, "device_os = {value}   # system part in spark/status/safe-mode (TODO: that is after the update; was it the same before?)");
        }
        _ => {
            let _ = writeln!(
                w,
                "device_os = \"6.2.0\"   # TODO: the Device OS version is not in the events"
            );
        }
    }
    match initial_app {
        Some(v) => {
            let _ = writeln!(
                w,
                "app = {v}   # the product version the first events report"
            );
        }
        None => {
            let _ = writeln!(
                w,
                "app = 1   # TODO: no product version in the events (developer stream?)"
            );
        }
    }
    if let Some(b) = describe.as_ref().and_then(|d| d.bootloader) {
        let _ = writeln!(w, "bootloader = {b}");
    }
    let _ = writeln!(w);

    // [app] and [cloud] from the flags the device published at its first connection.
    let first_flag = |name: &str| {
        events
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.data.trim() == "true")
    };
    let updates_enabled = first_flag("particle/device/updates/enabled");
    let forced = first_flag("particle/device/updates/forced");
    let _ = writeln!(w, "[app]");
    match updates_enabled {
        Some(v) => {
            let _ = writeln!(
                w,
                "updates_enabled = {v}   # particle/device/updates/enabled at the first connection"
            );
        }
        None => {
            let _ = writeln!(w, "updates_enabled = true   # TODO: particle/device/updates/enabled not in the events");
        }
    }
    let _ = writeln!(
        w,
        "resets_enabled = true   # TODO: resets are device-local; the events cannot tell"
    );
    let _ = writeln!(w);
    // A transfer the cloud failed because the device went offline during it (offline, then
    // `failed ` with nothing between): the cloud's `interrupted_transfer = "fail"` behaviour.
    let dropped = events.windows(2).find(|pair| {
        pair[0].name == "spark/status"
            && pair[0].data.trim() == "offline"
            && pair[1].name == "spark/flash/status"
            && pair[1].data.trim() == "failed"
    });
    if let Some(pair) = dropped {
        let _ = writeln!(w, "[cloud]");
        let _ = writeln!(
            w,
            "interrupted_transfer = \"fail\"   # lines {} and {}: offline during a transfer, then `failed `",
            pair[0].line, pair[1].line
        );
        let _ = writeln!(w);
    }
    let _ = writeln!(w, "[[cloud.device]]");
    if let Some(id) = &device {
        if id.len() == 24
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            let _ = writeln!(w, "id = {}", toml_string(id));
        } else {
            let _ = writeln!(
                w,
                "# TODO: device id {} is not 24 lowercase hex characters",
                toml_string(id)
            );
        }
    }
    let _ = writeln!(w, "updates_forced = {}", forced.unwrap_or(false));
    if product_id.is_some() {
        let _ = writeln!(w, "# TODO: a product device (product {}); products and releases come with the fleet issue,", product_id.unwrap_or(0));
        let _ = writeln!(
            w,
            "# so the update the cloud started is a cloud.flash below."
        );
    }
    let _ = writeln!(w);

    // Steps.
    let mut prev_ms = first_ms;
    let mut in_transfer = false;
    let mut online_seen = false;
    let mut enabled = updates_enabled;
    let mut forced_now = forced;
    let mut safe_mode = false;
    let mut expected_events: Vec<(String, String)> = Vec::new();
    let step = |w: &mut String, e: &FieldEvent, comment: &str, body: &str| {
        let _ = writeln!(w, "# line {}, {} {}: {}", e.line, rel(e), e.name, comment);
        let _ = writeln!(w, "[[step]]");
        let _ = writeln!(w, "{body}");
    };
    for (i, e) in events.iter().enumerate() {
        let gap = match (e.at_ms, prev_ms) {
            (Some(t), Some(p)) => Some(t - p),
            _ => None,
        };
        let timeout = timeout_for(gap);
        let data = e.data.trim();
        let wait = |name: &str, data: &str| {
            format!(
                "do = \"wait.event\"\nname = {}\ndata = {}\ntimeout = {}\n",
                toml_string(name),
                toml_string(data),
                toml_string(&timeout)
            )
        };
        let mut moved = true;
        match (e.name.as_str(), data) {
            ("spark/status", "online") if !online_seen => {
                online_seen = true;
                step(
                    w,
                    e,
                    "first connection",
                    &format!(
                        "do = \"wait.state\"\nstate = \"online\"\ntimeout = {}\n",
                        toml_string(&timeout)
                    ),
                );
            }
            ("spark/status", "online") => {
                safe_mode = false;
                let note = match e.version {
                    Some(0) => "reconnected reporting product version 0 (safe mode?)".to_string(),
                    Some(v) => format!("reconnected running product version {v}"),
                    None => "reconnected".to_string(),
                };
                step(w, e, &note, &wait("spark/status", "online"));
            }
            ("spark/status", "offline") => {
                let note = if in_transfer {
                    "offline DURING the transfer. TODO: why? a power cut (power.cut chunk = K), a link fault (link.partition), sleep (app.sleep)?"
                } else {
                    "offline"
                };
                step(w, e, note, &wait("spark/status", "offline"));
            }
            ("spark/status", "auto-update") => {
                let _ = writeln!(w, "# line {}, {} spark/status auto-update: the cloud started an update on its own (release or lock)\n", e.line, rel(e));
            }
            ("spark/flash/status", "started") => {
                in_transfer = true;
                expected_events.push((e.name.clone(), data.into()));
                let next = events[i..]
                    .iter()
                    .filter_map(|x| x.version)
                    .find(|v| *v != 0 && Some(*v) != initial_app);
                let needed_value = describe
                    .as_ref()
                    .and_then(|d| d.needed_system)
                    .and_then(device_os_value);
                let needed = describe
                    .as_ref()
                    .and_then(|d| d.needed_system)
                    .filter(|v| *v <= u16::MAX as u64)
                    .map(|v| DeviceOsVersion(v as u16).to_string());
                if safe_mode {
                    let body = match &needed_value {
                        Some(v) => format!("do = \"cloud.flash\"\ndevice_os = {v}   # the system part the app depends on\n"),
                        None => "do = \"cloud.flash\"\ndevice_os = \"6.2.0\"   # TODO: which module did the healer send?\n".to_string(),
                    };
                    step(
                        w,
                        e,
                        "in safe mode: the cloud's safe-mode healer sends a missing module",
                        &body,
                    );
                    prev_ms = e.at_ms.or(prev_ms);
                    continue;
                }
                // The safe mode this transfer led to (before the next transfer starts): an app
                // whose dependency names a newer system part than the device has was built
                // against that Device OS.
                let built_against = events[i + 1..]
                    .iter()
                    .take_while(|x| {
                        !(x.name == "spark/flash/status" && x.data.trim() == "started")
                    })
                    .filter(|x| x.name == "spark/status/safe-mode")
                    .find_map(|x| read_describe(&x.data))
                    .and_then(|d| {
                        let v = d.app_built_against?;
                        let value = device_os_value(v)?;
                        let has = d
                            .system
                            .filter(|v| *v <= u16::MAX as u64)
                            .map(|s| DeviceOsVersion(s as u16).to_string())
                            .unwrap_or_else(|| "?".into());
                        Some(format!(
                            "built_against = {value}   # spark/status/safe-mode afterwards: the app needs Device OS {}, the device has {has}\n",
                            DeviceOsVersion(v as u16)
                        ))
                    });
                let mut body = match next {
                    Some(v) => format!("do = \"cloud.flash\"\napp = {v}   # the version reported after the update\n"),
                    None => format!(
                        "do = \"cloud.flash\"\napp = {}   # TODO: the new version is not in the events{}\n",
                        initial_app.unwrap_or(1) + 1,
                        match (&needed, &built_against) {
                            (_, Some(_)) => String::new(),
                            (Some(v), None) => format!("; safe mode afterwards says the app needs Device OS {v}"),
                            (None, None) => "; Device OS too? (device_os, combined)".into(),
                        }
                    ),
                };
                if let Some(line) = built_against {
                    body.push_str(&line);
                }
                step(w, e, "the cloud starts a transfer", &body);
            }
            ("spark/flash/status", "success") | ("spark/flash/status", "failed") => {
                in_transfer = false;
                expected_events.push((e.name.clone(), data.into()));
                let note = if data == "failed" {
                    "the transfer FAILED. TODO: with which device error? (expect ota = { error = ... })"
                } else {
                    "the cloud handed the whole file to the device"
                };
                step(w, e, note, &wait(&e.name, data));
            }
            ("spark/device/last_reset", reason) => {
                expected_events.push((e.name.clone(), reason.into()));
                step(w, e, "the device rebooted", &wait(&e.name, reason));
            }
            ("spark/status/safe-mode", _) => {
                expected_events.push((e.name.clone(), String::new()));
                let mut note = String::from("the device is in SAFE MODE");
                if let Some(d) = read_describe(&e.data) {
                    for f in &d.failing {
                        let _ = write!(note, "; {f}");
                    }
                }
                if !safe_mode {
                    safe_mode = true;
                    step(w, e, &note, "do = \"expect\"\nsafe_mode = true\n");
                } else {
                    let _ = writeln!(
                        w,
                        "# line {}, {} {}: still {}\n",
                        e.line,
                        rel(e),
                        e.name,
                        note.trim_start_matches("the device is ")
                    );
                }
            }
            ("particle/device/updates/enabled", v) => {
                let now = v == "true";
                if enabled != Some(now) && online_seen {
                    step(
                        w,
                        e,
                        "the application changed updates",
                        if now {
                            "do = \"app.enable_updates\"\n"
                        } else {
                            "do = \"app.disable_updates\"\n"
                        },
                    );
                }
                enabled = Some(now);
                moved = false;
            }
            ("particle/device/updates/forced", v) => {
                let now = v == "true";
                if forced_now != Some(now) && online_seen {
                    step(
                        w,
                        e,
                        "the cloud changed forced updates",
                        &format!("do = \"cloud.force_updates\"\nforced = {now}\n"),
                    );
                }
                forced_now = Some(now);
                moved = false;
            }
            ("particle/device/updates/pending", "true") => {
                expected_events.push((e.name.clone(), "true".into()));
                step(
                    w,
                    e,
                    "the cloud deferred an update (updates disabled)",
                    &format!(
                        "{}\n[[step]]\ndo = \"expect\"\nflags = {{ updates_pending = true }}\n",
                        wait(&e.name, "true").trim_end()
                    ),
                );
            }
            _ => moved = false,
        }
        if moved {
            prev_ms = e.at_ms.or(prev_ms);
        }
    }
    if events.is_empty() {
        let _ = writeln!(w, "# TODO: the capture holds no events");
    }

    // Final expectations.
    let _ = writeln!(w, "[expect]");
    let last_app = events
        .iter()
        .rev()
        .filter_map(|e| e.version)
        .find(|v| *v != 0);
    match last_app {
        Some(v) if !safe_mode => {
            let _ = writeln!(w, "running = {{ app = {v} }}   # TODO: what should run in the end, once the bug is fixed?");
        }
        _ => {
            let _ = writeln!(w, "# running = {{ app = N }}   TODO: what should run in the end, once the bug is fixed?");
        }
    }
    let _ = writeln!(w, "safe_mode = {safe_mode}   # as observed at the end of the capture (TODO: the bug may be exactly this)");
    if !expected_events.is_empty() {
        let _ = writeln!(w, "events = [   # the OTA events observed, in order");
        for (name, data) in &expected_events {
            if data.is_empty() {
                let _ = writeln!(w, "  {},", toml_string(name));
            } else {
                let _ = writeln!(
                    w,
                    "  {{ name = {}, data = {} }},",
                    toml_string(name),
                    toml_string(data)
                );
            }
        }
        let _ = writeln!(w, "]");
    }
    let _ = writeln!(w);

    // [report]
    let _ = writeln!(w, "[report]");
    let _ = writeln!(w, "source = {}", toml_string(source));
    let _ = writeln!(w, "format = {}", toml_string(form.as_str()));
    let _ = writeln!(
        w,
        "summary = \"TODO: what the customer reported, in one sentence\""
    );
    if let Some(id) = &device {
        let _ = writeln!(w, "device_id = {}", toml_string(id));
    }
    if !others.is_empty() {
        let list: Vec<String> = others.iter().map(|s| toml_string(s)).collect();
        let _ = writeln!(
            w,
            "other_devices = [{}]   # their events were left out",
            list.join(", ")
        );
    }
    if let Some(p) = product_id {
        let _ = writeln!(w, "product_id = {p}");
    }
    match (platform, board) {
        (Some(p), Some(b)) => {
            let _ = writeln!(w, "platform = {}", toml_string(&format!("{b} ({p})")));
        }
        (Some(p), None) => {
            let _ = writeln!(
                w,
                "platform = {}",
                toml_string(&format!("unknown platform {p}"))
            );
        }
        _ => {
            let _ = writeln!(w, "platform = \"TODO: not in the events\"");
        }
    }
    match describe.as_ref().and_then(|d| d.system) {
        Some(v) if v <= u16::MAX as u64 => {
            let _ = writeln!(
                w,
                "device_os = {}",
                toml_string(&DeviceOsVersion(v as u16).to_string())
            );
        }
        _ => {
            let _ = writeln!(w, "device_os = \"TODO: not in the events\"");
        }
    }
    let list = |v: &[String]| v.join(", ");
    let _ = writeln!(
        w,
        "app_versions = [{}]   # product versions the events reported, in order",
        list(
            &app_versions
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
        )
    );
    let _ = writeln!(
        w,
        "app_hashes = [{}]",
        list(
            &app_hashes
                .iter()
                .map(|h| toml_string(h))
                .collect::<Vec<_>>()
        )
    );
    let _ = writeln!(
        w,
        "resets = [{}]",
        list(&resets.iter().map(|r| toml_string(r)).collect::<Vec<_>>())
    );
    if let Some(d) = &describe {
        if !d.failing.is_empty() {
            let _ = writeln!(
                w,
                "safe_mode_describe = [{}]",
                list(&d.failing.iter().map(|f| toml_string(f)).collect::<Vec<_>>())
            );
        }
    }
    let _ = writeln!(w, "observed = [   # every event of the device, as captured");
    for e in &events {
        let line = format!(
            "{} {} {} {}",
            e.published_at.as_deref().unwrap_or("?"),
            rel(e),
            e.name,
            truncate(&format!("{:?}", e.data), 100)
        );
        let _ = writeln!(w, "  {},", toml_string(&line));
    }
    let _ = writeln!(w, "]");
    out
}
