//! The subscription tree: plain topic filters mapped to a value each, stored level by level,
//! so that the filters matching a topic name are found by walking the topic's levels (cost
//! proportional to the levels times the matching branches, never to the number of filters),
//! and a filter's nodes are freed as soon as its value is removed.
//!
//! Also what [`Retained`](super::retained::Retained) shares: the children of a node
//! ([`Levels`]), removing a path and the nodes it leaves empty ([`remove_path`]), dropping and
//! walking a tree without recursion (a filter may have tens of thousands of levels, which must
//! not exhaust a task's stack).

use std::collections::HashMap;

/// Plain topic filters (`a/+/b`, `a/#`; see [`parse_filter`](super::topic::parse_filter))
/// mapped to a value of type `V`, e.g. the subscribers of that filter.
///
/// A filter that is not valid is stored and removed like any other but may never match.
pub struct Trie<V> {
    root: Node<V>,
    len: usize,
}

struct Node<V> {
    value: Option<V>,
    children: Levels<Node<V>>,
    /// The `+` level, apart so that matching reaches it without a lookup.
    plus: Option<Box<Node<V>>>,
    /// The `#` level (valid filters end there, so only its value is ever matched).
    hash: Option<Box<Node<V>>>,
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Trie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V> Trie<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `filter`, created with `V::default()` (and the filter's nodes with it) if
    /// the filter has none yet.
    pub fn entry(&mut self, filter: &str) -> &mut V
    where
        V: Default,
    {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_entry(level);
        }
        if node.value.is_none() {
            self.len += 1;
        }
        node.value.get_or_insert_with(V::default)
    }

    pub fn get(&self, filter: &str) -> Option<&V> {
        descend(&self.root, filter)?.value.as_ref()
    }

    pub fn get_mut(&mut self, filter: &str) -> Option<&mut V> {
        descend_mut(&mut self.root, filter.split('/'))?
            .value
            .as_mut()
    }

    /// Removes the value of `filter` if `empty` says so (e.g. its last subscriber left), with
    /// every node that then holds no value and no child; returns the value removed.
    pub fn remove_if(&mut self, filter: &str, empty: impl FnOnce(&V) -> bool) -> Option<V> {
        let removed = remove_path(&mut self.root, filter, empty)?;
        self.len -= 1;
        Some(removed)
    }

    /// Removes the value of `filter` and the nodes only it needed.
    pub fn remove(&mut self, filter: &str) -> Option<V> {
        self.remove_if(filter, |_| true)
    }

    /// Calls `f` with the value of every filter that matches the topic name `topic`, once
    /// each, in no particular order. `+` matches one level, `#` the rest including none
    /// (`a/#` matches `a`), and a filter starting with a wildcard matches no topic starting
    /// with `$` (MQTT-4.7.2-1).
    pub fn for_each_match<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a V)) {
        let mut pending: Pending<(&'a Node<V>, Option<&str>), INLINE> = Pending::new();
        let (first, rest) = split_level(topic);
        if !topic.starts_with('$') {
            if let Some(value) = self.root.hash_value() {
                f(value);
            }
            if let Some(plus) = &self.root.plus {
                pending.push((plus, rest));
            }
        }
        if let Some(child) = self.root.children.get(first) {
            pending.push((child, rest));
        }
        while let Some((node, rest)) = pending.pop() {
            if let Some(value) = node.hash_value() {
                f(value);
            }
            let Some(rest) = rest else {
                if let Some(value) = &node.value {
                    f(value);
                }
                continue;
            };
            let (level, rest) = split_level(rest);
            if let Some(child) = node.children.get(level) {
                pending.push((child, rest));
            }
            if let Some(plus) = &node.plus {
                pending.push((plus, rest));
            }
        }
    }

    /// The number of filters with a value.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of nodes, the root included (so 1 when empty); counted by a walk of the
    /// whole tree.
    pub fn node_count(&self) -> usize {
        count_nodes(&self.root)
    }
}

impl<V> Node<V> {
    fn hash_value(&self) -> Option<&V> {
        self.hash.as_deref()?.value.as_ref()
    }

    fn child_entry(&mut self, level: &str) -> &mut Node<V> {
        match level {
            "+" => self.plus.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            _ => self.children.get_or_insert_with(level, Node::default),
        }
    }
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            value: None,
            children: Levels::default(),
            plus: None,
            hash: None,
        }
    }
}

impl<V> Branch for Node<V> {
    type Value = V;

    fn child(&self, level: &str) -> Option<&Self> {
        match level {
            "+" => self.plus.as_deref(),
            "#" => self.hash.as_deref(),
            _ => self.children.get(level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Self> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    fn detach(&mut self, level: &str) -> Option<Self> {
        match level {
            "+" => self.plus.take().map(|node| *node),
            "#" => self.hash.take().map(|node| *node),
            _ => self.children.remove(level),
        }
    }

    fn degree(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some()) + usize::from(self.hash.is_some())
    }

    fn value(&self) -> Option<&V> {
        self.value.as_ref()
    }

    fn value_mut(&mut self) -> &mut Option<V> {
        &mut self.value
    }

    fn each_child<'a>(&'a self, mut f: impl FnMut(&'a Self)) {
        self.children.for_each(|_, child| f(child));
        if let Some(plus) = &self.plus {
            f(plus);
        }
        if let Some(hash) = &self.hash {
            f(hash);
        }
    }

    fn take_children(&mut self, into: &mut Vec<Self>) {
        self.children.drain_into(into);
        into.extend(self.plus.take().map(|node| *node));
        into.extend(self.hash.take().map(|node| *node));
    }
}

impl<V> Drop for Node<V> {
    fn drop(&mut self) {
        drop_iteratively(self);
    }
}

/// The first level of `levels` and what follows its `/`, if anything does: `a/b` gives `a`
/// and `b`, `a/` gives `a` and ``, `a` gives `a` and nothing.
pub(super) fn split_level(levels: &str) -> (&str, Option<&str>) {
    match levels.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (levels, None),
    }
}

/// How many pending branches a walk keeps on the stack before it allocates.
pub(super) const INLINE: usize = 16;

/// A stack whose first `N` entries live inline, so that a walk over a topic allocates only
/// when it has more branches pending than a usual topic ever has.
pub(super) struct Pending<T, const N: usize> {
    inline: [Option<T>; N],
    len: usize,
    spill: Vec<T>,
}

impl<T: Copy, const N: usize> Pending<T, N> {
    pub(super) fn new() -> Self {
        Pending {
            inline: [None; N],
            len: 0,
            spill: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, item: T) {
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(item);
                self.len += 1;
            }
            None => self.spill.push(item),
        }
    }

    pub(super) fn pop(&mut self) -> Option<T> {
        if let Some(item) = self.spill.pop() {
            return Some(item);
        }
        self.len = self.len.checked_sub(1)?;
        self.inline.get_mut(self.len)?.take()
    }
}

/// The children of a node by level. Most nodes have a few: those stay in a vector sized to fit
/// (scanning a few short strings costs less than hashing one, and a one-child node costs one
/// small allocation); a node with many children keeps them in a hash map.
pub(super) enum Levels<N> {
    Few(Vec<(Box<str>, N)>),
    // Boxed so that every node, leaves included, pays for a vector (24 bytes) and not for a
    // map with its hasher (48): few nodes have many children.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<Box<str>, N>>),
}

/// The most children kept in a vector; a map, once shrunk to half of this, becomes a vector
/// again.
const FEW: usize = 8;

impl<N> Default for Levels<N> {
    fn default() -> Self {
        Levels::Few(Vec::new())
    }
}

impl<N> Levels<N> {
    pub(super) fn len(&self) -> usize {
        match self {
            Levels::Few(few) => few.len(),
            Levels::Many(many) => many.len(),
        }
    }

    pub(super) fn get(&self, level: &str) -> Option<&N> {
        match self {
            Levels::Few(few) => few.iter().find(|(k, _)| **k == *level).map(|(_, n)| n),
            Levels::Many(many) => many.get(level),
        }
    }

    pub(super) fn get_mut(&mut self, level: &str) -> Option<&mut N> {
        match self {
            Levels::Few(few) => few.iter_mut().find(|(k, _)| **k == *level).map(|(_, n)| n),
            Levels::Many(many) => many.get_mut(level),
        }
    }

    pub(super) fn get_or_insert_with(&mut self, level: &str, new: impl FnOnce() -> N) -> &mut N {
        if let Levels::Few(few) = self {
            if few.len() >= FEW && !few.iter().any(|(k, _)| **k == *level) {
                let many: HashMap<Box<str>, N> = std::mem::take(few).into_iter().collect();
                *self = Levels::Many(Box::new(many));
            }
        }
        match self {
            Levels::Few(few) => {
                let i = match few.iter().position(|(k, _)| **k == *level) {
                    Some(i) => i,
                    None => {
                        // Grown one at a time: a vector's doubling would hold four slots for
                        // the one child most nodes have.
                        few.reserve_exact(1);
                        few.push((level.into(), new()));
                        few.len() - 1
                    }
                };
                &mut few[i].1
            }
            Levels::Many(many) => many.entry(level.into()).or_insert_with(new),
        }
    }

    /// Removes the child at `level`, giving memory back as the children thin out.
    pub(super) fn remove(&mut self, level: &str) -> Option<N> {
        match self {
            Levels::Few(few) => {
                let i = few.iter().position(|(k, _)| **k == *level)?;
                let (_, node) = few.swap_remove(i);
                few.shrink_to_fit();
                Some(node)
            }
            Levels::Many(many) => {
                let node = many.remove(level)?;
                if many.len() <= FEW / 2 {
                    let few: Vec<(Box<str>, N)> = many.drain().collect();
                    *self = Levels::Few(few);
                } else if many.len() * 4 <= many.capacity() {
                    many.shrink_to(many.len() * 2);
                }
                Some(node)
            }
        }
    }

    pub(super) fn for_each<'a>(&'a self, mut f: impl FnMut(&'a str, &'a N)) {
        match self {
            Levels::Few(few) => few.iter().for_each(|(k, n)| f(k, n)),
            Levels::Many(many) => many.iter().for_each(|(k, n)| f(k, n)),
        }
    }

    pub(super) fn drain_into(&mut self, into: &mut Vec<N>) {
        match std::mem::take(self) {
            Levels::Few(few) => into.extend(few.into_iter().map(|(_, n)| n)),
            Levels::Many(many) => into.extend(many.into_values()),
        }
    }

    /// The slots allocated for children, used or not.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        match self {
            Levels::Few(few) => few.capacity(),
            Levels::Many(many) => many.capacity(),
        }
    }
}

/// A node of a tree keyed by topic levels, as removing a path, counting and dropping see it.
pub(super) trait Branch: Sized {
    type Value;
    fn child(&self, level: &str) -> Option<&Self>;
    fn child_mut(&mut self, level: &str) -> Option<&mut Self>;
    /// Takes the child at `level` out of the tree.
    fn detach(&mut self, level: &str) -> Option<Self>;
    /// The number of children.
    fn degree(&self) -> usize;
    fn value(&self) -> Option<&Self::Value>;
    fn value_mut(&mut self) -> &mut Option<Self::Value>;
    fn each_child<'a>(&'a self, f: impl FnMut(&'a Self));
    fn take_children(&mut self, into: &mut Vec<Self>);
}

pub(super) fn descend<'n, N: Branch>(root: &'n N, path: &str) -> Option<&'n N> {
    let mut node = root;
    for level in path.split('/') {
        node = node.child(level)?;
    }
    Some(node)
}

pub(super) fn descend_mut<'n, 'p, N: Branch>(
    root: &'n mut N,
    levels: impl Iterator<Item = &'p str>,
) -> Option<&'n mut N> {
    let mut node = root;
    for level in levels {
        node = node.child_mut(level)?;
    }
    Some(node)
}

/// Takes the value at `path` out of the tree if `remove` says so, and with it every node left
/// with no value and no child, so that a tree holds memory only for the paths in use.
pub(super) fn remove_path<N: Branch>(
    root: &mut N,
    path: &str,
    remove: impl FnOnce(&N::Value) -> bool,
) -> Option<N::Value> {
    let (keep, end) = find_cut(root, path)?;
    if !end.value().is_some_and(remove) {
        return None;
    }
    let prune = end.degree() == 0;
    let value = descend_mut(root, path.split('/'))?.value_mut().take();
    if prune {
        let mut levels = path.split('/');
        let parent = descend_mut(root, levels.by_ref().take(keep))?;
        if let Some(level) = levels.next() {
            drop(parent.detach(level));
        }
    }
    value
}

/// The node at the end of `path`, and the depth of the deepest node above it that stays when
/// that end goes: the root, or a node holding a value or another child. Every node below that
/// one has only the path's next node as child, so cutting there removes exactly what only
/// `path` needed.
fn find_cut<'n, N: Branch>(root: &'n N, path: &str) -> Option<(usize, &'n N)> {
    let mut node = root;
    let mut keep = 0;
    for (depth, level) in path.split('/').enumerate() {
        if depth > 0 && (node.value().is_some() || node.degree() > 1) {
            keep = depth;
        }
        node = node.child(level)?;
    }
    Some((keep, node))
}

/// Counts the nodes from `root` down, root included.
pub(super) fn count_nodes<N: Branch>(root: &N) -> usize {
    let mut count = 0;
    let mut pending = vec![root];
    while let Some(node) = pending.pop() {
        count += 1;
        node.each_child(|child| pending.push(child));
    }
    count
}

/// Drops `node`'s subtree one node at a time: the compiler's drop glue would recurse once per
/// level, and a filter of 30,000 levels (a 64 KiB SUBSCRIBE holds one) would overflow a
/// task's stack.
pub(super) fn drop_iteratively<N: Branch>(node: &mut N) {
    if node.degree() == 0 {
        return;
    }
    let mut pending = Vec::new();
    node.take_children(&mut pending);
    while let Some(mut next) = pending.pop() {
        next.take_children(&mut pending);
        // `next` now has no children, so its own drop ends here.
    }
}

#[cfg(test)]
pub(super) mod tests;
