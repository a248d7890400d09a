//! The parameters of an Observation search: `patient` (or `subject`), `code`, `date` (with
//! a prefix, given up to twice), `_count` and the page `_cursor` this server hands out.
//! An unknown parameter is refused rather than ignored, so that a misspelled one cannot
//! widen a search unnoticed.

use jiff::civil::Date;
use jiff::Timestamp;
use kenko_devices::Metric;

use super::resources::{BP_PANEL, LOINC, METRIC_SYSTEM};
use crate::http::{bad, short, ApiError, MAX_WORD};
use crate::observations::PageCursor;
use crate::sealed::Sealer;

/// Observations a page holds unless `_count` says otherwise.
const DEFAULT_COUNT: usize = 100;
/// Observations a page holds at most.
pub(super) const MAX_COUNT: usize = 1000;

/// What one Observation of a search is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// One reading of a metric.
    Reading(Metric),
    /// Systolic and diastolic pressure of one time and device (LOINC 85354-9).
    BloodPressure,
}

impl Kind {
    pub(super) fn metrics(self) -> Vec<Metric> {
        match self {
            Kind::Reading(m) => vec![m],
            Kind::BloodPressure => vec![Metric::DiastolicBp, Metric::SystolicBp],
        }
    }

    /// Every kind: blood pressure, and each other metric.
    pub(super) fn all() -> Vec<Kind> {
        let mut kinds = vec![Kind::BloodPressure];
        kinds.extend(
            Metric::ALL
                .iter()
                .filter(|m| !is_bp_component(**m))
                .map(|&m| Kind::Reading(m)),
        );
        kinds
    }
}

fn is_bp_component(metric: Metric) -> bool {
    matches!(metric, Metric::SystolicBp | Metric::DiastolicBp)
}

#[derive(Debug)]
pub(super) struct SearchParams {
    pub(super) patient: Option<String>,
    /// What was asked for; `None`: every kind.
    pub(super) kinds: Option<Vec<Kind>>,
    /// Inclusive start and exclusive end, epoch ms.
    pub(super) from_ms: Option<i64>,
    pub(super) to_ms: Option<i64>,
    pub(super) count: usize,
    pub(super) cursor: Option<PageCursor>,
}

impl SearchParams {
    /// The kinds to read: those asked for, or all.
    pub(super) fn kinds(&self) -> Vec<Kind> {
        self.kinds.clone().unwrap_or_else(Kind::all)
    }

    pub(super) fn parse(query: &str, sealer: &Sealer) -> Result<SearchParams, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| bad(format!("the query string cannot be read: {e}")))?;
        let mut params = SearchParams {
            patient: None,
            kinds: None,
            from_ms: None,
            to_ms: None,
            count: DEFAULT_COUNT,
            cursor: None,
        };
        let mut dates = 0;
        for (n, (name, value)) in pairs.iter().enumerate() {
            let value = short(name, value, 4 * MAX_WORD)?;
            let repeated = pairs[..n].iter().any(|(earlier, _)| earlier == name);
            if repeated && name != "date" {
                return Err(bad(format!(
                    "{name} is given twice; give it once (a comma-separated list for several codes)"
                )));
            }
            match name.as_str() {
                "patient" | "subject" => params.patient = Some(patient(value)?),
                "code" => params.kinds = Some(codes(value)?),
                "date" => {
                    dates += 1;
                    if dates > 2 {
                        return Err(bad("date: give at most two (a start and an end)"));
                    }
                    params.date(value)?;
                }
                "_count" => params.count = count(value)?,
                "_cursor" => params.cursor = Some(PageCursor::decode(value, sealer)?),
                "_format" if matches!(value, "json" | "application/fhir+json") => {}
                other => {
                    return Err(bad(format!(
                        "search parameter {other:?} is not supported: use patient, code, date, _count (metadata lists them)"
                    )))
                }
            }
        }
        Ok(params)
    }

    /// Narrows the range by one `date` parameter (`ge2026-11-25`, `lt2026-11-25T10:00:00Z`).
    fn date(&mut self, value: &str) -> Result<(), ApiError> {
        let (prefix, instant) = match value.get(..2) {
            Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, &value[2..]),
            _ => ("eq", value),
        };
        let (start, end) = span(instant)?;
        let later = |a: Option<i64>, b: i64| Some(a.map_or(b, |a| a.max(b)));
        let earlier = |a: Option<i64>, b: i64| Some(a.map_or(b, |a| a.min(b)));
        match prefix {
            "ge" => self.from_ms = later(self.from_ms, start),
            "gt" => self.from_ms = later(self.from_ms, end),
            "le" => self.to_ms = earlier(self.to_ms, end),
            "lt" => self.to_ms = earlier(self.to_ms, start),
            _ => {
                self.from_ms = later(self.from_ms, start);
                self.to_ms = earlier(self.to_ms, end);
            }
        }
        Ok(())
    }
}

/// `Patient/ID` or `ID`.
fn patient(value: &str) -> Result<String, ApiError> {
    let id = value.strip_prefix("Patient/").unwrap_or(value);
    kenko_config::check_identifier(id).map_err(|why| bad(format!("patient {why}")))?;
    Ok(id.to_owned())
}

/// A comma-separated list of tokens: `system|code` or a bare code.
fn codes(list: &str) -> Result<Vec<Kind>, ApiError> {
    let mut kinds = Vec::new();
    for token in list.split(',') {
        let kind = kind(token)?;
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    Ok(kinds)
}

fn kind(token: &str) -> Result<Kind, ApiError> {
    let (system, code) = match token.split_once('|') {
        Some((system, code)) => (Some(system), code),
        None => (None, token),
    };
    let by_loinc = || {
        if code == BP_PANEL {
            return Some(Kind::BloodPressure);
        }
        Metric::ALL
            .iter()
            .find(|m| m.loinc() == code && m.loinc() != "local")
            .map(|&m| Kind::Reading(m))
    };
    let by_name = || {
        if code == "blood_pressure" {
            return Some(Kind::BloodPressure);
        }
        code.parse::<Metric>().ok().map(Kind::Reading)
    };
    let found = match system {
        Some(LOINC) => by_loinc(),
        Some(METRIC_SYSTEM) => by_name(),
        None => by_loinc().or_else(by_name),
        Some("") => {
            return Err(bad(format!(
                "code {token:?} asks for a code without a system; every code here has one: {LOINC} or {METRIC_SYSTEM}"
            )))
        }
        Some(other) => {
            return Err(bad(format!(
                "code system {other:?} is not known here: use {LOINC} or {METRIC_SYSTEM}"
            )))
        }
    };
    match found {
        Some(Kind::Reading(m)) if is_bp_component(m) => Err(bad(format!(
            "code {code}: blood pressure is one Observation with systolic and diastolic components; search code={LOINC}|{BP_PANEL}"
        ))),
        Some(kind) => Ok(kind),
        None => Err(bad(format!(
            "code {token:?} names no metric kept here: give a LOINC code (such as {LOINC}|8867-4) or one of kenko's metrics ({METRIC_SYSTEM}|heart_rate)"
        ))),
    }
}

fn count(value: &str) -> Result<usize, ApiError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_COUNT).contains(n))
        .ok_or_else(|| bad(format!("_count {value:?}: give 1 to {MAX_COUNT}")))
}

/// The instants a FHIR date stands for, as [start, end) epoch ms: a year, month or day
/// (in UTC), or an instant to the second or fraction of a second it is given to.
fn span(value: &str) -> Result<(i64, i64), ApiError> {
    let refused = || {
        bad(format!(
            "date {value:?}: give a year, month or day (2026, 2026-11, 2026-11-25) or an instant with its offset (2026-11-25T10:00:00Z), after ge, gt, le, lt or eq"
        ))
    };
    let day_start = |date: Date| -> Result<i64, ApiError> {
        Ok(date
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map_err(|_| refused())?
            .timestamp()
            .as_millisecond())
    };
    let number = |text: &str| text.parse::<i16>().map_err(|_| refused());
    match value.len() {
        4 => {
            let year = number(value)?;
            let start = Date::new(year, 1, 1).map_err(|_| refused())?;
            let end = Date::new(year + 1, 1, 1).map_err(|_| refused())?;
            return Ok((day_start(start)?, day_start(end)?));
        }
        7 => {
            let start: Date = format!("{value}-01").parse().map_err(|_| refused())?;
            let end = start
                .checked_add(jiff::Span::new().months(1))
                .map_err(|_| refused())?;
            return Ok((day_start(start)?, day_start(end)?));
        }
        10 => {
            let start = day_start(value.parse().map_err(|_| refused())?)?;
            return Ok((start, start + 86_400_000));
        }
        _ => {}
    }
    let at: Timestamp = value.parse().map_err(|_| refused())?;
    let start = at.as_millisecond();
    // A fraction's digits say its precision: .2 spans 100 ms, .25 10 ms, .250 and finer 1.
    let digits = value
        .split_once('.')
        .map(|(_, rest)| rest.bytes().take_while(u8::is_ascii_digit).count());
    let width = match digits {
        None => 1000,
        Some(1) => 100,
        Some(2) => 10,
        Some(_) => 1,
    };
    Ok((start, start + width))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SearchParams {
        fn parse_plain(query: &str) -> Result<SearchParams, ApiError> {
            SearchParams::parse(query, &Sealer::new())
        }
    }

    fn ok<T>(result: Result<T, ApiError>, what: &str) -> T {
        result.unwrap_or_else(|e| panic!("{what}: {}", e.message()))
    }

    #[test]
    fn codes_name_loinc_codes_or_metrics_and_blood_pressure_as_a_panel() {
        let kinds = ok(
            codes("http://loinc.org|8867-4,spo2,urn:kenko:metric|steps,85354-9"),
            "codes",
        );
        assert_eq!(
            kinds,
            [
                Kind::Reading(Metric::HeartRate),
                Kind::Reading(Metric::Spo2),
                Kind::Reading(Metric::Steps),
                Kind::BloodPressure
            ]
        );
        let err = kind("http://loinc.org|8480-6").expect_err("a component");
        assert!(
            err.message()
                .contains("search code=http://loinc.org|85354-9"),
            "{}",
            err.message()
        );
        assert!(kind("http://snomed.info/sct|1").is_err());
        assert!(kind("1234-5").is_err());
        assert!(!Kind::all().contains(&Kind::Reading(Metric::SystolicBp)));
    }

    #[test]
    fn dates_narrow_the_range_by_their_precision() {
        let p = ok(
            SearchParams::parse_plain("date=ge2026-11-25&date=lt2026-11-25T10:00:00Z"),
            "dates",
        );
        assert_eq!(p.from_ms, Some(1_795_564_800_000));
        assert_eq!(p.to_ms, Some(1_795_600_800_000));
        let p = ok(SearchParams::parse_plain("date=2026-11-25"), "a day");
        assert_eq!(p.to_ms.zip(p.from_ms).map(|(t, f)| t - f), Some(86_400_000));
        let p = ok(
            SearchParams::parse_plain("date=le2026-11-25T10:00:00Z"),
            "le",
        );
        assert_eq!(p.to_ms, Some(1_795_600_801_000), "the whole second");
        let p = ok(
            SearchParams::parse_plain("date=gt2026-11-25T10:00:00.250Z"),
            "gt",
        );
        assert_eq!(p.from_ms, Some(1_795_600_800_251));
        let p = ok(
            SearchParams::parse_plain("date=le2026-11-25T10:00:00.2Z"),
            "tenths",
        );
        assert_eq!(p.to_ms, Some(1_795_600_800_300), "a tenth spans 100 ms");
        let p = ok(SearchParams::parse_plain("date=2026-11"), "a month");
        assert_eq!(p.from_ms, Some(1_793_491_200_000), "2026-11-01");
        assert_eq!(p.to_ms, Some(1_796_083_200_000), "2026-12-01");
        let p = ok(SearchParams::parse_plain("date=lt2027"), "a year");
        assert_eq!(p.to_ms, Some(1_798_761_600_000), "2027-01-01");
        for bad in [
            "date=yesterday",
            "date=ge2026-11-25T10:00:00",
            "_count=0",
            "_count=1001",
            "colour=red",
            "date=ge2026-11-25&date=le2026-11-26&date=eq2026-11-25",
            "patient=c-1&patient=c-2",
            "code=8867-4&code=spo2",
            "code=%7C8867-4",
            "_cursor=e30",
        ] {
            assert!(SearchParams::parse(bad, &Sealer::new()).is_err(), "{bad}");
        }
    }
}
