//! Racks of boards: the inventory file (`boards/rack.example.toml`, `boards/rack.emulated.toml`),
//! starting a rack (its cloud, its boards' ports, probes and power switches; emulated boards
//! behind pseudo-terminals), health checks, and running scenarios across the boards: one
//! scenario per board at a time, matched by platform (and tags), an infrastructure failure
//! retried on another board, a board quarantined after repeated infrastructure failures.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use emulator::firmware::{ModuleSizes, Versions};
use p256::ecdsa::SigningKey;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::emulated::{EmulatedBoard, EmulatedBoardSpec, EmulatedPower};
use super::port::{BoardPort, PortLocator};
use super::power::{CommandPowerSwitch, PowerSwitch};
use super::probe::DebugProbe;
use super::protocol::{Command, ReplyBody};
use super::target::{BoardConfig, BoardTarget, Shared};
use crate::cloud::{Cloud, CloudConfig};
use crate::keys::KeyDir;
use crate::net::udp::UdpNode;
use crate::scenario::model::{DeviceOsVersion, Phase, Scenario};
use crate::scenario::runner::{self, ScenarioResult};
use crate::scenario::target::{Capability, FirmwareIntegrity, Observation, Target, TargetError};
use crate::scenario::{Action, Setup, TraceEntry};
use crate::testbed::CloudNode;

/// Infrastructure failures on one board before it is quarantined.
pub const QUARANTINE_AFTER: u32 = 2;

/// A problem with a rack file or with starting a rack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RackError(pub String);

impl std::fmt::Display for RackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RackError {}

/// One `[[board]]` of a rack file.
#[derive(Debug, Clone, PartialEq)]
pub struct BoardEntry {
    pub name: String,
    /// Built-in board name.
    pub platform: String,
    pub device_id: [u8; 12],
    /// USB serial number of the board (its port is found by it, vendor 0x2B04).
    pub usb_serial: Option<String>,
    /// A fixed port path instead.
    pub port: Option<String>,
    /// The debug probe's serial number and the chip to attach to.
    pub probe_serial: Option<String>,
    pub chip: Option<String>,
    /// Power commands (program and arguments).
    pub power_off: Vec<String>,
    pub power_on: Vec<String>,
    pub power_timeout: Duration,
    pub tags: Vec<String>,
    /// An emulator behind a pseudo-terminal, with probe and power doubles.
    pub emulated: bool,
    /// The Device OS the health check expects.
    pub device_os: Option<DeviceOsVersion>,
    /// Capabilities taken away.
    pub without: Vec<Capability>,
}

/// A rack file.
#[derive(Debug, Clone, PartialEq)]
pub struct RackFile {
    pub file: PathBuf,
    pub name: String,
    /// Where the cloud listens (real boards: UDP port 5684, reference particle-cloud-api.md
    /// 6.4).
    pub listen: SocketAddr,
    /// Key folder (`hil keys`): server key and the boards' public keys.
    pub keys: Option<PathBuf>,
    /// Seed for emulated boards' keys and the cloud.
    pub seed: u64,
    pub boards: Vec<BoardEntry>,
}

fn strings(v: Option<&toml::Value>, what: &str) -> Result<Vec<String>, String> {
    match v {
        None => Ok(Vec::new()),
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("`{what}` must be a list of strings"))
            })
            .collect(),
        Some(_) => Err(format!("`{what}` must be a list of strings")),
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let (num, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        _ => None,
    }
}

impl RackFile {
    pub fn load(path: &Path) -> Result<RackFile, RackError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RackError(format!("{}: cannot read the file: {e}", path.display())))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<RackFile, RackError> {
        let at = |what: String| RackError(format!("{}: {what}", path.display()));
        let doc: toml::Table = text.parse().map_err(|e| at(format!("{e}")))?;
        let name = doc
            .get("name")
            .and_then(|v| v.as_str())
            .unwrap_or("rack")
            .to_string();
        let cloud = doc.get("cloud").and_then(|v| v.as_table());
        let listen = match cloud.and_then(|c| c.get("listen")) {
            None => SocketAddr::from(([127, 0, 0, 1], 0)),
            Some(v) => v.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
                at("`cloud.listen` must be an address like \"0.0.0.0:5684\"".into())
            })?,
        };
        let keys = cloud
            .and_then(|c| c.get("keys"))
            .and_then(|v| v.as_str())
            .map(|k| path.parent().unwrap_or(Path::new(".")).join(k));
        let seed = doc
            .get("seed")
            .and_then(|v| v.as_integer())
            .map_or(1, |s| s as u64);
        let mut boards = Vec::new();
        let list = match doc.get("board") {
            None => return Err(at("no [[board]]".into())),
            Some(v) => v
                .as_array()
                .ok_or_else(|| at("`board` must be an array of tables ([[board]])".into()))?,
        };
        for (i, b) in list.iter().enumerate() {
            let b = b
                .as_table()
                .ok_or_else(|| at(format!("board {}: not a table", i + 1)))?;
            let bname = b
                .get("name")
                .and_then(|v| v.as_str())
                .ok_or_else(|| at(format!("board {}: `name` (a string) is required", i + 1)))?
                .to_string();
            let err = |what: String| at(format!("board {bname}: {what}"));
            let get_str = |key: &str| -> Result<Option<String>, RackError> {
                match b.get(key) {
                    None => Ok(None),
                    Some(v) => v
                        .as_str()
                        .map(|s| Some(s.to_string()))
                        .ok_or_else(|| err(format!("`{key}` must be a string"))),
                }
            };
            let platform =
                get_str("platform")?.ok_or_else(|| err("`platform` is required".into()))?;
            emulator::board::Board::builtin(&platform)
                .map_err(|_| err(format!("unknown platform {platform:?} (hil boards)")))?;
            let id_text =
                get_str("device_id")?.ok_or_else(|| err("`device_id` is required".into()))?;
            let device_id: [u8; 12] = hex::decode(&id_text)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| err(format!("`device_id` {id_text:?} is not 24 hex digits")))?;
            let emulated = match b.get("emulated") {
                None => false,
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| err("`emulated` must be true or false".into()))?,
            };
            let usb_serial = get_str("usb_serial")?;
            let port = get_str("port")?;
            if !emulated && usb_serial.is_none() && port.is_none() {
                return Err(err("`usb_serial` or `port` is required".into()));
            }
            let power_timeout = match get_str("power_timeout")? {
                None => Duration::from_secs(10),
                Some(t) => parse_duration(&t)
                    .ok_or_else(|| err(format!("`power_timeout` {t:?} is not like \"10s\"")))?,
            };
            let power_off = strings(b.get("power_off"), "power_off").map_err(err)?;
            let power_on = strings(b.get("power_on"), "power_on").map_err(err)?;
            if power_off.is_empty() != power_on.is_empty() {
                return Err(err("`power_off` and `power_on` go together".into()));
            }
            let device_os = match get_str("device_os")? {
                None => None,
                Some(v) => Some(
                    DeviceOsVersion::parse(&v)
                        .ok_or_else(|| err(format!("`device_os` {v:?} is not like \"6.2.0\"")))?,
                ),
            };
            let mut without = Vec::new();
            for c in strings(b.get("without"), "without").map_err(err)? {
                let cap = Capability::ALL
                    .into_iter()
                    .find(|k| k.as_str() == c)
                    .ok_or_else(|| err(format!("unknown capability {c:?}")))?;
                without.push(cap);
            }
            boards.push(BoardEntry {
                name: bname.clone(),
                platform,
                device_id,
                usb_serial,
                port,
                probe_serial: get_str("probe_serial")?,
                chip: get_str("chip")?,
                power_off,
                power_on,
                power_timeout,
                tags: strings(b.get("tags"), "tags").map_err(err)?,
                emulated,
                device_os,
                without,
            });
        }
        let mut names: Vec<&str> = boards.iter().map(|b| b.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(at(format!("two boards are named {:?}", w[0])));
        }
        Ok(RackFile {
            file: path.to_path_buf(),
            name,
            listen,
            keys,
            seed,
            boards,
        })
    }
}

/// A board of a started rack.
pub struct RackBoard {
    pub entry: BoardEntry,
    pub config: BoardConfig,
    pub probe: Option<Shared<Box<dyn DebugProbe>>>,
    pub power: Option<Shared<Box<dyn PowerSwitch>>>,
    /// The emulator standing in for the board, if it is emulated.
    pub emulated: Option<EmulatedBoard>,
}

/// A started rack: its cloud, on its own runtime, and its boards.
pub struct Rack {
    pub name: String,
    rt: tokio::runtime::Runtime,
    pub cloud: Arc<UdpNode<CloudNode>>,
    pub boards: Vec<RackBoard>,
}

/// The emulator target's user part size, so files built for a board are the emulator's.
pub const USER_PART: u32 = 24 * 1024;

impl Rack {
    pub fn start(file: &RackFile) -> Result<Rack, RackError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| RackError(format!("tokio runtime: {e}")))?;
        let mut rng = ChaCha8Rng::seed_from_u64(file.seed);
        let (server_key, mut device_keys) = match &file.keys {
            Some(dir) => {
                let dir = KeyDir::new(dir.clone());
                let key = dir
                    .server_key()
                    .map_err(|e| RackError(format!("keys: {e}")))?;
                let keys = dir
                    .device_keys()
                    .map_err(|e| RackError(format!("keys: {e}")))?;
                (key, keys)
            }
            None => (SigningKey::random(&mut rng), Vec::new()),
        };
        let mut emulated_keys = BTreeMap::new();
        for b in file.boards.iter().filter(|b| b.emulated) {
            let key = SigningKey::random(&mut rng);
            device_keys.push((b.device_id, *key.verifying_key()));
            emulated_keys.insert(b.name.clone(), key);
        }
        let mut cloud = Cloud::new(CloudConfig::new(server_key.clone()), file.seed);
        for (id, key) in &device_keys {
            cloud.register_device(*id, *key);
        }
        let cloud = rt
            .block_on(UdpNode::server(CloudNode::new(cloud), file.listen))
            .map_err(|e| RackError(format!("the cloud cannot listen on {}: {e}", file.listen)))?;
        let cloud = Arc::new(cloud);
        let sizes = ModuleSizes {
            user_part: USER_PART,
            ..ModuleSizes::default()
        };
        let mut boards = Vec::new();
        for (i, entry) in file.boards.iter().enumerate() {
            let mut board = RackBoard {
                config: BoardConfig {
                    name: entry.name.clone(),
                    platform: entry.platform.clone(),
                    device_id: entry.device_id,
                    port: match (&entry.port, &entry.usb_serial) {
                        (Some(p), _) => PortLocator::Path(p.clone()),
                        (None, Some(s)) => PortLocator::UsbSerial(s.clone()),
                        (None, None) => PortLocator::Path(String::new()),
                    },
                    sizes,
                    without: entry.without.clone(),
                },
                entry: entry.clone(),
                probe: None,
                power: None,
                emulated: None,
            };
            if entry.emulated {
                let local = cloud.local_addr();
                let server = if local.ip().is_unspecified() {
                    SocketAddr::from(([127, 0, 0, 1], local.port()))
                } else {
                    local
                };
                let spec = EmulatedBoardSpec {
                    board: entry.platform.clone(),
                    device_id: entry.device_id,
                    key: emulated_keys
                        .get(&entry.name)
                        .cloned()
                        .ok_or_else(|| RackError("emulated key missing".into()))?,
                    server,
                    server_key: *server_key.verifying_key(),
                    versions: Versions::BASELINE,
                    sizes,
                    seed: file.seed ^ ((i as u64 + 1) << 40),
                };
                let emu = rt
                    .block_on(EmulatedBoard::start(&spec))
                    .map_err(|e| RackError(format!("board {}: {e}", entry.name)))?;
                board.config.port = PortLocator::Path(emu.path().to_string());
                board.probe = Some(Arc::new(Mutex::new(
                    Box::new(emu.probe()) as Box<dyn DebugProbe>
                )));
                board.power = Some(Arc::new(Mutex::new(
                    Box::new(emu.power()) as Box<dyn PowerSwitch>
                )));
                board.emulated = Some(emu);
            } else {
                if !entry.power_off.is_empty() {
                    board.power = Some(Arc::new(Mutex::new(Box::new(CommandPowerSwitch {
                        off: entry.power_off.clone(),
                        on: entry.power_on.clone(),
                        timeout: entry.power_timeout,
                    })
                        as Box<dyn PowerSwitch>)));
                }
                board.probe = real_probe(entry)?;
            }
            boards.push(board);
        }
        Ok(Rack {
            name: file.name.clone(),
            rt,
            cloud,
            boards,
        })
    }

    /// Replaces board `name`'s power switch with one that fails (tests).
    pub fn break_power(&mut self, name: &str, why: &str) {
        for b in self.boards.iter_mut().filter(|b| b.entry.name == name) {
            if let Some(emu) = &b.emulated {
                let mut p: EmulatedPower = emu.power();
                p.fail = Some(why.to_string());
                b.power = Some(Arc::new(Mutex::new(Box::new(p) as Box<dyn PowerSwitch>)));
            }
        }
    }

    /// The board `name`'s emulator, if it is emulated.
    pub fn emulator(&self, name: &str) -> Option<&EmulatedBoard> {
        self.boards
            .iter()
            .find(|b| b.entry.name == name)
            .and_then(|b| b.emulated.as_ref())
    }

    /// A target for board `i`.
    pub fn target(&self, i: usize) -> Option<BoardTarget> {
        let b = self.boards.get(i)?;
        Some(BoardTarget::new(
            b.config.clone(),
            self.rt.handle().clone(),
            self.cloud.clone(),
            b.probe.clone(),
            b.power.clone(),
        ))
    }

    /// Checks board `i`: its serial port answers `hello` as the right device in protocol
    /// version 1, it runs the expected Device OS, its probe attaches. A summary, or why not.
    pub fn health(&self, i: usize) -> Result<String, String> {
        let b = self.boards.get(i).ok_or("no such board")?;
        let mut port = BoardPort::new(b.config.port.clone());
        let limit = Duration::from_secs(3);
        let (hello, status) = self.rt.block_on(async {
            port.reopen(limit).await.map_err(|e| e.to_string())?;
            let hello = port
                .request(Command::Hello, limit)
                .await
                .map_err(|e| e.to_string())?;
            let status = port
                .request(Command::Status, limit)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((hello, status))
        })?;
        match hello {
            ReplyBody::Hello {
                version, device_id, ..
            } => {
                if version != super::protocol::PROTOCOL_VERSION {
                    return Err(format!("speaks protocol version {version}"));
                }
                if !device_id.eq_ignore_ascii_case(&hex::encode(b.entry.device_id)) {
                    return Err(format!("answers as device {device_id}"));
                }
            }
            _ => return Err("`hello` answered without a hello".into()),
        }
        let ReplyBody::Status(s) = status else {
            return Err("`status` answered without a status".into());
        };
        let dos = DeviceOsVersion(s.system_version);
        if let Some(want) = b.entry.device_os {
            if want != dos {
                return Err(format!(
                    "runs Device OS {dos}, the rack file expects {want}"
                ));
            }
        }
        let mut summary = format!("serial ok, Device OS {dos}, app {}", s.app);
        if let Some(probe) = &b.probe {
            let chip = probe
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .attach()
                .map_err(|e| e.to_string())?;
            summary.push_str(&format!(", probe attached ({chip})"));
        }
        Ok(summary)
    }
}

#[cfg(feature = "probe-rs")]
fn real_probe(entry: &BoardEntry) -> Result<Option<Shared<Box<dyn DebugProbe>>>, RackError> {
    match (&entry.probe_serial, &entry.chip) {
        (Some(serial), Some(chip)) => Ok(Some(Arc::new(Mutex::new(Box::new(
            super::probe_rs::ProbeRsProbe::new(serial, chip),
        )
            as Box<dyn DebugProbe>)))),
        _ => Ok(None),
    }
}

#[cfg(not(feature = "probe-rs"))]
fn real_probe(entry: &BoardEntry) -> Result<Option<Shared<Box<dyn DebugProbe>>>, RackError> {
    // Without the feature a configured probe is not used: the board runs without
    // InstallFirmware, and the health check does not attach.
    let _ = entry;
    Ok(None)
}

/// Records the infrastructure errors (`TargetError::Unavailable`) of the target it wraps.
struct Watched {
    inner: BoardTarget,
    infra: Arc<Mutex<Option<String>>>,
}

impl Watched {
    fn note<T>(&self, r: Result<T, TargetError>) -> Result<T, TargetError> {
        if let Err(TargetError::Unavailable(why)) = &r {
            let mut slot = self.infra.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert_with(|| why.clone());
        }
        r
    }
}

impl Target for Watched {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> &std::collections::BTreeSet<Capability> {
        self.inner.capabilities()
    }
    fn setup(&mut self, setup: &Setup, seed: u64) -> Result<(), TargetError> {
        let r = self.inner.setup(setup, seed);
        self.note(r)
    }
    fn apply(&mut self, action: &Action) -> Result<(), TargetError> {
        let r = self.inner.apply(action);
        self.note(r)
    }
    fn now(&self) -> Duration {
        self.inner.now()
    }
    fn advance(&mut self, deadline: Duration) -> Result<(), TargetError> {
        let r = self.inner.advance(deadline);
        self.note(r)
    }
    fn drain_trace(&mut self) -> Vec<TraceEntry> {
        self.inner.drain_trace()
    }
    fn observe(&mut self) -> Result<Observation, TargetError> {
        let r = self.inner.observe();
        self.note(r)
    }
    fn inspect_firmware(&mut self) -> Result<FirmwareIntegrity, TargetError> {
        let r = self.inner.inspect_firmware();
        self.note(r)
    }
    fn phase_ops(&mut self, phase: Phase) -> Result<Option<u64>, TargetError> {
        let r = self.inner.phase_ops(phase);
        self.note(r)
    }
}

/// How a scenario ended on the rack.
#[derive(Debug, Clone)]
pub enum RackOutcome {
    /// It ran on `board` (passed, failed or skipped: see the result).
    Ran {
        board: String,
        result: ScenarioResult,
    },
    /// Every attempt failed for infrastructure reasons, or no healthy board could run it.
    Error { why: String },
}

/// One scenario's run on the rack.
#[derive(Debug, Clone)]
pub struct RackCase {
    pub file: PathBuf,
    pub name: String,
    pub outcome: RackOutcome,
    /// Infrastructure failures before the outcome: (board, why).
    pub attempts: Vec<(String, String)>,
    /// Wall time of the last attempt.
    pub wall: Duration,
}

/// A board's state at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardHealth {
    pub name: String,
    /// `Ok(summary)` or why it is out.
    pub health: Result<String, String>,
    pub infra_failures: u32,
    pub quarantined: bool,
}

/// What a rack run produced.
#[derive(Debug, Clone)]
pub struct RackReport {
    pub rack: String,
    pub cases: Vec<RackCase>,
    pub boards: Vec<BoardHealth>,
}

/// Options of a rack run.
#[derive(Debug, Clone, Default)]
pub struct RackRunOptions {
    /// Boards running at once (0: all).
    pub jobs: usize,
    /// Only boards with every one of these tags.
    pub tags: Vec<String>,
}

struct Job {
    scenario: Scenario,
    tried: Vec<String>,
    attempts: Vec<(String, String)>,
}

struct RunState {
    queue: VecDeque<Job>,
    in_flight: usize,
    running: usize,
    done: Vec<RackCase>,
}

impl Rack {
    /// Runs every scenario on a board of its platform: health checks first, then one scenario
    /// per board at a time, at most `jobs` at once.
    pub fn run(&self, scenarios: Vec<Scenario>, options: &RackRunOptions) -> RackReport {
        let mut boards: Vec<BoardHealth> = Vec::new();
        let mut usable = Vec::new();
        for (i, b) in self.boards.iter().enumerate() {
            let tagged = options.tags.iter().all(|t| b.entry.tags.contains(t));
            let health = if tagged {
                self.health(i)
            } else {
                Err("not selected (tags)".into())
            };
            if health.is_ok() {
                usable.push(i);
            }
            boards.push(BoardHealth {
                name: b.entry.name.clone(),
                quarantined: health.is_err() && tagged,
                health,
                infra_failures: 0,
            });
        }
        let jobs = if options.jobs == 0 {
            usize::MAX
        } else {
            options.jobs
        };
        let order: Vec<PathBuf> = scenarios.iter().map(|s| s.file.clone()).collect();
        let state = Mutex::new(RunState {
            queue: scenarios
                .into_iter()
                .map(|scenario| Job {
                    scenario,
                    tried: Vec::new(),
                    attempts: Vec::new(),
                })
                .collect(),
            in_flight: 0,
            running: 0,
            done: Vec::new(),
        });
        let healths = Mutex::new(boards);
        std::thread::scope(|scope| {
            for &i in &usable {
                let state = &state;
                let healths = &healths;
                scope.spawn(move || self.board_loop(i, state, healths, jobs));
            }
        });
        let mut state = state.into_inner().unwrap_or_else(|e| e.into_inner());
        // What no board could take.
        for job in std::mem::take(&mut state.queue) {
            let why = if job.attempts.is_empty() {
                format!(
                    "no healthy board of platform {} in the rack",
                    job.scenario.setup.board
                )
            } else {
                format!(
                    "infrastructure failure on every board tried ({})",
                    job.tried.join(", ")
                )
            };
            state.done.push(RackCase {
                file: job.scenario.file.clone(),
                name: job.scenario.name.clone(),
                outcome: RackOutcome::Error { why },
                attempts: job.attempts,
                wall: Duration::ZERO,
            });
        }
        let mut cases = state.done;
        cases.sort_by_key(|c| order.iter().position(|f| *f == c.file));
        RackReport {
            rack: self.name.clone(),
            cases,
            boards: healths.into_inner().unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn board_loop(
        &self,
        i: usize,
        state: &Mutex<RunState>,
        healths: &Mutex<Vec<BoardHealth>>,
        jobs: usize,
    ) {
        let board = &self.boards[i];
        let name = board.entry.name.clone();
        loop {
            let job = {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                let takeable = s.queue.iter().position(|j| {
                    j.scenario.setup.board == board.entry.platform && !j.tried.contains(&name)
                });
                match takeable {
                    Some(k) if s.running < jobs => {
                        s.running += 1;
                        s.in_flight += 1;
                        s.queue.remove(k)
                    }
                    Some(_) => None,
                    None if s.in_flight == 0 => return,
                    None => None,
                }
            };
            let Some(mut job) = job else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let infra = Arc::new(Mutex::new(None));
            let started = Instant::now();
            let result = {
                let infra = infra.clone();
                let mut factory = || -> Result<Box<dyn Target>, TargetError> {
                    let inner = self
                        .target(i)
                        .ok_or_else(|| TargetError::Unavailable("no such board".into()))?;
                    Ok(Box::new(Watched {
                        inner,
                        infra: infra.clone(),
                    }))
                };
                runner::run(&job.scenario, None, &mut factory)
            };
            let wall = started.elapsed();
            let infra = infra.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.running -= 1;
            s.in_flight -= 1;
            match infra {
                None => s.done.push(RackCase {
                    file: job.scenario.file.clone(),
                    name: job.scenario.name.clone(),
                    outcome: RackOutcome::Ran {
                        board: name.clone(),
                        result,
                    },
                    attempts: job.attempts,
                    wall,
                }),
                Some(why) => {
                    job.tried.push(name.clone());
                    job.attempts.push((name.clone(), why));
                    s.queue.push_front(job);
                    drop(s);
                    let mut h = healths.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(me) = h.iter_mut().find(|b| b.name == name) {
                        me.infra_failures += 1;
                        if me.infra_failures >= QUARANTINE_AFTER {
                            me.quarantined = true;
                            me.health = Err(format!(
                                "quarantined after {} infrastructure failures",
                                me.infra_failures
                            ));
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Counts over a rack run: cases passed, failed (the test), skipped, and infrastructure errors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RackTotals {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub errors: usize,
}

impl RackReport {
    pub fn totals(&self) -> RackTotals {
        let mut t = RackTotals::default();
        for c in &self.cases {
            match &c.outcome {
                RackOutcome::Error { .. } => t.errors += 1,
                RackOutcome::Ran { result, .. } => {
                    let s = crate::scenario::report::Totals::of(std::slice::from_ref(result));
                    t.passed += s.passed;
                    t.failed += s.failed;
                    t.skipped += s.skipped;
                }
            }
        }
        t
    }

    /// One line per case and per board, then the totals.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for c in &self.cases {
            match &c.outcome {
                RackOutcome::Ran { board, result } => {
                    for case in &result.cases {
                        out.push_str(&format!(
                            "{:<5} {} [{}] on {board}{}\n",
                            case.outcome.as_str().to_uppercase(),
                            c.file.display(),
                            case.name,
                            match case.reason() {
                                r if r.is_empty() => String::new(),
                                r => format!(": {r}"),
                            }
                        ));
                    }
                }
                RackOutcome::Error { why } => {
                    out.push_str(&format!("ERROR {}: {why}\n", c.file.display()));
                }
            }
            for (board, why) in &c.attempts {
                out.push_str(&format!("      infrastructure failure on {board}: {why}\n"));
            }
        }
        for b in &self.boards {
            out.push_str(&format!(
                "board {}: {}{}\n",
                b.name,
                match &b.health {
                    Ok(s) => format!("healthy ({s})"),
                    Err(why) => why.clone(),
                },
                if b.infra_failures > 0 {
                    format!(", {} infrastructure failure(s)", b.infra_failures)
                } else {
                    String::new()
                }
            ));
        }
        let t = self.totals();
        out.push_str(&format!(
            "{} passed, {} failed, {} skipped, {} infrastructure errors\n",
            t.passed, t.failed, t.skipped, t.errors
        ));
        out
    }

    /// JUnit XML: a test failure is `<failure>`, an infrastructure error `<error>` (CI systems
    /// show them apart), a skip `<skipped>`. `time` is wall-clock seconds.
    pub fn junit(&self) -> String {
        use crate::scenario::report::xml_escape;
        let t = self.totals();
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        out.push_str(&format!(
            "<testsuites name=\"hil rack {}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\">\n",
            xml_escape(&self.rack),
            t.passed + t.failed + t.skipped + t.errors,
            t.failed,
            t.errors,
            t.skipped
        ));
        for c in &self.cases {
            let file = xml_escape(&c.file.display().to_string());
            let attempts: String = c
                .attempts
                .iter()
                .map(|(b, why)| format!("infrastructure failure on {b}: {why}\n"))
                .collect();
            match &c.outcome {
                RackOutcome::Error { why } => {
                    out.push_str(&format!(
                        "  <testsuite name=\"{file}\" tests=\"1\" failures=\"0\" errors=\"1\" skipped=\"0\">\n    <testcase classname=\"{}\" name=\"main\" time=\"{:.3}\">\n      <error message=\"{}\">{}</error>\n    </testcase>\n  </testsuite>\n",
                        xml_escape(&c.name),
                        c.wall.as_secs_f64(),
                        xml_escape(why),
                        xml_escape(&attempts)
                    ));
                }
                RackOutcome::Ran { board, result } => {
                    let s = crate::scenario::report::Totals::of(std::slice::from_ref(result));
                    out.push_str(&format!(
                        "  <testsuite name=\"{file}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\">\n",
                        s.total(),
                        s.failed,
                        s.skipped
                    ));
                    for case in &result.cases {
                        out.push_str(&format!(
                            "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">\n      <properties><property name=\"board\" value=\"{}\"/><property name=\"target_seconds\" value=\"{:.3}\"/></properties>\n",
                            xml_escape(&result.name),
                            xml_escape(&case.name),
                            c.wall.as_secs_f64(),
                            xml_escape(board),
                            case.duration.as_secs_f64()
                        ));
                        match case.outcome {
                            runner::Outcome::Fail => out.push_str(&format!(
                                "      <failure message=\"{}\">{}</failure>\n",
                                xml_escape(&case.reason()),
                                xml_escape(
                                    &case
                                        .failure
                                        .as_ref()
                                        .map(|f| f.to_string())
                                        .unwrap_or_default()
                                )
                            )),
                            runner::Outcome::Skip => out.push_str(&format!(
                                "      <skipped message=\"{}\"/>\n",
                                xml_escape(&case.reason())
                            )),
                            runner::Outcome::Pass => {}
                        }
                        out.push_str(&format!(
                            "      <system-out>{}{}</system-out>\n    </testcase>\n",
                            xml_escape(&attempts),
                            xml_escape(&case.trace.render())
                        ));
                    }
                    out.push_str("  </testsuite>\n");
                }
            }
        }
        out.push_str("</testsuites>\n");
        out
    }

    /// The JSON report: every case with its board, outcome, infrastructure attempts and trace
    /// (the trace lines are those of `hil run --json`, so `hil trace diff` compares them).
    pub fn json(&self) -> serde_json::Value {
        use serde_json::json;
        let t = self.totals();
        json!({
            "rack": self.rack,
            "target": "board",
            "time_base": "wall-clock seconds since each case's set-up",
            "totals": { "passed": t.passed, "failed": t.failed, "skipped": t.skipped,
                        "errors": t.errors },
            "boards": self.boards.iter().map(|b| json!({
                "name": b.name,
                "healthy": b.health.is_ok(),
                "health": match &b.health { Ok(s) | Err(s) => s.clone() },
                "infrastructure_failures": b.infra_failures,
                "quarantined": b.quarantined,
            })).collect::<Vec<_>>(),
            "scenarios": self.cases.iter().map(|c| {
                let attempts: Vec<_> = c.attempts.iter()
                    .map(|(b, why)| json!({"board": b, "error": why})).collect();
                match &c.outcome {
                    RackOutcome::Error { why } => json!({
                        "file": c.file.display().to_string(),
                        "name": c.name,
                        "error": why,
                        "attempts": attempts,
                        "cases": [],
                    }),
                    RackOutcome::Ran { board, result } => json!({
                        "file": c.file.display().to_string(),
                        "name": c.name,
                        "board": board,
                        "seed": result.seed,
                        "attempts": attempts,
                        "cases": result.cases.iter().map(|k| json!({
                            "name": k.name,
                            "outcome": k.outcome.as_str(),
                            "seconds": k.duration.as_secs_f64(),
                            "reason": k.reason(),
                            "trace": k.trace.lines(),
                        })).collect::<Vec<_>>(),
                    }),
                }
            }).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn the_example_racks_parse() {
        let real = RackFile::load(&root().join("boards/rack.example.toml")).unwrap();
        assert_eq!(real.listen.port(), 5684);
        let boron = &real.boards[0];
        assert_eq!(boron.platform, "boron");
        assert_eq!(
            boron.usb_serial.as_deref(),
            Some("E00FCE68A1B2C3D4E5F60708")
        );
        assert_eq!(boron.power_off[0], "uhubctl");
        assert_eq!(boron.power_timeout, Duration::from_secs(10));
        assert_eq!(real.boards[1].without, vec![Capability::Sleep]);
        let emulated = RackFile::load(&root().join("boards/rack.emulated.toml")).unwrap();
        assert!(emulated.boards.iter().all(|b| b.emulated));
    }

    #[test]
    fn a_bad_rack_file_names_the_board_and_the_problem() {
        let cases = [
            ("[[board]]\nname = \"a\"\nplatform = \"nope\"\ndevice_id = \"00\"\n", "board a: unknown platform"),
            (
                "[[board]]\nname = \"a\"\nplatform = \"boron\"\ndevice_id = \"xyz\"\nport = \"/dev/x\"\n",
                "board a: `device_id` \"xyz\" is not 24 hex digits",
            ),
            (
                "[[board]]\nname = \"a\"\nplatform = \"boron\"\ndevice_id = \"000000000000000000000001\"\n",
                "board a: `usb_serial` or `port` is required",
            ),
            (
                "[[board]]\nname = \"a\"\nplatform = \"boron\"\ndevice_id = \"000000000000000000000001\"\nport = \"p\"\npower_off = [\"x\"]\n",
                "`power_off` and `power_on` go together",
            ),
            (
                "[[board]]\nname = \"a\"\nplatform = \"boron\"\ndevice_id = \"000000000000000000000001\"\nport = \"p\"\nwithout = [\"teleport\"]\n",
                "unknown capability \"teleport\"",
            ),
            ("name = 1\n", "no [[board]]"),
            ("[[board]\n", "rack.toml:"),
        ];
        for (text, want) in cases {
            let e = RackFile::parse(text, Path::new("rack.toml")).unwrap_err();
            assert!(e.0.contains(want), "{text}: {e}");
            assert!(e.0.starts_with("rack.toml: "), "{e}");
        }
    }
}
