//! The CoAP exchange layer of one peer, sans-IO: reference §1.5 "Reliability" and "Dedup".
//!
//! Bytes and a timestamp in ([`Endpoint::handle_message`], [`Endpoint::handle_timeout`]); bytes,
//! a timer deadline and events out ([`Endpoint::poll_transmit`], [`Endpoint::poll_timeout`],
//! [`Endpoint::poll_event`]). The clock and the RNG are the caller's.
//!
//! - Every CON we send is retransmitted until an ACK or RST with its message id arrives:
//!   transmission n (0-based) waits `ack_timeout << n` plus a random `0..=255/512` of that, at
//!   most `max_retransmit` (3) retransmissions, then [`EndpointEvent::TimedOut`].
//! - Every CON we receive is remembered for `dedup_lifetime` (45 s) with the ACK or RST we sent
//!   for it; a duplicate gets that reply again and is not delivered twice. NON messages are not
//!   deduplicated (as the device does).
//! - A request we receive is answered piggy-backed ([`Endpoint::respond`] before
//!   [`Endpoint::accept`]) or with an empty ACK then a separate CON response carrying the
//!   request's token ([`Endpoint::accept`], later [`Endpoint::respond`]).
//! - Responses to our requests are matched by message id (piggy-backed) or by token (separate);
//!   a separate CON response is acknowledged automatically.
//! - Pings (CON 0.00) are answered with an empty ACK automatically.

use std::collections::VecDeque;
use std::time::Duration;

use rand_core::RngCore;

use super::{CoapError, Code, Message, MessageType};

/// Timing and numbering of an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// ACK_TIMEOUT: the first retransmission timeout before randomisation.
    pub ack_timeout: Duration,
    /// MAX_RETRANSMIT: retransmissions after the first transmission.
    pub max_retransmit: u32,
    /// How long a received CON's reply is kept for duplicates (MAX_TRANSMIT_SPAN).
    pub dedup_lifetime: Duration,
    /// The message id before the first one sent (ids are pre-incremented). `None`: random.
    /// Device OS starts at 0 after every start, so its first message has id 1.
    pub last_message_id: Option<u16>,
    /// The token before the first one handed out. `None`: random (Device OS seeds it randomly).
    pub last_token: Option<u8>,
}

impl Default for EndpointConfig {
    fn default() -> EndpointConfig {
        EndpointConfig {
            ack_timeout: Duration::from_millis(4000),
            max_retransmit: 3,
            dedup_lifetime: Duration::from_secs(45),
            last_message_id: None,
            last_token: None,
        }
    }
}

/// Names a message we sent, in the events about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestHandle(pub u64);

/// A request we received, to answer with [`Endpoint::accept`], [`Endpoint::respond`] or
/// [`Endpoint::reject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingRequest {
    pub kind: MessageType,
    pub message_id: u16,
    pub token: Vec<u8>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointEvent {
    /// A new request (not a duplicate) from the peer.
    Request {
        request: IncomingRequest,
        message: Message,
    },
    /// A response to one of our requests, piggy-backed or separate.
    Response {
        handle: RequestHandle,
        message: Message,
    },
    /// Our CON was acknowledged with an empty ACK (for a request: a separate response follows).
    Acknowledged { handle: RequestHandle },
    /// The peer answered our CON with RST (Device OS treats it as 5.00).
    Reset { handle: RequestHandle },
    /// Our CON got no ACK after every retransmission (Device OS: MESSAGE_TIMEOUT, reconnect).
    TimedOut { handle: RequestHandle },
    /// A message from the peer we could not place (an ACK for nothing pending, a response to
    /// nothing asked, a NON 0.00), kept for diagnostics.
    Unmatched { message: Message },
}

/// An exchange-layer misuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Coap(#[from] CoapError),
    #[error("message id {message_id} was already answered")]
    AlreadyAnswered { message_id: u16 },
    #[error("messages sent with send() must be CON or NON, not {kind}")]
    NotSendable { kind: MessageType },
}

#[derive(Debug)]
struct PendingCon {
    handle: RequestHandle,
    message_id: u16,
    bytes: Vec<u8>,
    transmissions: u32,
    timeout: Duration,
    deadline: Duration,
}

/// One of our CONs not acknowledged yet ([`Endpoint::unacknowledged_cons`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnacknowledgedCon<'a> {
    pub message_id: u16,
    /// The message as sent.
    pub bytes: &'a [u8],
    /// Transmissions so far: 1 when sent once, 2 after the first retransmission...
    pub transmissions: u32,
    /// When it is sent again, or (no retransmission left) given up.
    pub deadline: Duration,
    /// Whether another retransmission follows at the deadline (else it times out then).
    pub retransmits_again: bool,
}

#[derive(Debug)]
struct AwaitingResponse {
    handle: RequestHandle,
    message_id: u16,
    token: Vec<u8>,
}

#[derive(Debug)]
struct Received {
    message_id: u16,
    expires: Duration,
    /// The ACK or RST we sent; `None` while the application has not answered.
    reply: Option<Vec<u8>>,
}

/// `now + duration`, or `now` if that is not representable (an absurd configuration).
fn later(now: Duration, duration: Duration) -> Duration {
    now.checked_add(duration).unwrap_or(now)
}

/// One side of a CoAP conversation (device or cloud), sans-IO.
#[derive(Debug)]
pub struct Endpoint<R: RngCore> {
    config: EndpointConfig,
    rng: R,
    last_message_id: u16,
    last_token: u8,
    next_handle: u64,
    pending: Vec<PendingCon>,
    awaiting: Vec<AwaitingResponse>,
    received: VecDeque<Received>,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<EndpointEvent>,
}

impl<R: RngCore> Endpoint<R> {
    pub fn new(config: EndpointConfig, mut rng: R) -> Endpoint<R> {
        let last_message_id = config
            .last_message_id
            .unwrap_or_else(|| rng.next_u32() as u16);
        let last_token = config.last_token.unwrap_or_else(|| rng.next_u32() as u8);
        Endpoint {
            config,
            rng,
            last_message_id,
            last_token,
            next_handle: 0,
            pending: Vec::new(),
            awaiting: Vec::new(),
            received: VecDeque::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A fresh 1-byte token (Particle always uses 1-byte tokens).
    pub fn next_token(&mut self) -> Vec<u8> {
        self.last_token = self.last_token.wrapping_add(1);
        vec![self.last_token]
    }

    fn next_message_id(&mut self) -> u16 {
        self.last_message_id = self.last_message_id.wrapping_add(1);
        self.last_message_id
    }

    fn new_handle(&mut self) -> RequestHandle {
        self.next_handle += 1;
        RequestHandle(self.next_handle)
    }

    /// Sends `message` (CON or NON) with the next message id; a request that should be
    /// answered separately needs a token (see [`Endpoint::next_token`]). CONs are retransmitted
    /// until acknowledged. Returns the handle that later events name.
    pub fn send(
        &mut self,
        now: Duration,
        mut message: Message,
    ) -> Result<RequestHandle, ExchangeError> {
        if !matches!(
            message.kind,
            MessageType::Confirmable | MessageType::NonConfirmable
        ) {
            return Err(ExchangeError::NotSendable { kind: message.kind });
        }
        message.message_id = self.next_message_id();
        let bytes = message.emit()?;
        let handle = self.new_handle();
        // A response can come back for a request with a token (separate) or for a CON (in the
        // ACK); a NON without token (UpdateChunk, UpdateAck) is never answered.
        let answerable = message.kind == MessageType::Confirmable || !message.token.is_empty();
        if message.code.is_request() && answerable {
            self.awaiting.push(AwaitingResponse {
                handle,
                message_id: message.message_id,
                token: message.token.clone(),
            });
        }
        if message.kind == MessageType::Confirmable {
            let timeout = self.initial_timeout(0);
            self.pending.push(PendingCon {
                handle,
                message_id: message.message_id,
                bytes: bytes.clone(),
                transmissions: 1,
                timeout,
                deadline: later(now, timeout),
            });
        }
        self.transmit.push_back(bytes);
        Ok(handle)
    }

    /// For a NON without a token (never answered, never retransmitted: the OTA sender's
    /// UpdateChunks): takes the message id and the handle [`Endpoint::send`] would, and queues
    /// nothing. The caller encodes the message with that id and sends it itself, after what
    /// [`Endpoint::poll_transmit`] still holds; `send` would not have tracked it either, so the
    /// endpoint ends in the same state.
    pub fn reserve_unanswered_non(&mut self) -> (RequestHandle, u16) {
        let message_id = self.next_message_id();
        (self.new_handle(), message_id)
    }

    /// `ack_timeout << n` plus a random 0..=255/512 of it (Device OS `CoAPMessage`).
    fn initial_timeout(&mut self, n: u32) -> Duration {
        let base = self.config.ack_timeout.saturating_mul(1u32 << n.min(16));
        let jitter = self.rng.next_u32() & 0xFF;
        base.saturating_add(base.saturating_mul(jitter) / 512)
    }

    /// Sends an empty ACK for a CON request whose response will follow separately.
    pub fn accept(
        &mut self,
        now: Duration,
        request: &IncomingRequest,
    ) -> Result<(), ExchangeError> {
        if request.kind != MessageType::Confirmable {
            return Ok(());
        }
        let ack = Message::empty_ack(request.message_id).emit()?;
        self.reply_once(now, request.message_id, ack)
    }

    /// Answers a CON request with RST.
    pub fn reject(
        &mut self,
        now: Duration,
        request: &IncomingRequest,
    ) -> Result<(), ExchangeError> {
        let rst = Message::reset(request.message_id).emit()?;
        self.reply_once(now, request.message_id, rst)
    }

    fn reply_once(
        &mut self,
        now: Duration,
        message_id: u16,
        bytes: Vec<u8>,
    ) -> Result<(), ExchangeError> {
        self.expire(now);
        match self
            .received
            .iter_mut()
            .find(|r| r.message_id == message_id)
        {
            Some(entry) if entry.reply.is_some() => {
                return Err(ExchangeError::AlreadyAnswered { message_id })
            }
            Some(entry) => entry.reply = Some(bytes.clone()),
            None => self.received.push_back(Received {
                message_id,
                expires: later(now, self.config.dedup_lifetime),
                reply: Some(bytes.clone()),
            }),
        }
        self.transmit.push_back(bytes);
        Ok(())
    }

    /// Answers `request` with `code`, `options` and `payload` (`response.kind`, `message_id` and
    /// `token` are filled in): piggy-backed in the ACK if the CON request was not accepted yet,
    /// otherwise as a separate response (CON for a CON request, NON for a NON request) carrying
    /// the request's token. Returns the handle of a separate response.
    pub fn respond(
        &mut self,
        now: Duration,
        request: &IncomingRequest,
        mut response: Message,
    ) -> Result<Option<RequestHandle>, ExchangeError> {
        response.token = request.token.clone();
        self.expire(now);
        let unanswered = request.kind == MessageType::Confirmable
            && self
                .received
                .iter()
                .any(|r| r.message_id == request.message_id && r.reply.is_none());
        if unanswered {
            response.kind = MessageType::Acknowledgement;
            response.message_id = request.message_id;
            let bytes = response.emit()?;
            self.reply_once(now, request.message_id, bytes)?;
            return Ok(None);
        }
        response.kind = request.kind;
        self.send(now, response).map(Some)
    }

    /// Takes a datagram's CoAP message from the peer. Malformed input is an error and changes
    /// nothing.
    pub fn handle_message(&mut self, now: Duration, bytes: &[u8]) -> Result<(), ExchangeError> {
        let message = Message::parse(bytes)?;
        self.expire(now);
        match message.kind {
            MessageType::Acknowledgement | MessageType::Reset => {
                self.handle_ack_or_reset(message);
            }
            MessageType::Confirmable => {
                if let Some(entry) = self
                    .received
                    .iter()
                    .find(|r| r.message_id == message.message_id)
                {
                    // Duplicate: repeat our reply, do not deliver again.
                    if let Some(reply) = &entry.reply {
                        self.transmit.push_back(reply.clone());
                    }
                    return Ok(());
                }
                self.received.push_back(Received {
                    message_id: message.message_id,
                    expires: later(now, self.config.dedup_lifetime),
                    reply: None,
                });
                if message.code.is_empty() {
                    // Ping.
                    let ack = Message::empty_ack(message.message_id).emit()?;
                    self.reply_once(now, message.message_id, ack)?;
                } else if message.code.is_response() {
                    let ack = Message::empty_ack(message.message_id).emit()?;
                    self.reply_once(now, message.message_id, ack)?;
                    self.deliver_separate_response(message);
                } else {
                    self.events.push_back(EndpointEvent::Request {
                        request: IncomingRequest {
                            kind: message.kind,
                            message_id: message.message_id,
                            token: message.token.clone(),
                        },
                        message,
                    });
                }
            }
            MessageType::NonConfirmable => {
                if message.code.is_response() {
                    self.deliver_separate_response(message);
                } else if message.code.is_request() {
                    self.events.push_back(EndpointEvent::Request {
                        request: IncomingRequest {
                            kind: message.kind,
                            message_id: message.message_id,
                            token: message.token.clone(),
                        },
                        message,
                    });
                } else {
                    self.events.push_back(EndpointEvent::Unmatched { message });
                }
            }
        }
        Ok(())
    }

    fn handle_ack_or_reset(&mut self, message: Message) {
        let Some(index) = self
            .pending
            .iter()
            .position(|p| p.message_id == message.message_id)
        else {
            self.events.push_back(EndpointEvent::Unmatched { message });
            return;
        };
        let pending = self.pending.remove(index);
        let handle = pending.handle;
        if message.kind == MessageType::Reset {
            self.awaiting.retain(|a| a.handle != handle);
            self.events.push_back(EndpointEvent::Reset { handle });
        } else if message.code == Code::EMPTY {
            // A request with a token stays awaiting its separate response; without a token none
            // can be matched to it.
            self.awaiting
                .retain(|a| a.handle != handle || !a.token.is_empty());
            self.events
                .push_back(EndpointEvent::Acknowledged { handle });
        } else {
            self.awaiting.retain(|a| a.handle != handle);
            self.events
                .push_back(EndpointEvent::Response { handle, message });
        }
    }

    fn deliver_separate_response(&mut self, message: Message) {
        // A separate response echoes the token; without a token there is nothing to match.
        let found = if message.token.is_empty() {
            None
        } else {
            self.awaiting.iter().position(|a| a.token == message.token)
        };
        match found {
            Some(index) => {
                let awaiting = self.awaiting.remove(index);
                // An ACK lost on the way is implied by the response.
                self.pending.retain(|p| p.message_id != awaiting.message_id);
                self.events.push_back(EndpointEvent::Response {
                    handle: awaiting.handle,
                    message,
                });
            }
            None => self.events.push_back(EndpointEvent::Unmatched { message }),
        }
    }

    fn expire(&mut self, now: Duration) {
        self.received.retain(|r| r.expires > now);
    }

    /// Retransmits or gives up on every CON whose timer is due.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.expire(now);
        let mut index = 0;
        while index < self.pending.len() {
            if self.pending[index].deadline > now {
                index += 1;
                continue;
            }
            if self.pending[index].transmissions > self.config.max_retransmit {
                let gone = self.pending.remove(index);
                self.awaiting.retain(|a| a.handle != gone.handle);
                self.events.push_back(EndpointEvent::TimedOut {
                    handle: gone.handle,
                });
                continue;
            }
            let n = self.pending[index].transmissions;
            let timeout = self.initial_timeout(n);
            let pending = &mut self.pending[index];
            pending.transmissions += 1;
            pending.timeout = timeout;
            pending.deadline = later(now, timeout);
            self.transmit.push_back(pending.bytes.clone());
            index += 1;
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.pending.iter().map(|p| p.deadline).min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    /// Number of our requests that may still get a response.
    pub fn awaiting_responses(&self) -> usize {
        self.awaiting.len()
    }

    /// Number of our CONs not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.pending.len()
    }

    /// Our CONs not yet acknowledged, with their transmissions and next deadline.
    pub fn unacknowledged_cons(&self) -> impl Iterator<Item = UnacknowledgedCon<'_>> {
        self.pending.iter().map(|p| UnacknowledgedCon {
            message_id: p.message_id,
            bytes: &p.bytes,
            transmissions: p.transmissions,
            deadline: p.deadline,
            retransmits_again: p.transmissions <= self.config.max_retransmit,
        })
    }
}
