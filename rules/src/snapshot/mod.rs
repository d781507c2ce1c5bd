//! A compiled config: every expression compiled and type-checked, every reference
//! resolved, rules indexed. Immutable; the server swaps whole snapshots atomically.

mod build;
mod index;
mod instance;

pub use build::{AdapterCatalog, build};
pub use index::RuleIndex;
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
    pub matcher: Program,
    pub actions: Vec<CompiledAction>,
    pub request_header_operations: Vec<CompiledHeaderOp>,
    pub response_header_operations: Vec<CompiledHeaderOp>,
}

#[derive(Debug)]
pub struct Snapshot {
    pub manifest: Manifest,
    pub handlers: Vec<HandlerDoc>,
    pub instances: Vec<CompiledInstance>,
    pub rules: Vec<CompiledRule>,
    pub quota_specs: Vec<QuotaSpec>,
    pub quota_spec_bindings: Vec<QuotaSpecBinding>,
    pub(crate) index: RuleIndex,
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
            handlers: Vec::new(),
            instances: Vec::new(),
            rules: Vec::new(),
            quota_specs: Vec::new(),
            quota_spec_bindings: Vec::new(),
            index: RuleIndex::default(),
        }
    }

    /// Rules whose match is true for `bag`, in config order. Only the rules the index
    /// cannot exclude are evaluated.
    pub fn matching_rules<'s>(&'s self, bag: &'s Bag<'s>, refs: &mut Referenced<'s>) -> Matched {
        let mut out = Matched::default();
        for i in self.index.candidates(bag, refs) {
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
