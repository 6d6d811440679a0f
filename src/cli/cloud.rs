//! `hil cloud`: the local Device Cloud over real UDP, printing its event stream, with a local
//! control endpoint for `hil flash` (protocol: `harness::control`), and optionally the REST API
//! and event stream (`--api`, `harness::cloud::api`) with its state in SQLite (`--state`,
//! `harness::cloud::store`).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use harness::cloud::api::{self, ApiState, Tokens};
use harness::cloud::store::Store;
use harness::cloud::{Cloud, CloudConfig, CloudEvent, SessionChange};
use harness::control::{self, FileSource, Request};
use harness::keys::KeyDir;
use harness::net::udp::UdpNode;
use harness::testbed::CloudNode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::CliResult;

const CONTROL_HELP: &str = "\
Keys (in --keys DIR, as `hil keys` writes them): server.der (the server's private key) and
every device-<id>.pub.der / .pub.pem (or <id>.pub.pem) is registered. See `hil keys --help`.

Control endpoint (TCP, --control, default 127.0.0.1:<listen port + 1>): JSON lines. Send one
request line
  {\"flash\": {\"device\": \"<24 hex>\", \"file_hex\": \"<file as hex>\"}}
  {\"flash\": {\"device\": \"<24 hex>\", \"path\": \"<file on this host>\"}}
and read one line per job status change until the job finished:
  {\"job\": 1, \"status\": \"queued\"}   ... \"starting\", \"transferring\" (acked, chunks),
  \"finishing\", \"committed\", then {\"job\": 1, \"status\": \"succeeded\"} or
  {\"job\": 1, \"status\": \"failed\", \"code\": -1360, \"message\": \"...\"}.
A bad request gets {\"error\": \"<sentence>\"}. `hil flash` speaks this protocol.

Output: one line per cloud event, `<seconds since start> <event>`, and
`hello <id>: product version N, system version S, platform P` when a device says Hello.

REST API (--api ADDR, with --token-file FILE): Particle's paths, status codes and JSON for a
release pipeline: PUT /v1/devices/:id (multipart `file`: flash), POST /v1/products/:p/firmware
(multipart `file` or `binary`, `version`, `title`), GET/DELETE /v1/products/:p/firmware[/:v],
PUT /v1/products/:p/firmware/release (`version`, `product_default`, `groups`, `intelligent`),
PUT /v1/products/:p/devices/:id (`desired_firmware_version` (null unlocks), `flash`,
`development`, `groups`, `firmware_updates_forced`), GET /v1/devices[/:id],
GET /v1/products/:p/devices[/:id], and ours: POST /v1/products (`id`, `name`, `platform`),
POST /v1/products/:p/devices (`id`). Events (Server-Sent Events): GET /v1/events/:prefix,
/v1/devices/events, /v1/devices/:id/events[/:prefix], /v1/products/:p/events[/:prefix].
Tokens: `Authorization: Bearer T` or `access_token=T`. The token file is TOML:
  [[token]]
  token = \"<40 letters or digits>\"
  products = [1000]                       # optional scope; without one: everything
  devices = [\"<24 hex>\"]                  # optional scope
--device-os DIR: every file is a Device OS module (bootloader, system part, radio stack) the
cloud may send a device in safe mode whose app needs it (safe-mode healing); a file that is
not one stops the start.
--state DIR keeps products, firmware, releases, device settings and unfinished flashes in
DIR/cloud.sqlite3 (SQLite; schema in `harness::cloud::store`). --products FILE declares products:
  [[product]]
  id = 1000
  platform = \"boron\"                      # or platform_id = 13
  devices = [\"<24 hex>\"]";

#[derive(Args)]
#[command(after_help = CONTROL_HELP)]
pub struct CloudArgs {
    /// UDP address to serve devices on, e.g. 0.0.0.0:5684.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Key directory: server key and the device public keys to register.
    #[arg(long, value_name = "DIR")]
    keys: PathBuf,
    /// Append NSS key-log lines (one per session) for Wireshark to decrypt the traffic.
    #[arg(long, value_name = "FILE")]
    keylog: Option<PathBuf>,
    /// TCP address of the control endpoint (default 127.0.0.1:<listen port + 1>).
    #[arg(long, value_name = "ADDR")]
    control: Option<SocketAddr>,
    /// Seed of the cloud's randomness.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// TCP address of the REST API and event stream, e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR", requires = "token_file")]
    api: Option<SocketAddr>,
    /// The API's access tokens (TOML, see below).
    #[arg(long, value_name = "FILE", requires = "api")]
    token_file: Option<PathBuf>,
    /// Keep device sessions (a restarted cloud resumes them), products, firmware, releases,
    /// device settings and unfinished flashes in DIR/cloud.sqlite3 across restarts.
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Products to create at start (TOML, see below).
    #[arg(long, value_name = "FILE")]
    products: Option<PathBuf>,
    /// Device OS modules (bootloaders, system parts, radio stacks, one module binary per file)
    /// that safe-mode healing sends a device whose firmware needs them.
    #[arg(long, value_name = "DIR")]
    device_os: Option<PathBuf>,
    /// Write every datagram sent and received to this pcap file (`hil pcap decrypt`).
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
}

/// Adds every file of `dir` to the cloud's Device OS library; a file that is not a Device OS
/// module stops the start with its path and why.
fn load_device_os(cloud: &mut Cloud, dir: &std::path::Path) -> Result<(), String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("--device-os {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(format!(
            "--device-os {}: no module files in it",
            dir.display()
        ));
    }
    for path in paths {
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let module = cloud
            .add_device_os_module(bytes)
            .map_err(|e| format!("--device-os {}: {e}", path.display()))?;
        println!("device-os {}: {}", path.display(), module.describe());
    }
    Ok(())
}

type Shared = Arc<UdpNode<CloudNode>>;

fn stamp(at: Duration) -> String {
    format!("{:>6}.{:03}s", at.as_secs(), at.subsec_millis())
}

pub fn run(args: CloudArgs) -> CliResult {
    let keys = KeyDir::new(&args.keys);
    let server_key = keys.server_key()?;
    let devices = keys.device_keys()?;
    let mut config = CloudConfig::new(server_key);
    // The one wall-clock reading: `published_at` and the devices' time requests.
    if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        config.unix_time_at_epoch = since.as_secs();
    }
    let mut cloud = Cloud::new(config, args.seed);
    let keys = KeyDir::new(&args.keys);
    for (id, key) in &devices {
        cloud.register_device(*id, *key);
    }
    if let Some(dir) = &args.device_os {
        load_device_os(&mut cloud, dir)?;
    }
    let tokens = match &args.token_file {
        Some(path) => Some(Tokens::load(path)?),
        None => None,
    };
    let mut store = match &args.state {
        Some(dir) => Some(Store::open(dir)?),
        None => None,
    };
    let restored = match &store {
        Some(s) => {
            let r = api::restore(&mut cloud, s)?;
            println!(
                "state {}: {} products, {} firmware versions, {} unfinished flashes restarted{}",
                s.path().display(),
                r.products,
                r.firmware,
                r.flashes.len(),
                if r.skipped_flashes > 0 {
                    format!(" ({} kept for devices with no key here)", r.skipped_flashes)
                } else {
                    String::new()
                }
            );
            r
        }
        None => api::Restored::default(),
    };
    // Sessions last: a restored session is armed with the product target restored above.
    let sessions = match &args.state {
        Some(dir) => {
            let store = Store::open(dir)?;
            let (saved, mut written) = store.load_sessions()?;
            let mut restored = 0;
            for s in &saved {
                match cloud.restore_session(Duration::ZERO, s) {
                    Ok(()) => restored += 1,
                    Err(e) => {
                        println!(
                            "state {}: session not restored: {e}",
                            store.path().display()
                        );
                        written.remove(&s.device_id);
                    }
                }
            }
            println!(
                "state {}: {restored} device sessions restored (they resume without a handshake)",
                store.path().display()
            );
            Some(SessionSync {
                store,
                written,
                last: None,
            })
        }
        None => None,
    };
    if let Some(path) = &args.products {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let declared = api::lab::parse_products(&text, &path.display().to_string())?;
        api::lab::declare(&mut cloud, Duration::ZERO, &declared)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(s) = &mut store {
            s.save_fleet(cloud.fleet())?;
        }
    }
    let control_addr = match args.control {
        Some(a) => a,
        None => SocketAddr::from((
            [127, 0, 0, 1],
            args.listen
                .port()
                .checked_add(1)
                .ok_or("--control is needed when --listen uses port 65535")?,
        )),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut cloud_node = CloudNode::new(cloud);
        // What the restore and declarations reported (restarted flashes) is printed too.
        while let Some(e) = cloud_node.cloud.poll_event() {
            cloud_node.events.push((Duration::ZERO, e));
        }
        let node: Shared = Arc::new(UdpNode::server(cloud_node, args.listen).await?);
        if let Some(path) = &args.pcap {
            node.capture(super::pcap::capture_to(path)?);
        }
        let listener = TcpListener::bind(control_addr)
            .await
            .map_err(|e| format!("control endpoint {control_addr}: {e}"))?;
        println!(
            "cloud listening on udp {} ({} device keys registered), control on tcp {}",
            node.local_addr(),
            devices.len(),
            listener.local_addr()?
        );
        let api_state = match (args.api, tokens) {
            (Some(addr), Some(tokens)) => {
                let state = ApiState::new(node.clone(), tokens, store, restored.flashes);
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("API {addr}: {e}"))?;
                println!("api on http://{}", listener.local_addr()?);
                let serving = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = api::serve(listener, serving).await {
                        eprintln!("hil cloud: the API stopped: {e}");
                    }
                });
                Some(state)
            }
            _ => None,
        };
        let accept_node = node.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(accept_node.clone(), stream));
                    }
                    // Out of file descriptors and the like: try again shortly.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let watch = KeyWatch::new(keys, &devices);
        print_events(node, args.keylog, api_state, watch, sessions).await
    })
}

/// Device sessions written to `--state` (`harness::cloud::store`), at most every
/// [`SESSION_SAVE`].
struct SessionSync {
    store: Store,
    written: harness::cloud::store::SavedSessions,
    last: Option<std::time::Instant>,
}

const SESSION_SAVE: Duration = Duration::from_millis(500);

impl SessionSync {
    fn poll(&mut self, node: &Shared) -> Result<(), harness::cloud::store::StoreError> {
        if self.last.is_some_and(|t| t.elapsed() < SESSION_SAVE) {
            return Ok(());
        }
        self.last = Some(std::time::Instant::now());
        let (sessions, unix_ms) = node.with_node(|n, now| {
            let unix_ms = n
                .cloud
                .unix_time_at_epoch()
                .saturating_mul(1000)
                .saturating_add(u64::try_from(now.as_millis()).unwrap_or(u64::MAX));
            (
                n.cloud.saved_sessions(),
                i64::try_from(unix_ms).unwrap_or(i64::MAX),
            )
        });
        self.store
            .sync_sessions(unix_ms, &sessions, &mut self.written)?;
        Ok(())
    }
}

/// The key directory as last read: device keys appearing in it are registered and keys
/// disappearing from it removed, while the cloud runs (keys added through the control
/// endpoint are not touched).
struct KeyWatch {
    dir: KeyDir,
    known: BTreeMap<[u8; 12], Vec<u8>>,
    last_error: Option<String>,
    last_look: Option<std::time::Instant>,
}

/// How often the key directory is read again.
const KEY_DIR_POLL: Duration = Duration::from_secs(1);

impl KeyWatch {
    fn new(dir: KeyDir, keys: &[([u8; 12], p256::ecdsa::VerifyingKey)]) -> Self {
        KeyWatch {
            dir,
            known: keys
                .iter()
                .map(|(id, k)| (*id, k.to_encoded_point(true).as_bytes().to_vec()))
                .collect(),
            last_error: None,
            last_look: None,
        }
    }

    /// Applies what changed in the directory since the last look; returns the lines to print.
    fn poll(&mut self, node: &Shared) -> Vec<String> {
        if self.last_look.is_some_and(|t| t.elapsed() < KEY_DIR_POLL) {
            return Vec::new();
        }
        self.last_look = Some(std::time::Instant::now());
        let keys = match self.dir.device_keys() {
            Ok(k) => k,
            Err(e) => {
                // A file being written, a bad file: nothing changes until the directory reads.
                let e = format!(
                    "key directory {}: {e} (keys unchanged)",
                    self.dir.path().display()
                );
                if self.last_error.as_ref() != Some(&e) {
                    self.last_error = Some(e.clone());
                    return vec![e];
                }
                return Vec::new();
            }
        };
        self.last_error = None;
        type Found = BTreeMap<[u8; 12], (Vec<u8>, p256::ecdsa::VerifyingKey)>;
        let found: Found = keys
            .into_iter()
            .map(|(id, k)| (id, (k.to_encoded_point(true).as_bytes().to_vec(), k)))
            .collect();
        let mut lines = Vec::new();
        node.with_node(|n, at| {
            for (id, (bytes, key)) in &found {
                if self.known.get(id) != Some(bytes) {
                    n.cloud.register_device(*id, *key);
                    lines.push(format!("{} key added for {}", stamp(at), hex::encode(id)));
                }
            }
            for id in self.known.keys() {
                if !found.contains_key(id) {
                    n.cloud.unregister_device(at, *id);
                    lines.push(format!("{} key removed for {}", stamp(at), hex::encode(id)));
                }
            }
        });
        self.known = found.into_iter().map(|(id, (b, _))| (id, b)).collect();
        lines
    }
}

/// Prints the cloud's events (and Hellos) as they come; never returns unless stdout closes.
async fn print_events(
    node: Shared,
    keylog: Option<PathBuf>,
    api: Option<Arc<ApiState>>,
    mut watch: KeyWatch,
    mut sessions: Option<SessionSync>,
) -> CliResult {
    let mut hellos: BTreeMap<harness::cloud::DeviceId, (u16, u16)> = BTreeMap::new();
    // The last key-log line written per device: a resumed session is not written again.
    let mut logged: BTreeMap<harness::cloud::DeviceId, String> = BTreeMap::new();
    let mut out = std::io::stdout();
    loop {
        if node.is_finished() {
            return Err("the cloud's UDP socket failed".into());
        }
        let (events, new_hellos, keylines) = node.with_node(|n, _| {
            let events = std::mem::take(&mut n.events);
            if let Some(api) = &api {
                api.observe(&n.cloud, &events);
            }
            let mut keylines = Vec::new();
            for (_, e) in &events {
                if let CloudEvent::Session(
                    SessionChange::Connected { device_id, .. }
                    | SessionChange::Resumed { device_id, .. },
                ) = e
                {
                    // A full handshake sends a Hello; a resumption prints "resumed", and a
                    // Hello line only when the device sends one (its firmware changed).
                    if matches!(e, CloudEvent::Session(SessionChange::Connected { .. })) {
                        hellos.remove(device_id);
                    }
                    if let Some(l) = n.cloud.key_log_line(*device_id) {
                        if logged.get(device_id) != Some(&l) {
                            logged.insert(*device_id, l.clone());
                            keylines.push(l);
                        }
                    }
                }
            }
            let mut new_hellos = Vec::new();
            for id in n.cloud.devices() {
                if let Some(h) = n.cloud.device(id).and_then(|v| v.hello) {
                    let key = (h.product_version, h.system_version);
                    if hellos.get(&id) != Some(&key) {
                        hellos.insert(id, key);
                        new_hellos.push((id, h));
                    }
                }
            }
            (events, new_hellos, keylines)
        });
        if let Some(sync) = &mut sessions {
            if let Err(e) = sync.poll(&node) {
                eprintln!("hil cloud: saving sessions: {e}");
            }
        }
        let mut text = String::new();
        for line in watch.poll(&node) {
            text.push_str(&line);
            text.push('\n');
        }
        for (at, e) in &events {
            if let Some(line) = harness::trace_text::cloud_event(e) {
                text.push_str(&format!("{} {line}\n", stamp(*at)));
            }
        }
        for (id, h) in new_hellos {
            text.push_str(&format!(
                "{} hello {}: product version {}, system version {}, platform {}\n",
                stamp(node.now()),
                hex::encode(id),
                h.product_version,
                h.system_version,
                h.platform_id
            ));
        }
        if !text.is_empty() && (out.write_all(text.as_bytes()).is_err() || out.flush().is_err()) {
            return Ok(ExitCode::SUCCESS);
        }
        if let (Some(path), false) = (&keylog, keylines.is_empty()) {
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| {
                    keylines
                        .iter()
                        .try_for_each(|l| writeln!(f, "{}", l.trim_end()))
                });
            if let Err(e) = written {
                eprintln!("hil cloud: key log {}: {e}", path.display());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serves one control connection; every failure is a JSON error line or a closed connection.
async fn serve(node: Shared, stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(control::MAX_REQUEST));
    let mut line = String::new();
    let request = match reader.read_line(&mut line).await {
        Ok(0) => return,
        Ok(_) => Request::parse(&line),
        Err(e) => Err(format!("reading the request: {e}")),
    };
    let request = match request {
        Ok(Request::Flash(r)) => r,
        Ok(Request::AddKey { device, key }) => {
            let line = node.with_node(|n, _| {
                n.cloud.register_device(device, key);
                control::ok_line(&format!("key of device {} registered", hex::encode(device)))
            });
            let _ = write.write_all(line.as_bytes()).await;
            return;
        }
        Ok(Request::RemoveKey { device }) => {
            let line = node.with_node(|n, now| {
                if n.cloud.unregister_device(now, device) {
                    control::ok_line(&format!("key of device {} removed", hex::encode(device)))
                } else {
                    control::unknown_device_line(&format!(
                        "device {} is not registered",
                        hex::encode(device)
                    ))
                }
            });
            let _ = write.write_all(line.as_bytes()).await;
            return;
        }
        Err(e) => {
            let _ = write.write_all(control::error_line(&e).as_bytes()).await;
            return;
        }
    };
    let file = match request.file {
        FileSource::Bytes(b) => b,
        FileSource::Path(p) => match tokio::fs::read(&p).await {
            Ok(b) => b,
            Err(e) => {
                let msg = format!("{p}: {e}");
                let _ = write.write_all(control::error_line(&msg).as_bytes()).await;
                return;
            }
        },
    };
    let device = request.device;
    let job = node.with_node(|n, now| {
        n.cloud
            .is_registered(device)
            .then(|| n.cloud.flash(now, device, file))
    });
    let Some(job) = job else {
        let msg = format!("device {} is not registered", hex::encode(device));
        let _ = write
            .write_all(control::unknown_device_line(&msg).as_bytes())
            .await;
        return;
    };
    let mut last = None;
    loop {
        let info = node.with_node(|n, _| n.cloud.job_info(job));
        let Some(info) = info else {
            let _ = write
                .write_all(control::error_line("the job disappeared").as_bytes())
                .await;
            return;
        };
        let line = control::info_line(job, &info);
        let status = info.status;
        if last.as_ref() != Some(&line) {
            if write.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            last = Some(line);
        }
        if status.is_finished() {
            let _ = write.shutdown().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
