//! `hil bench ota`: how fast an OTA goes over real UDP loopback DTLS, how fast it goes in
//! virtual time, and how many emulated devices one process keeps connected.
//!
//! Everything real-time runs on one single-threaded tokio runtime, so that the figures are
//! those of one core: the cloud ([`CloudNode`] on [`UdpNode::server`]) and each device
//! ([`DeviceNode`] on [`UdpNode::client`], its own socket) are tasks of the same thread.
//!
//! - OTA MB/s: file bytes / (cloud's UpdateStart sent -> all chunks acknowledged, UpdateFinish
//!   sent), on the cloud's clock. The job's start delays (pending event, settle) and the
//!   device's commit and reboot are not in it; they are shown as "flash -> committed".
//! - Raw UDP: 512-byte datagrams (the OTA chunk size) between two tokio sockets on the same
//!   runtime, at most [`RAW_WINDOW`] unacknowledged, the receiver acknowledging its count every
//!   [`RAW_ACK_EVERY`] datagrams; no encryption, no CoAP, no flash writes. MB/s of datagrams
//!   that arrived. One system call per datagram, where the OTA's UDP driver batches bursts
//!   (GSO/GRO, see `harness::net::udp`).
//! - Batched raw UDP (the headline's reference): the OTA's own pattern through the OTA's own
//!   UDP driver ([`UdpNode`], GSO bursts out, GRO reads in): datagrams of the size the OTA's
//!   chunk records take on the wire and acks of the size of its UpdateAck records (both
//!   measured on the 128 KiB OTA), the device's window and ack interval; no encryption, no
//!   CoAP, no flash. MB/s counts the chunk's 512 bytes per datagram, as the OTA counts file
//!   bytes, so `ota_ratio_to_batched_udp` compares like with like.
//! - Virtual time: the same OTA on [`Testbed`] (the simulated network and its default latency),
//!   simulated seconds of the whole job (flash -> succeeded) per wall second spent stepping.
//! - Devices: N real `DeviceOs` instances, each on its own UDP socket and task, all connected
//!   to one cloud socket at once; memory per device from `/proc/self/status` VmRSS before and
//!   after (emulated flash is sparse: only written sectors take memory).
//!
//! Profiling the transfer alone: `hil bench ota --profile-ota N` runs only the 1.5 MiB OTA, N
//! times; with `HIL_PERF_CTL=FIFO` it writes `enable`/`disable` to FIFO around each flash ->
//! commit, for `perf record --control fifo:FIFO -D -1 ...`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use emulator::board::{Board, RegionKind};
use emulator::firmware::{FirmwareSet, ModuleSizes, Versions};
use emulator::os::{AppBehaviour, DeviceOs, Identity};
use harness::cloud::{Cloud, CloudConfig, CloudEvent, JobId, JobStatus, OtaEvent, OtaEventKind};
use harness::net::udp::UdpNode;
use harness::net::Node;
use harness::testbed::{CloudNode, DeviceNode, DeviceSpec, Testbed};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::CliResult;

#[derive(Args)]
pub struct OtaArgs {
    /// Print one JSON object (udp_loopback_mb_per_s, ota_128k_mb_per_s, ota_1_5m_mb_per_s,
    /// ota_ratio_to_udp, virtual_seconds_per_wall_second, devices_connected, bytes_per_device,
    /// and details).
    #[arg(long)]
    json: bool,
    /// Tiny images and device counts (a smoke test: the figures mean little).
    #[arg(long)]
    quick: bool,
    /// The most devices to connect at once (the steps are 10, 100, 1000 ... up to this).
    #[arg(long, default_value_t = 1000)]
    max_devices: usize,
    /// Only the 1.5 MiB OTA over UDP, this many times, one MB/s line each (for a profiler).
    #[arg(long, hide = true)]
    profile_ota: Option<u32>,
}

/// The board of every figure: the P2, whose 1.5 MiB staging area takes a 1.5 MiB user part.
const BOARD: &str = "p2";
/// Raw UDP: datagram size, window and ack interval.
const RAW_DATAGRAM: usize = 512;
const RAW_WINDOW: u64 = 64;
const RAW_ACK_EVERY: u64 = 16;
/// Stop adding devices when the process's RSS passes this.
const RSS_LIMIT: u64 = 4 << 30;

/// One OTA over real UDP.
struct UdpOta {
    size: u32,
    /// UpdateStart -> UpdateFinish.
    transfer: Duration,
    /// `flash` called -> the device's commit acknowledged.
    to_committed: Duration,
    retransmitted_chunks: usize,
}

impl UdpOta {
    fn mb_per_s(&self) -> f64 {
        f64::from(self.size) / self.transfer.as_secs_f64().max(1e-9) / 1e6
    }
}

struct VirtualOta {
    size: u32,
    simulated: Duration,
    wall: Duration,
    /// UpdateStart -> UpdateFinish: (simulated, wall).
    transfer: (Duration, Duration),
}

struct DeviceStep {
    devices: usize,
    connected: usize,
    rss_bytes: u64,
    connect_time: Duration,
}

pub fn ota(args: OtaArgs) -> CliResult {
    let board = Board::builtin(BOARD).map_err(|e| format!("board {BOARD}: {e}"))?;
    let (small, large): (u32, u32) = if args.quick {
        (16 * 1024, 32 * 1024)
    } else {
        (128 * 1024, 1536 * 1024)
    };
    let raw_bytes: u64 = if args.quick { 256 << 10 } else { 32 << 20 };
    // The device's receive window and ack interval (Device OS defaults), for the raw UDP row
    // that moves datagrams the way the OTA does.
    let ota_config = emulator::os::ota::OtaConfig::default();
    let ota_window = u64::from((ota_config.window_bytes / RAW_DATAGRAM as u32).max(1));
    let ota_ack_every = u64::from(ota_config.ack_count.max(1));
    let steps: Vec<usize> = if args.quick {
        vec![2, 4]
    } else {
        let mut s: Vec<usize> = [10, 100, 1000, 10_000]
            .into_iter()
            .filter(|&n| n <= args.max_devices)
            .collect();
        if s.last() != Some(&args.max_devices) && args.max_devices > 0 {
            s.push(args.max_devices);
        }
        s
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    if let Some(runs) = args.profile_ota {
        for i in 0..runs {
            let o = runtime.block_on(udp_ota(&board, large, 10 + u64::from(i)))?;
            println!("{:.2} MB/s", o.mb_per_s());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (raw, ota_small, ota_large, batched) = runtime.block_on(async {
        let raw = raw_udp(raw_bytes, RAW_WINDOW, RAW_ACK_EVERY).await?;
        let raw_pattern = raw_udp(raw_bytes, ota_window, ota_ack_every).await?;
        let (a, sizes) = udp_ota_sized(&board, small, 1).await?;
        let b = udp_ota(&board, large, 2).await?;
        let batched = batched_udp(raw_bytes, sizes, ota_window, ota_ack_every).await?;
        Ok::<_, String>(((raw, raw_pattern), a, b, batched))
    })?;
    let (raw, raw_pattern) = raw;
    let virt_small = virtual_ota(&board, small, 3)?;
    let virt_large = virtual_ota(&board, large, 4)?;
    let (rss_base, device_steps) = runtime.block_on(devices(&board, &steps))?;
    drop(runtime);

    let raw_mb = raw / 1e6;
    let ratio = ota_large.mb_per_s() / raw_mb.max(1e-9);
    let raw_pattern_mb = raw_pattern / 1e6;
    let ratio_pattern = ota_large.mb_per_s() / raw_pattern_mb.max(1e-9);
    let batched_mb = batched.goodput_mb_per_s();
    let ratio_batched = ota_large.mb_per_s() / batched_mb.max(1e-9);
    let virt_total_sim = virt_small.simulated + virt_large.simulated;
    let virt_total_wall = virt_small.wall + virt_large.wall;
    let vsps = virt_total_sim.as_secs_f64() / virt_total_wall.as_secs_f64().max(1e-9);
    let best = device_steps
        .iter()
        .filter(|s| s.connected == s.devices)
        .max_by_key(|s| s.devices);
    let devices_connected = best.map_or(0, |s| s.connected);
    let bytes_per_device = best.map_or(0.0, |s| {
        s.rss_bytes.saturating_sub(rss_base) as f64 / s.devices.max(1) as f64
    });
    if args.json {
        let steps_json: Vec<_> = device_steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "devices": s.devices,
                    "connected": s.connected,
                    "rss_bytes": s.rss_bytes,
                    "bytes_per_device": s.rss_bytes.saturating_sub(rss_base) as f64 / s.devices.max(1) as f64,
                    "connect_seconds": s.connect_time.as_secs_f64(),
                })
            })
            .collect();
        let json = serde_json::json!({
            "udp_loopback_mb_per_s": raw_mb,
            "ota_128k_mb_per_s": ota_small.mb_per_s(),
            "ota_1_5m_mb_per_s": ota_large.mb_per_s(),
            "ota_ratio_to_udp": ratio,
            "udp_loopback_ota_pattern_mb_per_s": raw_pattern_mb,
            "ota_ratio_to_udp_ota_pattern": ratio_pattern,
            "udp_loopback_ota_pattern": format!("as udp_loopback, with the OTA's window ({ota_window} datagrams) and ack interval (every {ota_ack_every})"),
            "udp_batched_mb_per_s": batched_mb,
            "udp_batched_wire_mb_per_s": batched.wire_mb_per_s(),
            "udp_batched_datagram_bytes": batched.sizes.chunk,
            "udp_batched_ack_bytes": batched.sizes.ack,
            "udp_batched_resent": batched.resent,
            "ota_ratio_to_batched_udp": ratio_batched,
            "udp_batched": format!("the OTA's pattern through the OTA's UDP driver (harness::net::udp: GSO bursts, GRO reads): {}-byte datagrams (the OTA's chunk records on the wire) at most {ota_window} unacknowledged, a {}-byte ack every {ota_ack_every} (its UpdateAck records), one thread; MB/s counts {RAW_DATAGRAM} chunk bytes per datagram as the OTA counts file bytes (wire bytes in udp_batched_wire_mb_per_s); ota_ratio_to_batched_udp is the headline ratio", batched.sizes.chunk, batched.sizes.ack),
            "ota_128k_bytes": ota_small.size,
            "ota_1_5m_bytes": ota_large.size,
            "ota_128k_seconds_to_committed": ota_small.to_committed.as_secs_f64(),
            "ota_1_5m_seconds_to_committed": ota_large.to_committed.as_secs_f64(),
            "ota_128k_retransmitted_chunks": ota_small.retransmitted_chunks,
            "ota_1_5m_retransmitted_chunks": ota_large.retransmitted_chunks,
            "virtual_seconds_per_wall_second": vsps,
            "virtual_128k_simulated_seconds": virt_small.simulated.as_secs_f64(),
            "virtual_128k_wall_seconds": virt_small.wall.as_secs_f64(),
            "virtual_1_5m_simulated_seconds": virt_large.simulated.as_secs_f64(),
            "virtual_1_5m_wall_seconds": virt_large.wall.as_secs_f64(),
            "virtual_1_5m_transfer_simulated_seconds": virt_large.transfer.0.as_secs_f64(),
            "virtual_1_5m_transfer_wall_seconds": virt_large.transfer.1.as_secs_f64(),
            "virtual_transfer_seconds_per_wall_second": virt_large.transfer.0.as_secs_f64() / virt_large.transfer.1.as_secs_f64().max(1e-9),
            "devices_connected": devices_connected,
            "bytes_per_device": bytes_per_device,
            "rss_before_devices_bytes": rss_base,
            "device_steps": steps_json,
            "board": BOARD,
            "mb": "10^6 bytes",
            "ota_mb_per_s": "file bytes / (UpdateStart sent -> every chunk acknowledged), cloud and device on one tokio thread, real UDP loopback, DTLS (AES-128-CCM-8), 512-byte chunks",
            "udp_loopback": "512-byte datagrams between two tokio UDP sockets on the same thread, window 64, a count ack every 16, one system call per datagram (the OTA's driver batches bursts with UDP GSO/GRO); bytes that arrived per second",
            "virtual_time": "the same OTA (flash -> succeeded, with the reboot) on the simulated network, simulated seconds / wall seconds",
            "devices": "DeviceOs instances each on its own UDP socket and tokio task, one cloud socket, one thread; RSS from /proc/self/status VmRSS",
            "quick": args.quick,
            "release_build": !cfg!(debug_assertions),
        });
        print(&format!("{json:#}\n"));
    } else {
        let mut out = format!("OTA benchmark on {BOARD}: one process, one tokio thread\n");
        if args.quick {
            out += "(--quick: tiny images and counts; the figures mean little)\n";
        }
        if cfg!(debug_assertions) {
            out += "(debug build: use --release for figures that mean something)\n";
        }
        out += &format!(
            "\n{:<44} {:>12}\n{:<44} {:>12.2}\n",
            "real UDP loopback", "MB/s", "raw UDP, 512-byte datagrams (window 64)", raw_mb
        );
        for o in [&ota_small, &ota_large] {
            out += &format!(
                "{:<44} {:>12.2}   ({:.2} s transfer, {:.2} s flash -> committed, {} resent)\n",
                format!("OTA over DTLS, {} KiB", o.size / 1024),
                o.mb_per_s(),
                o.transfer.as_secs_f64(),
                o.to_committed.as_secs_f64(),
                o.retransmitted_chunks
            );
        }
        out += &format!(
            "{:<44} {:>12.2}\n",
            format!("raw UDP, OTA pattern (window {ota_window}, ack/{ota_ack_every})"),
            raw_pattern_mb
        );
        out += &format!(
            "{:<44} {:>12.2}   ({} B datagrams, {} B acks, {:.2} MB/s on the wire)\n",
            "raw UDP, OTA pattern, batched (GSO/GRO)",
            batched_mb,
            batched.sizes.chunk,
            batched.sizes.ack,
            batched.wire_mb_per_s()
        );
        out += &format!("{:<44} {:>12.3}\n", "OTA / raw UDP", ratio);
        out += &format!(
            "{:<44} {:>12.3}\n",
            "OTA / raw UDP with the OTA's window and acks", ratio_pattern
        );
        out += &format!(
            "{:<44} {:>12.3}\n",
            "OTA / batched raw UDP, same pattern (headline)", ratio_batched
        );
        out += &format!("\n{:<44} {:>12}\n", "virtual time", "sim s/wall s");
        for v in [&virt_small, &virt_large] {
            out += &format!(
                "{:<44} {:>12.1}   ({:.1} simulated s in {:.3} wall s)\n",
                format!("OTA job, {} KiB (flash -> succeeded)", v.size / 1024),
                v.simulated.as_secs_f64() / v.wall.as_secs_f64().max(1e-9),
                v.simulated.as_secs_f64(),
                v.wall.as_secs_f64()
            );
            out += &format!(
                "{:<44} {:>12.2}   ({:.3} simulated s in {:.3} wall s)\n",
                "  of which the transfer (UpdateStart -> Finish)",
                v.transfer.0.as_secs_f64() / v.transfer.1.as_secs_f64().max(1e-9),
                v.transfer.0.as_secs_f64(),
                v.transfer.1.as_secs_f64()
            );
        }
        out += &format!(
            "\n{:<12} {:>10} {:>14} {:>16} {:>12}\n",
            "devices", "connected", "RSS MiB", "bytes/device", "connect s"
        );
        out += &format!(
            "{:<12} {:>10} {:>14.1}\n",
            "0 (cloud)",
            0,
            rss_base as f64 / 1048576.0
        );
        for s in &device_steps {
            out += &format!(
                "{:<12} {:>10} {:>14.1} {:>16.0} {:>12.2}\n",
                s.devices,
                s.connected,
                s.rss_bytes as f64 / 1048576.0,
                s.rss_bytes.saturating_sub(rss_base) as f64 / s.devices.max(1) as f64,
                s.connect_time.as_secs_f64()
            );
        }
        out += "
OTA MB/s:  file bytes / (the cloud's UpdateStart -> its UpdateFinish, every chunk acked);
           DTLS records, CoAP, the device's window (128 KiB) and acks (every 2 chunks or
           200 ms), sha/CRC and emulated flash writes, both sides on one thread. The job's
           start delays and the device's commit are in \"flash -> committed\" only.
raw UDP:   the same thread, two sockets, 512-byte datagrams, no crypto or protocol; the
           \"OTA pattern\" row keeps the device's window and its ack every 2 datagrams.
           The raw rows send and read one datagram per system call; the OTA's driver
           (harness::net::udp) sends a burst of equal-sized datagrams in one call (UDP GSO)
           and reads it in one (GRO) where Linux allows: same datagrams on the wire.
           The \"batched\" row goes through that same driver with the OTA's datagram and
           ack sizes, window and ack interval, and counts 512 chunk bytes per datagram:
           the fair reference, and the headline ratio.
virtual:   the whole job on the simulated network (1 ms latency, no bandwidth limit), seeded;
           sim seconds per wall second. The job's 1 s pending-event delay is idle virtual
           time, so the whole-job figure is high; the transfer row is the busy part.
devices:   real DeviceOs instances, each its own UDP socket and task, all connected to one
           cloud socket at the same time; bytes/device = (VmRSS - VmRSS before) / N, which
           includes the emulated flash (sparse), DTLS and CoAP state, and the tokio task.
";
        print(&out);
    }
    Ok(ExitCode::SUCCESS)
}

fn print(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// Bytes per second of raw 512-byte datagrams over loopback, at most `window` unacknowledged,
/// the receiver acknowledging its count every `ack_every` datagrams.
async fn raw_udp(total: u64, window: u64, ack_every: u64) -> Result<f64, String> {
    use tokio::net::UdpSocket;
    let io = |e: std::io::Error| format!("raw UDP: {e}");
    // Receive buffers as the cloud's socket has (harness::net::udp): a window of 256
    // datagrams sent in one burst must not overflow the default buffer and cost timeouts.
    let bound = || -> std::io::Result<UdpSocket> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        let _ = s.set_recv_buffer_size(4 << 20);
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        UdpSocket::from_std(s.into())
    };
    let rx = bound().map_err(io)?;
    let tx = bound().map_err(io)?;
    rx.connect(tx.local_addr().map_err(io)?).await.map_err(io)?;
    tx.connect(rx.local_addr().map_err(io)?).await.map_err(io)?;
    let count = total / RAW_DATAGRAM as u64;
    let receiver = async {
        let mut buf = vec![0u8; 2048];
        let mut got = 0u64;
        let mut bytes = 0u64;
        while got < count {
            match tokio::time::timeout(Duration::from_secs(2), rx.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    got += 1;
                    bytes += n as u64;
                    if got.is_multiple_of(ack_every) || got == count {
                        let _ = rx.send(&got.to_be_bytes()).await;
                    }
                }
                Ok(Err(_)) => continue,
                // The sender gave up (or lost datagrams it stopped resending).
                Err(_) => break,
            }
        }
        bytes
    };
    let sender = async {
        let payload = vec![0x5au8; RAW_DATAGRAM];
        let mut sent = 0u64;
        let mut acked = 0u64;
        let mut ack = [0u8; 8];
        while acked < count {
            while sent < count && sent - acked < window {
                if tx.send(&payload).await.is_ok() {
                    sent += 1;
                }
            }
            match tokio::time::timeout(Duration::from_millis(200), tx.recv(&mut ack)).await {
                Ok(Ok(8)) => acked = acked.max(u64::from_be_bytes(ack)),
                Ok(_) => {}
                // Lost datagrams: count the window again from what arrived.
                Err(_) => {
                    if sent == count {
                        break;
                    }
                    sent = acked;
                }
            }
        }
    };
    let start = Instant::now();
    let (bytes, ()) = tokio::join!(receiver, sender);
    let spent = start.elapsed();
    if bytes == 0 {
        return Err("raw UDP: nothing arrived".into());
    }
    Ok(bytes as f64 / spent.as_secs_f64().max(1e-9))
}

/// Sizes of the OTA's datagrams on the wire.
#[derive(Debug, Clone, Copy)]
struct WireSizes {
    /// An UpdateChunk record (512 file bytes).
    chunk: usize,
    /// An UpdateAck record.
    ack: usize,
}

/// The batched raw UDP row.
struct BatchedUdp {
    sizes: WireSizes,
    datagrams: u64,
    /// First datagram sent -> the last acknowledged, on the sender's clock.
    spent: Duration,
    /// Datagrams sent again after a silence.
    resent: u64,
}

impl BatchedUdp {
    /// Chunk bytes (512 a datagram) per second, as the OTA counts file bytes.
    fn goodput_mb_per_s(&self) -> f64 {
        (self.datagrams * RAW_DATAGRAM as u64) as f64 / self.spent.as_secs_f64().max(1e-9) / 1e6
    }

    fn wire_mb_per_s(&self) -> f64 {
        (self.datagrams * self.sizes.chunk as u64) as f64 / self.spent.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Silence after which the batched sender goes back to the last acknowledged datagram.
const BATCHED_SILENCE: Duration = Duration::from_millis(200);

/// The sending side of the batched raw row: a [`Node`] on the OTA's UDP driver. It starts
/// when the receiver says hello, keeps at most `window` datagrams unacknowledged (numbered in
/// their first 8 bytes) and goes back to the last acknowledged one after a silence.
struct RawSender {
    peer: Option<SocketAddr>,
    count: u64,
    window: u64,
    size: usize,
    sent: u64,
    acked: u64,
    resent: u64,
    last_progress: Duration,
    started: Option<Duration>,
    finished: Option<Duration>,
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
}

impl RawSender {
    fn fill(&mut self, now: Duration) {
        let Some(peer) = self.peer else { return };
        while self.sent < self.count && self.sent - self.acked < self.window {
            let mut datagram = vec![0x5a; self.size];
            datagram[..8].copy_from_slice(&self.sent.to_be_bytes());
            self.queue.push_back((peer, datagram));
            self.sent += 1;
            self.started.get_or_insert(now);
        }
    }
}

impl Node for RawSender {
    fn handle_datagram(&mut self, now: Duration, from: SocketAddr, data: &[u8]) {
        if self.peer.is_none() {
            // The receiver's hello.
            self.peer = Some(from);
            self.last_progress = now;
        } else if let Ok(ack) = <[u8; 8]>::try_from(data.get(..8).unwrap_or_default()) {
            let ack = u64::from_be_bytes(ack).min(self.count);
            if ack > self.acked {
                self.acked = ack;
                self.last_progress = now;
            }
            if self.acked == self.count && self.finished.is_none() {
                self.finished = Some(now);
            }
        }
        self.fill(now);
    }

    fn handle_timeout(&mut self, now: Duration) {
        self.last_progress = now;
        self.resent += self.sent - self.acked;
        self.sent = self.acked;
        self.fill(now);
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.queue.pop_front()
    }

    fn poll_timeout(&self) -> Option<Duration> {
        (self.peer.is_some() && self.acked < self.count)
            .then(|| self.last_progress + BATCHED_SILENCE)
    }
}

/// The receiving side: says hello, then acknowledges (with an ack of the OTA's ack size) the
/// datagrams it holds in order, every `ack_every` and at the last, and at once when one
/// arrives out of order (a loss).
struct RawReceiver {
    server: SocketAddr,
    count: u64,
    ack_every: u64,
    ack_size: usize,
    next: u64,
    hello: bool,
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
}

impl RawReceiver {
    fn ack(&mut self) {
        let mut ack = vec![0u8; self.ack_size.max(8)];
        ack[..8].copy_from_slice(&self.next.to_be_bytes());
        self.queue.push_back((self.server, ack));
    }
}

impl Node for RawReceiver {
    fn handle_datagram(&mut self, _now: Duration, _from: SocketAddr, data: &[u8]) {
        let Ok(seq) = <[u8; 8]>::try_from(data.get(..8).unwrap_or_default()) else {
            return;
        };
        if u64::from_be_bytes(seq) == self.next {
            self.next += 1;
            if self.next.is_multiple_of(self.ack_every) || self.next == self.count {
                self.ack();
            }
        } else {
            self.ack();
        }
    }

    fn handle_timeout(&mut self, _now: Duration) {}

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        if !self.hello {
            self.hello = true;
            return Some((self.server, b"hello".to_vec()));
        }
        self.queue.pop_front()
    }

    fn poll_timeout(&self) -> Option<Duration> {
        None
    }
}

/// `total` bytes of chunks in the OTA's pattern through the OTA's UDP driver (see the module
/// documentation).
async fn batched_udp(
    total: u64,
    sizes: WireSizes,
    window: u64,
    ack_every: u64,
) -> Result<BatchedUdp, String> {
    let io = |e: std::io::Error| format!("batched UDP: {e}");
    let count = total / RAW_DATAGRAM as u64;
    let sender = RawSender {
        peer: None,
        count,
        window,
        size: sizes.chunk.max(8),
        sent: 0,
        acked: 0,
        resent: 0,
        last_progress: Duration::ZERO,
        started: None,
        finished: None,
        queue: VecDeque::new(),
    };
    let sender = UdpNode::server(sender, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(io)?;
    let addr = sender.local_addr();
    let receiver = RawReceiver {
        server: addr,
        count,
        ack_every,
        ack_size: sizes.ack,
        next: 0,
        hello: false,
        queue: VecDeque::new(),
    };
    let receiver = UdpNode::client(receiver, addr).await.map_err(io)?;
    let done = sender
        .wait_for(Duration::from_secs(120), |s| s.finished.is_some())
        .await;
    let _ = receiver.shutdown().await;
    let sender = sender.shutdown().await.map_err(io)?;
    match (done, sender.started, sender.finished) {
        (true, Some(start), Some(end)) => Ok(BatchedUdp {
            sizes,
            datagrams: count,
            spent: end.saturating_sub(start),
            resent: sender.resent,
        }),
        _ => Err(format!(
            "batched UDP: {} of {count} datagrams acknowledged within 120 s",
            sender.acked
        )),
    }
}

/// A device of `board` running the baseline, and its identity (registered with `cloud`).
fn new_device(
    board: &Board,
    cloud: &mut Cloud,
    server_key: &p256::ecdsa::VerifyingKey,
    seed: u64,
) -> Result<(DeviceOs, [u8; 12]), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let key = harness::keys::generate_key(&mut rng);
    let mut device_id = [0u8; 12];
    rng.fill_bytes(&mut device_id);
    let (device, _) = FirmwareSet::new(board, ModuleSizes::default(), seed)
        .provision(&Versions::BASELINE)
        .map_err(|e| e.to_string())?;
    let identity = Identity {
        device_id,
        server_key: *server_key,
        key,
    };
    cloud.register_device(device_id, identity.public_key());
    Ok((
        DeviceOs::new(identity, device, AppBehaviour::default(), seed),
        device_id,
    ))
}

/// The user part of product version 4, `size` bytes.
fn image(board: &Board, size: u32, seed: u64) -> Result<Vec<u8>, String> {
    let versions = Versions {
        product_version: 4,
        ..Versions::BASELINE
    };
    FirmwareSet::new(board, ModuleSizes::default(), seed)
        .module(RegionKind::UserPart, &versions, size)
        .map_err(|e| e.to_string())
}

fn ota_event(
    events: &[(Duration, CloudEvent)],
    job: JobId,
    want: fn(&OtaEventKind) -> bool,
) -> Option<Duration> {
    events.iter().find_map(|(_, e)| match e {
        CloudEvent::Ota(OtaEvent {
            at, job: j, kind, ..
        }) if *j == job && want(kind) => Some(*at),
        _ => None,
    })
}

/// One OTA of a `size`-byte user part over real UDP loopback.
async fn udp_ota(board: &Board, size: u32, seed: u64) -> Result<UdpOta, String> {
    udp_ota_measured(board, size, seed, false)
        .await
        .map(|(ota, _)| ota)
}

/// [`udp_ota`], also measuring the sizes of the datagrams the transfer puts on the wire (a
/// capture on the cloud's socket: it costs time, so the figure of this run is not the one the
/// headline uses).
async fn udp_ota_sized(board: &Board, size: u32, seed: u64) -> Result<(UdpOta, WireSizes), String> {
    let (ota, sizes) = udp_ota_measured(board, size, seed, true).await?;
    sizes
        .map(|s| (ota, s))
        .ok_or_else(|| "the OTA over loopback put no chunk or ack on the wire".into())
}

async fn udp_ota_measured(
    board: &Board,
    size: u32,
    seed: u64,
    measure: bool,
) -> Result<(UdpOta, Option<WireSizes>), String> {
    let io = |e: std::io::Error| format!("UDP: {e}");
    let server_key = harness::keys::generate_key(&mut ChaCha8Rng::seed_from_u64(seed ^ 0xC10D));
    let mut cloud = Cloud::new(CloudConfig::new(server_key.clone()), seed);
    let (os, device_id) = new_device(board, &mut cloud, server_key.verifying_key(), seed)?;
    let file = image(board, size, seed)?;
    let loopback: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let cloud = UdpNode::server(CloudNode::new(cloud), loopback)
        .await
        .map_err(io)?;
    let addr = cloud.local_addr();
    let device = UdpNode::client(DeviceNode::new(os, addr), addr)
        .await
        .map_err(io)?;
    device.with_node(|n, now| {
        n.os.power_on(now);
        n.drain(now);
    });
    if !device
        .wait_for(Duration::from_secs(30), |n| n.os.status().connected)
        .await
    {
        return Err("the device did not connect over loopback within 30 s".into());
    }
    // (outgoing, size) -> datagrams, from the transfer on (the handshake is over).
    let histogram: Arc<Mutex<HashMap<(bool, usize), u64>>> = Arc::default();
    if measure {
        let seen = histogram.clone();
        cloud.capture(Box::new(move |src, _dst, data| {
            let outgoing = src.port() == addr.port();
            *seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry((outgoing, data.len()))
                .or_default() += 1;
        }));
    }
    // `perf record --control fifo:CTL -D -1` with HIL_PERF_CTL=CTL profiles only from here to
    // the commit (the transfer, the device's validation and commit).
    let perf = |command: &str| {
        if let Some(path) = std::env::var_os("HIL_PERF_CTL") {
            let _ = std::fs::write(path, command);
        }
    };
    perf("enable\n");
    let start = Instant::now();
    let job = cloud.with_node(|c, now| c.cloud.flash(now, device_id, file));
    // Checked after every pass of the cloud's driver, so only the events new since the last
    // check are looked at (a scan of all of them each time grew with the transfer and took
    // a third of its time).
    let mut seen = 0;
    let finished = cloud
        .wait_for(Duration::from_secs(600), |c| {
            let new = c.events.get(seen..).unwrap_or_default();
            seen = c.events.len();
            matches!(
                c.cloud.job(job),
                Some(JobStatus::Failed { .. }) | Some(JobStatus::Succeeded)
            ) || ota_event(new, job, |k| matches!(k, OtaEventKind::Committed { .. })).is_some()
        })
        .await;
    let to_committed = start.elapsed();
    perf("disable\n");
    let outcome = cloud.with_node(|c, _| {
        let started = ota_event(&c.events, job, |k| {
            matches!(k, OtaEventKind::Started { .. })
        });
        let finishing = ota_event(&c.events, job, |k| matches!(k, OtaEventKind::Finishing));
        // The whole file must have gone out: the device resumed at 0.
        let from_zero = c.events.iter().any(|(_, e)| {
            matches!(e, CloudEvent::Ota(OtaEvent {
                job: j,
                kind: OtaEventKind::Accepted { resume_offset: 0, .. },
                ..
            }) if *j == job)
        });
        let finishing = finishing.filter(|_| from_zero);
        let resent: usize = c
            .events
            .iter()
            .map(|(_, e)| match e {
                CloudEvent::Ota(OtaEvent {
                    job: j,
                    kind: OtaEventKind::Retransmitted { indices },
                    ..
                }) if *j == job => indices.len(),
                _ => 0,
            })
            .sum();
        (started, finishing, resent, c.cloud.job(job).cloned())
    });
    let _ = device.shutdown().await;
    let _ = cloud.shutdown().await;
    let sizes = {
        let histogram = histogram.lock().unwrap_or_else(|e| e.into_inner());
        // The most frequent size each way: the chunk records out, the UpdateAck records in.
        let most = |outgoing: bool| {
            histogram
                .iter()
                .filter(|((o, _), _)| *o == outgoing)
                .max_by_key(|((_, size), n)| (**n, *size))
                .map(|((_, size), _)| *size)
        };
        most(true)
            .zip(most(false))
            .map(|(chunk, ack)| WireSizes { chunk, ack })
    };
    match outcome {
        (Some(started), Some(finishing), resent, _) if finished => Ok((
            UdpOta {
                size,
                transfer: finishing.saturating_sub(started),
                to_committed,
                retransmitted_chunks: resent,
            },
            sizes,
        )),
        (_, _, _, status) => Err(format!(
            "the {size}-byte OTA over loopback did not complete (job {status:?})"
        )),
    }
}

/// The same OTA in virtual time: simulated time of the whole job against the wall time.
fn virtual_ota(board: &Board, size: u32, seed: u64) -> Result<VirtualOta, String> {
    let e = |e: harness::testbed::TestbedError| e.to_string();
    let mut bed = Testbed::new(seed).map_err(e)?;
    let dev = bed
        .add_device(&DeviceSpec::new(board.clone(), 3))
        .map_err(e)?;
    bed.power_on(dev).map_err(e)?;
    bed.run_until("device online", Duration::from_secs(60), |b| {
        b.status(dev).map(|s| s.connected).unwrap_or(false)
    })
    .map_err(e)?;
    let file = image(board, size, seed)?;
    let wall = Instant::now();
    let sim = bed.now();
    let job = bed.flash(dev, file).map_err(e)?;
    let has = |b: &Testbed, want: fn(&OtaEventKind) -> bool| {
        ota_event(b.cloud_events(), job, want).is_some()
    };
    bed.run_until("UpdateStart", Duration::from_secs(600), |b| {
        has(b, |k| matches!(k, OtaEventKind::Started { .. }))
    })
    .map_err(e)?;
    let transfer_wall = Instant::now();
    let transfer_sim = bed.now();
    bed.run_until("UpdateFinish", Duration::from_secs(3600), |b| {
        has(b, |k| matches!(k, OtaEventKind::Finishing))
    })
    .map_err(e)?;
    let transfer = (
        bed.now().saturating_sub(transfer_sim),
        transfer_wall.elapsed(),
    );
    bed.run_until("job finished", Duration::from_secs(3600), |b| {
        matches!(
            b.job(job),
            Some(JobStatus::Succeeded) | Some(JobStatus::Failed { .. })
        )
    })
    .map_err(e)?;
    let wall = wall.elapsed();
    if bed.job(job) != Some(JobStatus::Succeeded) {
        return Err(format!("the virtual-time OTA failed: {:?}", bed.job(job)));
    }
    Ok(VirtualOta {
        size,
        simulated: bed.now().saturating_sub(sim),
        wall,
        transfer,
    })
}

/// VmRSS of this process, in bytes (0 where /proc is not there).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Connects devices in steps (cumulative) to one cloud; the RSS before any device and after
/// each step.
async fn devices(board: &Board, steps: &[usize]) -> Result<(u64, Vec<DeviceStep>), String> {
    let io = |e: std::io::Error| format!("UDP: {e}");
    let server_key = harness::keys::generate_key(&mut ChaCha8Rng::seed_from_u64(0xDE71CE));
    let mut config = CloudConfig::new(server_key.clone());
    // Keepalives are the devices' business; a long idle timeout keeps a slow step from
    // dropping the first devices.
    config.idle_timeout = Some(Duration::from_secs(3600));
    let cloud = Cloud::new(config, 7);
    let cloud = UdpNode::server(CloudNode::new(cloud), SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(io)?;
    let addr = cloud.local_addr();
    // Nothing the steps keep should be counted in the base: the cloud's event log is emptied.
    cloud.with_node(|c, _| c.events.clear());
    let base = rss();
    let mut nodes = Vec::new();
    let mut out = Vec::new();
    for &target in steps {
        if rss() > RSS_LIMIT {
            break;
        }
        let start = Instant::now();
        while nodes.len() < target {
            let seed = 0x1000 + nodes.len() as u64;
            let (os, _) = cloud.with_node(|c, _| {
                new_device(board, &mut c.cloud, server_key.verifying_key(), seed)
            })?;
            let node = UdpNode::client(DeviceNode::new(os, addr), addr)
                .await
                .map_err(io)?;
            node.with_node(|n, now| {
                n.os.power_on(now);
                n.drain(now);
            });
            nodes.push(node);
        }
        let deadline = Duration::from_secs(60 + target as u64 / 10);
        for node in &nodes {
            let left = deadline.saturating_sub(start.elapsed());
            node.wait_for(left, |n| n.os.status().connected).await;
        }
        let connected = nodes
            .iter()
            .filter(|n| n.with_node(|n, _| n.os.status().connected))
            .count();
        // Events are not what a connected device costs.
        for node in &nodes {
            node.with_node(|n, _| n.events.clear());
        }
        cloud.with_node(|c, _| c.events.clear());
        out.push(DeviceStep {
            devices: nodes.len(),
            connected,
            rss_bytes: rss(),
            connect_time: start.elapsed(),
        });
        if connected < nodes.len() {
            break;
        }
    }
    for node in nodes {
        let _ = node.shutdown().await;
    }
    let _ = cloud.shutdown().await;
    Ok((base, out))
}
