//! `hil device`: one emulated device (Device OS on the emulator) against a cloud over real
//! UDP, printing its log. With `--state DIR` its flash persists (`emulator::persist`), so it
//! can be stopped and started again: a restart is a power cycle (flash kept, RAM lost).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use emulator::board::Board;
use emulator::device::Device;
use emulator::firmware::{FirmwareSet, ModuleSizes, Versions};
use emulator::os::{AppBehaviour, DeviceEvent, DeviceOs, Identity};
use emulator::persist;
use harness::board::pty::{serve_device, PtyPort};
use harness::board::serve::BoardServer;
use harness::keys::{load_signing_key, load_verifying_key, DeviceId};
use harness::net::udp::UdpNode;
use harness::testbed::DeviceNode;

use super::CliResult;

#[derive(Args)]
#[command(after_help = "\
State (--state DIR): flash-internal.bin and flash-external.bin, the device's flash chips
(format: emulator::persist). Saved after every boot (so after every applied update), every
second while flash changes, and written atomically (temp file + rename), so killing the process
loses at most the last second of flash writes, like a power cut. On first start the board is
provisioned with Device OS 6.2.0 and the app at --app-version; later starts ignore it.")]
pub struct DeviceArgs {
    /// The cloud's UDP address.
    #[arg(long, value_name = "ADDR")]
    server: SocketAddr,
    /// The server's public key (server.pub.der or .pem; a private key file works too).
    #[arg(long, value_name = "FILE")]
    server_key: PathBuf,
    /// The device's private key (device-<id>.der or .pem).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The device id, 24 hex digits.
    #[arg(long, value_name = "HEX")]
    id: String,
    /// Built-in board name (boron, argon, p2, msom, ...).
    #[arg(long, value_name = "NAME")]
    platform: String,
    /// Product version of the app provisioned on first start.
    #[arg(long, value_name = "N", default_value_t = 3)]
    app_version: u16,
    /// Size of the provisioned user part, bytes.
    #[arg(long, default_value_t = 24 * 1024)]
    user_part_size: u32,
    /// Directory the flash image persists in (created if missing).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Write every datagram sent and received to this pcap file (`hil pcap decrypt`).
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// The ping interval (`Particle.keepAlive`): `25s`, `23m`... (default: the platform's,
    /// 23 min cellular, 25 s others).
    #[arg(long, value_name = "DURATION", value_parser = keepalive)]
    keepalive: Option<Duration>,
    /// Serve the test-control protocol (boards/README.md) on a pseudo-terminal, as the test
    /// firmware does on a board's USB serial port; prints the path to open.
    #[arg(long)]
    serial_pty: bool,
}

fn keepalive(text: &str) -> Result<Duration, String> {
    harness::scenario::model::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a duration (e.g. 25s, 23m)"))
}

fn seed_of(id: &[u8; 12]) -> u64 {
    id.iter()
        .fold(0xD3u64, |s, b| s.rotate_left(8) ^ u64::from(*b))
}

fn stamp(at: Duration) -> String {
    format!("{:>6}.{:03}s", at.as_secs(), at.subsec_millis())
}

pub fn run(args: DeviceArgs) -> CliResult {
    let id: DeviceId = args.id.parse()?;
    let board = Board::builtin(&args.platform)?;
    let key = load_signing_key(&args.key)?;
    let server_key = load_verifying_key(&args.server_key)?;
    let seed = seed_of(&id.0);
    let device = match &args.state {
        Some(dir) if persist::exists(dir) => {
            let mut device = Device::new(board, seed)?;
            persist::load_into(device.flash_mut(), dir)?;
            println!("loaded the flash image from {}", dir.display());
            device
        }
        _ => {
            let sizes = ModuleSizes {
                user_part: args.user_part_size,
                ..ModuleSizes::default()
            };
            let versions = Versions {
                product_version: args.app_version,
                ..Versions::BASELINE
            };
            let (device, _) = FirmwareSet::new(&board, sizes, seed).provision(&versions)?;
            if let Some(dir) = &args.state {
                persist::save(device.flash(), dir)?;
            }
            println!(
                "provisioned {} with Device OS 6.2.0 and app v{}",
                args.platform, args.app_version
            );
            device
        }
    };
    let identity = Identity {
        device_id: id.0,
        server_key,
        key,
    };
    let mut os = DeviceOs::new(identity, device, AppBehaviour::default(), seed);
    if let Some(k) = args.keepalive {
        os.set_keepalive(k);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(drive(
        os,
        args.server,
        args.state,
        args.pcap,
        args.serial_pty,
    ))
}

async fn drive(
    os: DeviceOs,
    server: SocketAddr,
    state: Option<PathBuf>,
    pcap: Option<PathBuf>,
    serial_pty: bool,
) -> CliResult {
    let node = UdpNode::client(DeviceNode::new(os, server), server).await?;
    if let Some(path) = &pcap {
        node.capture(super::pcap::capture_to(path)?);
    }
    let mut serial = match serial_pty {
        true => {
            let port = PtyPort::open()?;
            println!("serial: {}", port.path());
            std::io::stdout().flush()?;
            Some((port, BoardServer::new()))
        }
        false => None,
    };
    node.with_node(|n, now| {
        n.os.power_on(now);
        n.drain(now);
    });
    let stop = stop_signal();
    let mut stopping: Option<Instant> = None;
    let mut retries = RetryReport::default();
    let mut out = std::io::stdout();
    let mut saved_ops = None;
    let mut last_save = Instant::now();
    loop {
        if node.is_finished() {
            save(&node, state.as_deref());
            return Err("the device's UDP socket failed".into());
        }
        let (events, ops) = node.with_node(|n, now| {
            n.drain(now);
            (
                std::mem::take(&mut n.events),
                n.os.device().flash().op_count(),
            )
        });
        let mut input = Vec::new();
        if let Some((port, server)) = &mut serial {
            input = port.take_input();
            serve_device(&node, port, server, &input, &events);
        }
        let mut text = String::new();
        let mut booted = false;
        for (at, e) in &events {
            booted |= matches!(e, DeviceEvent::Booted { .. });
            if matches!(
                e,
                DeviceEvent::Connecting { .. } | DeviceEvent::Connected { .. }
            ) {
                retries.restart(node.stats());
            }
            if let Some(line) = harness::trace_text::device_event(e) {
                text.push_str(&format!("{} {line}\n", stamp(*at)));
            }
        }
        for line in retries.look(&node, server) {
            text.push_str(&line);
        }
        if stopping.is_none() && stop.load(std::sync::atomic::Ordering::SeqCst) {
            stopping = Some(Instant::now());
            text.push_str("stopping: disconnecting from the cloud (Goodbye)\n");
            node.with_node(|n, now| {
                n.os.disconnect_gracefully(now);
                n.drain(now);
            });
        }
        if let Some(since) = stopping {
            // The Goodbye acknowledged (or given up after the disconnect timeout), or no
            // answer within STOP_WAIT: flash saved, exit.
            let done = node.with_node(|n, _| n.os.is_disconnected());
            if done || since.elapsed() >= STOP_WAIT {
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
                save(&node, state.as_deref());
                return Ok(ExitCode::SUCCESS);
            }
        }
        if !text.is_empty() && (out.write_all(text.as_bytes()).is_err() || out.flush().is_err()) {
            save(&node, state.as_deref());
            return Ok(ExitCode::SUCCESS);
        }
        let changed = saved_ops != Some(ops);
        if booted || (changed && last_save.elapsed() >= Duration::from_secs(1)) {
            save(&node, state.as_deref());
            saved_ops = Some(ops);
            last_save = Instant::now();
        }
        match &mut serial {
            // Answer the host at once; otherwise look again in 50 ms.
            Some((port, server)) if input.is_empty() => {
                let input = port.wait_input(Duration::from_millis(50)).await;
                serve_device(&node, port, server, &input, &[]);
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// How long a stop (SIGTERM, Ctrl-C) waits for the cloud to acknowledge the Goodbye.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Set once SIGTERM or Ctrl-C (SIGINT) arrived.
fn stop_signal() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set = flag.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        set.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    flag
}

/// Says what the device does while the cloud does not answer: one line per retransmission of
/// a CoAP message (which message, its message id, the attempt, and when it goes again or is
/// given up), and, while a DTLS handshake or resumption gets no answer, one line each time the
/// device sends again.
#[derive(Default)]
struct RetryReport {
    /// Transmissions already reported per unacknowledged CON (by message id).
    seen: BTreeMap<u16, u32>,
    /// Datagrams sent when the last handshake line was printed (or the cloud last answered).
    reported: u64,
    received: u64,
    /// The datagram of an attempt that is not a retry has been seen.
    first_sent: bool,
}

impl RetryReport {
    /// A new connection attempt (or a connection that came up): count from here.
    fn restart(&mut self, stats: harness::net::udp::UdpStats) {
        self.reported = stats.sent;
        self.received = stats.received;
        self.first_sent = false;
    }

    fn look(&mut self, node: &UdpNode<DeviceNode>, server: SocketAddr) -> Vec<String> {
        let stats = node.stats();
        let (now, connected, retransmitted, next) = node.with_node(|n, now| {
            let cons = n.os.unacknowledged_cons();
            let mut lines = Vec::new();
            let mut seen = BTreeMap::new();
            for con in &cons {
                seen.insert(con.message_id, con.transmissions);
                let before = self.seen.get(&con.message_id).copied().unwrap_or(1);
                if con.transmissions <= before {
                    continue;
                }
                let what = protocol::coap::Message::parse(con.bytes)
                    .map_or("a message".to_string(), |m| {
                        harness::message_kind::message_kind(&m, false).to_string()
                    });
                let wait = con.deadline.saturating_sub(now).as_secs_f64();
                let then = if con.retransmits_again {
                    format!("next retry in {wait:.1}s")
                } else {
                    format!("the last one: given up in {wait:.1}s, then the device reconnects")
                };
                lines.push(format!(
                    "{} no ACK from the cloud at {server}: {what} (message id {}) sent again, \
                     attempt {}, {then}\n",
                    stamp(now),
                    con.message_id,
                    con.transmissions,
                ));
            }
            self.seen = seen;
            let next = n.os.poll_timeout().map(|t| t.saturating_sub(now));
            (
                now,
                n.os.status().connected,
                (lines, !cons.is_empty()),
                next,
            )
        });
        let (mut lines, coap_pending) = retransmitted;
        if stats.received > self.received {
            self.restart(stats);
            return lines;
        }
        if stats.sent <= self.reported || connected || coap_pending {
            // Answered, or the device's retries are the CoAP ones reported above.
            self.reported = self.reported.max(stats.sent);
            return lines;
        }
        // The first datagram of a handshake is not a retry.
        if !self.first_sent {
            self.first_sent = true;
            self.reported = stats.sent;
            return lines;
        }
        self.reported = stats.sent;
        let next = next.map_or_else(
            || "no further retry scheduled".to_string(),
            |d| format!("next retry in {:.1}s", d.as_secs_f64()),
        );
        lines.push(format!(
            "{} no answer from the cloud at {server}: handshake sent again, {next}\n",
            stamp(now)
        ));
        lines
    }
}

/// Saves the flash (a cheap copy-on-write snapshot taken under the lock, written outside it).
fn save(node: &UdpNode<DeviceNode>, state: Option<&Path>) {
    let Some(dir) = state else { return };
    let flash = node.with_node(|n, _| n.os.device().flash().clone());
    if let Err(e) = persist::save(&flash, dir) {
        eprintln!("hil device: saving the flash image: {e}");
    }
}
