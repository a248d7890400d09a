//! Every kind's model behind one type, and the sample a device takes: an event time and
//! readings in canonical units.

use jiff::Timestamp;
use kenko_config::DeviceKind;

use super::bed::{BedModel, BedReading};
use super::bp::BpModel;
use super::glucose::GlucoseModel;
use super::hash::unit;
use super::oximeter::OximeterModel;
use super::person::person_seed;
use super::scale::ScaleModel;
use super::schedule::{from_local_minute, local_minute};
use super::thermo::ThermoModel;
use super::wearable::WearableModel;
use kenko_devices::catalogue::Metric;

/// Readings taken at one instant, each in its metric's canonical unit (`Metric::unit()`):
/// bed occupancy as 1 or 0, a sleep stage as its code.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub at: Timestamp,
    pub readings: Vec<(Metric, f64)>,
}

impl Sample {
    pub fn value(&self, metric: Metric) -> Option<f64> {
        self.readings
            .iter()
            .find(|(m, _)| *m == metric)
            .map(|&(_, v)| v)
    }
}

/// The model of one device, of any kind. Deterministic from its seed.
#[derive(Debug, Clone)]
pub enum KindModel {
    Bed(BedModel),
    Wearable(WearableModel),
    Bp(BpModel),
    Scale(ScaleModel),
    Thermo(ThermoModel),
    Oximeter(OximeterModel),
    Glucose(GlucoseModel),
}

impl KindModel {
    /// The device of `kind` of the person with seed `seed`.
    pub fn new(kind: DeviceKind, seed: u64) -> KindModel {
        match kind {
            DeviceKind::Bed => KindModel::Bed(BedModel::new(seed)),
            DeviceKind::Wearable => KindModel::Wearable(WearableModel::new(seed)),
            DeviceKind::Bp => KindModel::Bp(BpModel::new(seed)),
            DeviceKind::Scale => KindModel::Scale(ScaleModel::new(seed)),
            DeviceKind::Thermo => KindModel::Thermo(ThermoModel::new(seed)),
            DeviceKind::Oximeter => KindModel::Oximeter(OximeterModel::new(seed)),
            DeviceKind::Glucose => KindModel::Glucose(GlucoseModel::new(seed)),
        }
    }

    /// The model that [`run()`](super::run()) gives device number `n` (1-based) of `kind`:
    /// every kind's device `n` measures the same person (citizen `n`), so their wearable
    /// and their bed sensor agree on when they sleep. For bed sensors this is
    /// [`BedModel::for_device`].
    pub fn for_device(kind: DeviceKind, seed: u64, n: usize) -> KindModel {
        KindModel::new(kind, person_seed(seed, n))
    }

    pub fn kind(&self) -> DeviceKind {
        match self {
            KindModel::Bed(_) => DeviceKind::Bed,
            KindModel::Wearable(_) => DeviceKind::Wearable,
            KindModel::Bp(_) => DeviceKind::Bp,
            KindModel::Scale(_) => DeviceKind::Scale,
            KindModel::Thermo(_) => DeviceKind::Thermo,
            KindModel::Oximeter(_) => DeviceKind::Oximeter,
            KindModel::Glucose(_) => DeviceKind::Glucose,
        }
    }

    /// Measures only now and then (blood pressure, weight, temperature, SpO2, glucose), rather
    /// than continuously (bed sensors, wearables).
    pub fn is_spot(&self) -> bool {
        !matches!(self, KindModel::Bed(_) | KindModel::Wearable(_))
    }

    /// The readings at `at`. `since` is the time of the device's previous sample: a wearable
    /// reports the steps walked in `[since, at)`.
    pub fn sample(&mut self, at: Timestamp, since: Timestamp) -> Sample {
        let readings = match self {
            KindModel::Bed(m) => bed_readings(&m.sample(at)),
            KindModel::Wearable(m) => m.sample(at, since),
            KindModel::Bp(m) => m.sample(at),
            KindModel::Scale(m) => m.sample(at),
            KindModel::Thermo(m) => m.sample(at),
            KindModel::Oximeter(m) => m.sample(at),
            KindModel::Glucose(m) => m.sample(at),
        };
        Sample { at, readings }
    }

    /// When a spot-measurement device is used in `[from, until)`, at the person's times of day
    /// (each at a whole second); empty for continuous kinds, which measure all the time.
    pub fn measurements(&self, from: Timestamp, until: Timestamp) -> Vec<Timestamp> {
        let (lo, hi) = (local_minute(from), local_minute(until) + 1);
        let (minutes, seed) = match self {
            KindModel::Bed(_) | KindModel::Wearable(_) => return Vec::new(),
            KindModel::Bp(m) => (m.measurements(lo, hi), m.person.seed),
            KindModel::Scale(m) => (m.measurements(lo, hi), m.person.seed),
            KindModel::Thermo(m) => (m.measurements(lo, hi), m.person.seed),
            KindModel::Oximeter(m) => (m.measurements(lo, hi), m.person.seed),
            KindModel::Glucose(m) => (m.measurements(lo, hi), m.person.seed),
        };
        // The second within the minute, per person and kind.
        let key = 150 + self.kind() as u64;
        minutes
            .into_iter()
            .map(|m| from_local_minute(m, (60.0 * unit(seed, m, key)) as i64))
            .filter(|at| (from..until).contains(at))
            .collect()
    }
}

/// A bed reading as canonical readings: occupancy always, the rest while occupied.
fn bed_readings(r: &BedReading) -> Vec<(Metric, f64)> {
    let mut out = vec![(Metric::BedOccupancy, if r.occupied { 1.0 } else { 0.0 })];
    out.extend(r.heart_rate.map(|v| (Metric::HeartRate, v)));
    out.extend(r.respiratory_rate.map(|v| (Metric::RespiratoryRate, v)));
    out.extend(r.movement.map(|v| (Metric::BodyMovement, f64::from(v))));
    out.extend(r.stage.map(|s| (Metric::SleepStage, s.code())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::tests::jst;
    use crate::schedule::DAY_MIN;

    #[test]
    fn every_kind_stays_plausible_for_a_week_of_persons() {
        for kind in DeviceKind::ALL {
            for n in 1..=20 {
                let mut model = KindModel::for_device(kind, 9, n);
                assert_eq!(model.kind(), kind);
                let (from, until) = (jst(0), jst(7 * DAY_MIN));
                let times = if model.is_spot() {
                    model.measurements(from, until)
                } else {
                    (0..7 * DAY_MIN).step_by(13).map(jst).collect()
                };
                assert!(times.len() >= 2, "{kind} {n}: {} samples", times.len());
                let mut since = from;
                for at in times {
                    assert!((from..until).contains(&at));
                    let sample = model.sample(at, since);
                    since = at;
                    assert!(!sample.readings.is_empty());
                    for &(metric, value) in &sample.readings {
                        let (low, high) = metric.plausible();
                        assert!(
                            (low..=high).contains(&value),
                            "{kind} {n}: {metric} = {value}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn spot_kinds_measure_at_their_own_times_and_continuous_ones_never_say() {
        let bed = KindModel::for_device(DeviceKind::Bed, 1, 1);
        assert!(!bed.is_spot() && bed.measurements(jst(0), jst(DAY_MIN)).is_empty());
        let bp = KindModel::for_device(DeviceKind::Bp, 1, 1);
        let a = bp.measurements(jst(0), jst(3 * DAY_MIN));
        let b = bp.measurements(jst(0), jst(DAY_MIN));
        let c = bp.measurements(jst(DAY_MIN), jst(3 * DAY_MIN));
        assert_eq!(a, [b, c].concat(), "ranges split cleanly");
    }

    #[test]
    fn a_persons_devices_agree_on_the_person() {
        let bed = BedModel::for_device(3, 7);
        let KindModel::Bed(same) = KindModel::for_device(DeviceKind::Bed, 3, 7) else {
            unreachable!("a bed model");
        };
        for m in (0..DAY_MIN).step_by(17) {
            assert_eq!(bed.stage_at(jst(m)), same.stage_at(jst(m)));
        }
    }
}
