//! The registry: every adapter, and building handlers from a compiled snapshot.

use std::collections::HashMap;
use std::sync::Arc;

use mixr_rules::config::{ConfigError, HandlerDoc};
use mixr_rules::snapshot::{AdapterCatalog, Snapshot};
use mixr_rules::templates::Template;

use crate::clock::{Clock, SystemClock};
use crate::variety::{AttributeGenerator, CheckHandler, QuotaHandler, ReportHandler};
use prometheus::{IntCounterVec, Opts};

use crate::{denier, kubernetesenv, listchecker, memquota, noop, prom, redisquota, sqllog, stdio, tracespan};

/// A built handler: the varieties its adapter implements.
#[derive(Clone, Default)]
pub struct Handler {
    pub check: Option<Arc<dyn CheckHandler>>,
    pub quota: Option<Arc<dyn QuotaHandler>>,
    pub report: Option<Arc<dyn ReportHandler>>,
    pub generator: Option<Arc<dyn AttributeGenerator>>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("check", &self.check.is_some())
            .field("quota", &self.quota.is_some())
            .field("report", &self.report.is_some())
            .field("generator", &self.generator.is_some())
            .finish()
    }
}

/// Metrics adapters record, registered once per process (handlers come and go with
/// reloads; their series stay).
#[derive(Debug, Clone)]
pub struct AdapterMetrics {
    pub redis_errors: IntCounterVec,
    pub quota_fail_open: IntCounterVec,
}

impl AdapterMetrics {
    pub fn register(registry: &prometheus::Registry) -> AdapterMetrics {
        let redis_errors = IntCounterVec::new(
            Opts::new(
                "mixr_redis_errors_total",
                "Redis calls that failed or timed out, by handler and kind (error, timeout).",
            ),
            &["handler", "kind"],
        )
        .expect("valid metric");
        let quota_fail_open = IntCounterVec::new(
            Opts::new(
                "mixr_quota_fail_open_total",
                "Quota requests granted without Redis because the handler fails open.",
            ),
            &["handler"],
        )
        .expect("valid metric");
        for c in [redis_errors.clone(), quota_fail_open.clone()] {
            if let Err(e) = registry.register(Box::new(c)) {
                tracing::error!(error = %e, "adapter metric not registered");
            }
        }
        AdapterMetrics { redis_errors, quota_fail_open }
    }
}

/// What adapters may use while being built.
#[derive(Debug, Clone)]
pub struct BuildContext {
    pub clock: Arc<dyn Clock>,
    pub adapter_metrics: AdapterMetrics,
    /// The server's OTLP endpoint (`--otlp-endpoint`), the default for span exporters.
    pub otlp_endpoint: Option<String>,
    /// Where adapters keep what they write (`--data-dir`); relative paths in params resolve
    /// here, never in the config directory.
    pub data_dir: std::path::PathBuf,
}

impl BuildContext {
    pub fn new(registry: &prometheus::Registry) -> BuildContext {
        BuildContext {
            clock: Arc::new(SystemClock),
            adapter_metrics: AdapterMetrics::register(registry),
            otlp_endpoint: None,
            data_dir: std::env::temp_dir().join("mixr"),
        }
    }
}

impl Default for BuildContext {
    fn default() -> Self {
        BuildContext::new(&prometheus::Registry::new())
    }
}

/// Validates the instances (full names) rules send to a handler.
pub type InstanceCheck = fn(&HandlerDoc, &[String]) -> Result<(), ConfigError>;

/// One adapter's entry in the registry.
#[derive(Clone, Copy)]
pub struct AdapterInfo {
    pub name: &'static str,
    pub templates: &'static [Template],
    pub validate: fn(&HandlerDoc) -> Result<(), ConfigError>,
    /// Checks the instances rules send to a handler (a quota adapter must configure each).
    pub validate_instances: Option<InstanceCheck>,
    pub build: fn(&HandlerDoc, &BuildContext) -> Result<Handler, ConfigError>,
}

#[derive(Clone)]
pub struct Registry {
    adapters: Vec<AdapterInfo>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.adapters.iter().map(|a| a.name).collect();
        f.debug_struct("Registry").field("adapters", &names).finish()
    }
}

impl Registry {
    /// Every adapter mixr ships.
    pub fn builtin() -> Registry {
        Registry {
            adapters: vec![
                denier::info(),
                kubernetesenv::info(),
                listchecker::info(),
                memquota::info(),
                noop::info(),
                prom::info(),
                redisquota::info(),
                sqllog::info(),
                stdio::info(),
                tracespan::info(),
            ],
        }
    }

    pub fn adapter(&self, name: &str) -> Option<&AdapterInfo> {
        self.adapters.iter().find(|a| a.name == name)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.adapters.iter().map(|a| a.name)
    }

    /// Builds a handler for every handler document of `snapshot`, reusing those of
    /// `previous` whose adapter and params are unchanged.
    pub fn build_handlers(
        &self,
        snapshot: &Snapshot,
        previous: Option<&HandlerSet>,
        ctx: &BuildContext,
    ) -> Result<HandlerSet, Vec<ConfigError>> {
        let mut handlers = Vec::with_capacity(snapshot.handlers.len());
        let mut fingerprints = Vec::with_capacity(snapshot.handlers.len());
        let mut errors = Vec::new();
        for doc in &snapshot.handlers {
            let fp = fingerprint(doc);
            if let Some(prev) = previous.and_then(|p| p.by_fingerprint.get(&fp)) {
                handlers.push(prev.clone());
                fingerprints.push(fp);
                continue;
            }
            let built = match self.adapter(&doc.adapter) {
                Some(info) => (info.build)(doc, ctx),
                None => Err(ConfigError::new(
                    &doc.loc,
                    "spec.compiledAdapter",
                    format!("unknown adapter {:?}", doc.adapter),
                )),
            };
            match built {
                Ok(h) => {
                    handlers.push(h);
                    fingerprints.push(fp);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let by_fingerprint = fingerprints.into_iter().zip(handlers.iter().cloned()).collect();
        Ok(HandlerSet { handlers, by_fingerprint })
    }
}

/// Handlers built for one snapshot, in the snapshot's handler order.
#[derive(Debug, Default, Clone)]
pub struct HandlerSet {
    pub handlers: Vec<Handler>,
    by_fingerprint: HashMap<String, Handler>,
}

impl HandlerSet {
    pub fn get(&self, index: usize) -> Option<&Handler> {
        self.handlers.get(index)
    }

    /// Flushes every report handler (graceful shutdown).
    pub async fn flush(&self) {
        for h in &self.handlers {
            if let Some(r) = &h.report {
                r.flush().await;
            }
        }
    }
}

/// Same adapter and same params means the same handler, whatever it is called.
fn fingerprint(doc: &HandlerDoc) -> String {
    let params = yaml_serde::to_string(&doc.params).unwrap_or_default();
    format!("{}\n{params}", doc.adapter)
}

impl AdapterCatalog for Registry {
    fn templates(&self, adapter: &str) -> Option<&'static [Template]> {
        self.adapter(adapter).map(|a| a.templates)
    }

    fn check_params(&self, handler: &HandlerDoc) -> Result<(), ConfigError> {
        match self.adapter(&handler.adapter) {
            Some(info) => (info.validate)(handler),
            None => Ok(()),
        }
    }

    fn check_instances(&self, handler: &HandlerDoc, instances: &[String]) -> Result<(), ConfigError> {
        match self.adapter(&handler.adapter).and_then(|a| a.validate_instances) {
            Some(check) => check(handler, instances),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::variety::QuotaArgs;
    use mixr_rules::config::load_str;
    use mixr_rules::snapshot::{InstanceValues, build};

    const QUOTA: &str = "apiVersion: config.istio.io/v1alpha2\nkind: handler\nmetadata: {name: q}\nspec:\n  compiledAdapter: memquota\n  params:\n    quotas: [{name: rq, maxAmount: 2, validDuration: 60s}]\n---\napiVersion: config.istio.io/v1alpha2\nkind: instance\nmetadata: {name: rq}\nspec: {compiledTemplate: quota, params: {dimensions: {}}}\n---\napiVersion: config.istio.io/v1alpha2\nkind: rule\nmetadata: {name: r}\nspec:\n  actions: [{handler: q, instances: [rq]}]\n";

    fn snapshot(text: &str) -> Snapshot {
        let (set, errors) = load_str("c.yaml", text, "istio-system");
        assert!(errors.is_empty(), "{errors:?}");
        build(&set, &Registry::builtin()).unwrap()
    }

    async fn take(h: &HandlerSet) -> i64 {
        let args = QuotaArgs { dedup_id: String::new(), amount: 1, best_effort: false };
        h.get(0)
            .and_then(|h| h.quota.clone())
            .unwrap()
            .alloc(&InstanceValues::default(), "rq.instance.istio-system", args)
            .await
            .granted
    }

    #[tokio::test]
    async fn unchanged_handlers_keep_their_state_across_reloads() {
        let registry = Registry::builtin();
        let ctx = BuildContext::default();
        let first = registry.build_handlers(&snapshot(QUOTA), None, &ctx).unwrap();
        assert_eq!((take(&first).await, take(&first).await, take(&first).await), (1, 1, 0));

        // Another rule changes; the quota handler's params do not: its counters survive.
        let edited = format!(
            "{QUOTA}---\napiVersion: config.istio.io/v1alpha2\nkind: rule\nmetadata: {{name: other}}\nspec: {{match: 'request.path == \"/x\"'}}\n"
        );
        let second = registry.build_handlers(&snapshot(&edited), Some(&first), &ctx).unwrap();
        assert!(Arc::ptr_eq(
            first.get(0).unwrap().quota.as_ref().unwrap(),
            second.get(0).unwrap().quota.as_ref().unwrap()
        ));
        assert_eq!(take(&second).await, 0, "the limit is still used up");

        // New params: a new handler with fresh counters.
        let third = registry
            .build_handlers(&snapshot(&QUOTA.replace("maxAmount: 2", "maxAmount: 3")), Some(&second), &ctx)
            .unwrap();
        assert_eq!(take(&third).await, 1);
    }
}
