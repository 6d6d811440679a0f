//! Over real UDP on loopback with separate processes: `hil cloud`, `hil device` (app v3,
//! persistent state), `hil flash` of app v4; then the device restarted from its state comes up
//! running v4 (issue 4, "Done means"). Every wait has a timeout; children are always killed.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const HIL: &str = env!("CARGO_BIN_EXE_hil");
const ID: &str = "0123456789abcdef01234567";
const LIMIT: Duration = Duration::from_secs(60);

/// A child process killed when dropped, its stdout lines on a channel.
struct Proc {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(HIL)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start hil");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing every one of `needles`.
    fn wait_line(&mut self, needles: &[&str], deadline: Instant) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if needles.iter().all(|n| line.contains(n)) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {needles:?} in time; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hil(args: &[&str]) -> std::process::Output {
    let out = Command::new(HIL).args(args).output().expect("run hil");
    assert!(
        out.status.success(),
        "hil {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free TCP port")
        .port()
}

fn start_cloud(keys: &Path) -> (Proc, String, String) {
    start_cloud_with(keys, &[])
}

fn start_cloud_with(keys: &Path, extra: &[&str]) -> (Proc, String, String) {
    let udp = format!("127.0.0.1:{}", free_udp_port());
    let control = format!("127.0.0.1:{}", free_tcp_port());
    let keys = keys.to_str().expect("utf-8 path");
    let mut args = vec![
        "cloud",
        "--listen",
        &udp,
        "--keys",
        keys,
        "--control",
        &control,
    ];
    args.extend_from_slice(extra);
    let cloud = Proc::spawn(&args);
    (cloud, udp, control)
}

fn start_device(keys: &Path, state: &Path, server: &str) -> Proc {
    start_device_with(keys, state, server, &[])
}

fn start_device_with(keys: &Path, state: &Path, server: &str, extra: &[&str]) -> Proc {
    let k = |name: &str| keys.join(name).to_str().expect("utf-8 path").to_string();
    let mut args = vec![
        "device",
        "--server",
        server,
        "--server-key",
        &k("server.pub.der"),
        "--key",
        &k(&format!("device-{ID}.der")),
        "--id",
        ID,
        "--platform",
        "boron",
        "--app-version",
        "3",
        "--state",
        state.to_str().expect("utf-8 path"),
    ]
    .into_iter()
    .map(str::to_string)
    .collect::<Vec<_>>();
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn(&args)
}

#[test]
fn ota_over_udp_between_processes_and_the_update_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("hil-udp-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let keys = dir.join("keys");
    let state = dir.join("state");
    let app = dir.join("app-v4.bin");
    let dir_s = keys.to_str().expect("utf-8 path");
    hil(&["keys", "server", dir_s, "--seed", "1"]);
    hil(&["keys", "device", dir_s, "--id", ID, "--seed", "2"]);
    hil(&[
        "module",
        "build",
        "--board",
        "boron",
        "--function",
        "user",
        "--size",
        "24KiB",
        "--product-version",
        "4",
        "--depends",
        "system-part1>=6200",
        "-o",
        app.to_str().expect("utf-8 path"),
    ]);
    let deadline = Instant::now() + LIMIT;
    {
        let (mut cloud, udp, control) = start_cloud(&keys);
        cloud.wait_line(&["cloud listening"], deadline);
        let _device = start_device(&keys, &state, &udp);
        cloud.wait_line(&["hello", ID, "product version 3"], deadline);
        let mut flash = Command::new(HIL)
            .args(["flash", "--cloud", &control, ID])
            .arg(&app)
            .spawn()
            .expect("run hil flash");
        let status = loop {
            if let Some(s) = flash.try_wait().expect("wait for hil flash") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = flash.kill();
                panic!(
                    "hil flash did not finish; cloud:\n{}",
                    cloud.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            status.success(),
            "hil flash: {status}\n{}",
            cloud.seen.join("\n")
        );
        cloud.wait_line(&["hello", ID, "product version 4"], deadline);
    }
    // Both processes are gone: start them again, the device from its saved flash.
    let deadline = Instant::now() + LIMIT;
    let (mut cloud, udp, _) = start_cloud(&keys);
    cloud.wait_line(&["cloud listening"], deadline);
    let mut device = start_device(&keys, &state, &udp);
    device.wait_line(&["loaded the flash image"], deadline);
    cloud.wait_line(&["hello", ID, "product version 4"], deadline);
    drop(device);
    drop(cloud);
    let _ = std::fs::remove_dir_all(&dir);
}

/// tshark, or `None` (and a note) when it is missing; a missing tshark fails the test when
/// `HIL_REQUIRE_INTEROP=1` (as in CI).
fn tshark() -> Option<&'static str> {
    let found = Command::new("tshark")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("tshark");
    }
    assert!(
        std::env::var("HIL_REQUIRE_INTEROP").as_deref() != Ok("1"),
        "tshark not found and HIL_REQUIRE_INTEROP=1"
    );
    eprintln!("skipped: tshark not found (the decrypted capture is still checked by parsing)");
    None
}

/// (message id, code, uri path) of every CoAP message in a decrypted capture, by our parser.
fn coap_messages(pcap: &Path) -> Vec<(u16, String, String)> {
    let bytes = std::fs::read(pcap).expect("read the decrypted capture");
    harness::pcap::read_udp(&bytes)
        .expect("a pcap file")
        .iter()
        .map(|p| {
            let m = protocol::coap::Message::parse(&p.payload)
                .unwrap_or_else(|e| panic!("a decrypted datagram is not CoAP: {e}"));
            let path: Vec<String> = m
                .option_values(11)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            (m.message_id, m.code.to_string(), path.join("/"))
        })
        .collect()
}

#[test]
fn pcaps_of_an_ota_decrypt_to_every_coap_message_and_tshark_dissects_them() {
    let dir = std::env::temp_dir().join(format!("hil-pcap-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let keys = dir.join("keys");
    let state = dir.join("state");
    let app = dir.join("app-v4.bin");
    let path = |name: &str| dir.join(name).to_str().expect("utf-8 path").to_string();
    let dir_s = keys.to_str().expect("utf-8 path");
    hil(&["keys", "server", dir_s, "--seed", "1"]);
    hil(&["keys", "device", dir_s, "--id", ID, "--seed", "2"]);
    hil(&[
        "module",
        "build",
        "--board",
        "boron",
        "--function",
        "user",
        "--size",
        "24KiB",
        "--product-version",
        "4",
        "--depends",
        "system-part1>=6200",
        "-o",
        app.to_str().expect("utf-8 path"),
    ]);
    let deadline = Instant::now() + LIMIT;
    let (cloud_pcap, device_pcap, keylog) =
        (path("cloud.pcap"), path("device.pcap"), path("keys.log"));
    let port;
    {
        let (mut cloud, udp, control) =
            start_cloud_with(&keys, &["--pcap", &cloud_pcap, "--keylog", &keylog]);
        port = udp.rsplit(':').next().expect("a port").to_string();
        cloud.wait_line(&["cloud listening"], deadline);
        let _device = start_device_with(&keys, &state, &udp, &["--pcap", &device_pcap]);
        cloud.wait_line(&["hello", ID, "product version 3"], deadline);
        let out = Command::new(HIL)
            .args(["flash", "--cloud", &control, ID])
            .arg(&app)
            .output()
            .expect("run hil flash");
        assert!(out.status.success(), "hil flash: {}", cloud.seen.join("\n"));
        cloud.wait_line(&["hello", ID, "product version 4"], deadline);
    }
    for (capture, who) in [(&cloud_pcap, "cloud"), (&device_pcap, "device")] {
        let plain = path(&format!("{who}-plain.pcap"));
        let out = hil(&[
            "pcap", "decrypt", capture, "--keylog", &keylog, "-o", &plain,
        ]);
        let summary = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            summary.contains(" 0 records not decrypted"),
            "{who}: {summary}"
        );
        let ours = coap_messages(Path::new(&plain));
        let count = |p: &str| ours.iter().filter(|(_, _, path)| path == p).count();
        // Both directions of the whole session: Hello, describe, UpdateStart, every chunk
        // (24 KiB in 512-byte chunks), UpdateFinish, the acks, and the Hello after the reboot.
        assert!(count("h") >= 2, "{who}: Hello before and after: {ours:?}");
        assert!(count("d") >= 1, "{who}: describe");
        assert_eq!(count("S"), 1, "{who}: one UpdateStart");
        assert!(count("C") >= 48, "{who}: {} chunks", count("C"));
        assert_eq!(count("F"), 1, "{who}: one UpdateFinish");
        assert!(
            ours.iter().any(|(_, code, _)| code.starts_with("2.")),
            "{who}: responses"
        );
        let Some(tshark) = tshark() else {
            continue;
        };
        let out = Command::new(tshark)
            .args(["-r", &plain, "-d", &format!("udp.port=={port},coap")])
            .args(["-T", "fields", "-e", "coap.mid", "-e", "coap.opt.uri_path"])
            .output()
            .expect("run tshark");
        assert!(
            out.status.success(),
            "tshark: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: Vec<u16> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                l.split('\t')
                    .next()
                    .and_then(|mid| mid.trim().parse().ok())
                    .unwrap_or_else(|| {
                        panic!("{who}: tshark did not dissect a CoAP message: {l:?}")
                    })
            })
            .collect();
        let mids: Vec<u16> = ours.iter().map(|(mid, _, _)| *mid).collect();
        assert_eq!(
            theirs, mids,
            "{who}: tshark sees every CoAP message, in order"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
