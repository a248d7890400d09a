//! The canonical metrics: their names (the interface), LOINC codes and canonical UCUM units.

use std::fmt;
use std::str::FromStr;

/// A canonical metric. The name is what `kenko query --metric` and the `{metric}` topic level use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    HeartRate,
    RespiratoryRate,
    BodyMovement,
    BedOccupancy,
    SleepStage,
}

impl Metric {
    pub const ALL: &'static [Metric] = &[
        Metric::HeartRate,
        Metric::RespiratoryRate,
        Metric::BodyMovement,
        Metric::BedOccupancy,
        Metric::SleepStage,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::HeartRate => "heart_rate",
            Metric::RespiratoryRate => "respiratory_rate",
            Metric::BodyMovement => "body_movement",
            Metric::BedOccupancy => "bed_occupancy",
            Metric::SleepStage => "sleep_stage",
        }
    }

    /// LOINC code, or `local` where LOINC has none that fits.
    pub fn loinc(self) -> &'static str {
        match self {
            Metric::HeartRate => "8867-4",
            Metric::RespiratoryRate => "9279-1",
            Metric::BodyMovement | Metric::BedOccupancy | Metric::SleepStage => "local",
        }
    }

    /// Canonical UCUM unit.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::HeartRate | Metric::RespiratoryRate | Metric::BodyMovement => "/min",
            Metric::BedOccupancy => "{bool}",
            Metric::SleepStage => "{stage}",
        }
    }

    /// Physiologically plausible range of the canonical value (inclusive).
    pub fn plausible(self) -> (f64, f64) {
        match self {
            Metric::HeartRate => (20.0, 250.0),
            Metric::RespiratoryRate => (2.0, 70.0),
            Metric::BodyMovement => (0.0, 600.0),
            Metric::BedOccupancy => (0.0, 1.0),
            Metric::SleepStage => (0.0, 3.0),
        }
    }

    /// Stable small number used as the metric's key in stores.
    pub fn id(self) -> u8 {
        match self {
            Metric::HeartRate => 1,
            Metric::RespiratoryRate => 2,
            Metric::BodyMovement => 3,
            Metric::BedOccupancy => 4,
            Metric::SleepStage => 5,
        }
    }

    pub fn from_id(id: u8) -> Option<Metric> {
        Metric::ALL.iter().copied().find(|m| m.id() == id)
    }

    /// How a stored value reads to a person: the stage name for sleep stages, a number otherwise.
    pub fn display_value(self, value: f64) -> String {
        match self {
            Metric::SleepStage => SleepStage::from_code(value)
                .map_or_else(|| value.to_string(), |s| s.name().to_owned()),
            _ => value.to_string(),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The metric name was not one of the catalogue's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown metric {0:?}; known metrics: heart_rate, respiratory_rate, body_movement, bed_occupancy, sleep_stage")]
pub struct UnknownMetric(pub String);

impl FromStr for Metric {
    type Err = UnknownMetric;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .iter()
            .copied()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownMetric(s.to_owned()))
    }
}

/// Sleep stages, stored as their code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepStage {
    Awake,
    Light,
    Deep,
    Rem,
}

impl SleepStage {
    pub const ALL: [SleepStage; 4] = [
        SleepStage::Awake,
        SleepStage::Light,
        SleepStage::Deep,
        SleepStage::Rem,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SleepStage::Awake => "awake",
            SleepStage::Light => "light",
            SleepStage::Deep => "deep",
            SleepStage::Rem => "rem",
        }
    }

    pub fn code(self) -> f64 {
        match self {
            SleepStage::Awake => 0.0,
            SleepStage::Light => 1.0,
            SleepStage::Deep => 2.0,
            SleepStage::Rem => 3.0,
        }
    }

    pub fn from_code(code: f64) -> Option<SleepStage> {
        SleepStage::ALL.into_iter().find(|s| s.code() == code)
    }

    pub fn from_name(name: &str) -> Option<SleepStage> {
        SleepStage::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_round_trip() {
        for &m in Metric::ALL {
            assert_eq!(m.name().parse::<Metric>(), Ok(m));
            assert_eq!(Metric::from_id(m.id()), Some(m));
        }
        assert!("pulse".parse::<Metric>().is_err());
    }

    #[test]
    fn sleep_stage_codes_round_trip() {
        for s in SleepStage::ALL {
            assert_eq!(SleepStage::from_code(s.code()), Some(s));
            assert_eq!(SleepStage::from_name(&s.name().to_uppercase()), Some(s));
        }
        assert_eq!(Metric::SleepStage.display_value(2.0), "deep");
    }
}
