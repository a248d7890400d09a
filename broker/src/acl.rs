//! Evaluating the operators' ACL rules (parsed by `kenko_config::acl`): ordered rules, first
//! match wins, default deny. Rules are indexed by principal id and role, so a decision looks
//! only at the rules that can apply to the asking principal, in file order.
//!
//! A SUBSCRIBE filter is allowed by a rule only if the rule's pattern covers every topic the
//! filter can match; each delivery is checked again as a subscribe on its concrete topic, so a
//! wide allowed filter still never delivers a topic a later deny rule forbids.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use kenko_config::acl::{Action, ConsentNeed, Effect, Level, Rule};

/// Who is asking, with what the registry binds to them.
#[derive(Debug, Clone, Copy)]
pub struct Principal<'a> {
    pub id: &'a str,
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub roles: &'a [String],
    pub device: Option<&'a str>,
    pub citizen: Option<&'a str>,
}

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    Publish {
        topic: &'a str,
        qos: u8,
        retain: bool,
    },
    Subscribe {
        filter: &'a str,
        qos: u8,
    },
    /// An outgoing delivery of `topic` to a subscriber.
    Deliver {
        topic: &'a str,
    },
}

/// Why a request was allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The rule's effect decided.
    Rule,
    /// The rule allows the topic but not this QoS.
    QosAbove(u8),
    /// The rule allows the topic but not retained publishes.
    RetainNotAllowed,
    /// The rule needs the citizen's consent for this data, in force and covering the
    /// observation's time (which only the hub's own publishes say), and it is not.
    NoConsent(ConsentNeed),
    /// No rule matched: default deny.
    NoRule,
    /// The connection's principal was removed, or its roles, citizen or password changed,
    /// after it connected: nothing more is allowed to it.
    PrincipalChanged,
}

/// Answers "has `citizen` given `need` consent for `metric` to principal `grantee`?" for the
/// delivery being decided: from the consents in force, for the time of the observation it
/// carries (`authz::ConsentsFor`).
pub trait ConsentCheck {
    fn allows(&self, citizen: &str, metric: &str, grantee: &str, need: ConsentNeed) -> bool;
}

/// No consent is known: rules that need consent deny.
pub struct NoConsents;

impl ConsentCheck for NoConsents {
    fn allows(&self, _: &str, _: &str, _: &str, _: ConsentNeed) -> bool {
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Index of the deciding rule.
    pub rule: Option<usize>,
    pub reason: Reason,
}

/// A compiled rule set.
#[derive(Debug, Default)]
pub struct Acl {
    rules: Vec<Rule>,
    by_principal: HashMap<String, Vec<u32>>,
    by_role: HashMap<String, Vec<u32>>,
    everyone: Vec<u32>,
    /// Denials per rule; the last slot counts default denials (no rule matched).
    denials: Vec<AtomicU64>,
}

thread_local! {
    static CANDIDATES: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

impl Acl {
    pub fn new(rules: Vec<Rule>) -> Acl {
        let mut acl = Acl::default();
        for (i, rule) in rules.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            if rule.principals.is_empty() && rule.roles.is_empty() {
                acl.everyone.push(i);
            }
            for p in &rule.principals {
                acl.by_principal.entry(p.clone()).or_default().push(i);
            }
            for r in &rule.roles {
                acl.by_role.entry(r.clone()).or_default().push(i);
            }
        }
        acl.denials = (0..=rules.len()).map(|_| AtomicU64::new(0)).collect();
        acl.rules = rules;
        acl
    }

    /// Counts a denial against the rule that decided it (or the default).
    pub fn count_denial(&self, decision: &Decision) {
        let slot = decision.rule.unwrap_or(self.rules.len());
        if let Some(counter) = self.denials.get(slot) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Denials so far: `(rule index or None for the default, count)`, only non-zero ones.
    pub fn denials(&self) -> Vec<(Option<usize>, u64)> {
        self.denials
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    (i < self.rules.len()).then_some(i),
                    c.load(Ordering::Relaxed),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The rule's pattern with the principal's placeholders filled in, as `explain` shows it;
    /// a placeholder the principal has no value for stays as written, marked unbound.
    pub fn expand(&self, rule: usize, principal: &Principal<'_>) -> Option<String> {
        let rule = self.rules.get(rule)?;
        let levels: Vec<String> = rule
            .pattern
            .iter()
            .map(|level| match level {
                Level::Literal(s) => s.clone(),
                Level::Single => "+".into(),
                Level::Rest => "#".into(),
                other => match bound(other, principal) {
                    Some(Some(v)) => v.to_owned(),
                    _ => format!("<{} unbound>", placeholder_name(other)),
                },
            })
            .collect();
        Some(levels.join("/"))
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Indices of the rules that select `principal` (by id, role or everyone), in file order.
    pub fn rules_for(&self, principal: &Principal<'_>) -> Vec<usize> {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                (r.principals.is_empty() && r.roles.is_empty())
                    || r.principals.iter().any(|p| p == principal.id)
                    || r.roles.iter().any(|role| principal.roles.contains(role))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Decides `request` for `principal`, knowing no consents.
    pub fn decide(&self, principal: &Principal<'_>, request: &Request<'_>) -> Decision {
        self.decide_with(principal, request, &NoConsents)
    }

    /// Decides `request` for `principal`; rules that need consent ask `consents`.
    pub fn decide_with(
        &self,
        principal: &Principal<'_>,
        request: &Request<'_>,
        consents: &dyn ConsentCheck,
    ) -> Decision {
        CANDIDATES.with(|buffer| {
            let mut candidates = buffer.borrow_mut();
            candidates.clear();
            if let Some(list) = self.by_principal.get(principal.id) {
                candidates.extend_from_slice(list);
            }
            for role in principal.roles {
                if let Some(list) = self.by_role.get(role.as_str()) {
                    candidates.extend_from_slice(list);
                }
            }
            candidates.extend_from_slice(&self.everyone);
            candidates.sort_unstable();
            candidates.dedup();
            for &i in candidates.iter() {
                let Some(rule) = self.rules.get(i as usize) else {
                    continue;
                };
                if let Some(decision) = decide_rule(rule, i as usize, principal, request, consents)
                {
                    return decision;
                }
            }
            Decision {
                allowed: false,
                rule: None,
                reason: Reason::NoRule,
            }
        })
    }
}

/// The decision of one rule, if it applies to the request.
fn decide_rule(
    rule: &Rule,
    index: usize,
    principal: &Principal<'_>,
    request: &Request<'_>,
    consents: &dyn ConsentCheck,
) -> Option<Decision> {
    let (is_publish, applies) = match *request {
        Request::Publish { topic, .. } => (true, matches_topic(&rule.pattern, topic, principal)),
        Request::Subscribe { filter, .. } => (
            false,
            covers(&rule.pattern, shared_filter(filter), principal),
        ),
        Request::Deliver { topic } => (false, matches_topic(&rule.pattern, topic, principal)),
    };
    let action_fits = match rule.action {
        Action::All => true,
        Action::Publish => is_publish,
        Action::Subscribe => !is_publish,
    };
    if !action_fits || !applies {
        return None;
    }
    let deny = |reason| {
        Some(Decision {
            allowed: false,
            rule: Some(index),
            reason,
        })
    };
    if rule.effect == Effect::Deny {
        return deny(Reason::Rule);
    }
    let qos = match *request {
        Request::Publish { qos, .. } | Request::Subscribe { qos, .. } => qos,
        Request::Deliver { .. } => 0,
    };
    if let Some(max) = rule.max_qos {
        if qos > max {
            return deny(Reason::QosAbove(max));
        }
    }
    if let (Request::Publish { retain: true, .. }, Some(false)) = (request, rule.retain) {
        return deny(Reason::RetainNotAllowed);
    }
    if let (Request::Deliver { topic }, Some(need)) = (request, rule.consent) {
        // Only observations carry a citizen and a data type to ask about; anything else a
        // consent rule would deliver is denied.
        let consented = observation_topic(topic)
            .is_some_and(|(citizen, metric)| consents.allows(citizen, metric, principal.id, need));
        if !consented {
            return deny(Reason::NoConsent(need));
        }
    }
    Some(Decision {
        allowed: true,
        rule: Some(index),
        reason: Reason::Rule,
    })
}

/// The citizen and metric of `citizens/{citizen}/observations/{metric}`.
pub fn observation_topic(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix("citizens/")?;
    let (citizen, rest) = rest.split_once('/')?;
    let metric = rest.strip_prefix("observations/")?;
    (!citizen.is_empty() && !metric.is_empty() && !metric.contains('/'))
        .then_some((citizen, metric))
}

/// `$share/{group}/{filter}` is checked as `{filter}`.
fn shared_filter(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, f)| f)
}

/// The principal's value for a placeholder level; `None` if the level is not a placeholder
/// or the principal has no such value.
fn bound<'a>(level: &'a Level, p: &Principal<'a>) -> Option<Option<&'a str>> {
    match level {
        Level::ClientId => Some(Some(p.client_id)),
        Level::Username => Some(p.username),
        Level::Device => Some(p.device),
        Level::Citizen => Some(p.citizen),
        _ => None,
    }
}

fn placeholder_name(level: &Level) -> &'static str {
    match level {
        Level::ClientId => "%c",
        Level::Username => "%u",
        Level::Device => "{device}",
        Level::Citizen => "{citizen}",
        _ => "?",
    }
}

/// Does the pattern match the concrete topic? Wildcards in the first level never match a
/// topic starting with `$` (MQTT-4.7.2-1).
fn matches_topic(pattern: &[Level], topic: &str, p: &Principal<'_>) -> bool {
    let dollar = topic.starts_with('$');
    let mut levels = topic.split('/');
    for (i, level) in pattern.iter().enumerate() {
        if *level == Level::Rest {
            return !(i == 0 && dollar);
        }
        let Some(t) = levels.next() else { return false };
        let ok = match level {
            Level::Single => !(i == 0 && dollar),
            Level::Literal(s) => s == t,
            // A client id may start with `$`: a level the client named is no more allowed
            // to reach a `$` topic than a wildcard is.
            other => !(i == 0 && dollar) && matches!(bound(other, p), Some(Some(v)) if v == t),
        };
        if !ok {
            return false;
        }
    }
    levels.next().is_none()
}

/// Does the pattern match every topic the filter can match?
fn covers(pattern: &[Level], filter: &str, p: &Principal<'_>) -> bool {
    let dollar = filter.starts_with('$');
    let mut levels = filter.split('/');
    for (i, level) in pattern.iter().enumerate() {
        if *level == Level::Rest {
            return !(i == 0 && dollar);
        }
        let Some(f) = levels.next() else { return false };
        let ok = match (level, f) {
            (_, "#") => false,
            (Level::Single, _) => !(i == 0 && dollar),
            (_, "+") => false,
            (Level::Literal(s), f) => s == f,
            (other, f) => !(i == 0 && dollar) && matches!(bound(other, p), Some(Some(v)) if v == f),
        };
        if !ok {
            return false;
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests;
