//! Topic filter index: a trie over topic levels, so matching a topic costs its depth, not the number
//! of subscriptions. `+` and `#` are children like any level; topics starting with `$` are not
//! matched by a wildcard in the first level (MQTT 3.1.1 4.7.2, MQTT 5 4.7.2).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// Subscriptions by filter; `V` identifies one subscription (client and filter).
#[derive(Debug)]
pub struct Trie<V> {
    root: Node<V>,
}

#[derive(Debug)]
struct Node<V> {
    children: HashMap<String, Node<V>>,
    /// Filters ending at this level.
    here: HashSet<V>,
    /// Filters ending with `#` after this level (they also match this level itself).
    multi: HashSet<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self { children: HashMap::new(), here: HashSet::new(), multi: HashSet::new() }
    }
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Self { root: Node::default() }
    }
}

impl<V: Clone + Eq + Hash> Trie<V> {
    /// Adds `v` under `filter` (a valid filter).
    pub fn insert(&mut self, filter: &str, v: V) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            if level == "#" {
                node.multi.insert(v);
                return;
            }
            node = node.children.entry(level.to_string()).or_default();
        }
        node.here.insert(v);
    }

    /// Removes `v` from under `filter`, pruning empty levels.
    pub fn remove(&mut self, filter: &str, v: &V) {
        let levels: Vec<&str> = filter.split('/').collect();
        Self::remove_at(&mut self.root, &levels, v);
    }

    fn remove_at(node: &mut Node<V>, levels: &[&str], v: &V) {
        match levels.split_first() {
            None => {
                node.here.remove(v);
            }
            Some((&"#", _)) => {
                node.multi.remove(v);
            }
            Some((level, rest)) => {
                if let Some(child) = node.children.get_mut(*level) {
                    Self::remove_at(child, rest, v);
                    if child.here.is_empty() && child.multi.is_empty() && child.children.is_empty() {
                        node.children.remove(*level);
                    }
                }
            }
        }
    }

    /// Every subscription whose filter matches `topic`, appended to `out` (once per subscription).
    pub fn matches(&self, topic: &str, out: &mut Vec<V>) {
        let levels: Vec<&str> = topic.split('/').collect();
        Self::walk(&self.root, &levels, 0, topic.starts_with('$'), out);
    }

    fn walk(node: &Node<V>, levels: &[&str], i: usize, dollar: bool, out: &mut Vec<V>) {
        let wildcard_ok = !(i == 0 && dollar);
        if wildcard_ok {
            out.extend(node.multi.iter().cloned());
        }
        let Some(level) = levels.get(i) else {
            out.extend(node.here.iter().cloned());
            return;
        };
        if let Some(child) = node.children.get(*level) {
            Self::walk(child, levels, i + 1, dollar, out);
        }
        if wildcard_ok && *level != "+" {
            if let Some(child) = node.children.get("+") {
                Self::walk(child, levels, i + 1, dollar, out);
            }
        }
    }

    /// True when nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.root.children.is_empty() && self.root.here.is_empty() && self.root.multi.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::codec::matches;
    use proptest::prelude::*;

    fn matched(filters: &[&str], topic: &str) -> Vec<String> {
        let mut t = Trie::default();
        for f in filters {
            t.insert(f, f.to_string());
        }
        let mut out = Vec::new();
        t.matches(topic, &mut out);
        out.sort();
        out
    }

    #[test]
    fn wildcards_per_the_spec() {
        let f = ["a/b", "a/+", "a/#", "#", "+/+", "+", "a/b/#", "a/+/c", "/a", "+/a"];
        assert_eq!(matched(&f, "a/b"), ["#", "+/+", "a/#", "a/+", "a/b", "a/b/#"]);
        assert_eq!(matched(&f, "a"), ["#", "+", "a/#"]);
        assert_eq!(matched(&f, "a/x/c"), ["#", "a/#", "a/+/c"]);
        assert_eq!(matched(&f, "/a"), ["#", "+/+", "+/a", "/a"]);
    }

    #[test]
    fn dollar_topics_escape_first_level_wildcards() {
        let f = ["#", "+/info", "$SYS/#", "$SYS/+"];
        assert_eq!(matched(&f, "$SYS/info"), ["$SYS/#", "$SYS/+"]);
    }

    #[test]
    fn remove_prunes_and_keeps_others() {
        let mut t = Trie::default();
        t.insert("a/b/c", 1);
        t.insert("a/#", 2);
        t.remove("a/b/c", &1);
        let mut out = Vec::new();
        t.matches("a/b/c", &mut out);
        assert_eq!(out, [2]);
        t.remove("a/#", &2);
        assert!(t.is_empty());
    }

    proptest! {
        /// The trie agrees with the spec's one-filter matcher on random filters and topics.
        #[test]
        fn agrees_with_the_reference_matcher(
            filters in proptest::collection::vec("(\\$?[ab+]|#)(/([ab+]|#)){0,3}", 1..8),
            topic in "\\$?[ab](/[ab]){0,3}",
        ) {
            let valid: Vec<&str> = filters.iter().map(String::as_str)
                .filter(|f| crate::mqtt::codec::valid_filter(f)).collect();
            let mut expected: Vec<String> = valid.iter().filter(|f| matches(&topic, f)).map(|f| f.to_string()).collect();
            expected.sort();
            expected.dedup();
            let mut got = matched(&valid, &topic);
            got.dedup();
            prop_assert_eq!(got, expected);
        }
    }
}
