//! What a DTLS datagram between the testbed's cloud and a device carries, read from a copy:
//! the kinds of the CoAP messages inside (reference `particle-protocol.md` 1.5, 1.6 and the
//! OTA v3 exchange of 2.2), so that a scenario can drop "the next UpdateChunk" or "the ACK of
//! the device's 2.04" and the trace can say what a fault hit.
//!
//! The testbed's cloud and devices run in-process, so the keys are at hand: [`SessionKeys`]
//! holds the record ciphers of every session the cloud completed (from
//! [`crate::cloud::Cloud::saved_sessions`], the state it would keep across a restart), and
//! [`MessageWatch`] opens each datagram's application-data records with them, as `hil pcap
//! decrypt` does with a key log. Nothing is changed on the wire: the datagram that travels is
//! the one the node sent.
//!
//! Some kinds depend on what came before: a device's CON 2.04 is the answer to UpdateFinish,
//! and the cloud's empty ACK carrying that message id is "the ACK of the 2.04" (the device
//! commits only when it arrives). The watch remembers, per session, the message ids of the
//! device's CON 2.01 / 2.04 responses to tell those ACKs from others.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use protocol::coap::{Code, Message, MessageType};
use protocol::dtls::crypto::{KeyBlock, RecordCipher};
use protocol::dtls::record::{parse_datagram, ContentType};
use protocol::message::Body;

use crate::cloud::SavedSession;

/// The kind of one CoAP message, as a scenario names it (`link.drop_next kind = "..."`) and the
/// trace prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageKind {
    /// POST `h`.
    Hello,
    /// POST `d` (device-initiated describe) or GET `d` (the cloud asks).
    Describe,
    /// POST `E` / `e`.
    Event,
    /// GET `e`.
    Subscribe,
    /// GET `t`.
    TimeRequest,
    /// Empty CON.
    Ping,
    /// POST `x`.
    Goodbye,
    /// POST `S` (cloud to device).
    UpdateStart,
    /// POST `C` (cloud to device, NON).
    UpdateChunk,
    /// POST `A` (device to cloud, NON).
    UpdateAck,
    /// POST `F` (cloud to device, CON): ends a transfer (the legacy protocol's UpdateDone).
    UpdateFinish,
    /// The device's separate CON 2.01 answering UpdateStart (Window-Size, resume offset).
    Response201,
    /// The device's separate CON 2.04 answering UpdateFinish: validation passed, stats.
    Response204,
    /// The cloud's empty ACK of the device's 2.01.
    AckOf201,
    /// The cloud's empty ACK of the device's 2.04: the device commits the update on it.
    AckOf204,
    /// Any other empty ACK.
    Ack,
    /// RST.
    Reset,
    /// Any other response (piggy-backed or separate).
    Response,
    /// A request the catalogue does not type (function call, variable, signal...).
    Other,
}

impl MessageKind {
    /// Scenario words, canonical spelling first for each kind (the trace prints that one).
    pub const WORDS: [(&'static str, MessageKind); 20] = [
        ("Hello", MessageKind::Hello),
        ("Describe", MessageKind::Describe),
        ("Event", MessageKind::Event),
        ("Subscribe", MessageKind::Subscribe),
        ("TimeRequest", MessageKind::TimeRequest),
        ("Ping", MessageKind::Ping),
        ("Goodbye", MessageKind::Goodbye),
        ("UpdateStart", MessageKind::UpdateStart),
        ("UpdateChunk", MessageKind::UpdateChunk),
        ("UpdateAck", MessageKind::UpdateAck),
        ("UpdateFinish", MessageKind::UpdateFinish),
        // The legacy protocol's name for the message that ends a transfer.
        ("UpdateDone", MessageKind::UpdateFinish),
        ("response_201", MessageKind::Response201),
        ("response_204", MessageKind::Response204),
        ("ack_of_201", MessageKind::AckOf201),
        ("ack_of_204", MessageKind::AckOf204),
        ("ack", MessageKind::Ack),
        ("rst", MessageKind::Reset),
        ("response", MessageKind::Response),
        ("other", MessageKind::Other),
    ];

    pub fn as_str(self) -> &'static str {
        Self::WORDS
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("other", |(w, _)| w)
    }

    /// Whether a message of kind `actual` is one this kind names: `ack` is every empty ACK
    /// (also those of a 2.01 or 2.04), every other kind only itself.
    pub fn matches(self, actual: MessageKind) -> bool {
        self == actual
            || (self == MessageKind::Ack
                && matches!(actual, MessageKind::AckOf201 | MessageKind::AckOf204))
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One CoAP message found in a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundMessage {
    pub kind: MessageKind,
    /// The Chunk-Index of an UpdateChunk (1-based, from the resume offset).
    pub chunk: Option<u32>,
}

impl fmt::Display for FoundMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.chunk {
            Some(i) => write!(f, "{} {i}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

/// "UpdateChunk 3", "ack+response_204": the messages of one datagram for a trace line.
pub fn describe(found: &[FoundMessage]) -> String {
    found
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join("+")
}

/// The record ciphers of one session and the CIDs its records carry.
struct KnownSession {
    client_random: [u8; 32],
    /// The CID the device puts on its records (the cloud assigned it).
    device_cid_len: usize,
    /// The CID the cloud puts on its records (none for Device OS).
    cloud_cid_len: usize,
    device_write: RecordCipher,
    cloud_write: RecordCipher,
    /// Message ids of the device's recent CON 2.01 / 2.04 responses, with their kind.
    responses: VecDeque<(u16, MessageKind)>,
}

/// The keys of every DTLS session the cloud completed, newest last. Sessions are kept after
/// the cloud forgets them, so a late datagram of an old session is still read.
#[derive(Default)]
pub struct SessionKeys {
    sessions: Vec<KnownSession>,
}

impl SessionKeys {
    /// Takes in the sessions the cloud holds now (only new ones cost a key derivation).
    pub fn learn(&mut self, saved: &[SavedSession]) {
        for s in saved {
            let state = &s.dtls.state;
            if self
                .sessions
                .iter()
                .any(|k| k.client_random == state.client_random)
            {
                continue;
            }
            let (device_write, cloud_write) = KeyBlock::derive(
                &state.master_secret,
                &state.client_random,
                &state.server_random,
            )
            .ciphers(true);
            self.sessions.push(KnownSession {
                client_random: state.client_random,
                device_cid_len: state.cid.len(),
                cloud_cid_len: s.dtls.peer_cid.as_ref().map_or(0, Vec::len),
                device_write,
                cloud_write,
                responses: VecDeque::new(),
            });
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The session whose keys open `datagram` and the plaintexts of its application-data
    /// records; `None` when no known session's keys do (a handshake, an unknown session).
    fn open(&self, datagram: &[u8], from_cloud: bool) -> Option<(usize, Vec<Vec<u8>>)> {
        // Newest first: a device that handshook again uses its latest session.
        for (i, s) in self.sessions.iter().enumerate().rev() {
            let (cid_len, cipher) = if from_cloud {
                (s.cloud_cid_len, &s.cloud_write)
            } else {
                (s.device_cid_len, &s.device_write)
            };
            let Ok(records) = parse_datagram(datagram, cid_len) else {
                continue;
            };
            let mut plaintexts = Vec::new();
            let mut opened = false;
            for r in records.iter().filter(|r| r.epoch > 0) {
                match cipher.open(r.content_type, r.epoch, r.seq, r.cid, r.fragment) {
                    Ok((ContentType::ApplicationData, plain)) => {
                        opened = true;
                        plaintexts.push(plain);
                    }
                    Ok(_) => opened = true,
                    Err(_) => break,
                }
            }
            if opened {
                return Some((i, plaintexts));
            }
        }
        None
    }
}

/// How many of the device's CON responses a session remembers (to name the ACKs of them).
const REMEMBERED_RESPONSES: usize = 16;

/// Reads the CoAP messages of the datagrams it is shown, in the order they are sent.
pub struct MessageWatch {
    keys: SessionKeys,
}

impl MessageWatch {
    pub fn new(keys: SessionKeys) -> Self {
        MessageWatch { keys }
    }

    pub fn keys_mut(&mut self) -> &mut SessionKeys {
        &mut self.keys
    }

    /// The messages in `datagram`, sent by the cloud (`from_cloud`) or by a device. Empty for
    /// a datagram no known session opens (handshake records, an unknown session). Call once
    /// per datagram sent, in order: the ACK of a 2.04 is known by the 2.04 seen before it.
    pub fn classify(&mut self, datagram: &[u8], from_cloud: bool) -> Vec<FoundMessage> {
        let Some((session, plaintexts)) = self.keys.open(datagram, from_cloud) else {
            return Vec::new();
        };
        let s = &mut self.keys.sessions[session];
        let mut out = Vec::new();
        for plain in plaintexts {
            let Ok(message) = Message::parse(&plain) else {
                out.push(FoundMessage {
                    kind: MessageKind::Other,
                    chunk: None,
                });
                continue;
            };
            let found = kind_of(&message, from_cloud, &s.responses);
            if !from_cloud
                && matches!(
                    found.kind,
                    MessageKind::Response201 | MessageKind::Response204
                )
            {
                if s.responses.len() == REMEMBERED_RESPONSES {
                    s.responses.pop_front();
                }
                s.responses.push_back((message.message_id, found.kind));
            }
            out.push(found);
        }
        out
    }
}

/// The kind of one CoAP message sent by the cloud (`from_cloud`) or a device, by itself (an
/// empty ACK is `ack`: which response it acknowledges needs the session's history).
pub fn message_kind(message: &Message, from_cloud: bool) -> MessageKind {
    kind_of(message, from_cloud, &VecDeque::new()).kind
}

/// One message's kind; `responses` are the device's CON responses seen so far in its session.
fn kind_of(
    message: &Message,
    from_cloud: bool,
    responses: &VecDeque<(u16, MessageKind)>,
) -> FoundMessage {
    let plain = |kind| FoundMessage { kind, chunk: None };
    if message.code.is_empty() {
        return plain(match message.kind {
            MessageType::Confirmable => MessageKind::Ping,
            MessageType::Reset => MessageKind::Reset,
            MessageType::Acknowledgement if from_cloud => responses
                .iter()
                .rev()
                .find(|(mid, _)| *mid == message.message_id)
                .map_or(MessageKind::Ack, |(_, k)| match k {
                    MessageKind::Response201 => MessageKind::AckOf201,
                    _ => MessageKind::AckOf204,
                }),
            MessageType::Acknowledgement => MessageKind::Ack,
            MessageType::NonConfirmable => MessageKind::Other,
        });
    }
    if message.code.is_response() {
        // Device OS answers UpdateStart and UpdateFinish with separate CON responses (2.2);
        // nothing else it sends is a CON 2.01 or 2.04.
        let separate = !from_cloud && message.kind == MessageType::Confirmable;
        return plain(match message.code {
            Code::CREATED if separate => MessageKind::Response201,
            Code::CHANGED if separate => MessageKind::Response204,
            _ => MessageKind::Response,
        });
    }
    match Body::from_coap(message) {
        Ok(Body::Hello(_)) => plain(MessageKind::Hello),
        Ok(Body::Describe(_) | Body::DescribeRequest(_)) => plain(MessageKind::Describe),
        Ok(Body::Event(_)) => plain(MessageKind::Event),
        Ok(Body::Subscribe(_)) => plain(MessageKind::Subscribe),
        Ok(Body::TimeRequest) => plain(MessageKind::TimeRequest),
        Ok(Body::Goodbye(_)) => plain(MessageKind::Goodbye),
        Ok(Body::UpdateStart(_)) => plain(MessageKind::UpdateStart),
        Ok(Body::UpdateChunk(c)) => FoundMessage {
            kind: MessageKind::UpdateChunk,
            chunk: Some(c.index),
        },
        Ok(Body::UpdateAck(_)) => plain(MessageKind::UpdateAck),
        Ok(Body::UpdateFinish(_)) => plain(MessageKind::UpdateFinish),
        _ => plain(MessageKind::Other),
    }
}

/// Remembers the messages of datagrams still in flight, so that one dropped on arrival (a
/// partition that began meanwhile, a device that moved) is still named. Keyed by the sender
/// and the first record's epoch and sequence number, unique per direction of a session.
#[derive(Default)]
pub struct InFlight {
    by_record: HashMap<(u32, u64), Vec<FoundMessage>>,
    order: VecDeque<(u32, u64)>,
}

/// How many datagrams [`InFlight`] remembers.
const IN_FLIGHT: usize = 4096;

impl InFlight {
    /// The key of a datagram: its sender and the epoch and sequence number of its first record.
    pub fn key(sender: u32, datagram: &[u8]) -> Option<(u32, u64)> {
        // type (1), version (2), epoch (2), sequence number (6).
        let header = datagram.get(3..11)?;
        let mut v = [0u8; 8];
        v.copy_from_slice(header);
        Some((sender, u64::from_be_bytes(v)))
    }

    pub fn insert(&mut self, key: (u32, u64), found: Vec<FoundMessage>) {
        if found.is_empty() {
            return;
        }
        if self.order.len() == IN_FLIGHT {
            if let Some(old) = self.order.pop_front() {
                self.by_record.remove(&old);
            }
        }
        if self.by_record.insert(key, found).is_none() {
            self.order.push_back(key);
        }
    }

    pub fn get(&self, key: (u32, u64)) -> &[FoundMessage] {
        self.by_record.get(&key).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::coap::CoapOption;

    fn msg(kind: MessageType, code: Code, mid: u16) -> Message {
        Message {
            kind,
            code,
            message_id: mid,
            token: vec![7],
            options: Vec::new(),
            payload: Vec::new(),
        }
    }

    #[test]
    fn the_ack_of_a_2_04_is_told_from_other_acks_by_its_message_id() {
        let mut responses = VecDeque::new();
        let ack = |mid| Message {
            token: Vec::new(),
            ..msg(MessageType::Acknowledgement, Code::EMPTY, mid)
        };
        // Before the device's 2.04, an ACK is only an ACK.
        assert_eq!(kind_of(&ack(9), true, &responses).kind, MessageKind::Ack);
        let r = kind_of(
            &msg(MessageType::Confirmable, Code::CHANGED, 9),
            false,
            &responses,
        );
        assert_eq!(r.kind, MessageKind::Response204);
        responses.push_back((9, r.kind));
        assert_eq!(
            kind_of(&ack(9), true, &responses).kind,
            MessageKind::AckOf204
        );
        assert_eq!(kind_of(&ack(10), true, &responses).kind, MessageKind::Ack);
        // The device's own ACKs are never "of a 2.04".
        assert_eq!(kind_of(&ack(9), false, &responses).kind, MessageKind::Ack);
        // A 2.04 piggy-backed in an ACK is not the separate response.
        assert_eq!(
            kind_of(
                &msg(MessageType::Acknowledgement, Code::CHANGED, 3),
                false,
                &responses
            )
            .kind,
            MessageKind::Response
        );
    }

    #[test]
    fn requests_are_named_by_their_path_and_chunks_by_their_index() {
        let responses = VecDeque::new();
        let chunk = Message {
            kind: MessageType::NonConfirmable,
            code: Code::POST,
            message_id: 1,
            token: Vec::new(),
            options: vec![
                CoapOption::new(protocol::coap::option::URI_PATH, b"C".to_vec()),
                CoapOption::new(protocol::coap::option::CHUNK_INDEX, vec![5]),
            ],
            payload: vec![0; 16],
        };
        let found = kind_of(&chunk, true, &responses);
        assert_eq!(found.kind, MessageKind::UpdateChunk);
        assert_eq!(found.chunk, Some(5));
        assert_eq!(found.to_string(), "UpdateChunk 5");
    }

    #[test]
    fn every_kind_has_one_canonical_word_and_ack_covers_the_acks_of_responses() {
        for (word, kind) in MessageKind::WORDS {
            if word != "UpdateDone" {
                assert_eq!(kind.as_str(), word);
            }
        }
        assert!(MessageKind::Ack.matches(MessageKind::AckOf204));
        assert!(!MessageKind::AckOf204.matches(MessageKind::Ack));
        assert!(!MessageKind::AckOf201.matches(MessageKind::AckOf204));
    }
}
