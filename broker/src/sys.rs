//! The broker's statistics under `$SYS/broker/`, as operators know them from Mosquitto:
//! retained messages the hub publishes every `mqtt.sys_interval_s`. Only principals the ACL
//! allows `$SYS/#` see them (a `#` subscription does not match `$` topics, MQTT-4.7.2-1).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttd::protocol::QoS;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::route::message::Message;
use crate::route::Router;
use crate::BrokerStats;

/// Averages per minute over 1, 5 and 15 minutes, as Mosquitto's `load/.../{1,5,15}min`.
const LOAD_WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// Publishes the statistics until `shutdown`.
pub(crate) async fn publish_every(
    interval: Duration,
    router: Arc<Router>,
    stats: Arc<BrokerStats>,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let mut load = Load::default();
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let figures = Figures::now(&router, &stats, started);
        load.update(&figures, interval.as_secs_f64());
        for (topic, value) in figures.topics().into_iter().chain(load.topics()) {
            router.publish(sys_message(&topic, value));
        }
    }
}

/// The counters read at one moment.
struct Figures {
    connected: u64,
    received: u64,
    sent: u64,
    subscriptions: usize,
    retained: usize,
    uptime_s: u64,
}

impl Figures {
    fn now(router: &Router, stats: &BrokerStats, started: Instant) -> Figures {
        Figures {
            connected: stats.connected.load(Ordering::Relaxed),
            received: router.stats.received.load(Ordering::Relaxed)
                + stats.telemetry_in.load(Ordering::Relaxed),
            sent: stats.delivered.load(Ordering::Relaxed),
            subscriptions: router.subscription_count(),
            retained: router.retained_count(),
            uptime_s: started.elapsed().as_secs(),
        }
    }

    fn topics(&self) -> Vec<(String, String)> {
        vec![
            ("clients/connected".into(), self.connected.to_string()),
            ("messages/received".into(), self.received.to_string()),
            ("messages/sent".into(), self.sent.to_string()),
            ("subscriptions/count".into(), self.subscriptions.to_string()),
            ("retained messages/count".into(), self.retained.to_string()),
            ("uptime".into(), format!("{} seconds", self.uptime_s)),
        ]
    }
}

/// Exponentially weighted averages of messages per minute.
#[derive(Default)]
struct Load {
    last: Option<(u64, u64)>,
    received: [f64; 3],
    sent: [f64; 3],
}

impl Load {
    fn update(&mut self, figures: &Figures, interval_s: f64) {
        let (received, sent) = (figures.received, figures.sent);
        if let Some((last_received, last_sent)) = self.last {
            let per_minute =
                |now: u64, before: u64| now.saturating_sub(before) as f64 * 60.0 / interval_s;
            let r = per_minute(received, last_received);
            let s = per_minute(sent, last_sent);
            for (i, (_, window)) in LOAD_WINDOWS.iter().enumerate() {
                let keep = (-interval_s / window).exp();
                self.received[i] = self.received[i] * keep + r * (1.0 - keep);
                self.sent[i] = self.sent[i] * keep + s * (1.0 - keep);
            }
        }
        self.last = Some((received, sent));
    }

    fn topics(&self) -> Vec<(String, String)> {
        let mut topics = Vec::new();
        for (i, (name, _)) in LOAD_WINDOWS.iter().enumerate() {
            topics.push((
                format!("load/messages/received/{name}"),
                format!("{:.2}", self.received[i]),
            ));
            topics.push((
                format!("load/messages/sent/{name}"),
                format!("{:.2}", self.sent[i]),
            ));
        }
        topics
    }
}

fn sys_message(topic: &str, value: String) -> Message {
    Message::new(
        Arc::from(format!("$SYS/broker/{topic}")),
        Bytes::from(value),
        QoS::AtMostOnce,
        true,
        None,
        None,
    )
}
