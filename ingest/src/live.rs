//! What happens in the hub as it happens, for whoever watches (the console's live views):
//! stored observations, message by message, and newly recorded alerts. A broadcast with a
//! bounded backlog: a watcher that falls behind skips ahead (and is told how much it
//! missed); nothing waits for watchers, and with none, nothing is even copied.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::alerts::Alert;
use crate::observation::Observation;

/// Events kept for a watcher that is slow to read.
const BACKLOG: usize = 1024;

#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// The observations of one stored message (all from one device).
    Observations(Arc<[Observation]>),
    /// An alert just recorded for a care service.
    Alert(Arc<Alert>),
}

#[derive(Debug, Clone)]
pub struct LiveFeed {
    tx: broadcast::Sender<LiveEvent>,
}

impl Default for LiveFeed {
    fn default() -> Self {
        LiveFeed {
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

impl LiveFeed {
    pub fn watch(&self) -> broadcast::Receiver<LiveEvent> {
        self.tx.subscribe()
    }

    /// Tells watchers about a stored message's observations (copied only if someone watches).
    pub fn observations(&self, observations: &[Observation]) {
        if self.tx.receiver_count() > 0 && !observations.is_empty() {
            let _ = self.tx.send(LiveEvent::Observations(observations.into()));
        }
    }

    pub fn alert(&self, alert: &Alert) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(LiveEvent::Alert(Arc::new(alert.clone())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kenko_devices::Metric;

    fn obs(value: f64) -> Observation {
        Observation {
            citizen: Arc::from("c"),
            device: Arc::from("d"),
            metric: Metric::HeartRate,
            value,
            time_ms: 0,
            received_ms: 0,
            seq: 0,
            flags: 0,
        }
    }

    #[test]
    fn watchers_get_what_happens_after_they_start_watching_and_a_slow_one_skips_ahead() {
        let feed = LiveFeed::default();
        feed.observations(&[obs(1.0)]); // nobody watches: dropped
        let mut watcher = feed.watch();
        feed.observations(&[obs(2.0), obs(3.0)]);
        let Ok(LiveEvent::Observations(got)) = watcher.try_recv() else {
            panic!("an event");
        };
        assert_eq!(
            got.iter().map(|o| o.value).collect::<Vec<_>>(),
            vec![2.0, 3.0]
        );
        assert!(watcher.try_recv().is_err(), "nothing more");
        for i in 0..BACKLOG + 10 {
            feed.observations(&[obs(i as f64)]);
        }
        assert!(matches!(
            watcher.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(10))
        ));
        assert!(watcher.try_recv().is_ok(), "then on from the backlog");
    }
}
