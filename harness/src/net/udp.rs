//! A [`Node`] on a real UDP socket (tokio): the thin I/O layer of DESIGN.md "Two transports,
//! one protocol". The local cloud runs as a [`UdpNode::server`] (one socket, every device);
//! an emulated device runs as a [`UdpNode::client`] (a socket connected to the server address,
//! reference 1.1: Gen3 devices speak UDP to port 5684).
//!
//! The driver's clock is the one place time is read: an `Instant` taken at start, `now` is the
//! time elapsed since. The driver sends what the node queues, sleeps until the node's timeout
//! or the next datagram, binds a new socket when the node's
//! [`Node::local_addr_generation`] changes (a device that reset), and stops when asked
//! ([`UdpNode::shutdown`]) or when its handle is dropped.
//!
//! The node stays reachable while it runs: [`UdpNode::with_node`] changes it (send data, press
//! its reset) and wakes the driver; [`UdpNode::wait_for`] waits until a condition on it holds.
//!
//! Bursts are batched where the system allows (Linux): a run of equal-sized datagrams to one
//! peer (the cloud's OTA chunks, the device's acks) leaves in one `sendmsg` that the kernel
//! segments (UDP GSO), and a socket reads such a burst whole (UDP GRO) and hands the node its
//! datagrams one by one. Each datagram is still its own UDP datagram on the wire.
//!
//! Datagrams are untrusted input and sending can fail transiently (ICMP port unreachable comes
//! back as `ConnectionRefused` on a connected socket): such errors are counted in [`UdpStats`]
//! and the node goes on, as it would over a lossy network.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Node;

/// Largest datagram received (the UDP maximum).
const RECV_BUFFER: usize = 65_536;
/// Reads (each one datagram, or a burst the system kept whole) in one go before the node's
/// output is sent again.
const RECV_BATCH: usize = 64;
/// Most datagrams in one segmented send (Linux's UDP_MAX_SEGMENTS).
const MAX_SEGMENTS: usize = 64;
/// Most bytes in one segmented send (one IP packet's payload before segmentation).
const MAX_BATCH_BYTES: usize = 60_000;

/// How the driver's socket is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Bound to this address, talking to any peer.
    Server { bind: SocketAddr },
    /// Bound to `bind` (port 0: an ephemeral port, a new one at every rebind) and connected to
    /// `server`: datagrams from other addresses are not received.
    Client {
        bind: SocketAddr,
        server: SocketAddr,
    },
}

/// Datagram counters of a running driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpStats {
    pub sent: u64,
    pub received: u64,
    /// Sends that failed (counted, then ignored like a lost datagram).
    pub send_errors: u64,
    /// Receive errors that were transient (ICMP unreachable reported on the socket).
    pub recv_errors: u64,
    /// New sockets bound after a [`Node::local_addr_generation`] change.
    pub rebinds: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    send_errors: AtomicU64,
    recv_errors: AtomicU64,
    rebinds: AtomicU64,
}

struct Shared<N> {
    node: Mutex<N>,
    start: Instant,
    /// The owner changed the node: poll it again.
    wake: Notify,
    /// Bumped after every time the driver handled the node, for [`UdpNode::wait_for`].
    progress: watch::Sender<u64>,
    local_addr: Mutex<SocketAddr>,
    counters: Counters,
    /// Sees every datagram sent and received, when set ([`UdpNode::capture`]).
    capture: Mutex<Option<Capture>>,
    capturing: AtomicBool,
}

/// Called with (source, destination, payload) of every datagram a node sends or receives.
pub type Capture = Box<dyn FnMut(SocketAddr, SocketAddr, &[u8]) + Send>;

impl<N> Shared<N> {
    /// Hands a datagram to the capture, if any. `peer` is where it came from (`incoming`) or
    /// went to.
    fn captured(&self, socket: &UdpSocket, peer: SocketAddr, incoming: bool, data: &[u8]) {
        if !self.capturing.load(Ordering::Relaxed) {
            return;
        }
        let Ok(local) = socket.local_addr() else {
            return;
        };
        let (src, dst) = if incoming {
            (peer, local)
        } else {
            (local, peer)
        };
        {
            if let Some(sink) = self
                .capture
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                sink(src, dst, data);
            }
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn lock(&self) -> MutexGuard<'_, N> {
        // A node that panicked is still the best state there is to hand back.
        self.node.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A [`Node`] running on a UDP socket. See the [module documentation](self).
pub struct UdpNode<N> {
    shared: Arc<Shared<N>>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<io::Result<()>>,
}

impl<N> std::fmt::Debug for UdpNode<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpNode")
            .field("local_addr", &self.local_addr())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<N: Node + Send + 'static> UdpNode<N> {
    /// Runs `node` on a socket bound to `bind`, answering any peer (the cloud's flavour). Must
    /// be called inside a tokio runtime with I/O and time enabled.
    pub async fn server(node: N, bind: SocketAddr) -> io::Result<Self> {
        Self::spawn(node, Mode::Server { bind }).await
    }

    /// Runs `node` on an ephemeral-port socket connected to `server` (a device's flavour).
    pub async fn client(node: N, server: SocketAddr) -> io::Result<Self> {
        let bind = match server {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        Self::client_bound(node, bind, server).await
    }

    /// Like [`UdpNode::client`] from a chosen local address (port 0: ephemeral).
    pub async fn client_bound(node: N, bind: SocketAddr, server: SocketAddr) -> io::Result<Self> {
        Self::spawn(node, Mode::Client { bind, server }).await
    }

    async fn spawn(node: N, mode: Mode) -> io::Result<Self> {
        let socket = bind(mode).await?;
        let generation = node.local_addr_generation();
        let shared = Arc::new(Shared {
            node: Mutex::new(node),
            start: Instant::now(),
            wake: Notify::new(),
            progress: watch::Sender::new(0),
            local_addr: Mutex::new(socket.local_addr()?),
            counters: Counters::default(),
            capture: Mutex::new(None),
            capturing: AtomicBool::new(false),
        });
        let (shutdown, stop) = watch::channel(false);
        let task = tokio::spawn(drive(shared.clone(), socket, mode, generation, stop));
        Ok(Self {
            shared,
            shutdown,
            task,
        })
    }
}

impl<N> UdpNode<N> {
    /// The socket's address (it changes when the node opens a new socket).
    pub fn local_addr(&self) -> SocketAddr {
        *self
            .shared
            .local_addr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, `sink` sees every datagram the node sends and receives (for a pcap file:
    /// [`crate::pcap::PcapWriter`]). It runs on the driver's task: keep it short.
    pub fn capture(&self, sink: Capture) {
        *self
            .shared
            .capture
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(sink);
        self.shared.capturing.store(true, Ordering::Relaxed);
    }

    /// The driver's time: what the node was and will be given as `now`.
    pub fn now(&self) -> Duration {
        self.shared.now()
    }

    pub fn stats(&self) -> UdpStats {
        let c = &self.shared.counters;
        UdpStats {
            sent: c.sent.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            send_errors: c.send_errors.load(Ordering::Relaxed),
            recv_errors: c.recv_errors.load(Ordering::Relaxed),
            rebinds: c.rebinds.load(Ordering::Relaxed),
        }
    }

    /// Whether the driver has stopped (asked to, or after a socket error).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl<N: Node> UdpNode<N> {
    /// Changes the node with the driver's `now`; the driver then sends what it queued and
    /// follows its new timeout.
    pub fn with_node<R>(&self, f: impl FnOnce(&mut N, Duration) -> R) -> R {
        let result = {
            let mut node = self.shared.lock();
            f(&mut node, self.shared.now())
        };
        self.shared.wake.notify_one();
        result
    }

    /// Waits until `done` holds for the node (checked now and after every datagram or timeout
    /// the driver handles), at most `limit`. False if it did not hold in time or the driver
    /// stopped first.
    pub async fn wait_for(&self, limit: Duration, mut done: impl FnMut(&N) -> bool) -> bool {
        let mut progress = self.shared.progress.subscribe();
        let deadline = Instant::now() + limit;
        loop {
            progress.borrow_and_update();
            if done(&self.shared.lock()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => continue,
                // The driver stopped, or time is up: one last look.
                Ok(Err(_)) | Err(_) => return done(&self.shared.lock()),
            }
        }
    }

    /// Stops the driver after it has sent what the node queued, and hands the node back. An
    /// error if the driver had stopped on a socket error.
    pub async fn shutdown(self) -> io::Result<N> {
        let _ = self.shutdown.send(true);
        let outcome = match self.task.await {
            Ok(result) => result,
            Err(e) => Err(io::Error::other(format!("the UDP driver task failed: {e}"))),
        };
        let node = match Arc::try_unwrap(self.shared) {
            Ok(shared) => shared.node.into_inner().unwrap_or_else(|e| e.into_inner()),
            Err(_) => return Err(io::Error::other("the UDP driver still holds the node")),
        };
        outcome.map(|()| node)
    }
}

/// What a server socket asks the kernel to buffer: a cloud gets bursts (a rack of devices
/// handshaking at once) that the default (~200 KiB, about 100 small datagrams on Linux, each
/// costing its buffer's true size) drops, costing each device a retransmission timeout. The
/// kernel caps it (`net.core.rmem_max`); a refusal leaves the default.
const SERVER_RECV_BUFFER: usize = 4 << 20;

async fn bind(mode: Mode) -> io::Result<UdpSocket> {
    match mode {
        Mode::Server { bind } => {
            let domain = socket2::Domain::for_address(bind);
            let socket =
                socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
            let _ = socket.set_recv_buffer_size(SERVER_RECV_BUFFER);
            socket.set_nonblocking(true)?;
            socket.bind(&bind.into())?;
            UdpSocket::from_std(socket.into())
        }
        Mode::Client { bind, server } => {
            let socket = UdpSocket::bind(bind).await?;
            socket.connect(server).await?;
            Ok(socket)
        }
    }
}

/// Errors that a datagram socket reports for earlier datagrams (ICMP) or interruptions: the
/// node goes on.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

async fn drive<N: Node>(
    shared: Arc<Shared<N>>,
    mut socket: UdpSocket,
    mode: Mode,
    mut generation: u32,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut batch = Vec::new();
    let mut outgoing = Vec::new();
    let mut state = UdpSocketState::new((&socket).into())?;
    let counters = &shared.counters;
    let mut stopping = false;
    loop {
        // A node that opened a new socket gets one before anything else leaves.
        let current = shared.lock().local_addr_generation();
        if current != generation {
            socket = rebind(socket, mode).await?;
            state = UdpSocketState::new((&socket).into())?;
            *shared.local_addr.lock().unwrap_or_else(|e| e.into_inner()) = socket.local_addr()?;
            counters.rebinds.fetch_add(1, Ordering::Relaxed);
            generation = current;
        }
        let timeout = {
            let mut node = shared.lock();
            while let Some(transmit) = node.poll_transmit() {
                outgoing.push(transmit);
            }
            node.poll_timeout()
        };
        send_all(&shared, &socket, &state, mode, &outgoing, &mut batch).await;
        outgoing.clear();
        shared.progress.send_modify(|n| *n = n.wrapping_add(1));
        if stopping || *stop.borrow() {
            return Ok(());
        }
        // A deadline too far to represent is no deadline.
        let deadline = timeout.and_then(|t| shared.start.checked_add(t));

        tokio::select! {
            biased;
            changed = stop.changed() => {
                // Asked to stop, or the handle is gone: one more pass sends what is queued.
                stopping = changed.is_err() || *stop.borrow();
            }
            // Before the socket: a flood of datagrams must not starve the node's timers.
            _ = sleep_until(deadline), if deadline.is_some() => {
                let mut node = shared.lock();
                let now = shared.now();
                if node.poll_timeout().is_some_and(|t| now >= t) {
                    node.handle_timeout(now);
                }
            }
            _ = shared.wake.notified() => {}
            ready = socket.readable() => {
                ready?;
                let mut node = shared.lock();
                // Take what is already there (a burst) before answering.
                for _ in 0..RECV_BATCH {
                    let mut meta = [RecvMeta::default()];
                    let received = socket.try_io(Interest::READABLE, || {
                        state.recv((&socket).into(), &mut [IoSliceMut::new(&mut buf)], &mut meta)
                    });
                    match received {
                        Ok(_) => {
                            let [meta] = meta;
                            let from = meta.addr;
                            let data = buf.get(..meta.len).unwrap_or_default();
                            // The datagrams of one read arrived together: one clock reading
                            // for all of them.
                            let now = shared.now();
                            // With GRO, one read holds several datagrams of `stride` bytes
                            // (the last may be shorter).
                            for datagram in data.chunks(meta.stride.max(1)) {
                                counters.received.fetch_add(1, Ordering::Relaxed);
                                shared.captured(&socket, from, true, datagram);
                                node.handle_datagram(now, from, datagram);
                            }
                            if meta.len == 0 {
                                counters.received.fetch_add(1, Ordering::Relaxed);
                                shared.captured(&socket, from, true, &[]);
                                node.handle_datagram(now, from, &[]);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if is_transient(&e) => {
                            counters.recv_errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}

/// Sends what the node queued. A run of datagrams to one peer that all have the first one's
/// size (the last may be shorter: a burst of OTA chunks) leaves in one `sendmsg` where the
/// system segments it (UDP GSO); anything else, and a batch the system refused, one by one.
async fn send_all<N>(
    shared: &Shared<N>,
    socket: &UdpSocket,
    state: &UdpSocketState,
    mode: Mode,
    outgoing: &[(SocketAddr, Vec<u8>)],
    batch: &mut Vec<u8>,
) {
    let counters = &shared.counters;
    let mut rest = outgoing;
    while let Some(((to, first), _)) = rest.split_first() {
        let size = first.len();
        let most = state.max_gso_segments().min(MAX_SEGMENTS);
        let mut run = 1;
        let mut bytes = size;
        while size > 0 && run < most.min(rest.len()) {
            let (next_to, next) = &rest[run];
            if next_to != to || next.len() > size || bytes + next.len() > MAX_BATCH_BYTES {
                break;
            }
            run += 1;
            bytes += next.len();
            if next.len() < size {
                break;
            }
        }
        let (now, later) = rest.split_at(run);
        rest = later;
        if run > 1 {
            batch.clear();
            for (_, data) in now {
                batch.extend_from_slice(data);
            }
            let transmit = Transmit {
                destination: *to,
                ecn: None,
                contents: batch,
                segment_size: Some(size),
                src_ip: None,
            };
            let sent = socket
                .async_io(Interest::WRITABLE, || {
                    state.try_send(socket.into(), &transmit)
                })
                .await;
            if sent.is_ok() {
                counters.sent.fetch_add(run as u64, Ordering::Relaxed);
                for (to, data) in now {
                    shared.captured(socket, *to, false, data);
                }
                continue;
            }
        }
        for (to, data) in now {
            // A connected socket sends without an address (some systems refuse one, EISCONN).
            let sent = match mode {
                Mode::Client { server, .. } if *to == server => socket.send(data).await,
                _ => socket.send_to(data, *to).await,
            };
            match sent {
                Ok(_) => {
                    shared.captured(socket, *to, false, data);
                    counters.sent.fetch_add(1, Ordering::Relaxed)
                }
                Err(_) => counters.send_errors.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A new socket for a node that opened one. With port 0 the new socket is bound before the
/// old one closes, so the port is sure to change; a fixed port is released first.
async fn rebind(old: UdpSocket, mode: Mode) -> io::Result<UdpSocket> {
    let fixed_port = match mode {
        Mode::Server { bind } | Mode::Client { bind, .. } => bind.port() != 0,
    };
    if fixed_port {
        drop(old);
        bind(mode).await
    } else {
        let new = bind(mode).await?;
        drop(old);
        Ok(new)
    }
}
