//! Each injected fault is what it claims to be, for every built-in profile.

use super::*;
use crate::model::KindModel;
use crate::reader::read;
use kenko_config::DeviceKind;
use kenko_devices::profile::Profiles;
use rand::SeedableRng;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// A device's sample of every kind, at a few times of day, for each profile of its kind
/// and for protobuf.
fn cases() -> Vec<(std::sync::Arc<Profile>, Sample)> {
    let profiles = Profiles::builtin();
    let start: Timestamp = "2026-11-24T15:00:00Z".parse().expect("ts");
    let mut out = vec![];
    for kind in DeviceKind::ALL {
        let mut model = KindModel::for_device(kind, 5, 2);
        for hour in [3, 9, 14, 22] {
            let at = start + SignedDuration::from_hours(hour);
            let sample = model.sample(at, at - SignedDuration::from_mins(1));
            for p in profiles.iter() {
                if p.kind == Some(kind) || p.format == PayloadFormat::Protobuf {
                    out.push((p.clone(), sample.clone()));
                }
            }
        }
    }
    out
}

fn now() -> Timestamp {
    "2026-11-26T00:00:00Z".parse().expect("ts")
}

#[test]
fn malformed_payloads_do_not_read() {
    let mut rng = SmallRng::seed_from_u64(1);
    let mut seen_json_kinds = std::collections::HashSet::new();
    for (profile, sample) in cases() {
        for seq in 0..12 {
            let bytes = payload(
                &profile,
                seq,
                &sample,
                FaultReason::MalformedPayload,
                now(),
                &mut rng,
            );
            let err = read(&profile, &bytes).expect_err(&format!(
                "{}: {}",
                profile.name,
                String::from_utf8_lossy(&bytes)
            ));
            if profile.format == PayloadFormat::Json {
                let parses = serde_json::from_slice::<Value>(&bytes).is_ok();
                seen_json_kinds.insert(match (parses, err.as_str()) {
                    (false, _) => "not JSON",
                    (true, "no time") => "no time",
                    (true, e) if e.starts_with("stage") => "bad stage",
                    (true, e) if e.contains("\"ERR\"") => "wrong type",
                    (true, e) => panic!("{}: unexpected {e}", profile.name),
                });
            }
        }
    }
    assert_eq!(seen_json_kinds.len(), 4, "{seen_json_kinds:?}");
}

#[test]
fn implausible_payloads_read_but_hold_a_value_out_of_range() {
    let mut rng = SmallRng::seed_from_u64(2);
    for (profile, sample) in cases() {
        for seq in 0..8 {
            let bytes = payload(
                &profile,
                seq,
                &sample,
                FaultReason::ImplausibleValue,
                now(),
                &mut rng,
            );
            let samples = read(&profile, &bytes).expect("well-formed");
            let [(ms, readings)] = &samples[..] else {
                panic!("one sample");
            };
            assert_eq!(
                *ms,
                sample.at.as_millisecond() - 1,
                "not the good sample's time"
            );
            let out: Vec<_> = readings
                .iter()
                .filter(|(m, v)| {
                    let (low, high) = m.plausible();
                    !(low..=high).contains(v)
                })
                .collect();
            assert_eq!(out.len(), 1, "{}: {readings:?}", profile.name);
        }
    }
}

#[test]
fn timestamps_are_far_in_the_future_or_older_than_eight_days() {
    let mut rng = SmallRng::seed_from_u64(3);
    let now_ms = now().as_millisecond();
    for (profile, sample) in cases() {
        let future = payload(
            &profile,
            1,
            &sample,
            FaultReason::FutureTimestamp,
            now(),
            &mut rng,
        );
        let old = payload(&profile, 2, &sample, FaultReason::TooOld, now(), &mut rng);
        let [(future_ms, readings)] = &read(&profile, &future).expect("reads")[..] else {
            panic!("one sample");
        };
        assert!(*future_ms > now_ms + 3_600_000, "{}", profile.name);
        assert!(*future_ms <= now_ms + 6 * 3_600_000);
        assert!(readings.iter().all(|(m, v)| {
            let (low, high) = m.plausible();
            (low..=high).contains(v)
        }));
        let [(old_ms, _)] = &read(&profile, &old).expect("reads")[..] else {
            panic!("one sample");
        };
        assert!(*old_ms < now_ms - 8 * DAY_MS, "{}", profile.name);
    }
}

#[test]
fn the_log_line_is_device_seq_reason() {
    let fault = InjectedFault {
        device: "bp-003".into(),
        seq: 17,
        reason: FaultReason::TooOld,
        payload: b"{}".to_vec(),
    };
    assert_eq!(fault.log_line(), "bp-003 17 too_old");
    let codes: Vec<&str> = FaultReason::ALL.iter().map(|r| r.code()).collect();
    assert_eq!(
        codes,
        [
            "malformed_payload",
            "implausible_value",
            "future_timestamp",
            "too_old"
        ]
    );
}
