//! When each device last sent a message, and how many it sends: what operators look at to
//! find a device that went quiet. Noted by the ingest writer once per batch (one lock), read
//! by `GET /api/v1/devices`.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::observation::Observation;
use crate::pipeline::{Origin, Submission};

/// Devices tracked at most; past this, new ones are not (a registry is far smaller).
const MAX_DEVICES: usize = 100_000;
const MINUTE_MS: i64 = 60_000;

/// One device's activity since the hub started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seen {
    /// When the hub received its last message, epoch ms.
    pub last_ms: i64,
    /// Messages received since the hub started.
    pub messages: u64,
    /// The minute (epoch ms / 60,000) `in_minute` counts, and the count of the one before.
    minute: i64,
    in_minute: u64,
    in_minute_before: u64,
}

impl Seen {
    /// Messages in the last whole minute before `now_ms`.
    pub fn per_minute(&self, now_ms: i64) -> u64 {
        let now = now_ms.div_euclid(MINUTE_MS);
        match now - self.minute {
            0 => self.in_minute_before,
            1 => self.in_minute,
            _ => 0,
        }
    }

    fn note(&mut self, received_ms: i64) {
        let minute = received_ms.div_euclid(MINUTE_MS);
        if minute > self.minute {
            self.in_minute_before = if minute == self.minute + 1 {
                self.in_minute
            } else {
                0
            };
            self.minute = minute;
            self.in_minute = 0;
        }
        if minute == self.minute {
            self.in_minute += 1;
        }
        self.last_ms = self.last_ms.max(received_ms);
        self.messages += 1;
    }
}

/// Notes one message of `device`; a device not yet seen is kept while there is room.
fn note_one(seen: &mut HashMap<Box<str>, Seen>, device: &str, received_ms: i64) {
    if let Some(entry) = seen.get_mut(device) {
        entry.note(received_ms);
    } else if seen.len() < MAX_DEVICES {
        seen.entry(device.into()).or_default().note(received_ms);
    }
}

/// Every device's [`Seen`].
#[derive(Debug, Default)]
pub struct DeviceActivity {
    seen: Mutex<HashMap<Box<str>, Seen>>,
}

impl DeviceActivity {
    /// Notes, for a gateway's message received at `received_ms`, each other device whose
    /// readings it carried (`observations`), once.
    pub fn note_relayed(&self, observations: &[Observation], gateway: &str, received_ms: i64) {
        let mut relayed: Vec<&str> = observations
            .iter()
            .map(|o| &*o.device)
            .filter(|d| *d != gateway)
            .collect();
        relayed.sort_unstable();
        relayed.dedup();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for device in relayed {
            note_one(&mut seen, device, received_ms);
        }
    }

    /// Notes the devices' messages of one batch (not replays of dead letters, nor the hub's
    /// own windowed outputs).
    pub fn note(&self, submissions: &[Submission]) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for s in submissions
            .iter()
            .filter(|s| matches!(s.origin, Origin::Device))
        {
            note_one(&mut seen, &s.device, s.received_ms);
        }
    }

    /// The activity of `device`, if it sent anything since the hub started.
    pub fn of(&self, device: &str) -> Option<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateways_message_is_heard_from_each_device_it_relays_once() {
        let obs = |device: &str| Observation {
            citizen: "c".into(),
            device: device.into(),
            metric: kenko_devices::Metric::HeartRate,
            value: 60.0,
            time_ms: 1,
            received_ms: 1,
            seq: 0,
            flags: 0,
        };
        let activity = DeviceActivity::default();
        let carried = [obs("gw"), obs("bp-1"), obs("bp-1"), obs("scale-2")];
        activity.note_relayed(&carried, "gw", 5_000);
        assert_eq!(
            activity.of("bp-1").map(|s| (s.messages, s.last_ms)),
            Some((1, 5_000))
        );
        assert_eq!(activity.of("scale-2").map(|s| s.messages), Some(1));
        assert!(
            activity.of("gw").is_none(),
            "the gateway's own message is noted with the batch"
        );
    }

    #[test]
    fn the_last_message_and_the_last_whole_minute_count() {
        let mut seen = Seen::default();
        let minute = 1_000 * MINUTE_MS;
        for i in 0..5 {
            seen.note(minute + i * 1_000);
        }
        assert_eq!(seen.messages, 5);
        assert_eq!(seen.last_ms, minute + 4_000);
        assert_eq!(
            seen.per_minute(minute + 30_000),
            0,
            "the minute is not over"
        );
        assert_eq!(seen.per_minute(minute + MINUTE_MS + 1), 5);
        seen.note(minute + MINUTE_MS + 10);
        seen.note(minute + MINUTE_MS + 20);
        assert_eq!(
            seen.per_minute(minute + MINUTE_MS + 30),
            5,
            "the minute before"
        );
        assert_eq!(seen.per_minute(minute + 2 * MINUTE_MS + 5), 2);
        assert_eq!(seen.per_minute(minute + 5 * MINUTE_MS), 0, "gone quiet");
        // A late message (an older receive time) counts, but moves nothing back.
        seen.note(minute);
        assert_eq!((seen.messages, seen.last_ms), (8, minute + MINUTE_MS + 20));
    }
}
