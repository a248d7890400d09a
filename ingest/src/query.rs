//! Queries over stored observations and how their results are printed.

use std::io::Write;
use std::str::FromStr;

use kenko_devices::Metric;

/// A query for one metric, optionally narrowed and bucketed.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub metric: Metric,
    pub citizen: Option<String>,
    pub device: Option<String>,
    /// Inclusive start, epoch ms.
    pub from_ms: Option<i64>,
    /// Exclusive end, epoch ms.
    pub to_ms: Option<i64>,
    /// Bucket width; rows become aggregates per (citizen, device, bucket).
    pub every_ms: Option<i64>,
    pub agg: Agg,
    pub limit: Option<usize>,
    /// With `every_ms`: one aggregate per bucket over every series the query selects (all
    /// citizens of the metric, say), not one per citizen and device.
    pub across: bool,
    /// Where a page of the answer starts (the answer's order is time, citizen, device).
    pub resume: Option<Resume>,
}

/// Rows after this (time, citizen, device) in an answer's order, or at it and after when
/// `inclusive` (a page that stopped between metrics of one time, citizen and device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub time_ms: i64,
    pub citizen: String,
    pub device: String,
    pub inclusive: bool,
}

impl Query {
    /// Every stored observation of `metric`, raw.
    pub fn new(metric: Metric) -> Query {
        Query {
            metric,
            citizen: None,
            device: None,
            from_ms: None,
            to_ms: None,
            every_ms: None,
            agg: Agg::Mean,
            limit: None,
            across: false,
            resume: None,
        }
    }
}

/// One result row: an observation, or a bucket's aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub time_ms: i64,
    pub citizen: String,
    pub device: String,
    pub metric: Metric,
    pub value: f64,
    pub unit: String,
    pub aggregated: bool,
    /// The observation's flags (`observation::flags`); 0 for an aggregate.
    pub flags: u32,
}

/// A query argument that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("cannot read time {0:?}; use RFC 3339 (2026-11-25T09:00:00+09:00), `now`, or a relative time such as -15m, -2h, -7d")]
    Time(String),
    #[error("cannot read duration {0:?}; use a positive number with s, m, h or d, such as 30s, 1m, 1h, 1d")]
    Duration(String),
    #[error("unknown aggregate {0:?}; use mean, min, max or count, or across citizens also citizens, median or a percentile p1 to p99 (p90)")]
    Agg(String),
    #[error("unknown format {0:?}; use table, csv or json")]
    Format(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Mean,
    Min,
    Max,
    Count,
    /// Across citizens only: how many citizens have readings in the bucket.
    Citizens,
    /// Across citizens only: this percentile (1 to 99) of the citizens' means in the bucket
    /// (each citizen counts once, however many readings or devices they have).
    Percentile(u8),
}

impl Agg {
    /// Only meaningful over several citizens' series (`Query::across`).
    pub fn needs_across(self) -> bool {
        matches!(self, Agg::Citizens | Agg::Percentile(_))
    }
}

impl std::fmt::Display for Agg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Agg::Mean => f.write_str("mean"),
            Agg::Min => f.write_str("min"),
            Agg::Max => f.write_str("max"),
            Agg::Count => f.write_str("count"),
            Agg::Citizens => f.write_str("citizens"),
            Agg::Percentile(p) => write!(f, "p{p}"),
        }
    }
}

impl FromStr for Agg {
    type Err = QueryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mean" | "avg" => Ok(Agg::Mean),
            "min" => Ok(Agg::Min),
            "max" => Ok(Agg::Max),
            "count" => Ok(Agg::Count),
            "citizens" => Ok(Agg::Citizens),
            "median" => Ok(Agg::Percentile(50)),
            other => other
                .strip_prefix('p')
                .and_then(|n| n.parse::<u8>().ok())
                .filter(|n| (1..=99).contains(n))
                .map(Agg::Percentile)
                .ok_or_else(|| QueryError::Agg(other.to_owned())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
}

impl FromStr for Format {
    type Err = QueryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            other => Err(QueryError::Format(other.to_owned())),
        }
    }
}

/// Parses an absolute or relative time into epoch ms.
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64, QueryError> {
    let s = s.trim();
    if s == "now" {
        return Ok(now_ms);
    }
    if let Some(rel) = s.strip_prefix('-') {
        let span = parse_duration(rel).map_err(|_| QueryError::Time(s.to_owned()))?;
        return Ok(now_ms.saturating_sub(span));
    }
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| QueryError::Time(s.to_owned()))
}

/// Parses `30s`, `1m`, `15m`, `1h`, `1d` into milliseconds.
pub fn parse_duration(s: &str) -> Result<i64, QueryError> {
    let err = || QueryError::Duration(s.to_owned());
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (number, unit) = s.split_at(split);
    let n: i64 = number.parse().map_err(|_| err())?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(err()),
    };
    match n.checked_mul(unit_ms) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(err()),
    }
}

/// RFC 3339 in UTC, with milliseconds only when there are any.
pub fn format_time(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) if ms % 1000 == 0 => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        Err(_) => ms.to_string(),
    }
}

impl Row {
    /// The value as a person reads it: sleep stages by name in raw rows.
    fn value_text(&self) -> String {
        if self.aggregated {
            self.value.to_string()
        } else {
            self.metric.display_value(self.value)
        }
    }

    /// For people: aggregates to three decimals at most.
    fn value_short(&self) -> String {
        if self.aggregated {
            let text = format!("{:.3}", self.value);
            text.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            self.value_text()
        }
    }

    /// Whether the observation lies outside its metric's physiological bounds; `None` for
    /// an aggregate.
    pub fn implausible(&self) -> Option<bool> {
        (!self.aggregated).then_some(self.flags & crate::observation::flags::IMPLAUSIBLE != 0)
    }

    fn implausible_text(&self) -> &'static str {
        match self.implausible() {
            Some(true) => "true",
            Some(false) => "false",
            None => "",
        }
    }

    fn value_json(&self) -> serde_json::Value {
        if !self.aggregated && self.metric == Metric::SleepStage {
            serde_json::Value::String(self.metric.display_value(self.value))
        } else {
            serde_json::json!(self.value)
        }
    }
}

/// The first line of a CSV answer.
pub const CSV_HEADER: &str = "time,citizen,device,metric,value,unit,loinc,implausible";

/// Rows as CSV lines, without the header: for answers written a page at a time.
pub fn render_csv_rows(rows: &[Row], out: &mut impl Write) -> std::io::Result<()> {
    for r in rows {
        let fields = [
            format_time(r.time_ms),
            r.citizen.clone(),
            r.device.clone(),
            r.metric.name().to_owned(),
            r.value_text(),
            r.unit.clone(),
            r.metric.loinc().to_owned(),
            r.implausible_text().to_owned(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        writeln!(out, "{}", line.join(","))?;
    }
    Ok(())
}

/// Prints rows in the chosen format.
pub fn render(rows: &[Row], format: Format, out: &mut impl Write) -> std::io::Result<()> {
    match format {
        Format::Csv => {
            writeln!(out, "{CSV_HEADER}")?;
            render_csv_rows(rows, out)?;
        }
        Format::Json => {
            // A struct rather than `json!`, whose map would sort the keys: objects keep the
            // CSV's column order.
            let items: Vec<JsonRow<'_>> = rows
                .iter()
                .map(|r| JsonRow {
                    time: format_time(r.time_ms),
                    citizen: &r.citizen,
                    device: &r.device,
                    metric: r.metric.name(),
                    value: r.value_json(),
                    unit: &r.unit,
                    loinc: r.metric.loinc(),
                    implausible: r.implausible(),
                })
                .collect();
            serde_json::to_writer_pretty(&mut *out, &items)?;
            writeln!(out)?;
        }
        Format::Table => {
            let header = [
                "time",
                "citizen",
                "device",
                "metric",
                "value",
                "unit",
                "loinc",
                "implausible",
            ]
            .map(String::from);
            let body: Vec<[String; 8]> = rows
                .iter()
                .map(|r| {
                    [
                        format_time(r.time_ms),
                        r.citizen.clone(),
                        r.device.clone(),
                        r.metric.name().to_owned(),
                        r.value_short(),
                        r.unit.clone(),
                        r.metric.loinc().to_owned(),
                        r.implausible_text().to_owned(),
                    ]
                })
                .collect();
            let mut widths = header.clone().map(|h| h.len());
            for line in &body {
                for (w, cell) in widths.iter_mut().zip(line) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            for line in std::iter::once(&header).chain(&body) {
                let cells: Vec<String> = line
                    .iter()
                    .zip(widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                writeln!(out, "{}", cells.join("  ").trim_end())?;
            }
            writeln!(out, "({} rows)", rows.len())?;
        }
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct JsonRow<'a> {
    time: String,
    citizen: &'a str,
    device: &'a str,
    metric: &'static str,
    value: serde_json::Value,
    unit: &'a str,
    loinc: &'static str,
    /// Absent for an aggregate.
    #[serde(skip_serializing_if = "Option::is_none")]
    implausible: Option<bool>,
}

fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_050_000_000;

    fn row(metric: Metric, value: f64, time_ms: i64, aggregated: bool) -> Row {
        Row {
            time_ms,
            citizen: "citizen-001".into(),
            device: "bed-001".into(),
            metric,
            value,
            unit: metric.unit().into(),
            aggregated,
            flags: 0,
        }
    }

    fn rendered(rows: &[Row], format: Format) -> String {
        let mut out = Vec::new();
        render(rows, format, &mut out).expect("render");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn times_parse_absolute_relative_and_now() {
        assert_eq!(parse_time("now", NOW), Ok(NOW));
        assert_eq!(parse_time("-15m", NOW), Ok(NOW - 900_000));
        assert_eq!(parse_time("-90s", NOW), Ok(NOW - 90_000));
        assert_eq!(parse_time("-2h", NOW), Ok(NOW - 7_200_000));
        assert_eq!(parse_time("-7d", NOW), Ok(NOW - 604_800_000));
        assert_eq!(parse_time("2025-11-25T14:53:20+09:00", 0), Ok(NOW));
        assert_eq!(parse_time("2025-11-25T05:53:20Z", 0), Ok(NOW));
        assert!(matches!(
            parse_time("yesterday", NOW),
            Err(QueryError::Time(_))
        ));
        assert!(
            parse_time("2025-11-25T05:53:20", NOW).is_err(),
            "a time without offset is ambiguous"
        );
    }

    #[test]
    fn durations_parse_and_refuse_nonsense() {
        assert_eq!(parse_duration("30s"), Ok(30_000));
        assert_eq!(parse_duration("1m"), Ok(60_000));
        assert_eq!(parse_duration("1h"), Ok(3_600_000));
        assert_eq!(parse_duration("1d"), Ok(86_400_000));
        for bad in ["0m", "m", "5", "5w", "-1m", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!("15m".parse::<Agg>(), Err(QueryError::Agg("15m".into())));
        let aggs: Vec<Agg> = ["mean", "min", "max", "count"]
            .iter()
            .map(|a| a.parse().expect("agg"))
            .collect();
        assert_eq!(aggs, vec![Agg::Mean, Agg::Min, Agg::Max, Agg::Count]);
        let across: Vec<Agg> = ["citizens", "median", "p1", "p90", "p99"]
            .iter()
            .map(|a| a.parse().expect("agg"))
            .collect();
        assert_eq!(
            across,
            [
                Agg::Citizens,
                Agg::Percentile(50),
                Agg::Percentile(1),
                Agg::Percentile(90),
                Agg::Percentile(99)
            ]
        );
        assert!(across.iter().all(|a| a.needs_across()));
        for bad in ["p0", "p100", "p", "p-5", "p9x", "med"] {
            assert!(bad.parse::<Agg>().is_err(), "{bad}");
        }
        assert_eq!("json".parse::<Format>(), Ok(Format::Json));
        assert!("xml".parse::<Format>().is_err());
    }

    #[test]
    fn csv_has_the_documented_header_and_utc_times() {
        let mut implausible = row(Metric::HeartRate, 290.0, NOW + 1000, false);
        implausible.flags = crate::observation::flags::IMPLAUSIBLE;
        let rows = [
            row(Metric::HeartRate, 58.5, NOW, false),
            row(Metric::SleepStage, 2.0, NOW + 123, false),
            implausible,
        ];
        assert_eq!(
            rendered(&rows, Format::Csv),
            "time,citizen,device,metric,value,unit,loinc,implausible\n\
             2025-11-25T05:53:20Z,citizen-001,bed-001,heart_rate,58.5,/min,8867-4,false\n\
             2025-11-25T05:53:20.123Z,citizen-001,bed-001,sleep_stage,deep,{stage},local,false\n\
             2025-11-25T05:53:21Z,citizen-001,bed-001,heart_rate,290,/min,8867-4,true\n"
        );
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn csv_prints_aggregates_as_numbers_and_quotes_what_needs_it() {
        let mut count = row(Metric::SleepStage, 2.0, NOW, true);
        count.unit = "{count}".into();
        let mut odd = row(Metric::HeartRate, 59.5, NOW, true);
        odd.citizen = "Sato, \"Hana\"".into();
        assert_eq!(
            rendered(&[count, odd], Format::Csv),
            "time,citizen,device,metric,value,unit,loinc,implausible\n\
             2025-11-25T05:53:20Z,citizen-001,bed-001,sleep_stage,2,{count},local,\n\
             2025-11-25T05:53:20Z,\"Sato, \"\"Hana\"\"\",bed-001,heart_rate,59.5,/min,8867-4,\n"
        );
        assert_eq!(
            rendered(&[], Format::Csv),
            "time,citizen,device,metric,value,unit,loinc,implausible\n"
        );
    }

    #[test]
    fn json_is_an_array_in_column_order() {
        let rows = [
            row(Metric::SleepStage, 2.0, NOW + 5, false),
            row(Metric::HeartRate, 61.25, NOW, true),
        ];
        assert_eq!(
            rendered(&rows, Format::Json),
            r#"[
  {
    "time": "2025-11-25T05:53:20.005Z",
    "citizen": "citizen-001",
    "device": "bed-001",
    "metric": "sleep_stage",
    "value": "deep",
    "unit": "{stage}",
    "loinc": "local",
    "implausible": false
  },
  {
    "time": "2025-11-25T05:53:20Z",
    "citizen": "citizen-001",
    "device": "bed-001",
    "metric": "heart_rate",
    "value": 61.25,
    "unit": "/min",
    "loinc": "8867-4"
  }
]
"#
        );
        assert_eq!(rendered(&[], Format::Json), "[]\n");
    }

    #[test]
    fn json_and_table() {
        let rows = [
            row(Metric::SleepStage, 3.0, NOW, false),
            row(Metric::SleepStage, 1.5, NOW, true),
        ];
        let json: serde_json::Value =
            serde_json::from_str(&rendered(&rows, Format::Json)).expect("json");
        assert_eq!(json[0]["value"], "rem");
        assert_eq!(json[1]["value"], 1.5);
        assert_eq!(json[0]["time"], "2025-11-25T05:53:20Z");
        let mut mean = row(Metric::HeartRate, 59.814285714, NOW, true);
        assert!(rendered(&[mean.clone()], Format::Table).contains("  59.814  "));
        mean.value = 60.0;
        assert!(rendered(&[mean], Format::Table).contains("  60  "));
        let table = rendered(&rows[..1], Format::Table);
        assert_eq!(
            table,
            "time                  citizen      device   metric       value  unit     loinc  implausible\n\
             2025-11-25T05:53:20Z  citizen-001  bed-001  sleep_stage  rem    {stage}  local  false\n\
             (1 rows)\n"
        );
    }
}
