//! One authorization decision against a large rule set: 10,000 rules (per-principal rules for
//! hospitals and companies, role rules, a few global rules) and 100,000 devices.
//!
//!     cargo bench -p kenko-broker --bench acl

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kenko_broker::acl::{Acl, Principal, Request};
use kenko_config::acl::parse_rules;

const DEVICES: usize = 100_000;
const RULES: usize = 10_000;

fn rule_file() -> String {
    let mut text = String::new();
    let mut push = |effect: &str, who: &str, action: &str, topic: &str| {
        text.push_str(&format!(
            "[[rule]]\neffect = \"{effect}\"\n{who}\naction = \"{action}\"\ntopic = \"{topic}\"\n\n"
        ));
    };
    push("deny", "", "subscribe", "test/nosubscribe");
    push("allow", "role = \"operator\"", "all", "$SYS/#");
    push("deny", "", "all", "private/#");
    // Per-principal rules: services, each with its own wards and feeds.
    let mut n = 3;
    let mut service = 0;
    while n + 2 <= RULES - 3 {
        push(
            "allow",
            &format!("principal = \"service-{service}\""),
            "subscribe",
            &format!("wards/ward-{service}/+/observations/#"),
        );
        push(
            "deny",
            &format!("principal = \"service-{service}\""),
            "publish",
            "wards/#",
        );
        service += 1;
        n += 2;
    }
    push(
        "allow",
        "role = \"device\"",
        "publish",
        "devices/%c/telemetry",
    );
    push(
        "allow",
        "role = \"device\"",
        "subscribe",
        "devices/{device}/errors",
    );
    push("allow", "role = \"operator\"", "subscribe", "#");
    text
}

fn bench(c: &mut Criterion) {
    let rules = parse_rules(&rule_file(), Path::new("bench.toml")).expect("rules");
    assert_eq!(rules.len(), RULES);
    let acl = Acl::new(rules);
    let device_roles = vec!["device".to_owned()];
    let ids: Vec<String> = (0..DEVICES).map(|i| format!("bed-{i:06}")).collect();
    let topics: Vec<String> = ids
        .iter()
        .map(|id| format!("devices/{id}/telemetry"))
        .collect();

    let mut group = c.benchmark_group("acl_decision");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("device_publish_own_telemetry", |b| {
        b.iter(|| {
            i = (i + 1) % DEVICES;
            let p = Principal {
                id: &ids[i],
                client_id: &ids[i],
                username: Some(&ids[i]),
                roles: &device_roles,
                device: Some(&ids[i]),
                citizen: None,
            };
            let d = acl.decide(
                &p,
                &Request::Publish {
                    topic: &topics[i],
                    qos: 1,
                    retain: false,
                },
            );
            assert!(d.allowed);
            black_box(d)
        })
    });
    let mut j = 0usize;
    group.bench_function("device_publish_other_device_denied", |b| {
        b.iter(|| {
            j = (j + 1) % DEVICES;
            let other = (j + 1) % DEVICES;
            let p = Principal {
                id: &ids[j],
                client_id: &ids[j],
                username: None,
                roles: &device_roles,
                device: Some(&ids[j]),
                citizen: None,
            };
            let d = acl.decide(
                &p,
                &Request::Publish {
                    topic: &topics[other],
                    qos: 1,
                    retain: false,
                },
            );
            assert!(!d.allowed);
            black_box(d)
        })
    });
    // Services 0..(RULES - 6) / 2 have rules (six rules are not per service).
    let services: Vec<String> = (0..(RULES - 6) / 2)
        .map(|s| format!("service-{s}"))
        .collect();
    let wards: Vec<String> = (0..services.len())
        .map(|s| format!("wards/ward-{s}/bed-7/observations/heart_rate"))
        .collect();
    let mut k = 0usize;
    group.bench_function("service_delivery_check", |b| {
        b.iter(|| {
            k = (k + 1) % services.len();
            let p = Principal {
                id: &services[k],
                client_id: &services[k],
                username: None,
                roles: &[],
                device: None,
                citizen: None,
            };
            let d = acl.decide(&p, &Request::Deliver { topic: &wards[k] });
            assert!(d.allowed);
            black_box(d)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
