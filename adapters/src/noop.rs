//! `noop`: serves every template and does nothing (allows, grants in full, discards).

use std::time::Duration;

use mixr_rules::config::{ConfigError, HandlerDoc};
use mixr_rules::snapshot::InstanceValues;
use mixr_rules::templates::Template;
use std::sync::Arc;

use crate::registry::{AdapterInfo, BuildContext, Handler};
use crate::variety::{
    AttributeGenerator, BoxFuture, CheckHandler, CheckResult, QuotaArgs, QuotaHandler, QuotaResult, ReportHandler,
    Status,
};

pub fn info() -> AdapterInfo {
    AdapterInfo { name: "noop", templates: &Template::ALL, validate, validate_instances: None, build }
}

fn validate(doc: &HandlerDoc) -> Result<(), ConfigError> {
    doc.params().obj()?.finish()
}

fn build(doc: &HandlerDoc, _: &BuildContext) -> Result<Handler, ConfigError> {
    validate(doc)?;
    let n = Arc::new(Noop);
    Ok(Handler { check: Some(n.clone()), quota: Some(n.clone()), report: Some(n.clone()), generator: Some(n) })
}

struct Noop;

impl CheckHandler for Noop {
    fn check(&self, _: &InstanceValues) -> CheckResult {
        CheckResult {
            status: Status::ok(),
            valid_duration: Duration::from_secs(60),
            valid_use_count: 10000,
            output: Default::default(),
        }
    }
}

impl QuotaHandler for Noop {
    fn alloc<'a>(&'a self, _: &'a InstanceValues, _: &'a str, args: QuotaArgs) -> BoxFuture<'a, QuotaResult> {
        Box::pin(async move {
            QuotaResult {
                status: Status::ok(),
                granted: args.amount,
                valid_duration: Duration::from_secs(60),
                limit: None,
            }
        })
    }
}

impl ReportHandler for Noop {
    fn report(&self, _: &str, _: &[InstanceValues]) {}
}

impl AttributeGenerator for Noop {
    fn generate(&self, _: &InstanceValues) -> Option<mixr_rules::expr::GeneratedValues> {
        None
    }
}
