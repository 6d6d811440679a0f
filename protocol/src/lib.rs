//! Everything on the wire and in the binaries, with no I/O and no clock of its own.
//!
//! Implements `reference/particle-protocol.md`, sans-IO: every state machine takes bytes and a
//! timestamp in and gives bytes, timer deadlines and events out.
//! - [`dtls`]: DTLS 1.2 with Particle's profile (sections 1.3, 1.4);
//! - [`coap`]: CoAP framing and the exchange layer (section 1.5);
//! - [`message`]: the Particle message catalogue, OTA v3 included (sections 1.6-1.12, 2);
//! - [`module`]: module binaries (section 4);
//! - [`timer_queue`]: the deadlines of many state machines (associations, devices), lazily kept.

pub mod bundle;
pub mod coap;
pub mod dtls;
pub mod message;
pub mod module;
pub mod timer_queue;
