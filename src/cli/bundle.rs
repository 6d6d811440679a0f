//! `hil bundle create` and `hil bundle inspect`: application and asset bundles (reference
//! section 6.1) as Particle's tools make them (`protocol::bundle`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use protocol::bundle::{Asset, AssetModule, Bundle};
use protocol::module::{platform_name, Module};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::CliResult;

#[derive(Subcommand)]
pub enum BundleCommand {
    /// Make an asset bundle: APP.bin with one ASSET_DEPENDENCY per file of ASSETS_DIR (in the
    /// suffix on nRF52840, in the prefix on rtl872x), zipped with the raw assets under
    /// `assets/`, as `createApplicationAndAssetBundle` in binary-version-reader does.
    Create {
        /// The application (a user part module).
        app: PathBuf,
        /// A folder whose files (not sub-folders) are the assets, named by their file names.
        assets_dir: PathBuf,
        /// Where to write the bundle (a .zip).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
    /// Print a bundle: the application's module fields and, per asset, its name, size and
    /// SHA-256, checked against the application's dependencies.
    ///
    /// Exit code: 0 when every dependency has its asset with the same SHA-256 (and every asset
    /// is depended on), 1 when not (the problem is printed), 2 when the file is not a bundle.
    Inspect {
        bundle: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: BundleCommand) -> CliResult {
    match cmd {
        BundleCommand::Create {
            app,
            assets_dir,
            output,
        } => create(&app, &assets_dir, &output),
        BundleCommand::Inspect { bundle, json } => inspect(&bundle, json),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn create(app: &Path, assets_dir: &Path, output: &Path) -> CliResult {
    let app_bytes = read(app)?;
    let app_name = app
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: not a file name", app.display()))?
        .to_string();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(assets_dir)
        .map_err(|e| format!("cannot read the folder {}: {e}", assets_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    // Sorted by name: the same folder always gives the same bundle.
    entries.sort();
    let mut assets = Vec::new();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: asset file name is not UTF-8", path.display()))?
            .to_string();
        assets.push(Asset::new(name, read(&path)?));
    }
    let bundle = Bundle::create(&app_name, &app_bytes, assets)
        .map_err(|e| format!("{}: {e}", app.display()))?;
    let zip = bundle.to_zip()?;
    std::fs::write(output, &zip).map_err(|e| format!("cannot write {}: {e}", output.display()))?;
    println!(
        "{}: {} ({} bytes) with {} asset(s), {} bytes",
        output.display(),
        bundle.app_name,
        bundle.app.len(),
        bundle.assets.len(),
        zip.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn inspect(path: &Path, as_json: bool) -> CliResult {
    let bytes = read(path)?;
    let bundle = Bundle::unpack(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let module = Module::parse(&bundle.app).map_err(|e| {
        format!(
            "{}: the application {} is not a module: {e}",
            path.display(),
            bundle.app_name
        )
    })?;
    let problem = bundle.check().err().map(|e| e.to_string());
    let deps = bundle.dependencies();
    let p = &module.prefix;
    let assets: Vec<Value> = bundle
        .assets
        .iter()
        .map(|a| {
            let module = a.module(true).ok();
            let module_size = module.as_ref().map(|m| m.len());
            let compressed_ok = module.as_deref().and_then(|m| AssetModule::parse(m).ok());
            json!({
                "name": a.name,
                "size": a.data.len(),
                "sha256": hex(&a.sha256()),
                "module_size": module_size,
                "depended_on": deps.iter().any(|d| d.name == a.name && d.hash == a.sha256()),
                "module_valid": compressed_ok.is_some(),
            })
        })
        .collect();
    let dependencies: Vec<Value> = deps
        .iter()
        .map(|d| json!({ "name": d.name, "sha256": hex(&d.hash) }))
        .collect();
    if as_json {
        let out = json!({
            "file": path.display().to_string(),
            "app": {
                "name": bundle.app_name,
                "size": bundle.app.len(),
                "sha256": hex(&Sha256::digest(&bundle.app)),
                "platform_id": p.platform_id,
                "platform": platform_name(p.platform_id),
                "module_function": u8::from(p.function),
                "module_index": p.index,
                "module_version": p.version,
                "module_start_address": format!("{:#x}", p.start_address),
                "module_end_address": format!("{:#x}", p.end_address),
                "flags": p.flags.bits(),
                "product_id": module.product_id(),
                "product_version": module.product_version(),
                "crc_valid": module.crc_valid(),
                "asset_dependencies": dependencies,
            },
            "assets": assets,
            "env_vars": bundle.env_vars.as_ref().map(|(n, _)| n.clone()),
            "valid": problem.is_none(),
            "problem": problem,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", path.display());
        println!(
            "  app {} ({} bytes): platform {} ({}), {} {} version {}, product version {}, CRC {}",
            bundle.app_name,
            bundle.app.len(),
            p.platform_id,
            platform_name(p.platform_id).unwrap_or("unknown"),
            p.function,
            p.index,
            p.version,
            module
                .product_version()
                .map_or("none".to_string(), |v| v.to_string()),
            if module.crc_valid() { "ok" } else { "WRONG" }
        );
        for d in &deps {
            println!("  depends on asset {:?} sha256 {}", d.name, hex(&d.hash));
        }
        for a in &bundle.assets {
            println!(
                "  asset {:?}: {} bytes, sha256 {}",
                a.name,
                a.data.len(),
                hex(&a.sha256())
            );
        }
        if let Some((name, _)) = &bundle.env_vars {
            println!("  environment variables: {name}");
        }
        match &problem {
            None => println!("  valid: every dependency has its asset"),
            Some(p) => println!("  INVALID: {p}"),
        }
    }
    Ok(if problem.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
