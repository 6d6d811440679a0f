//! `hil flash`: asks a running `hil cloud` to flash a device, through its control endpoint
//! (protocol: `hil cloud --help` and `harness::control`), and waits for the outcome.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use harness::control::{FlashRequest, Reply};
use harness::keys::DeviceId;

use super::CliResult;

#[derive(Args)]
pub struct FlashArgs {
    /// The cloud's control address (`hil cloud --control`, default its UDP port + 1).
    #[arg(long, value_name = "ADDR")]
    cloud: String,
    /// The device id, 24 hex digits.
    device: String,
    /// The firmware file.
    file: PathBuf,
}

/// Exit codes: 0 succeeded, 1 the job failed, 2 no answer from the cloud (or a bad request).
pub fn run(args: FlashArgs) -> CliResult {
    let device: DeviceId = args.device.parse()?;
    let file = std::fs::read(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let request = FlashRequest::new(device.0, &file).to_line();
    let stream = match TcpStream::connect(&args.cloud) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "hil flash: cannot reach the cloud's control endpoint {}: {e}",
                args.cloud
            );
            return Ok(ExitCode::from(2));
        }
    };
    let mut writer = stream.try_clone()?;
    writer.write_all(request.as_bytes())?;
    writer.flush()?;
    for line in BufReader::new(stream).lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("hil flash: connection to the cloud lost: {e}");
                return Ok(ExitCode::from(2));
            }
        };
        match Reply::parse(&line) {
            Some(Reply::Error(message)) => {
                eprintln!("hil flash: the cloud refused the request: {message}");
                return Ok(ExitCode::from(2));
            }
            Some(Reply::Status { job, status, line }) => {
                println!("job {job}: {line}");
                if status == "succeeded" {
                    return Ok(ExitCode::SUCCESS);
                }
                if status == "failed" {
                    return Ok(ExitCode::from(1));
                }
            }
            None => println!("{line}"),
        }
    }
    eprintln!("hil flash: the cloud closed the connection before the job finished");
    Ok(ExitCode::from(2))
}
