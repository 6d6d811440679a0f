//! Drives devices through OTA scenarios: scenario files and their runner, firmware sets for the emulator, the
//! power-cut sweep over it (reference sections 5.3-5.5) and the local Device Cloud, sans-IO
//! (reference sections 1, 2.2-2.7, 3 and 8).

pub mod board;
pub mod cases;
pub mod cloud;
pub mod control;
pub mod fleet_sim;
pub mod keys;
pub mod message_kind;
pub mod net;
pub mod pcap;
pub mod scenario;
pub mod sweep;
pub mod testbed;
pub mod trace_text;
