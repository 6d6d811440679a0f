//! The command line as a user meets it (issue 14 and the module interfaces of issue 12): exit
//! codes, messages, limits, no Rust debug text, quiet ends on closed pipes, reports — each
//! through the real binary.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use protocol::module::{ModuleBuilder, ModuleFunction};

fn hil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hil"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hil-cli-user-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Rust debug renderings a person should never see.
fn assert_no_debug_text(what: &str, out: &str) {
    for needle in [
        "Some(",
        "None)",
        "JobId(",
        "RunningVersions {",
        "FlashGeometry {",
        "UserPartDependencyUnmet",
        "code none",
        "panicked",
    ] {
        assert!(!out.contains(needle), "{what} shows {needle:?}:\n{out}");
    }
}

fn inspect(file: &Path) -> Output {
    hil()
        .args(["module", "inspect"])
        .arg(file)
        .output()
        .unwrap()
}

fn build(args: &[&str], out: &Path) -> Output {
    hil()
        .args(["module", "build"])
        .args(args)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

fn inspect_json(file: &Path) -> serde_json::Value {
    let out = hil()
        .args(["module", "inspect", "--json"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn module_inspect_exits_1_on_a_bad_crc_and_sha_showing_stored_and_computed() {
    let dir = tempdir("corrupt");
    let vector = root().join("protocol/tests/vectors/modules/p2-tinker@5.3.1.bin");
    let mut data = std::fs::read(vector).unwrap();
    data[1000] ^= 0x01;
    let file = dir.join("flipped.bin");
    std::fs::write(&file, &data).unwrap();
    let out = inspect(&file);
    assert_eq!(out.status.code(), Some(1));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stdout.contains("crc32 d1209425 (INVALID, computed "),
        "{stdout}"
    );
    assert!(stdout.contains("sha256 8c01420e"), "{stdout}");
    assert!(
        stderr.contains("stored CRC-32 d1209425, computed "),
        "{stderr}"
    );
    assert!(stderr.contains("stored SHA-256 8c01420e"), "{stderr}");
    // The untouched vector passes both checks.
    let ok = inspect(&root().join("protocol/tests/vectors/modules/p2-tinker@5.3.1.bin"));
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn module_inspect_of_an_empty_file_says_empty_file() {
    let dir = tempdir("empty");
    let file = dir.join("empty.bin");
    std::fs::write(&file, b"").unwrap();
    let out = inspect(&file);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("empty.bin: empty file"), "{err}");
    assert!(!err.contains("no modules were given"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn module_inspect_names_the_offsets_it_tried_when_it_finds_no_prefix() {
    let dir = tempdir("noise");
    let file = dir.join("noise.bin");
    std::fs::write(&file, vec![0xA5u8; 4096]).unwrap();
    let out = inspect(&file);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("tried byte offsets 0x0, 0x200, 0x184, 0xc0, 0x10c"),
        "{err}"
    );
    assert!(
        err.contains("every 4-byte-aligned offset from 0x4 to 0xfc0"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn module_inspect_finds_the_prefix_of_gen2_core_and_unusual_offsets_as_particle_does() {
    let dir = tempdir("offsets");
    for (platform, head, name) in [
        (6u16, 0x184usize, "photon-system-part"),
        (10, 0x184, "electron-system-part"),
        (0, 0x10C, "core"),
        (103, 0xC0, "bluz"),
        (13, 0x400, "boron-odd-offset"),
    ] {
        let module = ModuleBuilder::new(ModuleFunction::SystemPart, platform)
            .index(1)
            .version(1102)
            .start_address(0x0802_0000)
            .vector_table(head)
            .body(vec![0x3c; 2000])
            .build()
            .unwrap();
        let file = dir.join(format!("{name}.bin"));
        std::fs::write(&file, &module).unwrap();
        let got = inspect_json(&file);
        assert_eq!(got["prefixOffset"], head, "{name}");
        assert_eq!(got["platform"], platform, "{name}");
        assert_eq!(got["crcValid"], true, "{name}");
        assert_eq!(got["shaValid"], true, "{name}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn module_build_refuses_sizes_that_cannot_work_with_the_boards_limit() {
    let dir = tempdir("sizes");
    let out_file = dir.join("app.bin");
    let base = ["--board", "boron", "--function", "user", "--size"];
    for (size, want) in [
        ("1MiB", "holds at most 262144 bytes (256 KiB"),
        ("0", "is at least"),
        ("10", "is at least"),
    ] {
        let mut args = base.to_vec();
        args.push(size);
        let out = build(&args, &out_file);
        assert_eq!(out.status.code(), Some(2), "--size {size}");
        let err = text(&out.stderr);
        assert!(err.contains(want), "--size {size}: {err}");
        assert!(err.contains("boron user part"), "--size {size}: {err}");
        assert!(!out_file.exists(), "--size {size} wrote a file");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn module_build_product_id_defaults_to_the_platform_id_as_help_says() {
    let dir = tempdir("product");
    let file = dir.join("app.bin");
    let out = build(&["--board", "p2", "--function", "user"], &file);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = inspect_json(&file);
    assert_eq!(got["productId"], 32);
    assert_eq!(got["productVersion"], 65535);
    let help = hil().args(["module", "build", "--help"]).output().unwrap();
    let help = text(&help.stdout);
    assert!(help.contains("defaults to the platform id"), "{help}");
    assert!(help.contains("--product-version is the product"), "{help}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn module_build_takes_platform_index_and_both_dependency_spellings() {
    let dir = tempdir("forms");
    let file = dir.join("system.bin");
    let out = build(
        &[
            "--platform",
            "13",
            "--function",
            "system",
            "--index",
            "1",
            "--version",
            "6200",
            "--depends",
            "bootloader:0:3100",
            "--depends",
            "radio-stack>=182",
            "--size",
            "400KiB",
        ],
        &file,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = inspect_json(&file);
    assert_eq!(got["platform"], 13);
    assert_eq!(got["func"], 4);
    assert_eq!(got["index"], 1);
    assert_eq!(got["prefixOffset"], 0x200);
    assert_eq!(got["deps"], serde_json::json!([2, 0, 3100, 8, 0, 182]));

    let file = dir.join("app.bin");
    let out = build(
        &[
            "--platform",
            "tracker",
            "--function",
            "user",
            "--depends",
            "system:1:6200",
        ],
        &file,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = inspect_json(&file);
    assert_eq!(got["platform"], 26);
    assert_eq!(got["deps"], serde_json::json!([4, 1, 6200, 0, 0, 0]));

    // A platform that is not a built-in board, and an index the board has no module for.
    let out = build(&["--platform", "photon", "--function", "user"], &file);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("platform 6 (photon) is not one of the built-in boards"),
        "{err}"
    );
    let out = build(
        &["--board", "p2", "--function", "user", "--index", "7"],
        &file,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("p2 has no user part with index 7"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn output_for_people_has_no_rust_debug_text() {
    let demo = hil().arg("demo").output().unwrap();
    assert!(demo.status.success(), "{}", text(&demo.stderr));
    let out = text(&demo.stdout);
    assert_no_debug_text("hil demo", &out);
    assert!(out.contains("the OTA job succeeded"), "{out}");
    assert!(out.contains("applied user part 2 v6"), "{out}");
    assert!(out.contains("ota job 1 "), "{out}");

    let boards = hil().args(["boards", "boron"]).output().unwrap();
    let out = text(&boards.stdout);
    assert_no_debug_text("hil boards boron", &out);
    assert!(out.contains("user part 2"), "{out}");
    assert!(!out.contains("module 5/2"), "{out}");

    let field = hil()
        .args(["run", "--trace"])
        .arg(root().join("fixtures/field/example-safe-mode-after-update.toml"))
        .output()
        .unwrap();
    let out = text(&field.stdout);
    assert_no_debug_text("hil run --trace", &out);
    assert!(
        out.contains("safe mode: the user part needs system part 1 version 6200, installed 5800"),
        "{out}"
    );
}

/// Runs `args` with stdout a pipe whose reader goes away at once, as `| head -0` does.
fn with_closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    let mut child = hil()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code(), err)
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    let (_, err) = with_closed_stdout(&["sweep", "--board", "p2", "--user-kib", "8", "--json"]);
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    let (_, err) = with_closed_stdout(&["boards"]);
    assert!(!err.contains("panicked"), "{err}");
    let dir = tempdir("pipe-keys");
    let keys = dir.join("keys");
    let made = hil()
        .args(["keys", "server"])
        .arg(&keys)
        .args(["--seed", "1"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    let keys = keys.to_string_lossy().into_owned();
    let (_, err) = with_closed_stdout(&["keys", "list", &keys]);
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn sweep_shows_plain_progress_lines_on_stderr_when_not_on_a_terminal() {
    let out = hil()
        .args([
            "sweep",
            "--board",
            "p2",
            "--user-kib",
            "8",
            "--case",
            "user-part",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("hil sweep: [1/1] p2/user-part: a cut at every flash operation"),
        "{err}"
    );
    // stdout keeps only the report.
    assert!(!text(&out.stdout).contains("[1/1]"));
}

#[test]
fn run_refuses_a_bad_junit_path_before_running_anything() {
    let out = hil()
        .args(["run", "--junit", "/nonexistent-folder/out.xml"])
        .arg(root().join("fixtures/deferred-reset.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("/nonexistent-folder/out.xml: cannot write the JUnit report"),
        "{err}"
    );
    // Nothing ran: no progress line, no summary.
    assert!(!err.contains("[1/1]"), "{err}");
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn run_labels_virtual_time_and_junit_time_is_wall_time() {
    let dir = tempdir("junit");
    let junit = dir.join("out.xml");
    let out = hil()
        .args(["run", "--junit"])
        .arg(&junit)
        .arg(root().join("fixtures/deferred-reset.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let header = stdout.lines().next().unwrap();
    assert!(header.contains("virtual time"), "{stdout}");
    // Not a terminal: plain progress lines on stderr.
    let err = text(&out.stderr);
    assert!(err.contains("hil run: [1/1]"), "{err}");
    // The scenario waits 30 virtual minutes; the run takes far less wall time.
    let xml = std::fs::read_to_string(&junit).unwrap();
    let time_of = |tag: &str| -> f64 {
        let at = xml.find(tag).unwrap();
        let rest = &xml[at..];
        let t = rest.find(" time=\"").unwrap() + 7;
        rest[t..t + rest[t..].find('"').unwrap()].parse().unwrap()
    };
    assert!(time_of("<testsuites") < 600.0, "{xml}");
    assert!(time_of("<testcase") < 600.0, "{xml}");
    assert!(
        xml.contains("<property name=\"target_seconds\" value=\"1801."),
        "{xml}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn check_reports_every_problem_of_a_file() {
    let dir = tempdir("every");
    let file = dir.join("three.toml");
    std::fs::write(
        &file,
        "board = \"boron\"\ncolour = \"red\"\n[firmware]\ndevice_os = \"6.2.0\"\napp = 3\n\
         [[step]]\ndo = \"wait.state\"\nstate = \"onlin\"\n\
         [[step]]\ndo = \"cloud.flash\"\napp = 4\n\
         [[step]]\ndo = \"wait.evnt\"\n",
    )
    .unwrap();
    let out = hil().arg("check").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let f = file.display();
    for want in [
        format!("{f}:2:1: the scenario: unknown field `colour`"),
        format!("{f}:8:9: step 1 (wait.state): `state`: unknown value \"onlin\""),
        format!("{f}:13:6: unknown step `wait.evnt`"),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_scenarios_cloud_device_id_is_the_emulated_devices_id() {
    let dir = tempdir("device-id");
    let file = dir.join("id.toml");
    std::fs::write(
        &file,
        "board = \"boron\"\n[firmware]\ndevice_os = \"6.2.0\"\napp = 3\n\
         [[cloud.device]]\nid = \"e00fce68ece1d3d21a73dcc9\"\n\
         [[step]]\ndo = \"wait.state\"\nstate = \"online\"\ntimeout = \"1m\"\n",
    )
    .unwrap();
    let out = hil().args(["run", "--trace"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let trace = text(&out.stdout);
    assert!(
        trace.contains("session e00fce68ece1d3d21a73dcc9 connected"),
        "{trace}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// The `hil` lines of the shell blocks of a Markdown file.
fn hil_commands(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    for block in markdown.split("```sh\n").skip(1) {
        let body = block.split("```").next().unwrap_or("");
        let mut line = String::new();
        for raw in body.lines() {
            let raw = raw.split(" # ").next().unwrap_or("").trim_end();
            if let Some(cont) = raw.strip_suffix('\\') {
                line.push_str(cont);
                continue;
            }
            line.push_str(raw);
            let l = line.trim().to_string();
            line.clear();
            if l.starts_with("hil ") {
                out.push(l);
            }
        }
    }
    out
}

#[test]
fn every_hil_command_in_the_readmes_names_a_real_subcommand_and_real_files() {
    for doc in ["README.md", "fixtures/README.md"] {
        let text = std::fs::read_to_string(root().join(doc)).unwrap();
        let commands = hil_commands(&text);
        assert!(!commands.is_empty(), "{doc}");
        for command in commands {
            assert!(
                !command.contains('['),
                "{doc}: `{command}` cannot be pasted"
            );
            let words: Vec<&str> = command.split_whitespace().collect();
            let help = hil().arg(words[1]).arg("--help").output().unwrap();
            assert!(help.status.success(), "{doc}: `{command}`");
            for word in words.iter().filter(|w| w.starts_with("fixtures/")) {
                assert!(root().join(word).exists(), "{doc}: `{command}`: no {word}");
            }
        }
    }
}
