//! What an explanation says about a rule that needs consent (`consent = "care"` or
//! `"research"`): such a rule lets a principal subscribe, and each delivery then needs the
//! citizen's consent in force for the observation's time. The explanation evaluates it from
//! `registry.db` at a given time and names the record that decides.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use kenko_broker::acl::observation_topic;
use kenko_config::acl::ConsentNeed;
use kenko_ingest::consent::{Consent, ConsentRegistry, Consents, Purpose, HUB};
use kenko_ingest::query::format_time;

/// Who the consent is given to, and for what, for `need` asked by `principal`.
fn grant_of(need: ConsentNeed, principal: &str) -> (&str, Purpose) {
    match need {
        ConsentNeed::Care => (principal, Purpose::Care),
        ConsentNeed::Research => (HUB, Purpose::Research),
    }
}

/// The lines explaining deliveries on `filter` under a rule that needs `need`, for events
/// at `at_ms`, decided now (`now_ms`).
pub(super) fn explain(
    registry_path: &Path,
    need: ConsentNeed,
    principal: &str,
    filter: &str,
    at_ms: i64,
    now_ms: i64,
) -> anyhow::Result<String> {
    let (grantee, purpose) = grant_of(need, principal);
    let mut out = String::new();
    let to = if purpose == Purpose::Care {
        format!(" to {grantee}")
    } else {
        String::new()
    };
    let Some((citizen, metric)) = observation_topic(filter) else {
        writeln!(
            out,
            "consent: the rule delivers only observations (citizens/{{citizen}}/observations/{{metric}}), each with its citizen's {}{to} consent; nothing else it matches is delivered",
            purpose.as_str()
        )?;
        return Ok(out);
    };
    if !registry_path.exists() {
        writeln!(
            out,
            "consent: no {} in this data directory, so no consent is recorded: nothing is delivered",
            registry_path.display()
        )?;
        return Ok(out);
    }
    let registry = ConsentRegistry::open_read_only(registry_path)?;
    let consents = registry.consents()?;
    let at = format_time(at_ms);
    let concrete = |level: &str| !level.contains(['+', '#']);
    if concrete(citizen) && concrete(metric) {
        writeln!(
            out,
            "consent: each delivery needs {citizen}'s {} consent{to} for {metric}, covering the observation's time",
            purpose.as_str()
        )?;
        let decided = consents.deciding(citizen, grantee, purpose, metric, now_ms);
        let in_force = decided.is_some_and(|r| r.change.granted && r.covers_time(at_ms));
        let verdict = if in_force { "in force" } else { "NOT in force" };
        writeln!(
            out,
            "consent at {at}: {verdict}: {}",
            deciding_text(decided, citizen, purpose, &to, metric, at_ms)
        )?;
        return Ok(out);
    }
    let citizens: BTreeSet<String> = registry
        .list(None)?
        .into_iter()
        .map(|r| r.change.citizen)
        .collect();
    let with: Vec<String> = citizens
        .iter()
        .filter(|c| !concrete(citizen) || c.as_str() == citizen)
        .filter_map(|c| in_force_for(&consents, c, grantee, purpose, metric, at_ms, now_ms))
        .collect();
    writeln!(
        out,
        "consent: each delivery needs its citizen's {} consent{to} for its metric, covering the observation's time",
        purpose.as_str()
    )?;
    writeln!(
        out,
        "consent at {at}: in force for {}",
        if with.is_empty() {
            "no citizen".to_owned()
        } else {
            with.join(", ")
        }
    )?;
    Ok(out)
}

/// `citizen (#record)` if `citizen`'s consent is in force for `metric` (any metric for a
/// wildcard) at `at_ms`.
fn in_force_for(
    consents: &Consents,
    citizen: &str,
    grantee: &str,
    purpose: Purpose,
    metric: &str,
    at_ms: i64,
    now_ms: i64,
) -> Option<String> {
    if metric.contains(['+', '#']) {
        return consents
            .permits_any(citizen, grantee, purpose, at_ms)
            .then(|| format!("{citizen} (some metrics)"));
    }
    consents
        .deciding(citizen, grantee, purpose, metric, now_ms)
        .filter(|r| r.change.granted && r.covers_time(at_ms))
        .map(|r| format!("{citizen} (#{})", r.id))
}

/// Why the deciding record (or its absence) decides as it does for an event at `at_ms`.
fn deciding_text(
    decided: Option<&Consent>,
    citizen: &str,
    purpose: Purpose,
    to: &str,
    metric: &str,
    at_ms: i64,
) -> String {
    let Some(r) = decided else {
        return format!(
            "no {} record of {citizen}{to} names {metric} or all data types",
            purpose.as_str()
        );
    };
    let record = format!(
        "record #{} ({}, source {})",
        r.id,
        format_time(r.recorded_ms),
        r.change.source
    );
    if !r.change.granted {
        return format!("{record} withdraws it");
    }
    let types = if r.change.data_types.is_empty() {
        "all data types".to_owned()
    } else {
        r.change.data_types.join(", ")
    };
    let window = format!(
        "valid from {} until {}",
        r.change
            .valid_from_ms
            .map_or("the start".into(), format_time),
        r.change
            .valid_until_ms
            .map_or("further notice".into(), format_time)
    );
    if r.covers_time(at_ms) {
        format!("{record} grants it for {types}, {window}")
    } else {
        format!(
            "{record} grants it for {types}, {window}, which does not hold {}",
            format_time(at_ms)
        )
    }
}
