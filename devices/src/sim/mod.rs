//! Simulated bed sensors, for demos, tests and load: a model of a person's days and nights in
//! bed ([`BedModel`]), the bed-json-v1 payload ([`payload`]), and an event-driven MQTT runner
//! with one task and one connection per device ([`run`]).

mod bed;
mod device;
mod hash;
mod payload;
mod run;
mod schedule;

pub use bed::{BedModel, BedReading};
pub use payload::payload;
pub use run::{run, SimConfig, SimError, SimReport, SimStats};
pub use schedule::Chronotype;
