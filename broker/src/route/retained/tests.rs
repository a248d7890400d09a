use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::route::topic::matches;
use crate::route::trie::tests::{expected_nodes, filter, topic};

/// The topics `filter` takes from `retained`, sorted, each checked to carry its own message.
fn taken(retained: &Retained<String>, filter: &str) -> Vec<String> {
    let mut found = Vec::new();
    retained.for_each_matching(filter, |topic, message| {
        assert_eq!(topic, message, "a topic comes with its own message");
        found.push(topic.to_owned());
    });
    found.sort();
    found
}

#[test]
fn wildcards_empty_levels_and_dollar_topics_match_as_mqtt_says() {
    let topics = [
        "a", "a/b", "a//b", "/a", "a/", "/", "$SYS/x", "$SYS", "x", "a/$x",
    ];
    let mut retained = Retained::new();
    for topic in topics {
        assert_eq!(retained.set(topic, topic.to_owned()), None);
    }
    let cases: [(&str, &[&str]); 13] = [
        ("#", &["/", "/a", "a", "a/", "a/$x", "a//b", "a/b", "x"]),
        ("+", &["a", "x"]),
        ("+/+", &["/", "/a", "a/", "a/$x", "a/b"]),
        ("a/#", &["a", "a/", "a/$x", "a//b", "a/b"]),
        ("a/+", &["a/", "a/$x", "a/b"]),
        ("a//b", &["a//b"]),
        ("a//+", &["a//b"]),
        ("/+", &["/", "/a"]),
        ("+/#", &["/", "/a", "a", "a/", "a/$x", "a//b", "a/b", "x"]),
        ("$SYS/#", &["$SYS", "$SYS/x"]),
        ("+/x", &[]),
        ("$SYS/+", &["$SYS/x"]),
        ("b/#", &[]),
    ];
    for (filter, expected) in cases {
        assert_eq!(taken(&retained, filter), expected, "{filter:?}");
        let mut reference: Vec<&str> = topics.into_iter().filter(|t| matches(filter, t)).collect();
        reference.sort();
        assert_eq!(reference, expected, "the reference matcher on {filter:?}");
    }
}

#[test]
fn set_replaces_and_clear_prunes() {
    let mut retained = Retained::new();
    assert_eq!(retained.set("a/b/c", 1), None);
    assert_eq!(retained.set("a/b/c", 2), Some(1));
    assert_eq!(retained.set("a", 3), None);
    assert_eq!((retained.len(), retained.node_count()), (2, 4));
    assert_eq!(retained.get("a/b/c"), Some(&2));
    assert_eq!(retained.get("a/b"), None);
    assert_eq!(retained.clear("a/b"), None, "no message there");
    assert_eq!(retained.clear("a/b/c"), Some(2));
    assert_eq!(retained.node_count(), 2, "b and c were only for a/b/c");
    assert_eq!(retained.clear("a"), Some(3));
    assert_eq!(retained.clear("a"), None);
    assert_eq!((retained.len(), retained.node_count()), (0, 1));
    assert!(retained.is_empty());
}

#[test]
fn hundred_thousand_topics_leave_nothing_behind() {
    let mut retained = Retained::new();
    let topics: Vec<String> = (0..100_000u32)
        .map(|i| match i % 3 {
            0 => format!("devices/{i}/status"),
            1 => format!("citizens/{}/observations/{i}", i % 100),
            _ => format!("$SYS/{i}//x"),
        })
        .collect();
    for (i, topic) in (0u32..).zip(&topics) {
        retained.set(topic, i);
    }
    assert_eq!(retained.len(), 100_000);
    assert!(retained.node_count() > 200_000, "{}", retained.node_count());
    let filter = "citizens/7/observations/+";
    let mut seen = 0;
    retained.for_each_matching(filter, |topic, _| {
        assert!(matches(filter, topic), "{topic}");
        seen += 1;
    });
    assert_eq!(seen, topics.iter().filter(|t| matches(filter, t)).count());
    assert!(seen > 300, "{seen}");
    for topic in &topics {
        assert!(retained.clear(topic).is_some(), "{topic}");
    }
    assert_eq!((retained.len(), retained.node_count()), (0, 1));
    assert_eq!(
        retained.root.children.capacity(),
        0,
        "the root's children were freed"
    );
}

/// Run in a thread with a 256 KiB stack: storing, matching, clearing and dropping a topic of
/// 40,000 levels must not recurse per level.
#[test]
fn topics_of_many_levels_need_no_deep_stack() {
    let deep = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(|| {
            let long = vec!["a"; 40_000].join("/");
            let longer = format!("{long}/b");
            let mut retained = Retained::new();
            retained.set(&long, 1);
            retained.set(&longer, 2);
            let mut found = Vec::new();
            retained.for_each_matching("#", |_, v| found.push(*v));
            retained.for_each_matching(&vec!["+"; 40_001].join("/"), |_, v| found.push(*v));
            found.sort();
            let nodes = retained.node_count();
            let cleared = retained.clear(&longer);
            (found, nodes, cleared, retained.node_count())
            // `retained` is dropped here, with 40,000 levels in it.
        })
        .expect("thread starts")
        .join()
        .expect("no stack overflow");
    assert_eq!(deep, (vec![1, 2, 2], 40_002, Some(2), 40_001));
}

#[derive(Debug, Clone)]
enum Op {
    Set(String, u8),
    Clear(String),
    Subscribe(String),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (topic(), any::<u8>()).prop_map(|(t, v)| Op::Set(t, v)),
        2 => topic().prop_map(Op::Clear),
        3 => filter().prop_map(Op::Subscribe),
    ]
}

/// Applies `op` to the store and to the model (a map of topic to message, whose topics are
/// matched one by one with `matches`) and checks that they agree.
fn step(retained: &mut Retained<u8>, model: &mut HashMap<String, u8>, op: Op) {
    match op {
        Op::Set(t, v) => assert_eq!(retained.set(&t, v), model.insert(t, v)),
        Op::Clear(t) => assert_eq!(retained.clear(&t), model.remove(&t)),
        Op::Subscribe(f) => {
            let mut found = Vec::new();
            retained.for_each_matching(&f, |t, v| found.push((t.to_owned(), *v)));
            found.sort();
            let mut expected: Vec<(String, u8)> = model
                .iter()
                .filter(|(t, _)| matches(&f, t))
                .map(|(t, v)| (t.clone(), *v))
                .collect();
            expected.sort();
            assert_eq!(found, expected, "subscribe {f:?}");
        }
    }
    assert_eq!(retained.len(), model.len());
    assert_eq!(
        retained.node_count(),
        expected_nodes(model.keys().map(String::as_str))
    );
    for (t, v) in model.iter() {
        assert_eq!(retained.get(t), Some(v));
    }
}

proptest! {
    /// The store takes exactly the topics a naive map checked with `matches` takes, and holds
    /// exactly one node per level in use: none once every message is cleared.
    #[test]
    fn retained_messages_match_what_a_map_matches(ops in prop::collection::vec(op(), 1..64)) {
        let mut retained = Retained::new();
        let mut model = HashMap::new();
        for op in ops {
            step(&mut retained, &mut model, op);
        }
        let topics: Vec<String> = model.keys().cloned().collect();
        for t in topics {
            step(&mut retained, &mut model, Op::Clear(t));
        }
        prop_assert_eq!((retained.len(), retained.node_count()), (0, 1));
    }
}
