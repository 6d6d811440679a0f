//! One emulated Particle device: simulated flash with power cuts, the power-safe store that
//! stands in for Device OS's LittleFS, board definitions and the bootloader.

pub mod board;
pub mod flash;
pub mod store;
