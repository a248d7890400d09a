//! Where a configuration's entries are in its file: the line of each `[[principals]]` and
//! `[[devices]]` entry, of each time zone and of each setting, so that an error found after
//! parsing (a bad role, a duplicate id, an unknown zone, a hash the broker cannot use, a
//! setting out of range) names file:line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// Lines (from 1) of a config file's entries; empty for a configuration built in code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    path: Option<PathBuf>,
    principals: Vec<usize>,
    devices: Vec<usize>,
    alerts: Vec<usize>,
    device_timezones: Vec<Option<usize>>,
    default_timezone: Option<usize>,
    /// Sections and their settings by dotted name ("mqtt", "mqtt.max_inflight").
    settings: HashMap<String, usize>,
}

/// An entry of the configuration an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The n-th `[[principals]]` entry.
    Principal(usize),
    /// The n-th `[[devices]]` entry.
    Device(usize),
    /// The `timezone` of the n-th device (the entry's line when it has none).
    DeviceTimezone(usize),
    /// `ingest.default_timezone`.
    DefaultTimezone,
    /// The n-th `[[alerts]]` entry.
    Alert(usize),
}

/// Only what carries a position; everything else in the file is ignored here.
#[derive(Deserialize, Default)]
struct Positions {
    #[serde(default)]
    principals: Vec<Spanned<toml::Table>>,
    #[serde(default)]
    devices: Vec<Spanned<DevicePositions>>,
    #[serde(default)]
    alerts: Vec<Spanned<toml::Table>>,
    #[serde(default)]
    ingest: Option<IngestPositions>,
}

#[derive(Deserialize)]
struct DevicePositions {
    #[serde(default)]
    timezone: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
struct IngestPositions {
    #[serde(default)]
    default_timezone: Option<Spanned<toml::Value>>,
}

impl Origin {
    /// The positions of `text`, the contents of `path` (already parsed once as a `Config`,
    /// so it is valid TOML).
    pub(crate) fn of(text: &str, path: &Path) -> Origin {
        let positions: Positions = toml::from_str(text).unwrap_or_default();
        let line = |offset: usize| crate::line_column(text, offset).0;
        let mut settings = HashMap::new();
        if let Ok(document) = toml::de::DeTable::parse(text) {
            collect_settings(document.get_ref(), "", text, &mut settings);
        }
        Origin {
            settings,
            path: Some(path.to_owned()),
            principals: positions
                .principals
                .iter()
                .map(|p| line(p.span().start))
                .collect(),
            devices: positions
                .devices
                .iter()
                .map(|d| line(d.span().start))
                .collect(),
            alerts: positions
                .alerts
                .iter()
                .map(|a| line(a.span().start))
                .collect(),
            device_timezones: positions
                .devices
                .iter()
                .map(|d| d.get_ref().timezone.as_ref().map(|t| line(t.span().start)))
                .collect(),
            default_timezone: positions
                .ingest
                .and_then(|i| i.default_timezone)
                .map(|t| line(t.span().start)),
        }
    }

    /// "file:line" of `entry`; just the file when the line is not known, `None` for a
    /// configuration that comes from no file.
    pub fn place(&self, entry: Entry) -> Option<String> {
        let path = self.path.as_ref()?.display().to_string();
        let line = match entry {
            Entry::Principal(n) => self.principals.get(n).copied(),
            Entry::Device(n) => self.devices.get(n).copied(),
            Entry::DeviceTimezone(n) => self
                .device_timezones
                .get(n)
                .copied()
                .flatten()
                .or_else(|| self.devices.get(n).copied()),
            Entry::DefaultTimezone => self.default_timezone,
            Entry::Alert(n) => self.alerts.get(n).copied(),
        };
        Some(at(path, line))
    }

    /// "file:line" of a setting by its dotted name (`mqtt.max_inflight`), else of the nearest
    /// section that holds it, else just the file; `None` for a configuration from no file.
    pub fn setting_place(&self, name: &str) -> Option<String> {
        let path = self.path.as_ref()?.display().to_string();
        Some(at(path, self.setting(name)))
    }
}

fn at(path: String, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{path}:{line}"),
        None => path,
    }
}

impl Origin {
    /// The line of a setting, or of the nearest section that holds it.
    fn setting(&self, name: &str) -> Option<usize> {
        let mut name = name;
        loop {
            if let Some(line) = self.settings.get(name) {
                return Some(*line);
            }
            name = &name[..name.rfind('.')?];
        }
    }
}

/// Notes the line of every section and setting of `table` under `prefix`; arrays of tables
/// are entries (principals, devices, profiles), placed by [`Origin::of`] instead.
fn collect_settings(
    table: &toml::de::DeTable<'_>,
    prefix: &str,
    text: &str,
    out: &mut HashMap<String, usize>,
) {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        out.insert(name.clone(), crate::line_column(text, key.span().start).0);
        if let toml::de::DeValue::Table(inner) = value.get_ref() {
            collect_settings(inner, &name, text, out);
        }
    }
}
