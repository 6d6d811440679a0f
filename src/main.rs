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
    /// Asset bundles: `hil bundle create APP.bin ASSETS_DIR -o BUNDLE.zip`,
    /// `hil bundle inspect BUNDLE.zip [--json]`.
    #[command(subcommand)]
    Bundle(cli::bundle::BundleCommand),
    /// Generate P-256 key pairs for the local cloud and for devices (DER and PEM).
    #[command(subcommand)]
    Keys(cli::keys::KeysCommand),
    /// Benchmarks: `hil bench dtls` compares our DTLS with the `dtls` crate; `hil bench ota`
    /// measures OTA throughput, virtual-time speed and devices per process.
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
    /// Run scenario files (or folders of them) against a target.
    Run(cli::run::RunArgs),
    /// Validate scenario files without running them.
    Check(cli::check::CheckArgs),
    /// Make scenario fixtures (from a saved event stream of a field device).
    #[command(subcommand)]
    Fixture(cli::fixture::FixtureCommand),
    /// Run the local Device Cloud over UDP, printing its event stream.
    Cloud(cli::cloud::CloudArgs),
    /// Run one emulated device against a cloud over UDP, printing its log.
    Device(cli::device::DeviceArgs),
    /// Captures: `hil pcap decrypt` opens the DTLS records of a capture with a key log.
    #[command(subcommand)]
    Pcap(cli::pcap::PcapCommand),
    /// Ask a running `hil cloud` to flash a device and wait for the outcome.
    Flash(cli::flash::FlashArgs),
    /// A complete OTA (app v3 -> v4) in one process, in virtual time, printing the trace.
    Demo(cli::demo::DemoArgs),
    /// Racks of boards (boards/rack.example.toml): run scenarios on them, check their health.
    #[command(subcommand)]
    Rack(cli::rack::RackCommand),
    /// Compare the traces of two reports (`hil trace diff A.json B.json`).
    #[command(subcommand)]
    Trace(cli::trace::TraceCommand),
}

/// Restores the default action of SIGPIPE (Rust ignores it, so a write to a closed pipe
/// becomes an error and `println!` panics): `hil sweep --json | head` then ends quietly, as
/// Unix tools do.
fn end_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread starts; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    end_quietly_on_closed_pipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sweep(args) => cli::sweep::run(args),
        Command::Module(cmd) => cli::module::run(cmd),
        Command::Bundle(cmd) => cli::bundle::run(cmd),
        Command::Boards { board, file } => cli::boards::run(board, file),
        Command::Run(args) => cli::run::run(args),
        Command::Check(args) => cli::check::run(args),
        Command::Fixture(cmd) => cli::fixture::run(cmd),
        Command::Keys(cmd) => cli::keys::run(cmd),
        Command::Bench(cmd) => cli::bench::run(cmd),
        Command::Cloud(args) => cli::cloud::run(args),
        Command::Device(args) => cli::device::run(args),
        Command::Flash(args) => cli::flash::run(args),
        Command::Pcap(cmd) => cli::pcap::run(cmd),
        Command::Demo(args) => cli::demo::run(args),
        Command::Rack(cmd) => cli::rack::run(cmd),
        Command::Trace(cmd) => cli::trace::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hil: {e}");
            ExitCode::from(2)
        }
    }
}
