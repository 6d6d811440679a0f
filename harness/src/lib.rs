//! Drives devices through OTA scenarios. For now: firmware sets for the emulator and the
//! power-cut sweep over it (reference sections 5.3-5.5).

pub mod cases;
pub mod keys;
pub mod net;
pub mod sweep;
