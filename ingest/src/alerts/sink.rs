//! The alerts sink: follows the write-ahead log like the stores do (its own checkpoint,
//! `alerts`), evaluates the rules on each identified observation, and records what they
//! raise for every care service the citizen's care consent for the metric lets see it, then
//! publishes each on `care/{service}/alerts`. No care consent, no alert.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{error, info, warn};

use super::eval::{Evaluator, Raised};
use super::store::{Alert, AlertStore, NewAlert};
use crate::backoff::Backoff;
use crate::consent::{ConsentView, Consents, Purpose};
use crate::live::LiveFeed;
use crate::pipeline::Notice;
use crate::sink::{Batch, Batching, Sink, Stop, Stopped};
use crate::stats::IngestStats;
use crate::wal::Position;

/// How often silences are looked for.
const TICK: Duration = Duration::from_secs(1);
/// A batch whose newest message was received longer ago than this is a backlog.
const BEHIND: Duration = Duration::from_secs(10);
/// A sink that has written nothing for this long has no backlog left.
const IDLE: Duration = Duration::from_secs(2);

pub struct AlertSink {
    pub eval: Evaluator,
    pub store: AlertStore,
    pub consents: ConsentView,
    /// The broker's queue of hub messages; `None` without a broker (tests, rebuilds).
    pub notices: Option<flume::Sender<Notice>>,
    /// The console's live views.
    pub live: LiveFeed,
    pub stats: Arc<IngestStats>,
    last_tick: Instant,
    erasures_seen: u64,
    /// Silences raised but not yet recorded (alerts.db failed).
    silences: Vec<Raised>,
    /// When the last batch was written, and whether it was old news (received more than
    /// [`BEHIND`] before): while the sink catches up, silences wait, since what ends them
    /// may still be in the log.
    last_batch: Option<(Instant, bool)>,
}

impl AlertSink {
    pub fn new(
        eval: Evaluator,
        store: AlertStore,
        consents: ConsentView,
        notices: Option<flume::Sender<Notice>>,
        live: LiveFeed,
        stats: Arc<IngestStats>,
    ) -> AlertSink {
        AlertSink {
            eval,
            store,
            consents,
            notices,
            live,
            stats,
            last_tick: Instant::now(),
            erasures_seen: u64::MAX,
            silences: Vec::new(),
            last_batch: None,
        }
    }

    /// The alerts `raised` makes, one per care service that may see each.
    /// The alerts `raised` makes, one per care service that may see each; and how many
    /// conditions no service may be told of.
    fn address(&self, raised: &[Raised], consents: &Consents, now_ms: i64) -> (Vec<NewAlert>, u64) {
        let (mut alerts, mut unaddressed) = (Vec::new(), 0);
        for r in raised {
            let rule = &self.eval.rules()[r.rule];
            let metric = rule.metric.name();
            let services: Vec<&str> = consents
                .grantees(&r.citizen, Purpose::Care)
                .into_iter()
                .filter(|g| {
                    // Every reading the alert rests on, from the first to the last, must be
                    // the service's to see (a consent's time window is one span).
                    [r.since_ms, r.event_ms]
                        .into_iter()
                        .all(|t| consents.permits(&r.citizen, g, Purpose::Care, metric, t, now_ms))
                })
                .collect();
            if services.is_empty() {
                unaddressed += 1;
            }
            for service in services {
                alerts.push(NewAlert {
                    rule: rule.name.to_string(),
                    citizen: r.citizen.to_string(),
                    grantee: service.to_owned(),
                    device: r.device.to_string(),
                    metric: metric.to_owned(),
                    started_ms: r.started_ms,
                    event_ms: r.event_ms,
                    raised_ms: now_ms,
                    value: r.value,
                });
            }
        }
        (alerts, unaddressed)
    }

    /// Records what `raised` makes (retrying while alerts.db fails) and publishes the new
    /// ones; [`Stopped`] if the hub stops while it still fails (the log keeps the batch).
    fn raise(&mut self, raised: &[Raised], stop: &Stop) -> Result<(), Stopped> {
        let mut backoff = Backoff::default();
        while let Err(e) = self.try_raise(raised) {
            backoff.failed();
            error!(error = %e, retry_in_ms = backoff.next_wait().as_millis() as u64,
                "cannot record alerts; retrying");
            if stop.requested() {
                return Err(Stopped);
            }
            backoff.wait();
        }
        Ok(())
    }

    /// One attempt: records what `raised` makes for the services that may see it, then
    /// publishes the alerts that are new.
    fn try_raise(&mut self, raised: &[Raised]) -> Result<(), crate::store::StoreError> {
        if raised.is_empty() {
            return Ok(());
        }
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let consents = self.consents.refresh();
        let (alerts, unaddressed) = self.address(raised, &consents, now_ms);
        let added = if alerts.is_empty() {
            Vec::new()
        } else {
            self.store.record(&alerts)?
        };
        // Counted once the attempt has succeeded (a failed one is tried again).
        self.stats
            .alerts_unaddressed
            .fetch_add(unaddressed, Ordering::Relaxed);
        self.stats
            .alerts_raised
            .fetch_add(added.len() as u64, Ordering::Relaxed);
        for alert in &added {
            info!(alert = alert.id, rule = %alert.new.rule, service = %alert.new.grantee, "alert raised");
            self.publish(alert);
            self.live.alert(alert);
        }
        Ok(())
    }

    fn publish(&self, alert: &Alert) {
        let Some(notices) = &self.notices else { return };
        let notice = Notice {
            topic: format!("care/{}/alerts", alert.new.grantee),
            payload: Bytes::from(payload(alert).into_bytes()),
            event_ms: None,
        };
        if notices.try_send(notice).is_err() {
            // Recorded all the same: the care view and the API list it.
            warn!(
                alert = alert.id,
                "hub publish queue full; the alert's MQTT message was dropped"
            );
        }
    }

    /// Deletes the alerts of citizens who asked for erasure, when the records changed.
    fn erase_if_asked(&mut self) {
        let generation = self.consents.book().generation();
        if generation == self.erasures_seen {
            return;
        }
        let consents = self.consents.refresh();
        for (citizen, at) in consents.erasures() {
            // What the rules know of the citizen goes too: no silence or trend is raised
            // about readings that were erased.
            self.eval.forget(citizen);
            if let Err(e) = self.store.erase(citizen, at) {
                error!(error = %e, "cannot erase a citizen's alerts; will retry");
                return;
            }
        }
        self.erasures_seen = generation;
    }
}

/// An alert as published and as the API shows it (JSON).
pub fn payload(alert: &Alert) -> String {
    let a = &alert.new;
    let time = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
    };
    serde_json::json!({
        "id": alert.id,
        "rule": a.rule,
        "citizen": a.citizen,
        "device": a.device,
        "metric": a.metric,
        "value": a.value,
        "started": time(a.started_ms),
        "event_time": time(a.event_ms),
        "raised": time(a.raised_ms),
        "acknowledged": alert.acked.as_ref().map(|(at, _)| time(*at)),
        "acknowledged_by": alert.acked.as_ref().map(|(_, by)| by),
    })
    .to_string()
}

impl Sink for AlertSink {
    fn name(&self) -> &'static str {
        "alerts"
    }

    fn batching(&self) -> Batching {
        Batching {
            max: 10_000,
            linger: Duration::ZERO,
        }
    }

    fn write(&mut self, batch: &Batch, _upto: Position, stop: &Stop) -> Result<(), Stopped> {
        let mut raised = Vec::new();
        for o in &batch.personal {
            self.eval.observe(o, &mut raised);
        }
        let newest = batch.personal.iter().map(|o| o.received_ms).max();
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let behind = newest.is_some_and(|r| now_ms - r > BEHIND.as_millis() as i64);
        self.last_batch = Some((Instant::now(), behind));
        self.raise(&raised, stop)
    }

    fn tend(&mut self) {
        self.erase_if_asked();
        if self.last_tick.elapsed() < TICK {
            return;
        }
        self.last_tick = Instant::now();
        if self
            .last_batch
            .is_some_and(|(at, behind)| behind && at.elapsed() < IDLE)
        {
            return; // catching up: a reading that ends a silence may still be in the log
        }
        self.eval
            .tick(jiff::Timestamp::now().as_millisecond(), &mut self.silences);
        // Nothing in the log holds a silence: one that cannot be recorded is kept and tried
        // again at the next tick, without holding the sink (or the hub's stop) meanwhile.
        let silences = std::mem::take(&mut self.silences);
        if let Err(e) = self.try_raise(&silences) {
            error!(error = %e, silences = silences.len(), "cannot record alerts; trying again in a second");
            self.silences = silences;
        }
    }
}
