//! The emitter's messages over simulated days: nothing lost, nothing repeated except on
//! purpose, faults where the rate says, batches after offline periods.

use super::*;
use crate::person::person_seed;
use crate::reader::read;
use crate::wearable::WearableModel;
use kenko_config::DeviceKind;
use kenko_devices::catalogue::Metric;
use kenko_devices::profile::Profiles;

const STEP: Duration = Duration::from_secs(60);

fn from() -> Timestamp {
    // 2026-11-25T00:00:00+09:00
    "2026-11-24T15:00:00Z".parse().expect("ts")
}

fn emitter(kind: DeviceKind, profile: &str, n: usize, faults: f64) -> Emitter {
    let profile = Profiles::builtin().get(profile).expect(profile).clone();
    Emitter::new(
        KindModel::for_device(kind, 1, n),
        profile,
        77 + n as u64,
        faults,
    )
}

/// Replays `hours` from `from()` a minute apart, then flushes.
fn replay(e: &mut Emitter, hours: i64) -> Vec<Message> {
    let mut out = vec![];
    let until = from() + SignedDuration::from_hours(hours);
    let now = until + SignedDuration::from_hours(1);
    let mut slot = from();
    while slot < until {
        e.replay(slot, STEP, until, now, &mut out);
        slot += STEP;
    }
    e.flush(&mut out);
    out
}

fn good(messages: &[Message]) -> impl Iterator<Item = &Message> {
    messages
        .iter()
        .filter(|m| matches!(m.sent, Sent::Good { .. }))
}

#[test]
fn every_slot_arrives_once_in_order_with_faults_and_offline_periods() {
    for profile in ["bed-json-v1", "bed-json-v2", "kenko-pb-v1"] {
        let mut e = emitter(DeviceKind::Bed, profile, 2, 0.1);
        let skew = e.skew();
        let messages = replay(&mut e, 24);
        let p = Profiles::builtin().get(profile).expect("profile").clone();
        let mut times = vec![];
        for m in good(&messages) {
            let samples = read(&p, &m.payload).expect("good messages read");
            let Sent::Good {
                samples: n,
                readings,
            } = m.sent
            else {
                unreachable!()
            };
            assert_eq!(samples.len() as u64, n);
            assert_eq!(
                samples.iter().map(|s| s.1.len() as u64).sum::<u64>(),
                readings
            );
            times.extend(samples.iter().map(|s| s.0));
        }
        let expected: Vec<i64> = (0..24 * 60)
            .map(|i| (from() + SignedDuration::from_mins(i) + skew).as_millisecond())
            .collect();
        assert_eq!(times, expected, "{profile}");
        let batched =
            good(&messages).filter(|m| matches!(m.sent, Sent::Good { samples, .. } if samples > 1));
        if profile == "bed-json-v1" {
            assert_eq!(batched.count(), 0);
        } else {
            assert!(
                batched.count() > 0,
                "{profile}: batches after offline periods"
            );
        }
        let faults = messages
            .iter()
            .filter(|m| matches!(m.sent, Sent::Fault(_)))
            .count();
        assert!((50..300).contains(&faults), "{profile}: {faults} faults");
    }
}

#[test]
fn sequence_numbers_count_messages_and_duplicates_repeat_the_last() {
    let mut e = emitter(DeviceKind::Wearable, "wearable-json-v1", 1, 0.05);
    let messages = replay(&mut e, 48);
    let mut expected = 0;
    let mut duplicates = 0;
    for (i, m) in messages.iter().enumerate() {
        if m.sent == Sent::Duplicate {
            duplicates += 1;
            let previous = &messages[i - 1];
            assert!(matches!(previous.sent, Sent::Good { .. }));
            assert_eq!((m.seq, &m.payload), (previous.seq, &previous.payload));
        } else {
            expected += 1;
            assert_eq!(m.seq, expected);
        }
    }
    assert!(duplicates > 10, "{duplicates}");
    // Faults are no copies of good messages.
    let goods: std::collections::HashSet<&Vec<u8>> = good(&messages).map(|m| &m.payload).collect();
    assert!(messages
        .iter()
        .filter(|m| matches!(m.sent, Sent::Fault(_)))
        .all(|m| !goods.contains(&m.payload)));
}

#[test]
fn steps_are_never_lost() {
    for profile in ["wearable-json-v1", "wearable-json-v2"] {
        let mut e = emitter(DeviceKind::Wearable, profile, 1, 0.2);
        let skew = e.skew();
        let messages = replay(&mut e, 30);
        let p = Profiles::builtin().get(profile).expect("profile").clone();
        let sent: f64 = good(&messages)
            .flat_map(|m| read(&p, &m.payload).expect("reads"))
            .flat_map(|(_, readings)| readings)
            .filter(|(m, _)| *m == Metric::Steps)
            .map(|(_, v)| v)
            .sum();
        let model = WearableModel::new(person_seed(1, 1));
        let first = from() + skew;
        let last = from() + SignedDuration::from_mins(30 * 60 - 1) + skew;
        let truth = model.steps_between(first - SignedDuration::from_mins(1), last);
        assert_eq!(sent as u64, truth, "{profile}");
        assert!(truth > 1000);
    }
}

#[test]
fn all_faults_until_the_flush() {
    let mut e = emitter(DeviceKind::Thermo, "thermo-json-v1", 3, 1.0);
    let mut out = vec![];
    let now = from();
    for i in 0..50 {
        e.live(
            now + SignedDuration::from_secs(i),
            Duration::from_secs(1),
            &mut out,
        );
    }
    assert!(!out.is_empty());
    assert!(out.iter().all(|m| matches!(m.sent, Sent::Fault(_))));
    let faults = out.len();
    e.flush(&mut out);
    let flushed: u64 = out[faults..]
        .iter()
        .map(|m| match m.sent {
            Sent::Good { samples, .. } => samples,
            _ => 0,
        })
        .sum();
    assert_eq!(flushed, 50);
}

#[test]
fn spot_devices_replay_their_measurements_only() {
    let mut e = emitter(DeviceKind::Bp, "bp-json-v1", 4, 0.0);
    let model = KindModel::for_device(DeviceKind::Bp, 1, 4);
    let skew = e.skew();
    let messages = replay(&mut e, 72);
    let p = Profiles::builtin()
        .get("bp-json-v1")
        .expect("profile")
        .clone();
    let times: Vec<i64> = good(&messages)
        .flat_map(|m| read(&p, &m.payload).expect("reads"))
        .map(|(t, _)| t)
        .collect();
    let expected: Vec<i64> = model
        .measurements(from(), from() + SignedDuration::from_hours(72))
        .into_iter()
        .map(|t| (t + skew).as_millisecond())
        .collect();
    assert!(expected.len() >= 5, "{expected:?}");
    assert_eq!(times, expected);
}

#[test]
fn live_times_follow_the_devices_clock_and_always_advance() {
    let mut e = emitter(DeviceKind::Oximeter, "kenko-pb-v1", 8, 0.0);
    let skew = e.skew();
    let p = Profiles::builtin()
        .get("kenko-pb-v1")
        .expect("profile")
        .clone();
    let mut out = vec![];
    // The clock is read twice in the same millisecond, and once goes back.
    for ms in [0, 0, 500, 400, 1000] {
        e.live(
            from() + SignedDuration::from_millis(ms),
            Duration::from_secs(1),
            &mut out,
        );
    }
    e.flush(&mut out);
    let times: Vec<i64> = good(&out)
        .flat_map(|m| read(&p, &m.payload).expect("reads"))
        .map(|(t, _)| t - (from() + skew).as_millisecond())
        .collect();
    assert_eq!(times, [0, 1, 500, 501, 1000]);
}

#[test]
fn same_seed_same_messages() {
    let a = replay(
        &mut emitter(DeviceKind::Glucose, "glucose-json-v1", 5, 0.3),
        48,
    );
    let b = replay(
        &mut emitter(DeviceKind::Glucose, "glucose-json-v1", 5, 0.3),
        48,
    );
    // Future and old faults are relative to the replay's fixed `now`.
    assert_eq!(a, b);
    assert!(!a.is_empty());
}
