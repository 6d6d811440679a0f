//! Subcommands of `hil`. Each returns the process exit code, or an error that `main` prints.

pub mod bench;
pub mod bench_fleet;
pub mod bench_ota;
pub mod bench_pacing;
pub mod bench_power_cut;
pub mod boards;
pub mod bundle;
pub mod check;
pub mod cloud;
pub mod demo;
pub mod device;
pub mod fixture;
pub mod flash;
pub mod keys;
pub mod module;
pub mod pcap;
pub mod progress;
pub mod rack;
pub mod run;
pub mod sweep;
pub mod trace;

/// An error shown to the user as one sentence.
pub type CliResult = Result<std::process::ExitCode, Box<dyn std::error::Error>>;
