//! The DTLS client, as a Particle device runs it (reference 1.3, 1.4): one association with one
//! server, sans-IO.

use core::time::Duration;

use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};

use super::conn::{records, Core, Item, Phase, RetransmitTimeouts};
use super::crypto::{master_secret, verify_data, KeyBlock};
use super::ec;
use super::handshake::*;
use super::keys::{spki_from_certificate, spki_of, verifying_key_from_spki};
use super::record::{ContentType, DTLS_1_2};
use super::session::SessionState;
use super::{
    nss_key_log_line, CertificateMode, CloseReason, DtlsError, Event, CID_LEN, DEFAULT_MTU,
    MAX_PLAINTEXT,
};

/// How a client authenticates and what it expects of the server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub mode: CertificateMode,
    /// The device's private key (sent as a raw public key, or certified by `device_certificate`).
    pub device_key: SigningKey,
    /// X.509 mode only: the device's certificate (DER). Without it the client answers a
    /// CertificateRequest with an empty list.
    pub device_certificate: Option<Vec<u8>>,
    /// The pinned server key: the ServerKeyExchange must be signed by it (and in X.509 mode the
    /// server certificate must carry it).
    pub server_key: VerifyingKey,
    /// Offer the connection ID extension (254) with an empty own CID, as the device does.
    pub offer_connection_id: bool,
    /// Raw-public-key mode only: expect the server's key in a Certificate message, as RFC 7250
    /// section 3 prescribes and GnuTLS does, and check it is the pinned key. The Particle
    /// cloud sends no Certificate, so this is off in [`ClientConfig::new`].
    pub rfc7250_server_certificate: bool,
    /// Largest datagram a flight uses.
    pub mtu: usize,
    pub timeouts: RetransmitTimeouts,
}

impl ClientConfig {
    /// Particle's profile: raw public keys, CID offered, 3 s..24 s retransmissions.
    pub fn new(device_key: SigningKey, server_key: VerifyingKey) -> Self {
        Self {
            mode: CertificateMode::RawPublicKey,
            device_key,
            device_certificate: None,
            server_key,
            offer_connection_id: true,
            rfc7250_server_certificate: false,
            mtu: DEFAULT_MTU,
            timeouts: RetransmitTimeouts::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ExpectHello,
    ExpectCertificate,
    ExpectServerKeyExchange,
    ExpectCertificateRequestOrDone,
    ExpectDone,
    ExpectFinished,
    Connected,
}

impl State {
    fn expected(self) -> &'static str {
        match self {
            Self::ExpectHello => "HelloVerifyRequest or ServerHello",
            Self::ExpectCertificate => "Certificate",
            Self::ExpectServerKeyExchange => {
                "ServerKeyExchange (a raw-public-key server sends no Certificate)"
            }
            Self::ExpectCertificateRequestOrDone => "CertificateRequest or ServerHelloDone",
            Self::ExpectDone => "ServerHelloDone",
            Self::ExpectFinished => "Finished",
            Self::Connected => "nothing (connected)",
        }
    }
}

/// A DTLS 1.2 client. See the [module documentation](super) for how to drive it.
pub struct Client<R> {
    config: ClientConfig,
    rng: R,
    core: Core,
    state: State,
    client_random: [u8; 32],
    server_random: [u8; 32],
    server_point: Option<p256::PublicKey>,
    certificate_requested: bool,
    master: Option<[u8; 48]>,
}

impl<R> core::fmt::Debug for Client<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Client")
            .field("state", &self.state)
            .field("phase", &self.core.phase)
            .finish()
    }
}

impl<R: RngCore + CryptoRng> Client<R> {
    /// Starts a full handshake: the first ClientHello is ready in `poll_transmit`.
    pub fn connect(config: ClientConfig, mut rng: R, now: Duration) -> Self {
        let mut client_random = [0u8; 32];
        rng.fill_bytes(&mut client_random);
        let mut core = Core::new(config.mtu, config.timeouts);
        core.in_cid_len = 0;
        let mut client = Self {
            config,
            rng,
            core,
            state: State::ExpectHello,
            client_random,
            server_random: [0; 32],
            server_point: None,
            certificate_requested: false,
            master: None,
        };
        let hello = client.client_hello(Vec::new());
        client
            .core
            .queue_handshake(0, msg_type::CLIENT_HELLO, hello);
        client.core.send_flight_with_timer(now);
        client
    }

    /// Handshake-less resumption (reference 1.4): restores keys, epoch, counters, replay window
    /// and CID and is connected at once (an [`Event::Connected`] is queued). CID records are
    /// sent with content type 253 until the first record from the server authenticates (Device
    /// OS waits for the first application data; any authenticated record ends it here).
    /// Counting failed resumptions (`MAXIMUM_SESSION_USES`) is the caller's business.
    pub fn resume(config: ClientConfig, session: &SessionState, rng: R, _now: Duration) -> Self {
        let mut core = Core::new(config.mtu, config.timeouts);
        let keys = KeyBlock::derive(
            &session.master_secret,
            &session.client_random,
            &session.server_random,
        );
        let (w, r) = keys.ciphers(true);
        core.write_cipher = Some(w);
        core.read_cipher = Some(r);
        core.peer_ccs = true;
        core.write_epoch = session.epoch;
        core.write_seq = [0, session.write_seq];
        core.replay = session.replay;
        core.out_cid = (!session.cid.is_empty()).then(|| session.cid.clone());
        core.move_session = core.out_cid.is_some();
        core.phase = Phase::Connected;
        core.events.push_back(Event::Connected);
        Self {
            config,
            rng,
            core,
            state: State::Connected,
            client_random: session.client_random,
            server_random: session.server_random,
            server_point: None,
            certificate_requested: false,
            master: Some(session.master_secret),
        }
    }
}

impl<R: RngCore + CryptoRng> Client<R> {
    /// The ClientHello body, structured exactly like Device OS 6.2.0's (suites, extensions and
    /// their order: 13, 10, 11, 254, 19, 20).
    fn client_hello(&self, cookie: Vec<u8>) -> Vec<u8> {
        let mut extensions = vec![
            Extension {
                typ: ext::SIGNATURE_ALGORITHMS,
                data: vec![0, 8, 4, 3, 4, 1, 3, 3, 3, 1],
            },
            Extension {
                typ: ext::SUPPORTED_GROUPS,
                data: vec![0, 2, 0, 0x17],
            },
            Extension {
                typ: ext::EC_POINT_FORMATS,
                data: vec![1, 0],
            },
        ];
        if self.config.offer_connection_id {
            extensions.push(Extension {
                typ: ext::CONNECTION_ID,
                data: vec![0],
            });
        }
        if self.config.mode == CertificateMode::RawPublicKey {
            extensions.push(Extension {
                typ: ext::CLIENT_CERTIFICATE_TYPE,
                data: vec![1, CERT_TYPE_RAW_PUBLIC_KEY],
            });
            extensions.push(Extension {
                typ: ext::SERVER_CERTIFICATE_TYPE,
                data: vec![1, CERT_TYPE_RAW_PUBLIC_KEY],
            });
        }
        let hello = ClientHello {
            client_version: DTLS_1_2,
            random: self.client_random,
            session_id: Vec::new(),
            cookie,
            cipher_suites: vec![
                TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
                TLS_EMPTY_RENEGOTIATION_INFO_SCSV,
            ],
            compression_methods: vec![0],
            extensions,
        };
        let mut out = Vec::new();
        hello.emit(&mut out);
        out
    }

    /// Feeds one received UDP payload.
    pub fn handle_datagram(&mut self, now: Duration, datagram: &[u8]) {
        // Datagrams of 0 or 1 bytes are NAT keepalives (reference 1.1).
        if self.core.phase == Phase::Closed || datagram.len() <= 1 {
            return;
        }
        for rec in records(datagram, self.core.in_cid_len) {
            let result = self.core.accept(&rec).and_then(|items| {
                for item in items {
                    self.on_item(now, item)?;
                    if self.core.phase == Phase::Closed {
                        break;
                    }
                }
                Ok(())
            });
            if let Err(e) = result {
                self.core.fail(e);
            }
            if self.core.phase == Phase::Closed {
                break;
            }
        }
    }

    /// Lets timers fire (flight retransmission, handshake timeout).
    pub fn handle_timeout(&mut self, now: Duration) {
        if let Err(e) = self.core.on_timeout(now) {
            self.core.fail(e);
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.core.outbox.pop_front()
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.core.timer
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.core.events.pop_front()
    }

    /// Sends one application-data record (at most [`MAX_PLAINTEXT`] bytes).
    pub fn send_application_data(&mut self, _now: Duration, data: &[u8]) -> Result<(), DtlsError> {
        if self.core.phase != Phase::Connected {
            return Err(DtlsError::NotConnected);
        }
        if data.len() > MAX_PLAINTEXT {
            return Err(DtlsError::TooLarge {
                len: data.len(),
                max: MAX_PLAINTEXT,
            });
        }
        let rec = self.core.seal(ContentType::ApplicationData, 1, data);
        self.core.outbox.push_back(rec);
        Ok(())
    }

    /// Sends close_notify and closes.
    pub fn close(&mut self, _now: Duration) {
        if self.core.phase == Phase::Closed {
            return;
        }
        self.core.send_alert(Alert {
            level: ALERT_WARNING,
            description: alert::CLOSE_NOTIFY,
        });
        self.core.close_with(CloseReason::Local);
    }

    pub fn is_connected(&self) -> bool {
        self.core.phase == Phase::Connected
    }

    pub fn is_closed(&self) -> bool {
        self.core.phase == Phase::Closed
    }

    /// The server-assigned connection ID this client puts on its records.
    pub fn connection_id(&self) -> Option<&[u8]> {
        self.core.out_cid.as_deref()
    }

    /// Records dropped because they failed authentication or were replayed.
    pub fn dropped_records(&self) -> u64 {
        self.core.dropped_records
    }

    /// Whether CID records still go out as type 253 (resumed, nothing heard from the server).
    pub fn is_moving_session(&self) -> bool {
        self.core.move_session
    }

    /// The state to persist for handshake-less resumption (connected only). Device OS rewrites
    /// it after every record; call it whenever the counters should be saved.
    pub fn export_session(&self) -> Option<SessionState> {
        if self.core.phase != Phase::Connected {
            return None;
        }
        Some(SessionState {
            master_secret: self.master?,
            client_random: self.client_random,
            server_random: self.server_random,
            cid: self.core.out_cid.clone().unwrap_or_default(),
            epoch: self.core.write_epoch,
            write_seq: self.core.write_seq[1],
            replay: self.core.replay,
        })
    }

    /// The NSS key log line of this association, once the master secret is known.
    pub fn key_log_line(&self) -> Option<String> {
        self.master
            .map(|m| nss_key_log_line(&self.client_random, &m))
    }

    fn on_item(&mut self, now: Duration, item: Item) -> Result<(), DtlsError> {
        match item {
            Item::Alert(a) => {
                self.core.on_alert(a);
                Ok(())
            }
            Item::ApplicationData(data) => {
                if self.state == State::Connected {
                    self.core.events.push_back(Event::ApplicationData(data));
                }
                Ok(())
            }
            Item::ChangeCipherSpec => {
                if self.state == State::ExpectFinished {
                    self.core.peer_ccs = true;
                }
                Ok(())
            }
            Item::OldHandshake => Ok(()),
            Item::Handshake {
                msg_type,
                body,
                epoch,
                transcript_before,
            } => self.on_handshake(now, msg_type, &body, epoch, transcript_before),
        }
    }

    fn unexpected(&self, got: u8) -> DtlsError {
        DtlsError::UnexpectedMessage {
            got,
            expected: self.state.expected(),
        }
    }

    fn on_handshake(
        &mut self,
        now: Duration,
        typ: u8,
        body: &[u8],
        epoch: u16,
        transcript_before: usize,
    ) -> Result<(), DtlsError> {
        match (self.state, typ) {
            (State::ExpectHello, msg_type::HELLO_VERIFY_REQUEST) => {
                let hvr = HelloVerifyRequest::parse(body)?;
                // RFC 6347 4.2.1: the transcript starts again with the second ClientHello.
                self.core.flight_acknowledged();
                self.core.transcript.clear();
                self.core.flight.clear();
                self.core.reset_receive();
                let hello = self.client_hello(hvr.cookie);
                self.core.queue_handshake(0, msg_type::CLIENT_HELLO, hello);
                self.core.send_flight_with_timer(now);
                Ok(())
            }
            (State::ExpectHello, msg_type::SERVER_HELLO) => {
                let sh = ServerHello::parse(body)?;
                if sh.server_version != DTLS_1_2 {
                    return Err(DtlsError::BadVersion(sh.server_version));
                }
                if sh.cipher_suite != TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
                    || sh.compression_method != 0
                {
                    return Err(DtlsError::Unsupported(
                        "the server chose another cipher suite or compression",
                    ));
                }
                let raw = self.config.mode == CertificateMode::RawPublicKey;
                for t in [ext::CLIENT_CERTIFICATE_TYPE, ext::SERVER_CERTIFICATE_TYPE] {
                    match find_extension(&sh.extensions, t) {
                        Some([CERT_TYPE_RAW_PUBLIC_KEY]) if raw => {}
                        None if !raw => {}
                        _ => {
                            return Err(DtlsError::Unsupported(
                                "certificate type (RFC 7250 extensions 19/20)",
                            ))
                        }
                    }
                }
                match find_extension(&sh.extensions, ext::CONNECTION_ID) {
                    Some(data) if self.config.offer_connection_id => {
                        let mut r = Reader::new(data, "connection_id extension");
                        let cid = r.vec8()?;
                        r.finish()?;
                        if cid.len() != CID_LEN {
                            return Err(DtlsError::BadConnectionId(cid.len()));
                        }
                        self.core.out_cid = Some(cid.to_vec());
                    }
                    Some(_) => return Err(DtlsError::Unsupported("connection ID not offered")),
                    // Device OS cannot save a session without an 8-byte CID (reference 1.3).
                    None if raw && self.config.offer_connection_id => {
                        return Err(DtlsError::BadConnectionId(0))
                    }
                    None => {}
                }
                self.server_random = sh.random;
                self.core.flight_acknowledged();
                self.core.flight.clear();
                self.state = if raw && !self.config.rfc7250_server_certificate {
                    State::ExpectServerKeyExchange
                } else {
                    State::ExpectCertificate
                };
                Ok(())
            }
            (State::ExpectCertificate, msg_type::CERTIFICATE) => {
                let raw = self.config.mode == CertificateMode::RawPublicKey;
                let spki = match Certificate::parse(body, raw)? {
                    Certificate::RawPublicKey(spki) => spki,
                    Certificate::X509(chain) => {
                        let leaf = chain.first().ok_or(DtlsError::BadKey(
                            "the server sent an empty certificate list",
                        ))?;
                        spki_from_certificate(leaf)?
                    }
                };
                let key = verifying_key_from_spki(&spki)?;
                if key != self.config.server_key {
                    return Err(DtlsError::ServerKeyMismatch);
                }
                self.state = State::ExpectServerKeyExchange;
                Ok(())
            }
            (State::ExpectServerKeyExchange, msg_type::SERVER_KEY_EXCHANGE) => {
                let ske = ServerKeyExchange::parse(body)?;
                if ske.named_curve != SECP256R1 || ske.signature_scheme != ECDSA_SHA256 {
                    return Err(DtlsError::Unsupported(
                        "curve or signature scheme of ServerKeyExchange",
                    ));
                }
                let point = p256::PublicKey::from_sec1_bytes(&ske.public)
                    .map_err(|_| DtlsError::BadKey("ServerKeyExchange point is not on P-256"))?;
                let mut signed = Vec::with_capacity(64 + 69);
                signed.extend_from_slice(&self.client_random);
                signed.extend_from_slice(&self.server_random);
                signed.extend_from_slice(&ske.params());
                let sig = Signature::from_der(&ske.signature)
                    .map_err(|_| DtlsError::ServerKeyMismatch)?;
                if !ec::verify(&self.config.server_key, &signed, &sig, ec::Hash::Sha256) {
                    return Err(DtlsError::ServerKeyMismatch);
                }
                self.server_point = Some(point);
                self.state = State::ExpectCertificateRequestOrDone;
                Ok(())
            }
            (State::ExpectCertificateRequestOrDone, msg_type::CERTIFICATE_REQUEST) => {
                let cr = CertificateRequest::parse(body)?;
                if !cr.signature_algorithms.contains(&ECDSA_SHA256) {
                    return Err(DtlsError::Unsupported(
                        "CertificateRequest without ecdsa_secp256r1_sha256",
                    ));
                }
                self.certificate_requested = true;
                self.state = State::ExpectDone;
                Ok(())
            }
            (
                State::ExpectCertificateRequestOrDone | State::ExpectDone,
                msg_type::SERVER_HELLO_DONE,
            ) => {
                if !body.is_empty() {
                    return Err(DtlsError::Malformed {
                        what: "ServerHelloDone",
                        offset: 0,
                    });
                }
                self.send_key_exchange_flight(now)
            }
            (State::ExpectFinished, msg_type::FINISHED) => {
                if epoch != 1 || !self.core.peer_ccs {
                    return Err(DtlsError::UnexpectedMessage {
                        got: typ,
                        expected: "ChangeCipherSpec",
                    });
                }
                let fin = Finished::parse(body)?;
                let master = self.master.ok_or(DtlsError::NotConnected)?;
                let expected = verify_data(
                    &master,
                    b"server finished",
                    &self.core.transcript[..transcript_before],
                );
                if fin.verify_data != expected {
                    return Err(DtlsError::BadFinished);
                }
                self.core.flight_acknowledged();
                self.core.flight.clear();
                self.core.transcript = Vec::new();
                self.state = State::Connected;
                self.core.phase = Phase::Connected;
                self.core.events.push_back(Event::Connected);
                Ok(())
            }
            (State::Connected, _) => Ok(()), // late retransmissions of the server's flight
            _ => Err(self.unexpected(typ)),
        }
    }

    fn send_key_exchange_flight(&mut self, now: Duration) -> Result<(), DtlsError> {
        let server_point = self.server_point.ok_or(DtlsError::NotConnected)?;
        let mut sent_certificate = false;
        if self.certificate_requested {
            let cert = match self.config.mode {
                CertificateMode::RawPublicKey => {
                    sent_certificate = true;
                    Certificate::RawPublicKey(spki_of(self.config.device_key.verifying_key()))
                }
                CertificateMode::X509 => {
                    sent_certificate = self.config.device_certificate.is_some();
                    Certificate::X509(self.config.device_certificate.iter().cloned().collect())
                }
            };
            let mut b = Vec::new();
            cert.emit(&mut b);
            self.core.queue_handshake(0, msg_type::CERTIFICATE, b);
        }
        let secret = ec::EcdhSecret::random(&mut self.rng);
        let public = secret.public_point();
        let mut b = Vec::new();
        ClientKeyExchange {
            public: public.as_bytes().to_vec(),
        }
        .emit(&mut b);
        self.core
            .queue_handshake(0, msg_type::CLIENT_KEY_EXCHANGE, b);
        let shared = secret.diffie_hellman(&server_point);
        let master = master_secret(
            shared.raw_secret_bytes(),
            &self.client_random,
            &self.server_random,
        );
        self.master = Some(master);
        if sent_certificate {
            let sig: DerSignature = ec::sign(&self.config.device_key, &self.core.transcript);
            let mut b = Vec::new();
            CertificateVerify {
                signature_scheme: ECDSA_SHA256,
                signature: sig.as_bytes().to_vec(),
            }
            .emit(&mut b);
            self.core
                .queue_handshake(0, msg_type::CERTIFICATE_VERIFY, b);
        }
        self.core
            .flight
            .push(super::conn::FlightItem::ChangeCipherSpec);
        let keys = KeyBlock::derive(&master, &self.client_random, &self.server_random);
        let (w, r) = keys.ciphers(true);
        self.core.write_cipher = Some(w);
        self.core.read_cipher = Some(r);
        self.core.write_epoch = 1;
        let fin = verify_data(&master, b"client finished", &self.core.transcript);
        self.core
            .queue_handshake(1, msg_type::FINISHED, fin.to_vec());
        self.state = State::ExpectFinished;
        self.core.send_flight_with_timer(now);
        Ok(())
    }
}
