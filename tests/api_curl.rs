//! `hil cloud --api` as a real process, driven with curl as a release script would (issue 9):
//! auth failures that change nothing, a scoped token refused outside its scope, an upload whose
//! version does not match the binary, upload with the `binary` part and the token as a form
//! field, release to the default and to groups, lock and unlock (`null` as JSON and as text),
//! a flash to an offline device, the event stream, and everything still there after a restart
//! from `--state`. Without curl: `skipped: curl not found` (a failure under
//! `HIL_REQUIRE_INTEROP=1`).

mod api_support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api_support::*;
use serde_json::Value;

/// Runs curl with `args` against `url`; returns the status and the body as JSON (Null when
/// the body is empty).
fn curl(url: &str, args: &[&str]) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("curl printed a status");
    let status = code.trim().parse().expect("a status code");
    let json = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    };
    (status, json)
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

const JSON: &str = "Content-Type: application/json";

fn firmware_versions(base: &str) -> Vec<u64> {
    let (status, list) = curl(
        &format!("{base}/v1/products/1000/firmware"),
        &["-H", &bearer(TOKEN)],
    );
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .expect("an array")
        .iter()
        .map(|f| f["version"].as_u64().expect("a version"))
        .collect()
}

fn device(base: &str) -> Value {
    let (status, d) = curl(
        &format!("{base}/v1/products/1000/devices/{DEVICE}"),
        &["-H", &bearer(TOKEN)],
    );
    assert_eq!(status, 200, "{d}");
    d
}

#[test]
fn a_release_script_with_curl_and_a_restart() {
    if !require_tool("curl", &["--version"]) {
        return;
    }
    let dir = lab("api-curl");
    let (cloud, _udp, base) = start_cloud(&dir, &[]);
    let app = |v: u8| format!("@{}", s(&dir.join(format!("app-v{v}.bin"))));

    // No token, a wrong token: Particle's bodies, nothing created.
    let create = ["-X", "POST", "-d", "id=1000", "-d", "platform=boron"];
    let (status, body) = curl(&format!("{base}/v1/products"), &create);
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request");
    assert_eq!(body["error_description"], "The access token was not found");
    let wrong = bearer(&"c".repeat(40));
    let (status, body) = curl(
        &format!("{base}/v1/products"),
        &[&create[..], &["-H", &wrong]].concat(),
    );
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_token");
    let (_, list) = curl(&format!("{base}/v1/products"), &["-H", &bearer(TOKEN)]);
    assert_eq!(list["products"], serde_json::json!([]), "{list}");

    // Product 1000 with the device; a scoped token cannot create products.
    let (status, body) = curl(
        &format!("{base}/v1/products"),
        &[&create[..], &["-d", "name=trackers", "-H", &bearer(TOKEN)]].concat(),
    );
    assert_eq!(status, 201, "{body}");
    let (status, _) = curl(
        &format!("{base}/v1/products"),
        &[&create[..], &["-H", &bearer(OTHER_PRODUCT_TOKEN)]].concat(),
    );
    assert_eq!(status, 403);
    let (status, body) = curl(
        &format!("{base}/v1/products/1000/devices?access_token={TOKEN}"),
        &[
            "-X",
            "POST",
            "-H",
            JSON,
            "-d",
            &format!("{{\"id\":\"{DEVICE}\"}}"),
        ],
    );
    assert_eq!((status, &body["updated"]), (200, &Value::from(1)), "{body}");

    // Outside its scope a token gets 403 and changes nothing.
    let upload4 = ["-X", "POST", "-F", "version=4", "-F", "title=v4", "-F"];
    let (status, body) = curl(
        &format!("{base}/v1/products/1000/firmware"),
        &[
            &upload4[..],
            &[
                &format!("file={}", app(4)),
                "-H",
                &bearer(OTHER_PRODUCT_TOKEN),
            ],
        ]
        .concat(),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "Permission Denied");
    assert!(firmware_versions(&base).is_empty());

    // The version given must be the binary's PRODUCT_VERSION.
    let (status, body) = curl(
        &format!("{base}/v1/products/1000/firmware"),
        &[
            "-X",
            "POST",
            "-H",
            &bearer(TOKEN),
            "-F",
            "version=5",
            "-F",
            "title=wrong",
            "-F",
            &format!("file={}", app(4)),
        ],
    );
    assert_eq!(status, 400);
    let text = body["error_description"].as_str().unwrap_or_default();
    assert!(text.contains("PRODUCT_VERSION is 4"), "{body}");
    assert!(firmware_versions(&base).is_empty());

    // Upload as firmware-upload-action does (part `binary`), token as a form field.
    for v in [4u8, 5] {
        let (status, body) = curl(
            &format!("{base}/v1/products/1000/firmware"),
            &[
                "-X",
                "POST",
                "-F",
                &format!("access_token={TOKEN}"),
                "-F",
                &format!("version={v}"),
                "-F",
                &format!("title=v{v}"),
                "-F",
                &format!("binary={};type=application/octet-stream", app(v)),
            ],
        );
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["version"], v);
        assert_eq!(body["uploaded_by"]["username"], "hil");
    }
    assert_eq!(firmware_versions(&base), vec![4, 5]);

    // The product stream sees the release.
    let mut stream = Command::new("curl")
        .args(["-sSN", "--max-time", "20", "-H", &bearer(TOKEN)])
        .arg(format!(
            "{base}/v1/products/1000/events/particle%2Ffirmware"
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl for the stream");

    // Release 4 as the default (form, groups[] too), 5 to group beta (JSON).
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = curl(
        &format!("{base}/v1/products/1000/firmware/release"),
        &[
            "-X",
            "PUT",
            "-H",
            &bearer(TOKEN),
            "-d",
            "version=4",
            "-d",
            "product_default=true",
            "-d",
            "groups[]=eu",
            "-d",
            "groups[]=us",
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["product_default"], true);
    assert_eq!(body["groups"], serde_json::json!(["eu", "us"]));
    let (status, body) = curl(
        &format!("{base}/v1/products/1000/firmware/release"),
        &[
            "-X",
            "PUT",
            "-H",
            &bearer(TOKEN),
            "-H",
            JSON,
            "-d",
            r#"{"version":5,"groups":["beta"],"intelligent":true}"#,
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["intelligent"], true);
    // A released version cannot be deleted.
    let (status, body) = curl(
        &format!("{base}/v1/products/1000/firmware/4"),
        &["-X", "DELETE", "-H", &bearer(TOKEN)],
    );
    assert_eq!(status, 400, "{body}");

    // The device follows the default; in group beta it targets 5; locked, 4; unlocked with
    // the text `null`, 5 again.
    assert_eq!(device(&base)["targeted_firmware_release_version"], 4);
    let put = |body: &str, json: bool| {
        let auth = bearer(TOKEN);
        let mut args = vec!["-X", "PUT", "-H", &auth, "-d", body];
        if json {
            args.extend(["-H", JSON]);
        }
        curl(&format!("{base}/v1/products/1000/devices/{DEVICE}"), &args)
    };
    let (status, body) = put(r#"{"groups":["beta"]}"#, true);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["targeted_firmware_release_version"], 5);
    let (status, body) = put(r#"{"desired_firmware_version":4,"flash":true}"#, true);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["desired_firmware_version"], 4);
    assert_eq!(body["targeted_firmware_release_version"], 4);
    let (status, body) = put("desired_firmware_version=null", false);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["desired_firmware_version"], Value::Null);
    assert_eq!(body["targeted_firmware_release_version"], 5);
    // Lock again (JSON null unlocks too, tested in the unit tests); a bad value is located.
    let (status, _) = put(r#"{"desired_firmware_version":4}"#, true);
    assert_eq!(status, 200);
    let (status, body) = put(r#"{"desired_firmware_version":"four"}"#, true);
    assert_eq!(status, 400);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("`desired_firmware_version` of the JSON body"),
        "{body}"
    );
    let (status, _) = put(r#"{"desired_firmware_version":"#, true);
    assert_eq!(status, 400);
    // The device token may read its device, not change the product.
    let (status, _) = curl(
        &format!("{base}/v1/devices/{DEVICE}"),
        &["-H", &bearer(DEVICE_TOKEN)],
    );
    assert_eq!(status, 200);
    let (status, _) = curl(
        &format!("{base}/v1/products/1000/firmware/release"),
        &[
            "-X",
            "PUT",
            "-H",
            &bearer(DEVICE_TOKEN),
            "-d",
            "version=5",
            "-d",
            "product_default=true",
        ],
    );
    assert_eq!(status, 403);
    assert_eq!(device(&base)["desired_firmware_version"], 4);

    // A flash to the (offline) device is accepted; a file that is no module is not.
    let (status, body) = curl(
        &format!("{base}/v1/devices/{DEVICE}"),
        &[
            "-X",
            "PUT",
            "-H",
            &bearer(TOKEN),
            "-F",
            &format!("file={}", app(3)),
        ],
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "Update started");
    let junk = dir.join("junk.bin");
    std::fs::write(&junk, b"not a module").expect("junk file");
    let (status, body) = curl(
        &format!("{base}/v1/devices/{DEVICE}"),
        &[
            "-X",
            "PUT",
            "-H",
            &bearer(TOKEN),
            "-F",
            &format!("file=@{}", s(&junk)),
        ],
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error_description"]
        .as_str()
        .unwrap_or_default()
        .contains("junk.bin"));

    // The stream carried both releases, in Particle's format.
    let stream_text = read_for(&mut stream, Duration::from_millis(500));
    assert!(stream_text.starts_with(":ok\n"), "{stream_text}");
    assert!(
        stream_text.contains("event: particle/firmware/release\ndata: {\"data\":\"{\\\"immediate\\\":false,\\\"version\\\":4}\""),
        "{stream_text}"
    );
    assert!(stream_text.contains("\"coreid\":\"api\""), "{stream_text}");

    // Restart from the state: everything acknowledged is there, the flash is started again.
    drop(cloud);
    let (mut cloud, _udp, base) = start_cloud(&dir, &[]);
    assert!(
        cloud
            .seen
            .iter()
            .any(|l| l.contains("1 products, 2 firmware versions, 1 unfinished flashes")),
        "{:?}",
        cloud.seen
    );
    assert_eq!(firmware_versions(&base), vec![4, 5]);
    let d = device(&base);
    assert_eq!(d["desired_firmware_version"], 4);
    assert_eq!(d["groups"], serde_json::json!(["beta"]));
    let (_, fw) = curl(
        &format!("{base}/v1/products/1000/firmware/5"),
        &["-H", &bearer(TOKEN)],
    );
    assert_eq!(fw["groups"], serde_json::json!(["beta"]));
    assert_eq!(fw["intelligent"], true);
    let (_, fw) = curl(
        &format!("{base}/v1/products/1000/firmware/4"),
        &["-H", &bearer(TOKEN)],
    );
    assert_eq!(fw["product_default"], true);
    // The saved flash is queued again for the device.
    if !cloud
        .seen
        .iter()
        .any(|l| l.contains("ota job") && l.to_lowercase().contains("queued"))
    {
        cloud.wait_line(&["ota job", "queued"], Duration::from_secs(5));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Staged rollouts (ours, not Particle's) with curl: created with the fleet file's keys, a
/// resume of a running rollout refused (409), paused with a reason, resumed, aborted, a pause
/// of the aborted rollout refused; each change on the product's stream; all of it back after a
/// restart from `--state`.
#[test]
fn a_rollout_with_curl_paused_resumed_aborted_and_kept_across_a_restart() {
    if !require_tool("curl", &["--version"]) {
        return;
    }
    let dir = lab("api-curl-rollout");
    let (cloud, _udp, base) = start_cloud(&dir, &[]);
    let auth = bearer(TOKEN);
    let (status, body) = curl(
        &format!("{base}/v1/products"),
        &["-H", &auth, "-d", "id=1000", "-d", "platform=boron"],
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = curl(
        &format!("{base}/v1/products/1000/devices"),
        &["-H", &auth, "-d", &format!("id={DEVICE}")],
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = curl(
        &format!("{base}/v1/products/1000/firmware"),
        &[
            "-H",
            &auth,
            "-F",
            "version=4",
            "-F",
            &format!("file=@{}", s(&dir.join("app-v4.bin"))),
        ],
    );
    assert_eq!(status, 201, "{body}");
    let mut stream = Command::new("curl")
        .args(["-sSN", "--max-time", "20", "-H", &auth])
        .arg(format!("{base}/v1/products/1000/events/hil%2Frollout"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl for the stream");
    std::thread::sleep(Duration::from_millis(300));

    let rollouts = format!("{base}/v1/products/1000/rollouts");
    let spec = r#"{"app": 4, "intelligent": true, "stages": [50, 100], "soak": "1h",
        "success_threshold": 90, "in_progress_timeout": "30m",
        "abort": [{"failure_type": "timed_out", "threshold_percentage": 50}]}"#;
    let (status, body) = curl(&rollouts, &["-H", &auth, "-H", JSON, "-d", spec]);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["rollout"]["id"], 1);
    assert_eq!(body["rollout"]["state"], "running");
    assert_eq!(body["rollout"]["abort"][0]["action"], "pause");
    let act = |a: &str, extra: &[&str]| {
        curl(
            &format!("{rollouts}/1/{a}"),
            &[&["-X", "PUT", "-H", &auth][..], extra].concat(),
        )
    };
    let (status, body) = act("resume", &[]);
    assert_eq!(status, 409, "{body}");
    let (status, body) = act("pause", &["-d", "reason=battery drain"]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rollout"]["state"], "paused");
    assert_eq!(body["rollout"]["reason"], "battery drain");
    let (status, body) = act("resume", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rollout"]["state"], "running");
    let (status, body) = act("abort", &["-H", JSON, "-d", r#"{"reason":"stop"}"#]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rollout"]["state"], "aborted");
    let (status, body) = act("pause", &[]);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot pause a rollout that is aborted"),
        "{body}"
    );
    let (status, body) = curl(&format!("{rollouts}/2"), &["-H", &auth]);
    assert_eq!(status, 404, "{body}");

    let stream_text = read_for(&mut stream, Duration::from_millis(500));
    for kind in ["started", "paused", "resumed", "aborted"] {
        assert!(
            stream_text.contains(&format!("event: hil/rollout/{kind}\n")),
            "{kind}: {stream_text}"
        );
    }
    assert!(stream_text.contains("battery drain"), "{stream_text}");

    drop(cloud);
    let (_cloud, _udp, base) = start_cloud(&dir, &[]);
    let (status, body) = curl(
        &format!("{base}/v1/products/1000/rollouts"),
        &["-H", &bearer(TOKEN)],
    );
    assert_eq!(status, 200, "{body}");
    let r = &body["rollouts"][0];
    assert_eq!(r["state"], "aborted", "{body}");
    assert_eq!(r["reason"], "stop");
    assert_eq!(r["transitions"].as_array().map(Vec::len), Some(4), "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a child wrote to stdout within `wait` (then it is killed).
fn read_for(child: &mut std::process::Child, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    let _ = child.wait();
    out
}
