//! Compiled instances: one program per template field.

use std::sync::Arc;

use crate::bag::{Bag, Referenced};
use crate::expr::{EvalError, Program};
use crate::templates::Template;
use crate::value::OwnedValue;

#[derive(Debug, Clone)]
pub struct CompiledInstance {
    /// The short name (`requestcount`), what Check quota names match.
    pub name: String,
    /// `name.kind.namespace`.
    pub full_name: String,
    pub template: Template,
    pub fields: Vec<(&'static str, Program)>,
    pub maps: Vec<(&'static str, Vec<(String, Program)>)>,
    /// Attribute-generating instances: each attribute and how it is computed from the
    /// adapter's outputs.
    pub bindings: Vec<(Arc<str>, Program)>,
}

/// An instance's evaluated fields, owned so adapters may keep them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceValues {
    pub fields: Vec<(&'static str, OwnedValue)>,
    pub maps: Vec<(&'static str, Vec<(String, OwnedValue)>)>,
}

impl InstanceValues {
    pub fn field(&self, name: &str) -> Option<&OwnedValue> {
        self.fields.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn map(&self, name: &str) -> &[(String, OwnedValue)] {
        self.maps.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_slice()).unwrap_or(&[])
    }
}

impl CompiledInstance {
    /// Evaluates every field; any failing expression fails the instance, as in Mixer.
    pub fn eval<'s>(&'s self, bag: &'s Bag<'s>, refs: &mut Referenced<'s>) -> Result<InstanceValues, EvalError> {
        let mut out =
            InstanceValues { fields: Vec::with_capacity(self.fields.len()), maps: Vec::with_capacity(self.maps.len()) };
        for (name, program) in &self.fields {
            out.fields.push((name, program.eval(bag, refs)?.into_owned()));
        }
        for (name, entries) in &self.maps {
            let mut values = Vec::with_capacity(entries.len());
            for (key, program) in entries {
                values.push((key.clone(), program.eval(bag, refs)?.into_owned()));
            }
            out.maps.push((name, values));
        }
        Ok(out)
    }
}
