//! A testbed: the local Device Cloud and emulated devices on one simulated network, in virtual
//! time (DESIGN.md "Two transports, one protocol"). The same `Cloud` and `DeviceOs` run over
//! real UDP through [`crate::net::udp`]; here they run over [`SimNetwork`], seeded, so a run
//! replays exactly from its seed.
//!
//! [`CloudNode`] and [`DeviceNode`] adapt the sans-IO cloud and device to [`Node`], keeping
//! their events with the virtual time they happened at; [`Testbed`] wires them together and
//! merges those events into one machine-independent trace.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emulator::board::Board;
use emulator::device::Device;
use emulator::firmware::{FirmwareError, FirmwareSet, ModuleSizes, Versions};
use emulator::os::{AppBehaviour, DeviceEvent, DeviceOs, DeviceStatus, Identity};
use p256::ecdsa::SigningKey;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::cloud::{Cloud, CloudConfig, CloudEvent, JobId, JobStatus};
use crate::message_kind::MessageWatch;
use crate::net::sim::{NodeId, SimError, SimNetwork};
use crate::net::Node;

/// Where the cloud listens on the simulated network (Particle's UDP port).
pub const CLOUD_ADDR: &str = "10.0.0.1:5684";

/// The cloud as a network node; its events are kept with their virtual time.
pub struct CloudNode {
    pub cloud: Cloud,
    pub events: Vec<(Duration, CloudEvent)>,
    now: Duration,
    /// Learns the keys of every session the cloud completes, before the cloud sends anything
    /// under them ([`Testbed::watch_messages`]).
    watch: Option<Arc<Mutex<MessageWatch>>>,
}

impl CloudNode {
    pub fn new(cloud: Cloud) -> Self {
        CloudNode {
            cloud,
            events: Vec::new(),
            now: Duration::ZERO,
            watch: None,
        }
    }

    fn drain(&mut self) {
        while let Some(event) = self.cloud.poll_event() {
            self.events.push((self.now, event));
        }
        if let Some(watch) = &self.watch {
            if let Ok(mut watch) = watch.lock() {
                watch.keys_mut().learn(&self.cloud.saved_sessions());
            }
        }
    }

    /// Runs `f` on the cloud at `now` (a flash, a release, a forced update: anything not
    /// caused by a datagram or a timer) and moves the events it raised into
    /// [`CloudNode::events`] at once, stamped `now`, rather than at the next datagram.
    pub fn act<R>(&mut self, now: Duration, f: impl FnOnce(&mut Cloud, Duration) -> R) -> R {
        self.now = self.now.max(now);
        let r = f(&mut self.cloud, now);
        self.drain();
        r
    }
}

impl Node for CloudNode {
    fn handle_datagram(&mut self, now: Duration, from: SocketAddr, data: &[u8]) {
        self.now = now;
        self.cloud.handle_datagram(now, from, data);
        self.drain();
    }

    fn handle_timeout(&mut self, now: Duration) {
        self.now = now;
        self.cloud.handle_timeout(now);
        self.drain();
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.cloud.poll_transmit()
    }

    fn poll_timeout(&self) -> Option<Duration> {
        self.cloud.poll_timeout()
    }
}

/// An emulated device as a network node talking to one server address.
pub struct DeviceNode {
    pub os: DeviceOs,
    pub server: SocketAddr,
    pub events: Vec<(Duration, DeviceEvent)>,
    now: Duration,
}

impl DeviceNode {
    pub fn new(os: DeviceOs, server: SocketAddr) -> Self {
        DeviceNode {
            os,
            server,
            events: Vec::new(),
            now: Duration::ZERO,
        }
    }

    /// Moves the device's pending events into [`DeviceNode::events`] at time `now`.
    pub fn drain(&mut self, now: Duration) {
        self.now = self.now.max(now);
        while let Some(event) = self.os.poll_event() {
            self.events.push((self.now, event));
        }
    }
}

impl Node for DeviceNode {
    fn handle_datagram(&mut self, now: Duration, from: SocketAddr, data: &[u8]) {
        // A device only talks to its server; anything else is dropped as the socket would.
        if from == self.server {
            self.os.handle_datagram(now, data);
        }
        self.drain(now);
    }

    fn handle_timeout(&mut self, now: Duration) {
        self.os.handle_timeout(now);
        self.drain(now);
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.os.poll_transmit().map(|d| (self.server, d))
    }

    fn poll_timeout(&self) -> Option<Duration> {
        self.os.poll_timeout()
    }

    fn local_addr_generation(&self) -> u32 {
        self.os.socket_generation()
    }
}

/// What to put on a new emulated device.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub board: Board,
    pub versions: Versions,
    pub app: AppBehaviour,
    pub sizes: ModuleSizes,
}

impl DeviceSpec {
    /// A board running the Device OS 6.2.0 baseline with `product_version` as its app version.
    pub fn new(board: Board, product_version: u16) -> Self {
        DeviceSpec {
            board,
            versions: Versions {
                product_version,
                ..Versions::BASELINE
            },
            app: AppBehaviour::default(),
            sizes: ModuleSizes::default(),
        }
    }
}

/// One device of the testbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DeviceHandle(pub usize);

/// Errors that stop a testbed run.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error("building firmware: {0}")]
    Firmware(#[from] FirmwareError),
    #[error("no device number {} on this testbed", .0 .0)]
    NoDevice(DeviceHandle),
    #[error(
        "seed {seed}: {what} did not happen within {} virtual s (at t = {} s)",
        within.as_secs_f64(),
        at.as_secs_f64()
    )]
    Timeout {
        seed: u64,
        what: String,
        within: Duration,
        at: Duration,
    },
}

/// Where a trace line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Cloud,
    Device(usize),
}

/// What a trace line reports: the event itself, typed (a reader matches on it, never on the
/// text).
#[derive(Debug, Clone, PartialEq)]
pub enum TracedEvent {
    Cloud(CloudEvent),
    Device(DeviceEvent),
}

/// One line of the merged trace: virtual time, source, what happened (the event and its
/// one-line rendering by [`crate::trace_text`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TraceLine {
    pub at: Duration,
    pub source: Source,
    pub event: TracedEvent,
    pub text: String,
}

impl std::fmt::Display for TraceLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = match self.source {
            Source::Cloud => "cloud".to_string(),
            Source::Device(n) => format!("dev{n}"),
        };
        write!(
            f,
            "{:>6}.{:03}s {who:<5} {}",
            self.at.as_secs(),
            self.at.subsec_millis(),
            self.text
        )
    }
}

/// The local cloud and emulated devices on one simulated network.
pub struct Testbed {
    pub net: SimNetwork,
    cloud: NodeId,
    devices: Vec<(NodeId, [u8; 12])>,
    server_key: SigningKey,
    cloud_addr: SocketAddr,
    trace: Vec<TraceLine>,
    /// How many cloud / device events of each node are already in `trace`.
    seen_cloud: usize,
    seen_devices: Vec<usize>,
}

impl Testbed {
    /// A testbed with a cloud whose key and randomness come from `seed`.
    pub fn new(seed: u64) -> Result<Testbed, TestbedError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC10D);
        let server_key = SigningKey::random(&mut rng);
        let cloud = Cloud::new(CloudConfig::new(server_key.clone()), seed);
        let mut net = SimNetwork::new(seed);
        let cloud_addr: SocketAddr = CLOUD_ADDR.parse().map_err(|_| SimError::Deadline {
            seed,
            deadline: Duration::ZERO,
        })?;
        let cloud = net.add_node(cloud_addr, CloudNode::new(cloud))?;
        Ok(Testbed {
            net,
            cloud,
            devices: Vec::new(),
            server_key,
            cloud_addr,
            trace: Vec::new(),
            seen_cloud: 0,
            seen_devices: Vec::new(),
        })
    }

    pub fn seed(&self) -> u64 {
        self.net.seed()
    }

    pub fn now(&self) -> Duration {
        self.net.now()
    }

    /// Provisions a device (flash programmed with `spec`'s firmware), registers its key with
    /// the cloud and puts it on the network, powered off. Its id and key derive from the
    /// testbed seed and its number.
    pub fn add_device(&mut self, spec: &DeviceSpec) -> Result<DeviceHandle, TestbedError> {
        self.add_device_as(spec, None)
    }

    /// Like [`Testbed::add_device`], with the device id `id` when given (a scenario's
    /// `[[cloud.device]] id`); the key and firmware derive from the seed as before.
    pub fn add_device_as(
        &mut self,
        spec: &DeviceSpec,
        id: Option<[u8; 12]>,
    ) -> Result<DeviceHandle, TestbedError> {
        let n = self.devices.len();
        let seed = self.seed() ^ ((n as u64 + 1) << 32);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let key = SigningKey::random(&mut rng);
        let mut device_id = [0u8; 12];
        rand_core::RngCore::fill_bytes(&mut rng, &mut device_id);
        let device_id = id.unwrap_or(device_id);
        let (device, _) =
            FirmwareSet::new(&spec.board, spec.sizes, seed).provision(&spec.versions)?;
        self.add_provisioned(device, key, device_id, spec.app, seed)
    }

    /// Puts an already provisioned device with a known identity on the network.
    pub fn add_provisioned(
        &mut self,
        device: Device,
        key: SigningKey,
        device_id: [u8; 12],
        app: AppBehaviour,
        seed: u64,
    ) -> Result<DeviceHandle, TestbedError> {
        let identity = Identity {
            device_id,
            server_key: *self.server_key.verifying_key(),
            key,
        };
        self.cloud_mut()
            .register_device(device_id, identity.public_key());
        let os = DeviceOs::new(identity, device, app, seed);
        let ip = std::net::IpAddr::from([10, 0, 1, (self.devices.len() % 250) as u8 + 1]);
        let node = self
            .net
            .add_node_ephemeral(ip, DeviceNode::new(os, self.cloud_addr))?;
        self.devices.push((node, device_id));
        self.seen_devices.push(0);
        Ok(DeviceHandle(self.devices.len() - 1))
    }

    fn node_of(&self, device: DeviceHandle) -> Result<NodeId, TestbedError> {
        self.devices
            .get(device.0)
            .map(|(id, _)| *id)
            .ok_or(TestbedError::NoDevice(device))
    }

    pub fn device_id(&self, device: DeviceHandle) -> Option<[u8; 12]> {
        self.devices.get(device.0).map(|(_, id)| *id)
    }

    pub fn device_node(&self, device: DeviceHandle) -> Option<NodeId> {
        self.devices.get(device.0).map(|(id, _)| *id)
    }

    pub fn cloud_node(&self) -> NodeId {
        self.cloud
    }

    pub fn cloud(&self) -> &Cloud {
        &self
            .net
            .node::<CloudNode>(self.cloud)
            .expect("the cloud node is never removed")
            .cloud
    }

    pub fn cloud_mut(&mut self) -> &mut Cloud {
        &mut self
            .net
            .node_mut::<CloudNode>(self.cloud)
            .expect("the cloud node is never removed")
            .cloud
    }

    pub fn os(&self, device: DeviceHandle) -> Result<&DeviceOs, TestbedError> {
        let id = self.node_of(device)?;
        self.net
            .node::<DeviceNode>(id)
            .map(|n| &n.os)
            .ok_or(TestbedError::NoDevice(device))
    }

    /// Runs `f` on a device (an application control, a power cut...) at the current time;
    /// the network polls the device again afterwards.
    pub fn with_device<R>(
        &mut self,
        device: DeviceHandle,
        f: impl FnOnce(&mut DeviceOs, Duration) -> R,
    ) -> Result<R, TestbedError> {
        let id = self.node_of(device)?;
        let now = self.net.now();
        let node = self
            .net
            .node_mut::<DeviceNode>(id)
            .ok_or(TestbedError::NoDevice(device))?;
        let r = f(&mut node.os, now);
        node.drain(now);
        Ok(r)
    }

    pub fn status(&self, device: DeviceHandle) -> Result<DeviceStatus, TestbedError> {
        Ok(self.os(device)?.status())
    }

    pub fn power_on(&mut self, device: DeviceHandle) -> Result<(), TestbedError> {
        self.with_device(device, |os, now| os.power_on(now))
    }

    pub fn power_cut(&mut self, device: DeviceHandle) -> Result<(), TestbedError> {
        self.with_device(device, |os, now| os.power_cut(now))
    }

    /// Asks the cloud to flash `file` to `device` (queued while it is offline).
    pub fn flash(&mut self, device: DeviceHandle, file: Vec<u8>) -> Result<JobId, TestbedError> {
        let id = self
            .device_id(device)
            .ok_or(TestbedError::NoDevice(device))?;
        Ok(self.with_cloud(|cloud, now| cloud.flash(now, id, file)))
    }

    pub fn job(&self, job: JobId) -> Option<JobStatus> {
        self.cloud().job(job).cloned()
    }

    /// Runs until `done` holds (checked after every event) or `within` of virtual time passed.
    pub fn run_until(
        &mut self,
        what: &str,
        within: Duration,
        mut done: impl FnMut(&Testbed) -> bool,
    ) -> Result<Duration, TestbedError> {
        let deadline = self.net.now() + within;
        loop {
            self.collect_trace();
            if done(self) {
                return Ok(self.net.now());
            }
            if !self.net.step(deadline)? {
                self.net.run_until(deadline)?;
                self.collect_trace();
                if done(self) {
                    return Ok(self.net.now());
                }
                return Err(TestbedError::Timeout {
                    seed: self.seed(),
                    what: what.to_string(),
                    within,
                    at: self.net.now(),
                });
            }
        }
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) -> Result<(), TestbedError> {
        self.net.run_for(duration)?;
        self.collect_trace();
        Ok(())
    }

    /// Moves new cloud and device events into the merged trace.
    /// Moves events the cloud raised outside a network step (a change made through
    /// [`Testbed::cloud_mut`]) into the cloud node's log, stamped with the current time.
    /// Without it they would wait for the cloud's next datagram or timer, which on an idle link
    /// can be a keepalive away, and carry that later time.
    fn drain_cloud(&mut self) {
        let now = self.net.now();
        if let Some(node) = self.net.node_mut::<CloudNode>(self.cloud) {
            node.act(now, |_, _| ());
        }
    }

    /// Runs `f` on the cloud at the current virtual time; its events are logged at once.
    pub fn with_cloud<R>(&mut self, f: impl FnOnce(&mut Cloud, Duration) -> R) -> R {
        let now = self.net.now();
        self.net
            .node_mut::<CloudNode>(self.cloud)
            .expect("the cloud node is never removed")
            .act(now, f)
    }

    fn collect_trace(&mut self) {
        self.drain_cloud();
        let mut new = Vec::new();
        if let Some(node) = self.net.node::<CloudNode>(self.cloud) {
            for (at, event) in node.events.iter().skip(self.seen_cloud) {
                if let Some(text) = crate::trace_text::cloud_event(event) {
                    new.push(TraceLine {
                        at: *at,
                        source: Source::Cloud,
                        event: TracedEvent::Cloud(event.clone()),
                        text,
                    });
                }
            }
            self.seen_cloud = node.events.len();
        }
        for (n, (id, _)) in self.devices.iter().enumerate() {
            if let Some(node) = self.net.node::<DeviceNode>(*id) {
                for (at, event) in node.events.iter().skip(self.seen_devices[n]) {
                    if let Some(text) = crate::trace_text::device_event(event) {
                        new.push(TraceLine {
                            at: *at,
                            source: Source::Device(n),
                            event: TracedEvent::Device(event.clone()),
                            text,
                        });
                    }
                }
                self.seen_devices[n] = node.events.len();
            }
        }
        new.sort_by_key(|l| (l.at, l.source));
        self.trace.extend(new);
    }

    /// A reader of the CoAP messages in this testbed's datagrams: from now on the cloud hands
    /// it the keys of every session it completes (the same watch on every call).
    pub fn watch_messages(&mut self) -> Arc<Mutex<MessageWatch>> {
        let node = self
            .net
            .node_mut::<CloudNode>(self.cloud)
            .expect("the cloud node is never removed");
        let watch = node
            .watch
            .get_or_insert_with(|| Arc::new(Mutex::new(MessageWatch::new(Default::default()))))
            .clone();
        if let Ok(mut w) = watch.lock() {
            w.keys_mut().learn(&node.cloud.saved_sessions());
        }
        watch
    }

    /// The merged trace so far.
    pub fn trace(&self) -> &[TraceLine] {
        &self.trace
    }

    /// Device `device`'s events so far, with their virtual time.
    pub fn device_events(&self, device: DeviceHandle) -> &[(Duration, DeviceEvent)] {
        self.node_of(device)
            .ok()
            .and_then(|id| self.net.node::<DeviceNode>(id))
            .map(|n| n.events.as_slice())
            .unwrap_or(&[])
    }

    /// The cloud's events so far, with their virtual time.
    pub fn cloud_events(&self) -> &[(Duration, CloudEvent)] {
        self.net
            .node::<CloudNode>(self.cloud)
            .map(|n| n.events.as_slice())
            .unwrap_or(&[])
    }
}
