//! kenko's router under arbitrary sequences of its operations (attach, detach, end,
//! subscribe, unsubscribe, publish, take deliveries), with filters and topics from the input:
//! it must never panic, and once every session has ended and every retained topic is
//! cleared, it must hold nothing (no subscription, no retained message, no trie node beyond
//! the roots).
//!
//! The input is a list of lines: the first byte of each line picks the operation and the
//! session, the rest of the line is its filter or topic.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use kenko_broker::route::message::{Message, RetainHandling, SubOptions};
use kenko_broker::route::{QueueLimits, Router, Session};
use kenko_broker::fuzzing::QoS;
use libfuzzer_sys::fuzz_target;

const SESSIONS: u8 = 4;

fuzz_target!(|data: &[u8]| {
    kenko_fuzz::bounded(data.len(), || run(data));
});

fn qos(bits: u8) -> QoS {
    match bits % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn run(data: &[u8]) {
    let router = Router::new(QueueLimits {
        max_messages: 8,
        max_bytes: 4096,
    });
    let mut attached: HashMap<u8, Arc<Session>> = HashMap::new();
    let mut topics: HashSet<String> = HashSet::new();
    for line in data.split(|b| *b == b'\n') {
        let Some((&head, rest)) = line.split_first() else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(rest) else {
            continue;
        };
        let s = head % SESSIONS;
        let key = format!("p\u{1f}c{s}");
        match (head / SESSIONS) % 7 {
            0 => {
                if !attached.contains_key(&s) {
                    let (session, _) = router.attach(&key, head & 0x80 != 0);
                    attached.insert(s, session);
                }
            }
            1 => {
                if let Some(session) = attached.remove(&s) {
                    router.detach(&session, head & 0x80 != 0);
                }
            }
            2 => {
                if !attached.contains_key(&s) {
                    router.end(&key, None);
                }
            }
            3 => {
                if let Some(session) = attached.get(&s) {
                    let options = SubOptions {
                        qos: qos(head >> 5),
                        no_local: head & 0x40 != 0,
                        retain_as_published: head & 0x20 != 0,
                        retain_handling: match head % 3 {
                            0 => RetainHandling::Always,
                            1 => RetainHandling::IfNew,
                            _ => RetainHandling::Never,
                        },
                        id: Some(usize::from(head)),
                    };
                    // An invalid filter is refused with an error, never a panic.
                    let _ = router.subscribe(session, text, options);
                }
            }
            4 => {
                if let Some(session) = attached.get(&s) {
                    router.unsubscribe(session, text);
                }
            }
            5 => {
                // The session checks topic names before the router sees them.
                if text.is_empty() || text.contains(['+', '#', '\0']) {
                    continue;
                }
                let retain = head & 0x80 != 0;
                if retain {
                    topics.insert(text.to_owned());
                }
                let origin = attached.get(&s).map(|session| session.id());
                let payload = Bytes::copy_from_slice(&line[..line.len().min(16)]);
                let message =
                    Message::new(Arc::from(text), payload, qos(head >> 4), retain, None, origin);
                router.publish(message);
            }
            _ => {
                if let Some(session) = attached.get(&s) {
                    while session.outbox.pop(head & 0x80 != 0).is_some() {}
                }
            }
        }
    }
    for (_, session) in attached.drain() {
        router.detach(&session, false);
    }
    for s in 0..SESSIONS {
        router.end(&format!("p\u{1f}c{s}"), None);
    }
    for topic in topics {
        router.publish(Message::new(
            Arc::from(topic.as_str()),
            Bytes::new(),
            QoS::AtMostOnce,
            true,
            None,
            None,
        ));
    }
    assert_eq!(router.session_count(), 0);
    assert_eq!(router.subscription_count(), 0, "subscriptions left behind");
    assert_eq!(router.retained_count(), 0, "retained messages left behind");
    let (subscriptions, retained) = router.node_counts();
    assert!(
        subscriptions <= 1 && retained <= 1,
        "trie nodes left behind: {subscriptions} subscription, {retained} retained"
    );
}
