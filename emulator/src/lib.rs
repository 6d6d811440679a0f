//! One emulated Particle device: simulated flash with power cuts, the power-safe store that
//! stands in for Device OS's LittleFS, board definitions, DCT module slots, OTA staging and the
//! bootloader (reference sections 4 and 5).

pub mod assets;
pub mod board;
pub mod bootloader;
pub mod content_cache;
pub mod dct;
pub mod device;
pub mod firmware;
pub mod flash;
pub mod installed;
pub mod os;
pub mod persist;
pub mod placement;
pub mod store;
