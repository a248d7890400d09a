//! The writer's consent routing: which observations of a message the hub may keep, and
//! which pseudonymized copies go to the shared store.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kenko_devices::{DeviceEntry, Registry};
use tracing::error;

use super::Submission;
use crate::consent::{ConsentView, Consents, Purpose, HUB};
use crate::decode::{RejectCode, Rejection};
use crate::observation::Observation;
use crate::pseudonym::Pseudonymizer;
use crate::stats::IngestStats;

pub(super) struct ConsentRouting {
    pub registry: Registry,
    pub consents: ConsentView,
    /// The consent generation the pseudonym cache was filled under.
    pub generation: u64,
    pub pseudonyms: Pseudonymizer,
    /// What stands for the device in the shared store.
    pub anonymous_device: Arc<str>,
    pub stats: Arc<IngestStats>,
}

impl ConsentRouting {
    /// The records in force, reread if anything was committed since: one snapshot decides
    /// a whole batch.
    pub fn refresh(&mut self) -> Arc<Consents> {
        let consents = self.consents.refresh();
        let generation = self.consents.book().generation();
        if generation != self.generation {
            // An erasure elsewhere may have forgotten a salt this cache still holds.
            self.pseudonyms.clear_cache();
            self.generation = generation;
        }
        consents
    }

    /// `rejection`, or a no-consent refusal if the device's citizen lets the hub collect
    /// nothing (or asked for erasure since): then nothing of the message is kept. A
    /// gateway's message may hold readings of any device registered behind it and of those
    /// it `named`, so then every such device's citizen must let the hub collect.
    pub fn without_consent(
        &self,
        consents: &Consents,
        sub: &Submission,
        named: &[Arc<DeviceEntry>],
        rejection: Rejection,
    ) -> Rejection {
        let devices = self.registry.snapshot();
        let Some(device) = devices.get(&sub.device) else {
            return rejection; // unknown device: no citizen to ask
        };
        let collects = |citizen: &str| {
            consents.permits_any(citizen, HUB, Purpose::Collect, sub.received_ms)
                && !consents.erased_after(citizen, sub.received_ms)
        };
        if collects(&device.entry.citizen)
            && devices.behind(&sub.device).all(|d| collects(&d.citizen))
            && named.iter().all(|d| collects(&d.citizen))
        {
            return rejection;
        }
        self.stats
            .refused_no_consent
            .fetch_add(1, Ordering::Relaxed);
        no_consent()
    }

    /// Pseudonymized copies of the observations whose citizen's research consent, in force
    /// when the message was received, covers their time.
    pub fn share(
        &mut self,
        consents: &Consents,
        observations: &[Observation],
        received_ms: i64,
        out: &mut Vec<Observation>,
    ) {
        for o in observations {
            if !consents.permits(
                &o.citizen,
                HUB,
                Purpose::Research,
                o.metric.name(),
                o.time_ms,
                received_ms,
            ) {
                continue;
            }
            match self.pseudonyms.pseudonym(&o.citizen) {
                Ok(pseudonym) => out.push(Observation {
                    citizen: pseudonym,
                    device: self.anonymous_device.clone(),
                    ..o.clone()
                }),
                Err(e) => {
                    // The identified observation is stored; only its research copy is missing.
                    self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                    error!(error = %e, "cannot make a pseudonym; research copy not written");
                }
            }
        }
    }

    /// Keeps the observations from `start` on that their citizen lets the hub collect (the
    /// collect consent in force when the message was received covers their time); counts
    /// the rest. `Err` if nothing of the message may be kept.
    pub fn filter_consent(
        &self,
        consents: &Consents,
        out: &mut Vec<Observation>,
        start: usize,
        received_ms: i64,
    ) -> Result<(), Rejection> {
        let before = out.len() - start;
        let mut kept = start;
        for i in start..out.len() {
            let o = &out[i];
            let collect = consents.permits(
                &o.citizen,
                HUB,
                Purpose::Collect,
                o.metric.name(),
                o.time_ms,
                received_ms,
            );
            if collect && !consents.erased_after(&o.citizen, received_ms) {
                out.swap(kept, i);
                kept += 1;
            }
        }
        out.truncate(kept);
        let refused = before - (kept - start);
        if refused > 0 {
            self.stats
                .refused_no_consent
                .fetch_add(refused as u64, Ordering::Relaxed);
        }
        if refused > 0 && kept == start {
            return Err(no_consent());
        }
        Ok(())
    }
}

fn no_consent() -> Rejection {
    Rejection {
        code: RejectCode::NoConsent,
        message: "the citizen has not consented to the collection of this data; nothing was stored"
            .into(),
    }
}
