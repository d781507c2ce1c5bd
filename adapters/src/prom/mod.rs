//! `prometheus`: metric instances become Prometheus series (COUNTER adds, GAUGE sets,
//! DISTRIBUTION observes), exposed on mixr's `/metrics`.
//!
//! Each handler owns its registry, so a reload that changes a metric's shape replaces the
//! whole set cleanly and an unchanged handler keeps its series.
//!
//! Label values come from requests, so a caller could mint series without end: each metric
//! holds at most `maxSeriesPerMetric` (10,000) series; values for further series are not
//! recorded, and are counted in `mixr_prometheus_dropped_series_total` (and logged at most
//! once a minute). Expired series free their place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use mixr_rules::config::{ConfigError, HandlerDoc, Param};
use mixr_rules::snapshot::InstanceValues;
use mixr_rules::templates::Template;
use mixr_rules::value::Value;
use prometheus::core::Collector;
use prometheus::{CounterVec, GaugeVec, HistogramOpts, HistogramVec, Opts, Registry};

use crate::params;
use crate::registry::{AdapterInfo, BuildContext, Handler};
use crate::variety::ReportHandler;

pub fn info() -> AdapterInfo {
    AdapterInfo {
        name: "prometheus",
        templates: &[Template::Metric],
        validate: |doc| parse(doc).map(drop),
        validate_instances: Some(check_instances),
        build,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Distribution,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricConfig {
    pub name: String,
    pub instance_name: String,
    pub description: String,
    pub kind: Kind,
    pub label_names: Vec<String>,
    pub namespace: String,
    pub buckets: Vec<f64>,
}

impl MetricConfig {
    pub fn exported_name(&self) -> String {
        if self.namespace.is_empty() { self.name.clone() } else { format!("{}_{}", self.namespace, self.name) }
    }

    fn serves(&self, full: &str) -> bool {
        self.instance_name == full || full.split('.').next() == Some(self.instance_name.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub metrics: Vec<MetricConfig>,
    pub expiry: Option<(Duration, Duration)>,
    pub max_series: usize,
}

/// Series a metric may hold unless `maxSeriesPerMetric` says otherwise.
pub const DEFAULT_MAX_SERIES: usize = 10_000;

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Prometheus's default buckets, for distributions that name none.
const DEFAULT_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn buckets(p: Param<'_>) -> Result<Vec<f64>, ConfigError> {
    let o = p.obj()?;
    let count = |p: Param<'_>| -> Result<usize, ConfigError> {
        let n = p.i64()?;
        if (1..=1000).contains(&n) { Ok(n as usize) } else { Err(p.error("must be between 1 and 1000")) }
    };
    let out = if let Some(v) = o.get("linearBuckets", |p| {
        let l = p.obj()?;
        let n = l.require("numFiniteBuckets", count)?;
        let width = l.require("width", |p| p.f64())?;
        let offset = l.get("offset", |p| p.f64())?.unwrap_or(0.0);
        if width <= 0.0 {
            return Err(ConfigError::new(p.loc, l.child_path("width"), "must be greater than 0"));
        }
        l.finish()?;
        Ok((0..n).map(|i| offset + width * i as f64).collect::<Vec<f64>>())
    })? {
        v
    } else if let Some(v) = o.get("exponentialBuckets", |p| {
        let e = p.obj()?;
        let n = e.require("numFiniteBuckets", count)?;
        let growth = e.require("growthFactor", |p| p.f64())?;
        let scale = e.require("scale", |p| p.f64())?;
        if growth <= 1.0 || scale <= 0.0 {
            return Err(p.error("needs growthFactor > 1 and scale > 0"));
        }
        e.finish()?;
        Ok((0..n).map(|i| scale * growth.powi(i as i32)).collect::<Vec<f64>>())
    })? {
        v
    } else if let Some(v) = o.get("explicitBuckets", |p| {
        let e = p.obj()?;
        let bounds = e.require("bounds", |p| {
            let mut out = Vec::new();
            for (v, path) in p.list()? {
                out.push(Param::new(&v, p.loc, &path).f64()?);
            }
            Ok(out)
        })?;
        if bounds.is_empty() || bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(p.error("bounds must be non-empty and strictly increasing"));
        }
        e.finish()?;
        Ok(bounds)
    })? {
        v
    } else {
        return Err(p.error("needs one of linearBuckets, exponentialBuckets, explicitBuckets"));
    };
    o.finish()?;
    Ok(out)
}

pub fn parse(doc: &HandlerDoc) -> Result<Params, ConfigError> {
    let o = doc.params().obj()?;
    let metrics = o.require("metrics", |p| {
        let mut out: Vec<MetricConfig> = Vec::new();
        for (item, path) in p.list()? {
            let m = Param::new(&item, &doc.loc, &path).obj()?;
            let name = m.require("name", |p| {
                let n = p.text()?;
                if valid_name(&n) { Ok(n) } else { Err(p.error(format!("{n:?} is not a valid metric name"))) }
            })?;
            let instance_name = m.require("instanceName", |p| p.text())?;
            let description = m.get("description", |p| p.text())?.unwrap_or_default();
            let kind = m.require("kind", |p| match p.text()?.as_str() {
                "COUNTER" => Ok(Kind::Counter),
                "GAUGE" => Ok(Kind::Gauge),
                "DISTRIBUTION" => Ok(Kind::Distribution),
                other => Err(p.error(format!("unknown kind {other:?} (COUNTER, GAUGE or DISTRIBUTION)"))),
            })?;
            let label_names = m
                .get("labelNames", |p| {
                    let names = p.string_list()?;
                    match names.iter().find(|n| !valid_name(n) || n.starts_with("__") || n.contains(':')) {
                        Some(bad) => Err(p.error(format!("{bad:?} is not a valid label name"))),
                        None => Ok(names),
                    }
                })?
                .unwrap_or_default();
            let namespace = m.get("namespace", |p| p.text())?.unwrap_or_else(|| "istio".into());
            let bucket_list = m.get("buckets", buckets)?;
            let buckets = match (kind, bucket_list) {
                (Kind::Distribution, Some(b)) => b,
                (Kind::Distribution, None) => DEFAULT_BUCKETS.to_vec(),
                (_, Some(_)) => {
                    return Err(ConfigError::new(
                        &doc.loc,
                        m.child_path("buckets"),
                        "only DISTRIBUTION metrics have buckets",
                    ));
                }
                (_, None) => Vec::new(),
            };
            m.finish()?;
            let metric = MetricConfig { name, instance_name, description, kind, label_names, namespace, buckets };
            if out.iter().any(|o| o.exported_name() == metric.exported_name()) {
                return Err(ConfigError::new(
                    &doc.loc,
                    format!("{path}.name"),
                    format!("metric {} is defined twice", metric.exported_name()),
                ));
            }
            out.push(metric);
        }
        Ok(out)
    })?;
    let expiry = o.get("metricsExpirationPolicy", |p| {
        let e = p.obj()?;
        let expiry = e.require("metricsExpiryDuration", params::duration)?;
        let check = e.get("expiryCheckIntervalDuration", params::duration)?.unwrap_or(expiry / 2);
        if expiry.is_zero() || check.is_zero() {
            return Err(p.error("durations must be greater than 0"));
        }
        e.finish()?;
        Ok((expiry, check))
    })?;
    let max_series = o
        .get("maxSeriesPerMetric", |p| {
            let n = p.i64()?;
            usize::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| p.error("must be at least 1"))
        })?
        .unwrap_or(DEFAULT_MAX_SERIES);
    o.finish()?;
    Ok(Params { metrics, expiry, max_series })
}

fn check_instances(doc: &HandlerDoc, instances: &[String]) -> Result<(), ConfigError> {
    let p = parse(doc)?;
    for full in instances {
        if !p.metrics.iter().any(|m| m.serves(full)) {
            return Err(ConfigError::new(
                &doc.loc,
                format!("{}.metrics", doc.params_path),
                format!("no metric has instanceName {full}, which a rule sends to this handler"),
            ));
        }
    }
    Ok(())
}

enum Series {
    Counter(CounterVec),
    Gauge(GaugeVec),
    Histogram(HistogramVec),
}

struct Metric {
    config: MetricConfig,
    series: Series,
}

impl Metric {
    fn remove(&self, labels: &[&str]) {
        let _ = match &self.series {
            Series::Counter(v) => v.remove_label_values(labels),
            Series::Gauge(v) => v.remove_label_values(labels),
            Series::Histogram(v) => v.remove_label_values(labels),
        };
    }
}

/// A series: which metric, and its label values.
type SeriesKey = (usize, Vec<String>);

pub struct PrometheusHandler {
    registry: Registry,
    metrics: Vec<Metric>,
    /// Every series and its last update, with the number of series per metric.
    series: Mutex<SeriesTable>,
    expiry: Option<Duration>,
    max_series: usize,
    /// Values that could not be recorded (not numbers, negative counter increments).
    rejected: prometheus::IntCounter,
    /// Values not recorded because their metric holds `max_series` series already.
    dropped: prometheus::IntCounter,
    last_drop_log: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct SeriesTable {
    touched: HashMap<SeriesKey, Instant>,
    per_metric: Vec<usize>,
}

/// A metric value as a number: durations in seconds, numeric strings parsed.
pub fn number(v: &Value<'_>) -> Option<f64> {
    match v {
        Value::Int64(i) => Some(*i as f64),
        Value::Double(d) => Some(*d),
        Value::Duration(d) => Some(d.as_secs_f64()),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => s.trim().parse().ok(),
        Value::Timestamp(t) => Some(t.seconds as f64 + t.nanos as f64 / 1e9),
        _ => None,
    }
}

impl PrometheusHandler {
    pub fn new(params: Params, handler_name: &str) -> Result<PrometheusHandler, String> {
        let registry = Registry::new();
        let mut metrics = Vec::new();
        for c in params.metrics {
            let help = if c.description.is_empty() { format!("{} from mixr", c.name) } else { c.description.clone() };
            let labels: Vec<&str> = c.label_names.iter().map(String::as_str).collect();
            let name = c.exported_name();
            let series = match c.kind {
                Kind::Counter => {
                    Series::Counter(CounterVec::new(Opts::new(&name, &help), &labels).map_err(|e| e.to_string())?)
                }
                Kind::Gauge => {
                    Series::Gauge(GaugeVec::new(Opts::new(&name, &help), &labels).map_err(|e| e.to_string())?)
                }
                Kind::Distribution => Series::Histogram(
                    HistogramVec::new(HistogramOpts::new(&name, &help).buckets(c.buckets.clone()), &labels)
                        .map_err(|e| e.to_string())?,
                ),
            };
            let collector: Box<dyn Collector> = match &series {
                Series::Counter(v) => Box::new(v.clone()),
                Series::Gauge(v) => Box::new(v.clone()),
                Series::Histogram(v) => Box::new(v.clone()),
            };
            registry.register(collector).map_err(|e| e.to_string())?;
            metrics.push(Metric { config: c, series });
        }
        let rejected = prometheus::IntCounter::with_opts(
            Opts::new(
                "mixr_prometheus_rejected_values_total",
                "Metric values the prometheus adapter could not record.",
            )
            .const_label("handler", handler_name),
        )
        .map_err(|e| e.to_string())?;
        registry.register(Box::new(rejected.clone())).map_err(|e| e.to_string())?;
        let dropped = prometheus::IntCounter::with_opts(
            Opts::new(
                "mixr_prometheus_dropped_series_total",
                "Metric values not recorded because their metric had reached its series limit.",
            )
            .const_label("handler", handler_name),
        )
        .map_err(|e| e.to_string())?;
        registry.register(Box::new(dropped.clone())).map_err(|e| e.to_string())?;
        let per_metric = vec![0; metrics.len()];
        Ok(PrometheusHandler {
            registry,
            metrics,
            series: Mutex::new(SeriesTable { touched: HashMap::new(), per_metric }),
            expiry: params.expiry.map(|e| e.0),
            max_series: params.max_series,
            rejected,
            dropped,
            last_drop_log: Mutex::new(None),
        })
    }

    /// Notes an update of a series; false when it would be one series too many.
    fn admit(&self, index: usize, labels: Vec<String>) -> bool {
        let mut table = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let key = (index, labels);
        if let Some(at) = table.touched.get_mut(&key) {
            *at = Instant::now();
            return true;
        }
        if table.per_metric[index] >= self.max_series {
            return false;
        }
        table.per_metric[index] += 1;
        table.touched.insert(key, Instant::now());
        true
    }

    fn note_dropped(&self, metric: &Metric) {
        self.dropped.inc();
        let mut last = self.last_drop_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(Instant::now());
            tracing::warn!(
                metric = %metric.config.exported_name(),
                max = self.max_series,
                "metric has reached its series limit; values for new label sets are dropped"
            );
        }
    }

    fn record(&self, index: usize, metric: &Metric, instance: &InstanceValues) {
        let Some(value) = instance.field("value").and_then(number) else {
            self.rejected.inc();
            return;
        };
        let dims = instance.map("dimensions");
        let texts: Vec<String> = metric
            .config
            .label_names
            .iter()
            .map(|l| dims.iter().find(|(k, _)| k == l).map(|(_, v)| v.to_text()).unwrap_or_default())
            .collect();
        let labels: Vec<&str> = texts.iter().map(String::as_str).collect();
        if matches!(&metric.series, Series::Counter(_)) && (value < 0.0 || !value.is_finite()) {
            self.rejected.inc();
            return;
        }
        if !self.admit(index, texts.clone()) {
            self.note_dropped(metric);
            return;
        }
        match &metric.series {
            Series::Counter(v) => v.with_label_values(&labels).inc_by(value),
            Series::Gauge(v) => v.with_label_values(&labels).set(value),
            Series::Histogram(v) => v.with_label_values(&labels).observe(value),
        }
    }

    /// Removes series not updated within the expiry duration.
    pub fn expire(&self, now: Instant) -> usize {
        let Some(expiry) = self.expiry else { return 0 };
        let mut t = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let stale: Vec<SeriesKey> = t
            .touched
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) >= expiry)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &stale {
            let labels: Vec<&str> = key.1.iter().map(String::as_str).collect();
            self.metrics[key.0].remove(&labels);
            t.touched.remove(key);
            t.per_metric[key.0] -= 1;
        }
        stale.len()
    }

    fn start_expiring(self: &Arc<Self>, interval: Duration) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let weak: Weak<PrometheusHandler> = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(h) = weak.upgrade() else { return };
                h.expire(Instant::now());
            }
        });
    }
}

impl ReportHandler for PrometheusHandler {
    fn report(&self, instance_name: &str, instances: &[InstanceValues]) {
        for (i, m) in self.metrics.iter().enumerate() {
            if m.config.serves(instance_name) {
                for inst in instances {
                    self.record(i, m, inst);
                }
            }
        }
    }

    fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }
}

fn build(doc: &HandlerDoc, _: &BuildContext) -> Result<Handler, ConfigError> {
    let params = parse(doc)?;
    let interval = params.expiry.map(|e| e.1);
    let h = Arc::new(
        PrometheusHandler::new(params, &doc.display_name())
            .map_err(|e| ConfigError::new(&doc.loc, format!("{}.metrics", doc.params_path), e))?,
    );
    if let Some(i) = interval {
        h.start_expiring(i);
    }
    Ok(Handler { check: None, quota: None, report: Some(h), generator: None })
}

#[cfg(test)]
mod tests;
