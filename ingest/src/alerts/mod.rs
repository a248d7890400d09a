//! Alerts for care services: rules from `[[alerts]]` evaluated on identified observations as
//! they come off the write-ahead log ([`sink::AlertSink`], with [`eval::Evaluator`]), recorded
//! in `alerts.db` per care service whose care consent covers the citizen and metric
//! ([`store::AlertStore`]), published on `care/{service}/alerts`, and acknowledged over the
//! HTTP API and in the care console.

pub mod eval;
pub mod sink;
pub mod store;

use std::sync::Arc;

use kenko_config::Config;
use kenko_devices::Metric;

pub use eval::{Evaluator, Raised, Rule};
pub use sink::{payload, AlertSink};
pub use store::{Acked, Alert, AlertStore, NewAlert};

/// The file alerts are kept in, in the data directory.
pub const FILE: &str = "alerts.db";

/// The rules of `config`, their metrics checked against the catalogue (errors name the
/// entry's file:line).
pub fn compile(config: &Config) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::with_capacity(config.alerts.len());
    for (n, alert) in config.alerts.iter().enumerate() {
        let place = config
            .alert_place(n)
            .map_or_else(String::new, |p| format!("{p}: "));
        let metric: Metric = alert.metric.parse().map_err(|_| {
            format!(
                "{place}alert {} watches unknown metric {:?}; known metrics: {}",
                alert.name,
                alert.metric,
                Metric::names()
            )
        })?;
        let condition = alert.condition().map_err(|why| format!("{place}{why}"))?;
        rules.push(Rule {
            name: Arc::from(alert.name.as_str()),
            metric,
            condition,
            for_ms: alert.for_ms(),
        });
    }
    Ok(rules)
}
