//! kenko's HTTP API, beside the MQTT broker: consents and observations under HTTP Basic
//! (`http`), principals managed at runtime (`principals`), browser sessions with
//! cookies and CSRF tokens (`session`), the connection handling that bounds slow and idle clients (`conn`), and the
//! operators' `/metrics` (`metrics`), `/healthz` and `/readyz`, and the hooks an
//! external MQTT broker calls to authenticate and authorize its clients (`mqtt_hooks`), and
//! FHIR R4 for hospital systems under `/fhir` (`fhir`).

mod alerts;
pub mod conn;
mod console;
pub mod explain;
mod fhir;
mod health;
pub mod http;
pub mod metrics;
mod mqtt_hooks;
mod observations;
pub mod openapi;
mod operators;
pub mod principals;
pub mod registry_feed;
mod sealed;
pub mod session;
