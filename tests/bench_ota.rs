//! `hil bench ota` as a user runs it: a smoke test of the command and its JSON (never a timing
//! assertion: the figures depend on the machine).

use std::process::Command;

#[test]
fn bench_ota_quick_json_reports_positive_figures() {
    let out = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args(["bench", "ota", "--json", "--quick"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "udp_loopback_mb_per_s",
        "ota_128k_mb_per_s",
        "ota_1_5m_mb_per_s",
        "ota_ratio_to_udp",
        "udp_loopback_ota_pattern_mb_per_s",
        "ota_ratio_to_udp_ota_pattern",
        "udp_batched_mb_per_s",
        "ota_ratio_to_batched_udp",
        "virtual_seconds_per_wall_second",
        "devices_connected",
        "bytes_per_device",
    ] {
        let value = json[key].as_f64();
        assert!(
            value.is_some_and(|v| v.is_finite() && v > 0.0),
            "{key}: {value:?} in {json:#}"
        );
    }
    assert_eq!(json["quick"], serde_json::Value::Bool(true));
}

#[test]
fn bench_ota_text_says_what_the_figures_include() {
    let out = Command::new(env!("CARGO_BIN_EXE_hil"))
        .args(["bench", "ota", "--quick"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "raw UDP",
        "raw UDP, OTA pattern (window 256, ack/2)",
        "OTA / raw UDP with the OTA's window and acks",
        "OTA / batched raw UDP, same pattern (headline)",
        "OTA over DTLS",
        "sim s/wall s",
        "bytes/device",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}
