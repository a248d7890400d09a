//! What the writer tells beyond the verdicts: dead letters recorded durably, errors to
//! devices (`devices/{id}/errors`) and live copies of stored observations.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tracing::{error, info, warn};

use super::{Notice, Submission, Writer};
use crate::backoff::Backoff;
use crate::deadletter::DeadLetter;
use crate::decode::Rejection;
use crate::observation::Observation;

impl Writer {
    /// Records dead letters; while their store fails, retries with backoff, so nothing is
    /// answered before its letter is durable.
    pub(super) fn record_dead_letters(&mut self, letters: &[DeadLetter]) {
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

    pub(super) fn publish(&self, topic: String, payload: Vec<u8>, event_ms: Option<i64>) {
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

    pub(super) fn notify_error(&self, sub: &Submission, rejection: &Rejection) {
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

    pub(super) fn republish(&self, observations: &[Observation]) {
        for obs in observations {
            let body = serde_json::json!({
                "time": format_ms(obs.time_ms),
                "device": &*obs.device,
                "metric": obs.metric.name(),
                "value": obs.value,
                "unit": obs.metric.unit(),
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

fn format_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}
