//! What the API tests share: `hil` processes killed when dropped, a scratch directory with
//! keys, tokens and app binaries, and the "skipped unless HIL_REQUIRE_INTEROP=1" rule for the
//! external clients (curl, node).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub const HIL: &str = env!("CARGO_BIN_EXE_hil");
pub const DEVICE: &str = "0123456789abcdef01234567";
/// Unscoped.
pub const TOKEN: &str = "0123456789abcdef0123456789abcdef01234567";
/// Scoped to product 2000 only.
pub const OTHER_PRODUCT_TOKEN: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
/// Scoped to the device only.
pub const DEVICE_TOKEN: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// Whether `tool args` runs; without it: a failure under `HIL_REQUIRE_INTEROP=1`, otherwise
/// `skipped: <tool> not found` and false.
pub fn require_tool(tool: &str, args: &[&str]) -> bool {
    let found = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("HIL_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
            panic!("{tool} not found and HIL_REQUIRE_INTEROP=1");
        }
        println!("skipped: {tool} not found");
    }
    found
}

/// `npm install` of `package` into `folder` (under the test target directory), with `files`
/// copied from `tests/{folder}/` first; reused when already installed. `None`: skipped (the
/// install failed), a panic under `HIL_REQUIRE_INTEROP=1`.
pub fn npm_install(folder: &str, files: &[&str], package: &str) -> Option<PathBuf> {
    let dest = Path::new(env!("CARGO_TARGET_TMPDIR")).join(folder);
    std::fs::create_dir_all(&dest).expect("test folder");
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(folder);
    for file in files {
        std::fs::copy(source.join(file), dest.join(file)).expect("copy the script");
    }
    if dest
        .join("node_modules")
        .join(package)
        .join("package.json")
        .exists()
    {
        return Some(dest);
    }
    let out = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dest)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Some(dest),
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).to_string(),
                Err(e) => e.to_string(),
            };
            if std::env::var("HIL_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
                panic!("npm install {package} failed: {why}");
            }
            println!("skipped: {package} could not be installed ({why})");
            None
        }
    }
}

/// A child process killed when dropped, its stdout lines on a channel.
pub struct Proc {
    child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
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
    pub fn wait_line(&mut self, needles: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
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

pub fn hil(args: &[&str]) {
    let out = Command::new(HIL).args(args).output().expect("run hil");
    assert!(
        out.status.success(),
        "hil {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free TCP port")
        .port()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A scratch directory with server and device keys, a token file (the three tokens above),
/// and Boron apps `app-v3.bin`, `app-v4.bin`, `app-v5.bin` (PRODUCT_VERSION 3, 4, 5).
pub fn lab(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hil-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let keys = dir.join("keys");
    hil(&["keys", "server", s(&keys), "--seed", "1"]);
    hil(&["keys", "device", s(&keys), "--id", DEVICE, "--seed", "2"]);
    for v in ["3", "4", "5"] {
        hil(&[
            "module",
            "build",
            "--board",
            "boron",
            "--function",
            "user",
            "--size",
            "8KiB",
            "--product-version",
            v,
            "-o",
            s(&dir.join(format!("app-v{v}.bin"))),
        ]);
    }
    let tokens = format!(
        "[[token]]\ntoken = \"{TOKEN}\"\n\n[[token]]\ntoken = \"{OTHER_PRODUCT_TOKEN}\"\n\
         products = [2000]\n\n[[token]]\ntoken = \"{DEVICE_TOKEN}\"\ndevices = [\"{DEVICE}\"]\n"
    );
    std::fs::write(dir.join("tokens.toml"), tokens).expect("token file");
    dir
}

/// `hil cloud --api` on free ports with the lab's keys, tokens and `state/`; extra arguments
/// appended. Returns the process, the UDP address and the API base URL.
pub fn start_cloud(dir: &Path, extra: &[&str]) -> (Proc, String, String) {
    let udp = format!("127.0.0.1:{}", free_udp_port());
    let control = format!("127.0.0.1:{}", free_tcp_port());
    let api = format!("127.0.0.1:{}", free_tcp_port());
    let keys = dir.join("keys");
    let tokens = dir.join("tokens.toml");
    let state = dir.join("state");
    let mut args = vec![
        "cloud",
        "--listen",
        &udp,
        "--keys",
        s(&keys),
        "--control",
        &control,
        "--api",
        &api,
        "--token-file",
        s(&tokens),
        "--state",
        s(&state),
    ];
    args.extend_from_slice(extra);
    let mut cloud = Proc::spawn(&args);
    cloud.wait_line(&["api on http://"], Duration::from_secs(20));
    (cloud, udp, format!("http://{api}"))
}

/// `hil device` for the lab's device, running app v3, state in `dev-state/`.
pub fn start_device(dir: &Path, server: &str) -> Proc {
    let keys = dir.join("keys");
    Proc::spawn(&[
        "device",
        "--server",
        server,
        "--server-key",
        s(&keys.join("server.pub.der")),
        "--key",
        s(&keys.join(format!("device-{DEVICE}.der"))),
        "--id",
        DEVICE,
        "--platform",
        "boron",
        "--app-version",
        "3",
        "--state",
        s(&dir.join("dev-state")),
    ])
}
