//! One behavioural suite for every quota backend: the same config must give the same
//! answers from memquota and redisquota (up to the tick granularity of rolling windows).
//! The Redis runs use a real server at REDIS_URL (default redis://127.0.0.1:6379).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mixr_rules::config::{HandlerDoc, load_str};
use mixr_rules::snapshot::InstanceValues;
use mixr_rules::value::Value;

use crate::variety::{QuotaArgs, QuotaHandler};

pub const INSTANCE: &str = "requestcount.instance.istio-system";

/// A handler document for `adapter` with `params` (YAML, indented two spaces).
pub fn handler_doc(adapter: &str, params: &str) -> HandlerDoc {
    let text = format!(
        "apiVersion: config.istio.io/v1alpha2\nkind: handler\nmetadata: {{name: q}}\nspec:\n  compiledAdapter: {adapter}\n  params:\n{params}"
    );
    let (set, errors) = load_str("q.yaml", &text, "istio-system");
    assert!(errors.is_empty(), "{errors:?}");
    set.handlers.into_iter().next().expect("one handler")
}

/// Dimensions unique to this test run, so parallel tests never share a Redis counter.
pub fn dims(extra: &[(&str, &str)]) -> InstanceValues {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = format!(
        "{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
            + std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
    );
    let mut m: Vec<(String, Value<'static>)> = vec![("run".into(), Value::String(run.into()))];
    for (k, v) in extra {
        m.push((k.to_string(), Value::String(v.to_string().into())));
    }
    InstanceValues { fields: vec![], maps: vec![("dimensions", m)] }
}

/// Same run as `base`, with one more dimension.
pub fn with(base: &InstanceValues, k: &str, v: &str) -> InstanceValues {
    let mut i = base.clone();
    i.maps[0].1.push((k.to_string(), Value::String(v.to_string().into())));
    i
}

pub async fn take(q: &dyn QuotaHandler, inst: &InstanceValues, amount: i64, best_effort: bool, dedup: &str) -> i64 {
    let r = q.alloc(inst, INSTANCE, QuotaArgs { dedup_id: dedup.to_string(), amount, best_effort }).await;
    assert!(r.status.is_ok(), "{:?}", r.status);
    r.granted
}

/// Builds a backend from `params` written for both (rolling window, 100 ms ticks).
pub type Factory = dyn Fn(&str) -> Arc<dyn QuotaHandler>;

/// `quotas:` params valid for memquota and redisquota alike.
pub fn params(max: i64, window: &str, extra: &str) -> String {
    format!(
        "    quotas:\n    - name: requestcount\n      maxAmount: {max}\n      validDuration: {window}\n      rateLimitAlgorithm: ROLLING_WINDOW\n      bucketDuration: {bucket}\n{extra}",
        bucket = bucket_for(window)
    )
}

fn bucket_for(window: &str) -> &'static str {
    match window {
        "2s" => "200ms",
        "500ms" => "50ms",
        _ => "100ms",
    }
}

pub async fn windows(make: &Factory) {
    let q = make(&params(5, "1s", ""));
    let d = dims(&[]);
    for _ in 0..5 {
        assert_eq!(take(&*q, &d, 1, false, "").await, 1);
    }
    assert_eq!(take(&*q, &d, 1, false, "").await, 0, "the sixth call in the window is denied");
    // Another dimension value is another counter.
    assert_eq!(take(&*q, &with(&d, "user", "b"), 1, false, "").await, 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(take(&*q, &d, 5, false, "").await, 5, "a full window later everything is back");
}

pub async fn overrides(make: &Factory) {
    let q = make(&params(2, "1s", "      overrides:\n      - dimensions: {user: vip}\n        maxAmount: 10\n"));
    let d = dims(&[]);
    let vip = with(&d, "user", "vip");
    let plain = with(&d, "user", "joe");
    assert_eq!(take(&*q, &vip, 10, false, "").await, 10);
    assert_eq!(take(&*q, &vip, 1, false, "").await, 0);
    assert_eq!(take(&*q, &plain, 3, false, "").await, 0, "all or nothing above the default limit");
    assert_eq!(take(&*q, &plain, 2, false, "").await, 2);
}

pub async fn best_effort(make: &Factory) {
    let q = make(&params(5, "1s", ""));
    let d = dims(&[]);
    assert_eq!(take(&*q, &d, 3, false, "").await, 3);
    assert_eq!(take(&*q, &d, 3, false, "").await, 0, "all-or-nothing grants nothing");
    assert_eq!(take(&*q, &d, 3, true, "").await, 2, "best effort grants what is left");
    assert_eq!(take(&*q, &d, 1, true, "").await, 0);
}

pub async fn dedup(make: &Factory) {
    let q = make(&params(2, "1s", ""));
    let d = dims(&[]);
    assert_eq!(take(&*q, &d, 2, false, "req-1").await, 2);
    assert_eq!(take(&*q, &d, 2, false, "req-1").await, 2, "a retried request gets its earlier answer");
    assert_eq!(take(&*q, &d, 1, false, "req-2").await, 0, "and was not charged twice");
}

pub async fn rolling_expiry(make: &Factory) {
    let q = make(&params(4, "2s", ""));
    let d = dims(&[]);
    let t0 = Instant::now();
    assert_eq!(take(&*q, &d, 2, false, "").await, 2);
    tokio::time::sleep_until((t0 + Duration::from_millis(1000)).into()).await;
    assert_eq!(take(&*q, &d, 2, false, "").await, 2);
    assert_eq!(take(&*q, &d, 1, false, "").await, 0);
    // At 2.5 s the first grant (t=0) has left the window, the second (t=1 s) has not.
    tokio::time::sleep_until((t0 + Duration::from_millis(2500)).into()).await;
    assert_eq!(take(&*q, &d, 2, false, "").await, 2);
    assert_eq!(take(&*q, &d, 1, false, "").await, 0);
}

/// Many concurrent callers for a while; no window of 500 ms may see more than 20 granted.
/// Each grant is known to have happened between its call's start and end: counting only
/// grants whose whole call lies inside a window undercounts, so exceeding the limit there
/// proves an overshoot.
pub async fn exact_under_concurrency(make: &Factory) {
    let q = make(&params(20, "500ms", ""));
    let d = Arc::new(dims(&[]));
    let end = Instant::now() + Duration::from_millis(2200);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let q = q.clone();
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let mut grants = Vec::new();
            while Instant::now() < end {
                let before = Instant::now();
                let g = take(&*q, &d, 1, false, "").await;
                if g > 0 {
                    grants.push((before, Instant::now(), g));
                }
                tokio::task::yield_now().await;
            }
            grants
        }));
    }
    let mut grants = Vec::new();
    for t in tasks {
        grants.extend(t.await.expect("task"));
    }
    let total: i64 = grants.iter().map(|g| g.2).sum();
    assert!(total >= 40, "the limit should be reached in several windows, got {total}");
    let window = Duration::from_millis(500);
    for &(start, _, _) in &grants {
        let inside: i64 = grants.iter().filter(|(b, a, _)| *b >= start && *a < start + window).map(|g| g.2).sum();
        assert!(inside <= 20, "{inside} granted within one 500 ms window");
    }
}

mod memquota_suite {
    use super::*;
    use crate::clock::SystemClock;
    use crate::memquota::{MemQuota, parse};

    fn make(params: &str) -> Arc<dyn QuotaHandler> {
        // memquota has no bucket settings: drop them (its ticks are 1/10 of these windows).
        let params: String = params
            .lines()
            .filter(|l| !l.contains("rateLimitAlgorithm") && !l.contains("bucketDuration"))
            .map(|l| format!("{l}\n"))
            .collect();
        Arc::new(MemQuota::new(parse(&handler_doc("memquota", &params)).unwrap(), Arc::new(SystemClock)))
    }

    #[tokio::test]
    async fn windows() {
        super::windows(&make).await;
    }

    #[tokio::test]
    async fn overrides() {
        super::overrides(&make).await;
    }

    #[tokio::test]
    async fn best_effort() {
        super::best_effort(&make).await;
    }

    #[tokio::test]
    async fn dedup() {
        super::dedup(&make).await;
    }

    #[tokio::test]
    async fn rolling_expiry() {
        super::rolling_expiry(&make).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn exact_under_concurrency() {
        super::exact_under_concurrency(&make).await;
    }
}
