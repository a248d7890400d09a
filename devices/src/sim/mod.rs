//! Simulated devices: a bed-sensor physiology model and an event-driven MQTT runner (one
//! task per device), for demos, tests and load.

mod bed;
mod run;

pub use bed::{payload, BedModel, BedReading, Chronotype};
pub use run::{run, SimConfig, SimError, SimReport, SimStats};
