//! `[[alerts]]`: rules that raise an alert to the care services a citizen consented to, as
//! data arrives.
//!
//! ```toml
//! [[alerts]]
//! name = "low-spo2"
//! metric = "spo2"
//! below = 90.0       # or above = ...
//! for_min = 5        # every reading below for 5 minutes (0: the first one)
//!
//! [[alerts]]
//! name = "no-bed-data"
//! metric = "heart_rate"
//! silent_h = 24      # no reading of the metric for 24 hours
//!
//! [[alerts]]
//! name = "resting-heart-rate-rising"
//! metric = "heart_rate"
//! rising_by = 5.0    # the last 7 days' mean 5 above the mean of the 7 days before
//! over_days = 7
//! ```

use serde::{Deserialize, Serialize};

/// One alert rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// The rule's name, in alerts and their topics' payloads.
    pub name: String,
    /// The catalogue metric it watches.
    pub metric: String,
    /// Raised when readings stay below this value (in the metric's canonical unit).
    #[serde(default)]
    pub below: Option<f64>,
    /// Raised when readings stay above this value.
    #[serde(default)]
    pub above: Option<f64>,
    /// Raised when no reading of the metric came for this many hours.
    #[serde(default)]
    pub silent_h: Option<u32>,
    /// Raised when the mean of the last `over_days` whole days exceeds the mean of the
    /// `over_days` days before them by at least this much (a trend: resting heart rate
    /// rising).
    #[serde(default)]
    pub rising_by: Option<f64>,
    /// With `rising_by`: the days each mean is over (7 unless given).
    #[serde(default)]
    pub over_days: Option<u32>,
    /// With `below` or `above`: minutes the readings must stay past the threshold (every
    /// reading in between past it, too); 0 raises on the first.
    #[serde(default)]
    pub for_min: u32,
}

/// What a rule watches for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Condition {
    Below(f64),
    Above(f64),
    /// No reading for this many milliseconds.
    Silent(i64),
    /// The last `days` whole days' mean at least `by` above the `days` days' before.
    Rising {
        by: f64,
        days: u32,
    },
}

impl AlertConfig {
    /// The rule's one condition, or why it has none or several.
    pub fn condition(&self) -> Result<Condition, String> {
        let finite = |what: &str, v: f64| {
            if v.is_finite() {
                Ok(v)
            } else {
                Err(format!("alert {}: {what} must be a number", self.name))
            }
        };
        if self.over_days.is_some() && self.rising_by.is_none() {
            return Err(format!(
                "alert {}: over_days goes with rising_by",
                self.name
            ));
        }
        match (self.below, self.above, self.silent_h, self.rising_by) {
            (None, None, None, Some(by)) => self.rising(finite("rising_by", by)?),
            (_, _, _, Some(_)) => Err(format!(
                "alert {}: give only one of below, above, silent_h and rising_by",
                self.name
            )),
            (below, above, silent_h, None) => self.level(below, above, silent_h, finite),
        }
    }

    /// A trend condition, checked.
    fn rising(&self, by: f64) -> Result<Condition, String> {
        let days = self.over_days.unwrap_or(7);
        if by <= 0.0 || !(1..=90).contains(&days) || self.for_min > 0 {
            return Err(format!(
                "alert {}: rising_by must be above 0, over_days from 1 to 90, and for_min is not for trends",
                self.name
            ));
        }
        Ok(Condition::Rising { by, days })
    }

    /// A threshold or silence condition, checked.
    fn level(
        &self,
        below: Option<f64>,
        above: Option<f64>,
        silent_h: Option<u32>,
        finite: impl Fn(&str, f64) -> Result<f64, String>,
    ) -> Result<Condition, String> {
        match (below, above, silent_h) {
            (Some(v), None, None) => Ok(Condition::Below(finite("below", v)?)),
            (None, Some(v), None) => Ok(Condition::Above(finite("above", v)?)),
            (None, None, Some(0)) => Err(format!(
                "alert {}: silent_h must be at least 1 hour",
                self.name
            )),
            (None, None, Some(_)) if self.for_min > 0 => Err(format!(
                "alert {}: for_min goes with below or above; silent_h is its own duration",
                self.name
            )),
            (None, None, Some(h)) => Ok(Condition::Silent(i64::from(h) * 3_600_000)),
            (None, None, None) => Err(format!(
                "alert {}: give one condition: below, above, silent_h or rising_by",
                self.name
            )),
            _ => Err(format!(
                "alert {}: give only one of below, above, silent_h and rising_by",
                self.name
            )),
        }
    }

    /// `for_min` in milliseconds.
    pub fn for_ms(&self) -> i64 {
        i64::from(self.for_min) * 60_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        below: Option<f64>,
        above: Option<f64>,
        silent_h: Option<u32>,
        for_min: u32,
    ) -> AlertConfig {
        AlertConfig {
            name: "r".into(),
            metric: "spo2".into(),
            below,
            above,
            silent_h,
            rising_by: None,
            over_days: None,
            for_min,
        }
    }

    fn rising(by: f64, over_days: Option<u32>) -> AlertConfig {
        AlertConfig {
            rising_by: Some(by),
            over_days,
            ..rule(None, None, None, 0)
        }
    }

    #[test]
    fn a_trend_is_its_own_condition_over_whole_days() {
        assert_eq!(
            rising(5.0, None).condition(),
            Ok(Condition::Rising { by: 5.0, days: 7 })
        );
        assert_eq!(
            rising(2.0, Some(3)).condition(),
            Ok(Condition::Rising { by: 2.0, days: 3 })
        );
        for (bad, says) in [
            (rising(0.0, None), "rising_by must be above 0"),
            (rising(5.0, Some(0)), "over_days from 1 to 90"),
            (
                AlertConfig {
                    below: Some(1.0),
                    ..rising(5.0, None)
                },
                "only one of",
            ),
            (
                AlertConfig {
                    over_days: Some(3),
                    ..rule(Some(1.0), None, None, 0)
                },
                "over_days goes with rising_by",
            ),
        ] {
            let err = bad.condition().expect_err(says);
            assert!(err.contains(says), "{err}");
        }
    }
    #[test]
    fn a_rule_has_exactly_one_condition() {
        assert_eq!(
            rule(Some(90.0), None, None, 5).condition(),
            Ok(Condition::Below(90.0))
        );
        assert_eq!(
            rule(None, Some(120.0), None, 0).condition(),
            Ok(Condition::Above(120.0))
        );
        assert_eq!(
            rule(None, None, Some(24), 0).condition(),
            Ok(Condition::Silent(24 * 3_600_000))
        );
        for (bad, says) in [
            (rule(None, None, None, 0), "give one condition"),
            (rule(Some(1.0), Some(2.0), None, 0), "only one of"),
            (rule(Some(1.0), None, Some(2), 0), "only one of"),
            (rule(None, None, Some(0), 0), "at least 1 hour"),
            (
                rule(None, None, Some(3), 5),
                "for_min goes with below or above",
            ),
            (
                rule(Some(f64::NAN), None, None, 0),
                "below must be a number",
            ),
        ] {
            let err = bad.condition().expect_err(says);
            assert!(err.contains(says), "{err}");
        }
    }
}
