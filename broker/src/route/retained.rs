//! Retained messages: the last retained message of each topic name, stored level by level so
//! that a new subscription's filter walks only the topics it can match, and a topic's nodes
//! are freed as soon as its message is cleared.

use super::trie::{
    count_nodes, descend, drop_iteratively, remove_path, split_level, Branch, Levels, Pending,
    INLINE,
};

/// The retained message (of type `R`) of each topic name; topic names hold no wildcards.
pub struct Retained<R> {
    root: Node<R>,
    len: usize,
}

struct Node<R> {
    /// The message retained for the topic ending here, with that topic, which the walks hand
    /// to their callers without rebuilding it.
    message: Option<(Box<str>, R)>,
    children: Levels<Node<R>>,
}

impl<R> Default for Retained<R> {
    fn default() -> Self {
        Retained {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<R> Retained<R> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Retains `value` for `topic`; returns the message it replaces.
    pub fn set(&mut self, topic: &str, value: R) -> Option<R> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.get_or_insert_with(level, Node::default);
        }
        match &mut node.message {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            None => {
                node.message = Some((topic.into(), value));
                self.len += 1;
                None
            }
        }
    }

    /// Removes the message retained for `topic` (a retained PUBLISH with an empty payload),
    /// with the nodes only that topic needed.
    pub fn clear(&mut self, topic: &str) -> Option<R> {
        let (_, removed) = remove_path(&mut self.root, topic, |_| true)?;
        self.len -= 1;
        Some(removed)
    }

    pub fn get(&self, topic: &str) -> Option<&R> {
        descend(&self.root, topic)?.message.as_ref().map(|(_, r)| r)
    }

    /// Calls `f` with the topic and message of every retained message whose topic the plain
    /// `filter` matches, once each, in no particular order: `+` takes every level there, `#`
    /// the whole subtree including its parent (`a/#` takes `a`), and a filter starting with a
    /// wildcard takes no topic starting with `$` (MQTT-4.7.2-1).
    pub fn for_each_matching<'a>(&'a self, filter: &str, mut f: impl FnMut(&'a str, &'a R)) {
        let mut pending: Pending<Step<'a, '_, R>, INLINE> = Pending::new();
        let (first, rest) = split_level(filter);
        match first {
            "#" => self.root.children.for_each(|level, child| {
                if !level.starts_with('$') {
                    pending.push(Step::All(child));
                }
            }),
            "+" => self.root.children.for_each(|level, child| {
                if !level.starts_with('$') {
                    pending.push(Step::Match(child, rest));
                }
            }),
            level => {
                if let Some(child) = self.root.children.get(level) {
                    pending.push(Step::Match(child, rest));
                }
            }
        }
        while let Some(step) = pending.pop() {
            match step {
                Step::Match(node, None) => node.visit(&mut f),
                Step::Match(node, Some(rest)) => {
                    let (level, rest) = split_level(rest);
                    match level {
                        "#" => pending.push(Step::All(node)),
                        "+" => node
                            .children
                            .for_each(|_, child| pending.push(Step::Match(child, rest))),
                        level => {
                            if let Some(child) = node.children.get(level) {
                                pending.push(Step::Match(child, rest));
                            }
                        }
                    }
                }
                Step::All(node) => {
                    node.visit(&mut f);
                    node.children
                        .for_each(|_, child| pending.push(Step::All(child)));
                }
            }
        }
    }

    /// The number of topics with a retained message.
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

/// What a walk still has to do at a node: match the rest of the filter below it (nothing left:
/// the node's own topic matches), or take the node and everything under it (`#`).
enum Step<'a, 'f, R> {
    Match(&'a Node<R>, Option<&'f str>),
    All(&'a Node<R>),
}

// Derived, these would require `R: Copy`; only references are copied.
impl<R> Clone for Step<'_, '_, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Step<'_, '_, R> {}

impl<R> Node<R> {
    fn visit<'a>(&'a self, f: &mut impl FnMut(&'a str, &'a R)) {
        if let Some((topic, message)) = &self.message {
            f(topic, message);
        }
    }
}

impl<R> Default for Node<R> {
    fn default() -> Self {
        Node {
            message: None,
            children: Levels::default(),
        }
    }
}

impl<R> Branch for Node<R> {
    type Value = (Box<str>, R);

    fn child(&self, level: &str) -> Option<&Self> {
        self.children.get(level)
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Self> {
        self.children.get_mut(level)
    }

    fn detach(&mut self, level: &str) -> Option<Self> {
        self.children.remove(level)
    }

    fn degree(&self) -> usize {
        self.children.len()
    }

    fn value(&self) -> Option<&Self::Value> {
        self.message.as_ref()
    }

    fn value_mut(&mut self) -> &mut Option<Self::Value> {
        &mut self.message
    }

    fn each_child<'a>(&'a self, mut f: impl FnMut(&'a Self)) {
        self.children.for_each(|_, child| f(child));
    }

    fn take_children(&mut self, into: &mut Vec<Self>) {
        self.children.drain_into(into);
    }
}

impl<R> Drop for Node<R> {
    fn drop(&mut self) {
        drop_iteratively(self);
    }
}

#[cfg(test)]
mod tests;
