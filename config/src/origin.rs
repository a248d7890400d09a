//! Where a configuration's entries are in its file: the line of each `[[principals]]` and
//! `[[devices]]` entry and of each time zone, so that an error found after parsing (a bad
//! role, a duplicate id, an unknown zone, a hash the broker cannot use) names file:line.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// Lines (from 1) of a config file's entries; empty for a configuration built in code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    path: Option<PathBuf>,
    principals: Vec<usize>,
    devices: Vec<usize>,
    device_timezones: Vec<Option<usize>>,
    default_timezone: Option<usize>,
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
}

/// Only what carries a position; everything else in the file is ignored here.
#[derive(Deserialize, Default)]
struct Positions {
    #[serde(default)]
    principals: Vec<Spanned<toml::Table>>,
    #[serde(default)]
    devices: Vec<Spanned<DevicePositions>>,
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
        Origin {
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
        };
        Some(match line {
            Some(line) => format!("{path}:{line}"),
            None => path,
        })
    }
}
