//! How long the embedded store keeps raw observations, and their rollups after them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[retention]`: raw observations older than `raw_days` are folded into 1-minute and
/// 1-hour rollups (min, max, mean, count) and deleted; rollups are kept for their own
/// periods. Unset periods keep data for ever, which is the default for all three.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Days raw observations are kept.
    pub raw_days: Option<u32>,
    /// Days 1-minute rollups are kept (counted from now, like `raw_days`).
    pub rollup_1m_days: Option<u32>,
    /// Days 1-hour rollups are kept.
    pub rollup_1h_days: Option<u32>,
    /// Minutes between two runs of the retention job (it also runs shortly after start).
    pub every_min: u32,
    /// Periods for single metrics, by metric name (`[retention.metrics.heart_rate]`); an
    /// unset period there takes the one above.
    pub metrics: BTreeMap<String, MetricRetention>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            raw_days: None,
            rollup_1m_days: None,
            rollup_1h_days: None,
            every_min: 60,
            metrics: BTreeMap::new(),
        }
    }
}

/// `[retention.metrics.NAME]`: one metric's periods.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricRetention {
    pub raw_days: Option<u32>,
    pub rollup_1m_days: Option<u32>,
    pub rollup_1h_days: Option<u32>,
}

/// One metric's periods, each `None` for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    pub raw_days: Option<u32>,
    pub rollup_1m_days: Option<u32>,
    pub rollup_1h_days: Option<u32>,
}

impl RetentionConfig {
    /// The periods that apply to `metric` (a name, as in `[retention.metrics]`).
    pub fn periods(&self, metric: &str) -> Periods {
        let own = self.metrics.get(metric).cloned().unwrap_or_default();
        Periods {
            raw_days: own.raw_days.or(self.raw_days),
            rollup_1m_days: own.rollup_1m_days.or(self.rollup_1m_days),
            rollup_1h_days: own.rollup_1h_days.or(self.rollup_1h_days),
        }
    }

    /// Checks the periods against each other and the ingest's late horizon; metric names are
    /// checked where the catalogue is known (the ingest pipeline).
    pub fn check(&self, late_horizon_s: u64) -> Result<(), String> {
        if self.every_min == 0 {
            return Err("retention.every_min must be at least 1".into());
        }
        self.periods("").check("retention", late_horizon_s)?;
        for name in self.metrics.keys() {
            self.periods(name)
                .check(&format!("retention.metrics.{name}"), late_horizon_s)?;
        }
        Ok(())
    }
}

impl Periods {
    fn check(&self, at: &str, late_horizon_s: u64) -> Result<(), String> {
        let days = [
            ("raw_days", self.raw_days),
            ("rollup_1m_days", self.rollup_1m_days),
            ("rollup_1h_days", self.rollup_1h_days),
        ];
        for (name, value) in days {
            if value == Some(0) {
                return Err(format!(
                    "{at}.{name} is 0; keep data at least 1 day, or leave it unset to keep it for ever"
                ));
            }
        }
        // A late observation must land where raw data is still kept: folding it into a
        // rollup that already holds its bucket would be fine, but windows (sleep summaries)
        // are computed again from raw data within the late horizon.
        if let Some(raw) = self.raw_days {
            if u64::from(raw) * 86_400 < late_horizon_s {
                return Err(format!(
                    "{at}.raw_days is {raw}, shorter than ingest.late_horizon_s ({late_horizon_s} s, {:.1} days): late observations must still find their raw data; raise raw_days or lower late_horizon_s",
                    late_horizon_s as f64 / 86_400.0
                ));
            }
        }
        // Each coarser level is kept at least as long as the finer one it summarizes.
        for ((finer, a), (coarser, b)) in days.iter().zip(days.iter().skip(1)) {
            if let (Some(a), Some(b)) = (a, b) {
                if b < a {
                    return Err(format!(
                        "{at}.{coarser} ({b}) is shorter than {at}.{finer} ({a}); each coarser level must be kept at least as long"
                    ));
                }
            }
            if a.is_none() && b.is_some() {
                return Err(format!(
                    "{at}.{coarser} is set but {at}.{finer} keeps data for ever; set {finer} too, at most {coarser}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> RetentionConfig {
        toml::from_str(toml_text).expect("parses")
    }

    #[test]
    fn a_metric_takes_the_default_periods_it_does_not_set() {
        let c = config("raw_days = 30\nrollup_1m_days = 90\n[metrics.heart_rate]\nraw_days = 60\n");
        assert_eq!(
            c.periods("heart_rate"),
            Periods {
                raw_days: Some(60),
                rollup_1m_days: Some(90),
                rollup_1h_days: None
            }
        );
        assert_eq!(c.periods("body_weight").raw_days, Some(30));
        assert_eq!(c.check(7 * 86_400), Ok(()));
    }

    #[test]
    fn nothing_set_keeps_everything_for_ever() {
        let c = RetentionConfig::default();
        assert_eq!(c.periods("heart_rate").raw_days, None);
        assert_eq!(c.check(7 * 86_400), Ok(()));
    }

    #[test]
    fn raw_data_must_outlive_the_late_horizon() {
        let err = config("raw_days = 3")
            .check(7 * 86_400)
            .expect_err("refused");
        assert!(err.contains("retention.raw_days is 3"), "{err}");
        assert!(err.contains("late_horizon_s"), "{err}");
    }

    #[test]
    fn rollups_must_outlive_what_they_summarize() {
        let err = config("raw_days = 30\nrollup_1m_days = 10")
            .check(86_400)
            .expect_err("refused");
        assert!(
            err.contains("retention.rollup_1m_days (10) is shorter than retention.raw_days (30)"),
            "{err}"
        );
        let err = config("rollup_1h_days = 10")
            .check(86_400)
            .expect_err("refused");
        assert!(err.contains("rollup_1m_days keeps data for ever"), "{err}");
        let err = config("raw_days = 5\n[metrics.steps]\nrollup_1m_days = 2")
            .check(86_400)
            .expect_err("refused");
        assert!(
            err.contains("retention.metrics.steps.rollup_1m_days"),
            "{err}"
        );
    }

    #[test]
    fn zero_days_and_zero_minutes_are_refused() {
        let err = config("raw_days = 0").check(86_400).expect_err("refused");
        assert!(err.contains("raw_days is 0"), "{err}");
        let err = config("every_min = 0").check(86_400).expect_err("refused");
        assert!(err.contains("every_min"), "{err}");
    }
}
