//! Physical boards (and emulators standing in for them): the test-control protocol spoken over
//! USB serial with the test application of `boards/firmware/` ([`protocol`]), and the emulator's
//! side of it ([`serve`]).

pub mod emulated;
pub mod port;
pub mod power;
pub mod probe;
#[cfg(feature = "probe-rs")]
pub mod probe_rs;
pub mod protocol;
pub mod pty;
pub mod rack;
pub mod serve;
pub mod target;
