//! An emulated board standing in for a physical one: an emulated device running over real UDP
//! against a cloud, its test-control port on a pseudo-terminal ([`PtyPort`]), and doubles of
//! its debug probe ([`EmulatedProbe`]: programs the emulated flash as a probe would) and power
//! switch ([`EmulatedPower`]: cuts and restores the emulated device's power). A board target
//! drives it exactly as it drives a real board, through the serial path.
//!
//! For tests of the rack's handling of broken hardware, the board can be told to stop
//! answering on serial ([`EmulatedBoard::set_mute`]) and its power switch to fail
//! ([`EmulatedPower::fail`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use emulator::board::Board;
use emulator::firmware::{FirmwareSet, ModuleSizes, Versions};
use emulator::os::{AppBehaviour, DeviceOs, Identity};
use p256::ecdsa::{SigningKey, VerifyingKey};
use tokio::task::JoinHandle;

use super::power::{PowerError, PowerSwitch};
use super::probe::{DebugProbe, ProbeError};
use super::pty::{serve_device, PtyPort};
use super::serve::BoardServer;
use crate::net::udp::UdpNode;
use crate::testbed::DeviceNode;

/// What an emulated board is.
#[derive(Debug, Clone)]
pub struct EmulatedBoardSpec {
    /// Built-in board name.
    pub board: String,
    pub device_id: [u8; 12],
    pub key: SigningKey,
    pub server: SocketAddr,
    pub server_key: VerifyingKey,
    /// Firmware provisioned at start.
    pub versions: Versions,
    pub sizes: ModuleSizes,
    pub seed: u64,
}

/// A running emulated board (dropping it stops it).
pub struct EmulatedBoard {
    node: Arc<UdpNode<DeviceNode>>,
    path: String,
    mute: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for EmulatedBoard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EmulatedBoard {
    /// Provisions the device, powers it on and serves its port. Must run inside a tokio
    /// runtime with I/O and time enabled.
    pub async fn start(spec: &EmulatedBoardSpec) -> Result<EmulatedBoard, String> {
        let board = Board::builtin(&spec.board).map_err(|e| e.to_string())?;
        let (device, _) = FirmwareSet::new(&board, spec.sizes, spec.seed)
            .provision(&spec.versions)
            .map_err(|e| e.to_string())?;
        let identity = Identity {
            device_id: spec.device_id,
            server_key: spec.server_key,
            key: spec.key.clone(),
        };
        let os = DeviceOs::new(identity, device, AppBehaviour::default(), spec.seed);
        let node = UdpNode::client(DeviceNode::new(os, spec.server), spec.server)
            .await
            .map_err(|e| format!("the emulated board's UDP socket: {e}"))?;
        let node = Arc::new(node);
        let mut port = PtyPort::open().map_err(|e| format!("pseudo-terminal: {e}"))?;
        let path = port.path().to_string();
        let mute = Arc::new(AtomicBool::new(false));
        node.with_node(|n, now| {
            n.os.power_on(now);
        });
        let task = {
            let node = node.clone();
            let mute = mute.clone();
            tokio::spawn(async move {
                let mut server = BoardServer::new();
                loop {
                    let input = port.wait_input(Duration::from_millis(10)).await;
                    let events = node.with_node(|n, now| {
                        n.drain(now);
                        std::mem::take(&mut n.events)
                    });
                    if mute.load(Ordering::Relaxed) {
                        continue;
                    }
                    serve_device(&node, &mut port, &mut server, &input, &events);
                }
            })
        };
        Ok(EmulatedBoard {
            node,
            path,
            mute,
            task,
        })
    }

    /// The serial port's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A board that stops answering on serial (true) or answers again (false).
    pub fn set_mute(&self, mute: bool) {
        self.mute.store(mute, Ordering::Relaxed);
    }

    /// Its probe double.
    pub fn probe(&self) -> EmulatedProbe {
        EmulatedProbe {
            node: self.node.clone(),
        }
    }

    /// Its power switch double.
    pub fn power(&self) -> EmulatedPower {
        EmulatedPower {
            node: self.node.clone(),
            fail: None,
        }
    }
}

/// Programs the emulated flash as a debug probe would: `flash` writes a module image into its
/// region (the address is the region's, as the module's own prefix says; the emulator places
/// it by the prefix and checks nothing else), `reset` restarts the device.
pub struct EmulatedProbe {
    node: Arc<UdpNode<DeviceNode>>,
}

impl DebugProbe for EmulatedProbe {
    fn attach(&mut self) -> Result<String, ProbeError> {
        Ok(self
            .node
            .with_node(|n, _| n.os.device().board().name.clone()))
    }

    fn flash(&mut self, _address: u32, image: &[u8]) -> Result<(), ProbeError> {
        self.node.with_node(|n, _| {
            n.os.device_mut()
                .program_module(image)
                .map_err(|e| ProbeError(e.to_string()))
        })
    }

    fn reset(&mut self) -> Result<(), ProbeError> {
        // A probe reset is a pin reset: RAM is lost (a power cycle in the emulator).
        self.node.with_node(|n, now| {
            n.os.power_cut(now);
            n.os.power_on(now);
        });
        Ok(())
    }

    /// The emulated core stops: modelled as the device losing power (RAM lost, flash kept;
    /// nothing runs until a reset or power-up).
    fn halt(&mut self) -> Result<(), ProbeError> {
        self.node.with_node(|n, now| {
            n.os.power_cut(now);
            // The flash keeps its supply (the probe programs it); the system stays down.
            n.os.device_mut().power_on();
        });
        Ok(())
    }

    fn read_memory(&mut self, address: u32, len: usize) -> Result<Vec<u8>, ProbeError> {
        self.node.with_node(|n, _| {
            let device = n.os.device();
            let chip = device.board().flash_chip(emulator::board::Chip::Internal);
            device
                .flash()
                .read_vec(chip, address, len)
                .map_err(|e| ProbeError(e.to_string()))
        })
    }
}

/// Cuts and restores the emulated device's power; `fail` makes every switch fail (a broken
/// USB hub or relay).
pub struct EmulatedPower {
    node: Arc<UdpNode<DeviceNode>>,
    pub fail: Option<String>,
}

impl PowerSwitch for EmulatedPower {
    fn set(&mut self, on: bool) -> Result<(), PowerError> {
        if let Some(why) = &self.fail {
            return Err(PowerError(why.clone()));
        }
        self.node.with_node(|n, now| {
            if on {
                n.os.power_on(now);
            } else {
                n.os.power_cut(now);
            }
        });
        Ok(())
    }
}
