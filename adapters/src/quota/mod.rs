//! What memquota and redisquota share: quota params, the counter key, override matching
//! and the rolling-window arithmetic, so the two backends give the same answers.
//!
//! Rolling windows are kept as buckets of `tick` (a window is `n` ticks). A grant made in
//! bucket `b` counts until `(b + 1 + n) * tick`: at least one full window after the grant,
//! at most one tick more. So the amount granted inside any window never exceeds the limit;
//! the price is that capacity returns up to one tick late.

pub mod window;

use std::time::Duration;

use mixr_rules::config::{ConfigError, HandlerDoc, Obj, Param};
use mixr_rules::snapshot::InstanceValues;

use crate::params;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Buckets of `tick` over a sliding window (memquota always; redisquota ROLLING_WINDOW).
    Rolling,
    /// One counter reset when the window ends (redisquota FIXED_WINDOW).
    Fixed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// Sorted by key.
    pub dimensions: Vec<(String, String)>,
    pub max_amount: i64,
    pub valid_duration: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuotaConfig {
    /// The quota instance this configures: its short or fully qualified name.
    pub name: String,
    pub max_amount: i64,
    /// Zero: an allocation counter with no window.
    pub valid_duration: Duration,
    pub bucket_duration: Option<Duration>,
    pub algorithm: Algorithm,
    pub overrides: Vec<Override>,
}

/// The limit that applies to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub max_amount: i64,
    pub window: Duration,
    /// Which override matched (part of the counter key, so changing overrides starts new
    /// counters instead of reinterpreting old ones).
    pub override_index: Option<usize>,
}

impl QuotaConfig {
    /// Whether this entry configures the instance named `full` (`name.kind.namespace`).
    pub fn configures(&self, full: &str) -> bool {
        self.name == full || full.split('.').next() == Some(self.name.as_str())
    }

    /// The first override whose dimensions all equal the instance's, else the defaults.
    pub fn limit_for(&self, dims: &[(String, String)]) -> Limit {
        for (i, o) in self.overrides.iter().enumerate() {
            let all = o.dimensions.iter().all(|(k, v)| dims.iter().any(|(dk, dv)| dk == k && dv == v));
            if all {
                return Limit {
                    max_amount: o.max_amount,
                    window: o.valid_duration.unwrap_or(self.valid_duration),
                    override_index: Some(i),
                };
            }
        }
        Limit { max_amount: self.max_amount, window: self.valid_duration, override_index: None }
    }
}

/// An instance's dimensions as text, sorted by name.
pub fn dimensions(instance: &InstanceValues) -> Vec<(String, String)> {
    let mut dims: Vec<(String, String)> =
        instance.map("dimensions").iter().map(|(k, v)| (k.clone(), v.to_text())).collect();
    dims.sort();
    dims
}

/// `name;k1=v1;k2=v2` (sorted by key), plus the override that matched.
pub fn counter_key(name: &str, dims: &[(String, String)], limit: &Limit) -> String {
    let mut key = String::with_capacity(name.len() + dims.len() * 16);
    key.push_str(name);
    for (k, v) in dims {
        key.push(';');
        key.push_str(k);
        key.push('=');
        key.push_str(v);
    }
    if let Some(i) = limit.override_index {
        key.push_str(&format!(";#override{i}"));
    }
    key
}

/// Which params a backend accepts beyond the common ones.
#[derive(Debug, Clone, Copy)]
pub struct Dialect {
    pub bucket_and_algorithm: bool,
    pub override_valid_duration: bool,
}

/// Parses `quotas: [...]`.
pub fn parse_quotas(doc: &HandlerDoc, o: &Obj<'_>, dialect: Dialect) -> Result<Vec<QuotaConfig>, ConfigError> {
    let quotas = o.require("quotas", |p| {
        let mut out: Vec<QuotaConfig> = Vec::new();
        for (item, path) in p.list()? {
            let q = Param::new(&item, &doc.loc, &path).obj()?;
            let name = q.require("name", |p| p.text())?;
            if out.iter().any(|o| o.name == name) {
                return Err(ConfigError::new(
                    &doc.loc,
                    q.child_path("name"),
                    format!("quota {name:?} is configured twice"),
                ));
            }
            let max_amount = q.require("maxAmount", positive)?;
            let valid_duration = q.get("validDuration", params::duration)?.unwrap_or(Duration::ZERO);
            let (algorithm, bucket_duration) = if dialect.bucket_and_algorithm {
                let algorithm = q
                    .get("rateLimitAlgorithm", |p| match p.text()?.as_str() {
                        "FIXED_WINDOW" => Ok(Algorithm::Fixed),
                        "ROLLING_WINDOW" => Ok(Algorithm::Rolling),
                        other => Err(p.error(format!("unknown algorithm {other:?} (FIXED_WINDOW or ROLLING_WINDOW)"))),
                    })?
                    .unwrap_or(Algorithm::Fixed);
                let bucket = q.get("bucketDuration", params::duration)?;
                if valid_duration.is_zero() {
                    return Err(ConfigError::new(&doc.loc, q.child_path("validDuration"), "must be greater than 0"));
                }
                if algorithm == Algorithm::Rolling {
                    match bucket {
                        Some(b) if !b.is_zero() && b < valid_duration => {}
                        _ => {
                            return Err(ConfigError::new(
                                &doc.loc,
                                q.child_path("bucketDuration"),
                                "ROLLING_WINDOW needs 0 < bucketDuration < validDuration",
                            ));
                        }
                    }
                }
                (algorithm, bucket)
            } else {
                (Algorithm::Rolling, None)
            };
            let overrides = q
                .get("overrides", |p| {
                    let mut out = Vec::new();
                    for (item, path) in p.list()? {
                        let ov = Param::new(&item, &doc.loc, &path).obj()?;
                        let mut dimensions = ov.require("dimensions", |p| {
                            let mut dims = Vec::new();
                            for (k, v) in p.entries()? {
                                let path = format!("{}.{k}", p.path());
                                dims.push((k, Param::new(v, &doc.loc, &path).text()?));
                            }
                            Ok(dims)
                        })?;
                        if dimensions.is_empty() {
                            return Err(ConfigError::new(&doc.loc, ov.child_path("dimensions"), "must not be empty"));
                        }
                        dimensions.sort();
                        let max_amount = ov.require("maxAmount", positive)?;
                        let valid_duration = if dialect.override_valid_duration {
                            ov.get("validDuration", params::duration)?
                        } else {
                            None
                        };
                        ov.finish()?;
                        out.push(Override { dimensions, max_amount, valid_duration });
                    }
                    Ok(out)
                })?
                .unwrap_or_default();
            q.finish()?;
            out.push(QuotaConfig { name, max_amount, valid_duration, bucket_duration, algorithm, overrides });
        }
        Ok(out)
    })?;
    Ok(quotas)
}

fn positive(p: Param<'_>) -> Result<i64, ConfigError> {
    let n = p.i64()?;
    if n <= 0 {
        return Err(p.error("must be greater than 0"));
    }
    Ok(n)
}

/// Checks that every quota instance a rule sends to this handler is configured in it.
pub fn check_instances(doc: &HandlerDoc, quotas: &[QuotaConfig], instances: &[String]) -> Result<(), ConfigError> {
    for full in instances {
        if !quotas.iter().any(|q| q.configures(full)) {
            return Err(ConfigError::new(
                &doc.loc,
                format!("{}.quotas", doc.params_path),
                format!("no quota is configured for instance {full}, which a rule sends to this handler"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
