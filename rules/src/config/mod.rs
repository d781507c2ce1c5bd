//! Operator configuration in Istio's `config.istio.io/v1alpha2` format.
//!
//! - [`yaml`]: reading YAML with camelCase/snake_case keys, unknown-key detection and
//!   errors that name file, document and key ([`ConfigError`]).
//! - [`model`]: the documents we understand (handler, instance, rule, attributemanifest,
//!   legacy per-adapter and per-template kinds), parsed into a [`ConfigSet`].
//! - [`load`]: reading files and directories of multi-document YAML, Kubernetes `List`s
//!   among them.
//! - [`lines`]: finding the line of an error's key, once an error is reported.
//! - [`quota_spec`]: QuotaSpec and QuotaSpecBinding, read by the proxy.
//! - [`watch`]: calling back when config files change, for hot reload in both binaries.

pub mod lines;
pub mod load;
pub mod model;
pub mod quota_spec;
pub mod watch;
pub mod yaml;

pub use lines::{add_lines, add_lines_from};
pub use load::{Document, fingerprint, load_paths, load_str, read_documents, read_documents_str, yaml_files};
pub use model::{ActionDoc, ConfigSet, HandlerDoc, HeaderOpDoc, InstanceDoc, ObjectRef, RuleDoc};
pub use yaml::{ConfigError, Loc, Obj, Param};

/// Namespace for documents that name none (Istio's default).
pub const DEFAULT_NAMESPACE: &str = "istio-system";
