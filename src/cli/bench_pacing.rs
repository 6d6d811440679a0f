//! `hil bench pacing`: the cloud's OTA sender over a slow, lossy simulated link, paced and
//! unpaced side by side (`harness::net::pacing`). Virtual time: the figures do not depend on
//! the machine.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use harness::net::pacing::{measure, SlowLink, TransferFigures};

use super::CliResult;

#[derive(Args)]
pub struct PacingArgs {
    /// Link bandwidth, bytes per second (each direction).
    #[arg(long, default_value_t = 20_000)]
    bandwidth: u64,
    /// Longest queueing delay before the link drops a datagram, milliseconds.
    #[arg(long, default_value_t = 2000)]
    queue_ms: u64,
    /// Random loss each direction, percent.
    #[arg(long, default_value_t = 5.0)]
    loss: f64,
    /// One-way latency, milliseconds.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// File size in KiB (512-byte chunks).
    #[arg(long, default_value_t = 1024)]
    kib: usize,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object: `paced` and `unpaced`, each with chunks, chunk_datagrams,
    /// datagrams_per_chunk, retransmissions, duplicates_delivered, queue_drops, seconds,
    /// goodput_bytes_per_s, goodput_share.
    #[arg(long)]
    json: bool,
}

fn json(f: &TransferFigures) -> serde_json::Value {
    serde_json::json!({
        "chunks": f.chunks,
        "chunk_datagrams": f.chunk_datagrams,
        "datagrams_per_chunk": f.datagrams_per_chunk(),
        "retransmissions": f.retransmissions,
        "duplicates_delivered": f.duplicates_delivered,
        "queue_drops": f.queue_drops,
        "seconds": f.seconds,
        "goodput_bytes_per_s": f.goodput,
        "goodput_share": f.goodput_share,
    })
}

pub fn pacing(args: PacingArgs) -> CliResult {
    let link = SlowLink {
        bandwidth: args.bandwidth.max(1),
        queue: Duration::from_millis(args.queue_ms),
        loss: (args.loss / 100.0).clamp(0.0, 1.0),
        latency: Duration::from_millis(args.latency_ms),
    };
    let size = args.kib.max(1) * 1024;
    let paced = measure(link, size, true, args.seed)?;
    let unpaced = measure(link, size, false, args.seed)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "paced": json(&paced), "unpaced": json(&unpaced) })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "OTA of {} KiB over {} B/s, {} ms queue, {}% loss, {} ms each way (virtual time, seed {})",
        args.kib, link.bandwidth, args.queue_ms, args.loss, args.latency_ms, args.seed
    );
    println!("{:<34} {:>14} {:>14}", "", "unpaced (old)", "paced (new)");
    let row = |name: &str, a: String, b: String| println!("{name:<34} {a:>14} {b:>14}");
    row(
        "chunks needed",
        unpaced.chunks.to_string(),
        paced.chunks.to_string(),
    );
    row(
        "chunk datagrams sent",
        unpaced.chunk_datagrams.to_string(),
        paced.chunk_datagrams.to_string(),
    );
    row(
        "datagrams per chunk (target <= 1.3)",
        format!("{:.2}", unpaced.datagrams_per_chunk()),
        format!("{:.2}", paced.datagrams_per_chunk()),
    );
    row(
        "retransmissions",
        unpaced.retransmissions.to_string(),
        paced.retransmissions.to_string(),
    );
    row(
        "duplicates delivered",
        unpaced.duplicates_delivered.to_string(),
        paced.duplicates_delivered.to_string(),
    );
    row(
        "dropped by the full queue",
        unpaced.queue_drops.to_string(),
        paced.queue_drops.to_string(),
    );
    row(
        "transfer seconds",
        format!("{:.1}", unpaced.seconds),
        format!("{:.1}", paced.seconds),
    );
    row(
        "goodput B/s",
        format!("{:.0}", unpaced.goodput),
        format!("{:.0}", paced.goodput),
    );
    row(
        "goodput / link (target >= 80%)",
        format!("{:.0}%", unpaced.goodput_share * 100.0),
        format!("{:.0}%", paced.goodput_share * 100.0),
    );
    Ok(ExitCode::SUCCESS)
}
