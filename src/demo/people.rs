//! The demo's people: an app for every citizen, a care service, an analyst and an operator,
//! each with a fresh password for this run, and consents that give every role something to
//! see: every citizen consents to collection, the first half of them to care by the demo's
//! care service, every second one to research.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use kenko_broker::auth::{hash_password, new_token, Cost};
use kenko_config::{Config, PrincipalConfig};
use kenko_ingest::consent::{ConsentChange, ConsentRegistry, Purpose, HUB};

/// The demo's care service (role `care`).
pub const CARE: &str = "care-demo";
/// The demo's analyst (role `analyst`): reads the shared, pseudonymized store.
pub const ANALYST: &str = "analyst-demo";
/// The demo's operator (role `operator`).
pub const OPERATOR: &str = "operator-demo";

/// The id of a citizen's app.
pub fn app_id(citizen: &str) -> String {
    format!("app-{citizen}")
}

/// The citizens of the demo's devices, in order.
pub fn citizens(config: &Config) -> Vec<String> {
    let set: BTreeSet<&str> = config.devices.iter().map(|d| d.citizen.as_str()).collect();
    set.into_iter().map(str::to_owned).collect()
}

/// Adds the demo's principals to `config`; returns their passwords by id.
pub fn add_principals(config: &mut Config, citizens: &[String]) -> HashMap<String, String> {
    let mut people: Vec<(String, &str, Option<String>)> = citizens
        .iter()
        .map(|c| (app_id(c), "citizen", Some(c.clone())))
        .collect();
    people.push((CARE.to_owned(), "care", None));
    people.push((ANALYST.to_owned(), "analyst", None));
    people.push((OPERATOR.to_owned(), "operator", None));
    let mut passwords = HashMap::new();
    for (id, role, citizen) in people {
        let token = new_token();
        config.principals.push(PrincipalConfig {
            id: id.clone(),
            roles: vec![role.to_owned()],
            password_hash: Some(hash_password(&token, Cost::Token)),
            citizen,
        });
        passwords.insert(id, token);
    }
    passwords
}

/// One consent the demo records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoConsent {
    pub citizen: String,
    pub grantee: &'static str,
    pub purpose: Purpose,
}

/// The consents of the demo's citizens (see the module's description).
pub fn consents(citizens: &[String]) -> Vec<DemoConsent> {
    let mut out = Vec::new();
    for (i, citizen) in citizens.iter().enumerate() {
        let mut grant = |grantee, purpose| {
            out.push(DemoConsent {
                citizen: citizen.clone(),
                grantee,
                purpose,
            })
        };
        grant(HUB, Purpose::Collect);
        if i < citizens.len().div_ceil(2) {
            grant(CARE, Purpose::Care);
        }
        if i % 2 == 1 {
            grant(HUB, Purpose::Research);
        }
    }
    out
}

/// Records `consents` in the data directory's registry, each once: a consent already in force
/// (from an earlier run) is not recorded again.
pub fn record_consents(data_dir: &Path, consents: &[DemoConsent]) -> anyhow::Result<()> {
    let mut registry = ConsentRegistry::open(&data_dir.join("registry.db"))?;
    let now = jiff::Timestamp::now().as_millisecond();
    let in_force = registry.consents()?;
    for c in consents {
        if in_force.permits(&c.citizen, c.grantee, c.purpose, "heart_rate", now, now) {
            continue;
        }
        registry.record(
            ConsentChange {
                citizen: c.citizen.clone(),
                grantee: c.grantee.to_owned(),
                purpose: c.purpose,
                data_types: Vec::new(),
                valid_from_ms: None,
                valid_until_ms: None,
                source: "demo".to_owned(),
                granted: true,
                erase: false,
            },
            now,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("citizen-{i:03}")).collect()
    }

    #[test]
    fn every_citizen_collects_half_follow_care_every_second_shares_research() {
        let consents = consents(&names(5));
        let of = |purpose| {
            consents
                .iter()
                .filter(|c| c.purpose == purpose)
                .map(|c| c.citizen.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(of(Purpose::Collect).len(), 5);
        assert_eq!(
            of(Purpose::Care),
            ["citizen-001", "citizen-002", "citizen-003"]
        );
        assert_eq!(of(Purpose::Research), ["citizen-002", "citizen-004"]);
        assert!(consents
            .iter()
            .filter(|c| c.purpose == Purpose::Care)
            .all(|c| c.grantee == CARE));
    }

    #[test]
    fn one_app_per_citizen_and_one_principal_per_other_role() {
        let mut config = Config::default();
        let passwords = add_principals(&mut config, &names(3));
        let ids: Vec<&str> = config.principals.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "app-citizen-001",
                "app-citizen-002",
                "app-citizen-003",
                CARE,
                ANALYST,
                OPERATOR
            ]
        );
        assert_eq!(config.principals[1].citizen.as_deref(), Some("citizen-002"));
        assert_eq!(config.principals[3].roles, ["care"]);
        assert_eq!(passwords.len(), 6);
        // Fresh passwords, each hashed with its own salt.
        let hashes: BTreeSet<&str> = config
            .principals
            .iter()
            .filter_map(|p| p.password_hash.as_deref())
            .collect();
        assert_eq!(hashes.len(), 6);
        assert!(hashes.iter().all(|h| h.starts_with("$argon2id$")));
    }
}
