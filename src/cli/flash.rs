//! `hil flash`: asks a running `hil cloud` to flash a device, through its control endpoint
//! (protocol: `hil cloud --help` and `harness::control`), and waits for the outcome, at most
//! `--timeout`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use harness::control::{FlashRequest, Reply};
use harness::keys::DeviceId;
use harness::scenario::model::parse_duration;

use super::CliResult;

/// Exit code: the device refused the update, or the cloud gave up on the job.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad arguments or an unreadable file (as every `hil` command).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: `--timeout` passed before the job finished (it stays queued in the cloud).
pub const EXIT_TIMED_OUT: u8 = 3;
/// Exit code: the cloud's control endpoint cannot be reached, or the connection was lost.
pub const EXIT_NO_CLOUD: u8 = 4;
/// Exit code: the cloud has no key registered for the device.
pub const EXIT_UNKNOWN_DEVICE: u8 = 5;

#[derive(Args)]
#[command(after_help = "\
Exit codes:
  0  the device runs the file (its own describe shows it)
  1  the device refused the update (its error code and message are printed), or the cloud
     gave up on the job
  2  bad arguments, or the file cannot be read
  3  timed out (--timeout) before the job finished; the job stays queued in the cloud and is
     delivered when the device comes online
  4  the cloud's control endpoint cannot be reached, or the connection to it was lost
  5  the cloud has no key registered for the device (unknown device)

One line is printed each time the job's status changes (not on every acknowledged chunk:
progress is printed at most once per 10 % of the chunks).")]
pub struct FlashArgs {
    /// The cloud's control address (`hil cloud --control`, default its UDP port + 1).
    #[arg(long, value_name = "ADDR")]
    cloud: String,
    /// How long to wait for the job to finish: `30s`, `10m`, `1h`, `1m30s`.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = duration)]
    timeout: Duration,
    /// The device id, 24 hex digits.
    device: String,
    /// The firmware file.
    file: PathBuf,
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration (e.g. 30s, 10m, 1h, 1m30s)"))
}

/// How long one connection attempt to the control endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn connect(cloud: &str, limit: Duration) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = cloud
        .to_socket_addrs()
        .map_err(|e| format!("{cloud}: {e}"))?
        .collect();
    let mut last = format!("{cloud}: no address");
    for addr in addrs {
        match TcpStream::connect_timeout(
            &addr,
            limit.min(CONNECT_TIMEOUT).max(Duration::from_millis(1)),
        ) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// A status line worth printing: transfer progress only when it crossed another tenth.
fn progress_bucket(status: &str, line: &str) -> String {
    if status != "transferring" {
        return line.to_string();
    }
    // "transferring A/B chunks ..." -> the tenth A/B is in.
    let counts = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.split_once('/'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    match counts {
        Some((a, b)) if b > 0 => format!("transferring {}", a * 10 / b),
        _ => line.to_string(),
    }
}

/// Exit codes: see the command's help ([`EXIT_FAILED`] ... [`EXIT_UNKNOWN_DEVICE`]).
pub fn run(args: FlashArgs) -> CliResult {
    let device: DeviceId = args.device.parse()?;
    let file = match std::fs::read(&args.file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("hil flash: {}: {e}", args.file.display());
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let deadline = Instant::now() + args.timeout;
    let request = FlashRequest::new(device.0, &file).to_line();
    let stream = match connect(&args.cloud, args.timeout) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "hil flash: cannot reach the cloud's control endpoint {}: {e}",
                args.cloud
            );
            return Ok(ExitCode::from(EXIT_NO_CLOUD));
        }
    };
    let mut writer = stream.try_clone()?;
    writer.write_all(request.as_bytes())?;
    writer.flush()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut printed: Option<String> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(timed_out(&args.timeout));
        }
        stream.set_read_timeout(Some(left))?;
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => {
                eprintln!("hil flash: the cloud closed the connection before the job finished");
                return Ok(ExitCode::from(EXIT_NO_CLOUD));
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(timed_out(&args.timeout));
            }
            Err(e) => {
                eprintln!("hil flash: connection to the cloud lost: {e}");
                return Ok(ExitCode::from(EXIT_NO_CLOUD));
            }
        }
        match Reply::parse(&line) {
            Some(Reply::Error(message)) => {
                eprintln!("hil flash: the cloud refused the request: {message}");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
            Some(Reply::UnknownDevice(message)) => {
                eprintln!("hil flash: {message}");
                return Ok(ExitCode::from(EXIT_UNKNOWN_DEVICE));
            }
            Some(Reply::Ok(message)) => println!("{message}"),
            Some(Reply::Status { job, status, line }) => {
                let key = progress_bucket(&status, &line);
                if printed.as_ref() != Some(&key) {
                    println!("job {job}: {line}");
                    printed = Some(key);
                }
                if status == "succeeded" {
                    return Ok(ExitCode::SUCCESS);
                }
                if status == "failed" {
                    return Ok(ExitCode::from(EXIT_FAILED));
                }
            }
            None => println!("{}", line.trim_end()),
        }
    }
}

fn timed_out(limit: &Duration) -> ExitCode {
    eprintln!(
        "hil flash: timed out after {}s waiting for the job (it stays queued in the cloud)",
        limit.as_secs_f64()
    );
    ExitCode::from(EXIT_TIMED_OUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_printed_once_per_tenth() {
        let a = progress_bucket("transferring", "transferring 10/100 chunks");
        let b = progress_bucket("transferring", "transferring 19/100 chunks");
        let c = progress_bucket("transferring", "transferring 20/100 chunks");
        assert_eq!(a, b);
        assert_ne!(b, c);
        assert_eq!(progress_bucket("queued", "queued"), "queued");
    }
}
