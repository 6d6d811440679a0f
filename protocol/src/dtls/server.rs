//! The DTLS server, as the Particle cloud runs it (reference 1.3, 1.4): many devices on one
//! socket, stateless HelloVerifyRequest cookies, an 8-byte CID per association, sessions found
//! by CID and moved to the sender's address, sans-IO.

use core::time::Duration;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;

use super::conn::{split_records, Core, FlightItem, Item, OwnedRecord, Phase, RetransmitTimeouts};
use super::crypto::{master_secret, verify_data, KeyBlock};
use super::ec;
use super::handshake::*;
use super::keys::{spki_from_certificate, spki_of, verifying_key_from_spki};
use super::record::{ContentType, DTLS_1_2};
use crate::timer_queue::{Scheduled, TimerEntry, TimerQueue};

use super::{
    nss_key_log_line, CertificateMode, CloseReason, DtlsError, Event, CID_LEN, DEFAULT_MTU,
    MAX_PLAINTEXT,
};

/// How the server authenticates itself and whom it accepts.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub mode: CertificateMode,
    /// Signs the ServerKeyExchange (the device pins its public key).
    pub server_key: SigningKey,
    /// X.509 mode only: the server certificate (DER) sent in the Certificate message.
    pub server_certificate: Option<Vec<u8>>,
    /// Registered device keys: a client whose key is not here is refused.
    pub device_keys: Vec<VerifyingKey>,
    /// Send CertificateRequest and require a registered key (always so for Particle).
    pub require_client_certificate: bool,
    /// Answer a ClientHello without a valid cookie with HelloVerifyRequest.
    pub require_cookie: bool,
    /// Assign an 8-byte connection ID to clients that offer extension 254.
    pub assign_connection_id: bool,
    /// Raw-public-key mode only: send the server key in a Certificate message, as RFC 7250
    /// section 3 prescribes and GnuTLS expects. The Particle cloud sends none, so this is off
    /// in [`ServerConfig::new`].
    pub rfc7250_server_certificate: bool,
    pub mtu: usize,
    pub timeouts: RetransmitTimeouts,
}

impl ServerConfig {
    /// Particle's cloud profile: raw public keys, cookies, CIDs, client keys required.
    pub fn new(server_key: SigningKey, device_keys: Vec<VerifyingKey>) -> Self {
        Self {
            mode: CertificateMode::RawPublicKey,
            server_key,
            server_certificate: None,
            device_keys,
            require_client_certificate: true,
            require_cookie: true,
            assign_connection_id: true,
            rfc7250_server_certificate: false,
            mtu: DEFAULT_MTU,
            timeouts: RetransmitTimeouts::default(),
        }
    }
}

/// A connected association as [`Server::export_session`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedSession {
    pub state: super::SessionState,
    /// The CID the client asked us to put on our records (Device OS asks for none).
    pub peer_cid: Option<Vec<u8>>,
    pub peer: SocketAddr,
    pub device_key: VerifyingKey,
}

/// Names one association of a [`Server`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle(pub u64);

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub payload: Vec<u8>,
}

/// What a server reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A handshake completed. `device_key` is the client's authenticated key.
    Connected {
        handle: ConnectionHandle,
        peer: SocketAddr,
        device_key: Option<VerifyingKey>,
    },
    ApplicationData {
        handle: ConnectionHandle,
        data: Vec<u8>,
    },
    /// An authenticated CID record came from a new address: the association follows it
    /// (reference 1.4: resumed devices send type 253 records from a new socket).
    Moved {
        handle: ConnectionHandle,
        from: SocketAddr,
        to: SocketAddr,
    },
    Closed {
        handle: ConnectionHandle,
        reason: CloseReason,
    },
    /// A handshake failed before it completed (an unregistered key, a bad signature, a bad
    /// Finished, a timeout): who tried and why. Followed by its `Closed`.
    Refused {
        handle: ConnectionHandle,
        peer: SocketAddr,
        /// The key the client offered in its Certificate, if it got that far.
        offered_key: Option<VerifyingKey>,
        reason: CloseReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ExpectCertificate,
    ExpectClientKeyExchange,
    ExpectCertificateVerify,
    ExpectFinished,
    Connected,
}

impl State {
    fn expected(self) -> &'static str {
        match self {
            Self::ExpectCertificate => "Certificate",
            Self::ExpectClientKeyExchange => "ClientKeyExchange",
            Self::ExpectCertificateVerify => "CertificateVerify",
            Self::ExpectFinished => "Finished",
            Self::Connected => "nothing (connected)",
        }
    }
}

/// One client's association. Boxed in the server's table: it is large (two AES key schedules)
/// and a hash table holds up to twice the slots it fills.
struct Association {
    core: Core,
    addr: SocketAddr,
    state: State,
    client_random: [u8; 32],
    server_random: [u8; 32],
    ecdh: Option<ec::EcdhSecret>,
    cid: Option<Vec<u8>>,
    device_key: Option<VerifyingKey>,
    master: Option<[u8; 48]>,
    /// The time of this association's live entry in [`Server::timers`].
    scheduled: Scheduled,
}

/// The timer queue's view of an association: its retransmission deadline.
fn timer_entry(
    associations: &mut HashMap<ConnectionHandle, Box<Association>>,
    h: ConnectionHandle,
) -> Option<TimerEntry<'_>> {
    associations.get_mut(&h).map(|a| TimerEntry {
        deadline: a.core.timer,
        scheduled: &mut a.scheduled,
    })
}

/// A DTLS 1.2 server for many clients. See the [module documentation](super).
pub struct Server<R> {
    config: ServerConfig,
    rng: R,
    cookie_secret: [u8; 32],
    next_handle: u64,
    associations: HashMap<ConnectionHandle, Box<Association>>,
    by_addr: HashMap<SocketAddr, ConnectionHandle>,
    by_cid: HashMap<Vec<u8>, ConnectionHandle>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ServerEvent>,
    /// Retransmission deadlines of the associations. An idle association costs nothing per
    /// timeout; the queue is tidied after every call, so [`Server::poll_timeout`] is a peek.
    timers: TimerQueue<ConnectionHandle>,
    /// The SEC1 (compressed) encodings of `config.device_keys`: the registration check of a
    /// handshake without a walk over every key.
    known_keys: HashSet<Vec<u8>>,
}

fn key_id(key: &VerifyingKey) -> Vec<u8> {
    key.to_encoded_point(true).as_bytes().to_vec()
}

impl<R> core::fmt::Debug for Server<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Server")
            .field("associations", &self.associations.len())
            .finish()
    }
}

impl<R: RngCore + CryptoRng> Server<R> {
    pub fn new(config: ServerConfig, mut rng: R) -> Self {
        let mut cookie_secret = [0u8; 32];
        rng.fill_bytes(&mut cookie_secret);
        let known_keys = config.device_keys.iter().map(key_id).collect();
        Self {
            config,
            rng,
            cookie_secret,
            next_handle: 1,
            associations: HashMap::new(),
            by_addr: HashMap::new(),
            by_cid: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            timers: TimerQueue::new(),
            known_keys,
        }
    }

    /// Registers one more device key.
    pub fn register_device_key(&mut self, key: VerifyingKey) {
        if self.known_keys.insert(key_id(&key)) {
            self.config.device_keys.push(key);
        }
    }

    /// Stops accepting a device key in new handshakes (established associations stay; close
    /// them with [`Server::close`]).
    pub fn unregister_device_key(&mut self, key: &VerifyingKey) {
        if self.known_keys.remove(&key_id(key)) {
            self.config.device_keys.retain(|k| k != key);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The earliest retransmission deadline over all associations.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let next = self.timers.next();
        debug_assert_eq!(
            next,
            self.associations
                .values()
                .filter_map(|a| a.core.timer)
                .min(),
            "the timer queue disagrees with the associations' timers"
        );
        next
    }

    /// Runs the retransmission timers that are due, in handle order.
    pub fn handle_timeout(&mut self, now: Duration) {
        let due = self
            .timers
            .pop_due(now, &mut self.associations, timer_entry);
        for h in due {
            if let Some(a) = self.associations.get_mut(&h) {
                if let Err(e) = a.core.on_timeout(now) {
                    a.core.fail(e);
                }
            }
            self.drain(h);
        }
        self.tidy_timers();
    }

    /// Queues the association's retransmission deadline if it is earlier than its live entry
    /// (a later one is found when the earlier entry comes up, [`Server::tidy_timers`]).
    fn retime(&mut self, h: ConnectionHandle) {
        if let Some(entry) = timer_entry(&mut self.associations, h) {
            self.timers.schedule(h, entry);
        }
    }

    /// Makes the top of the timer queue a live, exact entry, and rebuilds the queue from the
    /// live entries once superseded ones outnumber the associations.
    fn tidy_timers(&mut self) {
        self.timers.tidy(&mut self.associations, timer_entry);
        self.timers.compact(
            self.associations.len(),
            self.associations.iter().map(|(h, a)| (*h, a.scheduled)),
        );
        self.timers.tidy(&mut self.associations, timer_entry);
    }

    /// The peer address of an association.
    pub fn peer(&self, handle: ConnectionHandle) -> Option<SocketAddr> {
        self.associations.get(&handle).map(|a| a.addr)
    }

    /// The connection ID assigned to an association.
    pub fn connection_id(&self, handle: ConnectionHandle) -> Option<&[u8]> {
        self.associations
            .get(&handle)
            .and_then(|a| a.cid.as_deref())
    }

    /// Associations held, handshaking or connected.
    pub fn association_count(&self) -> usize {
        self.associations.len()
    }

    /// Connected associations.
    pub fn connections(&self) -> Vec<ConnectionHandle> {
        let mut v: Vec<_> = self
            .associations
            .iter()
            .filter(|(_, a)| a.state == State::Connected)
            .map(|(h, _)| *h)
            .collect();
        v.sort();
        v
    }

    /// Records of an association dropped because they failed authentication or were replayed.
    pub fn dropped_records(&self, handle: ConnectionHandle) -> u64 {
        self.associations
            .get(&handle)
            .map_or(0, |a| a.core.dropped_records)
    }

    /// The NSS key log line of an association, once its master secret is known.
    pub fn key_log_line(&self, handle: ConnectionHandle) -> Option<String> {
        let a = self.associations.get(&handle)?;
        a.master.map(|m| nss_key_log_line(&a.client_random, &m))
    }

    pub fn send_application_data(
        &mut self,
        _now: Duration,
        handle: ConnectionHandle,
        data: &[u8],
    ) -> Result<(), DtlsError> {
        let a = self
            .associations
            .get_mut(&handle)
            .ok_or(DtlsError::NotConnected)?;
        if a.state != State::Connected || a.core.phase != Phase::Connected {
            return Err(DtlsError::NotConnected);
        }
        if data.len() > MAX_PLAINTEXT {
            return Err(DtlsError::TooLarge {
                len: data.len(),
                max: MAX_PLAINTEXT,
            });
        }
        let rec = a.core.seal(ContentType::ApplicationData, 1, data);
        self.transmits.push_back(Transmit {
            destination: a.addr,
            payload: rec,
        });
        Ok(())
    }

    /// Sends close_notify and forgets the association.
    pub fn close(&mut self, _now: Duration, handle: ConnectionHandle) {
        if let Some(a) = self.associations.get_mut(&handle) {
            a.core.send_alert(Alert {
                level: ALERT_WARNING,
                description: alert::CLOSE_NOTIFY,
            });
            a.core.close_with(CloseReason::Local);
        }
        self.drain(handle);
        self.tidy_timers();
    }

    /// The state of a connected association, to keep it across a restart of the server
    /// ([`Server::restore_session`]). `state.cid` is the CID this server assigned (what the
    /// client puts on its records), `state.write_seq` the server's next sequence number and
    /// `state.replay` its window over the client's records.
    pub fn export_session(&self, handle: ConnectionHandle) -> Option<ExportedSession> {
        let a = self.associations.get(&handle)?;
        if a.state != State::Connected || a.core.phase != Phase::Connected {
            return None;
        }
        Some(ExportedSession {
            state: super::SessionState {
                master_secret: a.master?,
                client_random: a.client_random,
                server_random: a.server_random,
                cid: a.cid.clone().unwrap_or_default(),
                epoch: a.core.write_epoch,
                write_seq: a.core.write_seq[1],
                replay: a.core.replay,
            },
            peer_cid: a.core.out_cid.clone(),
            peer: a.addr,
            device_key: a.device_key?,
        })
    }

    /// Takes back an association exported by [`Server::export_session`] (by a server that
    /// ran before): records on its CID are accepted again, from any address, without a
    /// handshake. The caller must pass a `state.write_seq` no record was ever sent with (save
    /// a reserve ahead of the counter: a sequence number used twice repeats a CCM nonce).
    /// Refused if its CID is taken.
    pub fn restore_session(
        &mut self,
        session: &ExportedSession,
    ) -> Result<ConnectionHandle, DtlsError> {
        let s = &session.state;
        if s.epoch != 1 || s.write_seq >= 1 << 48 {
            return Err(DtlsError::BadSessionBlob(
                "epoch must be 1, sequence within 48 bits",
            ));
        }
        let cid = (!s.cid.is_empty()).then(|| s.cid.clone());
        if let Some(cid) = &cid {
            if cid.len() != CID_LEN || self.by_cid.contains_key(cid) {
                return Err(DtlsError::BadSessionBlob(
                    "CID of another length, or in use",
                ));
            }
        }
        let mut core = Core::new(self.config.mtu, self.config.timeouts);
        let (write, read) =
            KeyBlock::derive(&s.master_secret, &s.client_random, &s.server_random).ciphers(false);
        core.write_cipher = Some(write);
        core.read_cipher = Some(read);
        core.peer_ccs = true;
        core.write_epoch = s.epoch;
        core.write_seq = [0, s.write_seq];
        core.replay = s.replay;
        core.out_cid = session.peer_cid.clone();
        core.in_cid_len = if cid.is_some() { CID_LEN } else { 0 };
        core.phase = Phase::Connected;
        let h = ConnectionHandle(self.next_handle);
        self.next_handle += 1;
        if let Some(cid) = &cid {
            self.by_cid.insert(cid.clone(), h);
        }
        self.by_addr.insert(session.peer, h);
        self.associations.insert(
            h,
            Box::new(Association {
                core,
                addr: session.peer,
                state: State::Connected,
                client_random: s.client_random,
                server_random: s.server_random,
                ecdh: None,
                cid,
                device_key: Some(session.device_key),
                master: Some(s.master_secret),
                scheduled: Scheduled::default(),
            }),
        );
        Ok(h)
    }

    /// Forgets an association without telling the peer (e.g. an expired session): its CID no
    /// longer finds it.
    pub fn remove(&mut self, handle: ConnectionHandle) {
        self.forget(handle);
        self.tidy_timers();
    }

    /// Feeds one UDP payload received from `from`.
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, datagram: &[u8]) {
        if datagram.len() <= 1 {
            return; // NAT keepalive (reference 1.1)
        }
        let cid_len = if self.config.assign_connection_id {
            CID_LEN
        } else {
            0
        };
        let mut retransmitted = false;
        for rec in split_records(datagram, cid_len) {
            if let Some(cid) = &rec.cid {
                let Some(&h) = self.by_cid.get(cid) else {
                    continue;
                };
                self.on_record(now, h, from, &rec, &mut retransmitted);
                continue;
            }
            let existing = self.by_addr.get(&from).copied();
            if rec.epoch == 0 && rec.content_type == ContentType::Handshake {
                if let Some(hello) = client_hello_of(&rec) {
                    // The same random is a repeated ClientHello of the current association; a new
                    // random is a new handshake (a rebooted device) that replaces it.
                    let retransmission = existing
                        .and_then(|h| self.associations.get(&h))
                        .is_some_and(|a| a.client_random == hello.0.random);
                    if !retransmission {
                        self.on_client_hello(now, from, &rec, hello.0, hello.1);
                        continue;
                    }
                }
            }
            if let Some(h) = existing {
                self.on_record(now, h, from, &rec, &mut retransmitted);
            }
        }
        self.tidy_timers();
    }

    fn on_record(
        &mut self,
        now: Duration,
        h: ConnectionHandle,
        from: SocketAddr,
        rec: &OwnedRecord,
        retransmitted: &mut bool,
    ) {
        let Some(a) = self.associations.get_mut(&h) else {
            return;
        };
        if a.core.phase == Phase::Closed {
            return;
        }
        let dropped_before = a.core.dropped_records;
        let result = a.core.accept_record(rec);
        let authenticated = a.core.dropped_records == dropped_before && result.is_ok();
        if authenticated && rec.cid.is_some() && from != a.addr {
            let old = a.addr;
            a.addr = from;
            if self.by_addr.get(&old) == Some(&h) {
                self.by_addr.remove(&old);
            }
            self.by_addr.insert(from, h);
            self.events.push_back(ServerEvent::Moved {
                handle: h,
                from: old,
                to: from,
            });
        }
        let Some(a) = self.associations.get_mut(&h) else {
            return;
        };
        let result = result.and_then(|items| {
            for item in items {
                on_item(
                    &self.config,
                    &self.known_keys,
                    &mut self.rng,
                    a,
                    now,
                    item,
                    retransmitted,
                )?;
                if a.core.phase == Phase::Closed {
                    break;
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            a.core.fail(e);
        }
        if a.state == State::Connected {
            if let Some(cid) = &a.cid {
                self.by_cid.entry(cid.clone()).or_insert(h);
            }
        }
        self.drain(h);
    }

    fn cookie(&self, from: SocketAddr, hello: &ClientHello) -> Vec<u8> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.cookie_secret)
            .expect("HMAC takes any key length");
        m.update(from.to_string().as_bytes());
        m.update(&hello.random);
        m.update(&hello.session_id);
        m.finalize().into_bytes().to_vec()
    }

    fn on_client_hello(
        &mut self,
        now: Duration,
        from: SocketAddr,
        rec: &OwnedRecord,
        hello: ClientHello,
        seq: u16,
    ) {
        if self.config.require_cookie && hello.cookie != self.cookie(from, &hello) {
            let mut body = Vec::new();
            HelloVerifyRequest {
                server_version: DTLS_1_2,
                cookie: self.cookie(from, &hello),
            }
            .emit(&mut body);
            let mut content = Vec::new();
            FragmentRepr {
                msg_type: msg_type::HELLO_VERIFY_REQUEST,
                length: body.len(),
                message_seq: seq,
                fragment_offset: 0,
                fragment: &body,
            }
            .emit(&mut content);
            let mut out = Vec::new();
            // RFC 6347 4.2.1: the HelloVerifyRequest repeats the ClientHello's record sequence number.
            super::record::emit_header(
                &mut out,
                ContentType::Handshake,
                DTLS_1_2,
                0,
                rec.seq,
                None,
                content.len(),
            );
            out.extend_from_slice(&content);
            self.transmits.push_back(Transmit {
                destination: from,
                payload: out,
            });
            return;
        }
        // A verified ClientHello: a new association replaces whatever this address had.
        if let Some(old) = self.by_addr.remove(&from) {
            self.forget(old);
        }
        let h = ConnectionHandle(self.next_handle);
        self.next_handle += 1;
        let mut core = Core::new(self.config.mtu, self.config.timeouts);
        core.next_recv_seq = seq.wrapping_add(1);
        core.next_send_seq = seq;
        core.write_seq[0] = rec.seq;
        core.transcript = whole_message(msg_type::CLIENT_HELLO, seq, &{
            let mut b = Vec::new();
            hello.emit(&mut b);
            b
        });
        let mut a = Box::new(Association {
            core,
            addr: from,
            state: State::ExpectClientKeyExchange,
            client_random: hello.random,
            server_random: [0; 32],
            ecdh: None,
            cid: None,
            device_key: None,
            master: None,
            scheduled: Scheduled::default(),
        });
        if let Err(e) = server_flight(
            &self.config,
            &mut self.rng,
            &mut a,
            &hello,
            &mut self.by_cid,
            h,
            now,
        ) {
            // No association is kept for a refused ClientHello; the alert goes out in clear.
            a.core.fail(e);
            while let Some(p) = a.core.outbox.pop_front() {
                self.transmits.push_back(Transmit {
                    destination: from,
                    payload: p,
                });
            }
            return;
        }
        self.by_addr.insert(from, h);
        self.associations.insert(h, a);
        self.drain(h);
    }

    fn forget(&mut self, h: ConnectionHandle) {
        if let Some(a) = self.associations.remove(&h) {
            if let Some(cid) = a.cid {
                if self.by_cid.get(&cid) == Some(&h) {
                    self.by_cid.remove(&cid);
                }
            }
            if self.by_addr.get(&a.addr) == Some(&h) {
                self.by_addr.remove(&a.addr);
            }
        }
    }

    /// Moves an association's datagrams and events out; forgets it when closed.
    fn drain(&mut self, h: ConnectionHandle) {
        let Some(a) = self.associations.get_mut(&h) else {
            return;
        };
        while let Some(p) = a.core.outbox.pop_front() {
            self.transmits.push_back(Transmit {
                destination: a.addr,
                payload: p,
            });
        }
        let mut closed = false;
        while let Some(e) = a.core.events.pop_front() {
            let event = match e {
                Event::Connected => ServerEvent::Connected {
                    handle: h,
                    peer: a.addr,
                    device_key: a.device_key,
                },
                Event::ApplicationData(data) => ServerEvent::ApplicationData { handle: h, data },
                Event::Closed(reason) => {
                    closed = true;
                    if a.state != State::Connected && reason != CloseReason::Local {
                        self.events.push_back(ServerEvent::Refused {
                            handle: h,
                            peer: a.addr,
                            offered_key: a.device_key,
                            reason: reason.clone(),
                        });
                    }
                    ServerEvent::Closed { handle: h, reason }
                }
            };
            self.events.push_back(event);
        }
        if closed {
            self.forget(h);
        }
        self.retime(h);
    }
}

/// The ClientHello (and its message_seq) of an epoch-0 handshake record, if it holds one whole.
fn client_hello_of(rec: &OwnedRecord) -> Option<(ClientHello, u16)> {
    let (frag, _) = FragmentRepr::parse(&rec.fragment).ok()?;
    if frag.msg_type != msg_type::CLIENT_HELLO
        || frag.fragment_offset != 0
        || frag.fragment.len() != frag.length
    {
        return None;
    }
    Some((ClientHello::parse(frag.fragment).ok()?, frag.message_seq))
}

/// Checks the ClientHello and queues ServerHello .. ServerHelloDone.
fn server_flight<R: RngCore + CryptoRng>(
    config: &ServerConfig,
    rng: &mut R,
    a: &mut Association,
    hello: &ClientHello,
    by_cid: &mut HashMap<Vec<u8>, ConnectionHandle>,
    h: ConnectionHandle,
    now: Duration,
) -> Result<(), DtlsError> {
    if hello.client_version != DTLS_1_2 {
        return Err(DtlsError::BadVersion(hello.client_version));
    }
    if !hello
        .cipher_suites
        .contains(&TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8)
    {
        return Err(DtlsError::Unsupported(
            "the client offers no TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8",
        ));
    }
    if let Some(groups) = find_extension(&hello.extensions, ext::SUPPORTED_GROUPS) {
        if !groups
            .get(2..)
            .unwrap_or_default()
            .chunks(2)
            .any(|g| g == [0, 0x17])
        {
            return Err(DtlsError::Unsupported("the client offers no secp256r1"));
        }
    }
    let raw = config.mode == CertificateMode::RawPublicKey;
    let offers_raw = |t| {
        find_extension(&hello.extensions, t).is_some_and(|d| {
            d.get(1..)
                .unwrap_or_default()
                .contains(&CERT_TYPE_RAW_PUBLIC_KEY)
        })
    };
    if raw && !offers_raw(ext::SERVER_CERTIFICATE_TYPE) {
        return Err(DtlsError::Unsupported(
            "the client does not accept a raw public key (extension 20)",
        ));
    }
    if raw && config.require_client_certificate && !offers_raw(ext::CLIENT_CERTIFICATE_TYPE) {
        return Err(DtlsError::Unsupported(
            "the client cannot send a raw public key (extension 19)",
        ));
    }
    rng.fill_bytes(&mut a.server_random);
    let mut session_id = vec![0u8; 32];
    rng.fill_bytes(&mut session_id);

    // Extensions in the order the mbedTLS-based test cloud of the capture sends them.
    let mut extensions = Vec::new();
    let renegotiation = hello
        .cipher_suites
        .contains(&TLS_EMPTY_RENEGOTIATION_INFO_SCSV)
        || find_extension(&hello.extensions, ext::RENEGOTIATION_INFO).is_some();
    if renegotiation {
        extensions.push(Extension {
            typ: ext::RENEGOTIATION_INFO,
            data: vec![0],
        });
    }
    if config.assign_connection_id
        && find_extension(&hello.extensions, ext::CONNECTION_ID).is_some()
    {
        let mut cid = vec![0u8; CID_LEN];
        loop {
            rng.fill_bytes(&mut cid);
            if !by_cid.contains_key(&cid) {
                break;
            }
        }
        by_cid.insert(cid.clone(), h);
        let mut data = vec![CID_LEN as u8];
        data.extend_from_slice(&cid);
        extensions.push(Extension {
            typ: ext::CONNECTION_ID,
            data,
        });
        a.cid = Some(cid);
        a.core.in_cid_len = CID_LEN;
    }
    if find_extension(&hello.extensions, ext::EC_POINT_FORMATS).is_some() {
        extensions.push(Extension {
            typ: ext::EC_POINT_FORMATS,
            data: vec![1, 0],
        });
    }
    if raw {
        if offers_raw(ext::CLIENT_CERTIFICATE_TYPE) {
            extensions.push(Extension {
                typ: ext::CLIENT_CERTIFICATE_TYPE,
                data: vec![CERT_TYPE_RAW_PUBLIC_KEY],
            });
        }
        extensions.push(Extension {
            typ: ext::SERVER_CERTIFICATE_TYPE,
            data: vec![CERT_TYPE_RAW_PUBLIC_KEY],
        });
    }
    let sh = ServerHello {
        server_version: DTLS_1_2,
        random: a.server_random,
        session_id,
        cipher_suite: TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
        compression_method: 0,
        extensions,
    };
    let mut b = Vec::new();
    sh.emit(&mut b);
    a.core.queue_handshake(0, msg_type::SERVER_HELLO, b);

    if !raw || config.rfc7250_server_certificate {
        let cert = if raw {
            Certificate::RawPublicKey(spki_of(config.server_key.verifying_key()))
        } else {
            Certificate::X509(vec![config
                .server_certificate
                .clone()
                .ok_or(DtlsError::BadKey("X.509 mode needs a server certificate"))?])
        };
        let mut b = Vec::new();
        cert.emit(&mut b);
        a.core.queue_handshake(0, msg_type::CERTIFICATE, b);
    }

    let secret = ec::EcdhSecret::random(rng);
    let public = secret.public_point();
    let mut ske = ServerKeyExchange {
        named_curve: SECP256R1,
        public: public.as_bytes().to_vec(),
        signature_scheme: ECDSA_SHA256,
        signature: Vec::new(),
    };
    let mut signed = Vec::with_capacity(64 + 69);
    signed.extend_from_slice(&a.client_random);
    signed.extend_from_slice(&a.server_random);
    signed.extend_from_slice(&ske.params());
    let sig: DerSignature = ec::sign(&config.server_key, &signed);
    ske.signature = sig.as_bytes().to_vec();
    let mut b = Vec::new();
    ske.emit(&mut b);
    a.core.queue_handshake(0, msg_type::SERVER_KEY_EXCHANGE, b);
    a.ecdh = Some(secret);

    if config.require_client_certificate {
        let cr = if raw {
            // As in the capture: rsa_sign, ecdsa_sign; SHA-512/384/256/1 with RSA and ECDSA.
            CertificateRequest {
                certificate_types: vec![1, 0x40],
                signature_algorithms: vec![0x0501, 0x0503, 0x0401, 0x0403, 0x0201, 0x0203],
                authorities: Vec::new(),
            }
        } else {
            CertificateRequest {
                certificate_types: vec![0x40],
                signature_algorithms: vec![ECDSA_SHA256],
                authorities: Vec::new(),
            }
        };
        let mut b = Vec::new();
        cr.emit(&mut b);
        a.core.queue_handshake(0, msg_type::CERTIFICATE_REQUEST, b);
        a.state = State::ExpectCertificate;
    }
    a.core
        .queue_handshake(0, msg_type::SERVER_HELLO_DONE, Vec::new());
    a.core.send_flight_with_timer(now);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn on_item<R: RngCore + CryptoRng>(
    config: &ServerConfig,
    known_keys: &HashSet<Vec<u8>>,
    _rng: &mut R,
    a: &mut Association,
    _now: Duration,
    item: Item,
    retransmitted: &mut bool,
) -> Result<(), DtlsError> {
    match item {
        Item::Alert(al) => {
            a.core.on_alert(al);
            Ok(())
        }
        Item::ApplicationData(data) => {
            if a.state == State::Connected {
                a.core.events.push_back(Event::ApplicationData(data));
            }
            Ok(())
        }
        Item::ChangeCipherSpec => {
            if a.state == State::ExpectFinished {
                a.core.peer_ccs = true;
            }
            Ok(())
        }
        Item::OldHandshake => {
            // The client repeats a flight: ours got lost. Once per datagram.
            if !*retransmitted && !a.core.flight.is_empty() {
                *retransmitted = true;
                a.core.transmit_flight();
            }
            Ok(())
        }
        Item::Handshake {
            msg_type: typ,
            body,
            epoch,
            transcript_before,
        } => on_handshake(config, known_keys, a, typ, &body, epoch, transcript_before),
    }
}

fn on_handshake(
    config: &ServerConfig,
    known_keys: &HashSet<Vec<u8>>,
    a: &mut Association,
    typ: u8,
    body: &[u8],
    epoch: u16,
    transcript_before: usize,
) -> Result<(), DtlsError> {
    // Any message of the client's second flight acknowledges ours.
    if a.state != State::Connected {
        a.core.flight_acknowledged();
    }
    let raw = config.mode == CertificateMode::RawPublicKey;
    match (a.state, typ) {
        (State::ExpectCertificate, msg_type::CERTIFICATE) => {
            let spki = match Certificate::parse(body, raw)? {
                Certificate::RawPublicKey(spki) => spki,
                Certificate::X509(chain) => match chain.first() {
                    Some(leaf) => spki_from_certificate(leaf)?,
                    None => return Err(DtlsError::UnknownDeviceKey),
                },
            };
            let key = verifying_key_from_spki(&spki)?;
            // Kept even when refused: the refusal names the key that was offered.
            a.device_key = Some(key);
            if !known_keys.contains(&key_id(&key)) {
                return Err(DtlsError::UnknownDeviceKey);
            }
            a.state = State::ExpectClientKeyExchange;
            Ok(())
        }
        (State::ExpectClientKeyExchange, msg_type::CLIENT_KEY_EXCHANGE) => {
            let cke = ClientKeyExchange::parse(body)?;
            let point = p256::PublicKey::from_sec1_bytes(&cke.public)
                .map_err(|_| DtlsError::BadKey("ClientKeyExchange point is not on P-256"))?;
            let secret = a.ecdh.take().ok_or(DtlsError::NotConnected)?;
            let shared = secret.diffie_hellman(&point);
            let master = master_secret(
                shared.raw_secret_bytes(),
                &a.client_random,
                &a.server_random,
            );
            a.master = Some(master);
            let (_, read) =
                KeyBlock::derive(&master, &a.client_random, &a.server_random).ciphers(false);
            a.core.read_cipher = Some(read);
            a.state = if a.device_key.is_some() {
                State::ExpectCertificateVerify
            } else {
                State::ExpectFinished
            };
            Ok(())
        }
        (State::ExpectCertificateVerify, msg_type::CERTIFICATE_VERIFY) => {
            let cv = CertificateVerify::parse(body)?;
            let key = a.device_key.ok_or(DtlsError::UnknownDeviceKey)?;
            let sig = Signature::from_der(&cv.signature)
                .map_err(|_| DtlsError::BadSignature("CertificateVerify"))?;
            let transcript = &a.core.transcript[..transcript_before];
            // The device signs with SHA-256. Our CertificateRequest (the cloud's, byte for byte)
            // also offers ECDSA with SHA-384, which RFC 7250 peers such as GnuTLS choose; its
            // ECDSA/SHA-1 entry stays refused.
            let verified = match cv.signature_scheme {
                ECDSA_SHA256 => ec::verify(&key, transcript, &sig, ec::Hash::Sha256),
                ECDSA_SHA384 => ec::verify(&key, transcript, &sig, ec::Hash::Sha384),
                _ => return Err(DtlsError::Unsupported("CertificateVerify signature scheme")),
            };
            if !verified {
                return Err(DtlsError::BadSignature("CertificateVerify"));
            }
            a.state = State::ExpectFinished;
            Ok(())
        }
        (State::ExpectFinished, msg_type::FINISHED) => {
            if epoch != 1 || !a.core.peer_ccs {
                return Err(DtlsError::UnexpectedMessage {
                    got: typ,
                    expected: "ChangeCipherSpec",
                });
            }
            let fin = Finished::parse(body)?;
            let master = a.master.ok_or(DtlsError::NotConnected)?;
            if fin.verify_data
                != verify_data(
                    &master,
                    b"client finished",
                    &a.core.transcript[..transcript_before],
                )
            {
                return Err(DtlsError::BadFinished);
            }
            let (write, _) =
                KeyBlock::derive(&master, &a.client_random, &a.server_random).ciphers(false);
            a.core.flight.clear();
            a.core.flight.push(FlightItem::ChangeCipherSpec);
            a.core.write_cipher = Some(write);
            a.core.write_epoch = 1;
            let ours = verify_data(&master, b"server finished", &a.core.transcript);
            a.core.queue_handshake(1, msg_type::FINISHED, ours.to_vec());
            // The last flight has no timer: it is repeated when the client repeats its flight.
            a.core.transmit_flight();
            a.core.transcript = Vec::new();
            a.state = State::Connected;
            a.core.phase = Phase::Connected;
            a.core.events.push_back(Event::Connected);
            Ok(())
        }
        (State::Connected, _) => Ok(()),
        _ => Err(DtlsError::UnexpectedMessage {
            got: typ,
            expected: a.state.expected(),
        }),
    }
}
