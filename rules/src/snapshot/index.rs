//! Rule index: a rule whose match requires `ATTR == "literal"` is only evaluated for
//! requests where ATTR has that value, so 50 rules do not cost 50 evaluations.
//!
//! [`ScopedIndex`] adds Mixer's namespace scoping: rules of the default config namespace
//! apply to every request, a rule of namespace N only to requests whose identity namespace
//! is N (`destination.namespace`, or `source.namespace` when the reporter is outbound).

use std::borrow::Cow;
use std::collections::HashMap;

use crate::bag::{Bag, Referenced};
use crate::expr::{IndexKey, Program};
use crate::value::Value;

#[derive(Debug, Default)]
pub struct RuleIndex {
    /// Rules with no indexable equality: always evaluated.
    always: Vec<usize>,
    keyed: Vec<(IndexKey, HashMap<String, Vec<usize>>)>,
}

impl RuleIndex {
    /// Indexes rules given as (position in the snapshot, matcher).
    pub fn build<'p>(matchers: impl Iterator<Item = (usize, &'p Program)>) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (i, program) in matchers {
            // One equality per rule suffices to exclude it; the first is the one a reader
            // of the rule sees first too.
            match program.required_equalities().into_iter().next() {
                Some((key, literal)) => {
                    let slot = match index.keyed.iter().position(|(k, _)| *k == key) {
                        Some(p) => p,
                        None => {
                            index.keyed.push((key, HashMap::new()));
                            index.keyed.len() - 1
                        }
                    };
                    index.keyed[slot].1.entry(literal).or_default().push(i);
                }
                None => index.always.push(i),
            }
        }
        index
    }

    /// Rule positions to evaluate, ascending. Records the lookups it made: the answer
    /// depends on them exactly as it would on a full evaluation.
    pub fn candidates<'s>(&'s self, bag: &'s Bag<'s>, refs: &mut Referenced<'s>) -> Vec<usize> {
        let mut out = self.always.clone();
        let mut extra = false;
        for (key, by_value) in &self.keyed {
            let value = match (bag.get(&key.attr), &key.map_key) {
                (Some(Value::StringMap(m)), Some(k)) => {
                    let v = m.get(k);
                    refs.map_key(&key.attr, Cow::Borrowed(k), v.is_some());
                    // A missing key reads as "", as in evaluation.
                    Some(v.unwrap_or(""))
                }
                (Some(v), None) => {
                    refs.attribute(&key.attr, true);
                    v.as_str()
                }
                (Some(_), Some(_)) => {
                    refs.attribute(&key.attr, true);
                    None
                }
                (None, _) => {
                    refs.attribute(&key.attr, false);
                    None
                }
            };
            if let Some(rules) = value.and_then(|v| by_value.get(v)) {
                out.extend_from_slice(rules);
                extra = true;
            }
        }
        if extra {
            out.sort_unstable();
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.always.is_empty() && self.keyed.is_empty()
    }

    pub fn indexed_keys(&self) -> usize {
        self.keyed.len()
    }

    pub fn unindexed_rules(&self) -> usize {
        self.always.len()
    }
}

/// The reporter attribute that decides which attribute names the identity namespace.
const REPORTER_KIND: &str = "context.reporter.kind";

/// Rule indexes by namespace.
#[derive(Debug, Default)]
pub struct ScopedIndex {
    everywhere: RuleIndex,
    by_namespace: HashMap<String, RuleIndex>,
}

impl ScopedIndex {
    /// Indexes rules given as (position, namespace, matcher).
    pub fn build<'p>(
        rules: impl Iterator<Item = (usize, &'p str, &'p Program)>,
        default_namespace: &str,
    ) -> ScopedIndex {
        let mut everywhere = Vec::new();
        let mut scoped: HashMap<String, Vec<(usize, &Program)>> = HashMap::new();
        for (i, namespace, matcher) in rules {
            if namespace == default_namespace {
                everywhere.push((i, matcher));
            } else {
                scoped.entry(namespace.to_string()).or_default().push((i, matcher));
            }
        }
        ScopedIndex {
            everywhere: RuleIndex::build(everywhere.into_iter()),
            by_namespace: scoped.into_iter().map(|(ns, rules)| (ns, RuleIndex::build(rules.into_iter()))).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.everywhere.is_empty() && self.by_namespace.is_empty()
    }

    /// Rule positions to evaluate for `bag`, ascending. The identity namespace is looked up
    /// (and recorded as referenced) only when some rule is scoped to a namespace: only then
    /// does the answer depend on it.
    pub fn candidates<'s>(&'s self, bag: &'s Bag<'s>, refs: &mut Referenced<'s>) -> Vec<usize> {
        let mut out = self.everywhere.candidates(bag, refs);
        if self.by_namespace.is_empty() {
            return out;
        }
        let Some(scoped) = identity_namespace(bag, refs).and_then(|ns| self.by_namespace.get(ns)) else {
            return out;
        };
        let more = scoped.candidates(bag, refs);
        if !more.is_empty() {
            out.extend(more);
            out.sort_unstable();
        }
        out
    }

    /// Keys indexed, over every namespace's index.
    pub fn indexed_keys(&self) -> usize {
        self.indexes().map(RuleIndex::indexed_keys).sum()
    }

    /// Rules evaluated for every request of their namespace.
    pub fn unindexed_rules(&self) -> usize {
        self.indexes().map(RuleIndex::unindexed_rules).sum()
    }

    fn indexes(&self) -> impl Iterator<Item = &RuleIndex> {
        std::iter::once(&self.everywhere).chain(self.by_namespace.values())
    }
}

/// The namespace a request is scoped to, as Mixer 1.4's dispatcher chose it.
pub fn identity_namespace<'s>(bag: &'s Bag<'s>, refs: &mut Referenced<'s>) -> Option<&'s str> {
    let reporter = bag.get(REPORTER_KIND);
    refs.attribute(REPORTER_KIND, reporter.is_some());
    let attr = match reporter.and_then(Value::as_str) {
        Some("outbound") => "source.namespace",
        _ => "destination.namespace",
    };
    let namespace = bag.get(attr);
    refs.attribute(attr, namespace.is_some());
    namespace.and_then(Value::as_str)
}
