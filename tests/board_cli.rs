//! The board commands as a user runs them: `hil device --serial-pty`, `hil rack status`,
//! `hil rack run` with reports, `hil trace diff`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn hil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hil"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hil-board-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn device_serial_pty_prints_a_port_that_answers_the_protocol() {
    let dir = tempdir("pty");
    let id = "0123456789abcdef01234567";
    for args in [
        vec!["keys", "server", "k", "--seed", "3"],
        vec!["keys", "device", "k", "--id", id],
    ] {
        assert!(hil()
            .args(&args)
            .current_dir(&dir)
            .status()
            .unwrap()
            .success());
    }
    let mut child = hil()
        .args([
            "device",
            "--server",
            "127.0.0.1:9",
            "--server-key",
            "k/server.pub.der",
            "--key",
            &format!("k/device-{id}.der"),
            "--id",
            id,
            "--platform",
            "boron",
            "--serial-pty",
        ])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut path = None;
    for _ in 0..10 {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(p) = line.trim().strip_prefix("serial: ") {
            path = Some(p.to_string());
            break;
        }
    }
    let path = path.expect("hil device printed `serial: PATH`");
    let mut port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    port.write_all(b"{\"id\":9,\"cmd\":\"hello\"}\n").unwrap();
    // Read until the reply (other lines, the boot line and events, may come first).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    while !seen.contains("\"id\":9") && Instant::now() < deadline {
        let n = port.read(&mut buf).unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let _ = child.kill();
    let _ = child.wait();
    let reply = seen
        .lines()
        .find(|l| l.contains("\"id\":9"))
        .unwrap_or_else(|| panic!("no reply in {seen:?}"));
    let v: serde_json::Value = serde_json::from_str(reply).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["hello"]["v"], 1);
    assert_eq!(v["hello"]["device_id"], id);
}

#[test]
fn rack_run_on_the_emulated_rack_matches_the_emulator_and_reports() {
    let dir = tempdir("rack");
    let status = hil()
        .args(["rack", "status", "--rack"])
        .arg(root().join("boards/rack.emulated.toml"))
        .output()
        .unwrap();
    assert!(status.status.success());
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(text.matches(" ok: serial ok").count(), 3, "{text}");

    let scenario = root().join("boards/scenarios/app-update.toml");
    let run = hil()
        .args(["rack", "run", "--rack"])
        .arg(root().join("boards/rack.emulated.toml"))
        .arg(&scenario)
        .arg("--junit")
        .arg(dir.join("rack.xml"))
        .arg("--json")
        .arg(dir.join("rack.json"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{out}");
    assert!(
        out.contains("1 passed, 0 failed, 0 skipped, 0 infrastructure errors"),
        "{out}"
    );
    let junit = std::fs::read_to_string(dir.join("rack.xml")).unwrap();
    assert!(junit.contains("errors=\"0\""), "{junit}");

    let emu = hil()
        .arg("run")
        .arg(&scenario)
        .arg("--json")
        .arg(dir.join("emu.json"))
        .output()
        .unwrap();
    assert!(emu.status.success());
    let diff = hil()
        .args(["trace", "diff"])
        .arg(dir.join("emu.json"))
        .arg(dir.join("rack.json"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&diff.stdout);
    assert!(diff.status.success(), "{out}");
    assert!(out.contains("score 1.000: no difference"), "{out}");

    // An unreadable report: exit 2 with the file named.
    let bad = hil()
        .args(["trace", "diff"])
        .arg(dir.join("emu.json"))
        .arg(dir.join("rack.xml"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("rack.xml: not JSON"));
}
