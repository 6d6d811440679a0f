//! Events and subscriptions (reference §1.11).
//!
//! Publish / incoming event: POST, no token, Uri-Path `E` (or `e`) then the whole name as **one**
//! Uri-Path option, \[Content-Format\] only if not text/plain (0), \[Max-Age\] only if the TTL is
//! not 60, payload = data. Subscribe: GET, no token, Uri-Path `e` + filter, \[Uri-Query `c`|`b`\].

use super::{check_options, uint_value, uri_path, CatalogueError};
use crate::coap::{option, CoapOption, Code, Message};

/// Event time-to-live when no Max-Age option is present.
pub const DEFAULT_EVENT_TTL: u32 = 60;

/// The first Uri-Path segment of an event. See the module-level choice in [`super`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventScope {
    /// `E`: what Device OS sends for every event.
    Private,
    /// `e`.
    Public,
}

impl EventScope {
    fn path(self) -> &'static str {
        match self {
            EventScope::Private => "E",
            EventScope::Public => "e",
        }
    }
}

/// A published (device -> cloud) or incoming (cloud -> device) event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub scope: EventScope,
    /// Slashes included, at most 64 characters from the device.
    pub name: String,
    /// Absent means text/plain (0).
    pub content_format: Option<u16>,
    /// Absent means [`DEFAULT_EVENT_TTL`].
    pub max_age: Option<u32>,
    pub data: Vec<u8>,
}

impl Event {
    /// A private event with default TTL and text data, as the device publishes it.
    pub fn new(name: impl Into<String>, data: impl Into<Vec<u8>>) -> Event {
        Event {
            scope: EventScope::Private,
            name: name.into(),
            content_format: None,
            max_age: None,
            data: data.into(),
        }
    }

    /// Time-to-live in seconds.
    pub fn ttl(&self) -> u32 {
        self.max_age.unwrap_or(DEFAULT_EVENT_TTL)
    }

    pub(super) fn from_coap(message: &Message) -> Result<Event, CatalogueError> {
        const WHAT: &str = "event";
        check_options(
            message,
            WHAT,
            &[option::CONTENT_FORMAT, option::MAX_AGE],
            2..=usize::MAX,
        )?;
        let mut segments = message.option_values(option::URI_PATH);
        let scope = match segments.next() {
            Some(b"e") => EventScope::Public,
            _ => EventScope::Private,
        };
        let mut name = String::new();
        for (i, segment) in segments.enumerate() {
            if i > 0 {
                name.push('/');
            }
            name.push_str(core::str::from_utf8(segment).map_err(|_| {
                CatalogueError::InvalidUtf8 {
                    message: WHAT,
                    field: "event name",
                }
            })?);
        }
        let content_format = match message.option(option::CONTENT_FORMAT) {
            Some(v) if v.len() <= 2 => Some(uint_value(WHAT, option::CONTENT_FORMAT, v)? as u16),
            Some(v) => {
                return Err(CatalogueError::OptionLength {
                    message: WHAT,
                    option: option::CONTENT_FORMAT,
                    length: v.len(),
                    expected: "0 to 2",
                })
            }
            None => None,
        };
        let max_age = message
            .option(option::MAX_AGE)
            .map(|v| uint_value(WHAT, option::MAX_AGE, v))
            .transpose()?;
        Ok(Event {
            scope,
            name,
            content_format,
            max_age,
            data: message.payload.clone(),
        })
    }

    pub(super) fn parts(&self) -> (Code, Vec<CoapOption>, Vec<u8>) {
        let mut options = vec![
            uri_path(self.scope.path()),
            CoapOption::new(option::URI_PATH, self.name.as_bytes().to_vec()),
        ];
        if let Some(cf) = self.content_format {
            options.push(CoapOption::uint(option::CONTENT_FORMAT, u32::from(cf)));
        }
        if let Some(ttl) = self.max_age {
            options.push(CoapOption::uint(option::MAX_AGE, ttl));
        }
        (Code::POST, options, self.data.clone())
    }
}

/// A subscription: GET `e/<filter>`; the cloud forwards every event whose name starts with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Event name prefix; empty subscribes to everything (no second Uri-Path).
    pub filter: String,
    /// Uri-Query: `c` for CBOR, `b` for binary data.
    pub query: Option<Vec<u8>>,
}

impl Subscribe {
    pub fn new(filter: impl Into<String>) -> Subscribe {
        Subscribe {
            filter: filter.into(),
            query: None,
        }
    }

    pub(super) fn from_coap(message: &Message) -> Result<Subscribe, CatalogueError> {
        const WHAT: &str = "subscribe";
        check_options(message, WHAT, &[option::URI_QUERY], 1..=usize::MAX)?;
        super::no_payload(WHAT, message)?;
        let mut filter = String::new();
        for (i, segment) in message.option_values(option::URI_PATH).skip(1).enumerate() {
            if i > 0 {
                filter.push('/');
            }
            filter.push_str(core::str::from_utf8(segment).map_err(|_| {
                CatalogueError::InvalidUtf8 {
                    message: WHAT,
                    field: "filter",
                }
            })?);
        }
        Ok(Subscribe {
            filter,
            query: message.option(option::URI_QUERY).map(<[u8]>::to_vec),
        })
    }

    pub(super) fn parts(&self) -> (Code, Vec<CoapOption>, Vec<u8>) {
        let mut options = vec![uri_path("e")];
        if !self.filter.is_empty() {
            options.push(CoapOption::new(
                option::URI_PATH,
                self.filter.as_bytes().to_vec(),
            ));
        }
        if let Some(q) = &self.query {
            options.push(CoapOption::new(option::URI_QUERY, q.clone()));
        }
        (Code::GET, options, Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::MessageType;
    use crate::message::{Body, ParticleMessage};

    #[test]
    fn event_with_ttl_and_content_format_round_trips() {
        let message = ParticleMessage {
            kind: MessageType::NonConfirmable,
            message_id: 7,
            token: Vec::new(),
            body: Body::Event(Event {
                scope: EventScope::Private,
                name: "my/event".into(),
                content_format: Some(42),
                max_age: Some(3600),
                data: vec![1, 2],
            }),
        };
        let bytes = message.emit().unwrap();
        // 50 02 0007 | b1 45 | 08 "my/event" | 11 2a | 22 0e10 | ff 01 02
        assert_eq!(
            bytes,
            [
                &[0x50, 0x02, 0x00, 0x07, 0xB1, b'E', 0x08][..],
                b"my/event",
                &[0x11, 0x2A, 0x22, 0x0E, 0x10, 0xFF, 0x01, 0x02]
            ]
            .concat()
        );
        assert_eq!(ParticleMessage::parse(&bytes).unwrap(), message);
    }

    #[test]
    fn incoming_event_name_in_several_segments_is_joined() {
        let bytes = [
            0x50, 0x02, 0, 1, 0xB1, b'e', 0x01, b'a', 0x02, b'b', b'c', 0xFF, b'x',
        ];
        let Body::Event(event) = ParticleMessage::parse(&bytes).unwrap().body else {
            panic!()
        };
        assert_eq!(event.name, "a/bc");
        assert_eq!(event.scope, EventScope::Public);
        assert_eq!(event.ttl(), DEFAULT_EVENT_TTL);
    }

    #[test]
    fn event_without_name_is_refused() {
        assert!(matches!(
            ParticleMessage::parse(&[0x40, 0x02, 0, 1, 0xB1, b'E']),
            Err(CatalogueError::UriPathSegments { segments: 1, .. })
        ));
    }
}
