//! The REST API in-process (no curl needed): every refused request (no token, wrong token,
//! outside the token's scope, bad input) answers with a JSON error and changes nothing, a
//! malformed body is a located error, and an acknowledged change is already in the database
//! when the answer arrives.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use harness::cloud::api::{self, ApiState, Tokens};
use harness::cloud::store::Store;
use harness::cloud::{Cloud, CloudConfig, DeviceId, Fleet};
use harness::net::udp::UdpNode;
use harness::testbed::CloudNode;
use p256::ecdsa::SigningKey;
use protocol::module::{ModuleBuilder, ModuleFunction};
use serde_json::Value;
use tower::ServiceExt;

const TOKEN: &str = "0123456789abcdef0123456789abcdef01234567";
const SCOPED: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const DEVICE: &str = "0123456789abcdef01234567";
const BOUNDARY: &str = "XhilX";

fn key(n: u8) -> SigningKey {
    SigningKey::from_slice(&[n; 32]).expect("a key")
}

fn app(version: u16) -> Vec<u8> {
    ModuleBuilder::new(ModuleFunction::UserPart, 13)
        .index(2)
        .version(6)
        .start_address(0xB4000)
        .product(13, version)
        .body(vec![version as u8; 256])
        .build()
        .expect("an app")
}

fn tokens() -> Tokens {
    let text = format!(
        "[[token]]\ntoken = \"{TOKEN}\"\n\n[[token]]\ntoken = \"{SCOPED}\"\nproducts = [2000]\n"
    );
    Tokens::parse(&text, "test").expect("tokens")
}

/// A cloud with product 1000 (Boron) holding the device, firmware 4 uploaded, on a real
/// loopback node; the API state over it, saving to `state` if given.
async fn setup(state: Option<&std::path::Path>) -> (Arc<UdpNode<CloudNode>>, Arc<ApiState>) {
    let mut cloud = Cloud::new(CloudConfig::new(key(1)), 1);
    let device: DeviceId = DEVICE.parse().expect("device id");
    cloud.register_device(device.0, *key(2).verifying_key());
    cloud.create_product(1000, "trackers", 13).expect("product");
    cloud
        .add_product_device(Duration::ZERO, 1000, device)
        .expect("device");
    cloud
        .upload_firmware(Duration::ZERO, 1000, 4, "v4", "", app(4))
        .expect("upload");
    let node = Arc::new(
        UdpNode::server(CloudNode::new(cloud), "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("node"),
    );
    let store = state.map(|dir| Store::open(dir).expect("store"));
    let api = ApiState::new(node.clone(), tokens(), store, Default::default());
    (node, api)
}

fn multipart(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    if let Some((name, bytes)) = file {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                 filename=\"firmware.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

struct Call {
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
}

fn json(method: &'static str, path: &str, body: &str) -> Call {
    Call {
        method,
        path: path.to_string(),
        content_type: "application/json",
        body: body.as_bytes().to_vec(),
    }
}

fn form_data(method: &'static str, path: &str, body: Vec<u8>) -> Call {
    Call {
        method,
        path: path.to_string(),
        content_type: "multipart/form-data; boundary=XhilX",
        body,
    }
}

async fn send(api: &Arc<ApiState>, call: &Call, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(call.method)
        .uri(&call.path)
        .header("content-type", call.content_type);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Body::from(call.body.clone())).expect("request");
    let resp = api::router(api.clone()).oneshot(req).await.expect("answer");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
    };
    (status, value)
}

fn snapshot(node: &UdpNode<CloudNode>) -> (Fleet, Vec<harness::cloud::JobId>) {
    node.with_node(|n, _| {
        let jobs = n
            .cloud
            .device(DEVICE.parse::<DeviceId>().expect("id").0)
            .map(|v| v.jobs)
            .unwrap_or_default();
        (n.cloud.fleet().clone(), jobs)
    })
}

fn mutating_calls() -> Vec<Call> {
    let d = format!("/v1/products/1000/devices/{DEVICE}");
    vec![
        json("POST", "/v1/products", r#"{"id":1,"platform":"boron"}"#),
        json(
            "POST",
            "/v1/products/1000/devices",
            r#"{"id":"aaaaaaaaaaaaaaaaaaaaaaaa"}"#,
        ),
        form_data(
            "POST",
            "/v1/products/1000/firmware",
            multipart(
                &[("version", "5"), ("title", "v5")],
                Some(("file", &app(5))),
            ),
        ),
        json(
            "PUT",
            "/v1/products/1000/firmware/release",
            r#"{"version":4,"product_default":true}"#,
        ),
        json("PUT", &d, r#"{"desired_firmware_version":4,"flash":true}"#),
        json("PUT", &d, r#"{"groups":["beta"],"development":true}"#),
        json("DELETE", "/v1/products/1000/firmware/4", ""),
        json("DELETE", &d, ""),
        form_data(
            "PUT",
            &format!("/v1/devices/{DEVICE}"),
            multipart(&[], Some(("file", &app(5)))),
        ),
        json(
            "PUT",
            &format!("/v1/devices/{DEVICE}"),
            r#"{"firmware_updates_forced":true}"#,
        ),
    ]
}

#[tokio::test]
async fn refused_requests_change_nothing() {
    let (node, api) = setup(None).await;
    let before = snapshot(&node);
    for call in mutating_calls() {
        let what = format!("{} {}", call.method, call.path);
        let (status, body) = send(&api, &call, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(
            body["error_description"], "The access token was not found",
            "{what}"
        );
        let (status, body) = send(&api, &call, Some(&"z".repeat(40))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["error"], "invalid_token", "{what}");
        let (status, body) = send(&api, &call, Some(SCOPED)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
        assert_eq!(body["error"], "Permission Denied", "{what}");
        assert_eq!(snapshot(&node), before, "{what} changed something");
    }
    // The same calls with the right token do change things (the test above tests something).
    let (status, body) = send(&api, &mutating_calls()[3], Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(snapshot(&node), before);
}

#[tokio::test]
async fn bad_input_is_a_located_error_that_changes_nothing() {
    let (node, api) = setup(None).await;
    let before = snapshot(&node);
    let d = format!("/v1/products/1000/devices/{DEVICE}");
    let mut truncated = multipart(&[("version", "5")], Some(("file", &app(5))));
    truncated.truncate(truncated.len() - 40);
    let cut_module = {
        let mut m = app(5);
        m.truncate(100);
        m
    };
    let cases: Vec<(Call, StatusCode, &str)> = vec![
        (
            json("PUT", &d, r#"{"desired_firmware_version": 4"#),
            StatusCode::BAD_REQUEST,
            "JSON body does not parse",
        ),
        (
            json("PUT", &d, r#"{"groups":"Not Valid"}"#),
            StatusCode::BAD_REQUEST,
            "`Not Valid` is not a valid group name",
        ),
        (
            json("PUT", &d, r#"{"desired_firmware_version":9}"#),
            StatusCode::NOT_FOUND,
            "no firmware version 9",
        ),
        (
            json(
                "PUT",
                "/v1/products/1000/devices/ffffffffffffffffffffffff",
                r#"{"development":true}"#,
            ),
            StatusCode::NOT_FOUND,
            "is not in product 1000",
        ),
        (
            json(
                "PUT",
                "/v1/products/1000/devices/nope",
                r#"{"development":true}"#,
            ),
            StatusCode::NOT_FOUND,
            "device id \"nope\" is not 24 hex digits",
        ),
        (
            form_data("POST", "/v1/products/1000/firmware", truncated),
            StatusCode::BAD_REQUEST,
            "multipart",
        ),
        (
            form_data(
                "POST",
                "/v1/products/1000/firmware",
                multipart(&[("version", "5")], Some(("file", &cut_module))),
            ),
            StatusCode::BAD_REQUEST,
            "firmware.bin is not a Particle module binary",
        ),
        (
            form_data(
                "POST",
                "/v1/products/1000/firmware",
                multipart(&[("version", "6")], Some(("binary", &app(5)))),
            ),
            StatusCode::BAD_REQUEST,
            "version 6 was given but the binary's PRODUCT_VERSION is 5",
        ),
        (
            form_data(
                "POST",
                "/v1/products/1000/firmware",
                multipart(&[("title", "no version")], Some(("file", &app(5)))),
            ),
            StatusCode::BAD_REQUEST,
            "field `version`",
        ),
        (
            form_data(
                "POST",
                "/v1/products/1000/firmware",
                multipart(&[("version", "5")], None),
            ),
            StatusCode::BAD_REQUEST,
            "no firmware file",
        ),
        (
            json(
                "PUT",
                "/v1/products/1000/firmware/release",
                r#"{"version":"x"}"#,
            ),
            StatusCode::BAD_REQUEST,
            "`version` of the JSON body",
        ),
        (
            json(
                "PUT",
                "/v1/products/1000/firmware/release",
                r#"{"version":4}"#,
            ),
            StatusCode::BAD_REQUEST,
            "product_default",
        ),
        (
            Call {
                method: "PUT",
                path: d.clone(),
                content_type: "text/plain",
                body: b"lock it".to_vec(),
            },
            StatusCode::BAD_REQUEST,
            "text/plain is not understood",
        ),
        (
            json("GET", "/v1/nowhere", ""),
            StatusCode::NOT_FOUND,
            "no such endpoint",
        ),
        (
            json("GET", "/v1/devices/%FF%FE", ""),
            StatusCode::BAD_REQUEST,
            "UTF-8",
        ),
    ];
    for (call, status, text) in cases {
        let (got, body) = send(&api, &call, Some(TOKEN)).await;
        let what = format!("{} {}", call.method, call.path);
        assert_eq!(got, status, "{what}: {body}");
        let described = body["error_description"].as_str().unwrap_or_default();
        assert!(described.contains(text), "{what}: `{text}` not in {body}");
        assert_eq!(snapshot(&node), before, "{what} changed something");
    }
}

#[tokio::test]
async fn an_acknowledged_change_is_in_the_database_before_the_answer() {
    let dir = std::env::temp_dir().join(format!("hil-cloud-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (node, api) = setup(Some(&dir)).await;
    let upload = form_data(
        "POST",
        "/v1/products/1000/firmware",
        multipart(
            &[("version", "5"), ("title", "v5")],
            Some(("file", &app(5))),
        ),
    );
    let (status, body) = send(&api, &upload, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let release = json(
        "PUT",
        "/v1/products/1000/firmware/release",
        r#"{"version":5,"groups":"beta,eu","intelligent":true}"#,
    );
    let (status, body) = send(&api, &release, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["groups"], serde_json::json!(["beta", "eu"]));
    let lock = json(
        "PUT",
        &format!("/v1/products/1000/devices/{DEVICE}"),
        r#"{"desired_firmware_version":5,"groups":["eu"]}"#,
    );
    let (status, _) = send(&api, &lock, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    // Read by another connection, as a lab's sqlite3 would, right after the answers.
    let saved = Store::open(&dir).expect("store").load().expect("load");
    let fleet = node.with_node(|n, _| n.cloud.fleet().clone());
    assert_eq!(saved.fleet, fleet);
    let v5 = &saved.fleet.product(1000).expect("product").firmware[&5];
    assert!(v5.intelligent && v5.released_at.is_some());
    let d = saved
        .fleet
        .device(DEVICE.parse().expect("id"))
        .expect("device");
    assert_eq!(d.locked, Some(5));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn groups_are_created_listed_and_deleted() {
    let (node, api) = setup(None).await;
    let (status, body) = send(
        &api,
        &json("POST", "/v1/products/1000/groups", r#"{"name":"beta"}"#),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["group"]["name"], "beta");
    let d = format!("/v1/products/1000/devices/{DEVICE}");
    let (status, _) = send(
        &api,
        &json("PUT", &d, r#"{"groups":["beta"]}"#),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let release = r#"{"version":4,"groups":["beta"]}"#;
    let (status, _) = send(
        &api,
        &json("PUT", "/v1/products/1000/firmware/release", release),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = send(
        &api,
        &json("GET", "/v1/products/1000/groups/beta", ""),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["group"]["fw_version"], 4);
    assert_eq!(body["group"]["device_count"], 1);
    let (status, _) = send(
        &api,
        &json("DELETE", "/v1/products/1000/groups/beta", ""),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, device) = send(&api, &json("GET", &d, ""), Some(TOKEN)).await;
    assert_eq!(device["groups"], serde_json::json!([]));
    assert_eq!(device["targeted_firmware_release_version"], Value::Null);
    let (status, body) = send(
        &api,
        &json("GET", "/v1/products/1000/groups/beta", ""),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = send(
        &api,
        &json("POST", "/v1/products/1000/groups", r#"{"name":"Bad Name"}"#),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    drop(node);
}

#[tokio::test]
async fn device_lists_page_and_filter_without_overflow() {
    let (_node, api) = setup(None).await;
    let list = |q: &str| json("GET", &format!("/v1/products/1000/devices{q}"), "");
    let (status, body) = send(&api, &list(""), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["devices"][0]["id"], DEVICE);
    assert_eq!(body["devices"][0]["firmware_version"], Value::Null);
    assert_eq!(body["meta"]["total_pages"], 1);
    let (status, body) = send(
        &api,
        &list("?page=18446744073709551615&per_page=1000"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["devices"], serde_json::json!([]));
    let (_, body) = send(&api, &list("?groups=beta,eu"), Some(TOKEN)).await;
    assert_eq!(body["devices"], serde_json::json!([]));
    let (_, body) = send(&api, &list("?deviceId=0123456789"), Some(TOKEN)).await;
    assert_eq!(body["devices"].as_array().map(Vec::len), Some(1));
    let (status, body) = send(&api, &json("GET", "/v1/devices", ""), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["product_id"], 1000);
    assert_eq!(body[0]["registered"], true);
    // A scoped token sees only what it may use.
    let (_, body) = send(&api, &json("GET", "/v1/devices", ""), Some(SCOPED)).await;
    assert_eq!(body, serde_json::json!([]));
}

const ROLLOUT: &str = r#"{"app": 4, "intelligent": true, "stages": [10, 50, 100],
    "soak": "1h", "success_threshold": 90, "in_progress_timeout": "30m",
    "abort": [{"failure_type": "all", "threshold_percentage": 20, "action": "pause"}]}"#;

fn rollout_ids(body: &Value) -> Vec<u64> {
    body["rollouts"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| r["id"].as_u64().expect("an id"))
        .collect()
}

#[tokio::test]
async fn a_rollout_is_paused_resumed_aborted_by_a_person_and_kept_across_a_restart() {
    let dir = std::env::temp_dir().join(format!("hil-cloud-api-rollout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (node, api) = setup(Some(&dir)).await;
    // Ten product devices: stage 1 (10 %) admits one.
    node.with_node(|n, now| {
        for i in 1..=9u8 {
            n.cloud
                .add_product_device(now, 1000, DeviceId([i; 12]))
                .expect("device");
        }
    });
    let list = json("GET", "/v1/products/1000/rollouts", "");
    let base = "/v1/products/1000/rollouts";

    // Bad bodies: each a 400 naming what is wrong, nothing started.
    for (body, needle) in [
        (r#"{"app": 4,"#, "does not parse"),
        (
            &ROLLOUT.replace("\"soak\"", "\"colour\": 1, \"soak\""),
            "colour",
        ),
        (
            &ROLLOUT.replace("\"1h\"", "\"soon\""),
            "`soon` is not a duration",
        ),
        (
            &ROLLOUT.replace("\"pause\"", "\"explode\""),
            "abort[0].action",
        ),
        (&ROLLOUT.replace("[10, 50, 100]", "[50, 10]"), "stages"),
        (
            &ROLLOUT.replace("\"app\": 4", "\"at\": \"1h\", \"app\": 4"),
            "`at`",
        ),
    ] {
        let (status, e) = send(&api, &json("POST", base, body), Some(TOKEN)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {e}");
        let text = e["error_description"].as_str().unwrap_or_default();
        assert!(text.contains(needle), "{body}: {e}");
    }
    let form = Call {
        method: "POST",
        path: base.into(),
        content_type: "application/x-www-form-urlencoded",
        body: b"app=4&stages=10".to_vec(),
    };
    let (status, e) = send(&api, &form, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let (status, e) = send(
        &api,
        &json("POST", base, &ROLLOUT.replace("\"app\": 4", "\"app\": 9")),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    let (status, e) = send(&api, &json("POST", base, ROLLOUT), Some(SCOPED)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{e}");
    let (_, body) = send(&api, &list, Some(TOKEN)).await;
    assert_eq!(rollout_ids(&body), Vec::<u64>::new(), "{body}");

    // Started: stage 1 targets one device of ten.
    let (status, body) = send(&api, &json("POST", base, ROLLOUT), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let r = &body["rollout"];
    assert_eq!(
        (r["id"].as_u64(), r["state"].as_str()),
        (Some(1), Some("running"))
    );
    assert_eq!(r["stage"], 1);
    assert_eq!(r["soak"], "1h");
    assert_eq!(r["abort"][0]["failure_type"], "all");
    assert_eq!(r["stage_counts"][0]["targeted"], 1);
    assert_eq!(r["stage_counts"][1]["targeted"], 0);
    let admitted = node.with_node(|n, _| {
        n.cloud
            .rollout(1000)
            .expect("a rollout")
            .admitted()
            .collect::<Vec<_>>()
    });
    assert_eq!(admitted.len(), 1);
    let target_rule = |d: DeviceId| {
        node.with_node(|n, _| {
            n.cloud
                .fleet()
                .target(d)
                .firmware()
                .map(|t| t.rule.to_string())
        })
    };
    assert_eq!(target_rule(admitted[0]).as_deref(), Some("staged rollout"));
    // A second one while it runs: refused.
    let (status, _) = send(&api, &json("POST", base, ROLLOUT), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Resume a running rollout: 409, nothing changes.
    let action = |a: &str, body: &str| json("PUT", &format!("{base}/1/{a}"), body);
    let (status, e) = send(&api, &action("resume", ""), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert!(
        e["error_description"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot resume a rollout that is running"),
        "{e}"
    );
    // Pause (POST works as PUT), with a reason.
    let pause = json(
        "POST",
        &format!("{base}/1/pause"),
        r#"{"reason":"battery"}"#,
    );
    let (status, body) = send(&api, &pause, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let r = &body["rollout"];
    assert_eq!(
        (
            r["state"].as_str(),
            r["paused_by"].as_str(),
            r["reason"].as_str()
        ),
        (Some("paused"), Some("person"), Some("battery"))
    );
    let (status, _) = send(&api, &pause, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::CONFLICT, "pausing a paused rollout");
    // Unknown rollouts and actions.
    for (call, want) in [
        (json("GET", &format!("{base}/2"), ""), StatusCode::NOT_FOUND),
        (
            json("GET", &format!("{base}/one"), ""),
            StatusCode::NOT_FOUND,
        ),
        (action("explode", ""), StatusCode::NOT_FOUND),
        (
            json("PUT", &format!("{base}/7/abort"), ""),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, e) = send(&api, &call, Some(TOKEN)).await;
        assert_eq!(status, want, "{} {}: {e}", call.method, call.path);
    }
    let (status, body) = send(&api, &action("resume", ""), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rollout"]["state"], "running");

    // Abort: the admitted device had not started, so it is withdrawn to the default.
    let (status, body) = send(&api, &action("abort", r#"{"reason":"stop"}"#), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let r = &body["rollout"];
    assert_eq!(
        (r["state"].as_str(), r["stage"].as_u64()),
        (Some("aborted"), Some(1))
    );
    assert_eq!(r["counts"]["withdrawn"], 1);
    assert_eq!(r["counts"]["targeted"], 0);
    assert_ne!(target_rule(admitted[0]).as_deref(), Some("staged rollout"));
    let events: Vec<&str> = r["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["event"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(events, ["started", "paused", "resumed", "aborted"]);
    for a in ["pause", "resume", "abort"] {
        let (status, e) = send(&api, &action(a, ""), Some(TOKEN)).await;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "{a} on an aborted rollout: {e}"
        );
    }
    let (status, _) = send(&api, &list, Some(SCOPED)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A new rollout after the aborted one is number 2; both are listed.
    let (status, body) = send(&api, &json("POST", base, ROLLOUT), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["rollout"]["id"], 2);
    let (_, body) = send(&api, &list, Some(TOKEN)).await;
    assert_eq!(rollout_ids(&body), vec![1, 2]);
    let (status, e) = send(&api, &action("resume", ""), Some(TOKEN)).await;
    assert_eq!(status, StatusCode::CONFLICT, "rollout 1 was replaced: {e}");

    // A cloud started again from the database has both, as they were.
    let before: Vec<_> = node.with_node(|n, _| {
        n.cloud
            .all_rollouts()
            .map(|r| r.to_saved(|t| n.cloud.unix_time(t)))
            .collect()
    });
    let store = Store::open(&dir).expect("store");
    let mut again = Cloud::new(CloudConfig::new(key(1)), 1);
    let restored = api::restore(&mut again, &store).expect("restore");
    assert_eq!(restored.rollouts, 2);
    let after: Vec<_> = again
        .all_rollouts()
        .map(|r| r.to_saved(|t| again.unix_time(t)))
        .collect();
    assert_eq!(after, before);
    let current = again.rollout(1000).expect("the current rollout");
    assert_eq!((current.id, current.state.name()), (2, "running"));
    // Its admitted device takes the version again after the restart.
    let d = current.admitted().next().expect("an admitted device");
    assert_eq!(
        again
            .fleet()
            .target(d)
            .firmware()
            .map(|t| t.rule.to_string())
            .as_deref(),
        Some("staged rollout")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
