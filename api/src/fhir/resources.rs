//! kenko's citizens, devices and stored rows as FHIR R4 resources: `Patient` (identifier
//! only), `Device`, and vital-signs `Observation`s with LOINC codes and UCUM quantities;
//! blood pressure as one Observation with systolic and diastolic components.

use kenko_devices::{DeviceEntry, Metric, SleepStage};
use kenko_ingest::query::Row;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::http::rfc3339;

/// The system of kenko's citizen identifiers.
pub(super) const CITIZEN_SYSTEM: &str = "urn:kenko:citizen";
/// The system of kenko's device identifiers.
pub(super) const DEVICE_SYSTEM: &str = "urn:kenko:device";
/// kenko's own codes for its metrics (every metric has one; most have a LOINC code too).
pub(super) const METRIC_SYSTEM: &str = "urn:kenko:metric";
pub(super) const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
/// LOINC's blood pressure panel: systolic and diastolic as components.
pub(super) const BP_PANEL: &str = "85354-9";

pub(super) fn patient(citizen: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "id": citizen,
        "identifier": [{"system": CITIZEN_SYSTEM, "value": citizen}],
    })
}

pub(super) fn device(entry: &DeviceEntry) -> Value {
    json!({
        "resourceType": "Device",
        "id": &*entry.id,
        "identifier": [{"system": DEVICE_SYSTEM, "value": &*entry.id}],
        "status": "active",
        "type": {"text": entry.kind.as_str()},
        "patient": {"reference": format!("Patient/{}", entry.citizen)},
    })
}

/// The `category` of a metric's Observations.
fn category(metric: Metric) -> (&'static str, &'static str) {
    match metric {
        Metric::HeartRate
        | Metric::RespiratoryRate
        | Metric::Spo2
        | Metric::BodyTemperature
        | Metric::SystolicBp
        | Metric::DiastolicBp
        | Metric::PulseRate
        | Metric::BodyWeight => ("vital-signs", "Vital Signs"),
        Metric::BloodGlucose => ("laboratory", "Laboratory"),
        Metric::BodyFat => ("exam", "Exam"),
        _ => ("activity", "Activity"),
    }
}

/// A metric's codes: LOINC's where it has one, and always kenko's own.
fn code(metric: Metric) -> Value {
    let mut codings = Vec::new();
    if metric.loinc() != "local" {
        codings.push(json!({"system": LOINC, "code": metric.loinc()}));
    }
    if metric == Metric::Spo2 {
        // FHIR's oxygen saturation profile asks for this code beside the pulse-oximetry one.
        codings.push(json!({"system": LOINC, "code": "2708-6"}));
    }
    codings.push(json!({"system": METRIC_SYSTEM, "code": metric.name()}));
    json!({"coding": codings, "text": metric.name()})
}

fn quantity(metric: Metric, value: f64) -> Value {
    json!({"value": value, "unit": metric.unit(), "system": UCUM, "code": metric.unit()})
}

/// The value of one reading, of the type its metric calls for.
fn value(metric: Metric, value: f64) -> (&'static str, Value) {
    match metric {
        Metric::BedOccupancy => ("valueBoolean", json!(value != 0.0)),
        Metric::SleepStage => {
            let name = SleepStage::from_code(value).map_or("unknown", SleepStage::name);
            (
                "valueCodeableConcept",
                json!({"coding": [{"system": "urn:kenko:sleep-stage", "code": name}], "text": name}),
            )
        }
        _ => ("valueQuantity", quantity(metric, value)),
    }
}

/// A stable id for the Observation of (citizen, device, code, time): the same reading has
/// the same id in every answer.
fn observation_id(row: &Row, code: &str) -> String {
    let mut hash = Sha256::new();
    for part in [row.citizen.as_str(), row.device.as_str(), code] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.update(row.time_ms.to_be_bytes());
    let digest = hash.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hex}", row.time_ms)
}

/// The fields every Observation of `row` has, with `code` and `category`.
fn base(row: &Row, id: String, category: (&str, &str), code: Value) -> Value {
    let mut o = json!({
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": category.0,
            "display": category.1,
        }]}],
        "code": code,
        "subject": {"reference": format!("Patient/{}", row.citizen)},
        "effectiveDateTime": rfc3339(row.time_ms),
        "device": {"reference": format!("Device/{}", row.device)},
    });
    if row.implausible() == Some(true) {
        o["note"] = json!([{"text": "implausible: outside the physiological bounds kenko checks for this metric"}]);
    }
    o
}

/// One stored reading as an Observation.
pub(super) fn observation(row: &Row) -> Value {
    let metric = row.metric;
    let mut o = base(
        row,
        observation_id(row, metric.name()),
        category(metric),
        code(metric),
    );
    let (field, v) = value(metric, row.value);
    o[field] = v;
    o
}

/// A blood pressure reading (systolic and diastolic of one time and device) as one
/// Observation with a component each; either may be missing.
pub(super) fn blood_pressure(systolic: Option<&Row>, diastolic: Option<&Row>) -> Option<Value> {
    let first = systolic.or(diastolic)?;
    let panel = json!({
        "coding": [{"system": LOINC, "code": BP_PANEL, "display": "Blood pressure panel with all children optional"}],
        "text": "blood_pressure",
    });
    let mut o = base(
        first,
        observation_id(first, BP_PANEL),
        ("vital-signs", "Vital Signs"),
        panel,
    );
    let implausible = [systolic, diastolic]
        .iter()
        .flatten()
        .any(|r| r.implausible() == Some(true));
    if implausible {
        o["note"] = json!([{"text": "implausible: a component is outside the physiological bounds kenko checks"}]);
    } else if let Some(map) = o.as_object_mut() {
        map.remove("note");
    }
    // Both components always, as FHIR's blood pressure profile asks: one not read (or not
    // readable under the consent) says why it is absent.
    let components: Vec<Value> = [
        (Metric::SystolicBp, systolic),
        (Metric::DiastolicBp, diastolic),
    ]
    .into_iter()
    .map(|(metric, row)| match row {
        Some(r) => json!({"code": code(metric), "valueQuantity": quantity(metric, r.value)}),
        None => json!({"code": code(metric), "dataAbsentReason": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
            "code": "unknown",
        }]}}),
    })
    .collect();
    o["component"] = json!(components);
    Some(o)
}
