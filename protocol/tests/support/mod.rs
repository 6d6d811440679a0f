//! Helpers shared by the interop tests: fixtures, the rule for external tools, child processes
//! that cannot outlive a test, a client driver over a real UDP socket, and a pcap writer.
#![allow(dead_code)] // each test crate uses a different part of this module

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use protocol::dtls::{Client, Event};
use rand_chacha::ChaCha8Rng;

pub fn vector_path(name: &str) -> String {
    format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub fn read(name: &str) -> Vec<u8> {
    std::fs::read(vector_path(name)).unwrap()
}

/// The environment variable CI sets so that a missing external tool fails the interop tests
/// instead of skipping them.
pub const REQUIRE_ENV: &str = "HIL_REQUIRE_INTEROP";

/// Whether the external `tool` can be run (`tool args` exits 0). Without it: panics when
/// `HIL_REQUIRE_INTEROP=1`, otherwise prints `skipped: <tool> not found` and returns false.
pub fn require_tool(tool: &str, args: &[&str]) -> bool {
    let found = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_ENV}=1 but `{tool}` was not found on PATH (CI installs it in .ci/run)");
    }
    // Straight to the process's stderr, past libtest's capture, so that `cargo test` shows it.
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {tool} not found (set {REQUIRE_ENV}=1 to make this a failure)"
    );
    false
}

/// A child process that is killed when dropped, so a failing test never leaves it running.
pub struct Guarded(pub Option<Child>);

impl Guarded {
    pub fn spawn(cmd: &mut Command) -> Guarded {
        Guarded(Some(
            cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")),
        ))
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }

    /// Waits at most `limit` for the process to exit by itself, then kills it; returns its
    /// output and whether it exited by itself.
    pub fn finish(mut self, limit: Duration) -> (Output, bool) {
        let mut child = self.0.take().unwrap();
        let start = Instant::now();
        let exited = loop {
            if let Ok(Some(_)) = child.try_wait() {
                break true;
            }
            if start.elapsed() >= limit {
                let _ = child.kill();
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let status = child.wait().unwrap();
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_end(&mut stdout);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_end(&mut stderr);
        }
        (
            Output {
                status,
                stdout,
                stderr,
            },
            exited,
        )
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `cmd` to completion with a time limit (killed and reported as a failure past it).
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Guarded::spawn(cmd);
    // Read the pipes on threads so that a chatty tool never blocks on a full pipe.
    let mut out = child.child().stdout.take().unwrap();
    let mut err = child.child().stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let (output, exited) = child.finish(limit);
    let stdout = out_thread.join().unwrap();
    let stderr = err_thread.join().unwrap();
    assert!(exited, "{cmd:?} did not finish within {limit:?}");
    Output {
        status: output.status,
        stdout,
        stderr,
    }
}

/// A free UDP port on 127.0.0.1 (bound and released; good enough for a test).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a client over a connected `socket` until `on_event` returns true or `limit` passes;
/// returns its events. `sent` sees every datagram as it goes out.
pub fn drive_client(
    client: &mut Client<ChaCha8Rng>,
    socket: &UdpSocket,
    start: Instant,
    limit: Duration,
    mut on_event: impl FnMut(&mut Client<ChaCha8Rng>, &Event) -> bool,
) -> Vec<Event> {
    drive_client_recording(client, socket, start, limit, &mut |_, _| {}, &mut on_event)
}

/// [`drive_client`] that also reports each datagram: `(true, bytes)` sent, `(false, bytes)`
/// received.
pub fn drive_client_recording(
    client: &mut Client<ChaCha8Rng>,
    socket: &UdpSocket,
    start: Instant,
    limit: Duration,
    record: &mut dyn FnMut(bool, &[u8]),
    on_event: &mut dyn FnMut(&mut Client<ChaCha8Rng>, &Event) -> bool,
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut buf = [0u8; 2048];
    while start.elapsed() < limit {
        let mut stop = false;
        while let Some(e) = client.poll_event() {
            stop |= on_event(client, &e);
            events.push(e);
            if stop {
                break;
            }
        }
        while let Some(d) = client.poll_transmit() {
            record(true, &d);
            socket.send(&d).unwrap();
        }
        if stop {
            return events;
        }
        let wait = client
            .poll_timeout()
            .map(|t| t.saturating_sub(start.elapsed()))
            .unwrap_or(Duration::from_millis(50))
            .clamp(Duration::from_millis(1), Duration::from_millis(50));
        socket.set_read_timeout(Some(wait)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => {
                record(false, &buf[..n]);
                client.handle_datagram(start.elapsed(), &buf[..n]);
            }
            Err(_) => client.handle_timeout(start.elapsed()),
        }
    }
    events
}

/// A classic pcap file (microsecond timestamps, Ethernet link type) of IPv4/UDP datagrams,
/// built by hand: the datagrams a test sent, for tshark to read.
pub struct Pcap {
    bytes: Vec<u8>,
    ip_id: u16,
}

impl Default for Pcap {
    fn default() -> Self {
        Self::new()
    }
}

impl Pcap {
    pub fn new() -> Pcap {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic, microseconds
        bytes.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
        bytes.extend_from_slice(&4u16.to_le_bytes());
        bytes.extend_from_slice(&0i32.to_le_bytes()); // thiszone
        bytes.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        bytes.extend_from_slice(&65535u32.to_le_bytes()); // snaplen
        bytes.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
        Pcap { bytes, ip_id: 0 }
    }

    /// Appends one UDP datagram from `src` to `dst` (both IPv4) at `time` since the epoch.
    pub fn push(&mut self, time: Duration, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
            panic!("the pcap writer only does IPv4");
        };
        let udp_len = 8 + payload.len();
        let ip_len = 20 + udp_len;
        let mut frame = Vec::with_capacity(14 + ip_len);
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]); // destination MAC (locally administered)
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]); // source MAC
        frame.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
        let mut ip = Vec::with_capacity(20);
        ip.push(0x45); // version 4, 5 words
        ip.push(0);
        ip.extend_from_slice(&(ip_len as u16).to_be_bytes());
        ip.extend_from_slice(&self.ip_id.to_be_bytes());
        self.ip_id = self.ip_id.wrapping_add(1);
        ip.extend_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
        ip.push(64); // TTL
        ip.push(17); // UDP
        ip.extend_from_slice(&[0, 0]); // checksum, below
        ip.extend_from_slice(&src.ip().octets());
        ip.extend_from_slice(&dst.ip().octets());
        let checksum = internet_checksum(&ip);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&src.port().to_be_bytes());
        frame.extend_from_slice(&dst.port().to_be_bytes());
        frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]); // UDP checksum: none (allowed over IPv4)
        frame.extend_from_slice(payload);

        self.bytes
            .extend_from_slice(&(time.as_secs() as u32).to_le_bytes());
        self.bytes
            .extend_from_slice(&time.subsec_micros().to_le_bytes());
        self.bytes
            .extend_from_slice(&(frame.len() as u32).to_le_bytes());
        self.bytes
            .extend_from_slice(&(frame.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(&frame);
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

fn internet_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A directory under the system temp dir for one test's files.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hil-interop-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// PEM armour (RFC 7468) around DER, e.g. "PRIVATE KEY" (PKCS#8) or "PUBLIC KEY" (SPKI).
pub fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
