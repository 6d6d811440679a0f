//! What the client and the server share: the record layer of one association (epochs, sequence
//! numbers, ciphers, connection IDs, replay window) and the handshake transport (message
//! sequence numbers, reassembly, flights, fragmentation, retransmission timer of RFC 6347 4.2.4).

use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

use super::crypto::{RecordCipher, PROTECTION_OVERHEAD};
use super::handshake::{alert, whole_message, Alert, FragmentRepr, ALERT_FATAL};
use super::record::{ContentType, DTLS_1_2};
use super::{CloseReason, DtlsError, Event};

/// Largest handshake message we reassemble (our peers' messages are far below).
const MAX_HANDSHAKE_MESSAGE: usize = 16 * 1024;
/// How many messages ahead of the expected one we buffer.
const MAX_FUTURE_MESSAGES: u16 = 16;

/// A 64-record sliding anti-replay window (RFC 6347 4.1.2.6).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest sequence number accepted + 1 (0: nothing accepted yet).
    pub top: u64,
    /// Bit i set: sequence number `top - 1 - i` was accepted.
    pub bitmap: u64,
}

impl ReplayWindow {
    /// Whether `seq` is new (not seen and not too old).
    pub fn check(&self, seq: u64) -> bool {
        if seq >= self.top {
            return true;
        }
        let back = self.top - 1 - seq;
        back < 64 && self.bitmap & (1 << back) == 0
    }

    /// Marks `seq` as seen (after its record authenticated).
    pub fn accept(&mut self, seq: u64) {
        if seq >= self.top {
            let shift = seq + 1 - self.top;
            self.bitmap = if shift >= 64 { 0 } else { self.bitmap << shift };
            self.bitmap |= 1;
            self.top = seq + 1;
        } else {
            let back = self.top - 1 - seq;
            if back < 64 {
                self.bitmap |= 1 << back;
            }
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum FlightItem {
    Handshake {
        epoch: u16,
        msg_type: u8,
        seq: u16,
        body: Vec<u8>,
    },
    ChangeCipherSpec,
}

#[derive(Debug)]
struct Partial {
    msg_type: u8,
    epoch: u16,
    body: Vec<u8>,
    have: Vec<bool>,
    missing: usize,
}

/// What one authenticated record delivered.
#[derive(Debug)]
pub(crate) enum Item {
    /// A complete handshake message, in message_seq order, with the epoch of its first
    /// fragment and the transcript length before it (for Finished).
    Handshake {
        msg_type: u8,
        body: Vec<u8>,
        epoch: u16,
        transcript_before: usize,
    },
    /// A handshake fragment of a message already processed: the peer retransmits.
    OldHandshake,
    ChangeCipherSpec,
    Alert(Alert),
    ApplicationData(Vec<u8>),
}

/// A record copied out of a datagram.
#[derive(Debug, Clone)]
pub(crate) struct OwnedRecord {
    pub content_type: ContentType,
    pub epoch: u16,
    pub seq: u64,
    pub cid: Option<Vec<u8>>,
    pub fragment: Vec<u8>,
}

/// Splits a datagram into owned records; a malformed tail is dropped (RFC 6347 4.1.2.7:
/// invalid records are discarded silently).
pub(crate) fn split_records(datagram: &[u8], in_cid_len: usize) -> Vec<OwnedRecord> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < datagram.len() {
        match super::record::RecordRepr::parse(&datagram[at..], in_cid_len) {
            Ok((r, used)) => {
                out.push(OwnedRecord {
                    content_type: r.content_type,
                    epoch: r.epoch,
                    seq: r.seq,
                    cid: r.cid.map(<[u8]>::to_vec),
                    fragment: r.fragment.to_vec(),
                });
                at += used;
            }
            Err(_) => break,
        }
    }
    out
}

/// The records of a datagram, borrowed where they lie (no copy); a malformed tail ends them
/// (RFC 6347 4.1.2.7: invalid records are discarded silently).
pub(crate) fn records(
    datagram: &[u8],
    in_cid_len: usize,
) -> impl Iterator<Item = super::record::RecordRepr<'_>> {
    let mut at = 0;
    core::iter::from_fn(move || {
        let rest = datagram.get(at..).filter(|r| !r.is_empty())?;
        match super::record::RecordRepr::parse(rest, in_cid_len) {
            Ok((record, used)) => {
                at += used;
                Some(record)
            }
            Err(_) => {
                at = datagram.len();
                None
            }
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Handshaking,
    Connected,
    Closed,
}

/// Retransmission timer bounds (reference 1.3: 3 s doubling to 24 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitTimeouts {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetransmitTimeouts {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(3),
            max: Duration::from_secs(24),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Core {
    pub mtu: usize,
    pub write_epoch: u16,
    pub write_seq: [u64; 2],
    pub write_cipher: Option<RecordCipher>,
    /// Epoch-1 read cipher, known once the keys are derived.
    pub read_cipher: Option<RecordCipher>,
    /// The peer's ChangeCipherSpec arrived: its Finished may be processed.
    pub peer_ccs: bool,
    /// Connection ID we put on our epoch-1 records (the peer's CID).
    pub out_cid: Option<Vec<u8>>,
    /// Length of the CID the peer puts on records to us.
    pub in_cid_len: usize,
    /// Send CID records as type 253 until the first record from the peer (resumption).
    pub move_session: bool,
    pub replay: ReplayWindow,
    pub next_send_seq: u16,
    pub next_recv_seq: u16,
    partial: BTreeMap<u16, Partial>,
    pub transcript: Vec<u8>,
    pub flight: Vec<FlightItem>,
    pub timer: Option<Duration>,
    pub timeouts: RetransmitTimeouts,
    pub current_timeout: Duration,
    pub outbox: VecDeque<Vec<u8>>,
    pub events: VecDeque<Event>,
    pub phase: Phase,
    /// Records dropped because they failed authentication or the replay check.
    pub dropped_records: u64,
}

impl Core {
    pub fn new(mtu: usize, timeouts: RetransmitTimeouts) -> Self {
        Self {
            mtu,
            write_epoch: 0,
            write_seq: [0, 0],
            write_cipher: None,
            read_cipher: None,
            peer_ccs: false,
            out_cid: None,
            in_cid_len: 0,
            move_session: false,
            replay: ReplayWindow::default(),
            next_send_seq: 0,
            next_recv_seq: 0,
            partial: BTreeMap::new(),
            transcript: Vec::new(),
            flight: Vec::new(),
            timer: None,
            timeouts,
            current_timeout: timeouts.initial,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            phase: Phase::Handshaking,
            dropped_records: 0,
        }
    }

    /// Builds one record of `content` under `epoch` (0: plaintext, 1: protected).
    pub fn seal(&mut self, content_type: ContentType, epoch: u16, content: &[u8]) -> Vec<u8> {
        let idx = usize::from(epoch.min(1));
        let seq = self.write_seq[idx];
        self.write_seq[idx] += 1;
        match (epoch, &self.write_cipher) {
            (1.., Some(cipher)) => {
                let outer = if self.move_session {
                    ContentType::CidMove
                } else {
                    ContentType::Cid
                };
                let cid = self
                    .out_cid
                    .as_deref()
                    .filter(|c| !c.is_empty())
                    .map(|c| (c, outer));
                cipher.seal(content_type, epoch, seq, cid, content)
            }
            _ => {
                let mut out = Vec::with_capacity(13 + content.len());
                super::record::emit_header(
                    &mut out,
                    content_type,
                    DTLS_1_2,
                    0,
                    seq,
                    None,
                    content.len(),
                );
                out.extend_from_slice(content);
                out
            }
        }
    }

    /// Bytes a record adds around its content under `epoch` (header, CID, nonce, tag, padding).
    fn record_overhead(&self, epoch: u16) -> usize {
        if epoch == 0 {
            13
        } else {
            13 + PROTECTION_OVERHEAD + self.out_cid.as_ref().map_or(0, |c| c.len() + 16)
        }
    }

    /// Adds a handshake message to the current flight and the transcript.
    pub fn queue_handshake(&mut self, epoch: u16, msg_type: u8, body: Vec<u8>) {
        let seq = self.next_send_seq;
        self.next_send_seq = self.next_send_seq.wrapping_add(1);
        self.transcript
            .extend_from_slice(&whole_message(msg_type, seq, &body));
        self.flight.push(FlightItem::Handshake {
            epoch,
            msg_type,
            seq,
            body,
        });
    }

    /// Sends every item of the current flight, packing records into datagrams of at most `mtu`
    /// bytes and fragmenting handshake messages that do not fit. Each (re)transmission uses
    /// fresh record sequence numbers.
    pub fn transmit_flight(&mut self) {
        let flight = self.flight.clone();
        let mut datagram: Vec<u8> = Vec::new();
        for item in &flight {
            let records: Vec<Vec<u8>> = match item {
                FlightItem::ChangeCipherSpec => {
                    vec![self.seal(ContentType::ChangeCipherSpec, 0, &[1])]
                }
                FlightItem::Handshake {
                    epoch,
                    msg_type,
                    seq,
                    body,
                } => {
                    // A ClientHello always goes whole: servers (ours and mbedTLS) check its cookie
                    // statelessly and do not reassemble it.
                    let room = if *msg_type == super::handshake::msg_type::CLIENT_HELLO {
                        body.len().max(1)
                    } else {
                        self.mtu
                            .saturating_sub(self.record_overhead(*epoch) + 12)
                            .max(16)
                    };
                    let mut recs = Vec::new();
                    let mut offset = 0;
                    loop {
                        let n = (body.len() - offset).min(room);
                        let mut frag = Vec::with_capacity(12 + n);
                        FragmentRepr {
                            msg_type: *msg_type,
                            length: body.len(),
                            message_seq: *seq,
                            fragment_offset: offset,
                            fragment: &body[offset..offset + n],
                        }
                        .emit(&mut frag);
                        recs.push(self.seal(ContentType::Handshake, *epoch, &frag));
                        offset += n;
                        if offset >= body.len() {
                            break;
                        }
                    }
                    recs
                }
            };
            for rec in records {
                if !datagram.is_empty() && datagram.len() + rec.len() > self.mtu {
                    self.outbox.push_back(core::mem::take(&mut datagram));
                }
                datagram.extend_from_slice(&rec);
            }
        }
        if !datagram.is_empty() {
            self.outbox.push_back(datagram);
        }
    }

    /// Sends the flight and arms the retransmission timer.
    pub fn send_flight_with_timer(&mut self, now: Duration) {
        self.current_timeout = self.timeouts.initial;
        self.transmit_flight();
        self.timer = Some(now.saturating_add(self.current_timeout));
    }

    /// The peer answered our flight: no more retransmissions of it.
    pub fn flight_acknowledged(&mut self) {
        self.timer = None;
    }

    /// Timer expiry: retransmit with the doubled timeout, or give up past the maximum.
    pub fn on_timeout(&mut self, now: Duration) -> Result<(), DtlsError> {
        match self.timer {
            Some(deadline) if now >= deadline => {
                if self.current_timeout >= self.timeouts.max {
                    self.timer = None;
                    return Err(DtlsError::HandshakeTimeout);
                }
                self.current_timeout = (self.current_timeout * 2).min(self.timeouts.max);
                self.transmit_flight();
                self.timer = Some(now.saturating_add(self.current_timeout));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Authenticates one record and turns it into items. Records that fail the tag or replay
    /// check, or arrive under an epoch we cannot read, are dropped (counted).
    pub fn accept_record(&mut self, rec: &OwnedRecord) -> Result<Vec<Item>, DtlsError> {
        self.accept(&super::record::RecordRepr {
            content_type: rec.content_type,
            version: DTLS_1_2,
            epoch: rec.epoch,
            seq: rec.seq,
            cid: rec.cid.as_deref(),
            fragment: &rec.fragment,
        })
    }

    /// [`Core::accept_record`] for a record borrowed from the datagram: its content is copied
    /// once, decrypted where it lies and handed on without another copy.
    pub fn accept(&mut self, rec: &super::record::RecordRepr<'_>) -> Result<Vec<Item>, DtlsError> {
        let (content_type, content) = match rec.epoch {
            0 => {
                if rec.content_type.has_cid() {
                    self.dropped_records += 1;
                    return Ok(Vec::new());
                }
                (rec.content_type, rec.fragment.to_vec())
            }
            1 => {
                // Before the peer's ChangeCipherSpec an epoch-1 record (a reordered Finished) is
                // dropped; the peer's retransmission brings it again in order.
                let Some(cipher) = self.read_cipher.as_ref().filter(|_| self.peer_ccs) else {
                    self.dropped_records += 1;
                    return Ok(Vec::new());
                };
                if !self.replay.check(rec.seq) {
                    self.dropped_records += 1;
                    return Ok(Vec::new());
                }
                let mut body = rec.fragment.to_vec();
                match cipher.open_in_place(rec.content_type, rec.epoch, rec.seq, rec.cid, &mut body)
                {
                    Ok((real, range)) => {
                        self.replay.accept(rec.seq);
                        self.move_session = false;
                        body.truncate(range.end);
                        body.drain(..range.start);
                        (real, body)
                    }
                    Err(_) => {
                        self.dropped_records += 1;
                        return Ok(Vec::new());
                    }
                }
            }
            _ => {
                self.dropped_records += 1;
                return Ok(Vec::new());
            }
        };
        match content_type {
            ContentType::Handshake => self.reassemble(&content, rec.epoch),
            ContentType::ChangeCipherSpec => {
                if content != [1] {
                    return Err(DtlsError::Malformed {
                        what: "ChangeCipherSpec",
                        offset: 0,
                    });
                }
                Ok(vec![Item::ChangeCipherSpec])
            }
            ContentType::Alert => Ok(vec![Item::Alert(Alert::parse(&content)?)]),
            ContentType::ApplicationData if rec.epoch == 1 => {
                Ok(vec![Item::ApplicationData(content)])
            }
            _ => {
                self.dropped_records += 1;
                Ok(Vec::new())
            }
        }
    }

    fn reassemble(&mut self, content: &[u8], epoch: u16) -> Result<Vec<Item>, DtlsError> {
        let mut out = Vec::new();
        for frag in FragmentRepr::parse_all(content)? {
            if frag.message_seq < self.next_recv_seq {
                out.push(Item::OldHandshake);
                continue;
            }
            if frag.message_seq - self.next_recv_seq > MAX_FUTURE_MESSAGES {
                continue;
            }
            if frag.length > MAX_HANDSHAKE_MESSAGE {
                return Err(DtlsError::Malformed {
                    what: "handshake message length",
                    offset: 1,
                });
            }
            let p = self
                .partial
                .entry(frag.message_seq)
                .or_insert_with(|| Partial {
                    msg_type: frag.msg_type,
                    epoch,
                    body: vec![0; frag.length],
                    have: vec![false; frag.length],
                    missing: frag.length,
                });
            if p.msg_type != frag.msg_type || p.body.len() != frag.length || p.epoch != epoch {
                return Err(DtlsError::Malformed {
                    what: "handshake fragment header",
                    offset: 0,
                });
            }
            for (i, &b) in frag.fragment.iter().enumerate() {
                let at = frag.fragment_offset + i;
                if !p.have[at] {
                    p.have[at] = true;
                    p.body[at] = b;
                    p.missing -= 1;
                }
            }
        }
        while let Some(p) = self.partial.get(&self.next_recv_seq) {
            if p.missing != 0 {
                break;
            }
            let seq = self.next_recv_seq;
            let Some(p) = self.partial.remove(&seq) else {
                break;
            };
            let transcript_before = self.transcript.len();
            self.transcript
                .extend_from_slice(&whole_message(p.msg_type, seq, &p.body));
            self.next_recv_seq = self.next_recv_seq.wrapping_add(1);
            out.push(Item::Handshake {
                msg_type: p.msg_type,
                body: p.body,
                epoch: p.epoch,
                transcript_before,
            });
        }
        Ok(out)
    }

    /// Forgets received handshake state (after a HelloVerifyRequest exchange).
    pub fn reset_receive(&mut self) {
        self.partial.clear();
    }

    /// Closes with a fatal alert for `error` (sent under the current write epoch).
    pub fn fail(&mut self, error: DtlsError) {
        if self.phase == Phase::Closed {
            return;
        }
        let description = match &error {
            DtlsError::BadRecordMac { .. } => alert::BAD_RECORD_MAC,
            DtlsError::ServerKeyMismatch | DtlsError::BadSignature(_) | DtlsError::BadFinished => {
                alert::DECRYPT_ERROR
            }
            DtlsError::UnknownDeviceKey | DtlsError::BadKey(_) => alert::BAD_CERTIFICATE,
            DtlsError::UnexpectedMessage { .. } => alert::UNEXPECTED_MESSAGE,
            DtlsError::Truncated { .. } | DtlsError::Malformed { .. } => alert::DECODE_ERROR,
            DtlsError::BadVersion(_) => alert::PROTOCOL_VERSION,
            DtlsError::Unsupported(_) | DtlsError::BadConnectionId(_) => alert::HANDSHAKE_FAILURE,
            DtlsError::HandshakeTimeout | DtlsError::PeerAlert(_) | DtlsError::PeerClosed => {
                self.close_with(CloseReason::Error(error));
                return;
            }
            _ => alert::INTERNAL_ERROR,
        };
        self.send_alert(Alert {
            level: ALERT_FATAL,
            description,
        });
        self.close_with(CloseReason::Error(error));
    }

    pub fn send_alert(&mut self, alert: Alert) {
        let mut body = Vec::new();
        alert.emit(&mut body);
        let rec = self.seal(ContentType::Alert, self.write_epoch, &body);
        self.outbox.push_back(rec);
    }

    pub fn close_with(&mut self, reason: CloseReason) {
        self.phase = Phase::Closed;
        self.timer = None;
        self.flight.clear();
        self.events.push_back(Event::Closed(reason));
    }

    /// Handles an incoming alert item; returns true when the association is closed.
    pub fn on_alert(&mut self, a: Alert) -> bool {
        if a.description == alert::CLOSE_NOTIFY {
            self.close_with(CloseReason::PeerClosed);
            true
        } else if a.level == ALERT_FATAL {
            self.close_with(CloseReason::Error(DtlsError::PeerAlert(a.description)));
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window_accepts_new_rejects_seen_and_too_old() {
        let mut w = ReplayWindow::default();
        assert!(w.check(0));
        w.accept(0);
        assert!(!w.check(0));
        w.accept(5);
        assert!(w.check(3) && !w.check(5));
        w.accept(3);
        assert!(!w.check(3));
        w.accept(200);
        assert!(!w.check(100) && w.check(199) && !w.check(200) && w.check(201));
    }
}
