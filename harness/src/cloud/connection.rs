//! The cloud's side of each device's DTLS association: connections, address moves, closes,
//! resumptions (reference 1.4), online and offline, refusals, and the idle timer.

use std::net::SocketAddr;
use std::time::Duration;

use p256::ecdsa::VerifyingKey;
use protocol::dtls::{CloseReason, ConnectionHandle, ServerEvent};

use super::config::{CELLULAR_KEEPALIVE, CELLULAR_PLATFORMS, DEFAULT_KEEPALIVE};
use super::reconcile::Armed;
use super::session::Session;
use super::*;

/// A completed handshake with the key of a device that already has a session, waiting for
/// its Hello to show which device it is.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingHandshake {
    pub device_id: DeviceId,
    pub peer: SocketAddr,
}

/// The first 8 bytes of the SHA-256 of a public key (compressed SEC1), as hex: names a key
/// that is not registered, for an operator to find among key files (`hil keys list`).
pub fn key_fingerprint(key: &VerifyingKey) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.to_encoded_point(true).as_bytes());
    hex::encode(&digest[..8])
}

/// What kind of record a datagram starts with (reference 1.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RecordKind {
    /// Type 253: a resumed session, with its CID.
    Move(Vec<u8>),
    /// Type 25.
    Cid,
    Other,
}

pub(super) fn record_kind(datagram: &[u8]) -> RecordKind {
    const CID: std::ops::Range<usize> = 11..19;
    match datagram.first() {
        Some(253) => datagram
            .get(CID)
            .map_or(RecordKind::Other, |c| RecordKind::Move(c.to_vec())),
        Some(25) => RecordKind::Cid,
        _ => RecordKind::Other,
    }
}

impl Cloud {
    pub(super) fn process_server_events(&mut self, now: Duration, kind: &RecordKind) {
        while let Some(event) = self.server.poll_event() {
            match event {
                ServerEvent::Connected {
                    handle,
                    peer,
                    device_key,
                } => self.on_connected(now, handle, peer, device_key),
                ServerEvent::ApplicationData { handle, data } => {
                    self.on_application_data(now, handle, &data, kind)
                }
                ServerEvent::Moved { handle, from, to } => {
                    self.on_moved(now, handle, from, to, kind)
                }
                ServerEvent::Closed { handle, reason } => self.on_closed(now, handle, reason),
                ServerEvent::Refused {
                    peer,
                    offered_key,
                    reason,
                    ..
                } => {
                    let key_of = offered_key.and_then(|k| self.by_key.get(&key_bytes(&k)).copied());
                    self.refused_handshake(
                        now,
                        peer,
                        None,
                        key_of,
                        offered_key.as_ref().map(key_fingerprint),
                        reason.to_string(),
                    );
                }
            }
        }
    }

    pub(super) fn on_connected(
        &mut self,
        now: Duration,
        handle: ConnectionHandle,
        peer: SocketAddr,
        device_key: Option<VerifyingKey>,
    ) {
        let id = device_key.and_then(|k| self.by_key.get(&key_bytes(&k)).copied());
        let Some(id) = id else {
            self.refused_handshake(
                now,
                peer,
                None,
                None,
                device_key.as_ref().map(key_fingerprint),
                "a DTLS handshake completed with an unregistered key".into(),
            );
            self.server.close(now, handle);
            return;
        };
        // The device has a session already: the new handshake replaces it only once its Hello
        // shows the same device id. Until then the old session is left alone, so a client
        // holding the device's key under another id (or failing half-way) never disturbs it.
        if self
            .devices
            .get(&id)
            .is_some_and(|d| d.session.as_ref().is_some_and(|s| s.handle != handle))
        {
            // At most PENDING_PER_DEVICE wait: one more closes the oldest (a device that
            // retried its handshake, a client that never sends a Hello).
            let waiting: Vec<ConnectionHandle> = self
                .pending
                .iter()
                .filter(|(_, p)| p.device_id == id)
                .map(|(h, _)| *h)
                .collect();
            let excess = (waiting.len() + 1).saturating_sub(super::footprint::PENDING_PER_DEVICE);
            for old in waiting.into_iter().take(excess) {
                self.pending.remove(&old);
                self.server.close(now, old);
            }
            self.pending.insert(
                handle,
                PendingHandshake {
                    device_id: id,
                    peer,
                },
            );
            return;
        }
        self.start_session(now, handle, peer, id);
    }

    /// A handshake of `id` is now its session (an older one, if any, ends as replaced).
    fn start_session(
        &mut self,
        now: Duration,
        handle: ConnectionHandle,
        peer: SocketAddr,
        id: DeviceId,
    ) {
        if let Some(old) = self
            .devices
            .get(&id)
            .and_then(|d| d.session.as_ref())
            .map(|s| s.handle)
        {
            self.go_offline(now, id, DisconnectReason::Replaced);
            self.end_session(id);
            if old != handle {
                self.server.remove(old);
            }
        }
        let cid = self.server.connection_id(handle).map(<[u8]>::to_vec);
        let mut session = Session::new(handle, cid, peer, now);
        session.endpoint = Some(self.new_endpoint());
        let armed = self.fleet.target(id).firmware().cloned().map(Armed::new);
        if let Some(d) = self.devices.get_mut(&id) {
            d.session = Some(session);
            d.last_address = Some(peer);
            // A full handshake: the device subscribes again (a resumption may not).
            d.subscriptions.clear();
            // A new secure session: standard releases and locks reach the device now.
            d.armed = armed;
        }
        self.by_handle.insert(handle, id);
        self.events
            .push_back(CloudEvent::Session(SessionChange::Connected {
                at: now,
                device_id: id,
                address: peer,
            }));
    }

    pub(super) fn on_moved(
        &mut self,
        now: Duration,
        handle: ConnectionHandle,
        from: SocketAddr,
        to: SocketAddr,
        kind: &RecordKind,
    ) {
        if let Some(p) = self.pending.get_mut(&handle) {
            p.peer = to;
            return;
        }
        let Some(id) = self.by_handle.get(&handle).copied() else {
            return;
        };
        if let Some(d) = self.devices.get_mut(&id) {
            d.last_address = Some(to);
            if let Some(s) = d.session.as_mut() {
                s.address = to;
            }
        }
        // A resumed device usually comes from a new port: report the resumption first.
        self.detect_resumption(now, id, kind);
        self.events
            .push_back(CloudEvent::Session(SessionChange::Moved {
                at: now,
                device_id: id,
                from,
                to,
            }));
    }

    pub(super) fn on_closed(
        &mut self,
        now: Duration,
        handle: ConnectionHandle,
        reason: CloseReason,
    ) {
        if self.pending.remove(&handle).is_some() {
            return;
        }
        let Some(id) = self.by_handle.get(&handle).copied() else {
            return;
        };
        self.go_offline(now, id, DisconnectReason::Closed(reason.to_string()));
        self.end_session(id);
    }

    pub(super) fn on_application_data(
        &mut self,
        now: Duration,
        handle: ConnectionHandle,
        data: &[u8],
        kind: &RecordKind,
    ) {
        if self.pending.contains_key(&handle) && !self.confirm_pending(now, handle, data) {
            return;
        }
        let Some(id) = self.by_handle.get(&handle).copied() else {
            return;
        };
        self.stats.messages += 1;
        self.detect_resumption(now, id, kind);
        let events = match self.endpoint(&id) {
            Some(e) => match e.handle_message(now, data) {
                Ok(()) => drain_events(e),
                Err(error) => {
                    self.stats.malformed += 1;
                    self.dropped(Some(id), format!("malformed CoAP message: {error}"));
                    return;
                }
            },
            None => return,
        };
        self.handle_endpoint_events(now, id, events);
        // Not a Hello (a ping after all): the device is online anyway.
        if self.session_mut(&id).is_some_and(|s| s.fresh) {
            self.go_online(now, id);
        }
        self.service(now, id);
    }

    /// The first message of a handshake made with the key of a device that has a session: a
    /// Hello with that device's id makes it the session (`true`: handle the message now); a
    /// Hello with another id is refused and the association closed; anything else waits for
    /// the Hello (Device OS sends it first after every handshake, reference 1.8).
    fn confirm_pending(&mut self, now: Duration, handle: ConnectionHandle, data: &[u8]) -> bool {
        let Some(pending) = self.pending.get(&handle).copied() else {
            return false;
        };
        let hello = protocol::coap::Message::parse(data)
            .ok()
            .and_then(|m| ParticleMessage::from_coap(&m).ok())
            .and_then(|m| match m.body {
                Body::Hello(h) => Some(h),
                _ => None,
            });
        let Some(hello) = hello else {
            self.stats.malformed += 1;
            self.dropped(
                Some(pending.device_id),
                "a message before the Hello of a new handshake (ignored until the Hello)".into(),
            );
            return false;
        };
        self.pending.remove(&handle);
        let claimed = DeviceId(hello.device_id);
        if claimed != pending.device_id {
            self.refused_handshake(
                now,
                pending.peer,
                Some(claimed),
                Some(pending.device_id),
                None,
                format!(
                    "the Hello carries device id {} but the DTLS key is registered for {}",
                    device_id_hex(&claimed),
                    device_id_hex(&pending.device_id)
                ),
            );
            self.server.close(now, handle);
            return false;
        }
        self.start_session(now, handle, pending.peer, pending.device_id);
        true
    }

    /// Reports a handshake or session the cloud refused: who tried (address, the id its Hello
    /// claimed, the device whose key it used, or the key's fingerprint) and why. No session of
    /// any device is touched.
    pub(super) fn refused_handshake(
        &mut self,
        now: Duration,
        address: SocketAddr,
        claimed_device_id: Option<DeviceId>,
        key_of: Option<DeviceId>,
        key_fingerprint: Option<String>,
        reason: String,
    ) {
        self.stats.refused += 1;
        self.events
            .push_back(CloudEvent::Session(SessionChange::Refused {
                at: now,
                address,
                claimed_device_id,
                key_of,
                key_fingerprint,
                reason,
            }));
    }

    /// An authenticated record arrived: a first type-253 record, or any record on a session
    /// the cloud had taken offline, is a resumption (reference 1.4).
    pub(super) fn detect_resumption(&mut self, now: Duration, id: DeviceId, kind: &RecordKind) {
        let (resume, again) = {
            let Some(s) = self.session_mut(&id) else {
                return;
            };
            s.last_heard = now;
            let mut resume = false;
            match kind {
                RecordKind::Move(cid) if !s.moving && s.cid.as_deref() == Some(cid.as_slice()) => {
                    s.moving = true;
                    resume = true;
                }
                RecordKind::Cid => s.moving = false,
                _ => {}
            }
            if !s.online && !s.fresh {
                resume = true;
            }
            (resume, resume && s.online)
        };
        if again {
            self.go_offline(now, id, DisconnectReason::ResumedAgain);
        }
        if resume {
            self.resume(now, id);
        }
    }

    pub(super) fn resume(&mut self, now: Duration, id: DeviceId) {
        let endpoint = self.new_endpoint();
        let Some(s) = self.session_mut(&id) else {
            return;
        };
        s.resumed = true;
        s.started_at = now;
        s.last_request = now;
        s.pending_sent = false;
        // A resumption sends no describe (the device may have reset, failed to apply, or
        // be in safe mode): the cloud asks for one before it acts.
        s.describe_seen = false;
        s.describe_requested = false;
        s.pending_true_sent = false;
        s.reconciled_at = None;
        s.stalled_at = None;
        s.safe_mode_said = false;
        s.safe_mode_published = false;
        s.clear_connection();
        s.endpoint = Some(endpoint);
        let address = s.address;
        self.events
            .push_back(CloudEvent::Session(SessionChange::Resumed {
                at: now,
                device_id: id,
                address,
            }));
        self.go_online(now, id);
    }

    pub(super) fn go_online(&mut self, now: Duration, id: DeviceId) {
        let Some(s) = self.session_mut(&id) else {
            return;
        };
        if s.online {
            return;
        }
        s.online = true;
        s.fresh = false;
        self.publish_cloud(now, id, names::STATUS, "online");
    }

    /// Takes the device offline (its session, if any, stays for a resumption).
    pub(super) fn go_offline(&mut self, now: Duration, id: DeviceId, reason: DisconnectReason) {
        self.flush_endpoint(now, id);
        let (was_online, was_fresh) = {
            let Some(s) = self.session_mut(&id) else {
                return;
            };
            let was = (s.online, s.fresh);
            s.online = false;
            s.fresh = false;
            s.clear_connection();
            was
        };
        if was_online {
            self.publish_cloud(now, id, names::STATUS, "offline");
        } else if !was_fresh {
            return; // already offline
        }
        self.events
            .push_back(CloudEvent::Session(SessionChange::Disconnected {
                at: now,
                device_id: id,
                reason,
            }));
        self.interrupt_active(now, id, "the device went offline during the transfer");
    }

    /// Forgets the device's session (after a close, a refusal or a new handshake).
    pub(super) fn end_session(&mut self, id: DeviceId) {
        self.touched.push(id);
        if let Some(s) = self.devices.get_mut(&id).and_then(|d| d.session.take()) {
            self.by_handle.remove(&s.handle);
        }
    }

    pub(super) fn refuse(&mut self, now: Duration, id: DeviceId, reason: String) {
        self.dropped(Some(id), reason.clone());
        let handle = self.session_mut(&id).map(|s| s.handle);
        self.go_offline(now, id, DisconnectReason::Refused(reason));
        self.end_session(id);
        if let Some(handle) = handle {
            self.server.close(now, handle);
            self.process_server_events(now, &RecordKind::Other);
        }
    }

    pub(super) fn idle_deadline(&self, id: &DeviceId) -> Option<Duration> {
        let d = self.devices.get(id)?;
        let s = d.session.as_ref().filter(|s| s.online)?;
        let timeout = self.config.idle_timeout.unwrap_or_else(|| {
            let cellular = d
                .hello
                .as_ref()
                .is_some_and(|h| CELLULAR_PLATFORMS.contains(&h.platform_id));
            2 * if cellular {
                CELLULAR_KEEPALIVE
            } else {
                DEFAULT_KEEPALIVE
            }
        });
        Some(s.last_heard.saturating_add(timeout))
    }
}
