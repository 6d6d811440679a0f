//! One device's DTLS session as the cloud keeps it: the association, the CoAP endpoint while the
//! device is online, what our outstanding requests were for, the post-connect timers, and the
//! reassembly of Block1 describes (reference 1.10).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use protocol::coap::{Endpoint, RequestHandle};
use protocol::dtls::ConnectionHandle;
use protocol::message::{Describe, DescribeFlags};
use rand_chacha::ChaCha8Rng;

use super::job::JobId;

/// What one of our CON requests was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    UpdateStart(JobId),
    UpdateFinish(JobId),
    /// An event sent to the device.
    Event,
    /// A describe request (GET `d`) for the system describe.
    Describe,
}

/// A device's session.
#[derive(Debug)]
pub struct Session {
    pub handle: ConnectionHandle,
    pub cid: Option<Vec<u8>>,
    pub address: SocketAddr,
    /// Never online yet: a full handshake whose first message has not arrived.
    pub fresh: bool,
    pub online: bool,
    /// This connection of the session was a handshake-less resumption.
    pub resumed: bool,
    /// Type-253 records seen since the last type-25 record (one resumption, reference 1.4).
    pub moving: bool,
    /// When the handshake completed or the session resumed.
    pub started_at: Duration,
    /// Last authenticated record from the device.
    pub last_heard: Duration,
    /// Last request (not ping) from the device: the post-connect sequence settles after it.
    pub last_request: Duration,
    /// `particle/device/updates/pending` sent for this connection.
    pub pending_sent: bool,
    /// A system describe arrived on this connection (a resumption counts the last one known).
    pub describe_seen: bool,
    /// The device published `spark/device/safemode` on this connection.
    pub safe_mode_said: bool,
    /// `spark/status/safe-mode` published for this connection.
    pub safe_mode_published: bool,
    /// We asked for the system describe on this connection.
    pub describe_requested: bool,
    /// `particle/device/updates/pending` `true` sent on this connection.
    pub pending_true_sent: bool,
    /// When the cloud last compared the device with its target on this connection (after the
    /// post-connect sequence settled); a request after it asks for another look once quiet.
    pub reconciled_at: Option<Duration>,
    /// A transfer stalled (no UpdateAck for the stall limit) at this time: nothing is started
    /// again until the device is heard from after it.
    pub stalled_at: Option<Duration>,
    /// The CoAP endpoint of this connection (`None` while offline: a resumption starts anew).
    pub endpoint: Option<Endpoint<ChaCha8Rng>>,
    pub purposes: HashMap<RequestHandle, Purpose>,
    pub describe: DescribeAssembly,
    /// Block2 blocks of a describe we asked for, so far.
    pub describe_blocks: Vec<u8>,
    /// Message ids of recent UpdateChunks and their indices (an RST names a refused chunk).
    chunk_mids: VecDeque<(u16, u32)>,
}

impl Session {
    pub fn new(
        handle: ConnectionHandle,
        cid: Option<Vec<u8>>,
        address: SocketAddr,
        now: Duration,
    ) -> Session {
        Session {
            handle,
            cid,
            address,
            fresh: true,
            online: false,
            resumed: false,
            moving: false,
            started_at: now,
            last_heard: now,
            last_request: now,
            pending_sent: false,
            describe_seen: false,
            safe_mode_said: false,
            safe_mode_published: false,
            describe_requested: false,
            pending_true_sent: false,
            reconciled_at: None,
            stalled_at: None,
            endpoint: None,
            purposes: HashMap::new(),
            describe: DescribeAssembly::default(),
            describe_blocks: Vec::new(),
            chunk_mids: VecDeque::new(),
        }
    }

    pub fn remember_chunk(&mut self, message_id: u16, index: u32) {
        if self.chunk_mids.len() >= CHUNK_MIDS_KEPT {
            self.chunk_mids.pop_front();
        }
        self.chunk_mids.push_back((message_id, index));
    }

    /// The chunk index sent with `message_id`, if it was a recent chunk.
    pub fn chunk_of(&self, message_id: u16) -> Option<u32> {
        self.chunk_mids
            .iter()
            .rev()
            .find(|(m, _)| *m == message_id)
            .map(|(_, i)| *i)
    }

    /// Forgets the endpoint state of a connection that ended, buffers included (a fleet holds
    /// a session per device, most of them idle).
    pub fn clear_connection(&mut self) {
        self.endpoint = None;
        self.purposes = HashMap::new();
        self.describe = DescribeAssembly::default();
        self.describe_blocks = Vec::new();
        self.chunk_mids = VecDeque::new();
    }
}

/// How many chunk message ids are kept (twice the largest window, 256 chunks).
const CHUNK_MIDS_KEPT: usize = 512;

/// A describe being received, possibly in Block1 blocks.
#[derive(Debug, Default)]
pub struct DescribeAssembly {
    flags: Option<DescribeFlags>,
    content_format: Option<u16>,
    data: Vec<u8>,
    next: u32,
}

/// What a describe block gave.
#[derive(Debug, PartialEq, Eq)]
pub enum DescribeProgress {
    /// More blocks to come (or a duplicate block).
    Partial,
    /// The whole describe.
    Complete {
        flags: DescribeFlags,
        content_format: Option<u16>,
        payload: Vec<u8>,
    },
    /// A block out of sequence: the describe so far is dropped.
    OutOfSequence { expected: u32, got: u32 },
}

impl DescribeAssembly {
    /// Bytes held of a describe still arriving.
    pub fn buffered(&self) -> usize {
        self.data.len()
    }

    pub fn add(&mut self, describe: Describe) -> DescribeProgress {
        let Some(block) = describe.block1 else {
            *self = DescribeAssembly::default();
            return DescribeProgress::Complete {
                flags: describe.flags,
                content_format: describe.content_format,
                payload: describe.payload,
            };
        };
        if block.num == 0 {
            *self = DescribeAssembly {
                flags: Some(describe.flags),
                content_format: describe.content_format,
                data: Vec::new(),
                next: 0,
            };
        }
        if block.num < self.next {
            return DescribeProgress::Partial; // a block we already have
        }
        if block.num != self.next || self.flags != Some(describe.flags) {
            let expected = self.next;
            *self = DescribeAssembly::default();
            return DescribeProgress::OutOfSequence {
                expected,
                got: block.num,
            };
        }
        self.data.extend_from_slice(&describe.payload);
        self.next += 1;
        if block.more {
            return DescribeProgress::Partial;
        }
        let done = std::mem::take(self);
        DescribeProgress::Complete {
            flags: describe.flags,
            content_format: done.content_format,
            payload: done.data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_joined_in_order() {
        let payload: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        let blocks = Describe::blocks(DescribeFlags::SYSTEM, Some(42), &payload, 1152);
        assert_eq!(blocks.len(), 2);
        let mut a = DescribeAssembly::default();
        assert_eq!(a.add(blocks[0].clone()), DescribeProgress::Partial);
        assert_eq!(a.add(blocks[0].clone()), DescribeProgress::Partial);
        assert_eq!(
            a.add(blocks[1].clone()),
            DescribeProgress::Complete {
                flags: DescribeFlags::SYSTEM,
                content_format: Some(42),
                payload
            }
        );
    }

    #[test]
    fn a_missing_block_drops_the_describe() {
        let payload = vec![7u8; 2500];
        let blocks = Describe::blocks(DescribeFlags::SYSTEM, Some(42), &payload, 1152);
        let mut a = DescribeAssembly::default();
        a.add(blocks[0].clone());
        assert_eq!(
            a.add(blocks[2].clone()),
            DescribeProgress::OutOfSequence {
                expected: 1,
                got: 2
            }
        );
    }
}
