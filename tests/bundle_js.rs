//! Asset bundles both ways against Particle's own tools (issue 16): binary-version-reader from
//! npm (`tests/bundle_js/interop.js`) makes a bundle and asset modules that `protocol::bundle`
//! reads, and reads the bundle and asset modules `protocol::bundle` makes; for a Boron
//! (dependencies in the suffix) and a P2 (in the prefix, the module growing down). The library
//! is installed with `npm install` into the test's own folder under the target directory.
//! Without node or npm, or when the install fails: `skipped: ...` (a failure under
//! `HIL_REQUIRE_INTEROP=1`).

mod api_support;

use std::path::Path;
use std::process::Command;

use api_support::{npm_install, require_tool};

use protocol::bundle::{unwrap_asset_module, Asset, AssetModule, Bundle};
use protocol::module::{Module, ModuleBuilder, ModuleFunction, SuffixStyle};
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn boron_app() -> Vec<u8> {
    ModuleBuilder::new(ModuleFunction::UserPart, 13)
        .index(2)
        .version(6)
        .start_address(0xB4000)
        .product(13, 4)
        .suffix_style(SuffixStyle::Nrf52840)
        .body((0..5000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>())
        .build()
        .unwrap()
}

fn p2_app() -> Vec<u8> {
    ModuleBuilder::new(ModuleFunction::UserPart, 32)
        .index(1)
        .version(6)
        .fixed_end(0x0860_0000)
        .product(32, 4)
        .suffix_style(SuffixStyle::Rtl872x)
        .dynamic_location(0x0800_0000, 0x0800_0100)
        .body((0..5001u32).map(|i| (i * 3) as u8).collect::<Vec<_>>())
        .build()
        .unwrap()
}

fn assets() -> Vec<Asset> {
    vec![
        Asset::new("logo.bmp", vec![0x42u8; 3000]),
        Asset::new(
            "tune.wav",
            (0..4096u32).map(|i| (i * i) as u8).collect::<Vec<_>>(),
        ),
    ]
}

fn both_ways(node_dir: &Path, platform: &str, app: Vec<u8>) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bundle_js_{platform}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("firmware.bin"), &app).unwrap();
    for a in assets() {
        std::fs::write(dir.join("assets").join(&a.name), &a.data).unwrap();
    }
    let ours = Bundle::create("firmware.bin", &app, assets()).unwrap();
    std::fs::write(dir.join("ours.zip"), ours.to_zip().unwrap()).unwrap();
    for a in assets() {
        std::fs::write(
            dir.join(format!("ours-{}.compressed", a.name)),
            a.module(true).unwrap(),
        )
        .unwrap();
    }
    let out = Command::new("node")
        .arg(node_dir.join("interop.js"))
        .arg(&dir)
        .arg("firmware.bin")
        .args(assets().iter().map(|a| a.name.clone()))
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "interop.js failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("interop.js prints JSON");

    // Theirs, read by us: the same application bytes as ours (dependencies placed the same
    // way, byte for byte), the same raw assets, and the bundle checks out.
    let theirs = Bundle::read(&std::fs::read(dir.join("theirs.zip")).unwrap())
        .unwrap_or_else(|e| panic!("{platform}: their bundle: {e}"));
    assert_eq!(theirs.app_name, "firmware.bin");
    assert_eq!(
        hex(&theirs.app),
        hex(&ours.app),
        "{platform}: application with dependencies"
    );
    assert_eq!(theirs.assets, ours.assets);
    for a in assets() {
        let plain = std::fs::read(dir.join(format!("theirs-{}.plain", a.name))).unwrap();
        assert_eq!(
            hex(&plain),
            hex(&a.module(false).unwrap()),
            "{platform}: plain asset module {}",
            a.name
        );
        let compressed = std::fs::read(dir.join(format!("theirs-{}.compressed", a.name))).unwrap();
        let info = AssetModule::parse(&compressed).unwrap();
        assert!(info.compressed);
        assert_eq!(info.hash, a.sha256().to_vec());
        assert_eq!(unwrap_asset_module(&compressed).unwrap(), a.data);
    }

    // Ours, read by them.
    assert_eq!(read["app_name"], "firmware.bin");
    assert_eq!(read["app_sha256"], hex(&Sha256::digest(&ours.app)));
    assert_eq!(read["app_crc_ok"], true);
    let deps: Vec<(String, String)> = read["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = assets()
        .iter()
        .map(|a| (a.name.clone(), hex(&a.sha256())))
        .collect();
    assert_eq!(deps, want, "{platform}: dependencies they read");
    let listed: Vec<(String, String)> = read["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(listed, want, "{platform}: assets they read");
    for a in assets() {
        assert_eq!(read["unwrapped"][&a.name], hex(&a.sha256()));
    }
    // And the application is where the platform needs it.
    let m = Module::parse(&ours.app).unwrap();
    if platform == "p2" {
        assert!(!m.prefix_extensions.is_empty());
    } else {
        assert!(m.prefix_extensions.is_empty());
    }
}

#[test]
fn bundles_and_asset_modules_interoperate_with_binary_version_reader() {
    if !require_tool("node", &["--version"]) || !require_tool("npm", &["--version"]) {
        return;
    }
    let Some(node_dir) = npm_install(
        "bundle_js",
        &["package.json", "interop.js"],
        "binary-version-reader",
    ) else {
        return;
    };
    both_ways(&node_dir, "boron", boron_app());
    both_ways(&node_dir, "p2", p2_app());
}
