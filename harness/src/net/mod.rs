//! Transports for the protocol code: the same sans-IO endpoints run over a simulated datagram
//! network in virtual time ([`sim`]) and over real UDP sockets ([`udp`]) — DESIGN.md "Two
//! transports, one protocol" and reference `particle-protocol.md` 1.1 (Gen3 devices speak UDP
//! only; the server listens on one port for every device, a device uses one socket and gets a
//! new source port when it opens a new one after a reset).
//!
//! Both transports drive a [`Node`]: a datagram endpoint at one address that never reads a
//! clock or a socket itself (like quinn-proto's `Endpoint`). The local cloud (one node serving
//! many devices) and each emulated device (one node talking to its server) adapt to it, and so
//! do `protocol::dtls::{Client, Server}` in the tests.
//!
//! # The contract a node keeps
//!
//! - Time is a [`Duration`] since an epoch the transport picks (virtual zero in the simulation,
//!   the driver's start `Instant` over UDP). It never goes backwards between calls.
//! - After every `handle_*` call (and after the owner changed the node directly) the transport
//!   drains [`Node::poll_transmit`] and then asks [`Node::poll_timeout`].
//! - [`Node::handle_timeout`] is called once `now >= poll_timeout()`; the node must then move its
//!   timeout forward (or clear it), or the simulation reports a livelock.
//! - Input from the network is untrusted: any bytes from any address may arrive, including
//!   empty datagrams, and must never panic.
//! - [`Node::local_addr_generation`] changes when the node opens a new socket (a device after a
//!   reset): datagrams polled after the change leave from a new source port.
//!
//! # Example: one node, both transports
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use harness::net::{sim::SimNetwork, Node};
//!
//! /// Counts datagrams and answers each with "ok" (but not an "ok").
//! #[derive(Default)]
//! struct Counter { out: Vec<(SocketAddr, Vec<u8>)>, seen: usize }
//!
//! impl Node for Counter {
//!     fn handle_datagram(&mut self, _now: Duration, from: SocketAddr, data: &[u8]) {
//!         self.seen += 1;
//!         if data != b"ok" {
//!             self.out.push((from, b"ok".to_vec()));
//!         }
//!     }
//!     fn handle_timeout(&mut self, _now: Duration) {}
//!     fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> { self.out.pop() }
//!     fn poll_timeout(&self) -> Option<Duration> { None }
//! }
//!
//! let mut sim = SimNetwork::new(7); // the seed fixes every fault decision
//! sim.set_loss(0.1);
//! let server = sim.add_node("10.0.0.1:5684".parse().unwrap(), Counter::default()).unwrap();
//! let device = sim.add_node("10.0.0.2:40000".parse().unwrap(), Counter::default()).unwrap();
//! sim.node_mut::<Counter>(device).unwrap().out.push(("10.0.0.1:5684".parse().unwrap(), b"hi".to_vec()));
//! sim.run_until(Duration::from_secs(1)).unwrap();
//! let (asked, answered) = (sim.node::<Counter>(server).unwrap().seen, sim.node::<Counter>(device).unwrap().seen);
//! assert!(answered <= asked && asked <= 1, "{}", sim.context()); // "seed 7, t = 1.000 s"
//!
//! // The same node on a real socket: `udp::UdpNode::server(Counter::default(), addr).await`.
//! ```

use std::net::SocketAddr;
use std::time::Duration;

pub mod pacing;
pub mod sim;
pub mod udp;

/// A sans-IO datagram endpoint at one address. See the [module documentation](self).
pub trait Node {
    /// One datagram arrived from `from`.
    fn handle_datagram(&mut self, now: Duration, from: SocketAddr, data: &[u8]);
    /// The deadline returned by [`Node::poll_timeout`] has passed.
    fn handle_timeout(&mut self, now: Duration);
    /// The next datagram to send, with its destination.
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)>;
    /// When [`Node::handle_timeout`] should next be called, if ever.
    fn poll_timeout(&self) -> Option<Duration>;
    /// Bumped by a node that opens a new socket (a device after a reset): the simulation gives
    /// it a new source port, the UDP driver binds a new socket.
    fn local_addr_generation(&self) -> u32 {
        0
    }
}

impl<N: Node + ?Sized> Node for Box<N> {
    fn handle_datagram(&mut self, now: Duration, from: SocketAddr, data: &[u8]) {
        (**self).handle_datagram(now, from, data)
    }
    fn handle_timeout(&mut self, now: Duration) {
        (**self).handle_timeout(now)
    }
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        (**self).poll_transmit()
    }
    fn poll_timeout(&self) -> Option<Duration> {
        (**self).poll_timeout()
    }
    fn local_addr_generation(&self) -> u32 {
        (**self).local_addr_generation()
    }
}
