//! `hil module inspect` and `hil module build`: Particle module binaries from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use emulator::board::{Anchor, Board, McuFamily, RegionKind};
use protocol::module::{
    compress, platform_name, search_prefix, sha256_of_file, split_combined, Dependency, Extension,
    Module, ModuleBuilder, ModuleFunction, PrefixSearch, SuffixStyle, KNOWN_PLATFORMS,
};

use super::CliResult;

#[derive(Subcommand)]
pub enum ModuleCommand {
    /// Print every field of a module binary (or of each module of a combined file) and check
    /// its CRC-32 and SHA-256.
    ///
    /// The prefix is found where Particle's own parser (binary-version-reader) finds it: at 0,
    /// after a Gen 3 (0x200) or Gen 2 (0x184) vector table, at Bluz's 0xC0 or the Core's 0x10C,
    /// else at the first 4-aligned offset below 8 KiB that passes every check.
    ///
    /// Exit code: 0 when every module's CRC-32 and SHA-256 match, 1 when one does not (both the
    /// stored and the computed values are printed), 2 when the file cannot be read as a module.
    Inspect {
        file: PathBuf,
        /// One JSON object per module, with the keys Particle's binary-version-reader uses.
        #[arg(long)]
        json: bool,
    },
    /// Build a module binary that Particle's tools accept.
    Build(BuildArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum FunctionArg {
    Bootloader,
    RadioStack,
    System,
    User,
}

#[derive(Args)]
#[command(after_help = "\
Versions: --version is the module version in the prefix (what a dependency names, e.g. 6200 \
for Device OS 6.2.0's system part); --product-version is the product firmware version of a \
user part (PRODUCT_VERSION in the app, what a product release names).

Dependencies, either spelling (at most two):
  --depends system:1:6200        FUNCTION:INDEX:VERSION (bootloader, system, user, radio-stack,
                                 ncp, or a number)
  --depends 'system-part1>=6200' NAME>=VERSION (system-part1, bootloader, radio-stack), or
                                 FUNCTION/INDEX>=VERSION, e.g. 4/1>=6200")]
pub struct BuildArgs {
    /// Built-in board the module is for (platform id, addresses, suffix style): hil boards.
    #[arg(
        long,
        required_unless_present = "platform",
        conflicts_with = "platform"
    )]
    board: Option<String>,
    /// The same, by platform name or platform id (e.g. `boron` or `13`, `tracker` or `26`).
    #[arg(long)]
    platform: Option<String>,
    #[arg(long, value_enum)]
    function: FunctionArg,
    /// Module index (e.g. 1 for system-part1). Defaults to the index the board's region holds;
    /// another index must name a module the board has.
    #[arg(long)]
    index: Option<u8>,
    /// Module version (prefix), not the product version. Defaults to the board's Device OS
    /// 6.2.0 value.
    #[arg(long)]
    version: Option<u16>,
    /// Dependency: FUNCTION:INDEX:VERSION (e.g. system:1:6200, bootloader:0:3100) or
    /// NAME>=VERSION (e.g. system-part1>=6200). At most two.
    #[arg(long = "depends")]
    depends: Vec<String>,
    /// Total module size, e.g. 98304, 96KiB or 1MiB. At most what the board's region holds
    /// and its OTA limit; at least the prefix, suffix and CRC.
    #[arg(long, default_value = "16KiB")]
    size: String,
    /// Product firmware version (user parts; `PRODUCT_VERSION`). Default 65535 (none).
    #[arg(long)]
    product_version: Option<u16>,
    /// Product id (user parts; defaults to the platform id, as Device OS >= 4.0 builds do).
    #[arg(long)]
    product_id: Option<u16>,
    /// Compress the module (raw deflate, flag 0x02).
    #[arg(long)]
    compress: bool,
    /// Seed of the filler body.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(short = 'o', long)]
    output: PathBuf,
}

pub fn run(cmd: ModuleCommand) -> CliResult {
    match cmd {
        ModuleCommand::Inspect { file, json } => inspect(&file, json),
        ModuleCommand::Build(args) => build(args),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// "13 (boron)", or "60123" for a platform Particle's tools do not know.
fn platform_words(id: u16) -> String {
    match platform_name(id) {
        Some(name) => format!("{id} ({name})"),
        None => id.to_string(),
    }
}

/// The modules of `data`: each module of a (combined) file, or the one module Particle's
/// prefix search finds (Gen 2, Core, Bluz and other offsets). Errors are one sentence.
fn modules_of(data: &[u8]) -> Result<Vec<(usize, Module)>, String> {
    if data.is_empty() {
        return Err("empty file (0 bytes): not a module".into());
    }
    let split = split_combined(data).and_then(|ranges| {
        ranges
            .into_iter()
            .map(|r| {
                let offset = r.start;
                Module::parse(&data[r]).map(|m| (offset, m))
            })
            .collect::<Result<Vec<_>, _>>()
    });
    let error = match split {
        Ok(modules) => return Ok(modules),
        Err(e) => e,
    };
    match search_prefix(data) {
        PrefixSearch::Found { offset } => Module::parse_at(data, offset)
            .map(|m| vec![(0, m)])
            .map_err(|e| format!("prefix found at byte {offset:#x}, but {e}")),
        not_found => Err(format!(
            "{error}; {}",
            not_found.describe_not_found().unwrap_or_default()
        )),
    }
}

fn inspect(path: &PathBuf, json: bool) -> CliResult {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let modules = modules_of(&data).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut failed = Vec::new();
    for (offset, m) in &modules {
        let offset = *offset;
        let part = &data[offset..offset + m.file_len];
        let computed_sha = sha256_of_file(part);
        let sha_valid = computed_sha == m.sha256();
        if !m.crc_valid() {
            failed.push(format!(
                "module at byte {offset}: stored CRC-32 {:08x}, computed {:08x}",
                m.stored_crc, m.computed_crc
            ));
        }
        if !sha_valid {
            failed.push(format!(
                "module at byte {offset}: stored SHA-256 {}, computed {}",
                hex(&m.sha256()),
                hex(&computed_sha)
            ));
        }
        let p = &m.prefix;
        let deps: Vec<u32> = p
            .dependencies
            .iter()
            .flat_map(|d| {
                [
                    u8::from(d.function) as u32,
                    d.index as u32,
                    d.version as u32,
                ]
            })
            .collect();
        if json {
            let v = serde_json::json!({
                "file": path.file_name().map(|n| n.to_string_lossy().into_owned()),
                "offset": offset,
                "size": part.len(),
                "crcValid": m.crc_valid(),
                "crc": format!("{:08x}", m.stored_crc),
                "computedCrc": format!("{:08x}", m.computed_crc),
                "start": format!("{:#x}", p.start_address),
                "end": format!("{:#x}", p.end_address),
                "flags": p.flags.0,
                "func": u8::from(p.function),
                "index": p.index,
                "version": p.version,
                "platform": p.platform_id,
                "deps": deps,
                "productId": m.product_id().map_or(-1, i32::from),
                "productVersion": m.product_version().map_or(-1, i32::from),
                "suffixSize": m.suffix_size(),
                "sha": hex(&m.sha256()),
                "shaValid": sha_valid,
                "computedSha": hex(&computed_sha),
                "prefixOffset": m.prefix_offset,
                "compressed": m.compressed_header.map(|h| h.original_size),
            });
            println!("{v}");
        } else {
            println!("{} (byte {offset}, {} bytes)", path.display(), part.len());
            println!(
                "  {} (function {}) index {} version {}",
                p.function,
                u8::from(p.function),
                p.index,
                p.version
            );
            println!(
                "  platform {}  flags {:#04x}  prefix at byte {:#x}",
                platform_words(p.platform_id),
                p.flags.0,
                m.prefix_offset
            );
            println!(
                "  address {:#010x}..{:#010x}",
                p.start_address, p.end_address
            );
            for d in p.dependencies.iter().filter(|d| !d.is_empty()) {
                println!(
                    "  depends on {} {} version >= {}",
                    d.function, d.index, d.version
                );
            }
            if let (Some(id), Some(v)) = (m.product_id(), m.product_version()) {
                println!("  product id {id} version {v}");
            }
            if let Some(h) = m.compressed_header {
                println!("  compressed: {} bytes inflated", h.original_size);
            }
            for e in &m.prefix_extensions {
                println!("  prefix extension {}", describe_extension(e));
            }
            for e in &m.suffix.extensions {
                println!("  suffix extension {}", describe_extension(e));
            }
            println!("  suffix size {}", m.suffix_size());
            if sha_valid {
                println!("  sha256 {} (valid)", hex(&m.sha256()));
            } else {
                println!(
                    "  sha256 {} (INVALID, computed {})",
                    hex(&m.sha256()),
                    hex(&computed_sha)
                );
            }
            if m.crc_valid() {
                println!("  crc32 {:08x} (valid)", m.stored_crc);
            } else {
                println!(
                    "  crc32 {:08x} (INVALID, computed {:08x})",
                    m.stored_crc, m.computed_crc
                );
            }
        }
    }
    if failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for f in &failed {
        eprintln!("hil: {}: {f}", path.display());
    }
    Ok(ExitCode::from(1))
}

/// One line for an extension, hashes in hex.
fn describe_extension(e: &Extension) -> String {
    match e {
        Extension::Hash { hash_type, hash } => format!("HASH type {hash_type} {}", hex(hash)),
        Extension::AssetDependency { hash_type, hash, name } => {
            format!("ASSET_DEPENDENCY {name:?} hash type {hash_type} {}", hex(hash))
        }
        Extension::DynamicLocation { module_start, dynalib_load, dynalib_start } => format!(
            "DYNAMIC_LOCATION module start {module_start:#010x} dynalib load {dynalib_load:#010x} dynalib start {dynalib_start:#010x}"
        ),
        Extension::ProductData { id, version } => format!("PRODUCT_DATA id {id:#010x} version {version}"),
        Extension::Dependency { function, index, version, target_id } => format!(
            "DEPENDENCY {function} {index} version >= {version} (target id {target_id:#010x})"
        ),
        Extension::Name(name) => format!("NAME {name:?}"),
        Extension::SecurityMode { mode, certificate } => format!(
            "SECURITY_MODE {} ({} certificate bytes)",
            if *mode == 1 { "protected" } else { "none" },
            certificate.len()
        ),
        Extension::AssetType { asset_type, .. } => format!("ASSET_TYPE {asset_type}"),
        Extension::End { len } => format!("END ({len} bytes)"),
        Extension::Unknown { ty, data } => format!("type {ty:#06x} ({} bytes)", data.len()),
    }
}

/// Parses `96KiB`, `1MiB`, `98304`.
fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("KiB").or_else(|| t.strip_suffix('K')) {
        (n, 1024)
    } else if let Some(n) = t.strip_suffix("MiB").or_else(|| t.strip_suffix('M')) {
        (n, 1024 * 1024)
    } else {
        (t, 1)
    };
    num.trim()
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("--size {s:?}: expected bytes, or a number with KiB or MiB"))
}

/// A module function by name (as `--depends` and Particle's docs write it) or number.
fn function_by_name(name: &str) -> Option<u8> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "resource" => 1,
        "bootloader" => 2,
        "mono" | "monolithic" => 3,
        "system" | "system-part" => 4,
        "user" | "user-part" | "app" => 5,
        "settings" => 6,
        "ncp" => 7,
        "radio-stack" | "radio" | "softdevice" => 8,
        "asset" => 9,
        number => return number.parse().ok(),
    })
}

/// Parses `system:1:6200`, `system-part1>=6200`, `4/1>=6200`.
fn parse_dependency(s: &str) -> Result<Dependency, String> {
    let bad = || {
        format!(
            "--depends {s:?}: expected FUNCTION:INDEX:VERSION (e.g. system:1:6200, \
             bootloader:0:3100) or NAME>=VERSION (e.g. system-part1>=6200)"
        )
    };
    let (function, index, version) = if let Some((what, version)) = s.split_once(">=") {
        let (function, index) = match what.trim() {
            "system-part1" | "system" => (4u8, 1u8),
            "system-part2" => (4, 2),
            "bootloader" => (2, 0),
            "radio-stack" | "softdevice" => (8, 0),
            other => {
                let (f, i) = other.split_once('/').ok_or_else(bad)?;
                (
                    function_by_name(f).ok_or_else(bad)?,
                    i.trim().parse().map_err(|_| bad())?,
                )
            }
        };
        (function, index, version)
    } else {
        let mut parts = s.split(':');
        let (Some(f), Some(i), Some(v), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        (
            function_by_name(f).ok_or_else(bad)?,
            i.trim().parse().map_err(|_| bad())?,
            v,
        )
    };
    let version: u16 = version.trim().parse().map_err(|_| bad())?;
    if function == 0 {
        return Err(format!(
            "--depends {s:?}: function 0 is the empty dependency"
        ));
    }
    Ok(Dependency {
        function: ModuleFunction::from(function),
        index,
        version,
    })
}

/// The built-in board for `--board NAME` or `--platform NAME|ID`.
fn board_for(args: &BuildArgs) -> Result<Board, String> {
    if let Some(name) = &args.board {
        return Board::builtin(name).map_err(|e| e.to_string());
    }
    let Some(platform) = &args.platform else {
        return Err("--board or --platform is needed".into());
    };
    let id = match platform.trim().parse::<u16>() {
        Ok(id) => Some(id),
        Err(_) => KNOWN_PLATFORMS
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(platform.trim()))
            .map(|(id, _)| *id),
    };
    let boards: Vec<Board> = Board::builtin_names()
        .iter()
        .filter_map(|n| Board::builtin(n).ok())
        .collect();
    let found = boards
        .iter()
        .find(|b| Some(b.platform_id) == id || b.name.eq_ignore_ascii_case(platform.trim()));
    match found {
        Some(b) => Ok(b.clone()),
        None => {
            let known: Vec<String> = boards
                .iter()
                .map(|b| format!("{} ({})", b.name, b.platform_id))
                .collect();
            let what = match id {
                Some(id) => format!("platform {}", platform_words(id)),
                None => format!("platform {platform:?}"),
            };
            Err(format!(
                "--platform: {what} is not one of the built-in boards, whose flash layout a \
                 module needs: {}",
                known.join(", ")
            ))
        }
    }
}

fn build(args: BuildArgs) -> CliResult {
    let board = board_for(&args)?;
    let kind = match args.function {
        FunctionArg::Bootloader => RegionKind::Bootloader,
        FunctionArg::RadioStack => RegionKind::RadioStack,
        FunctionArg::System => RegionKind::SystemPart,
        FunctionArg::User => RegionKind::UserPart,
    };
    let region = board
        .region(kind)
        .ok_or_else(|| format!("{} has no {kind} region", board.name))?;
    let mut id = region
        .module
        .ok_or_else(|| format!("{} region {kind} holds no module", board.name))?;
    if let Some(index) = args.index {
        if board.region_for_module(id.function, index).is_none() {
            return Err(format!(
                "--index {index}: {} has no {} with index {index} (its {} has index {})",
                board.name,
                ModuleFunction::from(id.function),
                ModuleFunction::from(id.function),
                id.index
            )
            .into());
        }
        id.index = index;
    }
    let region = board
        .region_for_module(id.function, id.index)
        .unwrap_or(region);
    let size = parse_size(&args.size)?;
    if args.depends.len() > 2 {
        return Err("--depends: a module prefix holds at most two dependencies".into());
    }
    let version = args
        .version
        .or_else(|| board.default_module_version(id.function, id.index))
        .ok_or_else(|| {
            format!(
                "--version is needed: {} has no default version for {} {}",
                board.name,
                ModuleFunction::from(id.function),
                id.index
            )
        })?;
    let nrf = board.mcu == McuFamily::Nrf52840;
    let function = ModuleFunction::from(id.function);
    let mut b = ModuleBuilder::new(function, board.platform_id)
        .index(id.index)
        .version(version)
        .suffix_style(if nrf {
            SuffixStyle::Nrf52840
        } else {
            SuffixStyle::Rtl872x
        });
    if matches!(kind, RegionKind::Bootloader | RegionKind::SystemPart) && nrf {
        b = b.vector_table(0x200);
    }
    for d in &args.depends {
        b = b.dependency(parse_dependency(d)?);
    }
    if kind == RegionKind::UserPart || args.product_version.is_some() || args.product_id.is_some() {
        b = b.product(
            args.product_id.unwrap_or(board.platform_id),
            args.product_version.unwrap_or(0xFFFF),
        );
    }
    b = match region.anchor {
        Anchor::Start => b.start_address(region.start),
        Anchor::End => b.fixed_end(region.end),
    };
    let what = format!("a {} {function}", board.name);
    let smallest = b.clone().body(Vec::new()).build()?.len();
    if (size as usize) < smallest {
        return Err(format!(
            "--size {}: {what} is at least {smallest} bytes (prefix, suffix and CRC-32)",
            args.size
        )
        .into());
    }
    if size > region.len() {
        return Err(format!(
            "--size {}: {what} holds at most {} bytes ({}, its flash region \
             {:#010x}..{:#010x})",
            args.size,
            region.len(),
            kib(region.len()),
            region.start,
            region.end
        )
        .into());
    }
    let mut module = emulator::firmware::build_sized(b, size as usize, args.seed)?;
    if args.compress {
        module = compress(&module)?;
    }
    if module.len() as u64 > u64::from(board.ota.max_binary_size) {
        return Err(format!(
            "the module is {} bytes, more than {}'s OTA limit of {} bytes ({})",
            module.len(),
            board.name,
            board.ota.max_binary_size,
            kib(board.ota.max_binary_size)
        )
        .into());
    }
    std::fs::write(&args.output, &module).map_err(|e| format!("{}: {e}", args.output.display()))?;
    println!("wrote {} ({} bytes)", args.output.display(), module.len());
    Ok(ExitCode::SUCCESS)
}

/// "256 KiB", or the bytes when not a whole number of KiB.
fn kib(bytes: u32) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}
