//! Topic names and filters: the checks a PUBLISH topic passes (`packet::check_topic_name`,
//! `packet::telemetry_device`), the ACL's pattern parser and matcher, and the router's own
//! matcher (`route::topic::matches`, the reference its subscription trie is checked against
//! by the `route_trie` target), against one another.
//!
//! The input is three lines: an ACL pattern, a subscription filter, a topic name.
#![no_main]

use kenko_broker::acl::{observation_topic, Acl, Request};
use kenko_broker::fuzzing::{check_topic_filter, check_topic_name, telemetry_device, valid_filter};
use kenko_broker::route::topic::matches;
use kenko_config::acl::{parse_pattern, Action, Effect, Level, Rule, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(3, |b| *b == b'\n');
    let pattern = lines.next().unwrap_or_default();
    let filter = lines.next().unwrap_or_default();
    let topic = lines.next().unwrap_or_default();
    kenko_fuzz::bounded(data.len(), || check(pattern, filter, topic));
});

fn check(pattern: &[u8], filter: &[u8], topic: &[u8]) {
    // The session's check of a PUBLISH topic refuses exactly what MQTT forbids.
    let checked = check_topic_name(topic);
    let utf8 = std::str::from_utf8(topic).ok();
    let valid =
        utf8.filter(|t| !t.is_empty() && !t.contains(['+', '#', '\0']));
    assert_eq!(checked.ok(), valid, "check_topic_name({topic:?})");
    if let Some(t) = valid {
        if let Some(device) = telemetry_device(t) {
            assert!(!device.is_empty() && !device.contains('/'), "{t:?}");
            assert!(
                t == format!("devices/{device}/telemetry")
                    || t == format!("devices/{device}/telemetry/pb"),
                "{t:?} is not the telemetry topic of {device:?}"
            );
        }
        if let Some((citizen, metric)) = observation_topic(t) {
            assert_eq!(t, format!("citizens/{citizen}/observations/{metric}"));
        }
    }
    // A device id the configuration accepts makes telemetry topics that name it.
    if let Some(id) = utf8.filter(|t| kenko_config::check_identifier(t).is_ok()) {
        for topic in [
            format!("devices/{id}/telemetry"),
            format!("devices/{id}/telemetry/pb"),
        ] {
            assert_eq!(check_topic_name(topic.as_bytes()), Ok(topic.as_str()));
            assert_eq!(telemetry_device(&topic), Some(id));
        }
    }

    let (Ok(pattern), Ok(filter)) = (std::str::from_utf8(pattern), std::str::from_utf8(filter))
    else {
        return;
    };
    // The codec refuses a SUBSCRIBE or UNSUBSCRIBE with a filter MQTT does not allow; it and
    // rumqttd's own check (which nothing calls) agree but for the NUL character.
    let well_formed = check_topic_filter(filter).is_ok();
    assert_eq!(
        well_formed,
        valid_filter(filter) && !filter.contains('\0'),
        "check_topic_filter({filter:?})"
    );
    // The session forwards a valid topic not starting with '$' to the router, which matches
    // it against every filter subscribed so far.
    let routed = valid.filter(|t| !t.starts_with('$'));
    let delivered = routed.filter(|_| well_formed).map(|t| matches(filter, t));

    let Ok(levels) = parse_pattern(pattern) else {
        return;
    };
    assert_eq!(levels.len(), pattern.split('/').count(), "{pattern:?}");
    assert!(
        levels.iter().rev().skip(1).all(|l| *l != Level::Rest),
        "'#' before the last level of {pattern:?}"
    );
    let placeholders = levels.iter().any(|l| {
        matches!(
            l,
            Level::ClientId | Level::Username | Level::Device | Level::Citizen
        )
    });
    let acl = Acl::new(vec![Rule {
        effect: Effect::Allow,
        principals: vec![],
        roles: vec![],
        action: Action::All,
        pattern: levels,
        topic: pattern.to_owned(),
        max_qos: None,
        retain: None,
        consent: None,
        source: Source {
            file: "fuzz".into(),
            line: 1,
            column: 1,
        },
    }]);
    for who in kenko_fuzz::principals() {
        let p = who.principal();
        let subscribe = Request::Subscribe { filter, qos: 0 };
        let allowed = acl.decide(&p, &subscribe).allowed;
        if let Some(t) = routed {
            let deliver = acl.decide(&p, &Request::Deliver { topic: t }).allowed;
            // A filter is allowed only if the pattern covers every topic it can match.
            if allowed && well_formed && !filter.starts_with("$share/") && delivered == Some(true) {
                assert!(
                    deliver,
                    "{} may subscribe to {filter:?} under {pattern:?}, which the router \
                     matches to {t:?}, but the ACL does not allow {t:?}",
                    who.id
                );
            }
            // Without placeholders the ACL and the router agree on which topics a pattern
            // matches.
            if !placeholders && check_topic_filter(pattern).is_ok() {
                assert_eq!(
                    deliver,
                    matches(pattern, t),
                    "ACL and router disagree on {t:?} against {pattern:?}"
                );
            }
        }
    }
}
