use std::path::Path;

use kenko_config::acl::{parse_rules, Source};
use proptest::prelude::*;

use super::*;

fn rules(text: &str) -> Acl {
    Acl::new(parse_rules(text, Path::new("acl.toml")).expect("valid rules"))
}

fn device<'a>(id: &'a str, roles: &'a [String]) -> Principal<'a> {
    Principal {
        id,
        client_id: id,
        username: Some(id),
        roles,
        device: Some(id),
        citizen: Some("citizen-1"),
    }
}

const EXAMPLE: &str = r##"
[[rule]]
effect = "deny"
action = "subscribe"
topic = "test/nosubscribe"

[[rule]]
effect = "allow"
role = "device"
action = "publish"
topic = "devices/%c/telemetry"
max_qos = 1
retain = false

[[rule]]
effect = "allow"
role = "device"
action = "subscribe"
topic = "devices/{device}/errors"

[[rule]]
effect = "allow"
role = "operator"
action = "all"
topic = "$SYS/#"

[[rule]]
effect = "allow"
role = "operator"
action = "subscribe"
topic = "#"
"##;

#[test]
fn denials_are_counted_per_rule_and_placeholders_expand() {
    let acl = rules(EXAMPLE);
    let roles = vec!["device".to_owned()];
    let me = device("bed-1", &roles);
    let nosub = Request::Subscribe {
        filter: "test/nosubscribe",
        qos: 0,
    };
    let other = Request::Publish {
        topic: "devices/bed-2/telemetry",
        qos: 0,
        retain: false,
    };
    for request in [nosub, nosub, other] {
        let decision = acl.decide(&me, &request);
        assert!(!decision.allowed);
        acl.count_denial(&decision);
    }
    assert_eq!(acl.denials(), vec![(Some(0), 2), (None, 1)]);
    assert_eq!(
        acl.expand(1, &me).as_deref(),
        Some("devices/bed-1/telemetry")
    );
    let anonymous = Principal { device: None, ..me };
    assert_eq!(
        acl.expand(2, &anonymous).as_deref(),
        Some("devices/<{device} unbound>/errors")
    );
    assert_eq!(acl.rules_for(&me), vec![0, 1, 2]);
}

#[test]
fn devices_publish_their_own_telemetry_only() {
    let acl = rules(EXAMPLE);
    let roles = vec!["device".to_owned()];
    let me = device("bed-1", &roles);
    let publish = |topic, qos, retain| acl.decide(&me, &Request::Publish { topic, qos, retain });
    let ok = publish("devices/bed-1/telemetry", 1, false);
    assert!(ok.allowed);
    assert_eq!(ok.rule, Some(1));
    assert!(
        !publish("devices/bed-2/telemetry", 1, false).allowed,
        "another device's topic"
    );
    assert_eq!(
        publish("devices/bed-1/telemetry", 2, false).reason,
        Reason::QosAbove(1)
    );
    assert_eq!(
        publish("devices/bed-1/telemetry", 0, true).reason,
        Reason::RetainNotAllowed
    );
    let none = publish("other", 0, false);
    assert_eq!(
        (none.allowed, none.rule, none.reason),
        (false, None, Reason::NoRule)
    );
    let sub = |filter| {
        acl.decide(&me, &Request::Subscribe { filter, qos: 1 })
            .allowed
    };
    assert!(sub("devices/bed-1/errors"));
    assert!(
        !sub("devices/+/errors"),
        "a wildcard would reach other devices"
    );
    assert!(!sub("#"));
}

#[test]
fn wildcards_never_reach_dollar_topics_and_shared_subscriptions_are_unwrapped() {
    let acl = rules(EXAMPLE);
    let roles = vec!["operator".to_owned()];
    let op = Principal {
        id: "op",
        client_id: "op",
        username: None,
        roles: &roles,
        device: None,
        citizen: None,
    };
    let sub = |filter| acl.decide(&op, &Request::Subscribe { filter, qos: 0 });
    assert!(sub("#").allowed);
    assert_eq!(sub("$SYS/#").rule, Some(3), "$SYS needs its own rule");
    assert!(!sub("test/nosubscribe").allowed, "deny rule first");
    assert!(sub("$share/g/#").allowed, "checked as #");
    assert!(!sub("$share/g/test/nosubscribe").allowed);
    let deliver = |topic| acl.decide(&op, &Request::Deliver { topic }).allowed;
    assert!(deliver("a/b"));
    assert!(
        !deliver("test/nosubscribe"),
        "a wide filter still does not deliver a denied topic"
    );
    // Without the $SYS rule, `#` does not reach $SYS topics.
    let no_sys = rules(&EXAMPLE.replace("$SYS/#", "$OTHER/#"));
    assert!(
        !no_sys
            .decide(
                &op,
                &Request::Deliver {
                    topic: "$SYS/uptime"
                }
            )
            .allowed
    );
    assert!(
        !no_sys
            .decide(
                &op,
                &Request::Subscribe {
                    filter: "$SYS/#",
                    qos: 0
                }
            )
            .allowed
    );
}

#[test]
fn a_client_id_starting_with_dollar_does_not_turn_percent_c_into_a_dollar_topic() {
    let acl = rules("[[rule]]\neffect = \"allow\"\naction = \"all\"\ntopic = \"%c/#\"\n");
    let roles = vec![];
    let client = |client_id| Principal {
        id: "x",
        client_id,
        username: None,
        roles: &roles,
        device: None,
        citizen: None,
    };
    let subscribe = |filter| Request::Subscribe { filter, qos: 0 };
    assert!(acl.decide(&client("app 7"), &subscribe("app 7/#")).allowed);
    assert!(!acl.decide(&client("$SYS"), &subscribe("$SYS/#")).allowed);
    let deliver = Request::Deliver {
        topic: "$SYS/broker/uptime",
    };
    assert!(!acl.decide(&client("$SYS"), &deliver).allowed);
}

#[test]
fn placeholders_without_a_value_do_not_match() {
    let acl =
        rules("[[rule]]\neffect = \"allow\"\naction = \"all\"\ntopic = \"citizens/{citizen}/#\"\n");
    let nobody = Principal {
        id: "x",
        client_id: "x",
        username: None,
        roles: &[],
        device: None,
        citizen: None,
    };
    assert!(
        !acl.decide(
            &nobody,
            &Request::Deliver {
                topic: "citizens/citizen-1/a"
            }
        )
        .allowed
    );
    let roles = vec![];
    let citizen = device("bed-1", &roles);
    assert!(
        acl.decide(
            &citizen,
            &Request::Deliver {
                topic: "citizens/citizen-1/a"
            }
        )
        .allowed
    );
    assert!(
        !acl.decide(
            &citizen,
            &Request::Deliver {
                topic: "citizens/citizen-2/a"
            }
        )
        .allowed
    );
}

// ---- Property test: the indexed evaluator equals a plain reference model. ----

const LEVELS: [&str; 4] = ["a", "b", "$s", "x"];

/// MQTT matching of a filter (given as levels, `+`/`#` as wildcards) against a topic.
fn ref_match(filter: &[String], topic: &[&str]) -> bool {
    let dollar = topic.first().is_some_and(|t| t.starts_with('$'));
    if dollar && matches!(filter.first().map(String::as_str), Some("+" | "#")) {
        return false;
    }
    fn go(f: &[String], t: &[&str]) -> bool {
        match (f.first().map(String::as_str), t.first()) {
            (Some("#"), _) => true,
            (None, None) => true,
            (Some("+"), Some(_)) => go(&f[1..], &t[1..]),
            (Some(l), Some(tl)) => l == *tl && go(&f[1..], &t[1..]),
            _ => false,
        }
    }
    go(filter, topic)
}

/// The pattern with placeholders replaced; `None` if one has no value, or if a placeholder
/// in the first level would make it a `$` topic (which only literal levels reach).
fn expand(pattern: &[Level], p: &Principal<'_>) -> Option<Vec<String>> {
    let literal_first = matches!(
        pattern.first(),
        Some(Level::Literal(_) | Level::Single | Level::Rest)
    );
    let expanded: Vec<String> = pattern
        .iter()
        .map(|l| match l {
            Level::Literal(s) => Some(s.clone()),
            Level::Single => Some("+".into()),
            Level::Rest => Some("#".into()),
            Level::ClientId => Some(p.client_id.to_owned()),
            Level::Username => p.username.map(str::to_owned),
            Level::Device => p.device.map(str::to_owned),
            Level::Citizen => p.citizen.map(str::to_owned),
        })
        .collect::<Option<_>>()?;
    let dollar = expanded.first().is_some_and(|l| l.starts_with('$'));
    (literal_first || !dollar).then_some(expanded)
}

fn universe() -> Vec<Vec<&'static str>> {
    let mut all: Vec<Vec<&str>> = LEVELS.iter().map(|l| vec![*l]).collect();
    let mut last = all.clone();
    for _ in 1..5 {
        last = last
            .iter()
            .flat_map(|t| LEVELS.iter().map(move |l| [t.clone(), vec![*l]].concat()))
            .collect();
        all.extend(last.iter().cloned());
    }
    all
}

fn reference(
    rules: &[Rule],
    p: &Principal<'_>,
    request: &Request<'_>,
    topics: &[Vec<&str>],
) -> Decision {
    for (i, rule) in rules.iter().enumerate() {
        let selected = (rule.principals.is_empty() && rule.roles.is_empty())
            || rule.principals.iter().any(|x| x == p.id)
            || rule.roles.iter().any(|r| p.roles.contains(r));
        let Some(pattern) = expand(&rule.pattern, p) else {
            continue;
        };
        let (publish, applies, qos) = match *request {
            Request::Publish { topic, qos, .. } => (
                true,
                ref_match(&pattern, &topic.split('/').collect::<Vec<_>>()),
                qos,
            ),
            Request::Deliver { topic } => (
                false,
                ref_match(&pattern, &topic.split('/').collect::<Vec<_>>()),
                0,
            ),
            Request::Subscribe { filter, qos } => {
                let filter: Vec<String> = shared_filter(filter)
                    .split('/')
                    .map(str::to_owned)
                    .collect();
                let covered = topics
                    .iter()
                    .all(|t| !ref_match(&filter, t) || ref_match(&pattern, t));
                (false, covered, qos)
            }
        };
        let action = match rule.action {
            Action::All => true,
            Action::Publish => publish,
            Action::Subscribe => !publish,
        };
        if !(selected && action && applies) {
            continue;
        }
        let reason = if rule.effect == Effect::Deny {
            Reason::Rule
        } else if rule.max_qos.is_some_and(|m| qos > m) {
            Reason::QosAbove(rule.max_qos.unwrap_or(0))
        } else if matches!(request, Request::Publish { retain: true, .. })
            && rule.retain == Some(false)
        {
            Reason::RetainNotAllowed
        } else {
            return Decision {
                allowed: true,
                rule: Some(i),
                reason: Reason::Rule,
            };
        };
        return Decision {
            allowed: false,
            rule: Some(i),
            reason,
        };
    }
    Decision {
        allowed: false,
        rule: None,
        reason: Reason::NoRule,
    }
}

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![
        prop::sample::select(&LEVELS[..]).prop_map(|l| Level::Literal(l.to_owned())),
        Just(Level::Single),
        Just(Level::ClientId),
        Just(Level::Username),
        Just(Level::Device),
        Just(Level::Citizen),
    ]
}

fn pattern() -> impl Strategy<Value = Vec<Level>> {
    (prop::collection::vec(level(), 1..4), any::<bool>()).prop_map(|(mut levels, rest)| {
        if rest {
            levels.push(Level::Rest);
        }
        levels
    })
}

fn names() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop::sample::select(vec![
            "p1".to_owned(),
            "p2".to_owned(),
            "r1".to_owned(),
            "r2".to_owned(),
        ]),
        0..2,
    )
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        any::<bool>(),
        names(),
        names(),
        prop::sample::select(vec![Action::Publish, Action::Subscribe, Action::All]),
        pattern(),
        prop::option::of(0u8..3),
        prop::option::of(any::<bool>()),
    )
        .prop_map(
            |(allow, principals, roles, action, pattern, max_qos, retain)| Rule {
                effect: if allow { Effect::Allow } else { Effect::Deny },
                principals,
                roles,
                action,
                pattern,
                topic: String::new(),
                max_qos,
                retain,
                consent: None,
                source: Source {
                    file: "p".into(),
                    line: 1,
                    column: 1,
                },
            },
        )
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&LEVELS[..]), 1..5).prop_map(|l| l.join("/"))
}

fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(vec!["a", "b", "$s", "x", "+"]), 1..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(levels, rest, shared)| {
            let mut f = levels.join("/");
            if rest {
                f.push_str("/#");
            }
            if shared {
                f = format!("$share/g/{f}");
            }
            f
        })
}

fn value() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::of(prop::sample::select(vec!["a", "b"]))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]
    #[test]
    fn decisions_equal_the_reference_model(
        rules in prop::collection::vec(rule(), 0..8),
        id in prop::sample::select(vec!["p1", "p2", "p3"]),
        roles in prop::collection::vec(prop::sample::select(vec!["r1".to_owned(), "r2".to_owned()]), 0..3),
        client in prop::sample::select(vec!["a", "b", "$s"]),
        (username, device, citizen) in (value(), value(), value()),
        (t, f, qos, retain, kind) in (topic(), filter(), 0u8..3, any::<bool>(), 0..3),
    ) {
        let principal = Principal { id, client_id: client, username, roles: &roles, device, citizen };
        let request = match kind {
            0 => Request::Publish { topic: &t, qos, retain },
            1 => Request::Subscribe { filter: &f, qos },
            _ => Request::Deliver { topic: &t },
        };
        let acl = Acl::new(rules.clone());
        let topics = universe();
        prop_assert_eq!(acl.decide(&principal, &request), reference(&rules, &principal, &request, &topics));
    }
}
