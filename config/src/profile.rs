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
    /// Field of the device's message counter (JSON); none when absent.
    #[serde(default)]
    pub seq: Option<String>,
    /// Field holding an array of sample objects (a batch sent after an offline period); each
    /// sample has its own time and readings, named as at the top level.
    #[serde(default)]
    pub samples: Option<String>,
    /// Reading fields: payload key → metric and unit.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldConfig>,
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
        PayloadFormat::Json if profile.fields.is_empty() => {
            invalid("a JSON profile needs at least one entry in `fields`".into())
        }
        PayloadFormat::Protobuf if !profile.fields.is_empty() || profile.samples.is_some() => {
            invalid("a protobuf profile takes no `fields` or `samples`: the schema is fixed".into())
        }
        _ => {
            let reserved = [
                Some(&profile.time),
                profile.seq.as_ref(),
                profile.samples.as_ref(),
            ];
            for key in profile.fields.keys() {
                if reserved.contains(&Some(key)) {
                    return invalid(format!(
                        "field {key:?} is also the time, seq or samples field"
                    ));
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
