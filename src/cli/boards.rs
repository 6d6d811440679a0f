//! `hil boards`: the built-in board definitions and their flash layouts.

use std::path::PathBuf;
use std::process::ExitCode;

use emulator::board::Board;
use protocol::module::ModuleFunction;

use super::CliResult;

pub fn run(board: Option<String>, file: Option<PathBuf>) -> CliResult {
    let board = match (board, file) {
        (_, Some(path)) => Board::load(&path)?,
        (Some(name), None) => Board::builtin(&name)?,
        (None, None) => {
            for name in Board::builtin_names() {
                let b = Board::builtin(name)?;
                println!(
                    "{:<8} platform {:>2}  {}  {}",
                    b.name,
                    b.platform_id,
                    b.mcu.as_str(),
                    b.display_name
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    println!(
        "{} ({}), platform {}, {}",
        board.display_name,
        board.name,
        board.platform_id,
        board.mcu.as_str()
    );
    for (chip, g) in board.chips() {
        println!(
            "  flash {:<8} base {:#010x} size {:#x} sector {} program unit {}",
            chip.as_str(),
            g.base,
            g.size,
            g.sector_size,
            g.program_unit
        );
    }
    for r in &board.regions {
        let module = r
            .module
            .map(|m| format!(" {} {}", ModuleFunction::from(m.function), m.index))
            .unwrap_or_default();
        println!(
            "  {:<17} {:<8} {:#010x}..{:#010x} ({} KiB){module}",
            r.kind.as_str(),
            r.chip.as_str(),
            r.start,
            r.end,
            (r.end - r.start) / 1024
        );
    }
    println!(
        "  OTA: max binary size {} bytes, chunk size {}",
        board.ota.max_binary_size, board.ota.chunk_size
    );
    Ok(ExitCode::SUCCESS)
}
