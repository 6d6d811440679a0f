//! The emulated Device OS: the system side of a Particle device (reference sections 2 and 3).

pub mod ota;
