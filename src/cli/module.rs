//! `hil module inspect` and `hil module build`: Particle module binaries from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use emulator::board::{Anchor, Board, McuFamily, RegionKind};
use protocol::module::{
    compress, split_combined, Dependency, Extension, Module, ModuleBuilder, ModuleFunction,
    SuffixStyle,
};

use super::CliResult;

#[derive(Subcommand)]
pub enum ModuleCommand {
    /// Print every field of a module binary (or of each module of a combined file).
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
pub struct BuildArgs {
    /// Built-in board the module is for (platform id, addresses, suffix style).
    #[arg(long)]
    board: String,
    #[arg(long, value_enum)]
    function: FunctionArg,
    /// Module version (prefix). Defaults to the board's Device OS 6.2.0 value.
    #[arg(long)]
    version: Option<u16>,
    /// Dependency, as FUNCTION/INDEX>=VERSION or NAME>=VERSION (system-part1, bootloader,
    /// radio-stack), e.g. `system-part1>=6200`. At most two.
    #[arg(long = "depends")]
    depends: Vec<String>,
    /// Total module size, e.g. 98304, 96KiB or 1MiB.
    #[arg(long, default_value = "16KiB")]
    size: String,
    /// Product firmware version (user parts; `PRODUCT_VERSION`).
    #[arg(long)]
    product_version: Option<u16>,
    /// Product id (defaults to the platform id, as Device OS >= 4.0 builds do).
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

fn inspect(path: &PathBuf, json: bool) -> CliResult {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let ranges = split_combined(&data).map_err(|e| format!("{}: {e}", path.display()))?;
    for range in ranges {
        let offset = range.start;
        let part = &data[range];
        let m = Module::parse(part)
            .map_err(|e| format!("{} (module at byte {offset}): {e}", path.display()))?;
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
                "prefixOffset": m.prefix_offset,
                "compressed": m.compressed_header.map(|h| h.original_size),
            });
            println!("{v}");
        } else {
            println!("{} (byte {offset}, {} bytes)", path.display(), part.len());
            println!(
                "  function {:?} index {} version {}",
                p.function, p.index, p.version
            );
            println!(
                "  platform {}  flags {:#04x}  prefix at {:#x}",
                p.platform_id, p.flags.0, m.prefix_offset
            );
            println!(
                "  address {:#010x}..{:#010x}",
                p.start_address, p.end_address
            );
            for d in p.dependencies.iter().filter(|d| !d.is_empty()) {
                println!("  depends on {:?} {} >= {}", d.function, d.index, d.version);
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
            println!(
                "  suffix size {}  sha256 {}",
                m.suffix_size(),
                hex(&m.sha256())
            );
            let verdict = if m.crc_valid() { "valid" } else { "INVALID" };
            println!(
                "  crc32 {:08x} ({verdict}, computed {:08x})",
                m.stored_crc, m.computed_crc
            );
        }
    }
    Ok(ExitCode::SUCCESS)
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
        other => format!("{other:?}"),
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

/// Parses `system-part1>=6200`, `4/1>=6200`.
fn parse_dependency(s: &str) -> Result<Dependency, String> {
    let bad = || {
        format!("--depends {s:?}: expected FUNCTION/INDEX>=VERSION or NAME>=VERSION, e.g. system-part1>=6200")
    };
    let (what, version) = s.split_once(">=").ok_or_else(bad)?;
    let version: u16 = version.trim().parse().map_err(|_| bad())?;
    let (function, index) = match what.trim() {
        "system-part1" | "system" => (4u8, 1u8),
        "bootloader" => (2, 0),
        "radio-stack" | "softdevice" => (8, 0),
        other => {
            let (f, i) = other.split_once('/').ok_or_else(bad)?;
            (f.parse().map_err(|_| bad())?, i.parse().map_err(|_| bad())?)
        }
    };
    Ok(Dependency {
        function: ModuleFunction::from(function),
        index,
        version,
    })
}

fn build(args: BuildArgs) -> CliResult {
    let board = Board::builtin(&args.board)?;
    let kind = match args.function {
        FunctionArg::Bootloader => RegionKind::Bootloader,
        FunctionArg::RadioStack => RegionKind::RadioStack,
        FunctionArg::System => RegionKind::SystemPart,
        FunctionArg::User => RegionKind::UserPart,
    };
    let region = board
        .region(kind)
        .ok_or_else(|| format!("{} has no {kind} region", board.name))?;
    let id = region
        .module
        .ok_or_else(|| format!("{} region {kind} holds no module", board.name))?;
    let size = parse_size(&args.size)?;
    if args.depends.len() > 2 {
        return Err("--depends: a module prefix holds at most two dependencies".into());
    }
    let version = args
        .version
        .or_else(|| board.default_module_version(id.function, id.index))
        .ok_or("--version is needed: the board has no default for this module")?;
    let nrf = board.mcu == McuFamily::Nrf52840;
    let mut b = ModuleBuilder::new(ModuleFunction::from(id.function), board.platform_id)
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
    if args.product_version.is_some() || args.product_id.is_some() {
        b = b.product(
            args.product_id.unwrap_or(board.platform_id),
            args.product_version.unwrap_or(0xFFFF),
        );
    }
    b = match region.anchor {
        Anchor::Start => b.start_address(region.start),
        Anchor::End => b.fixed_end(region.end),
    };
    let mut module = emulator::firmware::build_sized(b, size as usize, args.seed)?;
    if args.compress {
        module = compress(&module)?;
    }
    if module.len() as u64 > u64::from(board.ota.max_binary_size) {
        return Err(format!(
            "the module is {} bytes, more than {}'s OTA limit of {} bytes",
            module.len(),
            board.name,
            board.ota.max_binary_size
        )
        .into());
    }
    std::fs::write(&args.output, &module).map_err(|e| format!("{}: {e}", args.output.display()))?;
    println!("wrote {} ({} bytes)", args.output.display(), module.len());
    Ok(ExitCode::SUCCESS)
}
