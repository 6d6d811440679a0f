//! Reads scenario files (TOML, format in `fixtures/README.md`) into a [`Scenario`].
//!
//! Every problem is reported as `file:line:column: what is wrong; what was expected`: unknown
//! steps and fields list the accepted ones, missing fields show the expected form, wrong types
//! say what was found.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use emulator::board::Board;
use emulator::flash::CutMode;

use super::model::*;
use super::node::{self, Fields, Node, SpanError, Value};
use super::steps;
use super::units;

/// A problem with a scenario file, at a position when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    pub file: PathBuf,
    /// 1-based line and column.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ScenarioError {}

/// Reads and parses one scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: path.to_path_buf(),
        at: None,
        message: format!("cannot read the file: {e}"),
    })?;
    parse(&text, path)
}

/// Parses scenario text; `file` names it in errors and becomes [`Scenario::file`]. The error
/// is the first problem found; [`parse_all`] reports every one.
pub fn parse(text: &str, file: &Path) -> Result<Scenario, ScenarioError> {
    read(text, file, false).map_err(|mut errors| errors.swap_remove(0))
}

/// Reads and parses one scenario file, reporting every problem found (never an empty list).
pub fn load_all(path: &Path) -> Result<Scenario, Vec<ScenarioError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ScenarioError {
            file: path.to_path_buf(),
            at: None,
            message: format!("cannot read the file: {e}"),
        }]
    })?;
    parse_all(&text, path)
}

/// Like [`parse`], with every problem: each top-level key, each step and each expectation
/// table is read on its own, so one mistake does not hide the next (within one step, the
/// first problem of that step). Errors come in file order; never an empty list.
pub fn parse_all(text: &str, file: &Path) -> Result<Scenario, Vec<ScenarioError>> {
    read(text, file, true)
}

/// Parses, with the problems in the order found, or (`in_file_order`) sorted by position.
fn read(text: &str, file: &Path, in_file_order: bool) -> Result<Scenario, Vec<ScenarioError>> {
    let err = |e: SpanError| ScenarioError {
        file: file.to_path_buf(),
        at: Some(node::line_col(text, e.span.start)),
        message: e.message,
    };
    let doc = node::parse_document(text).map_err(|e| vec![err(e)])?;
    let mut scenario = read_scenario(&doc, text, file).map_err(|mut errors| {
        if in_file_order {
            // Stable: problems at the same place keep the order they were found in.
            errors.sort_by_key(|e| e.span.start);
        }
        errors.into_iter().map(err).collect::<Vec<_>>()
    })?;
    // Step positions are known only with the text.
    for step in &mut scenario.steps {
        let (line, column) = node::line_col(text, step.line);
        step.line = line;
        step.column = column;
        if let Step::Repeat(r) = &mut step.step {
            for inner in &mut r.steps {
                let (line, column) = node::line_col(text, inner.line);
                inner.line = line;
                inner.column = column;
            }
        }
    }
    Ok(scenario)
}

/// Collects problems so reading can go on after one.
#[derive(Default)]
struct Problems(Vec<SpanError>);

impl Problems {
    fn take<T>(&mut self, result: Result<T, SpanError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }
}

pub use super::steps::STEPS;

/// Every step kind, in the order error messages list them (the names of [`STEPS`]).
pub const STEP_KINDS: [&str; STEPS.len()] = {
    let mut out = [""; STEPS.len()];
    let mut i = 0;
    while i < STEPS.len() {
        out[i] = STEPS[i].0;
        i += 1;
    }
    out
};

fn read_scenario(doc: &Node, text: &str, file: &Path) -> Result<Scenario, Vec<SpanError>> {
    let mut p = Problems::default();
    let Some(mut top) = p.take(Fields::new(doc, "the scenario")) else {
        return Err(p.0);
    };
    let name = p.take(top.optional("name", node::as_string)).flatten();
    let name = name.unwrap_or_else(|| {
        file.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let description = p
        .take(top.optional("description", node::as_string))
        .flatten();
    let seed = p.take(top.optional("seed", node::as_u64)).flatten();
    let board = p.take(top.required("board", "board = \"boron\"", read_board));
    let firmware = p.take(top.required(
        "firmware",
        "a [firmware] table: device_os = \"6.2.0\", app = 3",
        read_initial_firmware,
    ));
    let app = p.take(top.optional("app", read_app)).flatten();
    let cloud = p.take(top.optional("cloud", read_cloud)).flatten();
    let steps = match top.get("step") {
        Some(n) => match read_steps(n) {
            Ok(steps) => steps,
            Err(errors) => {
                p.0.extend(errors);
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let declared: Vec<String> = cloud.as_ref().map_or_else(
        || vec!["dut".to_string()],
        |c| c.devices.iter().map(|d| d.name.clone()).collect(),
    );
    for step in &steps {
        let inner = match &step.step {
            Step::Repeat(r) => r
                .steps
                .iter()
                .map(|i| (format!("{}.{}", step.index, i.index), i))
                .collect(),
            _ => Vec::new(),
        };
        for (label, s) in std::iter::once((step.index.to_string(), step)).chain(inner) {
            if let Some(device) = &s.device {
                if !declared.contains(device) {
                    p.0.push(SpanError::new(
                        s.line..s.line + 1,
                        format!(
                            "step {label} names device `{device}`, which no [[cloud.device]] declares; declared: {}",
                            declared.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    let expect = match top.get("expect") {
        Some(n) => p
            .take(read_expectations(n, "the final [expect] table"))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let report = match top.get("report") {
        Some(n) => p.take(read_report(n, text)).unwrap_or_default(),
        None => Vec::new(),
    };
    p.0.extend(top.finish_all());
    let (Some(board), Some(firmware), true) = (board, firmware, p.0.is_empty()) else {
        return Err(p.0);
    };
    Ok(Scenario {
        file: file.to_path_buf(),
        name,
        description,
        seed,
        setup: Setup {
            board,
            firmware,
            app: app.unwrap_or_default(),
            cloud: cloud.unwrap_or_default(),
        },
        steps,
        expect,
        report,
    })
}

fn read_board(n: &Node) -> Result<String, SpanError> {
    let name = node::as_str(n)?;
    if Board::builtin_names().contains(&name) {
        Ok(name.to_string())
    } else {
        Err(SpanError::new(
            n.span.clone(),
            format!(
                "unknown board \"{name}\"; expected one of: {}",
                Board::builtin_names().join(", ")
            ),
        ))
    }
}

fn read_device_os(n: &Node) -> Result<DeviceOsVersion, SpanError> {
    let bad = || {
        SpanError::new(
            n.span.clone(),
            "expected a Device OS version like \"6.2.0\" (or its module version, 6200)",
        )
    };
    match &n.value {
        Value::String(s) => DeviceOsVersion::parse(s).ok_or_else(bad),
        Value::Integer(_) => node::as_u16(n).map(DeviceOsVersion),
        _ => Err(bad()),
    }
}

pub(super) fn read_duration(n: &Node) -> Result<Duration, SpanError> {
    let bad = || {
        SpanError::new(
            n.span.clone(),
            format!(
                "expected a duration like \"30s\", \"5m\", \"1m30s\" or \"250ms\", found {}",
                match &n.value {
                    Value::String(s) => format!("\"{s}\""),
                    other => other.kind().to_string(),
                }
            ),
        )
    };
    match &n.value {
        Value::String(s) => parse_duration(s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn read_initial_firmware(n: &Node) -> Result<InitialFirmware, SpanError> {
    let mut f = Fields::new(n, "[firmware]")?;
    let device_os = f.required("device_os", "device_os = \"6.2.0\"", read_device_os)?;
    let app = f.required("app", "app = 3 (the product version)", node::as_u16)?;
    let d = InitialFirmware::release(device_os);
    let app_module = f
        .optional("app_module", node::as_u16)?
        .unwrap_or(d.app_module);
    let bootloader = f
        .optional("bootloader", node::as_u16)?
        .unwrap_or(d.bootloader);
    let radio_stack = f
        .optional("radio_stack", node::as_u16)?
        .unwrap_or(d.radio_stack);
    let app_size = f.optional("app_size", read_size)?;
    f.finish()?;
    Ok(InitialFirmware {
        device_os,
        app,
        app_module,
        bootloader,
        radio_stack,
        app_size,
    })
}

fn read_app(n: &Node) -> Result<AppBehaviour, SpanError> {
    let mut f = Fields::new(n, "[app]")?;
    let d = AppBehaviour::default();
    let out = AppBehaviour {
        updates_enabled_at_boot: f
            .optional("updates_enabled", node::as_bool)?
            .unwrap_or(d.updates_enabled_at_boot),
        reset_enabled_at_boot: f
            .optional("resets_enabled", node::as_bool)?
            .unwrap_or(d.reset_enabled_at_boot),
        system_thread: f
            .optional("system_thread", node::as_bool)?
            .unwrap_or(d.system_thread),
        disable_updates_in: f
            .optional("disable_updates_in", |n| node::as_word(n, &APP_STAGE_WORDS))?
            .unwrap_or(d.disable_updates_in),
        mode: {
            // `system_mode` is another spelling of `mode`.
            let mode = f.optional("mode", |n| node::as_word(n, &SYSTEM_MODE_WORDS))?;
            let system_mode =
                f.optional("system_mode", |n| node::as_word(n, &SYSTEM_MODE_WORDS))?;
            if mode.is_some() && system_mode.is_some() {
                return Err(SpanError::new(
                    f.key_span("system_mode").unwrap_or_else(|| f.span()),
                    "[app]: `mode` and `system_mode` are the same key; give one".to_string(),
                ));
            }
            mode.or(system_mode).unwrap_or(d.mode)
        },
        on_asset_ota: f
            .optional("on_asset_ota", |n| node::as_word(n, &ASSET_OTA_WORDS))?
            .unwrap_or(d.on_asset_ota),
        ..d
    };
    f.finish()?;
    Ok(out)
}

fn fleet_not_yet(key_span: std::ops::Range<usize>, what: &str) -> SpanError {
    SpanError::new(
        key_span,
        format!("{what} are not supported yet (they come with the fleet issue)"),
    )
}

fn read_cloud(n: &Node) -> Result<CloudSetup, SpanError> {
    let mut f = Fields::new(n, "[cloud]")?;
    for (key, what) in [
        (
            "releases",
            "[[cloud.releases]] product releases (use cloud.upload and cloud.release steps)",
        ),
        ("groups", "[[cloud.groups]] device groups"),
    ] {
        if let Some(span) = f.key_span(key) {
            return Err(fleet_not_yet(span, what));
        }
    }
    let devices = match f.get("device") {
        None => vec![CloudDevice::default()],
        Some(list) => {
            let items = node::as_array(list)?;
            if items.len() > MAX_SCENARIO_DEVICES {
                return Err(SpanError::new(
                    items[MAX_SCENARIO_DEVICES].span.clone(),
                    format!("at most {MAX_SCENARIO_DEVICES} [[cloud.device]] in a scenario"),
                ));
            }
            let mut devices: Vec<CloudDevice> = Vec::new();
            for item in items {
                let d = read_cloud_device(item)?;
                if devices.iter().any(|o| o.name == d.name) {
                    return Err(SpanError::new(
                        item.span.clone(),
                        format!(
                            "two [[cloud.device]] are named `{}`: give each its own name",
                            d.name
                        ),
                    ));
                }
                devices.push(d);
            }
            devices
        }
    };
    let interrupted_transfer = f
        .optional("interrupted_transfer", |n| {
            node::as_word(n, &INTERRUPTED_WORDS)
        })?
        .unwrap_or_default();
    let product = f.optional("product", read_product_setup)?;
    let device_os = f
        .optional("device_os", |n| {
            node::as_array(n)?
                .iter()
                .map(read_device_os)
                .collect::<Result<Vec<_>, _>>()
        })?
        .unwrap_or_default();
    f.finish()?;
    Ok(CloudSetup {
        devices,
        interrupted_transfer,
        product,
        device_os,
    })
}

pub(super) fn read_groups(n: &Node) -> Result<Vec<String>, SpanError> {
    node::as_array(n)?
        .iter()
        .map(|g| {
            let name = node::as_string(g)?;
            crate::cloud::fleet::valid_group(&name)
                .map_err(|e| SpanError::new(g.span.clone(), e.to_string()))?;
            Ok(name)
        })
        .collect()
}

fn read_product_setup(n: &Node) -> Result<ProductSetup, SpanError> {
    let mut f = Fields::new(n, "[cloud.product]")?;
    let id = f.optional("id", node::as_u32)?.unwrap_or(1000);
    let groups = f.optional("groups", read_groups)?.unwrap_or_default();
    let development = f.optional("development", node::as_bool)?.unwrap_or(false);
    f.finish()?;
    Ok(ProductSetup {
        id,
        groups,
        development,
    })
}

fn read_cloud_device(n: &Node) -> Result<CloudDevice, SpanError> {
    let mut f = Fields::new(n, "[[cloud.device]]")?;
    let d = CloudDevice::default();
    let id = f.optional("id", |n| {
        let s = node::as_str(n)?;
        if s.len() == 24
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(s.to_string())
        } else {
            Err(SpanError::new(
                n.span.clone(),
                "expected a device id: 24 lowercase hex characters",
            ))
        }
    })?;
    let out = CloudDevice {
        name: f.optional("name", node::as_string)?.unwrap_or(d.name),
        id,
        updates_forced: f
            .optional("updates_forced", node::as_bool)?
            .unwrap_or(false),
        app: f.optional("app", node::as_u16)?,
        updates_enabled: f.optional("updates_enabled", node::as_bool)?,
        groups: f.optional("groups", read_groups)?,
        development: f.optional("development", node::as_bool)?,
    };
    f.finish()?;
    Ok(out)
}

fn read_report(n: &Node, text: &str) -> Result<Vec<(String, String)>, SpanError> {
    match &n.value {
        Value::Table(entries) => Ok(entries
            .iter()
            .map(|(k, v)| {
                (
                    k.name.clone(),
                    text.get(v.span.clone()).unwrap_or_default().to_string(),
                )
            })
            .collect()),
        other => Err(SpanError::new(
            n.span.clone(),
            format!("[report] must be a table, found {}", other.kind()),
        )),
    }
}

fn read_steps(n: &Node) -> Result<Vec<StepAt>, Vec<SpanError>> {
    let items = match &n.value {
        Value::Array(items) => items,
        other => {
            return Err(vec![SpanError::new(
                n.span.clone(),
                format!(
                    "`step` must be an array of tables ([[step]]), found {}",
                    other.kind()
                ),
            )])
        }
    };
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut sweep_seen = false;
    for (i, item) in items.iter().enumerate() {
        let index = i + 1;
        let device = match &item.value {
            Value::Table(entries) => match entries
                .iter()
                .find(|(k, _)| k.name == "device")
                .map(|(_, v)| node::as_string(v))
                .transpose()
            {
                Ok(d) => d,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            },
            _ => None,
        };
        let step = match read_step(item, &index.to_string()) {
            Ok(step) => step,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        if let Step::Sweep(_) = step {
            if sweep_seen {
                problems.push(SpanError::new(
                    item.span.clone(),
                    format!("step {index}: only one sweep step per scenario"),
                ));
                continue;
            }
            sweep_seen = true;
        }
        out.push(StepAt {
            index,
            // Byte offset for now; `parse` turns it into line and column.
            line: item.span.start,
            column: 0,
            step,
            device,
        });
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn step_form(kind: &str) -> &'static str {
    STEPS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("a step table with `do` and the step's fields", |(_, f)| f)
}

pub(super) fn read_step(n: &Node, index: &str) -> Result<Step, SpanError> {
    let mut f = Fields::new(n, format!("step {index}"))?;
    let kind_node = f.required(
        "do",
        "the step kind, e.g. do = \"power.cut\"",
        Ok::<&Node, SpanError>,
    )?;
    let kind = node::as_str(kind_node)?;
    if !STEP_KINDS.contains(&kind) {
        return Err(SpanError::new(
            kind_node.span.clone(),
            format!(
                "unknown step `{kind}`; expected one of: {}",
                STEP_KINDS.join(", ")
            ),
        ));
    }
    let mut f = Fields::new(n, format!("step {index} ({kind})"))?;
    f.get("do");
    f.get("device"); // read by `read_steps`
    let cx = steps::StepContext {
        node: n,
        index,
        form: step_form(kind),
    };
    let Some(step) = steps::read(kind, &mut f, &cx)? else {
        // Listed in STEP_KINDS, so declared in `steps.rs`.
        return Err(SpanError::new(
            kind_node.span.clone(),
            format!("step `{kind}` has no reader"),
        ));
    };
    f.finish()?;
    Ok(step)
}

/// `do = "repeat"`: `times = N`, or `until = { expectations }` with `max = N`, and `steps`.
pub(super) fn read_repeat(f: &mut Fields, index: &str, form: &str) -> Result<Repeat, SpanError> {
    let bound = |n: &Node| node::as_int(n, 1, i64::from(MAX_REPEAT)).map(|v| v as u32);
    let times = f.optional("times", bound)?;
    let until = f.optional("until", |n| read_expectations(n, "until"))?;
    let max = f.optional("max", bound)?;
    let count = match (times, until, max) {
        (Some(n), None, None) => RepeatCount::Times(n),
        (None, Some(condition), Some(max)) => RepeatCount::Until { condition, max },
        (None, Some(_), None) => {
            return Err(SpanError::new(
                f.key_span("until").unwrap_or_else(|| f.span()),
                format!("step {index} (repeat): `until` needs `max` (at most {MAX_REPEAT} iterations): a loop is always bounded"),
            ))
        }
        _ => {
            return Err(SpanError::new(
                f.span(),
                format!("step {index} (repeat): give either times = N, or until = {{ ... }} with max = N, e.g. {form}"),
            ))
        }
    };
    let list = f.required("steps", form, node::as_array)?;
    if list.is_empty() {
        return Err(SpanError::new(
            f.key_span("steps").unwrap_or_else(|| f.span()),
            format!("step {index} (repeat): `steps` is empty"),
        ));
    }
    let mut steps = Vec::with_capacity(list.len());
    for (j, item) in list.iter().enumerate() {
        let label = format!("{index}.{}", j + 1);
        let step = read_step(item, &label)?;
        if matches!(step, Step::Sweep(_) | Step::Repeat(_)) {
            return Err(SpanError::new(
                item.span.clone(),
                format!("step {label}: a {} cannot be inside a repeat", step.kind()),
            ));
        }
        let device = match &item.value {
            Value::Table(entries) => entries
                .iter()
                .find(|(k, _)| k.name == "device")
                .map(|(_, v)| node::as_string(v))
                .transpose()?,
            _ => None,
        };
        steps.push(StepAt {
            index: j + 1,
            // Byte offset for now; `parse` turns it into line and column.
            line: item.span.start,
            column: 0,
            step,
            device,
        });
    }
    Ok(Repeat { count, steps })
}

pub(super) fn read_modes(n: &Node) -> Result<Vec<CutMode>, SpanError> {
    let items = node::as_array(n)?;
    if items.is_empty() {
        return Err(SpanError::new(
            n.span.clone(),
            "expected at least one of \"before\", \"torn\", \"after\"",
        ));
    }
    let mut out = Vec::new();
    for item in items {
        let m = node::as_word(item, &CUT_MODE_WORDS)?;
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

pub(super) fn read_firmware_spec(f: &mut Fields, form: &str) -> Result<FirmwareSpec, SpanError> {
    let spec = FirmwareSpec {
        app: f.optional("app", node::as_u16)?,
        device_os: f.optional("device_os", read_device_os)?,
        bootloader: f.optional("bootloader", node::as_u16)?,
        radio_stack: f.optional("radio_stack", node::as_u16)?,
        built_against: f.optional("built_against", read_device_os)?,
        compressed: f.optional("compressed", node::as_bool)?.unwrap_or(false),
        combined: f.optional("combined", node::as_bool)?.unwrap_or(false),
        platform: f.optional("platform", read_board)?,
        corrupt: f.optional("corrupt", |n| node::as_word(n, &Corruption::WORDS))?,
        size: f.optional("size", read_size)?,
        assets: f.optional("assets", read_assets)?.unwrap_or_default(),
    };
    if !spec.assets.is_empty()
        && (spec.app.is_none() || spec.compressed || spec.combined || modules_named(&spec) > 1)
    {
        return Err(SpanError::new(
            f.key_span("assets").unwrap_or_else(|| f.span()),
            format!(
                "{}: assets make an asset bundle of one app: they need app = N alone, not compressed or combined",
                f.what()
            ),
        ));
    }
    let modules = [
        spec.app.is_some(),
        spec.device_os.is_some(),
        spec.bootloader.is_some(),
        spec.radio_stack.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if modules == 0 {
        return Err(SpanError::new(
            f.span(),
            format!("{}: names no module; expected {form}", f.what()),
        ));
    }
    if spec.built_against.is_some() && spec.app.is_none() {
        return Err(SpanError::new(
            f.key_span("built_against").unwrap_or_else(|| f.span()),
            format!(
                "{}: built_against is the Device OS an app was compiled against; it needs app = N (e.g. app = 4, built_against = \"6.2.0\")",
                f.what()
            ),
        ));
    }
    if spec.combined && modules < 2 {
        return Err(SpanError::new(
            f.key_span("combined").unwrap_or_else(|| f.span()),
            format!(
                "{}: a combined file needs two modules (e.g. device_os and app)",
                f.what()
            ),
        ));
    }
    if modules > 1 && !spec.combined {
        return Err(SpanError::new(
            f.span(),
            format!(
                "{}: several modules in one flash need combined = true (or one cloud.flash per module)",
                f.what()
            ),
        ));
    }
    Ok(spec)
}

fn modules_named(spec: &FirmwareSpec) -> usize {
    [
        spec.app.is_some(),
        spec.device_os.is_some(),
        spec.bootloader.is_some(),
        spec.radio_stack.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count()
}

/// `assets = [{ name = "config.json", size = "20KiB", content = "text" }, ...]`.
fn read_assets(n: &Node) -> Result<Vec<AssetSpec>, SpanError> {
    let mut out: Vec<AssetSpec> = Vec::new();
    for item in node::as_array(n)? {
        let mut f = Fields::new(item, "an asset")?;
        let name = f.required("name", "name = \"config.json\"", node::as_string)?;
        let size = f.required("size", "size = \"20KiB\"", read_size)?;
        let content = f
            .optional("content", |n| node::as_word(n, &AssetContent::WORDS))?
            .unwrap_or(AssetContent::Text);
        let mismatch = f.optional("mismatch", node::as_bool)?.unwrap_or(false);
        let span = f.span();
        f.finish()?;
        if name.is_empty() || name.contains('/') || out.iter().any(|a| a.name == name) {
            return Err(SpanError::new(
                span,
                format!("asset name {name:?}: names must be distinct file names (no '/')"),
            ));
        }
        out.push(AssetSpec {
            name,
            size,
            content,
            mismatch,
        });
    }
    Ok(out)
}

/// Bytes per second: an integer, or a rate as people write it (`"512 B/s"`, `"4 KiB/s"`,
/// `"250 kbit/s"`; [`units`]), the spelling the trace prints.
pub(super) fn read_bandwidth(n: &Node) -> Result<u64, SpanError> {
    let bad = || {
        SpanError::new(
            n.span.clone(),
            "expected a bandwidth in bytes per second (2048) or like \"512 B/s\", \"4 KiB/s\" or \"250 kbit/s\"",
        )
    };
    match &n.value {
        Value::Integer(_) => node::as_int(n, 1, u32::MAX as i64).map(|i| i as u64),
        Value::String(s) => units::parse_rate(s).filter(|v| *v > 0).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// A size in bytes: an integer, or a string like `"64KiB"`, `"1 MiB"`, `"512 B"` ([`units`]).
pub(super) fn read_size(n: &Node) -> Result<u32, SpanError> {
    let bad = || {
        SpanError::new(
            n.span.clone(),
            "expected a size in bytes (65536) or like \"64KiB\" or \"1 MiB\"",
        )
    };
    match &n.value {
        Value::Integer(_) => node::as_int(n, 1, u32::MAX as i64).map(|i| i as u32),
        Value::String(s) => units::parse_size(s)
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

pub(super) fn read_power_cut(f: &mut Fields, form: &str) -> Result<PowerCut, SpanError> {
    let flash_op = f.optional("flash_op", node::as_u64)?;
    let chunk = f.optional("chunk", node::as_u32)?;
    let phase = f.optional("phase", |n| node::as_word(n, &Phase::WORDS))?;
    let op = f.optional("op", node::as_u64)?;
    let mode = f.optional("mode", |n| node::as_word(n, &CUT_MODE_WORDS))?;
    let off_for = f.optional("off_for", read_duration)?;
    let given = [flash_op.is_some(), chunk.is_some(), phase.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if given > 1 {
        return Err(SpanError::new(
            f.span(),
            format!(
                "{}: give at most one of flash_op, chunk, phase; expected {form}",
                f.what()
            ),
        ));
    }
    if op.is_some() && phase.is_none() {
        return Err(SpanError::new(
            f.key_span("op").unwrap_or_else(|| f.span()),
            format!("{}: `op` counts operations of a phase; add phase = \"download\"|\"commit\"|\"apply\"|\"first_boot\"", f.what()),
        ));
    }
    let at = match (flash_op, chunk, phase) {
        (Some(n), _, _) => CutPoint::FlashOp(n),
        (_, Some(k), _) => CutPoint::Chunk(k),
        (_, _, Some(phase)) => CutPoint::Phase {
            phase,
            op: op.unwrap_or(0),
        },
        _ => CutPoint::Now,
    };
    if at == CutPoint::Now && mode.is_some() {
        return Err(SpanError::new(
            f.key_span("mode").unwrap_or_else(|| f.span()),
            format!("{}: `mode` applies to a cut at a flash operation; a cut now has none (add flash_op, chunk or phase)", f.what()),
        ));
    }
    Ok(PowerCut {
        at,
        mode: mode.unwrap_or(CutMode::Before),
        off_for,
    })
}

fn read_event_pattern(n: &Node) -> Result<EventPattern, SpanError> {
    match &n.value {
        Value::String(name) => Ok(EventPattern {
            name: name.clone(),
            data: None,
        }),
        Value::Table(_) => {
            let mut f = Fields::new(n, "an event")?;
            let name = f.required(
                "name",
                "{ name = \"spark/flash/status\", data = \"success\" }",
                node::as_string,
            )?;
            let data = f.optional("data", node::as_string)?;
            f.finish()?;
            Ok(EventPattern { name, data })
        }
        other => Err(SpanError::new(
            n.span.clone(),
            format!(
                "expected an event name or {{ name = \"...\", data = \"...\" }}, found {}",
                other.kind()
            ),
        )),
    }
}

fn read_events(n: &Node) -> Result<Vec<EventPattern>, SpanError> {
    let items = node::as_array(n)?;
    if items.is_empty() {
        return Err(SpanError::new(
            n.span.clone(),
            "expected at least one event",
        ));
    }
    items.iter().map(read_event_pattern).collect()
}

/// `event_counts = [{ name = "spark/flash/status", data = "started", count = 1 }]`.
fn read_event_counts(n: &Node) -> Result<Vec<(EventPattern, u32)>, SpanError> {
    let items = node::as_array(n)?;
    if items.is_empty() {
        return Err(SpanError::new(
            n.span.clone(),
            "expected at least one { name = \"...\", count = N }",
        ));
    }
    let form = "{ name = \"spark/flash/status\", data = \"started\", count = 1 }";
    items
        .iter()
        .map(|item| {
            let mut f = Fields::new(item, "an event count")?;
            let name = f.required("name", form, node::as_string)?;
            let data = f.optional("data", node::as_string)?;
            let count = f.required("count", form, |n| {
                node::as_int(n, 0, i64::from(u32::MAX)).map(|v| v as u32)
            })?;
            f.finish()?;
            Ok((EventPattern { name, data }, count))
        })
        .collect()
}

fn read_expectations(n: &Node, what: &str) -> Result<Vec<Expectation>, SpanError> {
    let mut f = Fields::new(n, what)?;
    let list = read_expectation_fields(&mut f)?;
    f.finish()?;
    Ok(list)
}

/// `running = { device_os = "6.2.0", app = 4, bootloader = 3100 }` (at least one).
pub(super) fn read_running(n: &Node) -> Result<RunningExpect, SpanError> {
    let mut t = Fields::new(n, "running")?;
    let r = RunningExpect {
        device_os: t.optional("device_os", read_device_os)?,
        app: t.optional("app", node::as_u16)?,
        bootloader: t.optional("bootloader", node::as_u16)?,
    };
    if r == RunningExpect::default() {
        return Err(SpanError::new(
            n.span.clone(),
            "running: expected at least one of device_os, app, bootloader",
        ));
    }
    t.finish()?;
    Ok(r)
}

/// Reads every expectation key present in `f` (in the order listed here).
pub(super) fn read_expectation_fields(f: &mut Fields) -> Result<Vec<Expectation>, SpanError> {
    let mut out = Vec::new();
    if let Some(n) = f.get("running") {
        out.push(Expectation::Running(read_running(n)?));
    }
    if let Some(n) = f.get("safe_mode") {
        out.push(Expectation::SafeMode(node::as_bool(n)?));
    }
    if let Some(n) = f.get("online") {
        out.push(Expectation::Online(node::as_bool(n)?));
    }
    if let Some(n) = f.get("last_reset") {
        out.push(Expectation::LastReset(node::as_string(n)?));
    }
    if let Some(n) = f.get("events") {
        out.push(Expectation::Events(read_events(n)?));
    }
    if let Some(n) = f.get("session") {
        out.push(Expectation::SessionResumed(node::as_word(
            n,
            &[("resumed", true), ("handshake", false)],
        )?));
    }
    if let Some(n) = f.get("transfers_since_boot") {
        out.push(Expectation::TransfersSinceBoot(
            node::as_int(n, 0, i64::from(u32::MAX)).map(|v| v as u32)?,
        ));
    }
    if let Some(n) = f.get("event_counts") {
        out.push(Expectation::EventCounts(read_event_counts(n)?));
    }
    if let Some(n) = f.get("events_absent") {
        out.push(Expectation::EventsAbsent(read_events(n)?));
    }
    if let Some(n) = f.get("flags") {
        let mut t = Fields::new(n, "flags")?;
        let x = FlagsExpect {
            updates_enabled: t.optional("updates_enabled", node::as_bool)?,
            updates_pending: t.optional("updates_pending", node::as_bool)?,
            updates_forced: t.optional("updates_forced", node::as_bool)?,
            reset_enabled: t.optional("reset_enabled", node::as_bool)?,
            reset_pending: t.optional("reset_pending", node::as_bool)?,
        };
        if x == FlagsExpect::default() {
            return Err(SpanError::new(
                n.span.clone(),
                "flags: expected at least one of updates_enabled, updates_pending, updates_forced, reset_enabled, reset_pending",
            ));
        }
        t.finish()?;
        out.push(Expectation::Flags(x));
    }
    if let Some(n) = f.get("ota") {
        let mut t = Fields::new(n, "ota")?;
        let x = OtaExpect {
            state: t.optional("state", |n| node::as_word(n, &OtaState::WORDS))?,
            min_percent: t.optional("min_percent", |n| node::as_int(n, 0, 100).map(|i| i as u8))?,
            resumed: t.optional("resumed", node::as_bool)?,
            error: t.optional("error", |n| {
                node::as_int(n, i32::MIN as i64, i32::MAX as i64).map(|i| i as i32)
            })?,
        };
        if x == OtaExpect::default() {
            return Err(SpanError::new(
                n.span.clone(),
                "ota: expected at least one of state, min_percent, resumed, error",
            ));
        }
        t.finish()?;
        out.push(Expectation::Ota(x));
    }
    if let Some(n) = f.get("nothing_lost") {
        if !node::as_bool(n)? {
            return Err(SpanError::new(
                n.span.clone(),
                "nothing_lost = false checks nothing; remove it",
            ));
        }
        out.push(Expectation::NothingLost);
    }
    Ok(out)
}
