//! One cloud socket's protocol stack: the DTLS client under the CoAP endpoint, glued sans-IO
//! (reference 1.3-1.5). Datagrams and time in, datagrams, timers and [`LinkEvent`]s out. What
//! the messages mean is the system's business ([`super::DeviceOs`]).

use core::time::Duration;
use std::collections::VecDeque;

use protocol::coap::{
    CoapOption, Code, Endpoint, EndpointConfig, EndpointEvent, ExchangeError, Message, MessageType,
    RequestHandle,
};
use protocol::dtls::{Client, ClientConfig, CloseReason, Event as DtlsEvent};
use rand_chacha::ChaCha20Rng;

use super::session::PersistedSession;

/// The RNG every part of the emulated device draws from (seeded, never the OS).
pub type Rng = ChaCha20Rng;

/// What the stack reports.
#[derive(Debug)]
pub enum LinkEvent {
    /// The DTLS handshake completed, or the session was resumed.
    Connected,
    /// The DTLS association ended.
    Closed(CloseReason),
    /// A record from the server was authenticated (any content).
    Received,
    /// A CoAP exchange event.
    Coap(EndpointEvent),
    /// A record's plaintext is not a CoAP message.
    Malformed(String),
}

/// The DTLS client and the CoAP endpoint of one socket.
pub struct Link {
    dtls: Client<Rng>,
    coap: Endpoint<Rng>,
    /// Whether this socket resumed a persisted session.
    pub resumed: bool,
    /// The CoAP message id of the last new CON/NON sent.
    last_message_id: u16,
    out: VecDeque<Vec<u8>>,
}

impl core::fmt::Debug for Link {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Link")
            .field("resumed", &self.resumed)
            .field("dtls", &self.dtls)
            .finish_non_exhaustive()
    }
}

/// A response message to fill in by [`protocol::coap::Endpoint::respond`].
pub fn response(code: Code, options: Vec<CoapOption>, payload: Vec<u8>) -> Message {
    Message {
        kind: MessageType::Acknowledgement,
        code,
        message_id: 0,
        token: Vec::new(),
        options,
        payload,
    }
}

fn endpoint_config(last_message_id: u16) -> EndpointConfig {
    EndpointConfig {
        // Device OS counts message ids from 0 at every start (the first one sent is 1) and
        // keeps counting in a resumed session; tokens start from a random value.
        last_message_id: Some(last_message_id),
        last_token: None,
        ..EndpointConfig::default()
    }
}

impl Link {
    /// A new socket starting a full DTLS handshake: the ClientHello is queued.
    pub fn connect(config: ClientConfig, dtls_rng: Rng, coap_rng: Rng, now: Duration) -> Link {
        Link {
            dtls: Client::connect(config, dtls_rng, now),
            coap: Endpoint::new(endpoint_config(0), coap_rng),
            resumed: false,
            last_message_id: 0,
            out: VecDeque::new(),
        }
    }

    /// A new socket resuming `session` without a handshake (reference 1.4).
    pub fn resume(
        config: ClientConfig,
        session: &PersistedSession,
        dtls_rng: Rng,
        coap_rng: Rng,
        now: Duration,
    ) -> Link {
        Link {
            dtls: Client::resume(config, &session.dtls, dtls_rng, now),
            coap: Endpoint::new(endpoint_config(session.last_message_id), coap_rng),
            resumed: true,
            last_message_id: session.last_message_id,
            out: VecDeque::new(),
        }
    }

    /// Takes one datagram from the server; see [`Link::poll_events`].
    pub fn handle_datagram(&mut self, now: Duration, datagram: &[u8]) {
        self.dtls.handle_datagram(now, datagram);
    }

    /// Lets the DTLS and CoAP timers fire.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.dtls.handle_timeout(now);
        self.coap.handle_timeout(now);
        self.flush(now);
    }

    /// What the last datagrams and timers produced.
    pub fn poll_events(&mut self, now: Duration) -> Vec<LinkEvent> {
        let events = self.drain(now);
        self.flush(now);
        events
    }

    fn drain(&mut self, now: Duration) -> Vec<LinkEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.dtls.poll_event() {
            match event {
                DtlsEvent::Connected => events.push(LinkEvent::Connected),
                DtlsEvent::Closed(reason) => events.push(LinkEvent::Closed(reason)),
                DtlsEvent::ApplicationData(data) => {
                    events.push(LinkEvent::Received);
                    if let Err(e) = self.coap.handle_message(now, &data) {
                        events.push(LinkEvent::Malformed(e.to_string()));
                    }
                    while let Some(e) = self.coap.poll_event() {
                        events.push(LinkEvent::Coap(e));
                    }
                }
            }
        }
        while let Some(e) = self.coap.poll_event() {
            events.push(LinkEvent::Coap(e));
        }
        events
    }

    /// Seals every CoAP message the endpoint wants to send into DTLS records.
    fn flush(&mut self, now: Duration) {
        while let Some(bytes) = self.coap.poll_transmit() {
            if let [first, _, hi, lo, ..] = bytes[..] {
                // A new CON or NON carries the next message id; retransmissions repeat older
                // ones and ACK/RST echo the peer's.
                let id = u16::from_be_bytes([hi, lo]);
                if (first >> 4) & 0x3 <= 1 && id == self.last_message_id.wrapping_add(1) {
                    self.last_message_id = id;
                }
            }
            // Not connected (closed, or still handshaking): the message is lost, as a send on
            // a dead socket is; the CoAP timers notice.
            let _ = self.dtls.send_application_data(now, &bytes);
        }
        while let Some(datagram) = self.dtls.poll_transmit() {
            self.out.push_back(datagram);
        }
    }

    /// Sends a CoAP message (CON or NON) with the next message id.
    pub fn send(
        &mut self,
        now: Duration,
        message: Message,
    ) -> Result<RequestHandle, ExchangeError> {
        let handle = self.coap.send(now, message);
        self.flush(now);
        handle
    }

    /// The CoAP endpoint, for answering requests; call [`Link::flush_now`] afterwards.
    pub fn coap(&mut self) -> &mut Endpoint<Rng> {
        &mut self.coap
    }

    /// Seals what the endpoint queued.
    pub fn flush_now(&mut self, now: Duration) {
        self.flush(now);
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Duration> {
        match (self.dtls.poll_timeout(), self.coap.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.dtls.is_connected()
    }

    /// CONs sent and not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.coap.unacknowledged()
    }

    /// Those CONs, with their transmissions and next deadline.
    pub fn unacknowledged_cons(&self) -> Vec<protocol::coap::UnacknowledgedCon<'_>> {
        self.coap.unacknowledged_cons().collect()
    }

    /// Whether records still go out as type 253 (resumed, nothing heard from the server yet).
    pub fn is_moving_session(&self) -> bool {
        self.dtls.is_moving_session()
    }

    /// The session to keep in retained RAM, with the last message id (connected only).
    pub fn export(&self) -> Option<(protocol::dtls::SessionState, u16)> {
        self.dtls
            .export_session()
            .map(|s| (s, self.last_message_id))
    }
}
