//! A datagram network in virtual time: nodes at addresses, a clock that jumps from one event to
//! the next, and a seeded fault model (TigerBeetle's VOPR, tokio's turmoil). Nothing here reads
//! the wall clock or an unseeded RNG: a run is fixed by its seed and its script, and every
//! failure names the seed that replays it.
//!
//! Events are datagram deliveries and node timeouts. [`SimNetwork::run_until`] and
//! [`SimNetwork::run_until_with`] process them in time order (ties in the order they were
//! scheduled), so a week of idle devices pinging every 25 s costs a few hundred thousand heap
//! operations, not a week.
//!
//! # Faults
//!
//! Every datagram a node sends goes through, in this order:
//! 1. the sender being muted ([`SimNetwork::set_muted`]) or no node holding the destination
//!    address: dropped;
//! 2. the filter ([`SimNetwork::set_filter`]), a test's own verdict on each datagram;
//! 3. a cut: the whole network ([`SimNetwork::partition`]), one node ([`SimNetwork::isolate`]) or
//!    the link between two nodes ([`SimNetwork::cut_link`]), each for a span of virtual time;
//! 4. "drop the next N" of that direction ([`SimNetwork::drop_next`]);
//! 5. the link's [`LinkFaults`] (per direction, else the global ones): the bandwidth queue
//!    (with `bandwidth` set, a datagram leaves once the ones before it in that direction have
//!    been sent, taking `len / bandwidth`; the queue is unbounded, as a modem's buffer that
//!    never fills), then loss, then latency + uniform jitter, plus with probability `reorder` an extra uniform delay up to
//!    `reorder_delay`; with probability `duplicate` a second copy with its own delay.
//!
//! A datagram is checked again when it arrives: a cut that started while it was in flight, a
//! muted receiver or an address nobody holds any more (a device that reset and moved to a new
//! port) drop it. Faults can be changed at any time between or during runs.
//!
//! Every fate is counted in [`Stats`] (globally and per link) and shown to the trace hook
//! ([`SimNetwork::set_trace`]) with the bytes.

use std::any::Any;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::Node;

/// How many events may happen at one instant before the run is declared a livelock (a node
/// whose timeout never moves forward, or two nodes answering each other with zero latency),
/// and how many more per node (a large fleet whose timers coincide).
const MAX_EVENTS_PER_INSTANT: u32 = 100_000;
const MAX_EVENTS_PER_INSTANT_PER_NODE: u32 = 100;

/// Source ports handed to nodes that open a new socket (the IANA dynamic range).
const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

/// Names a node of a [`SimNetwork`] for as long as it is there (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

/// What one direction of a link does to datagrams. Probabilities are in `0.0..=1.0` (values
/// outside are clamped).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkFaults {
    /// Base one-way delay.
    pub latency: Duration,
    /// Uniform extra delay in `0..=jitter` for every datagram (this alone can reorder).
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram arrives twice (the copy has its own delay).
    pub duplicate: f64,
    /// Probability that a datagram is held back by an extra uniform delay up to `reorder_delay`.
    pub reorder: f64,
    pub reorder_delay: Duration,
    /// Bytes per second one direction carries (0 = unlimited): a slow cellular link.
    pub bandwidth: u64,
    /// With `bandwidth`: the longest a datagram may wait in the queue before it starts to
    /// leave; one that would wait longer is dropped (a modem's or router's full buffer,
    /// [`DropReason::QueueFull`]). Zero: the queue is unbounded.
    pub queue_limit: Duration,
}

impl LinkFaults {
    /// A perfect link with 1 ms latency (zero latency lets two chatty nodes livelock at one
    /// instant).
    pub const PERFECT: LinkFaults = LinkFaults {
        latency: Duration::from_millis(1),
        jitter: Duration::ZERO,
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        reorder_delay: Duration::ZERO,
        bandwidth: 0,
        queue_limit: Duration::ZERO,
    };
}

impl Default for LinkFaults {
    fn default() -> Self {
        Self::PERFECT
    }
}

/// Why a datagram did not arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DropReason {
    /// Random loss from [`LinkFaults::loss`].
    Loss,
    /// One of the datagrams [`SimNetwork::drop_next`] asked to drop.
    DropNext,
    /// A partition, isolation or link cut was in force.
    Cut,
    /// No node holds the destination address (any more).
    NoRoute,
    /// The sender or the receiver is muted.
    Muted,
    /// The test's filter said so.
    Filter,
    /// The bandwidth queue was full ([`LinkFaults::queue_limit`]).
    QueueFull,
}

impl DropReason {
    pub const ALL: [DropReason; 7] = [
        DropReason::Loss,
        DropReason::DropNext,
        DropReason::Cut,
        DropReason::NoRoute,
        DropReason::Muted,
        DropReason::Filter,
        DropReason::QueueFull,
    ];
}

/// What happened to a datagram, as shown to the trace hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// A node sent it (every datagram is shown once as sent, before any fault).
    Sent,
    /// The fault model made a second copy (shown in addition to `Sent`).
    Duplicated,
    /// The reorder fault held it (or its copy) back by this much beyond the link's latency and
    /// jitter (shown in addition to `Sent`).
    Delayed(Duration),
    /// It reached the node at its destination.
    Delivered,
    /// It was dropped, at sending or on arrival.
    Dropped(DropReason),
}

/// One datagram event, for the trace hook.
#[derive(Debug, Clone, Copy)]
pub struct DatagramEvent<'a> {
    /// Virtual time of the event (sending or arrival).
    pub at: Duration,
    pub from: SocketAddr,
    pub to: SocketAddr,
    /// The sending node.
    pub src: NodeId,
    /// The node holding `to` at the time of the event, if any.
    pub dst: Option<NodeId>,
    pub data: &'a [u8],
    pub fate: Fate,
}

/// Datagram counters. Once nothing is in flight, `sent + duplicated == delivered + dropped`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub sent: u64,
    pub duplicated: u64,
    /// Held back by the reorder fault (they are delivered or dropped as well).
    pub delayed: u64,
    pub delivered: u64,
    pub dropped: u64,
    /// `dropped`, by reason (indexed by `DropReason as usize`; see [`Stats::dropped_for`]).
    pub dropped_by: [u64; DropReason::ALL.len()],
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by_reason: BTreeMap<DropReason, u64> = DropReason::ALL
            .iter()
            .map(|&r| (r, self.dropped_for(r)))
            .filter(|&(_, n)| n > 0)
            .collect();
        f.debug_struct("Stats")
            .field("sent", &self.sent)
            .field("duplicated", &self.duplicated)
            .field("delayed", &self.delayed)
            .field("delivered", &self.delivered)
            .field("dropped", &self.dropped)
            .field("dropped_by", &by_reason)
            .finish()
    }
}

impl Stats {
    fn count(&mut self, fate: Fate) {
        match fate {
            Fate::Sent => self.sent += 1,
            Fate::Duplicated => self.duplicated += 1,
            Fate::Delayed(_) => self.delayed += 1,
            Fate::Delivered => self.delivered += 1,
            Fate::Dropped(reason) => {
                self.dropped += 1;
                self.dropped_by[reason as usize] += 1;
            }
        }
    }

    /// How many were dropped for `reason`.
    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        self.dropped_by[reason as usize]
    }
}

/// A simulation that cannot go on, or did not reach its goal. Every message names the seed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("{addr} is already held by {holder} (seed {seed})")]
    AddrInUse {
        addr: SocketAddr,
        holder: NodeId,
        seed: u64,
    },
    #[error("there is no {0} in the network (seed {1})")]
    NoSuchNode(NodeId, u64),
    #[error(
        "livelock: {events} events at t = {} s without time moving, last at {node} \
         (seed {seed}; a node whose timeout does not move forward, or zero latency)",
        secs(*at)
    )]
    Livelock {
        at: Duration,
        node: NodeId,
        events: u32,
        seed: u64,
    },
    #[error(
        "every ephemeral port on {ip} is taken; {node} cannot open a new socket (seed {seed})"
    )]
    PortsExhausted {
        ip: std::net::IpAddr,
        node: NodeId,
        seed: u64,
    },
    #[error("the condition did not hold by t = {} s (seed {seed})", secs(*deadline))]
    Deadline { deadline: Duration, seed: u64 },
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// The parts of [`Node`] the network needs, plus downcasting so tests get their node type back.
trait SimNode: Node {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: Node + Any> SimNode for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

struct Slot {
    node: Box<dyn SimNode>,
    addr: SocketAddr,
    generation: u32,
    muted: bool,
    /// The timeout last reported by the node.
    timer: Option<Duration>,
    /// When its live queue entry is due, and that entry's token. A timeout that moves later
    /// keeps the earlier entry, which is moved when it comes up (a node that pushes its
    /// timeout forward on every datagram, like an OTA transfer timer, leaves no trail of stale
    /// entries); a timeout that moves earlier gets a new entry and a new token.
    scheduled: Option<Duration>,
    timer_token: u64,
}

/// A datagram on its way.
struct Flight {
    from: SocketAddr,
    to: SocketAddr,
    src: NodeId,
    data: Vec<u8>,
}

/// Kept small: the heap moves these around.
enum Action {
    /// Index into `SimNetwork::flights`.
    Deliver(usize),
    Timer {
        node: NodeId,
        token: u64,
    },
}

/// Every node ever added, by id (ids are indices and never reused).
#[derive(Default)]
struct Nodes(Vec<Option<Slot>>);

impl Nodes {
    fn get(&self, id: &NodeId) -> Option<&Slot> {
        self.0.get(id.0 as usize)?.as_ref()
    }
    fn get_mut(&mut self, id: &NodeId) -> Option<&mut Slot> {
        self.0.get_mut(id.0 as usize)?.as_mut()
    }
    fn contains_key(&self, id: &NodeId) -> bool {
        self.get(id).is_some()
    }
    fn push(&mut self, slot: Slot) {
        self.0.push(Some(slot));
    }
    fn remove(&mut self, id: &NodeId) -> Option<Slot> {
        self.0.get_mut(id.0 as usize)?.take()
    }
    fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| NodeId(i as u32))
    }
    fn len(&self) -> usize {
        self.0.iter().filter(|s| s.is_some()).count()
    }
}

/// FxHash-style hashing for the address table: the keys are our own, not an attacker's.
#[derive(Default, Clone, Copy)]
struct BuildAddrHasher;

impl std::hash::BuildHasher for BuildAddrHasher {
    type Hasher = AddrHasher;
    fn build_hasher(&self) -> AddrHasher {
        AddrHasher(0)
    }
}

struct AddrHasher(u64);

impl std::hash::Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(n as u64);
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(n as u64);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

struct Scheduled {
    at: Duration,
    order: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: the earliest event is the greatest (top of the max-heap).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

type TraceHook = Box<dyn FnMut(&DatagramEvent<'_>)>;
type Filter = Box<dyn FnMut(&DatagramEvent<'_>) -> bool>;

/// Nodes at addresses, a virtual clock and a seeded fault model. See the
/// [module documentation](self).
pub struct SimNetwork {
    seed: u64,
    rng: ChaCha8Rng,
    now: Duration,
    nodes: Nodes,
    by_addr: HashMap<SocketAddr, NodeId, BuildAddrHasher>,
    /// Datagrams in flight, referred to by index from the queue.
    flights: Vec<Option<Flight>>,
    free_flights: Vec<usize>,
    next_id: u32,
    next_port: u16,
    queue: BinaryHeap<Scheduled>,
    order: u64,
    /// Nodes changed by their owner since they were last polled.
    dirty: Vec<NodeId>,
    faults: LinkFaults,
    link_faults: BTreeMap<(NodeId, NodeId), LinkFaults>,
    partition_until: Duration,
    isolated_until: BTreeMap<NodeId, Duration>,
    cut_until: BTreeMap<(NodeId, NodeId), Duration>,
    drop_next: BTreeMap<(NodeId, NodeId), u64>,
    /// With a bandwidth limit: when each direction has finished sending what it holds.
    busy_until: BTreeMap<(NodeId, NodeId), Duration>,
    stats: Stats,
    link_stats: BTreeMap<(NodeId, NodeId), Stats>,
    trace: Option<TraceHook>,
    filter: Option<Filter>,
    at_instant: u32,
}

impl fmt::Debug for SimNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimNetwork")
            .field("seed", &self.seed)
            .field("now", &self.now)
            .field("nodes", &self.nodes.len())
            .field("queued", &self.queue.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl SimNetwork {
    /// An empty network at virtual time zero with perfect links ([`LinkFaults::PERFECT`]).
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: Duration::ZERO,
            nodes: Nodes::default(),
            by_addr: HashMap::default(),
            flights: Vec::new(),
            free_flights: Vec::new(),
            next_id: 0,
            next_port: *EPHEMERAL_PORTS.start(),
            queue: BinaryHeap::new(),
            order: 0,
            dirty: Vec::new(),
            faults: LinkFaults::PERFECT,
            link_faults: BTreeMap::new(),
            partition_until: Duration::ZERO,
            isolated_until: BTreeMap::new(),
            cut_until: BTreeMap::new(),
            drop_next: BTreeMap::new(),
            busy_until: BTreeMap::new(),
            stats: Stats::default(),
            link_stats: BTreeMap::new(),
            trace: None,
            filter: None,
            at_instant: 0,
        }
    }

    /// The seed that replays this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Virtual time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// "seed N, t = S s": for assertion messages, so a failing test says how to replay it.
    pub fn context(&self) -> String {
        format!("seed {}, t = {} s", self.seed, secs(self.now))
    }

    // ---- nodes -------------------------------------------------------------------------

    /// Puts `node` at `addr`. It is polled for datagrams and its timeout at the next run.
    pub fn add_node<N: Node + 'static>(
        &mut self,
        addr: SocketAddr,
        node: N,
    ) -> Result<NodeId, SimError> {
        if let Some(&holder) = self.by_addr.get(&addr) {
            return Err(SimError::AddrInUse {
                addr,
                holder,
                seed: self.seed,
            });
        }
        let id = NodeId(self.next_id);
        self.next_id += 1;
        debug_assert_eq!(self.nodes.0.len(), id.0 as usize);
        let generation = node.local_addr_generation();
        self.nodes.push(Slot {
            node: Box::new(node),
            addr,
            generation,
            muted: false,
            timer: None,
            scheduled: None,
            timer_token: 0,
        });
        self.by_addr.insert(addr, id);
        self.dirty.push(id);
        Ok(id)
    }

    /// Puts `node` at a free ephemeral port of `ip` (a device's first socket).
    pub fn add_node_ephemeral<N: Node + 'static>(
        &mut self,
        ip: std::net::IpAddr,
        node: N,
    ) -> Result<NodeId, SimError> {
        let port = self.free_port(ip).ok_or(SimError::PortsExhausted {
            ip,
            node: NodeId(self.next_id),
            seed: self.seed,
        })?;
        self.add_node(SocketAddr::new(ip, port), node)
    }

    /// Takes a node out of the network (a device powered off). Datagrams in flight to its
    /// address are dropped on arrival. `None` if there is no such node or it is not a `N`
    /// (then it stays).
    pub fn take_node<N: Node + 'static>(&mut self, id: NodeId) -> Option<N> {
        if !(*self.nodes.get(&id)?.node).as_any().is::<N>() {
            return None;
        }
        let slot = self.detach(id)?;
        slot.node.into_any().downcast::<N>().ok().map(|b| *b)
    }

    /// Takes a node out of the network and drops it. False if there was none.
    pub fn remove_node(&mut self, id: NodeId) -> bool {
        self.detach(id).is_some()
    }

    fn detach(&mut self, id: NodeId) -> Option<Slot> {
        let slot = self.nodes.remove(&id)?;
        self.by_addr.remove(&slot.addr);
        self.isolated_until.remove(&id);
        Some(slot)
    }

    /// The node, if it is there and is a `N`.
    pub fn node<N: Node + 'static>(&self, id: NodeId) -> Option<&N> {
        (*self.nodes.get(&id)?.node).as_any().downcast_ref()
    }

    /// The node, to drive it directly (send data, press its reset); it is polled for
    /// datagrams and its timeout before the next event. Use [`SimNetwork::now`] as its time.
    pub fn node_mut<N: Node + 'static>(&mut self, id: NodeId) -> Option<&mut N> {
        let slot = self.nodes.get_mut(&id)?;
        let node = (*slot.node).as_any_mut().downcast_mut()?;
        self.dirty.push(id);
        Some(node)
    }

    /// The ids of every node, in the order they were added.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.ids().collect()
    }

    /// The node's current address.
    pub fn addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.nodes.get(&id).map(|s| s.addr)
    }

    /// The node holding `addr`.
    pub fn node_at(&self, addr: SocketAddr) -> Option<NodeId> {
        self.by_addr.get(&addr).copied()
    }

    /// Moves a node to another address (what a [`Node::local_addr_generation`] bump does with
    /// a fresh ephemeral port).
    pub fn set_addr(&mut self, id: NodeId, addr: SocketAddr) -> Result<(), SimError> {
        if let Some(&holder) = self.by_addr.get(&addr) {
            if holder == id {
                return Ok(());
            }
            return Err(SimError::AddrInUse {
                addr,
                holder,
                seed: self.seed,
            });
        }
        let slot = self
            .nodes
            .get_mut(&id)
            .ok_or(SimError::NoSuchNode(id, self.seed))?;
        self.by_addr.remove(&slot.addr);
        slot.addr = addr;
        self.by_addr.insert(addr, id);
        Ok(())
    }

    /// A muted node is off the network (cable pulled, radio off): what it sends and what is
    /// sent to it is dropped ([`DropReason::Muted`]); its timers keep running.
    pub fn set_muted(&mut self, id: NodeId, muted: bool) -> Result<(), SimError> {
        let slot = self
            .nodes
            .get_mut(&id)
            .ok_or(SimError::NoSuchNode(id, self.seed))?;
        slot.muted = muted;
        Ok(())
    }

    // ---- faults ------------------------------------------------------------------------

    /// The faults of every link without its own ([`SimNetwork::set_link_faults`]).
    pub fn faults(&self) -> LinkFaults {
        self.faults
    }

    pub fn set_faults(&mut self, faults: LinkFaults) {
        self.faults = faults;
    }

    /// Global loss probability.
    pub fn set_loss(&mut self, loss: f64) {
        self.faults.loss = loss;
    }

    /// Global latency and jitter.
    pub fn set_latency(&mut self, latency: Duration, jitter: Duration) {
        self.faults.latency = latency;
        self.faults.jitter = jitter;
    }

    /// Global bandwidth per direction in bytes per second (0 = unlimited).
    pub fn set_bandwidth(&mut self, bytes_per_second: u64) {
        self.faults.bandwidth = bytes_per_second;
    }

    /// Global duplication probability.
    pub fn set_duplicate(&mut self, duplicate: f64) {
        self.faults.duplicate = duplicate;
    }

    /// Global reordering: probability and largest extra delay.
    pub fn set_reorder(&mut self, probability: f64, max_extra_delay: Duration) {
        self.faults.reorder = probability;
        self.faults.reorder_delay = max_extra_delay;
    }

    /// Faults of the direction `from` -> `to` only, overriding the global ones.
    pub fn set_link_faults(&mut self, from: NodeId, to: NodeId, faults: LinkFaults) {
        self.link_faults.insert((from, to), faults);
    }

    /// The direction `from` -> `to` follows the global faults again.
    pub fn clear_link_faults(&mut self, from: NodeId, to: NodeId) {
        self.link_faults.remove(&(from, to));
    }

    /// The faults in force from `from` to `to`.
    pub fn link_faults(&self, from: NodeId, to: NodeId) -> LinkFaults {
        self.link_faults
            .get(&(from, to))
            .copied()
            .unwrap_or(self.faults)
    }

    /// Drops the next `n` datagrams sent from `from` to `to` (added to any still pending).
    pub fn drop_next(&mut self, from: NodeId, to: NodeId, n: u64) {
        *self.drop_next.entry((from, to)).or_default() += n;
    }

    /// Nothing crosses the network for `duration` from now.
    pub fn partition(&mut self, duration: Duration) {
        self.partition_until = self.partition_until.max(self.now.saturating_add(duration));
    }

    /// Nothing reaches or leaves `node` for `duration` from now.
    pub fn isolate(&mut self, node: NodeId, duration: Duration) {
        let until = self.now.saturating_add(duration);
        let entry = self.isolated_until.entry(node).or_default();
        *entry = (*entry).max(until);
    }

    /// Nothing crosses between `a` and `b`, either way, for `duration` from now.
    pub fn cut_link(&mut self, a: NodeId, b: NodeId, duration: Duration) {
        let until = self.now.saturating_add(duration);
        for key in [(a, b), (b, a)] {
            let entry = self.cut_until.entry(key).or_default();
            *entry = (*entry).max(until);
        }
    }

    /// Ends every partition, isolation, cut and pending "drop next".
    pub fn heal(&mut self) {
        self.partition_until = Duration::ZERO;
        self.isolated_until.clear();
        self.cut_until.clear();
        self.drop_next.clear();
    }

    fn is_cut(&self, src: NodeId, dst: NodeId) -> bool {
        let now = self.now;
        now < self.partition_until
            || self.isolated_until.get(&src).is_some_and(|&t| now < t)
            || self.isolated_until.get(&dst).is_some_and(|&t| now < t)
            || self.cut_until.get(&(src, dst)).is_some_and(|&t| now < t)
    }

    // ---- observation -------------------------------------------------------------------

    /// Counters over the whole run.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counters of the direction `from` -> `to` (datagrams without a destination node are
    /// only in the global counters).
    pub fn link_stats(&self, from: NodeId, to: NodeId) -> Stats {
        self.link_stats
            .get(&(from, to))
            .cloned()
            .unwrap_or_default()
    }

    /// Datagrams scheduled for delivery and not yet arrived.
    pub fn in_flight(&self) -> usize {
        self.queue
            .iter()
            .filter(|s| matches!(s.action, Action::Deliver(_)))
            .count()
    }

    /// Entries in the event queue (datagrams in flight and node timers, including superseded
    /// timer entries not yet discarded): a measure of the simulation's own cost.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Calls `hook` for every datagram event (see [`Fate`]). Replaces any previous hook.
    pub fn set_trace(&mut self, hook: impl FnMut(&DatagramEvent<'_>) + 'static) {
        self.trace = Some(Box::new(hook));
    }

    pub fn clear_trace(&mut self) {
        self.trace = None;
    }

    /// Asks `filter` about every datagram as it is sent (the event's fate is `Sent`): false
    /// drops it ([`DropReason::Filter`]). Replaces any previous filter.
    pub fn set_filter(&mut self, filter: impl FnMut(&DatagramEvent<'_>) -> bool + 'static) {
        self.filter = Some(Box::new(filter));
    }

    pub fn clear_filter(&mut self) {
        self.filter = None;
    }

    fn record(&mut self, event: DatagramEvent<'_>) {
        self.stats.count(event.fate);
        if let Some(dst) = event.dst {
            self.link_stats
                .entry((event.src, dst))
                .or_default()
                .count(event.fate);
        }
        if let Some(hook) = self.trace.as_mut() {
            hook(&event);
        }
    }

    // ---- running -----------------------------------------------------------------------

    /// Runs every event up to and including `deadline`, then sets the clock to `deadline`.
    pub fn run_until(&mut self, deadline: Duration) -> Result<(), SimError> {
        while self.step_before(deadline)? {}
        self.now = self.now.max(deadline);
        Ok(())
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) -> Result<(), SimError> {
        self.run_until(self.now.saturating_add(duration))
    }

    /// Runs until `done` holds (checked before the first event and after every event) and
    /// returns the time it first held; [`SimError::Deadline`] if it does not by `deadline`.
    /// `done` may change the network (faults, nodes) as a scenario step.
    pub fn run_until_with(
        &mut self,
        deadline: Duration,
        mut done: impl FnMut(&mut SimNetwork) -> bool,
    ) -> Result<Duration, SimError> {
        loop {
            if done(self) {
                return Ok(self.now);
            }
            if !self.step_before(deadline)? {
                self.now = self.now.max(deadline);
                if done(self) {
                    return Ok(self.now);
                }
                return Err(SimError::Deadline {
                    deadline,
                    seed: self.seed,
                });
            }
        }
    }

    /// When the next event is due, if any (after polling nodes changed by their owner).
    pub fn next_event(&mut self) -> Result<Option<Duration>, SimError> {
        self.settle_dirty()?;
        Ok(self.peek_valid().map(|s| s.at))
    }

    /// Processes the next event if it is due by `deadline`; false if there is none (the clock
    /// is then left where it is). For callers that check their own condition between events.
    pub fn step(&mut self, deadline: Duration) -> Result<bool, SimError> {
        self.step_before(deadline)
    }

    /// Processes the next event if it is due by `deadline`; false if there is none.
    fn step_before(&mut self, deadline: Duration) -> Result<bool, SimError> {
        self.settle_dirty()?;
        match self.peek_valid() {
            Some(s) if s.at <= deadline => {}
            _ => return Ok(false),
        }
        let Some(event) = self.queue.pop() else {
            return Ok(false);
        };
        if event.at > self.now {
            self.now = event.at;
            self.at_instant = 0;
        }
        self.at_instant += 1;
        let node = match event.action {
            Action::Deliver(index) => {
                let flight = self.flights.get_mut(index).and_then(Option::take);
                self.free_flights.push(index);
                match flight {
                    Some(f) => self.deliver(f.from, f.to, f.src, f.data),
                    None => None,
                }
            }
            Action::Timer { node, .. } => {
                // peek_valid made sure the entry is live and the timeout is due.
                if let Some(slot) = self.nodes.get_mut(&node) {
                    slot.timer = None;
                    slot.scheduled = None;
                    slot.node.handle_timeout(self.now);
                    Some(node)
                } else {
                    None
                }
            }
        };
        if let Some(node) = node {
            self.settle(node)?;
            let limit = MAX_EVENTS_PER_INSTANT
                .max(MAX_EVENTS_PER_INSTANT_PER_NODE.saturating_mul(self.next_id));
            if self.at_instant > limit {
                return Err(SimError::Livelock {
                    at: self.now,
                    node,
                    events: self.at_instant,
                    seed: self.seed,
                });
            }
        }
        Ok(true)
    }

    /// The earliest real event: stale timer entries are dropped, entries whose node moved its
    /// timeout later are moved to it.
    fn peek_valid(&mut self) -> Option<&Scheduled> {
        while let Some(top) = self.queue.peek() {
            let Action::Timer { node, token } = top.action else {
                break;
            };
            let at = top.at;
            let slot = self
                .nodes
                .get_mut(&node)
                .filter(|slot| slot.timer_token == token);
            match slot.map(|slot| (slot.timer, slot)) {
                Some((Some(due), _)) if due <= at => break,
                Some((Some(later), slot)) => {
                    slot.scheduled = Some(later);
                    self.queue.pop();
                    self.schedule(later, Action::Timer { node, token });
                }
                Some((None, slot)) => {
                    slot.scheduled = None;
                    self.queue.pop();
                }
                None => {
                    self.queue.pop();
                }
            }
        }
        self.queue.peek()
    }

    fn schedule(&mut self, at: Duration, action: Action) {
        self.order += 1;
        self.queue.push(Scheduled {
            at,
            order: self.order,
            action,
        });
    }

    /// Hands an arriving datagram to the node at `to`; returns that node.
    fn deliver(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        src: NodeId,
        data: Vec<u8>,
    ) -> Option<NodeId> {
        let dst = self.by_addr.get(&to).copied();
        let mut event = DatagramEvent {
            at: self.now,
            from,
            to,
            src,
            dst,
            data: &data,
            fate: Fate::Delivered,
        };
        let Some(dst) = dst else {
            event.fate = Fate::Dropped(DropReason::NoRoute);
            self.record(event);
            return None;
        };
        if self.nodes.get(&dst).is_some_and(|s| s.muted) {
            event.fate = Fate::Dropped(DropReason::Muted);
        } else if self.is_cut(src, dst) {
            event.fate = Fate::Dropped(DropReason::Cut);
        }
        let delivered = event.fate == Fate::Delivered;
        self.record(event);
        if !delivered {
            return None;
        }
        let slot = self.nodes.get_mut(&dst)?;
        slot.node.handle_datagram(self.now, from, &data);
        Some(dst)
    }

    /// Polls the nodes changed by their owner, in the order they were changed.
    fn settle_dirty(&mut self) -> Result<(), SimError> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            if self.nodes.contains_key(&id) {
                self.settle(id)?;
            }
        }
        Ok(())
    }

    /// After a node was driven: follow an address change, send what it queued, and track its
    /// timeout.
    fn settle(&mut self, id: NodeId) -> Result<(), SimError> {
        let Some(slot) = self.nodes.get(&id) else {
            return Ok(());
        };
        let generation = slot.node.local_addr_generation();
        if generation != slot.generation {
            let ip = slot.addr.ip();
            let port = self.free_port(ip).ok_or(SimError::PortsExhausted {
                ip,
                node: id,
                seed: self.seed,
            })?;
            self.set_addr(id, SocketAddr::new(ip, port))?;
            if let Some(slot) = self.nodes.get_mut(&id) {
                slot.generation = generation;
            }
        }
        while let Some((to, data)) = self
            .nodes
            .get_mut(&id)
            .and_then(|slot| slot.node.poll_transmit())
        {
            self.send(id, to, data);
        }
        let Some(slot) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        let timeout = slot.node.poll_timeout();
        slot.timer = timeout;
        if let Some(due) = timeout {
            let at = due.max(self.now);
            if slot.scheduled.is_none_or(|s| s > at) {
                slot.timer_token += 1;
                slot.scheduled = Some(at);
                let token = slot.timer_token;
                self.schedule(at, Action::Timer { node: id, token });
            }
        }
        Ok(())
    }

    fn free_port(&mut self, ip: std::net::IpAddr) -> Option<u16> {
        let span = EPHEMERAL_PORTS.len();
        for _ in 0..span {
            let port = self.next_port;
            self.next_port = if port == *EPHEMERAL_PORTS.end() {
                *EPHEMERAL_PORTS.start()
            } else {
                port + 1
            };
            if !self.by_addr.contains_key(&SocketAddr::new(ip, port)) {
                return Some(port);
            }
        }
        None
    }

    /// One datagram from node `src` to `to`: the fault pipeline of the module documentation.
    fn send(&mut self, src: NodeId, to: SocketAddr, data: Vec<u8>) {
        let Some(slot) = self.nodes.get(&src) else {
            return;
        };
        let from = slot.addr;
        let src_muted = slot.muted;
        let dst = self.by_addr.get(&to).copied();
        let mut event = DatagramEvent {
            at: self.now,
            from,
            to,
            src,
            dst,
            data: &data,
            fate: Fate::Sent,
        };
        self.record(event);

        let verdict = if src_muted {
            Some(DropReason::Muted)
        } else if let Some(dst) = dst {
            let passes = match self.filter.as_mut() {
                Some(filter) => filter(&event),
                None => true,
            };
            if !passes {
                Some(DropReason::Filter)
            } else if self.is_cut(src, dst) {
                Some(DropReason::Cut)
            } else if self.take_drop_next(src, dst) {
                Some(DropReason::DropNext)
            } else {
                None
            }
        } else {
            Some(DropReason::NoRoute)
        };
        if let Some(reason) = verdict {
            event.fate = Fate::Dropped(reason);
            self.record(event);
            return;
        }
        let Some(dst) = dst else { return };

        let faults = self.link_faults(src, dst);
        let Some(departs) = self.departure(src, dst, data.len(), &faults) else {
            event.fate = Fate::Dropped(DropReason::QueueFull);
            self.record(event);
            return;
        };
        if self.chance(faults.loss) {
            event.fate = Fate::Dropped(DropReason::Loss);
            self.record(event);
            return;
        }
        let duplicate = self.chance(faults.duplicate);
        if duplicate {
            event.fate = Fate::Duplicated;
            self.record(event);
            let (delay, held) = self.delay(&faults);
            if let Some(held) = held {
                event.fate = Fate::Delayed(held);
                self.record(event);
            }
            let copy = Flight {
                from,
                to,
                src,
                data: data.clone(),
            };
            self.schedule_flight(departs.saturating_add(delay), copy);
        }
        let (delay, held) = self.delay(&faults);
        if let Some(held) = held {
            event.fate = Fate::Delayed(held);
            self.record(event);
        }
        let flight = Flight {
            from,
            to,
            src,
            data,
        };
        self.schedule_flight(departs.saturating_add(delay), flight);
    }

    fn schedule_flight(&mut self, at: Duration, flight: Flight) {
        let index = match self.free_flights.pop() {
            Some(i) => {
                self.flights[i] = Some(flight);
                i
            }
            None => {
                self.flights.push(Some(flight));
                self.flights.len() - 1
            }
        };
        self.schedule(at, Action::Deliver(index));
    }

    /// True with probability `p` (no randomness is drawn for 0 or 1).
    fn chance(&mut self, p: f64) -> bool {
        if p.is_nan() || p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        let unit = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }

    /// Uniform in `0..=max`.
    fn uniform(&mut self, max: Duration) -> Duration {
        let nanos = max.as_nanos().min(u64::MAX as u128) as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        let n = match nanos.checked_add(1) {
            Some(span) => self.rng.next_u64() % span,
            None => self.rng.next_u64(),
        };
        Duration::from_nanos(n)
    }

    /// The flight time of one datagram, and the extra hold of the reorder fault when it struck.
    fn delay(&mut self, faults: &LinkFaults) -> (Duration, Option<Duration>) {
        let delay = faults.latency.saturating_add(self.uniform(faults.jitter));
        if self.chance(faults.reorder) {
            let held = self.uniform(faults.reorder_delay);
            return (delay.saturating_add(held), Some(held));
        }
        (delay, None)
    }

    /// When a datagram of `len` bytes has left `src` towards `dst`: now without a bandwidth
    /// limit, else after the queue ahead of it and its own transmission time; `None` when the
    /// queue is full (it would wait longer than the queue limit).
    fn departure(
        &mut self,
        src: NodeId,
        dst: NodeId,
        len: usize,
        faults: &LinkFaults,
    ) -> Option<Duration> {
        let bandwidth = faults.bandwidth;
        if bandwidth == 0 {
            self.busy_until.remove(&(src, dst));
            return Some(self.now);
        }
        let start = self
            .busy_until
            .get(&(src, dst))
            .copied()
            .unwrap_or_default()
            .max(self.now);
        if !faults.queue_limit.is_zero() && start.saturating_sub(self.now) > faults.queue_limit {
            return None;
        }
        let nanos = (len as u128 * 1_000_000_000).div_ceil(bandwidth as u128);
        let done = start.saturating_add(Duration::from_nanos(nanos.min(u64::MAX as u128) as u64));
        self.busy_until.insert((src, dst), done);
        Some(done)
    }

    fn take_drop_next(&mut self, src: NodeId, dst: NodeId) -> bool {
        match self.drop_next.get_mut(&(src, dst)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                if *n == 0 {
                    self.drop_next.remove(&(src, dst));
                }
                true
            }
            _ => false,
        }
    }
}
