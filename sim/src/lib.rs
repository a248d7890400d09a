//! Simulated devices, for demos, tests and load: models of a person's days for every device
//! kind (bed sensor, wearable, blood-pressure monitor, scale, thermometer, pulse oximeter,
//! glucose meter), all in Japan time and agreeing on when the person sleeps; a payload writer
//! for every vendor profile; device habits (clock skew, offline periods, duplicates) and
//! injected faults; ground truth to check the hub's summaries against; and an event-driven
//! MQTT runner with one task and one connection per device ([`run`]), live or replaying a
//! period of event times.
//!
//! Device `n` of every kind (`bed-001`, `wearable-001`, ...) belongs to citizen `n`
//! (`citizen-001`) and measures that one person; see [`fleet`] for ids and profiles.

mod bed;
mod bp;
mod device;
mod emitter;
mod faults;
mod fleet;
mod glucose;
mod habits;
mod hash;
mod model;
mod oximeter;
mod person;
#[cfg(test)]
mod reader;
mod run;
mod scale;
mod schedule;
mod thermo;
mod truth;
mod wearable;
mod writer;

pub use bed::{BedModel, BedReading};
pub use bp::BpModel;
pub use faults::{FaultReason, InjectedFault};
pub use fleet::{
    citizen_id, device_id, fleet, fleet_from, profile_for, SimDevice, PROTOBUF_PROFILE,
};
pub use glucose::GlucoseModel;
pub use habits::MAX_SKEW;
pub use model::{KindModel, Sample};
pub use oximeter::OximeterModel;
pub use run::{run, DeviceReport, Replay, SimConfig, SimError, SimReport, SimStats};
pub use scale::ScaleModel;
pub use schedule::Chronotype;
pub use thermo::ThermoModel;
pub use truth::{SleepTruth, AWAKENING_MAX_GAP_MIN};
pub use wearable::WearableModel;
pub use writer::{carries, is_batching, write, WriteError};
