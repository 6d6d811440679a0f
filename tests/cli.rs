//! End-to-end tests of the `hil` command line, as a user runs it.

use std::path::PathBuf;
use std::process::Command;

fn hil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hil"))
}

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("protocol/tests/vectors/modules")
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hil-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn module_inspect_json_reads_what_particles_parser_reads_from_every_vector() {
    let expected = std::fs::read_to_string(vectors().join("expected.jsonl")).unwrap();
    for line in expected.lines().filter(|l| !l.trim().is_empty()) {
        let want: serde_json::Value = serde_json::from_str(line).unwrap();
        let file = want["file"].as_str().unwrap();
        let out = hil()
            .args(["module", "inspect", "--json"])
            .arg(vectors().join(file))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for key in [
            "size",
            "crcValid",
            "crc",
            "start",
            "end",
            "flags",
            "func",
            "index",
            "version",
            "platform",
            "deps",
            "productId",
            "productVersion",
            "suffixSize",
            "sha",
        ] {
            assert_eq!(got[key], want[key], "{file}: {key}");
        }
    }
}

#[test]
fn module_build_makes_a_module_inspect_accepts() {
    let dir = tempdir("build");
    let out_file = dir.join("app.bin");
    let out = hil()
        .args([
            "module",
            "build",
            "--board",
            "boron",
            "--function",
            "user",
            "--version",
            "7",
            "--depends",
            "system-part1>=6200",
            "--size",
            "96KiB",
            "--product-version",
            "4",
            "-o",
        ])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::metadata(&out_file).unwrap().len(), 96 * 1024);
    let out = hil()
        .args(["module", "inspect", "--json"])
        .arg(&out_file)
        .output()
        .unwrap();
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["crcValid"], true);
    assert_eq!(got["platform"], 13);
    assert_eq!(got["func"], 5);
    assert_eq!(got["index"], 2);
    assert_eq!(got["version"], 7);
    assert_eq!(got["start"], "0xb4000");
    assert_eq!(got["deps"], serde_json::json!([4, 1, 6200, 0, 0, 0]));
    assert_eq!(got["productVersion"], 4);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn module_inspect_names_the_problem_in_a_truncated_file() {
    let dir = tempdir("truncated");
    let data = std::fs::read(vectors().join("tracker-tinker@5.3.1.bin")).unwrap();
    let cut = dir.join("cut.bin");
    std::fs::write(&cut, &data[..data.len() / 2]).unwrap();
    let out = hil()
        .args(["module", "inspect"])
        .arg(&cut)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cut.bin"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn sweep_command_reports_every_case_without_failures() {
    let out = hil()
        .args(["sweep", "--board", "p2", "--user-kib", "8", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cases = report.as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        assert!(case["window_ops"].as_u64().unwrap() > 0);
        assert_eq!(case["failures"].as_array().unwrap().len(), 0, "{case}");
    }
}

#[test]
fn boards_lists_every_builtin_board() {
    let out = hil().arg("boards").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["boron", "argon", "bsom", "b5som", "tracker", "p2", "msom"] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}

#[test]
fn a_broken_board_file_is_an_error_naming_the_field() {
    let dir = tempdir("board");
    let text = emulator::board::Board::builtin_toml("boron")
        .unwrap()
        .replace(
            "end = 0x000F4000\nmodule = { function = 5, index = 2 }",
            "end = 0x000F5000\nmodule = { function = 5, index = 2 }",
        );
    let file = dir.join("bad.toml");
    std::fs::write(&file, text).unwrap();
    let out = hil()
        .args(["boards", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("user_part"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn cloud_refuses_a_device_os_folder_with_a_file_that_is_not_a_module() {
    let dir = tempdir("device-os");
    let keys = dir.join("keys");
    let out = hil()
        .args(["keys", "server"])
        .arg(&keys)
        .args(["--seed", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let modules = dir.join("device-os");
    std::fs::create_dir_all(&modules).unwrap();
    std::fs::write(modules.join("notes.txt"), b"not a module").unwrap();
    let out = hil()
        .args(["cloud", "--listen", "127.0.0.1:0", "--keys"])
        .arg(&keys)
        .arg("--device-os")
        .arg(&modules)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("notes.txt") && stderr.contains("not a module file"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
}
