//! A compiled config: every expression compiled and type-checked, every reference
//! resolved, rules indexed. Immutable; the server swaps whole snapshots atomically.

mod build;
mod index;
mod instance;

pub use build::{AdapterCatalog, build};
pub use index::{RuleIndex, ScopedIndex, identity_namespace};
pub use instance::{CompiledInstance, InstanceValues};

use crate::bag::{Bag, Referenced};
use crate::config::model::{HandlerDoc, HeaderOpKind};
use crate::config::quota_spec::{QuotaSpec, QuotaSpecBinding};
use crate::expr::{EvalError, Program};
use crate::manifest::Manifest;

#[derive(Debug, Clone)]
pub struct CompiledAction {
    pub handler: usize,
    pub instances: Vec<usize>,
    pub name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CompiledHeaderOp {
    pub name: String,
    pub values: Vec<Program>,
    pub operation: HeaderOpKind,
}

#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// `name.rule.namespace`.
    pub name: String,
    pub namespace: String,
    pub matcher: Program,
    pub actions: Vec<CompiledAction>,
    pub request_header_operations: Vec<CompiledHeaderOp>,
    pub response_header_operations: Vec<CompiledHeaderOp>,
}

#[derive(Debug)]
pub struct Snapshot {
    pub manifest: Manifest,
    /// Rules of this namespace apply to every request.
    pub default_namespace: String,
    pub handlers: Vec<HandlerDoc>,
    pub instances: Vec<CompiledInstance>,
    pub rules: Vec<CompiledRule>,
    pub quota_specs: Vec<QuotaSpec>,
    pub quota_spec_bindings: Vec<QuotaSpecBinding>,
    /// Rules with check, quota or report actions.
    pub(crate) index: ScopedIndex,
    /// Rules with attribute-generating actions, which run before the others.
    pub(crate) generator_index: ScopedIndex,
}

/// The result of matching rules against one request.
#[derive(Debug, Default)]
pub struct Matched {
    pub rules: Vec<usize>,
    /// Rules whose match failed to evaluate (absent attribute without default, ...).
    pub errors: Vec<(usize, EvalError)>,
}

impl Snapshot {
    /// An empty config: nothing matches.
    pub fn empty() -> Snapshot {
        Snapshot {
            manifest: Manifest::builtin(),
            default_namespace: crate::config::DEFAULT_NAMESPACE.to_string(),
            handlers: Vec::new(),
            instances: Vec::new(),
            rules: Vec::new(),
            quota_specs: Vec::new(),
            quota_spec_bindings: Vec::new(),
            index: ScopedIndex::default(),
            generator_index: ScopedIndex::default(),
        }
    }

    /// Rules whose match is true for `bag` and that apply in its namespace, in config
    /// order. Only the rules the index cannot exclude are evaluated.
    pub fn matching_rules<'s>(&'s self, bag: &'s Bag<'s>, refs: &mut Referenced<'s>) -> Matched {
        self.matching(&self.index, bag, refs)
    }

    /// Like [`Snapshot::matching_rules`], for the rules that generate attributes.
    pub fn matching_generator_rules<'s>(&'s self, bag: &'s Bag<'s>, refs: &mut Referenced<'s>) -> Matched {
        self.matching(&self.generator_index, bag, refs)
    }

    /// Whether any rule generates attributes (when none does, requests skip that stage).
    pub fn has_generators(&self) -> bool {
        !self.generator_index.is_empty()
    }

    fn matching<'s>(&'s self, index: &'s ScopedIndex, bag: &'s Bag<'s>, refs: &mut Referenced<'s>) -> Matched {
        let mut out = Matched::default();
        for i in index.candidates(bag, refs) {
            let rule = &self.rules[i];
            match rule.matcher.eval_bool(bag, refs) {
                Ok(true) => out.rules.push(i),
                Ok(false) => {}
                Err(e) => out.errors.push((i, e)),
            }
        }
        out
    }

    /// How many rules the index had to evaluate for `bag` (benchmarks and tests).
    pub fn candidate_count<'s>(&'s self, bag: &'s Bag<'s>) -> usize {
        let mut refs = Referenced::new();
        self.index.candidates(bag, &mut refs).len()
    }
}

#[cfg(test)]
mod tests;
