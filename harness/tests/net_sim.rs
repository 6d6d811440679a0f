//! The simulated network: virtual time, the seeded fault model, nodes that come, go and move,
//! and DTLS clients and a server running over it. Every run is fixed by its seed; every
//! failure message names it.

mod net_support;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use harness::net::sim::{DropReason, Fate, LinkFaults, NodeId, SimError, SimNetwork};
use harness::net::Node;
use net_support::*;
use protocol::dtls::CloseReason;

const SERVER: &str = "10.0.0.1:5684";
const DEVICE: &str = "10.0.1.1:40000";
const SECOND: Duration = Duration::from_secs(1);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// A server and one client that knows it, at [`SERVER`] and [`DEVICE`].
fn dtls_pair(seed: u64) -> (SimNetwork, NodeId, NodeId) {
    let mut sim = SimNetwork::new(seed);
    let server = sim
        .add_node(addr(SERVER), dtls_server(1, &[2], seed ^ 0x5e))
        .unwrap();
    let client = sim
        .add_node(addr(DEVICE), dtls_client(2, 1, addr(SERVER), seed ^ 0xc1))
        .unwrap();
    (sim, server, client)
}

fn client(sim: &SimNetwork, id: NodeId) -> &DtlsClientNode {
    sim.node::<DtlsClientNode>(id).expect("a DTLS client node")
}

fn server(sim: &SimNetwork, id: NodeId) -> &DtlsServerNode {
    sim.node::<DtlsServerNode>(id).expect("a DTLS server node")
}

/// (time, from, to, length, fate) of every datagram event.
type Trace = Rc<RefCell<Vec<(Duration, SocketAddr, SocketAddr, usize, Fate)>>>;

/// (bytes, time) of datagram events.
type Times = Rc<RefCell<Vec<(Vec<u8>, Duration)>>>;

fn record_trace(sim: &mut SimNetwork) -> Trace {
    let trace: Trace = Rc::default();
    let sink = trace.clone();
    sim.set_trace(move |e| {
        sink.borrow_mut()
            .push((e.at, e.from, e.to, e.data.len(), e.fate))
    });
    trace
}

fn assert_balanced(sim: &SimNetwork) {
    let s = sim.stats();
    assert_eq!(sim.in_flight(), 0, "{}", sim.context());
    assert_eq!(
        s.sent + s.duplicated,
        s.delivered + s.dropped,
        "{s:?} ({})",
        sim.context()
    );
}

#[test]
fn dtls_client_and_server_handshake_and_echo_over_a_perfect_link() {
    let (mut sim, srv, cli) = dtls_pair(1);
    sim.node_mut::<DtlsClientNode>(cli)
        .unwrap()
        .outbox
        .push_back(b"hello".to_vec());
    let at = sim
        .run_until_with(secs(10), |sim| !client(sim, cli).received.is_empty())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(client(&sim, cli).received, vec![b"echo: hello".to_vec()]);
    assert_eq!(server(&sim, srv).connected(), 1);
    // Three round trips (hello verify, key exchange, finished) and the echo, 1 ms each way.
    assert!(at < ms(20), "took {at:?} ({})", sim.context());
    assert_eq!(sim.stats().dropped, 0);
}

#[test]
fn the_same_seed_replays_the_same_trace_and_another_seed_does_not() {
    let run = |seed: u64| {
        let (mut sim, _, cli) = dtls_pair(seed);
        sim.set_faults(LinkFaults {
            latency: ms(20),
            jitter: ms(30),
            loss: 0.25,
            duplicate: 0.1,
            reorder: 0.2,
            reorder_delay: ms(500),
            bandwidth: 0,
            queue_limit: Duration::ZERO,
        });
        let trace = record_trace(&mut sim);
        sim.node_mut::<DtlsClientNode>(cli).unwrap().ping_every = Some(secs(5));
        sim.run_until(secs(120)).unwrap();
        let trace = trace.borrow().clone();
        (trace, sim.stats().clone())
    };
    let (a, stats_a) = run(42);
    let (b, stats_b) = run(42);
    assert_eq!(a, b, "seed 42 did not replay");
    assert_eq!(stats_a, stats_b);
    let (c, _) = run(43);
    assert_ne!(a, c, "seeds 42 and 43 gave the same trace");
    assert!(stats_a.dropped_for(DropReason::Loss) > 0);
    assert!(stats_a.duplicated > 0);
}

#[test]
fn dtls_handshake_and_pings_survive_20_percent_loss_duplication_and_reordering() {
    for seed in 0..12 {
        let (mut sim, srv, cli) = dtls_pair(seed);
        sim.set_faults(LinkFaults {
            latency: ms(40),
            jitter: ms(20),
            loss: 0.2,
            duplicate: 0.05,
            reorder: 0.3,
            reorder_delay: ms(300),
            bandwidth: 0,
            queue_limit: Duration::ZERO,
        });
        sim.node_mut::<DtlsClientNode>(cli).unwrap().ping_every = Some(secs(1));
        // Device OS retransmits after 3, 9, 21 s.. and gives up after 24 s backoff; a 20%
        // loss handshake completes within a few minutes.
        sim.run_until_with(secs(600), |sim| client(sim, cli).received.len() >= 20)
            .unwrap_or_else(|e| panic!("{e}: {:?}", client(&sim, cli).closed()));
        assert_eq!(server(&sim, srv).connected(), 1, "{}", sim.context());
        assert!(client(&sim, cli).closed().is_none(), "{}", sim.context());
        for r in &client(&sim, cli).received {
            assert!(r.starts_with(b"echo: ping "), "{}", sim.context());
        }
    }
}

#[test]
fn counters_balance_once_nothing_is_in_flight() {
    for seed in 0..6 {
        let mut sim = SimNetwork::new(seed);
        sim.set_faults(LinkFaults {
            latency: ms(10),
            jitter: ms(50),
            loss: 0.3,
            duplicate: 0.3,
            reorder: 0.3,
            reorder_delay: secs(1),
            bandwidth: 0,
            queue_limit: Duration::ZERO,
        });
        let echo = sim.add_node(addr(SERVER), Echo::default()).unwrap();
        let pinger = sim
            .add_node(addr(DEVICE), Pinger::new(addr(SERVER), ms(100)))
            .unwrap();
        sim.run_until(secs(60)).unwrap();
        sim.remove_node(pinger);
        sim.run_for(secs(5)).unwrap();
        assert_balanced(&sim);
        let s = sim.stats();
        assert!(sim.node::<Echo>(echo).unwrap().seen.len() > 300);
        assert!(s.dropped_for(DropReason::Loss) > 0, "{}", sim.context());
        assert!(s.duplicated > 0, "{}", sim.context());
        // Answers still in flight when the pinger left found no route.
        assert_eq!(
            s.dropped,
            s.dropped_for(DropReason::Loss) + s.dropped_for(DropReason::NoRoute)
        );
    }
}

#[test]
fn delivery_times_respect_latency_jitter_and_reorder_bounds() {
    let mut sim = SimNetwork::new(9);
    let faults = LinkFaults {
        latency: ms(30),
        jitter: ms(20),
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.25,
        reorder_delay: ms(400),
        bandwidth: 0,
        queue_limit: Duration::ZERO,
    };
    sim.set_faults(faults);
    let sent_at: Times = Rc::default();
    let arrivals: Times = Rc::default();
    let (s, a) = (sent_at.clone(), arrivals.clone());
    sim.set_trace(move |e| match e.fate {
        Fate::Sent => s.borrow_mut().push((e.data.to_vec(), e.at)),
        Fate::Delivered => a.borrow_mut().push((e.data.to_vec(), e.at)),
        _ => {}
    });
    sim.add_node(addr(SERVER), Echo::default()).unwrap();
    sim.add_node(addr(DEVICE), Pinger::new(addr(SERVER), ms(50)))
        .unwrap();
    sim.run_until(secs(30)).unwrap();
    let sent_at = sent_at.borrow();
    let arrivals = arrivals.borrow();
    let mut late = 0;
    for (data, at) in arrivals.iter() {
        let sent = sent_at
            .iter()
            .find(|(d, _)| d == data)
            .map(|(_, t)| *t)
            .expect("every arrival was sent");
        let delay = *at - sent;
        assert!(delay >= faults.latency, "{delay:?} too early");
        assert!(
            delay <= faults.latency + faults.jitter + faults.reorder_delay,
            "{delay:?} too late"
        );
        if delay > faults.latency + faults.jitter {
            late += 1;
        }
    }
    assert!(late > 0, "no reordering delay drawn");
    // pings are numbered: out of order means a later number arrived first
    let pings: Vec<u64> = arrivals
        .iter()
        .filter_map(|(d, _)| d.strip_prefix(b"ping "))
        .filter_map(|n| std::str::from_utf8(n).ok()?.parse().ok())
        .collect();
    assert!(
        pings.windows(2).any(|w| w[0] > w[1]),
        "reordering never reordered"
    );
}

#[test]
fn a_bandwidth_limit_queues_datagrams_and_spaces_their_arrivals() {
    let mut sim = SimNetwork::new(3);
    // 100 bytes/s: a 6-byte "ping N" takes 60 ms to send; pings leave every 10 ms, so they
    // queue, none is lost, and they arrive in order, at least their send time apart.
    sim.set_faults(LinkFaults {
        latency: ms(5),
        bandwidth: 100,
        ..LinkFaults::PERFECT
    });
    let sent_at: Times = Rc::default();
    let arrivals: Times = Rc::default();
    let (s, a) = (sent_at.clone(), arrivals.clone());
    sim.set_trace(move |e| match e.fate {
        Fate::Sent => s.borrow_mut().push((e.data.to_vec(), e.at)),
        Fate::Delivered => a.borrow_mut().push((e.data.to_vec(), e.at)),
        _ => {}
    });
    sim.add_node(addr(SERVER), Echo::default()).unwrap();
    sim.add_node(addr(DEVICE), Pinger::new(addr(SERVER), ms(10)))
        .unwrap();
    sim.run_until(secs(2)).unwrap();
    let arrivals = arrivals.borrow();
    let pings: Vec<_> = arrivals
        .iter()
        .filter(|(d, _)| d.starts_with(b"ping "))
        .collect();
    assert!(pings.len() >= 20, "{} pings arrived", pings.len());
    for pair in pings.windows(2) {
        let ((_, first), (data, second)) = (pair[0], pair[1]);
        let transmit = Duration::from_millis(data.len() as u64 * 10);
        assert!(*second >= *first + transmit, "{first:?} then {second:?}");
    }
    let sent_at = sent_at.borrow();
    let (data, arrived) = pings.last().unwrap();
    let sent = sent_at.iter().find(|(d, _)| d == data).unwrap().1;
    assert!(
        *arrived - sent > secs(1),
        "the queue grew: the last ping waited {:?}",
        *arrived - sent
    );
    assert_eq!(sim.stats().dropped_for(DropReason::Loss), 0);
}

#[test]
fn drop_next_drops_exactly_n_datagrams_in_one_direction_only() {
    let mut sim = SimNetwork::new(3);
    let echo = sim.add_node(addr(SERVER), Echo::default()).unwrap();
    let pinger = sim
        .add_node(addr(DEVICE), Pinger::new(addr(SERVER), SECOND))
        .unwrap();
    sim.drop_next(pinger, echo, 3);
    sim.drop_next(echo, pinger, 2);
    sim.run_until(secs(9) + ms(500)).unwrap();
    let seen: Vec<_> = sim.node::<Echo>(echo).unwrap().seen.iter().collect();
    // pings 0, 1, 2 dropped; 3..=9 arrive
    assert_eq!(seen.len(), 7);
    assert_eq!(seen[0].1, b"ping 3".to_vec());
    // pongs 3 and 4 dropped; 5..=9 answered
    assert_eq!(sim.node::<Pinger>(pinger).unwrap().answers, 5);
    assert_eq!(
        sim.link_stats(pinger, echo)
            .dropped_for(DropReason::DropNext),
        3
    );
    assert_eq!(
        sim.link_stats(echo, pinger)
            .dropped_for(DropReason::DropNext),
        2
    );
}

#[test]
fn a_partition_drops_everything_for_its_duration_then_traffic_flows_again() {
    let mut sim = SimNetwork::new(4);
    let echo = sim.add_node(addr(SERVER), Echo::default()).unwrap();
    let pinger = sim
        .add_node(addr(DEVICE), Pinger::new(addr(SERVER), SECOND))
        .unwrap();
    sim.run_until(secs(4) + ms(500)).unwrap(); // pings 0..=4
    sim.partition(secs(10)); // until 14.5 s: pings 5..=14 lost
    sim.run_until(secs(20) + ms(500)).unwrap(); // pings 15..=20
    let p = sim.node::<Pinger>(pinger).unwrap();
    assert_eq!(p.sent, 21);
    assert_eq!(p.answers, 11);
    assert_eq!(sim.stats().dropped_for(DropReason::Cut), 10);
    assert_eq!(sim.node::<Echo>(echo).unwrap().seen.len(), 11);
}

#[test]
fn a_cut_that_starts_while_a_datagram_is_in_flight_drops_it_on_arrival() {
    let mut sim = SimNetwork::new(5);
    sim.set_latency(ms(100), Duration::ZERO);
    let echo = sim.add_node(addr(SERVER), Echo::default()).unwrap();
    sim.add_node(addr(DEVICE), Pinger::new(addr(SERVER), secs(10)))
        .unwrap();
    sim.run_until(ms(50)).unwrap(); // ping 0 left at t = 0, arrives at 100 ms
    assert_eq!(sim.in_flight(), 1);
    sim.partition(ms(100));
    sim.run_until(secs(1)).unwrap();
    assert!(sim.node::<Echo>(echo).unwrap().seen.is_empty());
    assert_eq!(sim.stats().dropped_for(DropReason::Cut), 1);
}

#[test]
fn isolating_or_cutting_one_node_leaves_the_others_connected() {
    let mut sim = SimNetwork::new(6);
    let echo = sim.add_node(addr(SERVER), Echo::default()).unwrap();
    let a = sim
        .add_node(addr("10.0.1.1:1000"), Pinger::new(addr(SERVER), SECOND))
        .unwrap();
    let b = sim
        .add_node(addr("10.0.1.2:1000"), Pinger::new(addr(SERVER), SECOND))
        .unwrap();
    let c = sim
        .add_node(addr("10.0.1.3:1000"), Pinger::new(addr(SERVER), SECOND))
        .unwrap();
    sim.isolate(a, secs(5) + ms(500)); // pings 0..=5 of a lost
    sim.cut_link(b, echo, secs(2) + ms(500)); // pings 0..=2 of b lost
    sim.run_until(secs(9) + ms(500)).unwrap();
    let answers = |id| sim.node::<Pinger>(id).unwrap().answers;
    assert_eq!(answers(a), 4);
    assert_eq!(answers(b), 7);
    assert_eq!(answers(c), 10);
    assert_balanced_after(&mut sim);
}

fn assert_balanced_after(sim: &mut SimNetwork) {
    let ids = sim.node_ids();
    for id in ids {
        sim.remove_node(id);
    }
    sim.run_for(secs(10)).unwrap();
    assert_balanced(sim);
}

#[test]
fn heal_ends_every_cut_and_pending_drop() {
    let mut sim = SimNetwork::new(7);
    let echo = sim.add_node(addr(SERVER), Echo::default()).unwrap();
    let pinger = sim
        .add_node(addr(DEVICE), Pinger::new(addr(SERVER), SECOND))
        .unwrap();
    sim.partition(secs(1000));
    sim.isolate(pinger, secs(1000));
    sim.cut_link(pinger, echo, secs(1000));
    sim.drop_next(pinger, echo, 1000);
    sim.run_until(secs(2) + ms(500)).unwrap();
    assert_eq!(sim.node::<Pinger>(pinger).unwrap().answers, 0);
    sim.heal();
    sim.run_until(secs(5) + ms(500)).unwrap();
    assert_eq!(sim.node::<Pinger>(pinger).unwrap().answers, 3);
}

#[test]
fn per_link_faults_override_the_global_ones() {
    let mut sim = SimNetwork::new(8);
    let echo = sim.add_node(addr(SERVER), Echo::default()).unwrap();
    let lossy = sim
        .add_node(addr("10.0.1.1:1000"), Pinger::new(addr(SERVER), SECOND))
        .unwrap();
    let clean = sim
        .add_node(addr("10.0.1.2:1000"), Pinger::new(addr(SERVER), SECOND))
        .unwrap();
    sim.set_link_faults(
        lossy,
        echo,
        LinkFaults {
            loss: 1.0,
            ..LinkFaults::PERFECT
        },
    );
    assert_eq!(sim.link_faults(lossy, echo).loss, 1.0);
    assert_eq!(sim.link_faults(echo, lossy).loss, 0.0);
    sim.run_until(secs(4) + ms(500)).unwrap();
    assert_eq!(sim.node::<Pinger>(lossy).unwrap().answers, 0);
    assert_eq!(sim.node::<Pinger>(clean).unwrap().answers, 5);
    sim.clear_link_faults(lossy, echo);
    sim.run_until(secs(9) + ms(500)).unwrap();
    assert_eq!(sim.node::<Pinger>(lossy).unwrap().answers, 5);
}

#[test]
fn faults_changed_mid_run_apply_from_that_moment() {
    let mut sim = SimNetwork::new(10);
    sim.add_node(addr(SERVER), Echo::default()).unwrap();
    let pinger = sim
        .add_node(addr(DEVICE), Pinger::new(addr(SERVER), SECOND))
        .unwrap();
    // scenario steps: at 9.5 s the link goes bad, at 19.5 s it recovers
    sim.run_until(secs(9) + ms(500)).unwrap();
    sim.set_loss(1.0);
    sim.run_until(secs(19) + ms(500)).unwrap();
    sim.set_loss(0.0);
    sim.run_until(secs(29) + ms(500)).unwrap();
    let p = sim.node::<Pinger>(pinger).unwrap();
    assert_eq!(p.sent, 30);
    // pings 10..=19 lost
    assert_eq!(p.answers, 20, "{}", sim.context());
}

#[test]
fn the_filter_drops_the_datagrams_a_test_picks() {
    let mut sim = SimNetwork::new(11);
    let echo = sim.add_node(addr(SERVER), Echo::default()).unwrap();
    sim.add_node(addr(DEVICE), Pinger::new(addr(SERVER), SECOND))
        .unwrap();
    sim.set_filter(|e| e.data != b"ping 2" && e.data != b"pong 4");
    sim.run_until(secs(5) + ms(500)).unwrap();
    let seen: Vec<Vec<u8>> = sim
        .node::<Echo>(echo)
        .unwrap()
        .seen
        .iter()
        .map(|(_, d)| d.clone())
        .collect();
    assert!(!seen.contains(&b"ping 2".to_vec()));
    assert_eq!(seen.len(), 5);
    assert_eq!(sim.stats().dropped_for(DropReason::Filter), 2);
}

#[test]
fn a_device_that_resets_gets_a_new_source_port_and_its_resumed_session_moves() {
    let (mut sim, srv, cli) = dtls_pair(12);
    sim.run_until_with(secs(10), |sim| client(sim, cli).is_connected())
        .unwrap_or_else(|e| panic!("{e}"));
    let old = sim.addr(cli).unwrap();
    let now = sim.now();
    let node = sim.node_mut::<DtlsClientNode>(cli).unwrap();
    node.reset_and_resume(now).expect("a session to resume");
    node.send(now, b"after reset");
    sim.run_until_with(now + secs(10), |sim| {
        client(sim, cli)
            .received
            .contains(&b"echo: after reset".to_vec())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let new = sim.addr(cli).unwrap();
    assert_ne!(old, new, "same source port after a reset");
    assert_eq!(old.ip(), new.ip());
    assert_eq!(sim.node_at(new), Some(cli));
    assert_eq!(sim.node_at(old), None);
    assert_eq!(server(&sim, srv).moves(), vec![(old, new)]);
    assert_eq!(server(&sim, srv).connected(), 1, "no second handshake");
}

#[test]
fn datagrams_to_an_address_nobody_holds_are_dropped_with_no_route() {
    let mut sim = SimNetwork::new(13);
    sim.set_latency(ms(100), Duration::ZERO);
    let echo = sim.add_node(addr(SERVER), Echo::default()).unwrap();
    let pinger = sim
        .add_node(addr(DEVICE), Pinger::new(addr(SERVER), SECOND))
        .unwrap();
    sim.run_until(ms(150)).unwrap(); // ping 0 answered, pong 0 in flight
    let mut p = sim.take_node::<Pinger>(pinger).expect("a Pinger");
    assert!(
        sim.take_node::<Pinger>(echo).is_none(),
        "an Echo is no Pinger"
    );
    assert!(
        sim.node::<Echo>(echo).is_some(),
        "a wrong take leaves the node"
    );
    sim.run_until(secs(3)).unwrap();
    assert_eq!(sim.stats().dropped_for(DropReason::NoRoute), 1);
    // powered on again at another port, the pinger goes on
    p.generation += 1;
    let again = sim.add_node(addr("10.0.1.1:40001"), p).unwrap();
    assert_ne!(again, pinger, "ids are not reused");
    sim.run_until(secs(5) + ms(500)).unwrap();
    assert!(sim.node::<Pinger>(again).unwrap().answers >= 2);
    // a datagram to nowhere
    sim.add_node(
        addr("10.0.9.9:1"),
        Pinger::new(addr("10.9.9.9:9"), secs(100)),
    )
    .unwrap();
    sim.run_for(SECOND).unwrap();
    assert_eq!(sim.stats().dropped_for(DropReason::NoRoute), 2);
}

#[test]
fn a_muted_node_neither_sends_nor_receives_but_keeps_its_timers() {
    let mut sim = SimNetwork::new(14);
    let echo = sim.add_node(addr(SERVER), Echo::default()).unwrap();
    let pinger = sim
        .add_node(addr(DEVICE), Pinger::new(addr(SERVER), SECOND))
        .unwrap();
    sim.set_muted(pinger, true).unwrap();
    sim.run_until(secs(2) + ms(500)).unwrap();
    assert_eq!(sim.node::<Pinger>(pinger).unwrap().sent, 3, "timers ran");
    assert!(sim.node::<Echo>(echo).unwrap().seen.is_empty());
    sim.set_muted(pinger, false).unwrap();
    sim.set_muted(echo, true).unwrap();
    sim.run_until(secs(4) + ms(500)).unwrap();
    assert_eq!(sim.node::<Echo>(echo).unwrap().seen.len(), 0);
    assert_eq!(sim.stats().dropped_for(DropReason::Muted), 5);
    sim.set_muted(echo, false).unwrap();
    sim.run_until(secs(5) + ms(500)).unwrap();
    assert_eq!(sim.node::<Pinger>(pinger).unwrap().answers, 1);
}

#[test]
fn ephemeral_ports_are_distinct_and_skip_taken_ones() {
    let mut sim = SimNetwork::new(22);
    let ip = addr(DEVICE).ip();
    sim.add_node(addr("10.0.1.1:49153"), Echo::default())
        .unwrap();
    let ids: Vec<NodeId> = (0..3)
        .map(|_| sim.add_node_ephemeral(ip, Echo::default()).unwrap())
        .collect();
    let ports: Vec<u16> = ids.iter().map(|&id| sim.addr(id).unwrap().port()).collect();
    assert_eq!(ports, vec![49152, 49154, 49155]);
}

#[test]
fn set_addr_moves_a_node_and_refuses_a_taken_address() {
    let mut sim = SimNetwork::new(15);
    let echo = sim.add_node(addr(SERVER), Echo::default()).unwrap();
    let pinger = sim
        .add_node(addr(DEVICE), Pinger::new(addr(SERVER), SECOND))
        .unwrap();
    let err = sim.add_node(addr(SERVER), Echo::default()).unwrap_err();
    assert!(matches!(err, SimError::AddrInUse { holder, .. } if holder == echo));
    assert!(err.to_string().contains("seed 15"), "{err}");
    assert!(sim.set_addr(pinger, addr(SERVER)).is_err());
    sim.set_addr(pinger, addr("10.0.5.5:5555")).unwrap();
    sim.run_until(ms(500)).unwrap();
    assert_eq!(
        sim.node::<Echo>(echo).unwrap().seen[0].0,
        addr("10.0.5.5:5555")
    );
}

/// A node that always wants a timeout at time zero.
struct Stuck;

impl Node for Stuck {
    fn handle_datagram(&mut self, _: Duration, _: SocketAddr, _: &[u8]) {}
    fn handle_timeout(&mut self, _: Duration) {}
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        None
    }
    fn poll_timeout(&self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

/// A transfer timeout pushed 300 s ahead by every datagram (like the OTA receiver's).
#[derive(Default)]
struct Deferrer {
    deadline: Option<Duration>,
    fired_at: Vec<Duration>,
}

impl Node for Deferrer {
    fn handle_datagram(&mut self, now: Duration, _: SocketAddr, _: &[u8]) {
        self.deadline = Some(now + secs(300));
    }
    fn handle_timeout(&mut self, now: Duration) {
        self.fired_at.push(now);
        self.deadline = None;
    }
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        None
    }
    fn poll_timeout(&self) -> Option<Duration> {
        self.deadline
    }
}

#[test]
fn a_timeout_pushed_forward_by_every_datagram_fires_once_and_leaves_no_trail() {
    let mut sim = SimNetwork::new(21);
    let d = sim.add_node(addr(SERVER), Deferrer::default()).unwrap();
    let p = sim
        .add_node(addr(DEVICE), Pinger::new(addr(SERVER), ms(10)))
        .unwrap();
    sim.run_until(secs(100) - ms(5)).unwrap();
    assert!(sim.queued() < 10, "{} queue entries", sim.queued());
    sim.remove_node(p);
    sim.run_until(secs(1000)).unwrap();
    // the last ping left at 99.99 s and arrived 1 ms later
    assert_eq!(
        sim.node::<Deferrer>(d).unwrap().fired_at,
        vec![secs(99) + ms(991) + secs(300)]
    );
}

#[test]
fn a_node_whose_timeout_never_moves_is_reported_as_a_livelock_with_the_seed() {
    let mut sim = SimNetwork::new(77);
    let stuck = sim.add_node(addr(SERVER), Stuck).unwrap();
    let err = sim.run_until(secs(1)).unwrap_err();
    assert!(matches!(err, SimError::Livelock { node, .. } if node == stuck));
    assert!(err.to_string().contains("seed 77"), "{err}");
}

#[test]
fn a_condition_that_never_holds_reports_the_deadline_and_the_seed() {
    let (mut sim, _, cli) = dtls_pair(78);
    sim.set_loss(1.0);
    let err = sim
        .run_until_with(secs(30), |sim| client(sim, cli).is_connected())
        .unwrap_err();
    assert_eq!(
        err,
        SimError::Deadline {
            deadline: secs(30),
            seed: 78
        }
    );
    assert!(err.to_string().contains("seed 78"));
    assert_eq!(sim.now(), secs(30));
}

#[test]
fn a_dtls_handshake_that_never_gets_through_times_out_in_virtual_time() {
    let (mut sim, _, cli) = dtls_pair(16);
    sim.set_loss(1.0);
    sim.run_until(secs(600)).unwrap();
    assert_eq!(
        client(&sim, cli).closed(),
        Some(&CloseReason::Error(
            protocol::dtls::DtlsError::HandshakeTimeout
        ))
    );
}

/// Sends seeded garbage to a target every 100 ms.
struct Garbage {
    target: SocketAddr,
    rng: rand_chacha::ChaCha8Rng,
    next: Duration,
    out: Option<Vec<u8>>,
}

impl Node for Garbage {
    fn handle_datagram(&mut self, _: Duration, _: SocketAddr, _: &[u8]) {}
    fn handle_timeout(&mut self, now: Duration) {
        use rand_chacha::rand_core::RngCore;
        let len = (self.rng.next_u32() % 200) as usize;
        let mut data = vec![0u8; len];
        self.rng.fill_bytes(&mut data);
        // Half of them look like DTLS records.
        if len > 3 && self.rng.next_u32() & 1 == 0 {
            data[0] = [20, 21, 22, 23, 25, 253][(self.rng.next_u32() % 6) as usize];
            data[1] = 0xfe;
            data[2] = 0xfd;
        }
        self.out = Some(data);
        self.next = now + ms(100);
    }
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.take().map(|d| (self.target, d))
    }
    fn poll_timeout(&self) -> Option<Duration> {
        Some(self.next)
    }
}

#[test]
fn garbage_from_other_addresses_does_not_stop_a_handshake() {
    use rand_chacha::rand_core::SeedableRng;
    for seed in 0..4 {
        let (mut sim, srv, cli) = dtls_pair(seed);
        for (i, target) in [SERVER, DEVICE].into_iter().enumerate() {
            sim.add_node(
                addr(&format!("10.6.6.{i}:666")),
                Garbage {
                    target: addr(target),
                    rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed * 10 + i as u64),
                    next: Duration::ZERO,
                    out: None,
                },
            )
            .unwrap();
        }
        sim.node_mut::<DtlsClientNode>(cli)
            .unwrap()
            .outbox
            .push_back(b"through the noise".to_vec());
        sim.run_until_with(secs(60), |sim| !client(sim, cli).received.is_empty())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(server(&sim, srv).connected(), 1, "{}", sim.context());
    }
}

#[test]
fn ten_devices_connect_to_one_server_over_a_lossy_link() {
    let seed = 17;
    let mut sim = SimNetwork::new(seed);
    sim.set_faults(LinkFaults {
        latency: ms(50),
        jitter: ms(50),
        loss: 0.1,
        duplicate: 0.05,
        reorder: 0.1,
        reorder_delay: ms(200),
        bandwidth: 0,
        queue_limit: Duration::ZERO,
    });
    let devices: Vec<u64> = (100..110).collect();
    let srv = sim
        .add_node(addr(SERVER), dtls_server(1, &devices, seed))
        .unwrap();
    let clients: Vec<NodeId> = devices
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let mut c = dtls_client(d, 1, addr(SERVER), seed + d);
            c.ping_every = Some(secs(25));
            sim.add_node(addr(&format!("10.0.2.{}:50000", i + 1)), c)
                .unwrap()
        })
        .collect();
    sim.run_until_with(secs(900), |sim| {
        clients.iter().all(|&c| !client(sim, c).received.is_empty())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(server(&sim, srv).connected(), 10, "{}", sim.context());
}

/// Half a day of DTLS keepalives (a week of four devices takes about 0.5 s in a release build,
/// 5 s unoptimised: the record crypto, not the network, is the cost; see the plain-pinger week
/// below).
#[test]
fn half_a_day_of_idle_dtls_devices_pinging_every_25_s_runs_in_virtual_time() {
    const DAY: Duration = Duration::from_secs(12 * 3600);
    let wall = Instant::now();
    let mut sim = SimNetwork::new(18);
    sim.set_latency(ms(60), ms(20));
    let devices: Vec<u64> = (200..203).collect();
    let srv = sim
        .add_node(addr(SERVER), dtls_server(1, &devices, 18))
        .unwrap();
    let clients: Vec<NodeId> = devices
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let mut c = dtls_client(d, 1, addr(SERVER), d);
            c.ping_every = Some(secs(25));
            sim.add_node(addr(&format!("10.0.3.{}:50000", i + 1)), c)
                .unwrap()
        })
        .collect();
    sim.run_until(DAY).unwrap();
    let pings = DAY.as_secs() / 25;
    for &c in &clients {
        let node = client(&sim, c);
        assert!(node.pings_sent >= pings - 1, "{} pings", node.pings_sent);
        assert!(node.received.len() as u64 >= pings - 1, "{}", sim.context());
    }
    assert!(server(&sim, srv).echoed >= 3 * (pings - 1));
    eprintln!(
        "12 h of 3 DTLS devices pinging every 25 s: {:?} wall, {} datagrams",
        wall.elapsed(),
        sim.stats().sent
    );
}

#[test]
fn a_week_of_plain_pingers_costs_only_the_network() {
    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
    let wall = Instant::now();
    let mut sim = SimNetwork::new(19);
    sim.set_latency(ms(60), ms(20));
    sim.set_loss(0.01);
    sim.add_node(addr(SERVER), Echo::default()).unwrap();
    let pingers: Vec<NodeId> = (0..4)
        .map(|i| {
            sim.add_node(
                addr(&format!("10.0.4.{}:50000", i + 1)),
                Pinger::new(addr(SERVER), secs(25)),
            )
            .unwrap()
        })
        .collect();
    sim.run_until(WEEK).unwrap();
    for &p in &pingers {
        let p = sim.node::<Pinger>(p).unwrap();
        assert_eq!(p.sent, WEEK.as_secs() / 25 + 1);
        assert!(p.answers > p.sent * 95 / 100, "{}", sim.context());
    }
    eprintln!(
        "a week of 4 plain pingers every 25 s: {:?} wall, {} datagrams",
        wall.elapsed(),
        sim.stats().sent
    );
}

/// One VOPR-style run: a DTLS pair and two pingers under a random script of fault changes,
/// cuts, mutes and device resets, then a healed network. Returns the trace.
fn chaos_run(seed: u64) -> Vec<(Duration, SocketAddr, SocketAddr, usize, Fate)> {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut script = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0xc4a05);
    let mut pick = |n: u64| script.next_u64() % n;
    let (mut sim, srv, cli) = dtls_pair(seed);
    sim.node_mut::<DtlsClientNode>(cli).unwrap().ping_every = Some(secs(3));
    let echo = sim.add_node(addr("10.0.0.2:7"), Echo::default()).unwrap();
    let p1 = sim
        .add_node(
            addr("10.0.1.2:1000"),
            Pinger::new(addr("10.0.0.2:7"), ms(700)),
        )
        .unwrap();
    let p2 = sim
        .add_node(addr("10.0.1.3:1000"), Pinger::new(addr(SERVER), ms(900)))
        .unwrap();
    let nodes = [srv, cli, echo, p1, p2];
    let trace = record_trace(&mut sim);
    let mut last = Duration::ZERO;
    let mut checked = 0;
    let monotonic = trace.clone();
    for step in 0..120u64 {
        let node = nodes[pick(5) as usize];
        let other = nodes[pick(5) as usize];
        match pick(10) {
            0 => sim.set_faults(LinkFaults {
                latency: ms(pick(200)),
                jitter: ms(pick(200)),
                loss: pick(50) as f64 / 100.0,
                duplicate: pick(30) as f64 / 100.0,
                reorder: pick(50) as f64 / 100.0,
                reorder_delay: ms(pick(2000)),
                bandwidth: 0,
                queue_limit: Duration::ZERO,
            }),
            1 => sim.partition(secs(pick(20))),
            2 => sim.isolate(node, secs(pick(30))),
            3 => sim.cut_link(node, other, secs(pick(30))),
            4 => sim.drop_next(node, other, pick(10)),
            5 => {
                let muted = pick(3) == 0;
                sim.set_muted(node, muted).unwrap();
            }
            6 => {
                let now = sim.now();
                let c = sim.node_mut::<DtlsClientNode>(cli).unwrap();
                if pick(2) == 0 && c.reset_and_resume(now).is_some() {
                } else {
                    c.reset_and_connect(now);
                }
            }
            7 => sim.heal(),
            _ => {}
        }
        sim.run_for(secs(5))
            .unwrap_or_else(|e| panic!("step {step}: {e}"));
        let events = monotonic.borrow();
        for event in &events[checked..] {
            assert!(event.0 >= last, "time went backwards ({})", sim.context());
            last = event.0;
        }
        checked = events.len();
    }
    // Healed and quiet: the device gets through again (a new handshake if it gave up).
    sim.heal();
    sim.set_faults(LinkFaults::PERFECT);
    for &n in &nodes {
        sim.set_muted(n, false).unwrap();
    }
    let now = sim.now();
    let c = sim.node_mut::<DtlsClientNode>(cli).unwrap();
    if c.client.is_closed() || !c.client.is_connected() {
        c.reset_and_connect(now);
    }
    let before = client(&sim, cli).received.len();
    sim.run_until_with(now + secs(120), |sim| {
        client(sim, cli).received.len() > before + 2
    })
    .unwrap_or_else(|e| panic!("after the chaos: {e}"));
    for id in nodes {
        sim.remove_node(id);
    }
    sim.run_for(secs(60)).unwrap();
    assert_balanced(&sim);
    let t = trace.borrow().clone();
    t
}

#[test]
fn chaos_scripts_keep_every_invariant_and_replay_exactly() {
    for seed in 0..6 {
        chaos_run(seed);
    }
    assert_eq!(chaos_run(1000), chaos_run(1000), "seed 1000 did not replay");
}
