//! The router's subscription trie and retained store (`route::trie`, `route::retained`)
//! against naive references: a set of (filter, subscriber) pairs and a map of topic to
//! message, matched one by one with `route::topic::matches`.
//!
//! The input is a sequence of operations, each three parts: a byte choosing the operation, a
//! byte for the subscriber or message, and a string: a byte giving its number of fragments
//! (modulo 64), then one byte per fragment choosing it from `FRAGMENTS`. Strings thus mix
//! levels, separators, wildcards, `$`, `$share/g/`, NUL and multi-byte characters, valid or
//! not; only valid filters and topic names are compared with the references, the others go
//! to trees of their own that must simply not panic and must empty out.
#![no_main]

use std::collections::{BTreeSet, HashMap, HashSet};

use kenko_broker::route::retained::Retained;
use kenko_broker::route::topic::{matches, parse_filter, Filter};
use kenko_broker::route::trie::Trie;
use libfuzzer_sys::fuzz_target;

const FRAGMENTS: [&str; 16] = [
    "a", "b", "/", "/", "+", "#", "$", "$SYS", "c", "é", "\0", "x", "ab", "$share/g/", "/", "+/",
];

/// Heap growth allowed per input byte: each fragment may add a node to a tree (a few dozen
/// bytes and its share of its parent's children) and a byte to a reference's copy.
const PER_INPUT_BYTE: usize = 256;

fuzz_target!(|data: &[u8]| {
    kenko_fuzz::bounded_by(data.len(), PER_INPUT_BYTE, kenko_fuzz::SLACK, || run(data));
});

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn string(&mut self) -> String {
        let fragments = self.byte().unwrap_or(0) % 64;
        let mut s = String::new();
        for _ in 0..fragments {
            let Some(b) = self.byte() else { break };
            s.push_str(FRAGMENTS[usize::from(b) % FRAGMENTS.len()]);
        }
        s
    }
}

/// The trees under test, the references, and the trees that take what is not valid.
#[derive(Default)]
struct World {
    trie: Trie<BTreeSet<u8>>,
    subscriptions: BTreeSet<(String, u8)>,
    retained: Retained<u8>,
    messages: HashMap<String, u8>,
    junk_trie: Trie<BTreeSet<u8>>,
    junk_filters: HashSet<String>,
    junk_retained: Retained<u8>,
    junk_topics: HashSet<String>,
}

fn run(data: &[u8]) {
    let mut input = Input(data);
    let mut world = World::default();
    while let Some(op) = input.byte() {
        let arg = input.byte().unwrap_or(0);
        let text = input.string();
        match op % 6 {
            0 => world.subscribe(&text, arg % 4),
            1 => world.unsubscribe(&text, arg % 4),
            2 => world.publish(&text),
            3 => world.retain(&text, arg),
            4 => world.clear_retained(&text),
            _ => world.take_retained(&text),
        }
    }
    world.check_sizes();
    world.empty_out();
}

/// The plain filter a subscription's filter routes on, if it is valid.
fn routed_filter(raw: &str) -> Option<&str> {
    match parse_filter(raw).ok()? {
        Filter::Plain(f) | Filter::Shared { filter: f, .. } => Some(f),
    }
}

fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

impl World {
    fn subscribe(&mut self, raw: &str, id: u8) {
        match routed_filter(raw) {
            Some(f) => {
                self.trie.entry(f).insert(id);
                self.subscriptions.insert((f.to_owned(), id));
            }
            None => {
                self.junk_trie.entry(raw).insert(id);
                self.junk_filters.insert(raw.to_owned());
            }
        }
    }

    fn unsubscribe(&mut self, raw: &str, id: u8) {
        let Some(f) = routed_filter(raw) else {
            if let Some(ids) = self.junk_trie.get_mut(raw) {
                ids.remove(&id);
            }
            if self.junk_trie.remove_if(raw, BTreeSet::is_empty).is_some() {
                self.junk_filters.remove(raw);
            }
            return;
        };
        if let Some(ids) = self.trie.get_mut(f) {
            ids.remove(&id);
        }
        let removed = self.trie.remove_if(f, BTreeSet::is_empty);
        let was = self.subscriptions.remove(&(f.to_owned(), id));
        let last = !self.subscriptions.iter().any(|(g, _)| g == f);
        assert_eq!(
            removed.is_some(),
            was && last,
            "unsubscribing {id} from {f:?}: the trie removed {removed:?}"
        );
    }

    fn publish(&mut self, topic: &str) {
        if !valid_topic(topic) {
            self.junk_trie.for_each_match(topic, |_| {});
            self.trie.for_each_match(topic, |_| {});
            return;
        }
        let mut found = Vec::new();
        self.trie
            .for_each_match(topic, |ids| found.extend(ids.iter().copied()));
        found.sort_unstable();
        let mut expected: Vec<u8> = Vec::new();
        let mut filters = BTreeSet::new();
        for (f, id) in &self.subscriptions {
            if matches(f, topic) {
                expected.push(*id);
                filters.insert(f.as_str());
            }
        }
        expected.sort_unstable();
        assert_eq!(
            found, expected,
            "{topic:?}: the filters matching it are {filters:?}"
        );
        self.junk_trie.for_each_match(topic, |_| {});
    }

    fn retain(&mut self, topic: &str, value: u8) {
        if valid_topic(topic) {
            let old = self.retained.set(topic, value);
            assert_eq!(old, self.messages.insert(topic.to_owned(), value), "{topic:?}");
        } else {
            self.junk_retained.set(topic, value);
            self.junk_topics.insert(topic.to_owned());
        }
    }

    fn clear_retained(&mut self, topic: &str) {
        if valid_topic(topic) {
            let old = self.retained.clear(topic);
            assert_eq!(old, self.messages.remove(topic), "{topic:?}");
        } else {
            self.junk_retained.clear(topic);
            self.junk_topics.remove(topic);
        }
    }

    fn take_retained(&mut self, raw: &str) {
        let Some(f) = routed_filter(raw) else {
            self.retained.for_each_matching(raw, |_, _| {});
            self.junk_retained.for_each_matching(raw, |_, _| {});
            return;
        };
        let mut found = Vec::new();
        self.retained
            .for_each_matching(f, |topic, value| found.push((topic.to_owned(), *value)));
        found.sort_unstable();
        let mut expected: Vec<(String, u8)> = self
            .messages
            .iter()
            .filter(|(topic, _)| matches(f, topic))
            .map(|(topic, value)| (topic.clone(), *value))
            .collect();
        expected.sort_unstable();
        assert_eq!(found, expected, "retained messages for {f:?}");
        self.junk_retained.for_each_matching(f, |_, _| {});
    }

    /// Each tree has one node per distinct leading run of levels of what it holds.
    fn check_sizes(&self) {
        let filters: BTreeSet<&str> = self.subscriptions.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(self.trie.len(), filters.len());
        assert_eq!(self.trie.node_count(), nodes_for(filters.iter().copied()));
        assert_eq!(self.retained.len(), self.messages.len());
        assert_eq!(
            self.retained.node_count(),
            nodes_for(self.messages.keys().map(String::as_str))
        );
        assert_eq!(self.junk_trie.len(), self.junk_filters.len());
        assert_eq!(
            self.junk_trie.node_count(),
            nodes_for(self.junk_filters.iter().map(String::as_str))
        );
        assert_eq!(self.junk_retained.len(), self.junk_topics.len());
        assert_eq!(
            self.junk_retained.node_count(),
            nodes_for(self.junk_topics.iter().map(String::as_str))
        );
    }

    /// Removing everything leaves every tree with its root only.
    fn empty_out(mut self) {
        let filters: BTreeSet<String> = self.subscriptions.iter().map(|(f, _)| f.clone()).collect();
        for f in &filters {
            assert!(self.trie.remove(f).is_some(), "{f:?}");
        }
        for topic in self.messages.keys() {
            assert!(self.retained.clear(topic).is_some(), "{topic:?}");
        }
        for f in &self.junk_filters {
            assert!(self.junk_trie.remove(f).is_some(), "{f:?}");
        }
        for topic in &self.junk_topics {
            assert!(self.junk_retained.clear(topic).is_some(), "{topic:?}");
        }
        for (what, len, nodes) in [
            ("trie", self.trie.len(), self.trie.node_count()),
            ("retained", self.retained.len(), self.retained.node_count()),
            ("junk trie", self.junk_trie.len(), self.junk_trie.node_count()),
            (
                "junk retained",
                self.junk_retained.len(),
                self.junk_retained.node_count(),
            ),
        ] {
            assert_eq!((len, nodes), (0, 1), "the {what} is not empty");
        }
    }
}

/// The root and one node per distinct leading run of levels of `paths`.
fn nodes_for<'a>(paths: impl Iterator<Item = &'a str>) -> usize {
    let mut prefixes = HashSet::new();
    for path in paths {
        let mut end = 0;
        for level in path.split('/') {
            end += level.len();
            prefixes.insert(&path[..end]);
            end += 1;
        }
    }
    prefixes.len() + 1
}
