//! The step kinds of scenario files, each declared once (format in `fixtures/README.md`).
//!
//! One entry of the `steps!` table below says everything the harness knows about a step kind
//! except how a target carries it out: its `do =` name, the typed [`Step`] it becomes (written
//! once, used both to build the step and to recognise it), the [`Capability`]s it needs, the
//! form error messages show, and its fields in the order they are read, each with a [`Codec`]
//! (type and unit) and how it is given (required, optional, with a default, a flag, or shown as
//! a bare value). From that one entry the macro derives:
//!
//! - [`STEPS`] (kinds and forms, listed in error messages) and [`step_fields`] (the keys each
//!   kind reads, checked against the README's steps table),
//! - the parser's reader for the kind (`read`),
//! - [`kind`], [`capabilities`] and the step's canonical line ([`show`], `Display for Step`),
//! - the step written back as a TOML inline table ([`to_toml`]).
//!
//! Display and parse walk the same field list with the same codecs, so they cannot drift; a
//! test parses `to_toml(step)` of every step of every fixture and compares.
//!
//! Adding a step kind: add its variant to the model (`model.rs`), one entry here (the compiler
//! points here: the generated matches are exhaustive), one row in the README's steps table (a
//! test checks the kind and its keys are there) and the arm of `Target::apply` (or the runner
//! for waits) that carries it out.

use std::marker::PhantomData;
use std::time::Duration;

use emulator::flash::CutMode;

use super::model::*;
use super::node::{self, Fields, Node, SpanError};
use super::parse as p;

/// Where a step is being read: for messages of checks that span several fields.
pub struct StepContext<'a> {
    /// The step's table.
    pub node: &'a Node,
    /// "3", or "5.2" inside a repeat.
    pub index: &'a str,
    /// The step's form ([`STEPS`]).
    pub form: &'static str,
}

/// One field value: how it is read from its TOML node, shown in a step's canonical line and
/// written back as TOML.
pub trait Codec {
    type Value: PartialEq;
    fn read(n: &Node) -> Result<Self::Value, SpanError>;
    fn show(v: &Self::Value) -> String;
    fn toml(v: &Self::Value) -> String;
}

/// Several keys read together, with checks across them (a firmware spec, a power cut point).
pub trait Compound {
    type Value;
    /// The keys it reads (for the README check).
    const KEYS: &'static [&'static str];
    fn read(f: &mut Fields, cx: &StepContext) -> Result<Self::Value, SpanError>;
    /// Appends to the canonical line (each part with its leading space).
    fn show(v: &Self::Value, out: &mut String);
    /// Appends `key = value` entries.
    fn toml(v: &Self::Value, out: &mut Vec<String>);
}

fn quote(s: &str) -> String {
    toml_edit::Value::from(s).to_string()
}

pub struct Bool;
impl Codec for Bool {
    type Value = bool;
    fn read(n: &Node) -> Result<bool, SpanError> {
        node::as_bool(n)
    }
    fn show(v: &bool) -> String {
        v.to_string()
    }
    fn toml(v: &bool) -> String {
        v.to_string()
    }
}

pub struct U16;
impl Codec for U16 {
    type Value = u16;
    fn read(n: &Node) -> Result<u16, SpanError> {
        node::as_u16(n)
    }
    fn show(v: &u16) -> String {
        v.to_string()
    }
    fn toml(v: &u16) -> String {
        v.to_string()
    }
}

pub struct U64;
impl Codec for U64 {
    type Value = u64;
    fn read(n: &Node) -> Result<u64, SpanError> {
        node::as_u64(n)
    }
    fn show(v: &u64) -> String {
        v.to_string()
    }
    fn toml(v: &u64) -> String {
        v.to_string()
    }
}

/// A count of at least one.
pub struct Count;
impl Codec for Count {
    type Value = u32;
    fn read(n: &Node) -> Result<u32, SpanError> {
        node::as_int(n, 1, u32::MAX as i64).map(|i| i as u32)
    }
    fn show(v: &u32) -> String {
        v.to_string()
    }
    fn toml(v: &u32) -> String {
        v.to_string()
    }
}

pub struct Str;
impl Codec for Str {
    type Value = String;
    fn read(n: &Node) -> Result<String, SpanError> {
        node::as_string(n)
    }
    fn show(v: &String) -> String {
        v.clone()
    }
    fn toml(v: &String) -> String {
        quote(v)
    }
}

/// Event data, shown glued to the event name as `name="data"`.
pub struct EventData;
impl Codec for EventData {
    type Value = String;
    fn read(n: &Node) -> Result<String, SpanError> {
        node::as_string(n)
    }
    fn show(v: &String) -> String {
        format!("{v:?}")
    }
    fn toml(v: &String) -> String {
        quote(v)
    }
}

/// `"30s"`, `"1m30s"`, `"250ms"`.
pub struct Dur;
impl Codec for Dur {
    type Value = Duration;
    fn read(n: &Node) -> Result<Duration, SpanError> {
        p::read_duration(n)
    }
    fn show(v: &Duration) -> String {
        format_duration(*v)
    }
    fn toml(v: &Duration) -> String {
        quote(&format_duration(*v))
    }
}

/// A rate from 0.0 to 1.0.
pub struct Rate;
impl Codec for Rate {
    type Value = f64;
    fn read(n: &Node) -> Result<f64, SpanError> {
        node::as_rate(n)
    }
    fn show(v: &f64) -> String {
        v.to_string()
    }
    fn toml(v: &f64) -> String {
        format!("{v:?}")
    }
}

/// Bytes per second: `2048`, `"4 KiB/s"`, `"250 kbit/s"`.
pub struct Bandwidth;
impl Codec for Bandwidth {
    type Value = u64;
    fn read(n: &Node) -> Result<u64, SpanError> {
        p::read_bandwidth(n)
    }
    fn show(v: &u64) -> String {
        format!("\"{}\"", super::units::format_rate(*v))
    }
    fn toml(v: &u64) -> String {
        v.to_string()
    }
}

/// Device group names, shown comma-separated.
pub struct Groups;
impl Codec for Groups {
    type Value = Vec<String>;
    fn read(n: &Node) -> Result<Vec<String>, SpanError> {
        p::read_groups(n)
    }
    fn show(v: &Vec<String>) -> String {
        v.join(",")
    }
    fn toml(v: &Vec<String>) -> String {
        let items: Vec<String> = v.iter().map(|g| quote(g)).collect();
        format!("[{}]", items.join(", "))
    }
}

/// A value named by one of a fixed set of words.
pub trait Words: Copy + PartialEq + 'static {
    const WORDS: &'static [(&'static str, Self)];
    fn word(self) -> &'static str {
        Self::WORDS
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(w, _)| w)
    }
}

/// A [`Words`] value.
pub struct Word<T>(PhantomData<T>);
impl<T: Words> Codec for Word<T> {
    type Value = T;
    fn read(n: &Node) -> Result<T, SpanError> {
        node::as_word(n, T::WORDS)
    }
    fn show(v: &T) -> String {
        v.word().to_string()
    }
    fn toml(v: &T) -> String {
        quote(v.word())
    }
}

macro_rules! words {
    ($($t:ty => $words:expr;)*) => {
        $(impl Words for $t {
            const WORDS: &'static [(&'static str, Self)] = &$words;
        })*
    };
}

words! {
    FailPhase => FailPhase::WORDS;
    Phase => Phase::WORDS;
    HardwareReset => HardwareReset::WORDS;
    EventsFrom => EventsFrom::WORDS;
    DeviceState => DeviceState::WORDS;
    Direction => Direction::WORDS;
    MessageKind => MessageKind::WORDS;
    SleepMode => SLEEP_MODE_WORDS;
    SleepNetwork => SLEEP_NETWORK_WORDS;
    emulator::flash::OpKind => FLASH_OP_KIND_WORDS;
    WhichBoot => [("any", WhichBoot::Any), ("next", WhichBoot::Next)];
    WhichTransfer => [("current", WhichTransfer::Current), ("next", WhichTransfer::Next)];
}

/// `cloud.flash` and `cloud.upload`: the file to build.
pub struct Firmware;
impl Compound for Firmware {
    type Value = FirmwareSpec;
    const KEYS: &'static [&'static str] = &[
        "app",
        "device_os",
        "bootloader",
        "radio_stack",
        "built_against",
        "compressed",
        "combined",
        "platform",
        "corrupt",
        "size",
        "assets",
    ];
    fn read(f: &mut Fields, cx: &StepContext) -> Result<FirmwareSpec, SpanError> {
        p::read_firmware_spec(f, cx.form)
    }
    fn show(v: &FirmwareSpec, out: &mut String) {
        out.push_str(&format!(" {v}"));
    }
    fn toml(v: &FirmwareSpec, out: &mut Vec<String>) {
        let mut kv = |k: &str, s: String| out.push(format!("{k} = {s}"));
        if let Some(a) = v.app {
            kv("app", a.to_string());
        }
        if let Some(d) = v.device_os {
            kv("device_os", quote(&d.to_string()));
        }
        if let Some(b) = v.bootloader {
            kv("bootloader", b.to_string());
        }
        if let Some(r) = v.radio_stack {
            kv("radio_stack", r.to_string());
        }
        if let Some(d) = v.built_against {
            kv("built_against", quote(&d.to_string()));
        }
        if v.compressed {
            kv("compressed", "true".into());
        }
        if v.combined {
            kv("combined", "true".into());
        }
        if let Some(p) = &v.platform {
            kv("platform", quote(p));
        }
        if let Some(c) = v.corrupt {
            let w = Corruption::WORDS.iter().find(|(_, x)| *x == c);
            kv("corrupt", quote(w.map_or("?", |(w, _)| w)));
        }
        if let Some(s) = v.size {
            kv("size", s.to_string());
        }
        if !v.assets.is_empty() {
            let items: Vec<String> = v
                .assets
                .iter()
                .map(|a| {
                    let content = AssetContent::WORDS
                        .iter()
                        .find(|(_, c)| *c == a.content)
                        .map_or("?", |(w, _)| w);
                    format!(
                        "{{ name = {}, size = {}, content = {}, mismatch = {} }}",
                        quote(&a.name),
                        a.size,
                        quote(content),
                        a.mismatch
                    )
                })
                .collect();
            kv("assets", format!("[{}]", items.join(", ")));
        }
    }
}

/// `power.cut`: now, or at a flash operation, a chunk or an operation of a phase.
pub struct Cut;
impl Compound for Cut {
    type Value = PowerCut;
    const KEYS: &'static [&'static str] = &["flash_op", "chunk", "phase", "op", "mode", "off_for"];
    fn read(f: &mut Fields, cx: &StepContext) -> Result<PowerCut, SpanError> {
        p::read_power_cut(f, cx.form)
    }
    fn show(cut: &PowerCut, out: &mut String) {
        match cut.at {
            CutPoint::Now => out.push_str(" now"),
            CutPoint::FlashOp(n) => out.push_str(&format!(" flash_op={n}")),
            CutPoint::Chunk(k) => out.push_str(&format!(" chunk={k}")),
            CutPoint::Phase { phase, op } => {
                out.push_str(&format!(" phase={} op={op}", phase.as_str()))
            }
        }
        if cut.at != CutPoint::Now {
            out.push_str(&format!(" mode={}", cut_mode_str(cut.mode)));
        }
        if let Some(d) = cut.off_for {
            out.push_str(&format!(" off_for={}", format_duration(d)));
        }
    }
    fn toml(cut: &PowerCut, out: &mut Vec<String>) {
        match cut.at {
            CutPoint::Now => {}
            CutPoint::FlashOp(n) => out.push(format!("flash_op = {n}")),
            CutPoint::Chunk(k) => out.push(format!("chunk = {k}")),
            CutPoint::Phase { phase, op } => {
                out.push(format!("phase = {}", quote(phase.as_str())));
                out.push(format!("op = {op}"));
            }
        }
        if cut.at != CutPoint::Now {
            out.push(format!("mode = {}", quote(cut_mode_str(cut.mode))));
        }
        if let Some(d) = cut.off_for {
            out.push(format!("off_for = {}", Dur::toml(&d)));
        }
    }
}

/// `wait.state running = { app = 4 }`.
pub struct Running;
impl Codec for Running {
    type Value = RunningExpect;
    fn read(n: &Node) -> Result<RunningExpect, SpanError> {
        p::read_running(n)
    }
    fn show(v: &RunningExpect) -> String {
        Expectation::Running(*v).to_string()
    }
    fn toml(v: &RunningExpect) -> String {
        running_toml(v)
    }
}

fn running_toml(r: &RunningExpect) -> String {
    let mut p = Vec::new();
    if let Some(d) = r.device_os {
        p.push(format!("device_os = {}", quote(&d.to_string())));
    }
    if let Some(a) = r.app {
        p.push(format!("app = {a}"));
    }
    if let Some(b) = r.bootloader {
        p.push(format!("bootloader = {b}"));
    }
    format!("{{ {} }}", p.join(", "))
}

/// `wait.ota`: `min_percent = N` or `received = size`, exactly one.
pub struct Progress;
impl Compound for Progress {
    type Value = OtaProgress;
    const KEYS: &'static [&'static str] = &["min_percent", "received"];
    fn read(f: &mut Fields, cx: &StepContext) -> Result<OtaProgress, SpanError> {
        let percent = f.optional("min_percent", |n| {
            node::as_int(n, 1, 100).map(|p| OtaProgress::Percent(p as u8))
        })?;
        let bytes = f.optional("received", |n| p::read_size(n).map(OtaProgress::Bytes))?;
        match (percent, bytes) {
            (Some(p), None) | (None, Some(p)) => Ok(p),
            _ => {
                // The step's other keys are known: an unknown key explains the problem better.
                f.get("timeout");
                f.get("transfer");
                f.finish()?;
                Err(SpanError::new(
                    f.span(),
                    format!(
                        "step {} (wait.ota): give exactly one of min_percent or received, e.g. {}",
                        cx.index, cx.form
                    ),
                ))
            }
        }
    }
    fn show(v: &OtaProgress, out: &mut String) {
        out.push_str(&format!(" {v}"));
    }
    fn toml(v: &OtaProgress, out: &mut Vec<String>) {
        match v {
            OtaProgress::Percent(p) => out.push(format!("min_percent = {p}")),
            OtaProgress::Bytes(b) => out.push(format!("received = {b}")),
        }
    }
}

/// `expect`: every expectation key of the table.
pub struct Checks;
impl Compound for Checks {
    type Value = Vec<Expectation>;
    const KEYS: &'static [&'static str] = &[];
    fn read(f: &mut Fields, _: &StepContext) -> Result<Vec<Expectation>, SpanError> {
        p::read_expectation_fields(f)
    }
    fn show(list: &Vec<Expectation>, out: &mut String) {
        for (i, e) in list.iter().enumerate() {
            out.push_str(if i == 0 { " " } else { "; " });
            out.push_str(&e.to_string());
        }
    }
    fn toml(list: &Vec<Expectation>, out: &mut Vec<String>) {
        out.extend(list.iter().map(expectation_toml));
    }
}

/// An expectation as the `key = value` entry of an expect table.
pub fn expectation_toml(e: &Expectation) -> String {
    let pattern = |p: &EventPattern| match &p.data {
        Some(d) => format!("{{ name = {}, data = {} }}", quote(&p.name), quote(d)),
        None => quote(&p.name),
    };
    let list = |l: &[EventPattern]| {
        let items: Vec<String> = l.iter().map(pattern).collect();
        format!("[{}]", items.join(", "))
    };
    let table = |parts: Vec<String>| format!("{{ {} }}", parts.join(", "));
    let value = match e {
        Expectation::Running(r) => running_toml(r),
        Expectation::SafeMode(b) | Expectation::Online(b) => b.to_string(),
        Expectation::Events(l) | Expectation::EventsAbsent(l) => list(l),
        Expectation::EventCounts(l) => {
            let items: Vec<String> = l
                .iter()
                .map(|(p, n)| match &p.data {
                    Some(d) => format!(
                        "{{ name = {}, data = {}, count = {n} }}",
                        quote(&p.name),
                        quote(d)
                    ),
                    None => format!("{{ name = {}, count = {n} }}", quote(&p.name)),
                })
                .collect();
            format!("[{}]", items.join(", "))
        }
        Expectation::SessionResumed(r) => quote(if *r { "resumed" } else { "handshake" }),
        Expectation::TransfersSinceBoot(n) => n.to_string(),
        Expectation::Flags(x) => {
            let mut p = Vec::new();
            for (k, v) in [
                ("updates_enabled", x.updates_enabled),
                ("updates_pending", x.updates_pending),
                ("updates_forced", x.updates_forced),
                ("reset_enabled", x.reset_enabled),
                ("reset_pending", x.reset_pending),
            ] {
                if let Some(v) = v {
                    p.push(format!("{k} = {v}"));
                }
            }
            table(p)
        }
        Expectation::Ota(o) => {
            let mut p = Vec::new();
            if let Some(s) = o.state {
                p.push(format!("state = {}", quote(s.as_str())));
            }
            if let Some(m) = o.min_percent {
                p.push(format!("min_percent = {m}"));
            }
            if let Some(r) = o.resumed {
                p.push(format!("resumed = {r}"));
            }
            if let Some(e) = o.error {
                p.push(format!("error = {e}"));
            }
            table(p)
        }
        Expectation::NothingLost => "true".into(),
        Expectation::LastReset(r) => quote(r),
    };
    format!("{} = {value}", e.key())
}

/// `sweep modes = ["before", "torn"]`, shown `modes=before,torn`.
pub struct Modes;
impl Codec for Modes {
    type Value = Vec<CutMode>;
    fn read(n: &Node) -> Result<Vec<CutMode>, SpanError> {
        p::read_modes(n)
    }
    fn show(v: &Vec<CutMode>) -> String {
        let modes: Vec<&str> = v.iter().map(|m| cut_mode_str(*m)).collect();
        modes.join(",")
    }
    fn toml(v: &Vec<CutMode>) -> String {
        let modes: Vec<String> = v.iter().map(|m| quote(cut_mode_str(*m))).collect();
        format!("[{}]", modes.join(", "))
    }
}

/// `repeat`: the count (`times`, or `until` with `max`) and the inner steps.
pub struct Loop;
impl Compound for Loop {
    type Value = Repeat;
    const KEYS: &'static [&'static str] = &["times", "until", "max", "steps"];
    fn read(f: &mut Fields, cx: &StepContext) -> Result<Repeat, SpanError> {
        p::read_repeat(f, cx.index, cx.form)
    }
    fn show(r: &Repeat, out: &mut String) {
        match &r.count {
            RepeatCount::Times(n) => out.push_str(&format!(" times={n}")),
            RepeatCount::Until { condition, max } => {
                out.push_str(" until");
                Checks::show(condition, out);
                out.push_str(&format!(" max={max}"));
            }
        }
        out.push_str(&format!(" ({} steps)", r.steps.len()));
    }
    fn toml(r: &Repeat, out: &mut Vec<String>) {
        match &r.count {
            RepeatCount::Times(n) => out.push(format!("times = {n}")),
            RepeatCount::Until { condition, max } => {
                let mut c = Vec::new();
                Checks::toml(condition, &mut c);
                out.push(format!("until = {{ {} }}", c.join(", ")));
                out.push(format!("max = {max}"));
            }
        }
        let steps: Vec<String> = r.steps.iter().map(to_toml_at).collect();
        out.push(format!("steps = [{}]", steps.join(", ")));
    }
}

/// A step with its `device` as a TOML inline table.
pub fn to_toml_at(s: &StepAt) -> String {
    let t = to_toml(&s.step);
    match &s.device {
        Some(d) => format!("{}, device = {} }}", &t[..t.len() - 2], quote(d)),
        None => t,
    }
}

// How one field is read, shown and written back, by how it is given.
macro_rules! field {
    (@read req $c:ty, $f:ident, $cx:ident, $k:expr) => {
        $f.required($k, $cx.form, <$c>::read)?
    };
    (@read pos $c:ty, $f:ident, $cx:ident, $k:expr) => {
        $f.required($k, $cx.form, <$c>::read)?
    };
    (@read opt $c:ty, $f:ident, $cx:ident, $k:expr) => {
        $f.optional($k, <$c>::read)?
    };
    (@read glued $c:ty, $f:ident, $cx:ident, $k:expr) => {
        $f.optional($k, <$c>::read)?
    };
    (@read bare $c:ty, $f:ident, $cx:ident, $k:expr) => {
        $f.optional($k, <$c>::read)?
    };
    (@read or $c:ty, $f:ident, $cx:ident, $k:expr, $d:expr) => {
        $f.optional($k, <$c>::read)?.unwrap_or_else(|| $d)
    };
    (@read always $c:ty, $f:ident, $cx:ident, $k:expr, $d:expr) => {
        $f.optional($k, <$c>::read)?.unwrap_or_else(|| $d)
    };
    (@read flag $c:ty, $f:ident, $cx:ident, $k:expr) => {
        $f.optional($k, <$c>::read)?.unwrap_or(false)
    };
    (@read compound $c:ty, $f:ident, $cx:ident, $k:expr) => {
        <$c>::read($f, $cx)?
    };

    (@show req $c:ty, $v:expr, $k:expr) => {
        format!(" {}={}", $k, <$c>::show($v))
    };
    (@show pos $c:ty, $v:expr, $k:expr) => {
        format!(" {}", <$c>::show($v))
    };
    (@show opt $c:ty, $v:expr, $k:expr) => {
        $v.as_ref()
            .map_or(String::new(), |v| format!(" {}={}", $k, <$c>::show(v)))
    };
    (@show glued $c:ty, $v:expr, $k:expr) => {
        $v.as_ref()
            .map_or(String::new(), |v| format!("={}", <$c>::show(v)))
    };
    (@show bare $c:ty, $v:expr, $k:expr) => {
        $v.as_ref()
            .map_or(String::new(), |v| format!(" {}", <$c>::show(v)))
    };
    (@show or $c:ty, $v:expr, $k:expr, $d:expr) => {
        if *$v == $d {
            String::new()
        } else {
            format!(" {}={}", $k, <$c>::show($v))
        }
    };
    (@show always $c:ty, $v:expr, $k:expr, $d:expr) => {
        format!(" {}={}", $k, <$c>::show($v))
    };
    (@show flag $c:ty, $v:expr, $k:expr) => {
        if *$v {
            format!(" {}", $k)
        } else {
            String::new()
        }
    };
    (@show compound $c:ty, $v:expr, $k:expr) => {{
        let mut s = String::new();
        <$c>::show($v, &mut s);
        s
    }};

    (@toml compound $c:ty, $v:expr, $k:expr, $out:ident $(, $d:expr)?) => {
        <$c>::toml($v, &mut $out)
    };
    (@toml opt $c:ty, $v:expr, $k:expr, $out:ident) => {
        if let Some(v) = $v {
            $out.push(format!("{} = {}", $k, <$c>::toml(v)));
        }
    };
    (@toml bare $c:ty, $v:expr, $k:expr, $out:ident) => {
        if let Some(v) = $v {
            $out.push(format!("{} = {}", $k, <$c>::toml(v)));
        }
    };
    (@toml glued $c:ty, $v:expr, $k:expr, $out:ident) => {
        if let Some(v) = $v {
            $out.push(format!("{} = {}", $k, <$c>::toml(v)));
        }
    };
    (@toml or $c:ty, $v:expr, $k:expr, $out:ident, $d:expr) => {
        if *$v != $d {
            $out.push(format!("{} = {}", $k, <$c>::toml($v)));
        }
    };
    (@toml $how:ident $c:ty, $v:expr, $k:expr, $out:ident $(, $d:expr)?) => {
        $out.push(format!("{} = {}", $k, <$c>::toml($v)))
    };

    (@late) => {
        false
    };
    (@late late) => {
        true
    };

    (@keys compound $c:ty, $k:expr) => {
        <$c>::KEYS
    };
    (@keys $how:ident $c:ty, $k:expr) => {
        &[$k]
    };
}

/// The step table: see the module documentation. Each entry:
///
/// ```text
/// "kind" {
///     step: <the typed step, binding each field by name>,
///     caps: <Vec<Capability>, the fields in scope>,
///     form: "<the form error messages show>",
///     fields: { <name>: <how> <codec> [= default] [; late], ... },   // in reading order
///     [check |f, cx| { <checks across fields; return Err(..) to refuse> }]
/// }
/// ```
///
/// `how`: `req` (required, `key=value`), `pos` (required, shown as the bare value), `opt`
/// (`Option`), `bare` (`Option`, shown as the bare value), `glued` (`Option`, shown right
/// after the field before: `name="data"`), `or` (a default; shown and written back when it
/// differs), `always` (a default; always shown), `flag` (a bool, shown as the bare key when
/// true), `compound` (several keys, a [`Compound`]). The key is the field's name. `late`
/// fields are shown after the others (a wait's timeout). `check` gets the step's [`Fields`]
/// and [`StepContext`] (for messages that name the step and its form), the fields in scope.
macro_rules! steps {
    ($(
        $kind:literal {
            step: $($shape:ident)::+ $( ( $($shape_args:tt)* ) )? ,
            caps: $caps:expr,
            form: $form:expr,
            fields: { $( $field:ident : $how:ident $codec:ty $(= $default:expr)? $(; $late:ident)? ),* $(,)? }
            $(, check |$cf:ident, $ccx:ident| $check:block)?
            $(,)?
        }
    )*) => {
        /// Every step kind with the form an error message shows for it, in the order error
        /// messages list them.
        pub const STEPS: [(&str, &str); [$($kind),*].len()] = [$(($kind, $form)),*];

        /// The keys each step kind reads (besides `do` and `device`), in [`STEPS`] order.
        pub fn step_fields() -> Vec<(&'static str, Vec<&'static str>)> {
            vec![$(
                ($kind, {
                    #[allow(unused_mut)]
                    let mut keys: Vec<&'static str> = Vec::new();
                    $( keys.extend_from_slice(field!(@keys $how $codec, stringify!($field))); )*
                    keys
                }),
            )*]
        }

        /// Reads a step of `kind` (one of [`STEPS`]) from its table; `None` for another kind.
        pub(super) fn read(
            kind: &str,
            f: &mut Fields,
            cx: &StepContext,
        ) -> Result<Option<Step>, SpanError> {
            match kind {
                $($kind => {
                    $(let $field = field!(@read $how $codec, f, cx, stringify!($field) $(, $default)?);)*
                    $(
                        let $cf = &mut *f;
                        let $ccx = cx;
                        $check
                    )?
                    #[allow(clippy::redundant_field_names)]
                    Ok(Some($($shape)::+ $( ( $($shape_args)* ) )?))
                })*
                _ => Ok(None),
            }
        }

        /// The step kind as written after `do =`.
        pub fn kind(step: &Step) -> &'static str {
            match step {
                $(
                    #[allow(unused_variables)]
                    $($shape)::+ $( ( $($shape_args)* ) )? => $kind,
                )*
            }
        }

        /// Capabilities the target needs for the step as a whole (for `expect`, see each
        /// expectation instead: they are checked or skipped one by one).
        pub fn capabilities(step: &Step) -> Vec<Capability> {
            match step {
                $(
                    #[allow(unused_variables)]
                    $($shape)::+ $( ( $($shape_args)* ) )? => $caps,
                )*
            }
        }

        /// The step's canonical line (traces, failure reports): the kind, then its fields.
        pub fn show(step: &Step) -> String {
            match step {
                $(
                    $($shape)::+ $( ( $($shape_args)* ) )? => {
                        #[allow(unused_mut)]
                        let mut parts: Vec<(bool, String)> = Vec::new();
                        $(
                            parts.push((
                                field!(@late $($late)?),
                                field!(@show $how $codec, $field, stringify!($field) $(, $default)?),
                            ));
                        )*
                        parts.sort_by_key(|(late, _)| *late);
                        let mut line = String::from($kind);
                        for (_, part) in parts {
                            line.push_str(&part);
                        }
                        line
                    }
                )*
            }
        }

        /// The step as a TOML inline table (`{ do = "kind", ... }`) that reads back as itself.
        pub fn to_toml(step: &Step) -> String {
            match step {
                $(
                    $($shape)::+ $( ( $($shape_args)* ) )? => {
                        #[allow(unused_mut)]
                        let mut out: Vec<String> = vec![format!("do = {}", quote($kind))];
                        $( field!(@toml $how $codec, $field, stringify!($field), out $(, $default)?); )*
                        format!("{{ {} }}", out.join(", "))
                    }
                )*
            }
        }
    };
}

fn power_cut_capabilities(cut: &PowerCut) -> Vec<Capability> {
    match cut.at {
        CutPoint::Now => vec![Capability::PowerControl],
        CutPoint::FlashOp(_) | CutPoint::Phase { .. } => {
            vec![Capability::PowerControl, Capability::PowerCutAtFlashOp]
        }
        CutPoint::Chunk(_) => vec![Capability::PowerControl, Capability::PowerCutAtChunk],
    }
}

/// A fieldless step's form.
const BARE: &str = "a step table with `do` and the step's fields";

steps! {
    "cloud.flash" {
        step: Step::Action(Action::CloudFlash(spec)),
        caps: vec![Capability::CloudFlash],
        form: "{ do = \"cloud.flash\", app = 4 } (also device_os, bootloader, radio_stack, built_against, compressed, combined, platform, corrupt, size, assets)",
        fields: { spec: compound Firmware },
    }
    "cloud.force_updates" {
        step: Step::Action(Action::CloudForceUpdates { forced }),
        caps: vec![Capability::CloudForceUpdates],
        form: "{ do = \"cloud.force_updates\", forced = true }",
        fields: { forced: req Bool },
    }
    "cloud.upload" {
        step: Step::Action(Action::Product(ProductAction::Upload(spec))),
        caps: vec![Capability::CloudProducts],
        form: "{ do = \"cloud.upload\", app = 5 } (also built_against, size, compressed)",
        fields: { spec: compound Firmware },
        check |_f, cx| {
            if spec.app.is_none() {
                return Err(SpanError::new(
                    cx.node.span.clone(),
                    format!("step {} (cloud.upload) needs `app` (the product firmware version); expected {}", cx.index, cx.form),
                ));
            }
        }
    }
    "cloud.release" {
        step: Step::Action(Action::Product(ProductAction::Release { version, product_default: default, groups, intelligent })),
        caps: vec![Capability::CloudProducts],
        form: "{ do = \"cloud.release\", version = 5, default = true, groups = [\"beta\"], intelligent = false }",
        fields: {
            version: req U16,
            default: flag Bool,
            groups: or Groups = Vec::<String>::new(),
            intelligent: flag Bool,
        },
        check |_f, cx| {
            if !default && groups.is_empty() {
                return Err(SpanError::new(
                    cx.node.span.clone(),
                    format!("step {} (cloud.release) releases to nothing: give default = true and/or groups; expected {}", cx.index, cx.form),
                ));
            }
        }
    }
    "cloud.lock" {
        step: Step::Action(Action::Product(ProductAction::Lock { version, flash_now })),
        caps: vec![Capability::CloudProducts],
        form: "{ do = \"cloud.lock\", version = 5, flash_now = false }",
        fields: { version: req U16, flash_now: flag Bool },
    }
    "cloud.unlock" {
        step: Step::Action(Action::Product(ProductAction::Unlock)),
        caps: vec![Capability::CloudProducts],
        form: "{ do = \"cloud.unlock\" }",
        fields: {},
    }
    "cloud.group" {
        step: Step::Action(Action::Product(ProductAction::Groups(groups))),
        caps: vec![Capability::CloudProducts],
        form: "{ do = \"cloud.group\", groups = [\"beta\"] }",
        fields: { groups: req Groups },
    }
    "cloud.development" {
        step: Step::Action(Action::Product(ProductAction::Development(development))),
        caps: vec![Capability::CloudProducts],
        form: "{ do = \"cloud.development\", development = true }",
        fields: { development: req Bool },
    }
    "cloud.product" {
        step: Step::Action(Action::Product(ProductAction::Settings { development, groups, updates_forced })),
        caps: vec![Capability::CloudProducts],
        form: "{ do = \"cloud.product\", development = false, groups = [\"beta\"], updates_forced = true } (at least one)",
        fields: { development: opt Bool, groups: opt Groups, updates_forced: opt Bool },
        check |_f, cx| {
            if development.is_none() && groups.is_none() && updates_forced.is_none() {
                return Err(SpanError::new(
                    cx.node.span.clone(),
                    format!("step {} (cloud.product) changes nothing; expected {}", cx.index, cx.form),
                ));
            }
        }
    }
    "power.cut" {
        step: Step::Action(Action::PowerCut(cut)),
        caps: power_cut_capabilities(cut),
        form: "{ do = \"power.cut\" } (now), or with one of flash_op = N, chunk = K, phase = \"download\" (and op = N), plus mode = \"before\"|\"torn\"|\"after\"",
        fields: { cut: compound Cut },
    }
    "power.on" {
        step: Step::Action(Action::PowerOn),
        caps: vec![Capability::PowerControl],
        form: BARE,
        fields: {},
    }
    "device.reset" {
        step: Step::Action(Action::HardwareReset(reason)),
        caps: vec![Capability::HardwareReset],
        form: "{ do = \"device.reset\", reason = \"pin\" } (or \"watchdog\")",
        fields: { reason: req Word<HardwareReset> },
    }
    "flash.fail" {
        step: Step::Action(Action::FlashFail(FlashFail { phase, op, kind })),
        caps: vec![Capability::FlashFaults],
        form: "{ do = \"flash.fail\", phase = \"commit\", op = 0, kind = \"write\" } (phase \"download\"|\"commit\"|\"apply\"|\"first_boot\"|\"asset_store\"|\"bootloader_copy\"; kind \"write\"|\"erase\" optional)",
        fields: {
            phase: req Word<FailPhase>,
            op: always U64 = 0,
            kind: opt Word<emulator::flash::OpKind>,
        },
    }
    "app.disable_updates" {
        step: Step::Action(Action::App(AppAction::DisableUpdates)),
        caps: vec![Capability::AppControl],
        form: BARE,
        fields: {},
    }
    "app.enable_updates" {
        step: Step::Action(Action::App(AppAction::EnableUpdates)),
        caps: vec![Capability::AppControl],
        form: BARE,
        fields: {},
    }
    "app.disable_reset" {
        step: Step::Action(Action::App(AppAction::DisableReset)),
        caps: vec![Capability::AppControl],
        form: BARE,
        fields: {},
    }
    "app.enable_reset" {
        step: Step::Action(Action::App(AppAction::EnableReset)),
        caps: vec![Capability::AppControl],
        form: BARE,
        fields: {},
    }
    "app.reset" {
        step: Step::Action(Action::App(AppAction::Reset { no_wait })),
        caps: vec![Capability::AppControl],
        form: BARE,
        fields: { no_wait: flag Bool },
    }
    "app.sleep" {
        step: Step::Action(Action::App(AppAction::Sleep(Sleep { mode, duration, network }))),
        caps: vec![Capability::AppControl, Capability::Sleep],
        form: "{ do = \"app.sleep\", mode = \"stop\", duration = \"10m\", network = \"off\" }",
        fields: {
            mode: req Word<SleepMode>,
            duration: opt Dur; late,
            network: always Word<SleepNetwork> = SleepNetwork::Off,
        },
    }
    "app.wake" {
        step: Step::Action(Action::App(AppAction::Wake)),
        caps: vec![Capability::AppControl, Capability::Sleep],
        form: BARE,
        fields: {},
    }
    "app.connect" {
        step: Step::Action(Action::App(AppAction::Connect)),
        caps: vec![Capability::AppControl],
        form: "{ do = \"app.connect\" }",
        fields: {},
    }
    "app.disconnect" {
        step: Step::Action(Action::App(AppAction::Disconnect)),
        caps: vec![Capability::AppControl],
        form: "{ do = \"app.disconnect\" }",
        fields: {},
    }
    "link.faults" {
        step: Step::Action(Action::Link(LinkAction::Faults { loss, duplicate, reorder, latency, jitter, bandwidth, direction })),
        caps: vec![Capability::LinkFaults],
        form: "{ do = \"link.faults\", loss = 0.2, duplicate = 0.0, reorder = 0.1, latency = \"300ms\", jitter = \"50ms\", bandwidth = \"2 KiB/s\" }",
        fields: {
            loss: always Rate = 0.0,
            duplicate: always Rate = 0.0,
            reorder: always Rate = 0.0,
            latency: or Dur = Duration::ZERO; late,
            jitter: or Dur = Duration::ZERO; late,
            bandwidth: or Bandwidth = 0; late,
            direction: or Word<Direction> = Direction::Both,
        },
    }
    "link.drop" {
        step: Step::Action(Action::Link(LinkAction::Drop { next, direction })),
        caps: vec![Capability::LinkFaults],
        form: "{ do = \"link.drop\", next = 5 } (also direction = \"to_device\"|\"to_cloud\"|\"both\")",
        fields: { next: req Count, direction: or Word<Direction> = Direction::Both },
    }
    "link.drop_next" {
        step: Step::Action(Action::Link(LinkAction::DropNext { kind, count, direction })),
        caps: vec![Capability::LinkFaults, Capability::LinkMessages],
        form: "{ do = \"link.drop_next\", kind = \"UpdateChunk\" } (kinds: Hello, Describe, Event, Subscribe, TimeRequest, Ping, Goodbye, UpdateStart, UpdateChunk, UpdateAck, UpdateFinish (or UpdateDone), response_201, response_204, ack_of_201, ack_of_204, ack, rst, response, other; also count = N, direction = \"to_device\"|\"to_cloud\"|\"both\")",
        fields: {
            kind: req Word<MessageKind>,
            count: or Count = 1,
            direction: or Word<Direction> = Direction::Both,
        },
    }
    "link.partition" {
        step: Step::Action(Action::Link(LinkAction::Partition { duration })),
        caps: vec![Capability::LinkPartition],
        form: "{ do = \"link.partition\", duration = \"45s\" }",
        fields: { duration: req Dur },
    }
    "wait.event" {
        step: Step::Wait(Wait::Event { event: EventPattern { name, data }, timeout, from }),
        caps: vec![Capability::ObserveEvents],
        form: "{ do = \"wait.event\", name = \"spark/flash/status\", data = \"success\", timeout = \"5m\" } (also from = \"cursor\"|\"step\"|\"start\")",
        fields: {
            name: pos Str,
            data: glued EventData,
            timeout: always Dur = DEFAULT_TIMEOUT; late,
            from: or Word<EventsFrom> = EventsFrom::Cursor,
        },
    }
    "wait.state" {
        step: Step::Wait(Wait::State { state, timeout, boot, running }),
        caps: {
            let mut caps = vec![state.capability()];
            if running.is_some() {
                caps.push(Capability::ObserveVersions);
            }
            caps
        },
        form: "{ do = \"wait.state\", state = \"online\", timeout = \"5m\" } (also boot = \"next\", running = { app = 4 })",
        fields: {
            state: pos Word<DeviceState>,
            timeout: always Dur = DEFAULT_TIMEOUT; late,
            boot: or Word<WhichBoot> = WhichBoot::Any,
            running: bare Running,
        },
    }
    "wait.ota" {
        step: Step::Wait(Wait::Ota { progress, timeout, transfer }),
        caps: vec![Capability::ObserveOta],
        form: "{ do = \"wait.ota\", min_percent = 40, timeout = \"5m\" } or { do = \"wait.ota\", received = \"8KiB\" } (also transfer = \"current\"|\"next\")",
        fields: {
            progress: compound Progress,
            timeout: always Dur = DEFAULT_TIMEOUT; late,
            transfer: or Word<WhichTransfer> = WhichTransfer::Current,
        },
    }
    "wait.time" {
        step: Step::Wait(Wait::Time(duration)),
        caps: Vec::new(),
        form: "{ do = \"wait.time\", duration = \"30s\" }",
        fields: { duration: pos Dur },
    }
    "expect" {
        step: Step::Expect(expectations),
        caps: Vec::new(),
        form: BARE,
        fields: { expectations: compound Checks },
        check |f, cx| {
            if expectations.is_empty() {
                // An unknown key explains an empty expect better than "expects nothing".
                f.finish()?;
                return Err(SpanError::new(
                    f.span(),
                    format!("step {} (expect): expects nothing; add e.g. running = {{ app = 4 }} or safe_mode = false", cx.index),
                ));
            }
        }
    }
    "sweep" {
        step: Step::Sweep(Sweep { phase, modes, off_for }),
        caps: vec![
            Capability::PowerControl,
            Capability::PowerCutAtFlashOp,
            Capability::VirtualTime,
        ],
        form: "{ do = \"sweep\", phase = \"apply\", modes = [\"before\", \"torn\", \"after\"] }",
        fields: {
            phase: req Word<Phase>,
            modes: always Modes = CutMode::ALL.to_vec(),
            off_for: always Dur = Duration::from_secs(1),
        },
    }
    "repeat" {
        step: Step::Repeat(r),
        // A loop that cannot check its condition or run one of its steps cannot run.
        caps: {
            let mut caps: Vec<Capability> =
                r.steps.iter().flat_map(|s| capabilities(&s.step)).collect();
            if let RepeatCount::Until { condition, .. } = &r.count {
                caps.extend(condition.iter().flat_map(|e| e.capabilities()));
            }
            caps.sort();
            caps.dedup();
            caps
        },
        form: "{ do = \"repeat\", times = 3, steps = [{ do = \"app.wake\" }, { do = \"wait.time\", duration = \"10s\" }] } or with until = { running = { app = 5 } } and max = 20 instead of times",
        fields: { r: compound Loop },
    }
}
