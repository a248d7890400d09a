//! The router against a plain reference model: random sequences of connect, subscribe,
//! unsubscribe, publish, drain, disconnect and expiry, with every session's deliveries
//! compared with what the model says MQTT wants.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use rumqttd::protocol::QoS;

use super::message::{Message, RetainHandling, SubOptions};
use super::outbox::QueueLimits;
use super::router::{Router, Session};
use super::topic::matches;

const FILTERS: [&str; 10] = [
    "a/b",
    "a/+",
    "a/#",
    "#",
    "+/b",
    "+",
    "$SYS/#",
    "$share/g/a/b",
    "$share/g/a/#",
    "$share/h/#",
];
const TOPICS: [&str; 6] = ["a/b", "a/c", "a", "b/b", "$SYS/x", "b"];
const SESSIONS: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    Connect {
        s: usize,
        clean: bool,
    },
    Disconnect {
        s: usize,
        keep: bool,
    },
    Expire {
        s: usize,
    },
    Subscribe {
        s: usize,
        f: usize,
        options: SubOptions,
    },
    Unsubscribe {
        s: usize,
        f: usize,
    },
    Publish {
        from: Option<usize>,
        t: usize,
        qos: QoS,
        retain: bool,
        empty: bool,
    },
    Drain {
        s: usize,
    },
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn options() -> impl Strategy<Value = SubOptions> {
    let handling = prop_oneof![
        Just(RetainHandling::Always),
        Just(RetainHandling::IfNew),
        Just(RetainHandling::Never)
    ];
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        handling,
        prop::option::of(1usize..4),
    )
        .prop_map(
            |(qos, no_local, retain_as_published, retain_handling, id)| SubOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
                id,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0..SESSIONS;
    prop_oneof![
        2 => (s.clone(), any::<bool>()).prop_map(|(s, clean)| Op::Connect { s, clean }),
        1 => (s.clone(), any::<bool>()).prop_map(|(s, keep)| Op::Disconnect { s, keep }),
        1 => s.clone().prop_map(|s| Op::Expire { s }),
        4 => (s.clone(), 0..FILTERS.len(), options())
            .prop_map(|(s, f, options)| Op::Subscribe { s, f, options }),
        1 => (s.clone(), 0..FILTERS.len()).prop_map(|(s, f)| Op::Unsubscribe { s, f }),
        6 => (prop::option::of(s.clone()), 0..TOPICS.len(), qos(), any::<bool>(), prop::bool::weighted(0.15))
            .prop_map(|(from, t, qos, retain, empty)| Op::Publish { from, t, qos, retain, empty }),
        3 => s.prop_map(|s| Op::Drain { s }),
    ]
}

/// A delivery as compared: message number, QoS, RETAIN, sorted identifiers.
type Seen = (u64, u8, bool, Vec<usize>);

#[derive(Default)]
struct ModelSession {
    subs: BTreeMap<&'static str, SubOptions>,
    queue: Vec<Seen>,
}

#[derive(Default)]
struct Model {
    sessions: HashMap<usize, ModelSession>,
    /// topic → (message number, QoS)
    retained: HashMap<&'static str, (u64, QoS)>,
    /// (message number, group key) for shared deliveries due.
    shared_due: HashSet<(u64, String)>,
}

struct Real {
    router: Router,
    attached: HashMap<usize, Arc<Session>>,
    shared_seen: Vec<(u64, String)>,
}

fn key(s: usize) -> String {
    format!("p\u{1f}c{s}")
}

fn number(message: &Message) -> u64 {
    let mut bytes = [0u8; 8];
    let n = message.payload.len().min(8);
    bytes[..n].copy_from_slice(&message.payload[..n]);
    u64::from_le_bytes(bytes)
}

fn min(a: QoS, b: QoS) -> QoS {
    if (a as u8) < (b as u8) {
        a
    } else {
        b
    }
}

impl Model {
    fn subscribe(&mut self, s: usize, f: usize, options: SubOptions) {
        let retained: Vec<(u64, QoS, &str)> = self
            .retained
            .iter()
            .map(|(t, (n, q))| (*n, *q, *t))
            .collect();
        let Some(session) = self.sessions.get_mut(&s) else {
            return;
        };
        let filter = FILTERS[f];
        let existed = session.subs.insert(filter, options).is_some();
        let send = match options.retain_handling {
            RetainHandling::Always => true,
            RetainHandling::IfNew => !existed,
            RetainHandling::Never => false,
        };
        if !send || filter.starts_with("$share/") {
            return;
        }
        for (n, qos, topic) in retained {
            if matches(filter, topic) {
                let ids = options.id.into_iter().collect();
                session
                    .queue
                    .push((n, min(qos, options.qos) as u8, true, ids));
            }
        }
    }

    fn publish(
        &mut self,
        n: u64,
        from: Option<usize>,
        topic: &'static str,
        qos: QoS,
        retain: bool,
        empty: bool,
    ) {
        if retain {
            if empty {
                self.retained.remove(topic);
            } else {
                self.retained.insert(topic, (n, qos));
            }
        }
        let mut groups: HashSet<String> = HashSet::new();
        for (s, session) in &mut self.sessions {
            let mut best: Option<Seen> = None;
            for (filter, options) in &session.subs {
                if let Some(rest) = filter.strip_prefix("$share/") {
                    let (group, plain) = rest.split_once('/').expect("group/filter");
                    if matches(plain, topic) {
                        groups.insert(format!("{group}|{plain}"));
                    }
                    continue;
                }
                if !matches(filter, topic) || (options.no_local && from == Some(*s)) {
                    continue;
                }
                let q = min(qos, options.qos) as u8;
                let r = retain && options.retain_as_published;
                let seen = best.get_or_insert((n, q, r, Vec::new()));
                seen.1 = seen.1.max(q);
                seen.2 |= r;
                seen.3.extend(options.id);
            }
            if let Some(mut seen) = best {
                seen.3.sort_unstable();
                session.queue.push(seen);
            }
        }
        for group in groups {
            self.shared_due.insert((n, group));
        }
    }
}

impl Real {
    fn drain(&mut self, s: usize) -> Vec<Seen> {
        let Some(session) = self.attached.get(&s) else {
            return Vec::new();
        };
        let mut got = Vec::new();
        while let Some(d) = session.outbox.pop(true) {
            let n = number(&d.message);
            match &d.group {
                Some(g) => self
                    .shared_seen
                    .push((n, format!("{}|{}", g.group, g.filter))),
                None => {
                    let mut ids = d.subscription_ids.clone();
                    ids.sort_unstable();
                    got.push((n, d.qos as u8, d.retain, ids));
                }
            }
        }
        got
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let limits = QueueLimits {
        max_messages: 1 << 20,
        max_bytes: 1 << 30,
    };
    let mut real = Real {
        router: Router::new(limits),
        attached: HashMap::new(),
        shared_seen: Vec::new(),
    };
    let mut model = Model::default();
    // Sessions the router keeps but no connection holds.
    let mut kept: HashMap<usize, Arc<Session>> = HashMap::new();
    let mut n = 0u64;
    for op in ops {
        match op {
            Op::Connect { s, clean } => {
                if real.attached.contains_key(&s) {
                    continue;
                }
                let (session, present) = real.router.attach(&key(s), clean);
                let had = model.sessions.contains_key(&s);
                prop_assert_eq!(present, had && !clean, "session present");
                if clean || !had {
                    model.sessions.insert(s, ModelSession::default());
                }
                kept.remove(&s);
                real.attached.insert(s, session);
            }
            Op::Disconnect { s, keep } => {
                let Some(session) = real.attached.remove(&s) else {
                    continue;
                };
                real.router.detach(&session, keep);
                if keep {
                    kept.insert(s, session);
                } else {
                    model.sessions.remove(&s);
                }
            }
            Op::Expire { s } => {
                if kept.remove(&s).is_some() {
                    real.router.end(&key(s), None);
                    model.sessions.remove(&s);
                }
            }
            Op::Subscribe { s, f, options } => {
                let Some(session) = real.attached.get(&s) else {
                    continue;
                };
                real.router
                    .subscribe(session, FILTERS[f], options)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.subscribe(s, f, options);
            }
            Op::Unsubscribe { s, f } => {
                let Some(session) = real.attached.get(&s) else {
                    continue;
                };
                let had = real.router.unsubscribe(session, FILTERS[f]);
                let model_had = model
                    .sessions
                    .get_mut(&s)
                    .and_then(|m| m.subs.remove(FILTERS[f]))
                    .is_some();
                prop_assert_eq!(had, model_had, "unsubscribe found the subscription");
            }
            Op::Publish {
                from,
                t,
                qos,
                retain,
                empty,
            } => {
                let from = from.filter(|s| real.attached.contains_key(s));
                n += 1;
                let payload = if empty {
                    Bytes::new()
                } else {
                    Bytes::copy_from_slice(&n.to_le_bytes())
                };
                let origin = from.and_then(|s| real.attached.get(&s)).map(|s| s.id());
                real.router.publish(Message::new(
                    Arc::from(TOPICS[t]),
                    payload,
                    qos,
                    retain,
                    None,
                    origin,
                ));
                model.publish(n, from, TOPICS[t], qos, retain, empty);
                if empty {
                    // An empty payload cannot carry its number: leave it out of the comparison.
                    for session in model.sessions.values_mut() {
                        session.queue.retain(|seen| seen.0 != n);
                    }
                    model.shared_due.retain(|(m, _)| *m != n);
                }
            }
            Op::Drain { s } => {
                let mut got = real.drain(s);
                got.retain(|seen| seen.0 != 0);
                let mut want = model
                    .sessions
                    .get_mut(&s)
                    .filter(|_| real.attached.contains_key(&s))
                    .map(|m| std::mem::take(&mut m.queue))
                    .unwrap_or_default();
                got.sort();
                want.sort();
                prop_assert_eq!(got, want, "deliveries to session {}", s);
            }
        }
    }
    // Every shared delivery went to one member at most, and only where a group was due one;
    // the ones due but never seen were counted as dropped or are still queued.
    for s in 0..SESSIONS {
        if let Some(session) = kept.remove(&s) {
            real.attached.insert(s, session);
        }
        real.drain(s);
    }
    let mut once = HashSet::new();
    for seen in real.shared_seen.iter().filter(|(m, _)| *m != 0) {
        prop_assert!(
            once.insert(seen.clone()),
            "shared delivery {:?} twice",
            seen
        );
        prop_assert!(
            model.shared_due.contains(seen),
            "shared delivery {:?} not due",
            seen
        );
    }
    let dropped = real.router.stats.dropped.load(Ordering::Relaxed) as usize;
    prop_assert!(
        once.len() + dropped >= model.shared_due.len(),
        "shared deliveries lost: {} seen, {} dropped, {} due",
        once.len(),
        dropped,
        model.shared_due.len()
    );
    Ok(())
}

/// 512 cases in the suite; `PROPTEST_CASES` asks for more (a long run before a release).
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(512);
    ProptestConfig::with_cases(cases)
}

proptest! {
    #![proptest_config(config())]
    #[test]
    fn the_router_delivers_what_the_reference_model_says(ops in prop::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
