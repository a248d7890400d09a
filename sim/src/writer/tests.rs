//! The writer against every built-in profile: field names, units, times, batches.

use super::*;
use crate::reader::read;
use kenko_config::DeviceKind;
use kenko_devices::profile::Profiles;
use serde_json::json;

fn profile(name: &str) -> std::sync::Arc<Profile> {
    Profiles::builtin().get(name).expect(name).clone()
}

/// 2026-11-25T23:10:00+09:00.
fn at() -> Timestamp {
    "2026-11-25T14:10:00Z".parse().expect("ts")
}

fn sample(at: Timestamp, readings: &[(Metric, f64)]) -> Sample {
    Sample {
        at,
        readings: readings.to_vec(),
    }
}

fn decode(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("valid JSON")
}

fn asleep() -> Vec<(Metric, f64)> {
    vec![
        (Metric::BedOccupancy, 1.0),
        (Metric::HeartRate, 58.44),
        (Metric::RespiratoryRate, 14.16),
        (Metric::BodyMovement, 3.0),
        (Metric::SleepStage, SleepStage::Deep.code()),
    ]
}

#[test]
fn bed_json_v1_one_reading_in_epoch_millis() {
    let p = profile("bed-json-v1");
    let at = Timestamp::from_millisecond(1_764_050_000_123).expect("ts");
    let bytes = write(&p, 42, &[sample(at, &asleep())]).expect("write");
    assert_eq!(
        decode(&bytes),
        json!({"ts": 1_764_050_000_123i64, "seq": 42, "occ": true, "hr": 58.4, "rr": 14.2, "mv": 3, "stage": "deep"})
    );
    // Exactly one decimal on the wire, not 58.400000000000006.
    let text = String::from_utf8(bytes).expect("utf-8");
    assert!(
        text.contains("\"hr\":58.4,") || text.ends_with("\"hr\":58.4}"),
        "{text}"
    );
    let empty = write(&p, 43, &[sample(at, &[(Metric::BedOccupancy, 0.0)])]).expect("write");
    assert_eq!(
        decode(&empty),
        json!({"ts": 1_764_050_000_123i64, "seq": 43, "occ": false})
    );
    let err = write(&p, 44, &[sample(at, &asleep()), sample(at, &asleep())]);
    assert!(
        matches!(err, Err(WriteError::NotBatched { count: 2, .. })),
        "{err:?}"
    );
    assert_eq!(write(&p, 45, &[]), Err(WriteError::Empty));
}

#[test]
fn bed_json_v2_batches_records_with_local_times() {
    let p = profile("bed-json-v2");
    let later = at() + jiff::SignedDuration::from_millis(60_250);
    let samples = [
        sample(at(), &asleep()),
        sample(later, &[(Metric::BedOccupancy, 0.0)]),
    ];
    let v = decode(&write(&p, 7, &samples).expect("write"));
    assert_eq!(
        v,
        json!({"no": 7, "records": [
            {"at": "2026-11-25T23:10:00", "in_bed": true, "pulse": 58.4, "breath": 14.2, "motion": 3, "sleep": "deep"},
            {"at": "2026-11-25T23:11:00.250", "in_bed": false},
        ]})
    );
    // One sample is a batch of one.
    let one = decode(&write(&p, 8, &samples[..1]).expect("write"));
    assert_eq!(one["records"].as_array().map(Vec::len), Some(1));
    assert!(one.get("at").is_none(), "the time is in the record: {one}");
}

#[test]
fn wearable_json_v1_spo2_as_a_fraction_and_whole_steps() {
    let p = profile("wearable-json-v1");
    let readings = [
        (Metric::HeartRate, 72.04),
        (Metric::Spo2, 97.3),
        (Metric::Steps, 118.0),
        // The profile has no temperature field: left out.
        (Metric::BodyTemperature, 36.6),
    ];
    let v = decode(&write(&p, 9, &[sample(at(), &readings)]).expect("write"));
    assert_eq!(
        v,
        json!({"ts": at().as_millisecond(), "seq": 9, "hr": 72.0, "spo2": 0.973, "steps": 118})
    );
    assert!(v["steps"].is_u64());
}

#[test]
fn wearable_json_v2_temperature_in_fahrenheit() {
    let p = profile("wearable-json-v2");
    let readings = [
        (Metric::HeartRate, 72.0),
        (Metric::Steps, 120.0),
        (Metric::Spo2, 97.0),
        (Metric::BodyTemperature, 37.0),
    ];
    let v = decode(&write(&p, 3, &[sample(at(), &readings)]).expect("write"));
    assert_eq!(
        v,
        json!({"sequence": 3, "samples": [
            {"time": "2026-11-25T23:10:00", "bpm": 72.0, "step_count": 120, "spo2_pct": 97.0, "temp_f": 98.6}
        ]})
    );
}

#[test]
fn bp_json_v1_kilopascals_and_epoch_seconds() {
    let p = profile("bp-json-v1");
    let readings = [
        (Metric::SystolicBp, 120.0),
        (Metric::DiastolicBp, 79.0),
        (Metric::PulseRate, 68.0),
    ];
    let v = decode(&write(&p, 12, &[sample(at(), &readings)]).expect("write"));
    assert_eq!(
        v,
        json!({"measured": at().as_second(), "id": 12, "sys_kpa": 16.0, "dia_kpa": 10.53, "pulse": 68.0})
    );
    assert!(v["measured"].is_i64(), "whole seconds as an integer");
    let half = at() + jiff::SignedDuration::from_millis(500);
    let v = decode(&write(&p, 13, &[sample(half, &readings)]).expect("write"));
    assert_eq!(v["measured"], json!(at().as_second() as f64 + 0.5));
}

#[test]
fn scale_json_v1_pounds_local_time_and_no_seq() {
    let p = profile("scale-json-v1");
    let readings = [(Metric::BodyWeight, 70.0), (Metric::BodyFat, 22.46)];
    let v = decode(&write(&p, 5, &[sample(at(), &readings)]).expect("write"));
    assert_eq!(
        v,
        json!({"time": "2026-11-25T23:10:00", "weight_lb": 154.3, "fat": 22.5})
    );
}

#[test]
fn thermo_json_v1_37_celsius_is_98_6_fahrenheit() {
    let p = profile("thermo-json-v1");
    let v =
        decode(&write(&p, 4, &[sample(at(), &[(Metric::BodyTemperature, 37.0)])]).expect("write"));
    assert_eq!(
        v,
        json!({"ts": at().as_millisecond(), "seq": 4, "temp_f": 98.6})
    );
}

#[test]
fn oximeter_json_v1_epoch_seconds() {
    let p = profile("oximeter-json-v1");
    let readings = [(Metric::Spo2, 97.0), (Metric::PulseRate, 68.0)];
    let v = decode(&write(&p, 1, &[sample(at(), &readings)]).expect("write"));
    assert_eq!(v, json!({"t": at().as_second(), "spo2": 97.0, "pr": 68.0}));
}

#[test]
fn glucose_json_v1_mmol_per_litre_and_rfc3339() {
    let p = profile("glucose-json-v1");
    let v =
        decode(&write(&p, 3, &[sample(at(), &[(Metric::BloodGlucose, 104.0)])]).expect("write"));
    assert_eq!(
        v,
        json!({"time": "2026-11-25T23:10:00+09:00", "seq": 3, "glucose": 5.8})
    );
    let text = v["time"].as_str().expect("text");
    assert_eq!(text.parse::<Timestamp>().expect("RFC 3339"), at());
}

#[test]
fn kenko_pb_v1_carries_canonical_readings_by_metric_name() {
    let p = profile("kenko-pb-v1");
    let later = at() + jiff::SignedDuration::from_mins(1);
    let samples = [
        sample(at(), &asleep()),
        sample(later, &[(Metric::BedOccupancy, 0.0)]),
    ];
    let bytes = write(&p, 11, &samples).expect("write");
    let message = telemetry::Telemetry::decode(bytes.as_slice()).expect("protobuf");
    assert_eq!(message.seq, 11);
    assert_eq!(message.samples.len(), 2);
    assert_eq!(message.samples[1].time_ms, later.as_millisecond());
    let first: Vec<(&str, f64)> = message.samples[0]
        .readings
        .iter()
        .map(|r| (r.metric.as_str(), r.value))
        .collect();
    assert_eq!(
        first,
        vec![
            ("bed_occupancy", 1.0),
            ("heart_rate", 58.4),
            ("respiratory_rate", 14.2),
            ("body_movement", 3.0),
            ("sleep_stage", 2.0),
        ]
    );
    assert!(is_batching(&p) && carries(&p, Metric::BloodGlucose));
}

#[test]
fn model_samples_read_back_within_the_devices_precision_for_every_profile() {
    use crate::model::KindModel;
    let profiles = Profiles::builtin();
    let start: Timestamp = "2026-11-24T15:00:00Z".parse().expect("ts");
    for kind in DeviceKind::ALL {
        let names: Vec<&Profile> = profiles
            .iter()
            .filter(|p| p.kind == Some(kind) || p.format == PayloadFormat::Protobuf)
            .map(|p| &**p)
            .collect();
        assert!(names.len() >= 2, "{kind}");
        for p in names {
            let mut model = KindModel::for_device(kind, 2, 3);
            let mut since = start;
            for i in 1..200 {
                let at = start + jiff::SignedDuration::from_millis(i * 431_017);
                let sample = model.sample(at, since);
                since = at;
                let bytes = write(p, i as u64, std::slice::from_ref(&sample)).expect("write");
                let v = match p.format {
                    PayloadFormat::Json => decode(&bytes),
                    PayloadFormat::Protobuf => Value::Null,
                };
                if let Some(seq) = &p.seq {
                    assert_eq!(v[&**seq], json!(i), "{}", p.name);
                }
                let [(ms, readings)] = &read(p, &bytes).expect("reads back")[..] else {
                    panic!("{}: one sample: {v}", p.name);
                };
                assert_eq!(*ms, at.as_millisecond(), "{}: {v}", p.name);
                let carried = sample.readings.iter().filter(|(m, _)| carries(p, *m));
                assert_eq!(carried.clone().count(), readings.len(), "{}: {v}", p.name);
                for (metric, value) in carried {
                    let back = readings
                        .iter()
                        .find(|(m, _)| m == metric)
                        .map(|&(_, v)| v)
                        .expect("read back");
                    // Half a unit of the last decimal shown, in canonical units.
                    let tolerance = match metric {
                        Metric::SystolicBp | Metric::DiastolicBp => 0.04,
                        Metric::BloodGlucose => 1.0,
                        Metric::BodyWeight => 0.051,
                        _ => 0.51,
                    };
                    assert!(
                        (back - value).abs() <= tolerance,
                        "{}: {metric} {value} read back as {back}",
                        p.name
                    );
                    let (low, high) = metric.plausible();
                    assert!((low..=high).contains(&back));
                }
            }
        }
    }
}
