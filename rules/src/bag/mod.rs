//! The attribute bag: one request's attributes, decoded from the wire without copying
//! strings, plus the record of which attributes evaluation looked at.
//!
//! - [`decode`]: `CompressedAttributes` (and the uncompressed `Attributes`) into a [`Bag`].
//! - [`check`]: a Check's `CompressedAttributes` from their wire bytes into a [`Bag`].
//! - [`encode`]: the reverse, for clients (the CLI, the proxy).
//! - [`referenced`]: what evaluation read, turned into the reply's `ReferencedAttributes`.
//! - [`report`]: a Report's entries decoded a chunk at a time.

pub mod check;
pub mod decode;
pub mod encode;
pub mod referenced;
pub mod report;

use crate::value::Value;

pub use check::decode_check;
pub use decode::{BagError, ReportEntries, decode_compressed, decode_report, decode_uncompressed, report_entries};
pub use encode::Encoder;
pub use referenced::{Condition, Referenced};

/// Attributes by name. Kept sorted so lookups are binary searches: cheaper than hashing
/// for the 10-50 attributes a request carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bag<'a> {
    attrs: Vec<(&'a str, Value<'a>)>,
}

impl<'a> Bag<'a> {
    pub fn new() -> Bag<'a> {
        Bag { attrs: Vec::new() }
    }

    /// Builds a bag from pairs; a later duplicate name replaces an earlier one.
    pub fn from_pairs(mut attrs: Vec<(&'a str, Value<'a>)>) -> Bag<'a> {
        attrs.reverse();
        attrs.sort_by(|a, b| a.0.cmp(b.0));
        attrs.dedup_by(|a, b| a.0 == b.0);
        Bag { attrs }
    }

    pub fn get(&self, name: &str) -> Option<&Value<'a>> {
        self.attrs.binary_search_by(|(n, _)| (*n).cmp(name)).ok().map(|i| &self.attrs[i].1)
    }

    /// Sets one attribute, replacing any earlier value (Report's delta encoding).
    pub fn set(&mut self, name: &'a str, value: Value<'a>) {
        match self.attrs.binary_search_by(|(n, _)| (*n).cmp(name)) {
            Ok(i) => self.attrs[i].1 = value,
            Err(i) => self.attrs.insert(i, (name, value)),
        }
    }

    /// Applies every attribute of `other` on top of this bag.
    pub fn merge(&mut self, other: Bag<'a>) {
        for (name, value) in other.attrs {
            self.set(name, value);
        }
    }

    pub fn len(&self) -> usize {
        self.attrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attrs.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &Value<'a>)> {
        self.attrs.iter().map(|(n, v)| (*n, v))
    }
}
