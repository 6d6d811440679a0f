//! `hil bench dtls`: our DTLS against the `dtls` crate (webrtc-rs), in one process, in memory.
//!
//! Two figures per implementation, measured in the same run:
//! - full handshakes per second, client and server in the same thread;
//! - application-data throughput: 1 KiB records client -> server, encrypted and decrypted.
//!
//! Ours is the sans-IO [`protocol::dtls`] pair passing datagrams as byte vectors, in the
//! Particle profile (raw public keys, cookie, CID) — and, as an extra row, in X.509 mode with the
//! same certificates as theirs. Theirs is two `DTLSConn`s over webrtc-util's in-memory pipe on a
//! single-threaded tokio runtime (its API is async; that overhead is part of what it costs).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use protocol::dtls::keys::signing_key_from_der;
use protocol::dtls::{
    CertificateMode, Client, ClientConfig, Event, Server, ServerConfig, ServerEvent,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::CliResult;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Handshakes per second and MB/s of our DTLS against the `dtls` crate, side by side.
    Dtls(DtlsArgs),
    /// OTA MB/s over real UDP loopback DTLS (and the ratio to raw UDP), simulated seconds per
    /// wall second in virtual time, and how many devices one process keeps connected.
    Ota(super::bench_ota::OtaArgs),
    /// Power-cut points the sweep verifies per second (128 KiB user part, 500 KiB system part,
    /// Boron, all three cut modes).
    PowerCut(super::bench_power_cut::PowerCutArgs),
    /// One OTA transfer over a slow, lossy simulated link (20 KB/s, 2 s queue, 5 % loss):
    /// datagrams per chunk, duplicates and goodput of the paced sender beside the unpaced one.
    Pacing(super::bench_pacing::PacingArgs),
}

#[derive(Args)]
pub struct DtlsArgs {
    /// Print one JSON object (ours_handshakes_per_s, theirs_handshakes_per_s, ours_mb_per_s,
    /// theirs_mb_per_s, and details).
    #[arg(long)]
    json: bool,
    /// A few iterations only (a smoke test: the figures mean little).
    #[arg(long)]
    quick: bool,
    /// How long each of the measurements runs, at least, in seconds.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

pub fn run(cmd: BenchCommand) -> CliResult {
    match cmd {
        BenchCommand::Dtls(args) => dtls(args),
        BenchCommand::Ota(args) => super::bench_ota::ota(args),
        BenchCommand::PowerCut(args) => super::bench_power_cut::power_cut(args),
        BenchCommand::Pacing(args) => super::bench_pacing::pacing(args),
    }
}

/// Bytes of application data per record in the throughput figures.
const RECORD: usize = 1024;

/// How much work a measurement does: at least `min_iterations`, and keeps going until `time`.
#[derive(Clone, Copy)]
struct Budget {
    min_iterations: u64,
    time: Duration,
}

struct Figures {
    ours_handshakes: f64,
    ours_x509_handshakes: f64,
    theirs_handshakes: f64,
    ours_mb: f64,
    ours_x509_mb: f64,
    theirs_mb: f64,
}

fn dtls(args: DtlsArgs) -> CliResult {
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 600.0) {
        return Err("--seconds must be between 0 and 600".into());
    }
    let (handshakes, records) = if args.quick {
        let b = |n| Budget {
            min_iterations: n,
            time: Duration::ZERO,
        };
        (b(3), b(200))
    } else {
        let time = Duration::from_secs_f64(args.seconds);
        (
            Budget {
                min_iterations: 20,
                time,
            },
            Budget {
                min_iterations: 2000,
                time,
            },
        )
    };
    let keys = Keys::generate()?;
    let theirs = Theirs::new(&keys)?;
    // The measurements alternate in rounds, so that a change in the machine's load during the
    // run weighs on both implementations alike.
    let rounds: u32 = if args.quick { 1 } else { 4 };
    let slice = |b: Budget| Budget {
        min_iterations: b.min_iterations.div_ceil(u64::from(rounds)),
        time: b.time / rounds,
    };
    let (handshakes, records) = (slice(handshakes), slice(records));
    let mut t = [Tally::default(); 6];
    for _ in 0..rounds {
        t[0] += ours_handshakes(&keys, CertificateMode::RawPublicKey, handshakes)?;
        t[1] += theirs.handshakes(handshakes)?;
        t[2] += ours_handshakes(&keys, CertificateMode::X509, handshakes)?;
        t[3] += ours_throughput(&keys, CertificateMode::RawPublicKey, records)?;
        t[4] += theirs.throughput(records)?;
        t[5] += ours_throughput(&keys, CertificateMode::X509, records)?;
    }
    let f = Figures {
        ours_handshakes: t[0].per_second(),
        theirs_handshakes: t[1].per_second(),
        ours_x509_handshakes: t[2].per_second(),
        ours_mb: t[3].per_second() / 1e6,
        theirs_mb: t[4].per_second() / 1e6,
        ours_x509_mb: t[5].per_second() / 1e6,
    };
    if args.json {
        let json = serde_json::json!({
            "ours_handshakes_per_s": f.ours_handshakes,
            "theirs_handshakes_per_s": f.theirs_handshakes,
            "ours_mb_per_s": f.ours_mb,
            "theirs_mb_per_s": f.theirs_mb,
            "handshake_ratio": f.ours_handshakes / f.theirs_handshakes,
            "mb_ratio": f.ours_mb / f.theirs_mb,
            "ours_x509_handshakes_per_s": f.ours_x509_handshakes,
            "ours_x509_mb_per_s": f.ours_x509_mb,
            "record_bytes": RECORD,
            "mb": "10^6 bytes of application data",
            "ours": "hil-protocol DTLS, Particle profile: RFC 7250 raw public keys, HelloVerifyRequest cookie, 8-byte CID, mutual ECDSA P-256, TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8; sans-IO client and server in one thread",
            "theirs": "dtls crate 0.17.2: X.509 self-signed P-256 certificates both ways (chains not verified), cookie, extended master secret, TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8; two DTLSConn over webrtc-util's in-memory pipe on a single-thread tokio runtime",
            "quick": args.quick,
            "release_build": !cfg!(debug_assertions),
        });
        print(&format!("{json:#}\n"));
    } else {
        print(&table(&f, args.quick));
    }
    Ok(ExitCode::SUCCESS)
}

/// The side-by-side table and what each figure includes.
fn table(f: &Figures, quick: bool) -> String {
    let mut out = String::from(
        "DTLS 1.2, TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, P-256; one process, in memory, no sockets\n",
    );
    if quick {
        out += "(--quick: a few iterations only; the figures mean little)\n";
    }
    if cfg!(debug_assertions) {
        out += "(debug build: our code is unoptimised, ring's assembly is not; use --release)\n";
    }
    out += &format!(
        "\n{:<34} {:>14} {:>14} {:>12}\n",
        "", "ours", "dtls crate", "ours/theirs"
    );
    let row = |name: &str, ours: f64, theirs: Option<f64>, base: f64| {
        let theirs = theirs.map_or(String::new(), |t| format!("{t:.1}"));
        format!(
            "{name:<34} {ours:>14.1} {theirs:>14} {:>11.2}x\n",
            ours / base
        )
    };
    out += &row(
        "full handshakes per second",
        f.ours_handshakes,
        Some(f.theirs_handshakes),
        f.theirs_handshakes,
    );
    out += &row(
        "application data MB/s (1 KiB)",
        f.ours_mb,
        Some(f.theirs_mb),
        f.theirs_mb,
    );
    out += &row(
        "  ours in X.509 mode: handshakes/s",
        f.ours_x509_handshakes,
        None,
        f.theirs_handshakes,
    );
    out += &row(
        "  ours in X.509 mode: MB/s",
        f.ours_x509_mb,
        None,
        f.theirs_mb,
    );
    out += "
ours:   hil-protocol, Particle profile: RFC 7250 raw public keys, HelloVerifyRequest
        cookie, 8-byte connection ID (CID records client -> server), mutual ECDSA;
        sans-IO client and server in one thread, datagrams passed as Vec<u8>.
        A handshake: new client, cookie round trip, both flights, both Finished;
        one server for all handshakes (the association is removed after each).
        The X.509 rows: ours with theirs' certificates, no raw keys, no CID.
theirs: dtls crate 0.17.2, X.509 self-signed certificates both ways (chains not
        verified, as ours), cookie, extended master secret; two DTLSConn over
        webrtc-util's in-memory pipe on a single-thread tokio runtime. A handshake:
        new pipe, a Config per side (their API takes it by value), DTLSConn::new on
        both sides until both return; closing is not timed.
MB/s:   10^6 bytes of application data per second, 1 KiB records, client -> server,
        encrypt + decrypt + delivery to the receiving application (ours: the
        event queue; theirs: conn.read on a concurrent task).
crypto: ours verifies ECDSA with ring, signs (RFC 6979) and makes ECDH keys with p256
        and a precomputed generator table (protocol::dtls::ec); theirs signs and verifies
        with ring; ECDH secrets are RustCrypto p256 and AES-CCM_8 RustCrypto in both.
";
    out
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn print(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// What one measurement did: `n` handshakes or bytes in `spent` (only the timed part).
#[derive(Clone, Copy, Default)]
struct Tally {
    n: u64,
    spent: Duration,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.n += other.n;
        self.spent += other.spent;
    }
}

impl Tally {
    fn per_second(self) -> f64 {
        self.n as f64 / self.spent.as_secs_f64().max(1e-9)
    }
}

/// Runs `step` until the budget is spent; returns the iterations and the time spent in `step`.
fn measure(
    budget: Budget,
    mut step: impl FnMut() -> Result<Duration, String>,
) -> Result<Tally, String> {
    let mut t = Tally::default();
    while t.n < budget.min_iterations || t.spent < budget.time {
        t.spent += step()?;
        t.n += 1;
    }
    Ok(t)
}

/// The key pairs and certificates both sides use: one P-256 key and a self-signed certificate
/// for the server and one for the device, made by the `dtls` crate (rcgen) so that ours in
/// X.509 mode and theirs present the same certificates.
struct Keys {
    server: dtls::crypto::Certificate,
    device: dtls::crypto::Certificate,
}

impl Keys {
    fn generate() -> Result<Keys, String> {
        let make = |name: &str| {
            dtls::crypto::Certificate::generate_self_signed(vec![name.to_string()])
                .map_err(|e| format!("generating a certificate: {e}"))
        };
        Ok(Keys {
            server: make("hil-bench-server")?,
            device: make("hil-bench-device")?,
        })
    }

    fn ours(&self, mode: CertificateMode) -> Result<(ClientConfig, ServerConfig), String> {
        let key = |c: &dtls::crypto::Certificate| {
            signing_key_from_der(&c.private_key.serialized_der)
                .map_err(|e| format!("bench key: {e}"))
        };
        let (device_key, server_key) = (key(&self.device)?, key(&self.server)?);
        let mut client = ClientConfig::new(device_key.clone(), *server_key.verifying_key());
        let mut server = ServerConfig::new(server_key, vec![*device_key.verifying_key()]);
        if mode == CertificateMode::X509 {
            client.mode = mode;
            client.offer_connection_id = false;
            client.device_certificate = Some(self.device.certificate[0].to_vec());
            server.mode = mode;
            server.server_certificate = Some(self.server.certificate[0].to_vec());
            server.assign_connection_id = false;
        }
        Ok((client, server))
    }
}

fn peer(i: u64) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1024 + (i % 60000) as u16))
}

/// Passes datagrams both ways until neither side has anything to send.
fn pump(client: &mut Client<ChaCha8Rng>, server: &mut Server<ChaCha8Rng>, from: SocketAddr) {
    let now = Duration::ZERO;
    loop {
        let mut progress = false;
        while let Some(d) = client.poll_transmit() {
            server.handle_datagram(now, from, &d);
            progress = true;
        }
        while let Some(t) = server.poll_transmit() {
            client.handle_datagram(now, &t.payload);
            progress = true;
        }
        if !progress {
            return;
        }
    }
}

fn ours_handshakes(keys: &Keys, mode: CertificateMode, budget: Budget) -> Result<Tally, String> {
    let (client_config, server_config) = keys.ours(mode)?;
    let mut server = Server::new(server_config, ChaCha8Rng::seed_from_u64(1));
    let mut i = 0u64;
    measure(budget, || {
        i += 1;
        let start = Instant::now();
        let from = peer(i);
        let mut client = Client::connect(
            client_config.clone(),
            ChaCha8Rng::seed_from_u64(1000 + i),
            Duration::ZERO,
        );
        pump(&mut client, &mut server, from);
        let connected = client.poll_event() == Some(Event::Connected);
        let handle = match server.poll_event() {
            Some(ServerEvent::Connected { handle, .. }) => Some(handle),
            _ => None,
        };
        let spent = start.elapsed();
        match (connected, handle) {
            (true, Some(handle)) => {
                server.remove(handle);
                Ok(spent)
            }
            _ => Err("our handshake did not complete".to_string()),
        }
    })
}

/// Bytes of application data delivered, and the time it took.
fn ours_throughput(keys: &Keys, mode: CertificateMode, budget: Budget) -> Result<Tally, String> {
    let (client_config, server_config) = keys.ours(mode)?;
    let mut server = Server::new(server_config, ChaCha8Rng::seed_from_u64(2));
    let mut client = Client::connect(client_config, ChaCha8Rng::seed_from_u64(3), Duration::ZERO);
    let from = peer(0);
    pump(&mut client, &mut server, from);
    if client.poll_event() != Some(Event::Connected) {
        return Err("our handshake did not complete".into());
    }
    while server.poll_event().is_some() {}
    let payload = vec![0xa5u8; RECORD];
    let now = Duration::ZERO;
    // Records go in batches so that the clock is read rarely.
    const BATCH: u64 = 100;
    let budget = Budget {
        min_iterations: budget.min_iterations.div_ceil(BATCH),
        ..budget
    };
    let mut delivered = 0usize;
    let batches = measure(budget, || {
        let start = Instant::now();
        for _ in 0..BATCH {
            client
                .send_application_data(now, &payload)
                .map_err(|e| e.to_string())?;
            while let Some(d) = client.poll_transmit() {
                server.handle_datagram(now, from, &d);
            }
            while let Some(e) = server.poll_event() {
                if let ServerEvent::ApplicationData { data, .. } = e {
                    delivered += data.len();
                }
            }
        }
        Ok(start.elapsed())
    })?;
    let sent = batches.n * BATCH * RECORD as u64;
    if delivered as u64 != sent {
        return Err(format!("our server received {delivered} of {sent} bytes"));
    }
    Ok(Tally {
        n: sent,
        spent: batches.spent,
    })
}

/// The `dtls` crate's side: a runtime and the configurations (made once, cloned per connection
/// as its API requires).
struct Theirs {
    runtime: tokio::runtime::Runtime,
    client: dtls::config::Config,
    server: dtls::config::Config,
}

type Pair = (dtls::conn::DTLSConn, dtls::conn::DTLSConn);

impl Theirs {
    fn new(keys: &Keys) -> Result<Theirs, String> {
        let config = |cert: &dtls::crypto::Certificate| dtls::config::Config {
            certificates: vec![cert.clone()],
            cipher_suites: vec![
                dtls::cipher_suite::CipherSuiteId::Tls_Ecdhe_Ecdsa_With_Aes_128_Ccm_8,
            ],
            insecure_skip_verify: true,
            client_auth: dtls::config::ClientAuthType::RequireAnyClientCert,
            server_name: "hil-bench-server".into(),
            ..Default::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        Ok(Theirs {
            runtime,
            client: config(&keys.device),
            server: config(&keys.server),
        })
    }

    /// A connected pair over a fresh in-memory pipe.
    async fn connect(&self) -> Result<Pair, String> {
        let (a, b) = webrtc_util::conn::conn_pipe::pipe();
        let (client, server) = tokio::join!(
            dtls::conn::DTLSConn::new(Arc::new(a), self.client.clone(), true, None),
            dtls::conn::DTLSConn::new(Arc::new(b), self.server.clone(), false, None),
        );
        let client = client.map_err(|e| format!("dtls crate client: {e}"))?;
        let server = server.map_err(|e| format!("dtls crate server: {e}"))?;
        Ok((client, server))
    }

    fn handshakes(&self, budget: Budget) -> Result<Tally, String> {
        measure(budget, || {
            self.runtime.block_on(async {
                let start = Instant::now();
                let (client, server) =
                    tokio::time::timeout(Duration::from_secs(10), self.connect())
                        .await
                        .map_err(|_| "dtls crate handshake timed out".to_string())??;
                let spent = start.elapsed();
                let _ = client.close().await;
                let _ = server.close().await;
                Ok(spent)
            })
        })
    }

    /// Bytes of application data delivered, and the time it took.
    fn throughput(&self, budget: Budget) -> Result<Tally, String> {
        self.runtime.block_on(async {
            let (client, server) = tokio::time::timeout(Duration::from_secs(10), self.connect())
                .await
                .map_err(|_| "dtls crate handshake timed out".to_string())??;
            let payload = vec![0xa5u8; RECORD];
            const BATCH: u64 = 100;
            let mut batches = 0u64;
            let mut spent = Duration::ZERO;
            while batches * BATCH < budget.min_iterations || spent < budget.time {
                let start = Instant::now();
                let writer = async {
                    for _ in 0..BATCH {
                        client
                            .write(&payload, None)
                            .await
                            .map_err(|e| format!("dtls crate write: {e}"))?;
                    }
                    Ok::<(), String>(())
                };
                let reader = async {
                    let mut buf = vec![0u8; 2 * RECORD];
                    let mut got = 0usize;
                    while got < BATCH as usize * RECORD {
                        got += server
                            .read(&mut buf, None)
                            .await
                            .map_err(|e| format!("dtls crate read: {e}"))?;
                    }
                    Ok::<usize, String>(got)
                };
                let (w, r) = tokio::time::timeout(Duration::from_secs(10), async {
                    tokio::join!(writer, reader)
                })
                .await
                .map_err(|_| "dtls crate transfer timed out".to_string())?;
                w?;
                r?;
                spent += start.elapsed();
                batches += 1;
            }
            let _ = client.close().await;
            let _ = server.close().await;
            Ok(Tally {
                n: batches * BATCH * RECORD as u64,
                spent,
            })
        })
    }
}
