//! What the writer tells beyond the verdicts: dead letters recorded durably, errors to
//! devices (`devices/{id}/errors`) and live copies of stored observations.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, error, info, warn};

use super::{Batch, Notice, Origin, Outcome, Submission};
use crate::backoff::Backoff;
use crate::deadletter::{DeadLetter, DeadLetterStore};
use crate::decode::{RejectCode, Rejection};
use crate::live::LiveFeed;
use crate::observation::Observation;
use crate::stats::IngestStats;

pub(super) struct Answers {
    pub dead: DeadLetterStore,
    pub notices: Option<flume::Sender<Notice>>,
    pub stats: Arc<IngestStats>,
    /// Publish a live copy of every stored observation (`ingest.live_republish`).
    pub live_republish: bool,
    /// The console's live views.
    pub live: LiveFeed,
}

impl Answers {
    /// Once a batch's verdicts are final (its records durable): records the dead letters of
    /// its refused device messages, counts, tells devices their errors, publishes live
    /// copies, and sends every verdict.
    pub fn settle(&mut self, batch: &mut Batch) {
        collect_letters(batch);
        self.record_dead_letters(&batch.letters);
        let stored = batch.verdicts.iter().filter(|v| v.is_ok()).count() as u64;
        self.stats
            .messages_stored
            .fetch_add(stored, Ordering::Relaxed);
        self.stats
            .dead_lettered
            .fetch_add(batch.letters.len() as u64, Ordering::Relaxed);
        for ((sub, verdict), (span, _)) in batch
            .submissions
            .drain(..)
            .zip(batch.verdicts.drain(..))
            .zip(&batch.spans)
        {
            match &verdict {
                Err(rejection)
                    if rejection.code != RejectCode::LogFull && sub.origin == Origin::Device =>
                {
                    self.notify_error(&sub, rejection)
                }
                Ok(()) => {
                    let stored = &batch.observations[span.clone()];
                    self.live.observations(stored);
                    if self.live_republish {
                        self.republish(stored);
                    }
                }
                _ => {}
            }
            if let Some(reply) = sub.reply {
                // A closed connection no longer needs its verdict; the device resends.
                let _ = reply.to.send(Outcome {
                    token: reply.token,
                    verdict,
                });
            }
        }
    }

    /// Records dead letters; while their store fails, retries with backoff, so nothing is
    /// answered before its letter is durable.
    pub fn record_dead_letters(&mut self, letters: &[DeadLetter]) {
        if letters.is_empty() {
            return;
        }
        let mut backoff = Backoff::default();
        while let Err(e) = self.dead.record(letters) {
            backoff.failed();
            self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
            error!(error = %e, letters = letters.len(), retry_in_ms = backoff.next_wait().as_millis() as u64,
                "cannot record dead letters; holding acknowledgements and retrying");
            backoff.wait();
        }
        if let Some(after) = backoff.succeeded() {
            info!(
                after_ms = after.as_millis() as u64,
                "dead letters recorded again; acknowledging resumes"
            );
        }
    }

    pub fn publish(&self, topic: String, payload: Vec<u8>, event_ms: Option<i64>) {
        let Some(notices) = &self.notices else { return };
        let notice = Notice {
            topic,
            payload: Bytes::from(payload),
            event_ms,
        };
        if notices.try_send(notice).is_err() {
            // The data itself is stored or dead-lettered; only the live copy is lost.
            let dropped = self.stats.notices_dropped.fetch_add(1, Ordering::Relaxed);
            if dropped.is_multiple_of(1000) {
                warn!(
                    dropped = dropped + 1,
                    "hub publish queue full; live notices dropped"
                );
            }
        }
    }

    pub fn notify_error(&self, sub: &Submission, rejection: &Rejection) {
        let body = serde_json::json!({
            "time": format_ms(sub.received_ms),
            "topic": format!("devices/{}/telemetry", sub.device),
            "code": rejection.code.as_str(),
            "reason": rejection.message,
        });
        self.publish(
            format!("devices/{}/errors", sub.device),
            body.to_string().into_bytes(),
            None,
        );
    }

    pub fn republish(&self, observations: &[Observation]) {
        for obs in observations {
            let body = serde_json::json!({
                "time": format_ms(obs.time_ms),
                "device": &*obs.device,
                "metric": obs.metric.name(),
                "value": obs.value,
                "unit": obs.metric.unit(),
                "loinc": obs.metric.loinc(),
                "flags": obs.flags,
            });
            self.publish(
                format!(
                    "citizens/{}/observations/{}",
                    obs.citizen,
                    obs.metric.name()
                ),
                body.to_string().into_bytes(),
                Some(obs.time_ms),
            );
        }
    }
}

/// The dead letters of a batch: its device messages refused for what they are.
fn collect_letters(batch: &mut Batch) {
    for (sub, verdict) in batch.submissions.iter().zip(&batch.verdicts) {
        let Err(rejection) = verdict else { continue };
        if sub.origin != Origin::Device {
            continue;
        }
        match rejection.code {
            // Answered, and counted in `refused_no_consent`, but its payload is kept
            // nowhere; one line per message would flood the log while a citizen's device
            // keeps sending after a withdrawal.
            RejectCode::NoConsent => {
                debug!(device = %sub.device, "message refused: no collection consent")
            }
            // Not refused for what it is: the device sends it again.
            RejectCode::LogFull => {}
            _ => batch.letters.push(DeadLetter {
                received_ms: sub.received_ms,
                client_id: sub.client_id.to_string(),
                topic: format!(
                    "devices/{}/telemetry{}",
                    sub.device,
                    if sub.protobuf { "/pb" } else { "" }
                ),
                device: Some(sub.device.to_string()),
                reason_code: rejection.code.as_str().to_owned(),
                reason: rejection.message.clone(),
                payload: sub.payload.to_vec(),
            }),
        }
    }
}

fn format_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}
