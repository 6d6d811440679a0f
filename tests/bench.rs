//! `hil bench dtls` and `hil bench power-cut` as a user runs them: smoke tests of the commands
//! and their JSON (never a timing assertion: the figures depend on the machine).

use std::process::Command;

#[test]
fn bench_dtls_quick_json_reports_the_four_figures() {
    let out = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args(["bench", "dtls", "--json", "--quick"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "ours_handshakes_per_s",
        "theirs_handshakes_per_s",
        "ours_mb_per_s",
        "theirs_mb_per_s",
    ] {
        let value = json[key].as_f64();
        assert!(
            value.is_some_and(|v| v.is_finite() && v > 0.0),
            "{key}: {value:?} in {json:#}"
        );
    }
}

#[test]
fn bench_dtls_text_names_both_implementations() {
    let out = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args(["bench", "dtls", "--quick"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["full handshakes per second", "MB/s", "ours", "dtls crate"] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[test]
fn bench_dtls_refuses_a_nonsense_duration() {
    let out = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args(["bench", "dtls", "--seconds=0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seconds"));
}

#[test]
fn bench_power_cut_quick_json_reports_cut_points_per_second_per_case() {
    let out = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args(["bench", "power-cut", "--json", "--quick"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cut_points = json["cut_points"].as_u64().unwrap_or(0);
    assert!(cut_points > 0, "{json:#}");
    for key in ["seconds", "cut_points_per_second"] {
        let value = json[key].as_f64();
        assert!(
            value.is_some_and(|v| v.is_finite() && v > 0.0),
            "{key}: {value:?} in {json:#}"
        );
    }
    let cases = json["cases"].as_array().expect("cases");
    let names: Vec<&str> = cases.iter().filter_map(|c| c["case"].as_str()).collect();
    assert_eq!(names, ["boron/user-part", "boron/system-part"]);
    let sum: u64 = cases.iter().filter_map(|c| c["cut_points"].as_u64()).sum();
    assert_eq!(sum, cut_points);
    for c in cases {
        assert_eq!(c["failures"].as_array().map(Vec::len), Some(0), "{c:#}");
    }
}
