//! Payload profiles: how one vendor's payload maps onto canonical metrics. A profile is
//! configuration, so a new vendor's JSON format needs a `[[profiles]]` entry, not code.
//! The built-in profiles are in `config/profiles.toml`, which doubles as their documentation.
//!
//! Only the syntax is checked here; whether each metric and unit exists is checked against the
//! catalogue when the hub compiles the profiles (`kenko_devices::profile`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, DeviceKind};

/// How a payload is encoded.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// A JSON object mapped by the profile's `fields`.
    #[default]
    Json,
    /// `kenko.telemetry.v1.Telemetry` (proto/), readings in canonical units.
    Protobuf,
}

/// How an event time is written.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// Epoch milliseconds as a number, or RFC 3339 text (a time without offset is in the
    /// device's zone).
    #[default]
    Auto,
    /// Unix epoch milliseconds.
    EpochMs,
    /// Unix epoch seconds (fractions allowed).
    EpochS,
    /// RFC 3339 with an offset, e.g. `2026-11-25T23:10:00+09:00`.
    Rfc3339,
    /// ISO 8601 local wall-clock time without offset, e.g. `2026-11-25T23:10:00`, in the
    /// device's time zone (the hub's default zone unless the device names one).
    Local,
    /// A time of day, `23:59:00` (or `23:59`), on the day the profile's `date` names, in the
    /// device's time zone; a time earlier than the one before it in the same series is on
    /// the next day (a series that crosses midnight).
    TimeOfDay,
}

/// One payload field that carries a reading.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// Canonical metric name, e.g. `body_temperature`.
    pub metric: String,
    /// UCUM code of the unit the vendor sends, e.g. `[degF]`; the metric's canonical unit
    /// when absent.
    #[serde(default)]
    pub unit: Option<String>,
}

/// One vendor payload format.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    /// The name devices refer to (`profile = "..."`).
    pub name: String,
    /// The kind of device this format is for; informational for protobuf, which any kind may use.
    #[serde(default)]
    pub kind: Option<DeviceKind>,
    #[serde(default)]
    pub format: PayloadFormat,
    /// Field of the event time (JSON). In a batched payload, each sample's own time field
    /// of the same name wins over the top-level one.
    #[serde(default = "default_time_field")]
    pub time: String,
    #[serde(default)]
    pub time_format: TimeFormat,
    /// With `time_format = "time_of_day"`: where the day is, as `2026-11-25` (a key of the
    /// top-level object, or a JSON Pointer into it).
    #[serde(default)]
    pub date: Option<String>,
    /// Field of the device's message counter (JSON); none when absent.
    #[serde(default)]
    pub seq: Option<String>,
    /// Field naming the device a reading comes from, read at the top level and in each
    /// sample (a sample's wins): one message of a gateway may carry readings of several
    /// devices registered behind it. Readings without it are the publishing device's.
    #[serde(default)]
    pub device: Option<String>,
    /// Field holding an array of sample objects (a batch sent after an offline period); each
    /// sample has its own time and readings, named as at the top level.
    #[serde(default)]
    pub samples: Option<String>,
    /// Reading fields: payload key → metric and unit.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldConfig>,
    /// Coded measures: an array in the message (or in each sample) whose items each carry a
    /// code that selects the metric through `codes`, a value, and perhaps a power-of-ten
    /// exponent.
    #[serde(default)]
    pub measures: Option<MeasuresConfig>,
    /// Measure codes (as text: `1`, `"bw"`) → metric and the unit the vendor sends.
    #[serde(default)]
    pub codes: BTreeMap<String, FieldConfig>,
    /// A sample payload of the vendor's (a JSON file, relative to the config file): when the
    /// profiles are compiled, each key the profile reads that the sample lacks is warned
    /// about, and `kenko profile test` decodes it when given no payload.
    #[serde(default)]
    pub sample: Option<std::path::PathBuf>,
    /// The sample's text, read with the configuration (not a setting).
    #[serde(skip)]
    pub sample_text: Option<String>,
}

/// Where a profile's coded measures are and how each is read. Keys here, like `time`,
/// `seq`, `samples` and the `fields` keys, are a key of the object they are read in, or a
/// JSON Pointer into it when they start with `/` (`/body/measuregrps`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MeasuresConfig {
    /// The array of measure objects.
    pub path: String,
    /// In each measure: its code, a number or text looked up in `codes`.
    pub code: String,
    /// In each measure: its value, a number.
    pub value: String,
    /// In each measure: the power of ten the value is multiplied by (7150 with exponent
    /// -2 is 71.50); none when absent.
    #[serde(default)]
    pub exponent: Option<String>,
    /// What a code missing from `codes` does to the message.
    #[serde(default)]
    pub unknown: UnknownCodes,
}

/// What a measure whose code a profile does not list does.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownCodes {
    /// The whole message is dead-lettered, naming the code.
    #[default]
    Reject,
    /// The measure is passed over; the rest of the message is read.
    Ignore,
}

/// Whether `key` is a JSON Pointer (RFC 6901) rather than a plain key.
pub fn is_pointer(key: &str) -> bool {
    key.starts_with('/')
}

/// Why `pointer` is not a JSON Pointer: `~` may only stand in `~0` (`~`) and `~1` (`/`).
fn check_pointer(what: &str, pointer: &str) -> Result<(), String> {
    let mut chars = pointer.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "{what} {pointer:?} is not a JSON Pointer: write ~ as ~0 and / inside a key as ~1"
            ));
        }
    }
    Ok(())
}

fn default_time_field() -> String {
    "ts".to_owned()
}

/// The profiles shipped with kenko, as TOML.
pub const BUILTIN_PROFILES: &str = include_str!("../profiles.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    profiles: Vec<ProfileConfig>,
}

/// The built-in profiles.
pub fn builtin_profiles() -> Vec<ProfileConfig> {
    let file: ProfileFile =
        toml::from_str(BUILTIN_PROFILES).expect("config/profiles.toml is checked by a unit test");
    file.profiles
}

/// The built-in profiles followed by the configuration's own, names checked for clashes.
pub fn all_profiles(extra: &[ProfileConfig]) -> Result<Vec<ProfileConfig>, ConfigError> {
    let mut all = builtin_profiles();
    for profile in extra {
        if all.iter().any(|p| p.name == profile.name) {
            return Err(ConfigError::Invalid(format!(
                "profile {:?} is declared twice (or shadows a built-in profile); give it another name",
                profile.name
            )));
        }
        check(profile)?;
        all.push(profile.clone());
    }
    Ok(all)
}

fn check(profile: &ProfileConfig) -> Result<(), ConfigError> {
    let invalid = |m: String| {
        Err(ConfigError::Invalid(format!(
            "profile {:?}: {m}",
            profile.name
        )))
    };
    if profile.name.is_empty() || profile.name.chars().any(|c| c.is_whitespace()) {
        return invalid("a profile name must be non-empty, without spaces".into());
    }
    match profile.format {
        PayloadFormat::Json if profile.fields.is_empty() && profile.measures.is_none() => {
            invalid("a JSON profile needs at least one entry in `fields`, or `measures`".into())
        }
        PayloadFormat::Protobuf
            if !profile.fields.is_empty()
                || profile.samples.is_some()
                || profile.device.is_some()
                || profile.measures.is_some()
                || !profile.codes.is_empty()
                || profile.date.is_some()
                || profile.time_format == TimeFormat::TimeOfDay =>
        {
            invalid(
                "a protobuf profile takes no `fields`, `samples`, `device`, `measures`, `codes`, `date` or time format: the schema is fixed"
                    .into(),
            )
        }
        PayloadFormat::Json => {
            check_paths(profile).or_else(invalid)?;
            if let Some(device) = &profile.device {
                let others = [Some(&profile.time), profile.seq.as_ref(), profile.samples.as_ref(), profile.date.as_ref()];
                if others.contains(&Some(device)) {
                    return invalid(format!(
                        "device {device:?} is also the time, seq, samples or date field"
                    ));
                }
            }
            check_date(profile).or_else(invalid)?;
            check_measures(profile).or_else(invalid)?;
            let reserved = [
                Some(&profile.time),
                profile.seq.as_ref(),
                profile.samples.as_ref(),
                profile.device.as_ref(),
            ];
            for key in profile.fields.keys() {
                if reserved.contains(&Some(key)) {
                    return invalid(format!(
                        "field {key:?} is also the time, seq, samples or device field"
                    ));
                }
            }
            Ok(())
        }
        PayloadFormat::Protobuf => Ok(()),
    }
}

/// Every key of the profile that is a JSON Pointer is a well-formed one.
fn check_paths(profile: &ProfileConfig) -> Result<(), String> {
    let mut keys: Vec<(&str, &String)> = vec![("time", &profile.time)];
    keys.extend(profile.seq.iter().map(|k| ("seq", k)));
    keys.extend(profile.samples.iter().map(|k| ("samples", k)));
    keys.extend(profile.device.iter().map(|k| ("device", k)));
    keys.extend(profile.date.iter().map(|k| ("date", k)));
    keys.extend(profile.fields.keys().map(|k| ("field", k)));
    if let Some(m) = &profile.measures {
        keys.extend([
            ("measures.path", &m.path),
            ("measures.code", &m.code),
            ("measures.value", &m.value),
        ]);
        keys.extend(m.exponent.iter().map(|k| ("measures.exponent", k)));
    }
    for (what, key) in keys {
        if key.is_empty() {
            return Err(format!("{what} is empty"));
        }
        if is_pointer(key) {
            check_pointer(what, key)?;
        }
    }
    Ok(())
}

/// A time of day comes with the `date` it is on, and a `date` only with times of day.
fn check_date(profile: &ProfileConfig) -> Result<(), String> {
    match (profile.time_format, &profile.date) {
        (TimeFormat::TimeOfDay, None) => {
            Err("time_format = \"time_of_day\" needs `date`: where the payload says the day".into())
        }
        (TimeFormat::TimeOfDay, Some(_)) | (_, None) => Ok(()),
        (_, Some(_)) => Err("`date` is read only with time_format = \"time_of_day\"".into()),
    }
}

/// `measures` and `codes` come together, and a measure's parts are distinct keys.
fn check_measures(profile: &ProfileConfig) -> Result<(), String> {
    match (&profile.measures, profile.codes.is_empty()) {
        (None, true) => Ok(()),
        (None, false) => Err("`codes` are read only with `measures`".into()),
        (Some(_), true) => Err("`measures` needs `codes`: each code's metric and unit".into()),
        (Some(m), false) => {
            if profile.samples.as_ref() == Some(&m.path) {
                return Err(
                    "measures.path is also `samples`: the measures are read in each sample (or at the top level), so give the path within it".into(),
                );
            }
            let parts = [Some(&m.code), Some(&m.value), m.exponent.as_ref()];
            let distinct: std::collections::HashSet<_> = parts.iter().flatten().collect();
            if distinct.len() != parts.iter().flatten().count() {
                return Err("measures.code, value and exponent must be different keys".into());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups_profile() -> ProfileConfig {
        toml::from_str(
            r#"
name = "acme-scale-groups"
kind = "scale"
time = "date"
time_format = "epoch_s"
samples = "/body/measuregrps"
[measures]
path = "measures"
code = "type"
value = "value"
exponent = "unit"
[codes]
1 = { metric = "body_weight", unit = "kg" }
"#,
        )
        .expect("profile")
    }

    #[test]
    fn a_time_of_day_needs_its_date() {
        let mut profile = groups_profile();
        profile.time_format = TimeFormat::TimeOfDay;
        let err = check(&profile).expect_err("no date").to_string();
        assert!(err.contains("needs `date`"), "{err}");
        profile.date = Some("/activities/0/dateTime".into());
        check(&profile).expect("valid");
        profile.time_format = TimeFormat::EpochS;
        let err = check(&profile).expect_err("date alone").to_string();
        assert!(err.contains("only with time_format"), "{err}");
    }

    #[test]
    fn coded_measures_and_pointers_are_checked() {
        check(&groups_profile()).expect("valid");
        let mut bad = groups_profile();
        bad.samples = Some("/body/~2".into());
        let err = check(&bad).expect_err("bad pointer").to_string();
        assert!(err.contains("not a JSON Pointer"), "{err}");
        let mut bad = groups_profile();
        bad.codes.clear();
        let err = check(&bad).expect_err("no codes").to_string();
        assert!(err.contains("needs `codes`"), "{err}");
        let mut bad = groups_profile();
        if let Some(m) = bad.measures.as_mut() {
            m.exponent = Some("value".into());
        }
        let err = check(&bad).expect_err("same key").to_string();
        assert!(err.contains("different keys"), "{err}");
        let mut bad = groups_profile();
        if let Some(m) = bad.measures.as_mut() {
            m.path = "/body/measuregrps".into();
        }
        let err = check(&bad).expect_err("path is samples").to_string();
        assert!(err.contains("also `samples`"), "{err}");
        let mut bad = groups_profile();
        bad.format = PayloadFormat::Protobuf;
        bad.fields.clear();
        bad.samples = None;
        bad.measures = None;
        let err = check(&bad).expect_err("codes on protobuf").to_string();
        assert!(err.contains("protobuf profile takes no"), "{err}");
        let mut bad = groups_profile();
        bad.device = Some("date".into());
        let err = check(&bad).expect_err("device is the time").to_string();
        assert!(err.contains("device \"date\" is also the time"), "{err}");
        let mut bad = groups_profile();
        bad.measures = None;
        let err = check(&bad).expect_err("codes alone").to_string();
        assert!(err.contains("at least one entry"), "{err}");
    }

    #[test]
    fn builtin_profiles_parse_and_pass_the_checks() {
        let all = builtin_profiles();
        assert!(all.len() >= 10, "{}", all.len());
        for profile in &all {
            check(profile).expect(&profile.name);
        }
        let names: std::collections::HashSet<_> = all.iter().map(|p| &p.name).collect();
        assert_eq!(names.len(), all.len(), "names are unique");
        for kind in DeviceKind::ALL {
            assert!(
                names.contains(&kind.default_profile().to_owned()),
                "{kind}'s default profile is built in"
            );
        }
    }

    #[test]
    fn a_config_profile_may_not_shadow_a_builtin() {
        let mut profile = builtin_profiles().remove(0);
        let err = all_profiles(std::slice::from_ref(&profile)).expect_err("clash");
        assert!(err.to_string().contains("declared twice"), "{err}");
        profile.name = "acme-bed-v7".into();
        let all = all_profiles(&[profile]).expect("new name");
        assert_eq!(all.last().map(|p| p.name.as_str()), Some("acme-bed-v7"));
    }

    #[test]
    fn field_names_may_not_double_as_time_or_seq() {
        let mut profile = builtin_profiles().remove(0);
        profile.name = "x".into();
        profile.fields.insert(
            profile.time.clone(),
            FieldConfig {
                metric: "heart_rate".into(),
                unit: None,
            },
        );
        let err = all_profiles(&[profile]).expect_err("reserved");
        assert!(err.to_string().contains("also the time"), "{err}");
    }
}
