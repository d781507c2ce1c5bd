//! mixr's rules engine: pure code, no I/O beyond reading (and watching) config files.
//!
//! - [`value`]: attribute types and values (Istio's `ValueType`).
//! - [`bag`]: a request's attributes decoded from (and encoded to) the wire, and the record
//!   of referenced attributes.
//! - [`manifest`]: the attribute vocabulary expressions are checked against.
//! - [`expr`]: Mixer's expression dialect and CEL, compiled once and evaluated on a bag.
//! - [`config`]: Istio-format YAML (handlers, instances, rules, manifests, legacy kinds,
//!   QuotaSpec) loaded with errors that name file, document and key.
//! - [`templates`]: the templates instances are built from, and their field types.
//! - [`snapshot`]: an immutable, compiled config ready to dispatch, with rules indexed by
//!   the equality tests in their match.

pub mod bag;
pub mod config;
pub mod expr;
pub mod manifest;
pub mod snapshot;
pub mod templates;
pub mod value;

pub use bag::Bag;
pub use manifest::Manifest;
pub use value::{OwnedValue, Value, ValueType};
