//! A citizen's own goals (`goals` in registry.db): per metric, a daily value to reach at
//! least (steps, sleep) or to stay at most (weight). Set and cleared by the citizen from the
//! console; deleted with the rest of their data when they ask for erasure.

use kenko_devices::Metric;
use rusqlite::params;

use super::ConsentRegistry;
use crate::store::{sqlite, StoreError};

/// Which side of its target a goal is met on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    AtLeast,
    AtMost,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::AtLeast => "at_least",
            Direction::AtMost => "at_most",
        }
    }

    pub fn parse(text: &str) -> Option<Direction> {
        match text {
            "at_least" => Some(Direction::AtLeast),
            "at_most" => Some(Direction::AtMost),
            _ => None,
        }
    }

    /// Does a day's `value` meet `target`?
    pub fn met(self, value: f64, target: f64) -> bool {
        match self {
            Direction::AtLeast => value >= target,
            Direction::AtMost => value <= target,
        }
    }
}

/// One goal.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    pub metric: Metric,
    pub direction: Direction,
    /// In the metric's canonical unit.
    pub target: f64,
    pub set_ms: i64,
}

impl ConsentRegistry {
    /// Sets (or replaces) `citizen`'s goal for `goal.metric`.
    pub fn set_goal(&mut self, citizen: &str, goal: &Goal) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO goals (citizen, metric, direction, target, set_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (citizen, metric) DO UPDATE SET direction = excluded.direction,
                    target = excluded.target, set_ms = excluded.set_ms",
                params![
                    citizen,
                    goal.metric.name(),
                    goal.direction.as_str(),
                    goal.target,
                    goal.set_ms
                ],
            )
            .map(drop)
            .map_err(sqlite(&self.path))
    }

    /// Clears `citizen`'s goal for `metric`, if any.
    pub fn clear_goal(&mut self, citizen: &str, metric: Metric) -> Result<(), StoreError> {
        self.conn
            .execute(
                "DELETE FROM goals WHERE citizen = ?1 AND metric = ?2",
                params![citizen, metric.name()],
            )
            .map(drop)
            .map_err(sqlite(&self.path))
    }

    /// `citizen`'s goals, by metric name.
    pub fn goals(&self, citizen: &str) -> Result<Vec<Goal>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT metric, direction, target, set_ms FROM goals WHERE citizen = ?1
                 ORDER BY metric",
            )
            .map_err(sqlite(&self.path))?;
        let rows = stmt
            .query_map(params![citizen], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, f64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(sqlite(&self.path))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sqlite(&self.path))?;
        // A row a newer kenko wrote with a metric or direction this one does not know is
        // left out rather than misread.
        Ok(rows
            .into_iter()
            .filter_map(|(metric, direction, target, set_ms)| {
                Some(Goal {
                    metric: metric.parse().ok()?,
                    direction: Direction::parse(&direction)?,
                    target,
                    set_ms,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::ConsentChange;

    #[test]
    fn a_goal_is_set_replaced_cleared_and_erased_with_the_citizen() {
        let dir = tempfile::tempdir().expect("dir");
        let mut reg = ConsentRegistry::open(&dir.path().join("registry.db")).expect("open");
        let steps = Goal {
            metric: Metric::DailySteps,
            direction: Direction::AtLeast,
            target: 8_000.0,
            set_ms: 1,
        };
        let weight = Goal {
            metric: Metric::BodyWeight,
            direction: Direction::AtMost,
            target: 65.0,
            set_ms: 2,
        };
        reg.set_goal("c-1", &steps).expect("set");
        reg.set_goal("c-1", &weight).expect("set");
        reg.set_goal("c-2", &steps).expect("set");
        let more = Goal {
            target: 9_000.0,
            set_ms: 3,
            ..steps.clone()
        };
        reg.set_goal("c-1", &more).expect("replace");
        assert_eq!(reg.goals("c-1").expect("goals"), vec![weight.clone(), more]);
        reg.clear_goal("c-1", Metric::BodyWeight).expect("clear");
        assert_eq!(reg.goals("c-1").expect("goals").len(), 1);

        let erase = ConsentChange::erasure_of("c-1");
        reg.record(erase, 10).expect("erase");
        assert!(reg.goals("c-1").expect("goals").is_empty(), "erased");
        assert_eq!(reg.goals("c-2").expect("goals").len(), 1, "others' stay");
        assert!(Direction::AtMost.met(64.9, 65.0) && !Direction::AtLeast.met(7_999.0, 8_000.0));
    }
}
