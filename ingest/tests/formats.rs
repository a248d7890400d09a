//! Property tests of decoding: the same readings sent as a vendor's JSON and as kenko's
//! protobuf give identical canonical observations, and unit conversions lose nothing.

use kenko_devices::{Metric, Profiles, SleepStage};
use kenko_ingest::decode::Standalone;
use kenko_ingest::Observation;
use kenko_proto::telemetry::{Reading, Sample, Telemetry};
use proptest::prelude::*;
use prost::Message;

/// 2026-11-25T12:00:00Z.
const RECEIVED_MS: i64 = 1_795_608_000_000;

fn run(profile: &str, payload: &[u8]) -> Result<Vec<Observation>, String> {
    let profile = Profiles::builtin().get(profile).cloned().expect("profile");
    let decoder = Standalone::new(profile, "Asia/Tokyo").expect("zone");
    let mut out = Vec::new();
    decoder
        .decode(payload, RECEIVED_MS, &mut out)
        .map(|()| out)
        .map_err(|r| r.message)
}

/// Observations in a canonical order, for comparing two decodings.
fn sorted(mut obs: Vec<Observation>) -> Vec<Observation> {
    obs.sort_by_key(|o| (o.time_ms, o.metric));
    obs
}

/// One bed-sensor reading: time offset, and which readings it has.
#[derive(Debug, Clone)]
struct BedReading {
    ago_ms: i64,
    occ: Option<bool>,
    hr: Option<f64>,
    rr: Option<f64>,
    mv: Option<u32>,
    stage: Option<SleepStage>,
}

fn bed_reading() -> impl Strategy<Value = BedReading> {
    (
        0i64..6 * 86_400_000,
        proptest::option::of(any::<bool>()),
        proptest::option::of(-50.0f64..400.0),
        proptest::option::of(0.0f64..80.0),
        proptest::option::of(0u32..700),
        proptest::option::of(proptest::sample::select(SleepStage::ALL.to_vec())),
    )
        .prop_map(|(ago_ms, occ, hr, rr, mv, stage)| BedReading {
            ago_ms,
            occ,
            hr,
            rr,
            mv,
            stage,
        })
        .prop_filter("at least one reading", |r| {
            r.occ.is_some()
                || r.hr.is_some()
                || r.rr.is_some()
                || r.mv.is_some()
                || r.stage.is_some()
        })
}

fn readings(r: &BedReading) -> Vec<(Metric, f64)> {
    let mut out = Vec::new();
    if let Some(occ) = r.occ {
        out.push((Metric::BedOccupancy, if occ { 1.0 } else { 0.0 }));
    }
    if let Some(hr) = r.hr {
        out.push((Metric::HeartRate, hr));
    }
    if let Some(rr) = r.rr {
        out.push((Metric::RespiratoryRate, rr));
    }
    if let Some(mv) = r.mv {
        out.push((Metric::BodyMovement, f64::from(mv)));
    }
    if let Some(stage) = r.stage {
        out.push((Metric::SleepStage, stage.code()));
    }
    out
}

fn protobuf(seq: u64, samples: &[BedReading]) -> Vec<u8> {
    Telemetry {
        seq,
        samples: samples
            .iter()
            .map(|r| Sample {
                time_ms: RECEIVED_MS - r.ago_ms,
                readings: readings(r)
                    .into_iter()
                    .map(|(m, value)| Reading {
                        metric: m.name().to_owned(),
                        value,
                    })
                    .collect(),
            })
            .collect(),
    }
    .encode_to_vec()
}

proptest! {
    #[test]
    fn bed_json_and_protobuf_give_identical_observations(seq in 0u64..1_000_000, r in bed_reading()) {
        let mut json = serde_json::json!({ "ts": RECEIVED_MS - r.ago_ms, "seq": seq });
        if let Some(occ) = r.occ { json["occ"] = occ.into(); }
        if let Some(hr) = r.hr { json["hr"] = hr.into(); }
        if let Some(rr) = r.rr { json["rr"] = rr.into(); }
        if let Some(mv) = r.mv { json["mv"] = mv.into(); }
        if let Some(stage) = r.stage { json["stage"] = stage.name().into(); }
        let from_json = run("bed-json-v1", json.to_string().as_bytes()).expect("json decodes");
        let from_pb = run("kenko-pb-v1", &protobuf(seq, std::slice::from_ref(&r))).expect("protobuf decodes");
        prop_assert_eq!(from_json.len(), readings(&r).len());
        prop_assert_eq!(sorted(from_json), sorted(from_pb));
    }

    #[test]
    fn a_batched_vendor_message_equals_one_protobuf_message(
        seq in 0u64..1_000_000,
        batch in proptest::collection::vec(bed_reading(), 1..20),
    ) {
        // bed-json-v2 sends local JST wall-clock times to the second.
        let batch: Vec<BedReading> = batch
            .into_iter()
            .map(|r| BedReading { ago_ms: r.ago_ms - r.ago_ms % 1000, ..r })
            .collect();
        let tz = jiff::tz::TimeZone::get("Asia/Tokyo").expect("tz");
        let records: Vec<serde_json::Value> = batch
            .iter()
            .map(|r| {
                let at = jiff::Timestamp::from_millisecond(RECEIVED_MS - r.ago_ms).expect("time");
                let local = at.to_zoned(tz.clone()).datetime();
                let mut o = serde_json::json!({ "at": local.to_string() });
                if let Some(occ) = r.occ { o["in_bed"] = u8::from(occ).into(); }
                if let Some(hr) = r.hr { o["pulse"] = hr.into(); }
                if let Some(rr) = r.rr { o["breath"] = rr.into(); }
                if let Some(mv) = r.mv { o["motion"] = mv.into(); }
                if let Some(stage) = r.stage { o["sleep"] = stage.name().into(); }
                o
            })
            .collect();
        let json = serde_json::json!({ "no": seq, "records": records });
        let from_json = run("bed-json-v2", json.to_string().as_bytes()).expect("json decodes");
        let from_pb = run("kenko-pb-v1", &protobuf(seq, &batch)).expect("protobuf decodes");
        prop_assert_eq!(sorted(from_json), sorted(from_pb));
    }
}

fn metric_and_unit() -> impl Strategy<Value = (Metric, &'static str)> {
    let pairs: Vec<(Metric, &'static str)> = Metric::ALL
        .iter()
        .flat_map(|&m| {
            kenko_devices::catalogue::units(m)
                .into_iter()
                .map(move |u| (m, u))
        })
        .collect();
    proptest::sample::select(pairs)
}

proptest! {
    #[test]
    fn unit_conversions_round_trip((metric, unit) in metric_and_unit(), raw in -1.0e6f64..1.0e6) {
        let conversion = kenko_devices::conversion(metric, unit).expect("listed units convert");
        let back = conversion.invert(conversion.apply(raw));
        prop_assert!((back - raw).abs() <= 1e-9 * raw.abs().max(1.0), "{metric} {unit}: {raw} -> {back}");
    }

    /// A vendor that sends another unit gives the same canonical value as protobuf in the
    /// canonical unit, to within rounding of the conversion.
    #[test]
    fn converted_units_match_canonical_protobuf(celsius in 30.0f64..45.0, mmol in 0.5f64..50.0, seq in 0u64..1000) {
        let time_ms = RECEIVED_MS - 60_000;
        let fahrenheit = kenko_devices::conversion(Metric::BodyTemperature, "[degF]").expect("degF").invert(celsius);
        let thermo = run("thermo-json-v1", serde_json::json!({"ts": time_ms, "seq": seq, "temp_f": fahrenheit}).to_string().as_bytes()).expect("thermo");
        let mg_dl = kenko_devices::conversion(Metric::BloodGlucose, "mmol/L").expect("mmol/L").apply(mmol);
        let at = jiff::Timestamp::from_millisecond(time_ms).expect("time").to_string();
        let glucose = run("glucose-json-v1", serde_json::json!({"time": at, "seq": seq, "glucose": mmol}).to_string().as_bytes()).expect("glucose");
        let pb = |metric: Metric, value: f64| Telemetry {
            seq,
            samples: vec![Sample { time_ms, readings: vec![Reading { metric: metric.name().to_owned(), value }] }],
        }.encode_to_vec();
        let thermo_pb = run("kenko-pb-v1", &pb(Metric::BodyTemperature, celsius)).expect("pb");
        let glucose_pb = run("kenko-pb-v1", &pb(Metric::BloodGlucose, mg_dl)).expect("pb");
        for (a, b) in [(&thermo[0], &thermo_pb[0]), (&glucose[0], &glucose_pb[0])] {
            prop_assert_eq!((a.metric, a.time_ms, a.seq, a.flags), (b.metric, b.time_ms, b.seq, b.flags));
            prop_assert!((a.value - b.value).abs() <= 1e-9 * b.value.abs(), "{} vs {}", a.value, b.value);
        }
    }
}
