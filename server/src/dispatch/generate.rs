//! Attribute generation, Mixer's preprocessing: before Check, quota and Report dispatch,
//! the rules whose actions name attribute generators (`kubernetesenv`) run; each
//! instance's bindings turn the adapter's outputs into attributes that join the bag.
//!
//! - A request's own attributes win: a binding only fills an attribute the request lacks
//!   (and an earlier binding did not fill), as Mixer merged its preprocessing output.
//! - Namespace scoping uses the request's attributes as received.
//! - The Check answer's referenced attributes name what generation read (the pod uids,
//!   say) rather than the generated attributes: a proxy's check cache can only key on
//!   what it sends.

use mixr_rules::bag::{Bag, Referenced};
use mixr_rules::templates::Variety;
use mixr_rules::value::OwnedValue;

use crate::grpc::trace::adapter_span;
use crate::metrics::{AdapterVariety, Metrics};
use crate::runtime::Runtime;

/// Attributes generated for one request, and what producing them read.
#[derive(Debug, Default)]
pub struct Generated<'s> {
    attributes: Vec<(&'s str, OwnedValue)>,
    referenced: Referenced<'static>,
}

impl<'s> Generated<'s> {
    /// Adds the generated attributes to `bag`.
    pub fn apply<'b>(&self, bag: &mut Bag<'b>)
    where
        's: 'b,
    {
        for (name, value) in &self.attributes {
            bag.set(name, value.clone());
        }
    }

    /// Replaces lookups of generated attributes in `refs` by what generation read.
    pub fn fix_referenced<'r>(&self, refs: &mut Referenced<'r>) {
        if self.attributes.is_empty() && self.referenced.is_empty() {
            return;
        }
        refs.retain_attributes(|name| !self.attributes.iter().any(|(n, _)| *n == name));
        refs.extend(self.referenced.clone());
    }

    pub fn attributes(&self) -> impl Iterator<Item = (&'s str, &OwnedValue)> {
        self.attributes.iter().map(|(n, v)| (*n, v))
    }
}

/// Runs the attribute generators whose rules match `bag`.
pub fn generate<'s>(rt: &'s Runtime, bag: &Bag<'_>, metrics: &Metrics) -> Generated<'s> {
    let snapshot = &rt.snapshot;
    if !snapshot.has_generators() {
        return Generated::default();
    }
    let mut refs = Referenced::new();
    let mut attributes: Vec<(&'s str, OwnedValue)> = Vec::new();
    let matched = snapshot.matching_generator_rules(bag, &mut refs);
    for (rule, err) in &matched.errors {
        let name = &snapshot.rules[*rule].name;
        metrics.expression_errors.with_label_values(&[name.as_str()]).inc();
        tracing::debug!(rule = %name, error = %err, "rule match did not evaluate");
    }
    for &r in &matched.rules {
        for action in &snapshot.rules[r].actions {
            let Some(generator) = rt.handlers.get(action.handler).and_then(|h| h.generator.as_ref()) else {
                continue;
            };
            let handler_name = rt.handler_name(action.handler);
            let handler_metrics = rt.handler_metrics(action.handler);
            for &i in &action.instances {
                let instance: &'s _ = &snapshot.instances[i];
                if instance.template.variety() != Variety::AttributeGenerator {
                    continue;
                }
                let values = match instance.eval(bag, &mut refs) {
                    Ok(values) => values,
                    Err(e) => {
                        metrics.instance_errors.with_label_values(&[instance.full_name.as_str()]).inc();
                        tracing::debug!(instance = %instance.full_name, error = %e, "generator instance not built");
                        continue;
                    }
                };
                let started = std::time::Instant::now();
                let outputs = adapter_span(&handler_name, "generate").in_scope(|| generator.generate(&values));
                if let Some(m) = handler_metrics {
                    m.call(AdapterVariety::Generate, true, started);
                }
                let Some(outputs) = outputs else { continue };
                for (attr, program) in &instance.bindings {
                    let attr: &'s str = attr;
                    if bag.get(attr).is_some() || attributes.iter().any(|(n, _)| *n == attr) {
                        continue;
                    }
                    match program.eval_generated(bag, &outputs, &mut refs) {
                        Ok(v) => attributes.push((attr, v.into_owned())),
                        Err(e) => tracing::debug!(attribute = attr, error = %e, "binding did not evaluate"),
                    }
                }
            }
        }
    }
    Generated { attributes, referenced: refs.into_owned() }
}
