//! The hub's counters in the Prometheus text format (`GET /metrics` on the HTTP API).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use kenko_ingest::sink::SinkLags;
use kenko_ingest::stats::{Histogram, IngestStats, DELAY_BOUNDS_MS};

use kenko_broker::login::{Listener, LoginStats};
use kenko_broker::route::Router;
use kenko_broker::BrokerStats;

enum Kind {
    Counter,
    Gauge,
}

/// Renders every counter and gauge of the broker and the ingest pipeline.
pub fn render(broker: &BrokerStats, ingest: &IngestStats, lags: Option<&SinkLags>) -> String {
    use Kind::{Counter, Gauge};
    let b = broker;
    let i = ingest;
    let entries: [(&str, Kind, &str, &AtomicU64); 38] = [
        (
            "mqtt_connected_clients",
            Gauge,
            "MQTT clients connected now",
            &b.connected,
        ),
        (
            "mqtt_telemetry_received_total",
            Counter,
            "telemetry publishes handed to the ingest pipeline",
            &b.telemetry_in,
        ),
        (
            "mqtt_publishes_refused_total",
            Counter,
            "publishes the hub refused (ACL, topic, $ topics)",
            &b.publishes_refused,
        ),
        (
            "mqtt_delivered_total",
            Counter,
            "messages delivered to subscribers",
            &b.delivered,
        ),
        (
            "mqtt_withheld_total",
            Counter,
            "deliveries the ACL or consent withheld from a subscriber",
            &b.withheld,
        ),
        (
            "mqtt_receive_maximum_exceeded_total",
            Counter,
            "MQTT 5 clients disconnected with 0x93 for exceeding the receive maximum",
            &b.receive_maximum_exceeded,
        ),
        (
            "mqtt_publishes_throttled_total",
            Counter,
            "publishes read late because their client exceeded mqtt.max_publish_rate",
            &b.publishes_throttled,
        ),
        (
            "mqtt_too_large_for_client_total",
            Counter,
            "deliveries discarded as larger than the MQTT 5 client's Maximum Packet Size",
            &b.too_large_for_client,
        ),
        (
            "ingest_received_total",
            Counter,
            "messages queued for the writer",
            &i.received,
        ),
        (
            "ingest_messages_stored_total",
            Counter,
            "messages durable in the write-ahead log and acknowledged",
            &i.messages_stored,
        ),
        (
            "ingest_observations_logged_total",
            Counter,
            "observations appended to the write-ahead log",
            &i.observations_logged,
        ),
        (
            "ingest_observations_stored_total",
            Counter,
            "observations written to personal.db",
            &i.observations_stored,
        ),
        (
            "ingest_duplicates_total",
            Counter,
            "observations whose (device, metric, time) was already stored",
            &i.duplicates,
        ),
        (
            "ingest_dead_lettered_total",
            Counter,
            "messages dead-lettered with a reason",
            &i.dead_lettered,
        ),
        (
            "ingest_store_errors_total",
            Counter,
            "failed store writes (retried)",
            &i.store_errors,
        ),
        (
            "ingest_notices_dropped_total",
            Counter,
            "hub publishes (device errors, live observations) dropped because their queue was full",
            &i.notices_dropped,
        ),
        (
            "ingest_refused_no_consent_total",
            Counter,
            "observations refused for lack of collection consent",
            &i.refused_no_consent,
        ),
        (
            "ingest_erased_total",
            Counter,
            "observations erased on request",
            &i.erased,
        ),
        (
            "ingest_shared_stored_total",
            Counter,
            "pseudonymized observations written to the shared store",
            &i.shared_stored,
        ),
        (
            "ingest_store_faults_total",
            Counter,
            "times a store file was found missing, replaced or truncated",
            &i.store_faults,
        ),
        (
            "ingest_stores_unavailable",
            Gauge,
            "store files at fault now; acknowledgements are withheld while not 0",
            &i.stores_unavailable,
        ),
        (
            "wal_bytes",
            Gauge,
            "bytes the write-ahead log holds",
            &i.wal_bytes,
        ),
        (
            "wal_full",
            Gauge,
            "1 while the write-ahead log is full and acknowledgements are withheld",
            &i.wal_full,
        ),
        (
            "wal_failing",
            Gauge,
            "1 while the write-ahead log cannot be written and acknowledgements are withheld",
            &i.wal_failing,
        ),
        (
            "wal_full_episodes_total",
            Counter,
            "times the write-ahead log became full",
            &i.wal_full_episodes,
        ),
        (
            "wal_refused_log_full_total",
            Counter,
            "MQTT 5 publishes answered 0x97 because the log was full",
            &i.refused_log_full,
        ),
        (
            "wal_errors_total",
            Counter,
            "failed log writes or fsyncs (retried)",
            &i.wal_errors,
        ),
        (
            "wal_quarantined_segments",
            Gauge,
            "damaged log segments set aside at start",
            &i.wal_quarantined,
        ),
        (
            "influxdb_points_total",
            Counter,
            "points InfluxDB accepted",
            &i.influx_points,
        ),
        (
            "influxdb_retries_total",
            Counter,
            "failed InfluxDB writes that were retried",
            &i.influx_retries,
        ),
        (
            "influxdb_rejected_total",
            Counter,
            "rows InfluxDB refused (dead-lettered)",
            &i.influx_rejected,
        ),
        (
            "windows_computed_total",
            Counter,
            "sleep days and step days computed",
            &i.windows_computed,
        ),
        (
            "windows_refused_total",
            Counter,
            "windowed outputs the pipeline refused",
            &i.windows_refused,
        ),
        (
            "retention_folded_total",
            Counter,
            "raw observations folded into rollups past their retention",
            &i.retention_folded,
        ),
        (
            "retention_expired_total",
            Counter,
            "rollup rows deleted past their retention",
            &i.retention_expired,
        ),
        (
            "store_sealed_total",
            Counter,
            "raw rows sealed into compressed chunks",
            &i.store_sealed,
        ),
        (
            "alerts_raised_total",
            Counter,
            "alerts recorded for care services (one per service told)",
            &i.alerts_raised,
        ),
        (
            "alerts_unaddressed_total",
            Counter,
            "alert conditions met for citizens without care consent for the metric (nobody told)",
            &i.alerts_unaddressed,
        ),
    ];
    let mut out = String::with_capacity(4096);
    for (name, kind, help, value) in entries {
        let kind = match kind {
            Counter => "counter",
            Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP kenko_{name} {help}");
        let _ = writeln!(out, "# TYPE kenko_{name} {kind}");
        let _ = writeln!(out, "kenko_{name} {}", value.load(Ordering::Relaxed));
    }
    render_histogram(
        "ingest_store_delay_seconds",
        "time from the hub receiving an observation to its commit in personal.db, where queries see it",
        &ingest.store_delay,
        &mut out,
    );
    if let Some(lags) = lags {
        render_lags(lags, &mut out);
    }
    render_logins(&broker.login, &mut out);
    if let Some(router) = broker.router.get() {
        render_routing(router, &mut out);
    }
    out
}

/// A histogram of delays, in seconds as Prometheus expects.
fn render_histogram(name: &str, help: &str, histogram: &Histogram, out: &mut String) {
    let _ = writeln!(out, "# HELP kenko_{name} {help}");
    let _ = writeln!(out, "# TYPE kenko_{name} histogram");
    let cumulative = histogram.cumulative();
    for (bound_ms, n) in DELAY_BOUNDS_MS.iter().zip(&cumulative) {
        let le = *bound_ms as f64 / 1000.0;
        let _ = writeln!(out, "kenko_{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let all = cumulative.last().copied().unwrap_or(0);
    let _ = writeln!(out, "kenko_{name}_bucket{{le=\"+Inf\"}} {all}");
    let sum = histogram.sum_ms() as f64 / 1000.0;
    let _ = writeln!(out, "kenko_{name}_sum {sum}");
    let _ = writeln!(out, "kenko_{name}_count {}", histogram.count());
}

/// The router's gauges and counters, and the drops of each session whose queue overflowed.
fn render_lags(lags: &SinkLags, out: &mut String) {
    out.push_str("# HELP kenko_sink_lag_bytes bytes of log records each sink has yet to write\n");
    out.push_str("# TYPE kenko_sink_lag_bytes gauge\n");
    for lag in lags.lags() {
        let _ = writeln!(
            out,
            "kenko_sink_lag_bytes{{sink=\"{}\"}} {}",
            lag.sink, lag.bytes
        );
    }
}

fn render_routing(router: &Router, out: &mut String) {
    let stats = &router.stats;
    let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
    let figures: [(&str, &str, &str, u64); 7] = [
        ("mqtt_sessions", "gauge", "sessions the router holds (connected or kept)", router.session_count() as u64),
        ("mqtt_subscriptions", "gauge", "subscriptions in force (each member of a shared group once)", router.subscription_count() as u64),
        ("mqtt_retained_messages", "gauge", "retained messages held", router.retained_count() as u64),
        ("mqtt_routed_publishes_total", "counter", "publishes routed (telemetry excluded)", load(&stats.received)),
        ("mqtt_queued_deliveries_total", "counter", "deliveries queued for sessions", load(&stats.routed)),
        ("mqtt_queue_dropped_total", "counter", "deliveries dropped because a session's queue was full, or a shared one with no member left", load(&stats.dropped)),
        ("mqtt_expired_total", "counter", "deliveries dropped because the message expired before it could be sent", load(&stats.expired)),
    ];
    for (name, kind, help, value) in figures {
        let _ = writeln!(out, "# HELP kenko_{name} {help}");
        let _ = writeln!(out, "# TYPE kenko_{name} {kind}");
        let _ = writeln!(out, "kenko_{name} {value}");
    }
    let name = "mqtt_session_dropped_total";
    let _ = writeln!(out, "# HELP kenko_{name} deliveries a session's full queue dropped, by QoS (0, or 1 for QoS 1 and 2)");
    let _ = writeln!(out, "# TYPE kenko_{name} counter");
    for (key, qos0, qos12) in router.drops() {
        let (principal, client_id) = key.split_once('\u{1f}').unwrap_or(("", &key));
        let labels = format!(
            "principal=\"{}\",client_id=\"{}\"",
            label_value(principal),
            label_value(client_id)
        );
        let _ = writeln!(out, "kenko_{name}{{{labels},qos=\"0\"}} {qos0}");
        let _ = writeln!(out, "kenko_{name}{{{labels},qos=\"1\"}} {qos12}");
    }
}

/// A Prometheus label value: backslash, double quote and line feed escaped.
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Login counters, one sample per listener (`listener="mqtt"|"http"`).
fn render_logins(login: &LoginStats, out: &mut String) {
    let by_listener: [(&str, &str, &[AtomicU64; 2]); 3] = [
        (
            "login_failures_total",
            "logins refused for a bad username or password",
            &login.failures,
        ),
        (
            "login_throttled_total",
            "logins refused before verification: too many attempts from the source or for the principal",
            &login.throttled,
        ),
        (
            "login_busy_total",
            "logins refused because the password verification queue was full",
            &login.busy,
        ),
    ];
    for (name, help, counters) in by_listener {
        let _ = writeln!(out, "# HELP kenko_{name} {help}");
        let _ = writeln!(out, "# TYPE kenko_{name} counter");
        for listener in [Listener::Mqtt, Listener::Http] {
            let value = LoginStats::get(counters, listener);
            let label = listener.name();
            let _ = writeln!(out, "kenko_{name}{{listener=\"{label}\"}} {value}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP kenko_login_stand_in_verifications_total logins verified against a stand-in hash (unknown name or no password), so that they take as long as known ones"
    );
    let _ = writeln!(
        out,
        "# TYPE kenko_login_stand_in_verifications_total counter"
    );
    let _ = writeln!(
        out,
        "kenko_login_stand_in_verifications_total {}",
        login.stand_in_verifications.load(Ordering::Relaxed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_type_and_a_value() {
        let broker = BrokerStats::default();
        broker.receive_maximum_exceeded.store(3, Ordering::Relaxed);
        let ingest = IngestStats::default();
        ingest.wal_full.store(1, Ordering::Relaxed);
        let text = render(&broker, &ingest, None);
        assert!(
            text.contains("kenko_mqtt_receive_maximum_exceeded_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE kenko_wal_full gauge\nkenko_wal_full 1\n"),
            "{text}"
        );
        broker.login.failures[Listener::Http as usize].store(7, Ordering::Relaxed);
        let text = render(&broker, &ingest, None);
        assert!(
            text.contains("kenko_login_failures_total{listener=\"http\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("kenko_login_failures_total{listener=\"mqtt\"} 0\n"),
            "{text}"
        );
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        // Each bucket of the one histogram, and its sum and count, are samples of their own.
        let histogram = DELAY_BOUNDS_MS.len() + 1 + 2;
        assert_eq!(
            samples,
            types + 3 + (histogram - 1),
            "three login counters have a sample per listener"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.split_once(' ').expect("name value");
            let name = name.split('{').next().expect("a name");
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
            value.parse::<f64>().expect("a number");
        }
    }

    #[test]
    fn the_store_delay_is_a_cumulative_histogram_in_seconds() {
        let ingest = IngestStats::default();
        ingest.store_delay.observe_ms([3, 40, 40, 1_500]);
        let text = render(&BrokerStats::default(), &ingest, None);
        for expected in [
            "# TYPE kenko_ingest_store_delay_seconds histogram\n",
            "kenko_ingest_store_delay_seconds_bucket{le=\"0.005\"} 1\n",
            "kenko_ingest_store_delay_seconds_bucket{le=\"0.05\"} 3\n",
            "kenko_ingest_store_delay_seconds_bucket{le=\"2.5\"} 4\n",
            "kenko_ingest_store_delay_seconds_bucket{le=\"+Inf\"} 4\n",
            "kenko_ingest_store_delay_seconds_sum 1.583\n",
            "kenko_ingest_store_delay_seconds_count 4\n",
        ] {
            assert!(text.contains(expected), "{expected} in:\n{text}");
        }
    }
}
