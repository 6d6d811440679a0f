//! Runs every scenario file in `fixtures/` (the documented OTA behaviours) and
//! `fixtures/field/` (field-bug reproductions) against the emulator target and snapshots each
//! case's trace (virtual time only, so the snapshots do not depend on the machine).

use std::path::PathBuf;

use harness::scenario::emulator_target::EmulatorTarget;
use harness::scenario::runner::{self, Outcome};
use harness::scenario::{load, Target};
use rstest::rstest;

#[rstest]
fn fixture(
    #[files("../fixtures/*.toml")]
    #[files("../fixtures/field/*.toml")]
    #[files("../fixtures/product/*.toml")]
    #[files("../fixtures/assets/*.toml")]
    #[files("../fixtures/device-os/*.toml")]
    path: PathBuf,
) {
    let mut scenario = load(&path).unwrap_or_else(|e| panic!("{e}"));
    // Machine-independent: the path as written from the workspace root.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().unwrap();
    let abs = path.canonicalize().unwrap();
    scenario.file = abs.strip_prefix(&root).unwrap_or(&abs).to_path_buf();
    let mut factory = || Ok(Box::new(EmulatorTarget::new()) as Box<dyn Target>);
    let result = runner::run(&scenario, None, &mut factory);
    let mut stem = path.file_stem().unwrap().to_string_lossy().to_string();
    // Snapshot names: the file stem, prefixed with its folder under fixtures/ (field, product,
    // device-os, assets).
    for folder in ["field", "product", "device-os", "assets"] {
        if path.parent().and_then(|p| p.file_name()) == Some(std::ffi::OsStr::new(folder)) {
            stem = format!("{folder}-{stem}");
        }
    }
    let mut text = String::new();
    for case in &result.cases {
        text.push_str(&format!(
            "=== case {} : {}\n",
            case.name,
            case.outcome.as_str()
        ));
        if let Some(f) = &case.failure {
            text.push_str(&format!("{f}\n"));
        }
        for s in &case.skipped {
            text.push_str(&format!("skipped: {s}\n"));
        }
        // Sweep cases: the outcome only (their traces differ by the cut point).
        if !case.name.starts_with("sweep ") {
            text.push_str(&case.trace.render());
            text.push('\n');
        }
    }
    insta::with_settings!({ snapshot_suffix => stem.clone(), prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("fixture", text);
    });
    let failed: Vec<String> = result
        .cases
        .iter()
        .filter(|c| c.outcome == Outcome::Fail)
        .map(|c| {
            c.failure
                .as_ref()
                .map(|f| f.to_string())
                .unwrap_or_default()
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
