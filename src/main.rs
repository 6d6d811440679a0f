//! `hil`: the command line of the Particle OTA test rig.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "hil",
    version,
    about = "OTA test rig and device emulator for Particle devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Cut power at every flash operation of an update and check every boot.
    Sweep(cli::sweep::SweepArgs),
    /// Inspect or build Particle module binaries.
    #[command(subcommand)]
    Module(cli::module::ModuleCommand),
    /// Benchmarks: `hil bench dtls` compares our DTLS with the `dtls` crate.
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
    /// List the built-in boards, or show one board's flash layout.
    Boards {
        /// A built-in board name, or a path to a board TOML file.
        board: Option<String>,
        /// Validate a board file and print its layout.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sweep(args) => cli::sweep::run(args),
        Command::Module(cmd) => cli::module::run(cmd),
        Command::Boards { board, file } => cli::boards::run(board, file),
        Command::Bench(cmd) => cli::bench::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hil: {e}");
            ExitCode::from(2)
        }
    }
}
