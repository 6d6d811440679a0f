//! Everything on the wire and in the binaries, with no I/O and no clock of its own.
//!
//! Implements `reference/particle-protocol.md`: section 4 (module binaries) lives in [`module`].
//! The DTLS, CoAP and OTA v3 layers (sections 1 and 2) will join it here, sans-IO.

pub mod dtls;
pub mod module;
