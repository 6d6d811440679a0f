//! particle-api-js (npm), Particle's own JavaScript client, drives `hil cloud --api` as a
//! release pipeline does (`tests/api_js/pipeline.js`): a wrong token, an upload with the wrong
//! version then the right one, the product and device event streams, lock with flash now on a
//! real `hil device` process, unlock, a release, a development device flashed with a binary.
//! The product and its device are declared with `--products`. The library is installed with
//! `npm install` into the test's own folder under the target directory. Without node or npm, or
//! when the install fails: `skipped: ...` (a failure under `HIL_REQUIRE_INTEROP=1`).

mod api_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api_support::*;

#[test]
fn particle_api_js_drives_a_release_pipeline() {
    if !require_tool("node", &["--version"]) || !require_tool("npm", &["--version"]) {
        return;
    }
    let Some(folder) = npm_install(
        "api_js",
        &["package.json", "pipeline.js"],
        "particle-api-js",
    ) else {
        return;
    };
    let dir = lab("api-js");
    let products = dir.join("products.toml");
    std::fs::write(
        &products,
        format!("[[product]]\nid = 1000\nname = \"trackers\"\nplatform = \"boron\"\ndevices = [\"{DEVICE}\"]\n"),
    )
    .expect("products file");
    let (_cloud, udp, base) = start_cloud(&dir, &["--products", s(&products)]);
    let _device = start_device(&dir, &udp);

    let mut node = Command::new("node")
        .arg(folder.join("pipeline.js"))
        .args([&base, TOKEN, DEVICE, s(&dir)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = node.try_wait().expect("wait for node") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = node.wait_with_output().expect("node output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        status.is_some_and(|s| s.success()),
        "pipeline.js failed or timed out:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("ok a development device is flashed"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
