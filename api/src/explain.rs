//! Why a request is allowed or denied, in words: the deciding rule (file and line, with its
//! placeholders filled in) or the rules that selected the principal and did not match, and,
//! for a rule that needs consent, the consent in force and the record that decides it. What
//! `kenko acl explain` prints and `GET /api/v1/acl/explain` answers.

mod consent;

use std::path::Path;

use kenko_broker::acl::{Acl, Decision, Principal, Reason, Request};
use kenko_config::acl::{Action, ConsentNeed, Effect, Rule};

/// The decision on `request` by `principal` under `acl`, and its explanation; for an allowed
/// subscription under a rule that needs consent, also the consent in force at `at_ms` in the
/// registry at `registry` (decided now, `now_ms`).
pub fn explain(
    acl: &Acl,
    principal: &Principal<'_>,
    request: &Request<'_>,
    registry: &Path,
    at_ms: i64,
    now_ms: i64,
) -> anyhow::Result<(Decision, String)> {
    let decision = acl.decide(principal, request);
    let mut text = render(acl, principal, request, &decision);
    let need = decision
        .rule
        .filter(|_| decision.allowed)
        .and_then(|i| acl.rules().get(i))
        .and_then(|rule| rule.consent);
    if let (Some(need), Request::Subscribe { filter, .. }) = (need, request) {
        text.push_str(&consent::explain(
            registry,
            need,
            principal.id,
            filter,
            at_ms,
            now_ms,
        )?);
    }
    Ok((decision, text))
}

/// The explanation `kenko acl explain` prints.
pub fn render(acl: &Acl, p: &Principal<'_>, request: &Request<'_>, decision: &Decision) -> String {
    let mut out = String::new();
    let verdict = if decision.allowed { "ALLOW" } else { "DENY" };
    let (action, topic) = kenko_broker::authz::describe(request);
    out.push_str(&format!("{verdict}: {action} {topic}\n"));
    out.push_str(&format!(
        "principal: {} (roles: {}; client id {}; device {}; citizen {})\n",
        p.id,
        if p.roles.is_empty() {
            "none".to_owned()
        } else {
            p.roles.join(", ")
        },
        p.client_id,
        p.device.unwrap_or("-"),
        p.citizen.unwrap_or("-"),
    ));
    match decision
        .rule
        .and_then(|i| acl.rules().get(i).map(|r| (i, r)))
    {
        Some((i, rule)) => {
            out.push_str(&format!("rule: {} {}\n", rule.source, describe_rule(rule)));
            let expanded = acl.expand(i, p).unwrap_or_default();
            if expanded != rule.topic {
                out.push_str(&format!("placeholders: {} -> {expanded}\n", rule.topic));
            }
            match decision.reason {
                Reason::QosAbove(max) => out.push_str(&format!(
                    "why: the rule matches but allows QoS {max} at most\n"
                )),
                Reason::RetainNotAllowed => {
                    out.push_str("why: the rule matches but forbids retained publishes\n")
                }
                Reason::NoConsent(need) => out.push_str(&format!(
                    "why: the rule needs the citizen's {} consent for the data type, in force and covering the observation's time, which it is not\n",
                    consent_name(need)
                )),
                _ => {}
            }
        }
        None => {
            out.push_str("rule: none matched; the default is deny\n");
            let mine = acl.rules_for(p);
            if mine.is_empty() {
                out.push_str("no rule selects this principal (by id, role or everyone)\n");
            } else {
                out.push_str("rules that select this principal, none of which matched:\n");
                for i in mine {
                    let rule = &acl.rules()[i];
                    let expanded = acl.expand(i, p).unwrap_or_default();
                    out.push_str(&format!(
                        "  {} {} (for this principal: {expanded})\n",
                        rule.source,
                        describe_rule(rule)
                    ));
                }
            }
        }
    }
    out
}

fn describe_rule(rule: &Rule) -> String {
    let effect = match rule.effect {
        Effect::Allow => "allow",
        Effect::Deny => "deny",
    };
    let action = match rule.action {
        Action::Publish => "publish",
        Action::Subscribe => "subscribe",
        Action::All => "publish+subscribe",
    };
    let mut text = format!("{effect} {action} {}", rule.topic);
    if let Some(q) = rule.max_qos {
        text.push_str(&format!(" max_qos {q}"));
    }
    if rule.retain == Some(false) {
        text.push_str(" no-retain");
    }
    if let Some(need) = rule.consent {
        text.push_str(&format!(" consent {}", consent_name(need)));
    }
    text
}

fn consent_name(need: ConsentNeed) -> &'static str {
    match need {
        ConsentNeed::Care => "care",
        ConsentNeed::Research => "research",
    }
}
