//! `hil cloud` as a lab service over real UDP on loopback, separate processes (issue 13, "Done
//! means"): a cloud restarted under ten connected devices resumes their sessions within one
//! keepalive and the next flash works; a key added while it runs lets its device in; a
//! refused impostor leaves the victim's session up. Every wait has a timeout; children are
//! always killed.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const HIL: &str = env!("CARGO_BIN_EXE_hil");
const LIMIT: Duration = Duration::from_secs(60);

/// A child process killed when dropped, its stdout lines on a channel.
struct Proc {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(args: &[String]) -> Proc {
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

    /// Waits for a line containing every one of `needles`, among the lines already read
    /// (in any order) or still to come.
    fn wait_line(&mut self, needles: &[&str], deadline: Instant) -> String {
        if let Some(line) = self
            .seen
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return line.clone();
        }
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

    /// Every line printed until `until`.
    fn collect_until(&mut self, until: Instant) {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => return,
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

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

fn id_of(n: usize) -> String {
    format!("0123456789abcdef0123{n:04x}")
}

struct Lab {
    dir: PathBuf,
    keys: PathBuf,
    udp: String,
    control: String,
}

impl Lab {
    fn new(name: &str) -> Lab {
        let dir = std::env::temp_dir().join(format!("hil-lab-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let keys = dir.join("keys");
        hil(&["keys", "server", &s(&keys), "--seed", "1"]);
        Lab {
            dir,
            keys,
            udp: format!("127.0.0.1:{}", free_udp_port()),
            control: format!("127.0.0.1:{}", free_tcp_port()),
        }
    }

    fn device_key(&self, keys: &Path, n: usize) {
        hil(&[
            "keys",
            "device",
            &s(keys),
            "--id",
            &id_of(n),
            "--seed",
            &(100 + n).to_string(),
        ]);
    }

    fn cloud(&self, extra: &[&str]) -> Proc {
        let mut args: Vec<String> = [
            "cloud",
            "--listen",
            &self.udp,
            "--keys",
            &s(&self.keys),
            "--control",
            &self.control,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        Proc::spawn(&args)
    }

    /// An Argon (Wi-Fi) device with a short keepalive, its key from `keys`.
    fn device(&self, keys: &Path, key_of: usize, id: usize) -> Proc {
        let args: Vec<String> = [
            "device".to_string(),
            "--server".into(),
            self.udp.clone(),
            "--server-key".into(),
            s(&self.keys.join("server.pub.der")),
            "--key".into(),
            s(&keys.join(format!("device-{}.der", id_of(key_of)))),
            "--id".into(),
            id_of(id),
            "--platform".into(),
            "argon".into(),
            "--keepalive".into(),
            "2s".into(),
            "--user-part-size".into(),
            "8192".into(),
        ]
        .to_vec();
        Proc::spawn(&args)
    }

    fn app_v4(&self) -> PathBuf {
        let app = self.dir.join("app-v4.bin");
        hil(&[
            "module",
            "build",
            "--board",
            "argon",
            "--function",
            "user",
            "--size",
            "8KiB",
            "--product-version",
            "4",
            "--depends",
            "system-part1>=6200",
            "-o",
            &s(&app),
        ]);
        app
    }

    fn flash(&self, id: &str, file: &Path) -> std::process::ExitStatus {
        Command::new(HIL)
            .args(["flash", "--cloud", &self.control, "--timeout", "40s", id])
            .arg(file)
            .status()
            .expect("run hil flash")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn online(id: &str) -> [String; 2] {
    [format!("stream {id} spark/status"), "\"online\"".into()]
}

#[test]
fn a_restarted_cloud_resumes_ten_devices_within_one_keepalive_and_the_next_flash_works() {
    let lab = Lab::new("restart");
    for n in 0..10 {
        lab.device_key(&lab.keys, n);
    }
    let state = s(&lab.dir.join("state"));
    let deadline = Instant::now() + LIMIT;
    let mut cloud = lab.cloud(&["--state", &state]);
    cloud.wait_line(&["cloud listening"], deadline);
    let _devices: Vec<Proc> = (0..10).map(|n| lab.device(&lab.keys, n, n)).collect();
    for n in 0..10 {
        let [a, b] = online(&id_of(n));
        cloud.wait_line(&[&a, &b], deadline);
    }
    // Past the save interval of sessions (500 ms), then the cloud dies without a word.
    std::thread::sleep(Duration::from_millis(1500));
    drop(cloud);
    let mut cloud = lab.cloud(&["--state", &state]);
    let restored = cloud.wait_line(&["device sessions restored"], deadline);
    assert!(restored.contains(": 10 device sessions"), "{restored}");
    cloud.wait_line(&["cloud listening"], deadline);
    // One keepalive (2 s) plus the devices' ping answer: every device is back, resumed.
    let back = Instant::now() + Duration::from_secs(4);
    for n in 0..10 {
        let [a, b] = online(&id_of(n));
        cloud.wait_line(&[&a, &b], back);
    }
    for line in &cloud.seen {
        assert!(
            !line.contains("connected") || line.contains("disconnected"),
            "a device made a new handshake instead of resuming: {line}"
        );
    }
    assert!(cloud.seen.iter().any(|l| l.contains("resumed")));
    let app = lab.app_v4();
    let status = lab.flash(&id_of(3), &app);
    assert_eq!(status.code(), Some(0), "{}", cloud.seen.join("\n"));
    cloud.wait_line(&["hello", &id_of(3), "product version 4"], deadline);
}

#[test]
fn a_key_added_while_the_cloud_runs_lets_its_device_in_and_a_removed_key_closes_it() {
    let lab = Lab::new("keys");
    let elsewhere = lab.dir.join("elsewhere");
    lab.device_key(&elsewhere, 7);
    let deadline = Instant::now() + LIMIT;
    let mut cloud = lab.cloud(&[]);
    cloud.wait_line(&["cloud listening", "0 device keys"], deadline);
    let _device = lab.device(&elsewhere, 7, 7);
    // Refused and said so, with the key's fingerprint.
    let refused = cloud.wait_line(&["handshake refused", "key "], deadline);
    assert!(refused.contains("not registered"), "{refused}");
    // The key dropped into the directory is registered within a second or so.
    let id = id_of(7);
    for ext in ["pub.der", "pub.pem"] {
        std::fs::copy(
            elsewhere.join(format!("device-{id}.{ext}")),
            lab.keys.join(format!("device-{id}.{ext}")),
        )
        .expect("copy the key");
    }
    cloud.wait_line(&["key added for", &id], deadline);
    let [a, b] = online(&id);
    cloud.wait_line(&[&a, &b], deadline);
    // Removed through the control endpoint: the session ends.
    let mut stream = TcpStream::connect(&lab.control).expect("control endpoint");
    writeln!(stream, "{{\"remove_key\": {{\"device\": \"{id}\"}}}}").expect("send");
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .expect("answer");
    assert!(answer.contains("removed"), "{answer}");
    cloud.wait_line(&["session", &id, "disconnected"], deadline);
    // And hil flash now says the device is unknown (exit 5).
    let app = lab.app_v4();
    assert_eq!(lab.flash(&id, &app).code(), Some(5));
}

#[test]
fn a_refused_impostor_leaves_the_victims_session_up() {
    let lab = Lab::new("impostor");
    lab.device_key(&lab.keys, 1);
    let deadline = Instant::now() + LIMIT;
    let mut cloud = lab.cloud(&[]);
    cloud.wait_line(&["cloud listening"], deadline);
    let victim = id_of(1);
    let _device = lab.device(&lab.keys, 1, 1);
    let [a, b] = online(&victim);
    cloud.wait_line(&[&a, &b], deadline);
    // Device 1's key, device 2's id.
    let _impostor = lab.device(&lab.keys, 1, 2);
    let refused = cloud.wait_line(&["handshake refused", &id_of(2)], deadline);
    assert!(
        refused.contains(&format!("with the key of {victim}")),
        "{refused}"
    );
    // Three keepalives later the victim never went offline.
    cloud.collect_until(Instant::now() + Duration::from_secs(6));
    for line in &cloud.seen {
        assert!(
            !(line.contains(&victim)
                && (line.contains("disconnected") || line.contains("offline"))),
            "the impostor disturbed the victim: {line}\n{}",
            cloud.seen.join("\n")
        );
    }
    let app = lab.app_v4();
    assert_eq!(lab.flash(&victim, &app).code(), Some(0));
}

#[test]
fn flash_times_out_for_an_offline_device_and_cannot_reach_a_missing_cloud() {
    let lab = Lab::new("flash");
    lab.device_key(&lab.keys, 4);
    let app = lab.app_v4();
    // No cloud at all: 4.
    assert_eq!(lab.flash(&id_of(4), &app).code(), Some(4));
    let deadline = Instant::now() + LIMIT;
    let mut cloud = lab.cloud(&[]);
    cloud.wait_line(&["cloud listening"], deadline);
    // A registered device that never comes online: 3 after the timeout.
    let started = Instant::now();
    let status = Command::new(HIL)
        .args([
            "flash",
            "--cloud",
            &lab.control,
            "--timeout",
            "1s",
            &id_of(4),
        ])
        .arg(&app)
        .status()
        .expect("run hil flash");
    assert_eq!(status.code(), Some(3));
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_device_says_each_coap_retransmission_while_the_cloud_is_gone() {
    let lab = Lab::new("retries");
    lab.device_key(&lab.keys, 5);
    let deadline = Instant::now() + LIMIT;
    let mut cloud = lab.cloud(&[]);
    cloud.wait_line(&["cloud listening"], deadline);
    let mut device = lab.device(&lab.keys, 5, 5);
    let [a, b] = online(&id_of(5));
    cloud.wait_line(&[&a, &b], deadline);
    drop(cloud);
    // The next confirmable message gets no ACK (the keepalive ping, 2 s, or on a loaded
    // machine a message of the post-connect sequence still unacknowledged when the cloud went):
    // one line per retransmission, naming the message, its id, the attempt and the next delay.
    let second = device.wait_line(&["no ACK from the cloud", "attempt 2"], deadline);
    let named = second
        .split(": ")
        .nth(1)
        .and_then(|r| r.split(" (message id").next())
        .unwrap_or("");
    assert!(
        !named.is_empty() && named != "a message",
        "the line names no CoAP message: {second}"
    );
    assert!(second.contains("next retry in"), "{second}");
    let mid = second
        .split("message id ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .expect("a message id")
        .to_string();
    let id = format!("message id {mid})");
    device.wait_line(&[&id, "attempt 3"], deadline);
    let lines: Vec<&String> = device.seen.iter().filter(|l| l.contains(&id)).collect();
    assert_eq!(lines.len(), 2, "one line per retransmission: {lines:#?}");
    assert!(
        !device.seen.iter().any(|l| l.contains("datagrams")),
        "{}",
        device.seen.join("\n")
    );
}

#[test]
fn flash_prints_a_status_line_only_when_something_changes() {
    let lab = Lab::new("flash-lines");
    lab.device_key(&lab.keys, 6);
    let deadline = Instant::now() + LIMIT;
    let mut cloud = lab.cloud(&[]);
    cloud.wait_line(&["cloud listening"], deadline);
    let _device = lab.device(&lab.keys, 6, 6);
    let [a, b] = online(&id_of(6));
    cloud.wait_line(&[&a, &b], deadline);
    let app = lab.app_v4();
    let out = Command::new(HIL)
        .args([
            "flash",
            "--cloud",
            &lab.control,
            "--timeout",
            "40s",
            &id_of(6),
        ])
        .arg(&app)
        .output()
        .expect("run hil flash");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.last().is_some_and(|l| l.contains("succeeded")),
        "{text}"
    );
    for pair in lines.windows(2) {
        assert_ne!(pair[0], pair[1], "a line printed again unchanged:\n{text}");
    }
    // Progress at most once per tenth of the chunks, each other status once.
    let transferring = lines.iter().filter(|l| l.contains("transferring")).count();
    assert!(transferring <= 11, "{text}");
    assert!(lines.len() <= transferring + 8, "{text}");
}

/// `hil module build` for the Argon: `function` at `version`, with `extra` arguments.
fn device_os_module(
    lab: &Lab,
    name: &str,
    function: &str,
    version: &str,
    extra: &[&str],
) -> PathBuf {
    let file = lab.dir.join(name);
    let mut args = vec![
        "module",
        "build",
        "--board",
        "argon",
        "--function",
        function,
        "--version",
        version,
    ];
    args.extend_from_slice(extra);
    let out = s(&file);
    args.extend_from_slice(&["-o", &out]);
    hil(&args);
    file
}

#[test]
fn a_system_part_and_a_bootloader_flashed_over_udp_run_and_the_app_still_runs() {
    let lab = Lab::new("device-os");
    lab.device_key(&lab.keys, 8);
    let id = id_of(8);
    let deadline = Instant::now() + LIMIT;
    let mut cloud = lab.cloud(&[]);
    cloud.wait_line(&["cloud listening"], deadline);
    let mut device = lab.device(&lab.keys, 8, 8);
    let [a, b] = online(&id);
    cloud.wait_line(&[&a, &b], deadline);
    // System part 1 v6300 (needs the bootloader the device has, 3100).
    let system = device_os_module(
        &lab,
        "system-6300.bin",
        "system",
        "6300",
        &["--depends", "bootloader:0:3100", "--size", "64KiB"],
    );
    let status = lab.flash(&id, &system);
    assert_eq!(
        status.code(),
        Some(0),
        "device:\n{}\ncloud:\n{}",
        device.seen.join("\n"),
        cloud.seen.join("\n")
    );
    // The device's own view after its reboot: the new system part, the app running.
    let booted = device.wait_line(&["booted", "system part 6300"], deadline);
    assert!(booted.contains("running"), "{booted}");
    assert!(booted.contains("product version 3"), "{booted}");
    cloud.wait_line(
        &["hello", &id, "product version 3", "system version 6300"],
        deadline,
    );
    // The bootloader, through the bootloader's own apply path.
    let bootloader = device_os_module(&lab, "bootloader-3101.bin", "bootloader", "3101", &[]);
    let status = lab.flash(&id, &bootloader);
    assert_eq!(
        status.code(),
        Some(0),
        "device:\n{}\ncloud:\n{}",
        device.seen.join("\n"),
        cloud.seen.join("\n")
    );
    let booted = device.wait_line(&["booted", "bootloader 3101"], deadline);
    assert!(booted.contains("running"), "{booted}");
    assert!(booted.contains("system part 6300"), "{booted}");
    assert!(booted.contains("product version 3"), "{booted}");
}
