//! `hil pcap decrypt`, and the `--pcap FILE` capture of `hil cloud` and `hil device`
//! (format and decryption: [`harness::pcap`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use harness::net::udp::Capture;
use harness::pcap::{decrypt, read_udp, PcapWriter};

use super::CliResult;

#[derive(Subcommand)]
pub enum PcapCommand {
    /// Write the session of a capture with every DTLS application-data record replaced by its
    /// decrypted payload (the CoAP message) over plain UDP, for Wireshark/tshark (decode the
    /// port as CoAP: `tshark -r OUT -d udp.port==5684,coap`).
    Decrypt(DecryptArgs),
}

#[derive(Args)]
pub struct DecryptArgs {
    /// A classic pcap file (`hil cloud --pcap`, `hil device --pcap`, tcpdump -w).
    input: PathBuf,
    /// The NSS key log (`hil cloud --keylog`): CLIENT_RANDOM lines.
    #[arg(long, value_name = "FILE")]
    keylog: PathBuf,
    /// Where to write the decrypted capture.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

pub fn run(cmd: PcapCommand) -> CliResult {
    match cmd {
        PcapCommand::Decrypt(args) => decrypt_file(args),
    }
}

fn decrypt_file(args: DecryptArgs) -> CliResult {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let bytes = read(&args.input)?;
    let keylog = String::from_utf8_lossy(&read(&args.keylog)?).into_owned();
    let packets = read_udp(&bytes).map_err(|e| format!("{}: {e}", args.input.display()))?;
    let (plain, report) = decrypt(&packets, &keylog);
    let mut out = PcapWriter::new(Vec::new())?;
    for p in &plain {
        out.push(p.time, p.src, p.dst, &p.payload)?;
    }
    std::fs::write(&args.output, out.into_inner())
        .map_err(|e| format!("{}: {e}", args.output.display()))?;
    println!(
        "{} datagrams, {} handshakes, {} records decrypted, {} records not decrypted -> {}",
        report.datagrams,
        report.handshakes,
        report.decrypted,
        report.undecryptable,
        args.output.display()
    );
    Ok(if report.decrypted == 0 && report.datagrams > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A capture sink writing every datagram to a new pcap file at `path`, stamped with the wall
/// clock (so captures of the cloud and of devices line up). Each datagram is one write, so
/// the file is complete however the process ends.
pub fn capture_to(path: &Path) -> Result<Capture, String> {
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut writer = PcapWriter::new(file).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Box::new(move |src, dst, data| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // A full disk loses capture records, never the session.
        let _ = writer.push(now, src, dst, data);
    }))
}
