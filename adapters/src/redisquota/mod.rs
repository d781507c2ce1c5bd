//! `redisquota`: quotas shared by every mixr replica through Redis (or Redis Cluster).
//!
//! Each allocation is one Lua script (EVALSHA, loaded again on NOSCRIPT) using Redis's own
//! clock, touching one counter key (and a dedup record when the call has an id). Every key of a counter carries the same hash tag, so a counter lives in one
//! Cluster slot. When Redis is unreachable or slower than `timeout`, the handler answers by
//! its explicit policy (`failOpen`), counts it, and keeps reconnecting by itself.

mod conn;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mixr_rules::config::{ConfigError, HandlerDoc};
use mixr_rules::snapshot::InstanceValues;
use mixr_rules::templates::Template;

use crate::params;
use crate::quota::{self, Algorithm, Dialect, QuotaConfig};
use crate::registry::{AdapterInfo, BuildContext, Handler};
use crate::variety::{BoxFuture, QuotaArgs, QuotaHandler, QuotaLimit, QuotaResult, Status, code};

pub use conn::{Backend, ServerAddress};

pub fn info() -> AdapterInfo {
    AdapterInfo {
        name: "redisquota",
        templates: &[Template::Quota],
        validate: |doc| parse(doc).map(drop),
        validate_instances: Some(|doc, instances| quota::check_instances(doc, &parse(doc)?.quotas, instances)),
        build,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub quotas: Vec<QuotaConfig>,
    pub server: ServerAddress,
    pub pool_size: usize,
    /// Grant when Redis cannot answer (true), or deny with UNAVAILABLE (false).
    pub fail_open: bool,
    /// The longest a call may wait for Redis.
    pub timeout: Duration,
    pub min_dedup: Duration,
}

const DIALECT: Dialect = Dialect { bucket_and_algorithm: true, override_valid_duration: false };

pub fn parse(doc: &HandlerDoc) -> Result<Params, ConfigError> {
    let o = doc.params().obj()?;
    let quotas = quota::parse_quotas(doc, &o, DIALECT)?;
    let server = o
        .get("redisServerUrl", |p| ServerAddress::parse(&p.text()?).map_err(|e| p.error(e)))?
        .unwrap_or_else(|| ServerAddress::parse("localhost:6379").unwrap_or(ServerAddress::Single(String::new())));
    let pool_size = o
        .get("connectionPoolSize", |p| {
            let n = p.i64()?;
            if (1..=1000).contains(&n) { Ok(n as usize) } else { Err(p.error("must be between 1 and 1000")) }
        })?
        .unwrap_or(10);
    let fail_open = o.get("failOpen", |p| p.bool())?.unwrap_or(false);
    let timeout = o.get("timeout", params::duration)?.unwrap_or(Duration::from_millis(100));
    if timeout.is_zero() {
        return Err(ConfigError::new(&doc.loc, o.child_path("timeout"), "must be greater than 0"));
    }
    let min_dedup = o.get("minDeduplicationDuration", params::duration)?.unwrap_or(Duration::from_secs(1));
    o.finish()?;
    Ok(Params { quotas, server, pool_size, fail_open, timeout, min_dedup })
}

fn build(doc: &HandlerDoc, ctx: &BuildContext) -> Result<Handler, ConfigError> {
    let params = parse(doc)?;
    let q = RedisQuota::new(doc.display_name(), params, ctx)
        .map_err(|e| ConfigError::new(&doc.loc, format!("{}.redisServerUrl", doc.params_path), e))?;
    Ok(Handler { check: None, quota: Some(Arc::new(q)), report: None, generator: None })
}

pub struct RedisQuota {
    name: String,
    params: Params,
    backend: Backend,
    script: redis::Script,
    failing: AtomicBool,
    metrics: crate::registry::AdapterMetrics,
}

/// Hash tags pick a Cluster slot from the text between the first `{` and `}`: escape
/// braces so a dimension value cannot move part of a counter to another slot.
fn tag(key: &str) -> String {
    key.replace('%', "%25").replace('{', "%7B").replace('}', "%7D")
}

impl RedisQuota {
    pub fn new(name: String, params: Params, ctx: &BuildContext) -> Result<RedisQuota, String> {
        let backend = Backend::new(&params.server, params.pool_size, params.timeout)?;
        Ok(RedisQuota {
            name,
            params,
            backend,
            script: redis::Script::new(include_str!("quota.lua")),
            failing: AtomicBool::new(false),
            metrics: ctx.adapter_metrics.clone(),
        })
    }

    async fn allocate(&self, instance: &InstanceValues, instance_name: &str, args: QuotaArgs) -> QuotaResult {
        let Some(q) = self.params.quotas.iter().find(|q| q.configures(instance_name)) else {
            return QuotaResult::failed(Status::new(
                code::INTERNAL,
                format!("redisquota: no quota configured for {instance_name}"),
            ));
        };
        if args.amount < 0 {
            return QuotaResult::failed(Status::new(
                code::INVALID_ARGUMENT,
                "redisquota: amounts must not be negative",
            ));
        }
        let dims = quota::dimensions(instance);
        let limit = q.limit_for(&dims);
        let key = tag(&quota::counter_key(&q.name, &dims, &limit));
        let (algorithm, bucket) = match q.algorithm {
            Algorithm::Fixed => ("fixed", limit.window),
            Algorithm::Rolling => ("rolling", q.bucket_duration.unwrap_or(limit.window / 10)),
        };
        let dedup_ttl = if args.dedup_id.is_empty() { 0 } else { self.params.min_dedup.as_millis().max(1) as u64 };
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(format!("mixr:{{{key}}}:c"))
            .key(format!("mixr:{{{key}}}:d:{}", args.dedup_id))
            .arg(algorithm)
            .arg(limit.max_amount)
            .arg(limit.window.as_micros() as u64)
            .arg(bucket.as_micros().max(1) as u64)
            .arg(args.amount)
            .arg(if args.best_effort { "1" } else { "0" })
            .arg(dedup_ttl);
        let outcome = tokio::time::timeout(self.params.timeout, self.backend.invoke(&invocation)).await;
        let failure = match outcome {
            Ok(Ok((granted, remaining, reset_us))) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(handler = %self.name, "redis answers again");
                }
                return QuotaResult {
                    status: Status::ok(),
                    granted,
                    valid_duration: limit.window,
                    limit: Some(QuotaLimit {
                        max_amount: limit.max_amount,
                        window: limit.window,
                        remaining,
                        reset_after: Duration::from_micros(reset_us.max(0) as u64),
                    }),
                };
            }
            Ok(Err(e)) => ("error", e.to_string()),
            Err(_) => ("timeout", format!("no answer within {:?}", self.params.timeout)),
        };
        self.metrics.redis_errors.with_label_values(&[self.name.as_str(), failure.0]).inc();
        // Log the first failure of a streak; the metric counts them all.
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(handler = %self.name, kind = failure.0, error = %failure.1, fail_open = self.params.fail_open, "redis unavailable");
        }
        if self.params.fail_open {
            self.metrics.quota_fail_open.with_label_values(&[self.name.as_str()]).inc();
            QuotaResult { status: Status::ok(), granted: args.amount, valid_duration: Duration::ZERO, limit: None }
        } else {
            QuotaResult::failed(Status::new(
                code::UNAVAILABLE,
                format!("redisquota: redis unavailable ({})", failure.1),
            ))
        }
    }
}

impl QuotaHandler for RedisQuota {
    fn alloc<'a>(
        &'a self,
        instance: &'a InstanceValues,
        instance_name: &'a str,
        args: QuotaArgs,
    ) -> BoxFuture<'a, QuotaResult> {
        Box::pin(self.allocate(instance, instance_name, args))
    }
}
