//! `memquota`: quotas counted in this process. Exact: the amount granted inside any
//! window never exceeds the limit, under any concurrency (the check and the charge happen
//! under one lock per counter shard). State is per replica: N replicas allow N times the
//! limit; use `redisquota` for a shared limit.
//!
//! Memory: a counter holds one entry per tick with grants (at most 61), and is dropped once
//! nothing in it counts any more; see `docs/quotas.md` for the measured budget.

mod store;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use mixr_rules::config::{ConfigError, HandlerDoc};
use mixr_rules::snapshot::InstanceValues;
use mixr_rules::templates::Template;

pub use store::MemQuota;

use crate::params;
use crate::quota::{self, Dialect, QuotaConfig};
use crate::registry::{AdapterInfo, BuildContext, Handler};
use crate::variety::{BoxFuture, QuotaArgs, QuotaHandler, QuotaResult};

pub fn info() -> AdapterInfo {
    AdapterInfo {
        name: "memquota",
        templates: &[Template::Quota],
        validate: |doc| parse(doc).map(drop),
        validate_instances: Some(|doc, instances| quota::check_instances(doc, &parse(doc)?.quotas, instances)),
        build,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub quotas: Vec<QuotaConfig>,
    pub min_dedup: Duration,
}

const DIALECT: Dialect = Dialect { bucket_and_algorithm: false, override_valid_duration: true };

pub fn parse(doc: &HandlerDoc) -> Result<Params, ConfigError> {
    let o = doc.params().obj()?;
    let quotas = quota::parse_quotas(doc, &o, DIALECT)?;
    let min_dedup = o.get("minDeduplicationDuration", params::duration)?.unwrap_or(Duration::from_secs(1));
    o.finish()?;
    Ok(Params { quotas, min_dedup })
}

fn build(doc: &HandlerDoc, ctx: &BuildContext) -> Result<Handler, ConfigError> {
    let q = Arc::new(MemQuota::new(parse(doc)?, ctx.clock.clone()));
    q.start_sweeping();
    Ok(Handler { check: None, quota: Some(q), report: None, generator: None })
}

impl QuotaHandler for MemQuota {
    fn alloc<'a>(
        &'a self,
        instance: &'a InstanceValues,
        instance_name: &'a str,
        args: QuotaArgs,
    ) -> BoxFuture<'a, QuotaResult> {
        Box::pin(std::future::ready(self.allocate(instance, instance_name, &args)))
    }
}
