//! The paced OTA sender over real UDP through a rate-limiting relay on loopback (issue 13):
//! the relay carries `rate` bytes per second each way, drops what would wait longer than its
//! queue, and loses 5 % of datagrams (seeded). The cloud must send at most 1.3 chunk
//! datagrams per chunk and reach 80 % of the link rate in file bytes.
//!
//! The link (20 KB/s, 2 s queue, 1 MiB: about a minute) runs with
//! `cargo test -p hil-harness --test udp_pacing -- --ignored`; `cargo test` runs the same link
//! five times faster (100 KB/s, 400 ms queue: the same 40 KB of queue).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use emulator::board::Board;
use emulator::firmware::{FirmwareSet, ModuleSizes, Versions};
use emulator::os::{AppBehaviour, DeviceOs, Identity};
use harness::cloud::{Cloud, CloudConfig, CloudEvent, JobStatus, OtaEvent, OtaEventKind};
use harness::net::udp::UdpNode;
use harness::testbed::{CloudNode, DeviceNode};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// One direction of the relay: a bandwidth queue with a limit and random loss.
struct Shaper {
    rate: u64,
    queue: Duration,
    loss: f64,
    busy_until: Instant,
    rng: ChaCha8Rng,
}

impl Shaper {
    /// When the datagram leaves, or `None` when it is dropped (lost, or the queue is full).
    fn admit(&mut self, len: usize) -> Option<Instant> {
        let now = Instant::now();
        if (self.rng.next_u32() as f64) < self.loss * f64::from(u32::MAX) {
            return None;
        }
        let start = self.busy_until.max(now);
        if start - now > self.queue {
            return None;
        }
        let done = start + Duration::from_nanos(len as u64 * 1_000_000_000 / self.rate);
        self.busy_until = done;
        Some(done)
    }
}

/// Forwards `from` -> `to_socket` (to `to`), shaped; `to` may be learned later.
async fn pump(
    from: Arc<UdpSocket>,
    to_socket: Arc<UdpSocket>,
    to: Arc<Mutex<Option<SocketAddr>>>,
    learn: Option<Arc<Mutex<Option<SocketAddr>>>>,
    mut shaper: Shaper,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, src)) = from.recv_from(&mut buf).await else {
            return;
        };
        if let Some(l) = &learn {
            *l.lock().await = Some(src);
        }
        let Some(at) = shaper.admit(n) else { continue };
        let data = buf[..n].to_vec();
        let (sock, dest) = (to_socket.clone(), to.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            if let Some(d) = *dest.lock().await {
                let _ = sock.send_to(&data, d).await;
            }
        });
    }
}

/// A relay: devices send to the returned address; it forwards to `cloud` from its own port.
async fn relay(cloud: SocketAddr, rate: u64, queue: Duration, loss: f64) -> SocketAddr {
    let device_side = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let cloud_side = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = device_side.local_addr().unwrap();
    let device_addr = Arc::new(Mutex::new(None));
    let cloud_addr = Arc::new(Mutex::new(Some(cloud)));
    let shaper = |seed| Shaper {
        rate,
        queue,
        loss,
        busy_until: Instant::now(),
        rng: ChaCha8Rng::seed_from_u64(seed),
    };
    tokio::spawn(pump(
        device_side.clone(),
        cloud_side.clone(),
        cloud_addr,
        Some(device_addr.clone()),
        shaper(1),
    ));
    tokio::spawn(pump(cloud_side, device_side, device_addr, None, shaper(2)));
    addr
}

struct Figures {
    chunks: u32,
    datagrams: u32,
    goodput_share: f64,
}

async fn paced_transfer_through_relay(rate: u64, queue: Duration, kib: u32) -> Figures {
    let seed = 13;
    let board = Board::builtin("p2").unwrap();
    let server_key = harness::keys::generate_key(&mut ChaCha8Rng::seed_from_u64(seed ^ 0xC10D));
    let mut cloud = Cloud::new(CloudConfig::new(server_key.clone()), seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let key = harness::keys::generate_key(&mut rng);
    let mut device_id = [0u8; 12];
    rng.fill_bytes(&mut device_id);
    let (device, _) = FirmwareSet::new(&board, ModuleSizes::default(), seed)
        .provision(&Versions::BASELINE)
        .unwrap();
    let identity = Identity {
        device_id,
        server_key: *server_key.verifying_key(),
        key,
    };
    cloud.register_device(device_id, identity.public_key());
    let os = DeviceOs::new(identity, device, AppBehaviour::default(), seed);
    let cloud = UdpNode::server(CloudNode::new(cloud), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let relay = relay(cloud.local_addr(), rate, queue, 0.05).await;
    let device = UdpNode::client(DeviceNode::new(os, relay), relay)
        .await
        .unwrap();
    device.with_node(|n, now| {
        n.os.power_on(now);
        n.drain(now);
    });
    assert!(
        device
            .wait_for(Duration::from_secs(60), |n| n.os.status().connected)
            .await,
        "the device did not connect through the relay"
    );
    // Pseudo-random bytes: only the transfer is measured, up to the UpdateFinish.
    let mut file = vec![0u8; kib as usize * 1024];
    rng.fill_bytes(&mut file);
    let job = cloud.with_node(|c, now| c.cloud.flash(now, device_id, file));
    let finished = cloud
        .wait_for(Duration::from_secs(600), |c| {
            !matches!(
                c.cloud.job(job),
                Some(JobStatus::Queued | JobStatus::Starting | JobStatus::Transferring { .. })
            )
        })
        .await;
    assert!(finished, "the transfer did not end within 600 s");
    cloud.with_node(|c, _| {
        let (mut start, mut end, mut chunks, mut resent) = (None, None, 0, 0);
        for (_, e) in &c.events {
            let CloudEvent::Ota(OtaEvent {
                at, job: j, kind, ..
            }) = e
            else {
                continue;
            };
            if *j != job {
                continue;
            }
            match kind {
                OtaEventKind::Accepted { chunks: n, .. } => {
                    start.get_or_insert(*at);
                    chunks = *n;
                }
                OtaEventKind::Retransmitted { indices } => resent += indices.len() as u32,
                OtaEventKind::Finishing => {
                    end.get_or_insert(*at);
                }
                _ => {}
            }
        }
        let (start, end) = (
            start.expect("accepted"),
            end.expect("every chunk acknowledged"),
        );
        let seconds = (end - start).as_secs_f64();
        Figures {
            chunks,
            datagrams: chunks + resent,
            goodput_share: f64::from(kib * 1024) / seconds / rate as f64,
        }
    })
}

fn check(f: &Figures) {
    let per_chunk = f64::from(f.datagrams) / f64::from(f.chunks);
    println!(
        "chunks {}, chunk datagrams {} ({per_chunk:.2} per chunk), goodput {:.0}% of the link",
        f.chunks,
        f.datagrams,
        f.goodput_share * 100.0
    );
    assert!(per_chunk <= 1.3, "{per_chunk:.2} datagrams per chunk");
    assert!(f.goodput_share >= 0.8, "goodput {:.2}", f.goodput_share);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_transfer_through_a_rate_limiting_relay_meets_the_figures() {
    check(&paced_transfer_through_relay(100_000, Duration::from_millis(400), 1024).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about a minute: the issue's 20 KB/s link, run with --ignored"]
async fn paced_transfer_through_a_20_kb_per_s_relay_meets_the_figures() {
    check(&paced_transfer_through_relay(20_000, Duration::from_secs(2), 1024).await);
}
