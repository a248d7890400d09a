use std::collections::{BTreeSet, HashSet};

use proptest::prelude::*;

use super::*;
use crate::route::topic::{matches, parse_filter, Filter};

/// The filters (each its own value) that `trie` matches to `topic`, sorted.
fn matched(trie: &Trie<String>, topic: &str) -> Vec<String> {
    let mut found = Vec::new();
    trie.for_each_match(topic, |filter| found.push(filter.clone()));
    found.sort();
    found
}

fn trie_of(filters: &[&str]) -> Trie<String> {
    let mut trie = Trie::new();
    for filter in filters {
        *trie.entry(filter) = (*filter).to_owned();
    }
    trie
}

#[test]
fn wildcards_empty_levels_and_dollar_topics_match_as_mqtt_says() {
    let trie = trie_of(&[
        "#", "+", "a", "a/#", "a/+", "a//b", "/a", "a/", "+/x", "$SYS/#", "$SYS/x", "+/#", "/+",
        "/#",
    ]);
    let cases: [(&str, &[&str]); 9] = [
        ("a", &["#", "+", "+/#", "a", "a/#"]),
        ("a/", &["#", "+/#", "a/", "a/#", "a/+"]),
        ("a//b", &["#", "+/#", "a/#", "a//b"]),
        ("/a", &["#", "+/#", "/#", "/+", "/a"]),
        ("/", &["#", "+/#", "/#", "/+"]),
        ("x/x", &["#", "+/#", "+/x"]),
        ("$SYS/x", &["$SYS/#", "$SYS/x"]),
        ("$SYS", &["$SYS/#"]),
        ("b/c/d", &["#", "+/#"]),
    ];
    for (topic, expected) in cases {
        assert_eq!(matched(&trie, topic), expected, "{topic:?}");
        let reference: Vec<&str> = trie_filters(&trie)
            .into_iter()
            .filter(|f| matches(f, topic))
            .collect();
        assert_eq!(reference, expected, "the reference matcher on {topic:?}");
    }
}

/// Every filter of `trie_of`'s trie, sorted.
fn trie_filters(trie: &Trie<String>) -> Vec<&str> {
    let mut all = Vec::new();
    let mut pending = vec![&trie.root];
    while let Some(node) = pending.pop() {
        all.extend(node.value.as_deref());
        node.each_child(|child| pending.push(child));
    }
    all.sort();
    all
}

#[test]
fn a_lone_hash_or_plus_is_a_filter_of_its_own() {
    let trie = trie_of(&["#"]);
    assert_eq!(matched(&trie, "a/b/c"), ["#"]);
    assert_eq!(matched(&trie, "$SYS/broker"), Vec::<String>::new());
    assert_eq!(trie.node_count(), 2);
    let trie = trie_of(&["+"]);
    assert_eq!(matched(&trie, "a"), ["+"]);
    assert_eq!(matched(&trie, "a/b"), Vec::<String>::new());
    assert_eq!(matched(&trie, "$SYS"), Vec::<String>::new());
}

#[test]
fn entry_keeps_one_value_per_filter() {
    let mut trie: Trie<Vec<u32>> = Trie::new();
    trie.entry("a/+").push(1);
    trie.entry("a/+").push(2);
    trie.entry("a/#").push(3);
    assert_eq!(trie.len(), 2);
    assert_eq!(trie.get("a/+"), Some(&vec![1, 2]));
    assert_eq!(trie.get("a"), None, "a node on the way holds no value");
    assert_eq!(trie.get("b"), None);
    if let Some(subscribers) = trie.get_mut("a/#") {
        subscribers.clear();
    }
    assert_eq!(trie.get("a/#"), Some(&vec![]));
    assert!(!trie.is_empty());
}

#[test]
fn removing_prunes_only_what_the_filter_alone_needed() {
    let mut trie: Trie<Vec<u32>> = Trie::new();
    trie.entry("a/b/c").push(1);
    trie.entry("a/b").push(2);
    trie.entry("a/x/y/z").push(3);
    assert_eq!(trie.node_count(), 7);
    assert_eq!(trie.remove_if("a/b", |v| v.is_empty()), None, "not empty");
    assert_eq!(trie.remove("a"), None, "no value there");
    assert_eq!(trie.remove("a/b/c/d"), None, "no such node");
    assert_eq!(trie.node_count(), 7);
    assert_eq!(trie.remove("a/x/y/z"), Some(vec![3]));
    assert_eq!(trie.node_count(), 4, "x, y and z were only for a/x/y/z");
    assert_eq!(trie.remove("a/b"), Some(vec![2]));
    assert_eq!(trie.node_count(), 4, "a/b stays on the way to a/b/c");
    assert_eq!(trie.get("a/b/c"), Some(&vec![1]));
    if let Some(v) = trie.get_mut("a/b/c") {
        v.retain(|s| *s != 1);
    }
    assert_eq!(trie.remove_if("a/b/c", |v| v.is_empty()), Some(vec![]));
    assert_eq!((trie.len(), trie.node_count()), (0, 1));
}

#[test]
fn hundred_thousand_filters_leave_nothing_behind() {
    let mut trie: Trie<u32> = Trie::new();
    let filters: Vec<String> = (0..100_000u32)
        .map(|i| match i % 4 {
            0 => format!("devices/{i}/errors"),
            1 => format!("{i}/+/#"),
            2 => format!("citizens/{}/observations/{i}", i % 100),
            _ => format!("$SYS/{i}//#"),
        })
        .collect();
    for (i, filter) in (0u32..).zip(&filters) {
        *trie.entry(filter) = i;
    }
    assert_eq!(trie.len(), 100_000);
    assert!(trie.node_count() > 200_000, "{}", trie.node_count());
    let mut seen = 0;
    trie.for_each_match("citizens/6/observations/2506", |v| {
        assert_eq!(*v, 2506);
        seen += 1;
    });
    assert_eq!(seen, 1);
    for filter in &filters {
        assert!(trie.remove(filter).is_some(), "{filter}");
    }
    assert_eq!((trie.len(), trie.node_count()), (0, 1));
    assert_eq!(
        trie.root.children.capacity(),
        0,
        "the root's children were freed"
    );
    assert!(trie.root.plus.is_none() && trie.root.hash.is_none());
}

#[test]
fn children_move_between_a_vector_and_a_map_and_shrink() {
    let mut trie: Trie<u32> = Trie::new();
    for i in 0..1000u32 {
        *trie.entry(&format!("a/{i}")) = i;
    }
    let node = trie.root.children.get("a").expect("a is there");
    assert!(matches!(node.children, Levels::Many(_)));
    for i in 0..998u32 {
        assert_eq!(trie.remove(&format!("a/{i}")), Some(i));
    }
    let node = trie.root.children.get("a").expect("a is there");
    assert!(matches!(node.children, Levels::Few(_)));
    assert_eq!(node.children.capacity(), 2);
    assert_eq!(trie.get("a/999"), Some(&999));
}

/// Run in a thread with a 256 KiB stack: inserting, matching, removing and dropping a filter
/// of 40,000 levels must not recurse per level.
#[test]
fn filters_of_many_levels_need_no_deep_stack() {
    let deep = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(|| {
            let literal = vec!["a"; 40_000].join("/");
            let plus = vec!["+"; 40_000].join("/");
            let mut trie: Trie<u32> = Trie::new();
            *trie.entry(&literal) = 1;
            *trie.entry(&plus) = 2;
            *trie.entry(&format!("{literal}/#")) = 3;
            let mut found = Vec::new();
            trie.for_each_match(&literal, |v| found.push(*v));
            found.sort();
            let nodes = trie.node_count();
            let removed = trie.remove(&plus);
            (found, nodes, removed, trie.node_count())
            // `trie` is dropped here, with 40,000 levels in it.
        })
        .expect("thread starts")
        .join()
        .expect("no stack overflow");
    assert_eq!(deep, (vec![1, 2, 3], 80_002, Some(2), 40_002));
}

#[test]
fn the_pending_stack_spills_and_pops_in_order() {
    let mut pending: Pending<u32, 2> = Pending::new();
    for i in 0..5 {
        pending.push(i);
    }
    assert_eq!(pending.pop(), Some(4));
    pending.push(9);
    let rest: Vec<u32> = std::iter::from_fn(|| pending.pop()).collect();
    assert_eq!(rest, [9, 3, 2, 1, 0]);
}

/// One step of the property test: a subscriber `id` adds or drops a filter, everything under
/// a filter goes, or a topic is published.
#[derive(Debug, Clone)]
enum Op {
    Subscribe(String, u8),
    Unsubscribe(String, u8),
    Remove(String),
    Publish(String),
}

/// Levels from a small alphabet, so that filters and topics meet often: empty levels and
/// `$` levels included, and now and then enough others for a node to have more children than
/// fit in a vector (`FEW`).
fn level() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        6 => prop::sample::select(&["a", "b", "", "$s", "$SYS"][..]),
        1 => prop::sample::select(&["c", "d", "e", "f", "g", "h", "i"][..]),
    ]
}

pub(crate) fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..=4).prop_map(|levels| non_empty(levels.join("/")))
}

/// MQTT forbids an empty topic name or filter: one empty level becomes two (rather than
/// being rejected, which a long run would do tens of thousands of times).
fn non_empty(path: String) -> String {
    if path.is_empty() {
        "/".to_owned()
    } else {
        path
    }
}

pub(crate) fn filter() -> impl Strategy<Value = String> {
    let level = prop_oneof![3 => level(), 1 => Just("+")];
    (prop::collection::vec(level, 0..=3), any::<bool>()).prop_map(|(mut levels, hash)| {
        if hash || levels.is_empty() {
            levels.push("#");
        }
        non_empty(levels.join("/"))
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (filter(), 0..3u8).prop_map(|(f, id)| Op::Subscribe(f, id)),
        3 => (filter(), 0..3u8).prop_map(|(f, id)| Op::Unsubscribe(f, id)),
        1 => filter().prop_map(Op::Remove),
        4 => topic().prop_map(Op::Publish),
    ]
}

type Subscribers = BTreeSet<(String, u8)>;

/// The nodes a tree of `paths` must have: the root and one per distinct leading run of
/// levels.
pub(crate) fn expected_nodes<'a>(paths: impl Iterator<Item = &'a str>) -> usize {
    let mut prefixes = HashSet::new();
    for path in paths {
        let levels: Vec<&str> = path.split('/').collect();
        for n in 1..=levels.len() {
            prefixes.insert(levels[..n].to_vec());
        }
    }
    prefixes.len() + 1
}

/// Applies `op` to the trie and to the model (a set of (filter, subscriber) pairs matched one
/// by one with `matches`) and checks that they agree.
fn step(trie: &mut Trie<Subscribers>, model: &mut BTreeSet<(String, u8)>, op: Op) {
    match op {
        Op::Subscribe(f, id) => {
            trie.entry(&f).insert((f.clone(), id));
            model.insert((f, id));
        }
        Op::Unsubscribe(f, id) => {
            let pair = (f.clone(), id);
            if let Some(subscribers) = trie.get_mut(&f) {
                subscribers.remove(&pair);
            }
            let removed = trie.remove_if(&f, BTreeSet::is_empty);
            let was = model.remove(&pair);
            let last = !model.iter().any(|(g, _)| *g == f);
            assert_eq!(removed.is_some(), was && last, "unsubscribe {pair:?}");
        }
        Op::Remove(f) => {
            let expected: Subscribers = model.iter().filter(|(g, _)| *g == f).cloned().collect();
            model.retain(|(g, _)| *g != f);
            let removed = trie.remove(&f);
            assert_eq!(removed, (!expected.is_empty()).then_some(expected));
        }
        Op::Publish(topic) => {
            let mut found = Vec::new();
            trie.for_each_match(&topic, |subscribers| {
                found.extend(subscribers.iter().cloned())
            });
            found.sort();
            let expected: Vec<(String, u8)> = model
                .iter()
                .filter(|(f, _)| matches(f, &topic))
                .cloned()
                .collect();
            assert_eq!(found, expected, "publish {topic:?}");
        }
    }
    let filters: BTreeSet<&str> = model.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(trie.len(), filters.len());
    assert_eq!(trie.node_count(), expected_nodes(filters.iter().copied()));
}

proptest! {
    /// The trie finds exactly the subscriptions a naive list checked with `matches` finds, and
    /// holds exactly one node per level in use: none once everything is removed.
    #[test]
    fn the_trie_matches_what_a_list_matches(ops in prop::collection::vec(op(), 1..64)) {
        let mut trie = Trie::new();
        let mut model = BTreeSet::new();
        for op in ops {
            step(&mut trie, &mut model, op);
        }
        let filters: BTreeSet<String> = model.iter().map(|(f, _)| f.clone()).collect();
        for f in filters {
            step(&mut trie, &mut model, Op::Remove(f));
        }
        prop_assert_eq!((trie.len(), trie.node_count()), (0, 1));
    }

    /// The generated filters are valid ones, so the test above says something about the
    /// filters sessions will store.
    #[test]
    fn generated_filters_are_valid(f in filter()) {
        prop_assert_eq!(parse_filter(&f), Ok(Filter::Plain(f.as_str())));
    }
}

/// The map is boxed so that a node's children cost what a vector costs, whichever form they
/// take.
#[test]
fn children_cost_a_vector_in_every_node() {
    assert_eq!(
        std::mem::size_of::<Levels<Node<u32>>>(),
        std::mem::size_of::<Vec<(Box<str>, Node<u32>)>>()
    );
}
