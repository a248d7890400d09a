//! `GET /fhir/metadata`: what this server does, as a CapabilityStatement. Open to anyone,
//! as FHIR clients read it before they log in.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::{base_url, resource};
use crate::http::{now_ms, rfc3339, HttpApi};

pub(super) async fn metadata(State(api): State<HttpApi>, headers: HeaderMap) -> Response {
    let search = |name: &str, kind: &str, doc: &str| json!({"name": name, "type": kind, "documentation": doc});
    let body = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": rfc3339(now_ms()),
        "publisher": "kenko",
        "kind": "instance",
        "software": {"name": "kenko", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "kenko health-IoT hub", "url": base_url(&api, &headers)},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [{
            "mode": "server",
            "security": {
                "description": "HTTP Basic (principal id and password) or a session cookie; care services read the citizens whose care consent to them is in force, a citizen their own data. Every read of identified data is audited.",
            },
            "resource": [
                {
                    "type": "Patient",
                    "interaction": [{"code": "read"}],
                    "documentation": "A citizen: its identifier only.",
                },
                {
                    "type": "Device",
                    "interaction": [{"code": "read"}],
                },
                {
                    "type": "Observation",
                    "interaction": [{"code": "search-type"}],
                    "searchParam": [
                        search("patient", "reference", "The citizen: Patient/ID or ID."),
                        search("code", "token", "LOINC (http://loinc.org|8867-4) or kenko's metric (urn:kenko:metric|heart_rate); a comma-separated list matches any. Blood pressure is one Observation, 85354-9."),
                        search("date", "date", "effectiveDateTime, with ge, gt, le, lt or eq; may be given twice."),
                        search("_count", "number", "Observations per page (1 to 1000, default 100)."),
                    ],
                },
            ],
            "operation": [{
                "name": "export",
                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                "documentation": "Bulk Data export for care services (Prefer: respond-async): the citizens whose care consent is in force, their devices and the Observations it covers; _type and _since.",
            }],
        }],
    });
    resource(StatusCode::OK, &body)
}
