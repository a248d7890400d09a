//! The device side of kenko: the catalogue of metrics and device kinds, the registry that maps
//! a device to its citizen, and the payload profiles. The simulators are `kenko-sim`'s.

pub mod catalogue;
pub mod profile;
pub mod registry;

pub use catalogue::{conversion, units, Conversion, Metric, SleepStage};
pub use profile::{Profile, Profiles};
pub use registry::{DeviceEntry, Registry};
