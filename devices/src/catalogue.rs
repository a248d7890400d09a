//! The canonical metrics: their names (the interface), LOINC codes, canonical UCUM units,
//! plausible ranges, and the unit conversions vendor payloads need.

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
    Spo2,
    BodyTemperature,
    SystolicBp,
    DiastolicBp,
    PulseRate,
    BodyWeight,
    BodyFat,
    Steps,
    BloodGlucose,
    /// Derived by the hub: minutes in bed in one sleep day (see `ingest::windows`).
    SleepTimeInBed,
    /// Derived: minutes asleep (light, deep or REM) in one sleep day.
    SleepTime,
    /// Derived: sleep time as a share of time in bed.
    SleepEfficiency,
    /// Derived: times the person woke and fell asleep again in one sleep day.
    SleepAwakenings,
    /// Derived: steps in one local calendar day.
    DailySteps,
}

/// What the catalogue says of one metric.
struct Info {
    metric: Metric,
    name: &'static str,
    id: u8,
    loinc: &'static str,
    unit: &'static str,
    plausible: (f64, f64),
    derived: bool,
}

const fn info(
    metric: Metric,
    name: &'static str,
    id: u8,
    loinc: &'static str,
    unit: &'static str,
    plausible: (f64, f64),
) -> Info {
    Info {
        metric,
        name,
        id,
        loinc,
        unit,
        plausible,
        derived: false,
    }
}

impl Info {
    /// Computed by the hub, never sent by a device.
    const fn derived(self) -> Info {
        Info {
            derived: true,
            ..self
        }
    }
}

/// The catalogue, in `Metric` declaration order (checked by a test). Ids are stable: they key
/// series in the stores and the write-ahead log, so a metric's id never changes.
const CATALOGUE: [Info; 19] = [
    info(
        Metric::HeartRate,
        "heart_rate",
        1,
        "8867-4",
        "/min",
        (20.0, 250.0),
    ),
    info(
        Metric::RespiratoryRate,
        "respiratory_rate",
        2,
        "9279-1",
        "/min",
        (2.0, 70.0),
    ),
    info(
        Metric::BodyMovement,
        "body_movement",
        3,
        "local",
        "/min",
        (0.0, 600.0),
    ),
    info(
        Metric::BedOccupancy,
        "bed_occupancy",
        4,
        "local",
        "{bool}",
        (0.0, 1.0),
    ),
    info(
        Metric::SleepStage,
        "sleep_stage",
        5,
        "local",
        "{stage}",
        (0.0, 3.0),
    ),
    info(Metric::Spo2, "spo2", 6, "59408-5", "%", (50.0, 100.0)),
    info(
        Metric::BodyTemperature,
        "body_temperature",
        7,
        "8310-5",
        "Cel",
        (30.0, 45.0),
    ),
    info(
        Metric::SystolicBp,
        "systolic_bp",
        8,
        "8480-6",
        "mm[Hg]",
        (50.0, 280.0),
    ),
    info(
        Metric::DiastolicBp,
        "diastolic_bp",
        9,
        "8462-4",
        "mm[Hg]",
        (20.0, 180.0),
    ),
    info(
        Metric::PulseRate,
        "pulse_rate",
        10,
        "8889-8",
        "/min",
        (20.0, 250.0),
    ),
    info(
        Metric::BodyWeight,
        "body_weight",
        11,
        "29463-7",
        "kg",
        (1.0, 350.0),
    ),
    info(Metric::BodyFat, "body_fat", 12, "41982-0", "%", (2.0, 75.0)),
    info(
        Metric::Steps,
        "steps",
        13,
        "55423-8",
        "{steps}",
        (0.0, 100_000.0),
    ),
    info(
        Metric::BloodGlucose,
        "blood_glucose",
        14,
        "2339-0",
        "mg/dL",
        (10.0, 1_000.0),
    ),
    info(
        Metric::SleepTimeInBed,
        "sleep_time_in_bed",
        15,
        "local",
        "min",
        (0.0, 1_440.0),
    )
    .derived(),
    info(
        Metric::SleepTime,
        "sleep_time",
        16,
        "93832-4",
        "min",
        (0.0, 1_440.0),
    )
    .derived(),
    info(
        Metric::SleepEfficiency,
        "sleep_efficiency",
        17,
        "local",
        "%",
        (0.0, 100.0),
    )
    .derived(),
    info(
        Metric::SleepAwakenings,
        "sleep_awakenings",
        18,
        "local",
        "{count}",
        (0.0, 1_440.0),
    )
    .derived(),
    info(
        Metric::DailySteps,
        "daily_steps",
        19,
        "41950-7",
        "{steps}",
        (0.0, 200_000.0),
    )
    .derived(),
];

impl Metric {
    pub const ALL: &'static [Metric] = &[
        Metric::HeartRate,
        Metric::RespiratoryRate,
        Metric::BodyMovement,
        Metric::BedOccupancy,
        Metric::SleepStage,
        Metric::Spo2,
        Metric::BodyTemperature,
        Metric::SystolicBp,
        Metric::DiastolicBp,
        Metric::PulseRate,
        Metric::BodyWeight,
        Metric::BodyFat,
        Metric::Steps,
        Metric::BloodGlucose,
        Metric::SleepTimeInBed,
        Metric::SleepTime,
        Metric::SleepEfficiency,
        Metric::SleepAwakenings,
        Metric::DailySteps,
    ];

    fn info(self) -> &'static Info {
        &CATALOGUE[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// LOINC code, or `local` where LOINC has none that fits.
    pub fn loinc(self) -> &'static str {
        self.info().loinc
    }

    /// Canonical UCUM unit.
    pub fn unit(self) -> &'static str {
        self.info().unit
    }

    /// Physiologically plausible range of the canonical value (inclusive).
    pub fn plausible(self) -> (f64, f64) {
        self.info().plausible
    }

    /// Stable small number used as the metric's key in stores.
    pub fn id(self) -> u8 {
        self.info().id
    }

    /// Computed by the hub from other observations (a window's summary), never sent by a
    /// device. A derived value is replaced when its window is computed again.
    pub fn is_derived(self) -> bool {
        self.info().derived
    }

    /// A windowed output is computed from this metric: bed occupancy and sleep stages make
    /// sleep summaries, steps make daily totals.
    pub fn feeds_window(self) -> bool {
        matches!(
            self,
            Metric::BedOccupancy | Metric::SleepStage | Metric::Steps
        )
    }

    pub fn from_id(id: u8) -> Option<Metric> {
        CATALOGUE.iter().find(|i| i.id == id).map(|i| i.metric)
    }

    /// How a stored value reads to a person: the stage name for sleep stages, a number otherwise.
    pub fn display_value(self, value: f64) -> String {
        match self {
            Metric::SleepStage => SleepStage::from_code(value)
                .map_or_else(|| value.to_string(), |s| s.name().to_owned()),
            _ => value.to_string(),
        }
    }

    /// Every metric's name, comma-separated, for error messages.
    pub fn names() -> String {
        let names: Vec<&str> = CATALOGUE.iter().map(|i| i.name).collect();
        names.join(", ")
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The metric name was not one of the catalogue's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown metric {0:?}; known metrics: {names}", names = Metric::names())]
pub struct UnknownMetric(pub String);

impl FromStr for Metric {
    type Err = UnknownMetric;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CATALOGUE
            .iter()
            .find(|i| i.name == s)
            .map(|i| i.metric)
            .ok_or_else(|| UnknownMetric(s.to_owned()))
    }
}

/// A linear conversion into a metric's canonical unit: `canonical = raw * scale + offset`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conversion {
    pub scale: f64,
    pub offset: f64,
}

impl Conversion {
    pub const IDENTITY: Conversion = Conversion {
        scale: 1.0,
        offset: 0.0,
    };

    pub fn apply(self, raw: f64) -> f64 {
        raw * self.scale + self.offset
    }

    /// From the canonical unit back to the source unit (simulators, tests).
    pub fn invert(self, canonical: f64) -> f64 {
        (canonical - self.offset) / self.scale
    }
}

/// Grams of glucose per mole: mmol/L × 18.0156 = mg/dL.
const GLUCOSE_MG_PER_MMOL: f64 = 18.0156;

/// Source units kenko converts from, as UCUM codes: for each canonical unit, the other units
/// a vendor may send and how to convert them. Conversions that depend on the substance
/// (mmol/L to mg/dL) name their metric.
const CONVERSIONS: &[(&str, &str, Option<Metric>, Conversion)] = &[
    (
        "[degF]",
        "Cel",
        None,
        Conversion {
            scale: 5.0 / 9.0,
            offset: -32.0 * 5.0 / 9.0,
        },
    ),
    (
        "K",
        "Cel",
        None,
        Conversion {
            scale: 1.0,
            offset: -273.15,
        },
    ),
    (
        "[lb_av]",
        "kg",
        None,
        Conversion {
            scale: 0.453_592_37,
            offset: 0.0,
        },
    ),
    (
        "g",
        "kg",
        None,
        Conversion {
            scale: 0.001,
            offset: 0.0,
        },
    ),
    (
        // 1 kPa = 1000 Pa; 1 mm[Hg] = 133.322387415 Pa.
        "kPa",
        "mm[Hg]",
        None,
        Conversion {
            scale: 1000.0 / 133.322_387_415,
            offset: 0.0,
        },
    ),
    (
        "mmol/L",
        "mg/dL",
        Some(Metric::BloodGlucose),
        Conversion {
            scale: GLUCOSE_MG_PER_MMOL,
            offset: 0.0,
        },
    ),
    (
        "1",
        "%",
        None,
        Conversion {
            scale: 100.0,
            offset: 0.0,
        },
    ),
    (
        "/s",
        "/min",
        None,
        Conversion {
            scale: 60.0,
            offset: 0.0,
        },
    ),
    (
        "s",
        "min",
        None,
        Conversion {
            scale: 1.0 / 60.0,
            offset: 0.0,
        },
    ),
    (
        "h",
        "min",
        None,
        Conversion {
            scale: 60.0,
            offset: 0.0,
        },
    ),
];

/// A unit cannot be converted into a metric's canonical unit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unit {unit:?} cannot be converted to {metric}'s unit {canonical:?}; accepted: {accepted}")]
pub struct UnknownUnit {
    pub metric: Metric,
    pub unit: String,
    pub canonical: &'static str,
    pub accepted: String,
}

/// How to convert `unit` (a UCUM code) into `metric`'s canonical unit.
pub fn conversion(metric: Metric, unit: &str) -> Result<Conversion, UnknownUnit> {
    let canonical = metric.unit();
    if unit == canonical {
        return Ok(Conversion::IDENTITY);
    }
    let applies = |&&(_, to, only, _): &&(&str, &str, Option<Metric>, Conversion)| {
        to == canonical && only.is_none_or(|m| m == metric)
    };
    CONVERSIONS
        .iter()
        .filter(applies)
        .find(|(from, ..)| *from == unit)
        .map(|&(.., c)| c)
        .ok_or_else(|| {
            let mut accepted = vec![canonical];
            accepted.extend(CONVERSIONS.iter().filter(applies).map(|(from, ..)| *from));
            UnknownUnit {
                metric,
                unit: unit.to_owned(),
                canonical,
                accepted: accepted.join(", "),
            }
        })
}

/// Every unit that converts into `metric`'s canonical unit, the canonical unit first.
pub fn units(metric: Metric) -> Vec<&'static str> {
    let mut out = vec![metric.unit()];
    out.extend(
        CONVERSIONS
            .iter()
            .filter(|(_, to, only, _)| *to == metric.unit() && only.is_none_or(|m| m == metric))
            .map(|(from, ..)| *from),
    );
    out
}

/// Sleep stages, stored as their code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

    pub fn is_asleep(self) -> bool {
        self != SleepStage::Awake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_in_declaration_order_with_unique_ids() {
        for (n, &m) in Metric::ALL.iter().enumerate() {
            assert_eq!(CATALOGUE[n].metric, m);
            assert_eq!(m as usize, n);
        }
        let mut ids: Vec<u8> = CATALOGUE.iter().map(|i| i.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), CATALOGUE.len());
    }

    #[test]
    fn names_and_ids_round_trip() {
        for &m in Metric::ALL {
            assert_eq!(m.name().parse::<Metric>(), Ok(m));
            assert_eq!(Metric::from_id(m.id()), Some(m));
            let (low, high) = m.plausible();
            assert!(low < high, "{m}");
        }
        let err = "pulse".parse::<Metric>().expect_err("unknown");
        assert!(err.to_string().contains("blood_glucose"), "{err}");
    }

    #[test]
    fn design_table_codes_and_units() {
        let table = [
            ("heart_rate", "8867-4", "/min"),
            ("respiratory_rate", "9279-1", "/min"),
            ("spo2", "59408-5", "%"),
            ("body_temperature", "8310-5", "Cel"),
            ("systolic_bp", "8480-6", "mm[Hg]"),
            ("diastolic_bp", "8462-4", "mm[Hg]"),
            ("pulse_rate", "8889-8", "/min"),
            ("body_weight", "29463-7", "kg"),
            ("body_fat", "41982-0", "%"),
            ("steps", "55423-8", "{steps}"),
            ("blood_glucose", "2339-0", "mg/dL"),
            ("bed_occupancy", "local", "{bool}"),
            ("body_movement", "local", "/min"),
            ("sleep_stage", "local", "{stage}"),
        ];
        for (name, loinc, unit) in table {
            let m: Metric = name.parse().expect(name);
            assert_eq!((m.loinc(), m.unit()), (loinc, unit), "{name}");
            assert!(!m.is_derived());
        }
    }

    #[test]
    fn known_conversions() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let f = conversion(Metric::BodyTemperature, "[degF]").expect("degF");
        assert!(close(f.apply(98.6), 37.0));
        assert!(close(f.apply(32.0), 0.0));
        let lb = conversion(Metric::BodyWeight, "[lb_av]").expect("lb");
        assert!(close(lb.apply(100.0), 45.359237));
        let kpa = conversion(Metric::SystolicBp, "kPa").expect("kPa");
        assert!((kpa.apply(16.0) - 120.0).abs() < 0.01);
        let glucose = conversion(Metric::BloodGlucose, "mmol/L").expect("mmol/L");
        assert!(close(glucose.apply(5.5), 99.0858));
        let fraction = conversion(Metric::Spo2, "1").expect("fraction");
        assert!(close(fraction.apply(0.97), 97.0));
        assert_eq!(
            conversion(Metric::HeartRate, "/min"),
            Ok(Conversion::IDENTITY)
        );
    }

    #[test]
    fn wrong_units_name_the_accepted_ones() {
        let err = conversion(Metric::BodyTemperature, "[lb_av]").expect_err("lb is no temperature");
        assert!(err.to_string().contains("[degF]"), "{err}");
        // mmol/L is the glucose conversion only.
        assert!(conversion(Metric::BodyWeight, "mmol/L").is_err());
        assert_eq!(units(Metric::BloodGlucose), vec!["mg/dL", "mmol/L"]);
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
