//! The city's key performance indicators, per month, never over fewer than k citizens.
//! A figure that counts citizens is shown when it is zero or at least k, and suppressed
//! (shown as "fewer than k") in between, so that no figure singles out a few people.
//!
//! `participation`: enrolment and consent, from the consent registry.

pub mod participation;

use jiff::civil::Date;
use jiff::tz::TimeZone;

/// The smallest group a figure may describe, unless the operator asks for a larger one.
pub const DEFAULT_K: u64 = 5;

/// One calendar month in the city's time zone: [start, end) in epoch ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Month {
    pub label: String,
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Month {
    /// `2026-11` in `zone`.
    pub fn parse(text: &str, zone: &TimeZone) -> Result<Month, String> {
        let refused = || format!("month {text:?}: give it as YYYY-MM, such as 2026-11");
        if text.len() != 7 {
            return Err(refused());
        }
        let first: Date = format!("{text}-01").parse().map_err(|_| refused())?;
        let next = first
            .checked_add(jiff::Span::new().months(1))
            .map_err(|_| refused())?;
        let at = |d: Date| {
            d.to_zoned(zone.clone())
                .map(|z| z.timestamp().as_millisecond())
                .map_err(|e| format!("month {text:?}: {e}"))
        };
        Ok(Month {
            label: text.to_owned(),
            start_ms: at(first)?,
            end_ms: at(next)?,
        })
    }

    pub fn contains(&self, at_ms: i64) -> bool {
        (self.start_ms..self.end_ms).contains(&at_ms)
    }
}

/// A count of citizens as it may be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    Count(u64),
    /// More than none and fewer than k.
    Suppressed {
        k: u64,
    },
}

impl Figure {
    /// `count` under the k rule.
    pub fn of(count: u64, k: u64) -> Figure {
        if count == 0 || count >= k {
            Figure::Count(count)
        } else {
            Figure::Suppressed { k }
        }
    }

    /// The count, when it may be shown.
    pub fn value(self) -> Option<u64> {
        match self {
            Figure::Count(n) => Some(n),
            Figure::Suppressed { .. } => None,
        }
    }
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Figure::Count(n) => write!(f, "{n}"),
            Figure::Suppressed { k } => write!(f, "fewer than {k}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_is_its_days_in_the_citys_zone() {
        let tokyo = TimeZone::get("Asia/Tokyo").expect("zone");
        let m = Month::parse("2026-11", &tokyo).expect("month");
        // 2026-11-01T00:00+09:00 and 2026-12-01T00:00+09:00.
        assert_eq!(
            (m.start_ms, m.end_ms),
            (1_793_458_800_000, 1_796_050_800_000)
        );
        assert!(m.contains(m.start_ms) && !m.contains(m.end_ms));
        for bad in ["2026-13", "2026-1", "november", "2026-11-01"] {
            assert!(Month::parse(bad, &tokyo).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_of_fewer_than_k_citizens_are_suppressed_but_none_is_shown() {
        assert_eq!(Figure::of(0, 5), Figure::Count(0));
        assert_eq!(Figure::of(4, 5).to_string(), "fewer than 5");
        assert_eq!(Figure::of(4, 5).value(), None);
        assert_eq!(Figure::of(5, 5), Figure::Count(5));
    }
}
