//! What one device sends, apart from how it gets there: at each message slot (a tick of its
//! clock live, a step of event time in a replay) it takes its readings, keeps them while it is
//! offline, and then sends them in its profile's payloads; sometimes a message twice, and with
//! the fault rate a faulty message in the slot instead (the readings go out at the next).
//!
//! Nothing is lost on the way: readings held back by an offline period or a fault go out
//! later (in one batch where the profile allows, else one message each), so what the hub
//! stores matches the model's ground truth, and a wearable's steps always count from the
//! previous reading taken.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tracing::warn;

use super::faults::{self, FaultReason};
use super::habits::Habits;
use super::hash::mix;
use super::model::{KindModel, Sample};
use super::writer;
use kenko_devices::profile::Profile;

/// Samples in one batch message at most; a longer backlog goes in several.
pub(crate) const MAX_BATCH: usize = 60;
/// Samples a device keeps while it cannot send; the oldest go first beyond this.
const MAX_PENDING: usize = 10_000;

/// What a message is, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// New readings: this many samples and readings the profile carries.
    Good {
        samples: u64,
        readings: u64,
    },
    /// The previous message once more, byte for byte.
    Duplicate,
    Fault(FaultReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub seq: u64,
    pub payload: Vec<u8>,
    pub sent: Sent,
}

pub(crate) struct Emitter {
    model: KindModel,
    profile: Arc<Profile>,
    habits: Habits,
    fault_rate: f64,
    /// Fault decisions, drawn in sequence, apart from the habits so that the fault rate does
    /// not change them.
    faults: SmallRng,
    /// The counter of the last message sent.
    seq: u64,
    pending: VecDeque<Sample>,
    /// Event time of the last sample taken.
    last_sample: Option<Timestamp>,
    /// Message slots so far.
    tick: u64,
    /// Samples given up because too many were pending.
    pub dropped: u64,
}

impl Emitter {
    /// A device measuring with `model`, writing `profile`, with habits and fault draws from
    /// `seed`; `fault_rate` is the chance that a slot's message is a fault.
    pub fn new(model: KindModel, profile: Arc<Profile>, seed: u64, fault_rate: f64) -> Emitter {
        Emitter {
            model,
            profile,
            habits: Habits::new(seed),
            fault_rate,
            faults: SmallRng::seed_from_u64(mix(seed ^ 0x0066_6175_6c74)),
            seq: 0,
            pending: VecDeque::new(),
            last_sample: None,
            tick: 0,
            dropped: 0,
        }
    }

    /// How far this device's clock is off.
    pub fn skew(&self) -> SignedDuration {
        self.habits.skew()
    }

    /// A live slot at true time `now`: the device takes a reading stamped with its own clock
    /// (every kind measures on every message, so a demo shows each metric at once) and sends
    /// what it can. `interval` is the time since the previous slot.
    pub fn live(&mut self, now: Timestamp, interval: Duration, out: &mut Vec<Message>) {
        let mut at = now + self.skew();
        if let Some(last) = self.last_sample {
            // Each reading a later time than the last, however the clock was read.
            at = at.max(last + SignedDuration::from_millis(1));
        }
        self.take(at, interval);
        self.send(now, out);
    }

    /// A replay slot of event times `[slot, slot + step)`, cut at `until`: a continuous device
    /// reads at `slot`, a spot-measurement device at each of its measurement times in the
    /// slot (often none); all stamped with the device's clock. `now` is the true time of
    /// sending.
    pub fn replay(
        &mut self,
        slot: Timestamp,
        step: Duration,
        until: Timestamp,
        now: Timestamp,
        out: &mut Vec<Message>,
    ) {
        let skew = self.skew();
        if self.model.is_spot() {
            let end = slot.checked_add(step).map_or(until, |e| e.min(until));
            for at in self.model.measurements(slot, end) {
                self.take(at + skew, step);
            }
        } else {
            self.take(slot + skew, step);
        }
        self.send(now, out);
    }

    /// Sends everything still held back, whatever the habits say and without faults: the
    /// device's last chance before it stops.
    pub fn flush(&mut self, out: &mut Vec<Message>) {
        self.send_pending(out);
    }

    fn take(&mut self, at: Timestamp, interval: Duration) {
        let since = self
            .last_sample
            .unwrap_or_else(|| at.checked_sub(interval).unwrap_or(at));
        let sample = self.model.sample(at, since);
        self.last_sample = Some(at);
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(sample);
    }

    fn send(&mut self, now: Timestamp, out: &mut Vec<Message>) {
        let tick = self.tick;
        self.tick += 1;
        if self.pending.is_empty() || self.habits.offline(tick) {
            return;
        }
        if self.faults.random::<f64>() < self.fault_rate {
            let reason = FaultReason::ALL[self.faults.random_range(0..FaultReason::ALL.len())];
            if let Some(sample) = self.pending.back() {
                self.seq += 1;
                let payload = faults::payload(
                    &self.profile,
                    self.seq,
                    sample,
                    reason,
                    now,
                    &mut self.faults,
                );
                out.push(Message {
                    seq: self.seq,
                    payload,
                    sent: Sent::Fault(reason),
                });
            }
            return;
        }
        self.send_pending(out);
    }

    fn send_pending(&mut self, out: &mut Vec<Message>) {
        let batch = if writer::is_batching(&self.profile) {
            MAX_BATCH
        } else {
            1
        };
        while !self.pending.is_empty() {
            let n = self.pending.len().min(batch);
            let samples: Vec<Sample> = self.pending.drain(..n).collect();
            let readings = samples
                .iter()
                .flat_map(|s| &s.readings)
                .filter(|(m, _)| writer::carries(&self.profile, *m))
                .count();
            let payload = match writer::write(&self.profile, self.seq + 1, &samples) {
                Ok(payload) => payload,
                Err(e) => {
                    warn!(error = %e, "cannot write a payload; readings dropped");
                    self.dropped += n as u64;
                    continue;
                }
            };
            self.seq += 1;
            let duplicate = self.habits.duplicate().then(|| Message {
                seq: self.seq,
                payload: payload.clone(),
                sent: Sent::Duplicate,
            });
            out.push(Message {
                seq: self.seq,
                payload,
                sent: Sent::Good {
                    samples: n as u64,
                    readings: readings as u64,
                },
            });
            out.extend(duplicate);
        }
    }
}

#[cfg(test)]
mod tests;
