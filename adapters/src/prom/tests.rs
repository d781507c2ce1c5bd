//! The prometheus adapter: kinds, buckets, label mapping, expiry, exposition.

use std::time::{Duration, Instant};

use mixr_rules::snapshot::InstanceValues;
use mixr_rules::value::{Duration as Dur, Value};

use super::*;
use crate::quota::tests::handler_doc;

fn handler(params: &str) -> PrometheusHandler {
    PrometheusHandler::new(parse(&handler_doc("prometheus", params)).unwrap(), "p.istio-system").unwrap()
}

fn inst(value: Value<'static>, dims: &[(&str, &str)]) -> InstanceValues {
    InstanceValues {
        fields: vec![("value", value)],
        maps: vec![(
            "dimensions",
            dims.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string().into()))).collect(),
        )],
    }
}

fn exposition(h: &PrometheusHandler) -> String {
    let mut out = String::new();
    prometheus::TextEncoder::new().encode_utf8(&h.gather(), &mut out).unwrap();
    out
}

const METRICS: &str = "    metrics:
    - name: request_count
      instanceName: requestcount.instance.istio-system
      kind: COUNTER
      labelNames: [source, code]
    - name: double_request_count
      instance_name: requestcount
      kind: COUNTER
      labelNames: [source]
    - name: inflight
      instanceName: gauge
      kind: GAUGE
      namespace: mesh
    - name: request_duration_seconds
      instanceName: duration
      kind: DISTRIBUTION
      labelNames: [code]
      buckets: {explicitBuckets: {bounds: [0.01, 0.1, 1]}}
";

#[test]
fn kinds_labels_and_names() {
    let h = handler(METRICS);
    h.report("requestcount.instance.istio-system", &[inst(Value::Int64(2), &[("source", "web"), ("code", "200")])]);
    h.report(
        "requestcount.instance.istio-system",
        &[inst(Value::String("3".into()), &[("source", "web"), ("code", "200")])],
    );
    h.report("gauge.instance.istio-system", &[inst(Value::Double(7.5), &[]), inst(Value::Double(4.0), &[])]);
    h.report(
        "duration.instance.istio-system",
        &[
            inst(Value::Duration(Dur { seconds: 0, nanos: 50_000_000 }), &[("code", "200")]),
            inst(Value::Duration(Dur { seconds: 2, nanos: 0 }), &[("code", "200")]),
        ],
    );
    let text = exposition(&h);
    assert!(text.contains("istio_request_count{code=\"200\",source=\"web\"} 5"), "{text}");
    assert!(text.contains("istio_double_request_count{source=\"web\"} 5"), "{text}");
    assert!(text.contains("mesh_inflight 4"), "gauge sets: {text}");
    assert!(text.contains("istio_request_duration_seconds_bucket{code=\"200\",le=\"0.1\"} 1"), "{text}");
    assert!(text.contains("istio_request_duration_seconds_bucket{code=\"200\",le=\"+Inf\"} 2"), "{text}");
    assert!(text.contains("istio_request_duration_seconds_sum{code=\"200\"} 2.05"), "durations in seconds: {text}");
}

#[test]
fn bad_values_are_counted_not_recorded() {
    let h = handler(METRICS);
    h.report(
        "requestcount.instance.istio-system",
        &[inst(Value::String("lots".into()), &[]), inst(Value::Int64(-1), &[])],
    );
    let text = exposition(&h);
    // Two bad values, each for the two counters fed by this instance.
    assert!(text.contains("mixr_prometheus_rejected_values_total{handler=\"p.istio-system\"} 4"), "{text}");
    assert!(!text.contains("istio_request_count{"), "{text}");
}

#[test]
fn bucket_layouts() {
    let p = |b: &str| {
        parse(&handler_doc(
            "prometheus",
            &format!("    metrics:\n    - {{name: d, instanceName: i, kind: DISTRIBUTION, buckets: {b}}}\n"),
        ))
        .map(|p| p.metrics[0].buckets.clone())
    };
    assert_eq!(p("{linearBuckets: {numFiniteBuckets: 3, width: 10, offset: 5}}").unwrap(), vec![5.0, 15.0, 25.0]);
    assert_eq!(p("{exponentialBuckets: {numFiniteBuckets: 3, growthFactor: 10, scale: 0.1}}").unwrap().len(), 3);
    assert!(p("{explicitBuckets: {bounds: [1, 1]}}").unwrap_err().message.contains("strictly increasing"));
    assert!(p("{}").unwrap_err().message.contains("needs one of"));
}

#[test]
fn param_errors() {
    let err = |m: &str| parse(&handler_doc("prometheus", m)).unwrap_err().to_string();
    assert!(
        err("    metrics:\n    - {name: a-b, instanceName: i, kind: COUNTER}\n").contains("not a valid metric name")
    );
    assert!(err("    metrics:\n    - {name: a, instanceName: i, kind: SUMMARY}\n").contains("unknown kind"));
    assert!(
        err("    metrics:\n    - {name: a, instanceName: i, kind: COUNTER, labelNames: [__x]}\n")
            .contains("label name")
    );
    assert!(err("    metrics:\n    - {name: a, instanceName: i, kind: COUNTER}\n    - {name: a, instanceName: j, kind: GAUGE}\n").contains("defined twice"));
    assert!(
        err("    metrics:\n    - {name: a, instanceName: i, kind: GAUGE, buckets: {explicitBuckets: {bounds: [1]}}}\n")
            .contains("only DISTRIBUTION")
    );
}

#[test]
fn series_expire_when_idle() {
    let h = handler(&format!(
        "{METRICS}    metricsExpirationPolicy: {{metricsExpiryDuration: 10m, expiryCheckIntervalDuration: 1m}}\n"
    ));
    h.report("requestcount.instance.istio-system", &[inst(Value::Int64(1), &[("source", "old"), ("code", "200")])]);
    assert_eq!(h.expire(Instant::now() + Duration::from_secs(60)), 0);
    h.report("requestcount.instance.istio-system", &[inst(Value::Int64(1), &[("source", "new"), ("code", "200")])]);
    // Only the series untouched for 10 minutes go (the "new" one was just written).
    let removed = h.expire(Instant::now() + Duration::from_secs(599));
    assert_eq!(removed, 0);
    let removed = h.expire(Instant::now() + Duration::from_secs(601));
    assert_eq!(removed, 4, "both series of both counters");
    assert!(!exposition(&h).contains("source=\"old\""));
}

#[test]
fn series_per_metric_are_capped_whatever_callers_send() {
    let h = handler(&format!(
        "{METRICS}    maxSeriesPerMetric: 100\n    metricsExpirationPolicy: {{metricsExpiryDuration: 10m}}\n"
    ));
    let hosts: Vec<String> = (0..10_000).map(|i| format!("host-{i}")).collect();
    let batch: Vec<InstanceValues> =
        hosts.iter().map(|host| inst(Value::Int64(1), &[("source", host), ("code", "200")])).collect();
    h.report("requestcount.instance.istio-system", &batch);
    let text = exposition(&h);
    let series = text.lines().filter(|l| l.starts_with("istio_request_count{")).count();
    assert_eq!(series, 100, "one metric holds at most maxSeriesPerMetric series");
    assert_eq!(text.lines().filter(|l| l.starts_with("istio_double_request_count{")).count(), 100);
    assert!(
        text.contains("mixr_prometheus_dropped_series_total{handler=\"p.istio-system\"} 19800"),
        "{}",
        &text[text.len() - 400..]
    );
    // Known series still count; expired ones free their place.
    h.report("requestcount.instance.istio-system", &[inst(Value::Int64(5), &[("source", "host-0"), ("code", "200")])]);
    assert!(exposition(&h).contains("istio_request_count{code=\"200\",source=\"host-0\"} 6"));
    assert_eq!(h.expire(Instant::now() + Duration::from_secs(601)), 200);
    h.report("requestcount.instance.istio-system", &[inst(Value::Int64(1), &[("source", "new"), ("code", "200")])]);
    assert!(exposition(&h).contains("istio_request_count{code=\"200\",source=\"new\"} 1"));
    assert_eq!(
        parse(&handler_doc("prometheus", &format!("{METRICS}    maxSeriesPerMetric: 0\n"))).unwrap_err().message,
        "must be at least 1"
    );
}
