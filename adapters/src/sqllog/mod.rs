//! `sqllog`: log entries written in batches to SQLite or PostgreSQL. (Being built.)

use mixr_rules::config::{ConfigError, HandlerDoc};
use mixr_rules::templates::Template;

use crate::registry::{AdapterInfo, BuildContext, Handler};

pub fn info() -> AdapterInfo {
    AdapterInfo { name: "sqllog", templates: &[Template::LogEntry], validate, validate_instances: None, build }
}

fn validate(doc: &HandlerDoc) -> Result<(), ConfigError> {
    Err(ConfigError::new(&doc.loc, "spec.compiledAdapter", "sqllog is not available yet"))
}

fn build(doc: &HandlerDoc, _: &BuildContext) -> Result<Handler, ConfigError> {
    validate(doc).map(|_| Handler::default())
}
