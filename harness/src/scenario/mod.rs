//! Scenarios: data files (TOML) that drive a [`target::Target`] through an OTA story — set-up,
//! steps, expectations — and the runner that turns one into cases, results and traces.
//!
//! The file format is documented with examples in `fixtures/README.md`; the behaviours the
//! steps exercise are those of reference `particle-protocol.md` sections 2, 3 and 5 and
//! `particle-cloud-api.md` sections 4 and 5.

pub mod diff;
pub mod emulator_target;
pub mod field;
pub mod firmware;
pub mod minimise;
pub mod model;
pub mod node;
pub mod parse;
pub mod report;
pub mod runner;
pub mod serial_log;
pub mod steps;
pub mod target;
pub mod trace;
pub mod units;

pub use model::*;
pub use parse::{load, load_all, parse, parse_all, ScenarioError, STEP_KINDS};
pub use steps::STEPS;
pub use target::{Capability, Target, TargetError};
pub use trace::{Trace, TraceEntry, TraceKind};
