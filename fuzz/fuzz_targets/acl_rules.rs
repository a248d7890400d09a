//! ACL rule files: `kenko_config::acl::parse_rules` (and `parse_cases`, the same TOML
//! machinery) on any text, then every parsed rule set evaluated by the broker's `Acl` for the
//! principals of each built-in role, on the rules' own topics and a few fixed ones.
#![no_main]

use std::path::Path;

use kenko_broker::acl::{Acl, ConsentCheck, Decision, NoConsents, Principal, Request};
use kenko_config::acl::{
    parse_cases, parse_pattern, parse_rules, Action, ConsentNeed, Effect, Level,
};
use libfuzzer_sys::fuzz_target;

/// Every consent is in force.
struct AllConsents;

impl ConsentCheck for AllConsents {
    fn allows(&self, _: &str, _: &str, _: &str, _: ConsentNeed) -> bool {
        true
    }
}

const TOPICS: &[&str] = &[
    "devices/bed-001/telemetry",
    "devices/bed-001/telemetry/pb",
    "devices/bed-001/errors",
    "citizens/citizen-001/observations/heart_rate",
    "shared/p-1/observations/heart_rate",
    "$SYS/broker/uptime",
    "test/nosubscribe",
];

fuzz_target!(|data: &[u8]| {
    // kenko reads rule files with `read_to_string`: anything that is not UTF-8 stops there.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The toml crate keeps going after a syntax error to report the rest, at about 70 bytes
    // of heap per byte of a badly broken file on top of a megabyte (measured on inputs of 3 to
    // 26 kB: docs/fuzzing.md); growth in proportion to the input is what this bound allows.
    kenko_fuzz::bounded_by(data.len(), 128, 2 << 20, || check(text));
});

fn check(text: &str) {
    let path = Path::new("acl.toml");
    if let Err(e) = parse_cases(text, path) {
        let _ = e.to_string();
    }
    let rules = match parse_rules(text, path) {
        Ok(rules) => rules,
        Err(e) => {
            // The message names file:line:column.
            assert!(e.to_string().starts_with("acl.toml:"), "{e}");
            return;
        }
    };
    for rule in &rules {
        assert_eq!(parse_pattern(&rule.topic).as_ref(), Ok(&rule.pattern));
        assert!(rule.max_qos.is_none_or(|q| q <= 2));
        assert!(rule.source.line >= 1 && rule.source.column >= 1);
    }
    let acl = Acl::new(rules);
    let rules = acl.rules();
    for who in kenko_fuzz::principals() {
        let p = who.principal();
        let selected = acl.rules_for(&p);
        for i in 0..rules.len() {
            let _ = acl.expand(i, &p);
        }
        let mut requests = Vec::new();
        for topic in TOPICS {
            requests.push(Request::Publish {
                topic,
                qos: 1,
                retain: false,
            });
            requests.push(Request::Subscribe {
                filter: topic,
                qos: 1,
            });
            requests.push(Request::Deliver { topic });
        }
        for rule in rules {
            requests.push(Request::Subscribe {
                filter: &rule.topic,
                qos: 0,
            });
            requests.push(Request::Publish {
                topic: &rule.topic,
                qos: 0,
                retain: false,
            });
            requests.push(Request::Deliver { topic: &rule.topic });
        }
        for request in &requests {
            let without = acl.decide_with(&p, request, &NoConsents);
            let with = acl.decide_with(&p, request, &AllConsents);
            decided_by_a_selected_rule(&acl, &selected, &without);
            decided_by_a_selected_rule(&acl, &selected, &with);
            // Consent only ever adds permission.
            assert!(
                !without.allowed || with.allowed,
                "{request:?}: {without:?} {with:?}"
            );
            if !without.allowed {
                acl.count_denial(&without);
            }
        }
        first_rule_decides_its_own_topic(&acl, &selected, &p);
    }
    let _ = acl.denials();
}

fn decided_by_a_selected_rule(acl: &Acl, selected: &[usize], decision: &Decision) {
    match decision.rule {
        Some(i) => {
            assert!(
                selected.contains(&i),
                "rule {i} decided but does not select the principal"
            );
            if decision.allowed {
                assert_eq!(acl.rules()[i].effect, Effect::Allow);
            }
        }
        None => assert!(!decision.allowed, "allowed without a rule"),
    }
}

/// A rule that selects the principal applies to its own topic (without placeholders, which
/// the principal's values would replace), so it or an earlier rule decides it.
fn first_rule_decides_its_own_topic(acl: &Acl, selected: &[usize], p: &Principal<'_>) {
    for &i in selected {
        let rule = &acl.rules()[i];
        let placeholders = rule.pattern.iter().any(|l| {
            matches!(
                l,
                Level::ClientId | Level::Username | Level::Device | Level::Citizen
            )
        });
        if placeholders || rule.topic.starts_with("$share/") {
            continue;
        }
        let decided_by_it_or_earlier = |request: &Request<'_>, what: &str| {
            let d = acl.decide(p, request);
            assert!(
                d.rule.is_some_and(|j| j <= i),
                "rule {i} ({:?}) does not decide its own {what} for {}: {d:?}",
                rule.topic,
                p.id
            );
        };
        if rule.action != Action::Publish {
            let filter = Request::Subscribe {
                filter: &rule.topic,
                qos: 0,
            };
            decided_by_it_or_earlier(&filter, "filter");
        }
        let wildcards = rule
            .pattern
            .iter()
            .any(|l| matches!(l, Level::Single | Level::Rest));
        if rule.action != Action::Subscribe && !wildcards {
            let publish = Request::Publish {
                topic: &rule.topic,
                qos: 0,
                retain: false,
            };
            decided_by_it_or_earlier(&publish, "topic");
        }
    }
}
