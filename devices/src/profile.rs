//! Payload profiles checked against the catalogue: each field's metric exists and its unit
//! converts to the metric's canonical unit. The ingest decoder runs these; simulators use
//! them to write payloads in each vendor's format.

use std::collections::HashMap;
use std::sync::Arc;

use kenko_config::{
    DeviceKind, FieldConfig, PayloadFormat, ProfileConfig, TimeFormat, UnknownCodes,
};

use crate::catalogue::{conversion, Conversion, Metric};

/// One reading field of a JSON profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub key: Box<str>,
    pub metric: Metric,
    /// The vendor's unit (UCUM) and how to convert it.
    pub unit: Box<str>,
    pub conversion: Conversion,
}

/// A profile ready to decode with.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: Box<str>,
    pub kind: Option<DeviceKind>,
    pub format: PayloadFormat,
    pub time: Box<str>,
    pub time_format: TimeFormat,
    /// Where the day of `TimeFormat::TimeOfDay` times is.
    pub date: Option<Box<str>>,
    pub seq: Option<Box<str>>,
    pub samples: Option<Box<str>>,
    /// Where a reading names its device, for a gateway's payloads.
    pub device: Option<Box<str>>,
    pub fields: Vec<Field>,
    /// Coded measures, when the profile reads them.
    pub measures: Option<Measures>,
    /// Whether a payload is read as a whole document (JSON Pointers, coded measures, times
    /// of day on a `date`, devices named in it) rather than streamed key by key; decided once, when compiled.
    pub document: bool,
}

/// Where a profile's coded measures are, how each is read, and the metric of each code.
#[derive(Debug, Clone, PartialEq)]
pub struct Measures {
    pub path: Box<str>,
    pub code: Box<str>,
    pub value: Box<str>,
    pub exponent: Option<Box<str>>,
    pub unknown: UnknownCodes,
    /// Each code and its reading, the reading's key naming it in reasons
    /// (`measures code 1`).
    pub codes: Vec<(Box<str>, Field)>,
}

impl Measures {
    pub fn code(&self, code: &str) -> Option<&Field> {
        self.codes
            .iter()
            .find(|(c, _)| &**c == code)
            .map(|(_, field)| field)
    }
}

impl Profile {
    pub fn field(&self, key: &str) -> Option<&Field> {
        self.fields.iter().find(|f| &*f.key == key)
    }

    /// The field that carries `metric`, if this profile has one.
    pub fn field_for(&self, metric: Metric) -> Option<&Field> {
        self.fields.iter().find(|f| f.metric == metric)
    }
}

/// A profile names a metric or unit the catalogue does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("profile {profile:?}, field {field:?}: {message}")]
pub struct ProfileError {
    pub profile: String,
    pub field: String,
    pub message: String,
}

/// The profiles by name. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Profiles {
    by_name: Arc<HashMap<Box<str>, Arc<Profile>>>,
}

impl Profiles {
    /// Checks and compiles profiles (built-in ones first, see `kenko_config::profile`).
    pub fn compile(configs: &[ProfileConfig]) -> Result<Profiles, ProfileError> {
        let mut by_name = HashMap::new();
        for config in configs {
            let profile = compile_one(config)?;
            by_name.insert(profile.name.clone(), Arc::new(profile));
        }
        Ok(Profiles {
            by_name: Arc::new(by_name),
        })
    }

    /// The built-in profiles only.
    pub fn builtin() -> Profiles {
        Profiles::compile(&kenko_config::profile::builtin_profiles())
            .expect("built-in profiles are checked by a unit test")
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Profile>> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Profile>> {
        self.by_name.values()
    }
}

/// Keys of a profile that read like paths into nested objects (`body.hr`, `/body/hr`,
/// `readings[0]`): a key is matched against a top-level (or sample-level) key spelled
/// exactly so, so such a key most likely never matches. One line each, for a warning.
pub fn path_like_keys(config: &ProfileConfig) -> Vec<String> {
    let measures = config.measures.as_ref();
    let named = [
        ("time", Some(&config.time)),
        ("seq", config.seq.as_ref()),
        ("samples", config.samples.as_ref()),
        ("date", config.date.as_ref()),
        ("measures.path", measures.map(|m| &m.path)),
        ("measures.code", measures.map(|m| &m.code)),
        ("measures.value", measures.map(|m| &m.value)),
        (
            "measures.exponent",
            measures.and_then(|m| m.exponent.as_ref()),
        ),
    ];
    let keys = named
        .into_iter()
        .filter_map(|(what, key)| key.map(|k| (what.to_owned(), k)))
        .chain(config.fields.keys().map(|k| ("field".to_owned(), k)));
    keys.filter(|(_, key)| {
        !kenko_config::profile::is_pointer(key) && key.contains(['.', '/', '['])
    })
        .map(|(what, key)| {
            format!(
                "profile {}: {what} key {key:?} is matched as one key spelled exactly so, not as a path into nested objects; write a JSON Pointer (/body/hr) to read a nested value",
                config.name
            )
        })
        .collect()
}

/// Keys of the profile that its sample payload (`sample`) has nowhere they are read: one
/// line each, for a warning (a key spelled differently from the vendor's, a pointer one
/// level off). Empty without a sample.
pub fn unmatched_keys(config: &ProfileConfig) -> Vec<String> {
    let Some(text) = &config.sample_text else {
        return Vec::new();
    };
    let name = &config.name;
    let sample = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(sample) => sample,
        Err(e) => {
            return vec![format!(
                "profile {name}: its sample payload is not JSON: {e}"
            )]
        }
    };
    let find = |object: &serde_json::Value, key: &str| {
        if kenko_config::profile::is_pointer(key) {
            object.pointer(key).is_some()
        } else {
            object.get(key).is_some()
        }
    };
    let top = std::slice::from_ref(&sample);
    let samples: Vec<serde_json::Value> = config
        .samples
        .as_deref()
        .and_then(|key| {
            if kenko_config::profile::is_pointer(key) {
                sample.pointer(key)
            } else {
                sample.get(key)
            }
        })
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    // Keys that may stand in a sample are looked for only where the samples are: when the
    // sample payload has none where the profile says, that one key is told, not all below.
    let samples_missing = config.samples.is_some() && samples.is_empty();
    let anywhere: Vec<&serde_json::Value> = if samples_missing {
        Vec::new()
    } else {
        top.iter().chain(&samples).collect()
    };
    let mut wanted: Vec<(&str, &str, Vec<&serde_json::Value>)> = Vec::new();
    wanted.push(("time", &config.time, anywhere.clone()));
    if let Some(seq) = &config.seq {
        wanted.push(("seq", seq, top.iter().collect()));
    }
    if let Some(date) = &config.date {
        wanted.push(("date", date, top.iter().collect()));
    }
    if let Some(key) = &config.samples {
        wanted.push(("samples", key, top.iter().collect()));
    }
    if let Some(device) = &config.device {
        wanted.push(("device", device, anywhere.clone()));
    }
    for key in config.fields.keys() {
        wanted.push(("field", key, anywhere.clone()));
    }
    let mut items = Vec::new();
    if let Some(m) = &config.measures {
        wanted.push(("measures.path", &m.path, anywhere.clone()));
        for object in &anywhere {
            let array = if kenko_config::profile::is_pointer(&m.path) {
                object.pointer(&m.path)
            } else {
                object.get(&m.path)
            };
            items.extend(array.and_then(|a| a.as_array()).into_iter().flatten());
        }
        wanted.push(("measures.code", &m.code, items.clone()));
        wanted.push(("measures.value", &m.value, items.clone()));
        if let Some(exponent) = &m.exponent {
            wanted.push(("measures.exponent", exponent, items.clone()));
        }
    }
    wanted
        .into_iter()
        .filter(|(_, _, scope)| !scope.is_empty())
        .filter(|(_, key, scope)| !scope.iter().any(|object| find(object, key)))
        .map(|(what, key, _)| {
            format!("profile {name}: {what} {key:?} is nowhere in its sample payload, so a payload shaped like it gives nothing there; check the spelling and the nesting")
        })
        .collect()
}

fn compile_one(config: &ProfileConfig) -> Result<Profile, ProfileError> {
    for warning in path_like_keys(config)
        .into_iter()
        .chain(unmatched_keys(config))
    {
        tracing::warn!("{warning}");
    }
    let fields = config
        .fields
        .iter()
        .map(|(key, field)| compile_field(config, key, field))
        .collect::<Result<Vec<_>, _>>()?;
    let measures = match &config.measures {
        Some(m) => Some(Measures {
            path: m.path.as_str().into(),
            code: m.code.as_str().into(),
            value: m.value.as_str().into(),
            exponent: m.exponent.as_deref().map(Into::into),
            unknown: m.unknown,
            codes: config
                .codes
                .iter()
                .map(|(code, field)| {
                    let reading = compile_field(config, &format!("measures code {code}"), field)?;
                    Ok((code.as_str().into(), reading))
                })
                .collect::<Result<Vec<_>, _>>()?,
        }),
        None => None,
    };
    let pointer = |k: &str| kenko_config::profile::is_pointer(k);
    let document = config.measures.is_some()
        || config.date.is_some()
        || config.device.is_some()
        || pointer(&config.time)
        || config.seq.as_deref().is_some_and(pointer)
        || config.samples.as_deref().is_some_and(pointer)
        || config.fields.keys().any(|k| pointer(k));
    Ok(Profile {
        document,
        name: config.name.as_str().into(),
        kind: config.kind,
        format: config.format,
        time: config.time.as_str().into(),
        time_format: config.time_format,
        date: config.date.as_deref().map(Into::into),
        seq: config.seq.as_deref().map(Into::into),
        samples: config.samples.as_deref().map(Into::into),
        device: config.device.as_deref().map(Into::into),
        fields,
        measures,
    })
}

/// A reading's metric and unit checked against the catalogue (`key` names it in errors).
fn compile_field(
    config: &ProfileConfig,
    key: &str,
    field: &FieldConfig,
) -> Result<Field, ProfileError> {
    let error = |message: String| ProfileError {
        profile: config.name.clone(),
        field: key.to_owned(),
        message,
    };
    let metric: Metric = field.metric.parse().map_err(|e| error(format!("{e}")))?;
    if metric.is_derived() {
        return Err(error(format!(
            "{metric} is computed by the hub and cannot come from a device"
        )));
    }
    let unit = field.unit.as_deref().unwrap_or(metric.unit());
    let conversion = conversion(metric, unit).map_err(|e| error(e.to_string()))?;
    Ok(Field {
        key: key.into(),
        metric,
        unit: unit.into(),
        conversion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kenko_config::FieldConfig;

    #[test]
    fn keys_a_sample_payload_lacks_are_told() {
        let mut config = kenko_config::Config::from_toml(
            r#"
[[profiles]]
name = "acme-scale-groups"
kind = "scale"
time = "date"
time_format = "epoch_s"
samples = "/body/measuregrps"
[profiles.measures]
path = "measures"
code = "type"
value = "value"
exponent = "unit"
[profiles.codes]
1 = { metric = "body_weight", unit = "kg" }
"#,
            std::path::Path::new("kenko.toml"),
        )
        .expect("profile")
        .profiles
        .remove(0);
        assert!(
            unmatched_keys(&config).is_empty(),
            "no sample, nothing to tell"
        );
        config.sample_text = Some(
            r#"{"body":{"measuregrps":[{"date":1,"measures":[{"value":7150,"type":1,"unit":-2}]}]}}"#
                .into(),
        );
        assert_eq!(unmatched_keys(&config), Vec::<String>::new());
        config.samples = Some("/body/groups".into());
        if let Some(m) = config.measures.as_mut() {
            m.exponent = Some("exp".into());
        }
        let told = unmatched_keys(&config);
        assert_eq!(
            told.len(),
            1,
            "what lies below the samples is not told: {told:?}"
        );
        assert!(
            told[0].contains("samples \"/body/groups\" is nowhere"),
            "{told:?}"
        );
        config.samples = Some("/body/measuregrps".into());
        let told = unmatched_keys(&config);
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(told[0].contains("measures.exponent \"exp\""), "{told:?}");
        config.sample_text = Some("{not json".into());
        assert!(unmatched_keys(&config)[0].contains("is not JSON"));
    }

    #[test]
    fn keys_that_read_like_paths_are_told() {
        let mut config = kenko_config::profile::builtin_profiles()
            .into_iter()
            .find(|p| p.name == "bed-json-v1")
            .expect("built in");
        assert!(path_like_keys(&config).is_empty());
        config.fields.insert(
            "body.hr".into(),
            FieldConfig {
                metric: "heart_rate".into(),
                unit: None,
            },
        );
        config.samples = Some("data.records".into());
        config.seq = Some("/meta/n".into());
        let warnings = path_like_keys(&config);
        assert_eq!(warnings.len(), 2, "a pointer is no warning: {warnings:?}");
        assert!(
            warnings[0].contains("samples key \"data.records\""),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("field key \"body.hr\""),
            "{warnings:?}"
        );
    }

    #[test]
    fn builtin_profiles_compile_and_cover_every_device_metric() {
        let profiles = Profiles::builtin();
        for kind in DeviceKind::ALL {
            let profile = profiles.get(kind.default_profile()).expect("default");
            assert_eq!(profile.kind, Some(kind));
        }
        for &metric in Metric::ALL.iter().filter(|m| !m.is_derived()) {
            assert!(
                profiles.iter().any(|p| p.field_for(metric).is_some()),
                "no built-in profile carries {metric}"
            );
        }
    }

    #[test]
    fn unknown_metrics_and_units_are_named() {
        let mut config = kenko_config::profile::builtin_profiles().remove(0);
        config.fields.insert(
            "temp".into(),
            FieldConfig {
                metric: "body_temperature".into(),
                unit: Some("[lb_av]".into()),
            },
        );
        let err = Profiles::compile(&[config.clone()]).expect_err("bad unit");
        assert!(err.to_string().contains("\"temp\""), "{err}");
        assert!(err.to_string().contains("[degF]"), "{err}");
        config.fields.insert(
            "temp".into(),
            FieldConfig {
                metric: "core_temperature".into(),
                unit: None,
            },
        );
        let err = Profiles::compile(&[config.clone()]).expect_err("bad metric");
        assert!(err.to_string().contains("unknown metric"), "{err}");
        config.fields.insert(
            "temp".into(),
            FieldConfig {
                metric: "daily_steps".into(),
                unit: None,
            },
        );
        let err = Profiles::compile(&[config]).expect_err("derived");
        assert!(err.to_string().contains("computed by the hub"), "{err}");
    }
}
