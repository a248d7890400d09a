//! The bed-json-v1 payload a bed sensor publishes on `devices/{device_id}/telemetry`, one
//! JSON object per message:
//! `{"ts": 1764050000123, "seq": 42, "occ": true, "hr": 58.4, "rr": 14.2, "mv": 3, "stage": "deep"}`;
//! only `ts`, `seq` and `occ` while the bed is empty.

use jiff::tz::{self, TimeZone};
use jiff::Timestamp;
use serde::Serialize;

use super::bed::BedReading;

#[derive(Serialize)]
struct Wire {
    ts: Ts,
    seq: u64,
    occ: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    hr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mv: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Ts {
    EpochMillis(i64),
    Local(String),
}

/// The bed-json-v1 payload of one reading. With `local_time` the event time is sent as JST
/// wall-clock time with its offset (`"2026-11-25T23:10:00.250+09:00"`), as some vendors do;
/// otherwise as Unix epoch milliseconds. Rates are rounded to one decimal.
pub fn payload(reading: &BedReading, seq: u64, at: Timestamp, local_time: bool) -> Vec<u8> {
    let ts = if local_time {
        // Asia/Tokyo has been UTC+9 without daylight saving time since 1951.
        let jst = at.to_zoned(TimeZone::fixed(tz::offset(9)));
        Ts::Local(jst.strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string())
    } else {
        Ts::EpochMillis(at.as_millisecond())
    };
    let wire = Wire {
        ts,
        seq,
        occ: reading.occupied,
        hr: reading.heart_rate.map(round1),
        rr: reading.respiratory_rate.map(round1),
        mv: reading.movement,
        stage: reading.stage.map(|s| s.name()),
    };
    serde_json::to_vec(&wire).expect("a struct of numbers, bools and strings always serializes")
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::SleepStage;
    use crate::sim::BedModel;
    use serde_json::{json, Value};

    fn decode(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).expect("valid JSON")
    }

    #[test]
    fn occupied_reading_in_epoch_millis() {
        let at = Timestamp::from_millisecond(1_764_050_000_123).expect("ts");
        let reading = BedReading {
            occupied: true,
            heart_rate: Some(58.44),
            respiratory_rate: Some(14.16),
            movement: Some(3),
            stage: Some(SleepStage::Deep),
        };
        let bytes = payload(&reading, 42, at, false);
        assert_eq!(
            decode(&bytes),
            json!({"ts": 1_764_050_000_123i64, "seq": 42, "occ": true, "hr": 58.4, "rr": 14.2, "mv": 3, "stage": "deep"})
        );
        // Exactly one decimal on the wire, not 58.400000000000006.
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(
            text.contains("\"hr\":58.4,") && text.contains("\"rr\":14.2,"),
            "{text}"
        );
    }

    #[test]
    fn empty_bed_in_jst_local_time() {
        let empty = BedReading {
            occupied: false,
            heart_rate: None,
            respiratory_rate: None,
            movement: None,
            stage: None,
        };
        let at: Timestamp = "2026-11-25T14:10:00.25Z".parse().expect("ts");
        assert_eq!(
            decode(&payload(&empty, 1, at, true)),
            json!({"ts": "2026-11-25T23:10:00.250+09:00", "seq": 1, "occ": false})
        );
        // Whole seconds keep their milliseconds, and the string is RFC 3339 for the same instant.
        let at: Timestamp = "2026-11-25T15:00:00Z".parse().expect("ts");
        let v = decode(&payload(&empty, 2, at, true));
        let text = v["ts"].as_str().expect("string");
        assert_eq!(text, "2026-11-26T00:00:00.000+09:00");
        assert_eq!(text.parse::<Timestamp>().expect("RFC 3339"), at);
    }

    #[test]
    fn model_readings_make_valid_payloads() {
        let mut model = BedModel::new(5);
        let start: Timestamp = "2026-11-25T00:00:00Z".parse().expect("ts");
        let (mut occupied, mut empty) = (0, 0);
        for (i, minute) in (0..2 * 24 * 60).step_by(3).enumerate() {
            let at = start + jiff::SignedDuration::from_mins(minute);
            let reading = model.sample(at);
            let v = decode(&payload(&reading, i as u64 + 1, at, false));
            assert_eq!(v["ts"], json!(at.as_millisecond()));
            assert_eq!(v["seq"], json!(i + 1));
            assert_eq!(v["occ"], json!(reading.occupied));
            let fields = v.as_object().expect("object").len();
            if reading.occupied {
                occupied += 1;
                assert_eq!(fields, 7, "{v}");
                let stage = v["stage"].as_str().expect("stage");
                assert!(SleepStage::from_name(stage).is_some(), "{stage}");
                let hr = v["hr"].as_f64().expect("hr");
                assert_eq!((hr * 10.0).round() / 10.0, hr);
                assert!(v["mv"].is_u64());
            } else {
                empty += 1;
                assert_eq!(fields, 3, "{v}");
            }
        }
        assert!(occupied > 0 && empty > 0);
    }
}
