//! Rule index: a rule whose match requires `ATTR == "literal"` is only evaluated for
//! requests where ATTR has that value, so 50 rules do not cost 50 evaluations.

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
    pub fn build<'p>(matchers: impl Iterator<Item = &'p Program>) -> RuleIndex {
        let mut index = RuleIndex::default();
        for (i, program) in matchers.enumerate() {
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
                    v
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

    pub fn indexed_keys(&self) -> usize {
        self.keyed.len()
    }

    pub fn unindexed_rules(&self) -> usize {
        self.always.len()
    }
}
