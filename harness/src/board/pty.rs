//! An emulated board's USB serial port: the master side of a pseudo-terminal pair
//! (`tokio_serial::SerialStream::pair`), whose slave path a host opens as it opens a real
//! board's `/dev/ttyACM0`. [`serve_device`] connects it to an emulated device running over
//! real UDP ([`UdpNode<DeviceNode>`]) through [`BoardServer`].

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use emulator::os::DeviceEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_serial::{SerialPort, SerialStream};

use super::serve::BoardServer;
use crate::net::udp::UdpNode;
use crate::testbed::DeviceNode;

/// Lines queued for the host; more are dropped while the host does not read (as a USB CDC
/// port drops what no host takes).
const OUTPUT_QUEUE: usize = 256;

/// The device's end of a pseudo-terminal.
pub struct PtyPort {
    path: String,
    input: mpsc::Receiver<Vec<u8>>,
    output: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
    /// Kept open so the master does not see a hang-up while no host has the port open.
    _slave: SerialStream,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for PtyPort {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl PtyPort {
    /// Opens a pseudo-terminal pair. Must be called inside a tokio runtime with I/O enabled.
    pub fn open() -> io::Result<PtyPort> {
        let (master, slave) = SerialStream::pair().map_err(io::Error::other)?;
        let path = slave
            .name()
            .ok_or_else(|| io::Error::other("the pseudo-terminal has no path"))?;
        let (mut read, mut write) = tokio::io::split(master);
        let (in_tx, input) = mpsc::channel::<Vec<u8>>(64);
        let (output, mut out_rx) = mpsc::channel::<String>(OUTPUT_QUEUE);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if in_tx.send(buf[..n].to_vec()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let writer = tokio::spawn(async move {
            while let Some(mut line) = out_rx.recv().await {
                line.push('\n');
                if write.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        Ok(PtyPort {
            path,
            input,
            output,
            dropped: Arc::new(AtomicU64::new(0)),
            _slave: slave,
            tasks: [reader, writer],
        })
    }

    /// The path a host opens (`/dev/pts/N`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Everything the host sent since the last call, without waiting.
    pub fn take_input(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Ok(bytes) = self.input.try_recv() {
            out.extend_from_slice(&bytes);
        }
        out
    }

    /// Waits until the host sent something (at most `limit`).
    pub async fn wait_input(&mut self, limit: Duration) -> Vec<u8> {
        match tokio::time::timeout(limit, self.input.recv()).await {
            Ok(Some(mut bytes)) => {
                bytes.extend(self.take_input());
                bytes
            }
            _ => Vec::new(),
        }
    }

    /// Queues a line for the host (dropped when the host has not read the last
    /// [`OUTPUT_QUEUE`] lines).
    pub fn send(&self, line: String) {
        if self.output.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped because the host did not read.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One round of an emulated board's serial side: the host's bytes are carried out on the
/// device, and `events` (the device's trace since the last round, in order) become the lines
/// the test firmware prints.
pub fn serve_device(
    node: &UdpNode<DeviceNode>,
    port: &mut PtyPort,
    server: &mut BoardServer,
    input: &[u8],
    events: &[(Duration, DeviceEvent)],
) {
    let lines = node.with_node(|n, now| {
        let mut lines = Vec::new();
        for (at, e) in events {
            lines.extend(server.device_event(*at, e, &n.os));
        }
        if !input.is_empty() {
            lines.extend(server.receive(now, input, &mut n.os));
        }
        lines
    });
    for line in lines {
        port.send(line);
    }
}
