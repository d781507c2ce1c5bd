//! memquota with a controlled clock: exactness at every instant, expiry, memory, reloads.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::ManualClock;
use crate::memquota::{MemQuota, parse};
use crate::quota::tests::{INSTANCE, dims, handler_doc, take};
use crate::variety::{QuotaArgs, QuotaHandler};

fn memquota(params: &str, clock: Arc<ManualClock>) -> Arc<MemQuota> {
    Arc::new(MemQuota::new(parse(&handler_doc("memquota", params)).unwrap(), clock))
}

const PER_SECOND_10: &str = "    quotas:\n    - name: requestcount\n      maxAmount: 10\n      validDuration: 1s\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_grants_never_exceed_the_limit_in_any_window() {
    let clock = Arc::new(ManualClock::default());
    let q = memquota(PER_SECOND_10, clock.clone());
    let d = Arc::new(dims(&[]));
    // Time stands still while 64 callers race; then it moves 37 ms (not a tick multiple).
    let mut series: Vec<(Duration, i64)> = Vec::new();
    let mut now = Duration::ZERO;
    for _ in 0..120 {
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let q = q.clone();
            let d = d.clone();
            tasks.push(tokio::spawn(async move { take(&*q, &d, 1, false, "").await }));
        }
        let mut granted = 0;
        for t in tasks {
            granted += t.await.unwrap();
        }
        series.push((now, granted));
        clock.advance(Duration::from_millis(37));
        now += Duration::from_millis(37);
    }
    let total: i64 = series.iter().map(|s| s.1).sum();
    assert!(total >= 40, "{total}");
    for (i, &(start, _)) in series.iter().enumerate() {
        let in_window: i64 =
            series[i..].iter().take_while(|(t, _)| *t < start + Duration::from_secs(1)).map(|s| s.1).sum();
        assert!(in_window <= 10, "{in_window} granted in the window starting at {start:?}");
    }
}

#[tokio::test]
async fn allocation_counters_release_with_negative_amounts() {
    let clock = Arc::new(ManualClock::default());
    let q = memquota("    quotas:\n    - name: requestcount\n      maxAmount: 3\n", clock.clone());
    let d = dims(&[]);
    assert_eq!(take(&*q, &d, 3, false, "").await, 3);
    clock.advance(Duration::from_secs(3600));
    assert_eq!(take(&*q, &d, 1, false, "").await, 0, "no window: nothing comes back by itself");
    assert_eq!(take(&*q, &d, -2, false, "").await, -2);
    assert_eq!(take(&*q, &d, 2, false, "").await, 2);
}

#[tokio::test]
async fn dedup_is_remembered_for_one_to_two_intervals() {
    let clock = Arc::new(ManualClock::default());
    let q = memquota(&format!("{PER_SECOND_10}    minDeduplicationDuration: 1s\n"), clock.clone());
    let d = dims(&[]);
    assert_eq!(take(&*q, &d, 4, false, "x").await, 4);
    clock.advance(Duration::from_millis(900));
    assert_eq!(take(&*q, &d, 4, false, "x").await, 4);
    assert_eq!(take(&*q, &d, 7, true, "").await, 6, "replays do not charge");
    clock.advance(Duration::from_secs(3));
    assert_eq!(take(&*q, &d, 4, false, "x").await, 4, "after two intervals the id is new: charged afresh");
    assert_eq!(take(&*q, &d, 7, true, "").await, 6);
}

#[tokio::test]
async fn unconfigured_instance_is_an_error_not_a_grant() {
    let q = memquota(PER_SECOND_10, Arc::new(ManualClock::default()));
    let r = q
        .alloc(
            &dims(&[]),
            "other.instance.istio-system",
            QuotaArgs { dedup_id: String::new(), amount: 1, best_effort: false },
        )
        .await;
    assert_eq!(r.granted, 0);
    assert_eq!(r.status.code, crate::variety::code::INTERNAL);
    assert!(
        q.alloc(&dims(&[]), INSTANCE, QuotaArgs { dedup_id: String::new(), amount: 1, best_effort: false })
            .await
            .status
            .is_ok()
    );
}

#[tokio::test]
async fn answers_report_the_limit_and_reset() {
    let clock = Arc::new(ManualClock::default());
    let q = memquota(PER_SECOND_10, clock.clone());
    let d = dims(&[]);
    let r = q.alloc(&d, INSTANCE, QuotaArgs { dedup_id: String::new(), amount: 4, best_effort: false }).await;
    let l = r.limit.unwrap();
    assert_eq!((r.valid_duration, l.max_amount, l.remaining), (Duration::from_secs(1), 10, 6));
    assert_eq!(l.reset_after, Duration::from_millis(1100), "a grant counts for the window plus at most one tick");
}

#[test]
fn idle_counters_expire_and_a_million_keys_fit_the_budget() {
    let clock = Arc::new(ManualClock::default());
    let q = memquota(PER_SECOND_10, clock.clone());
    let args = QuotaArgs { dedup_id: String::new(), amount: 1, best_effort: false };
    let base = dims(&[]);
    let n = 1_000_000;
    let before = crate::memquota::tests::rss_kib();
    for i in 0..n {
        let inst = crate::quota::tests::with(&base, "user", &format!("u{i}"));
        assert_eq!(q.allocate(&inst, INSTANCE, &args).granted, 1);
    }
    assert_eq!(q.counters(), n);
    let grown = crate::memquota::tests::rss_kib().saturating_sub(before);
    // docs/quotas.md: about 250 bytes a counter; allow headroom for the allocator.
    assert!(grown < 320 * 1024, "1M counters took {grown} KiB");
    eprintln!("1M counters: {grown} KiB resident");
    clock.advance(Duration::from_millis(1050));
    q.sweep();
    assert_eq!(q.counters(), n, "a grant counts for the window plus up to one tick");
    clock.advance(Duration::from_millis(100));
    q.sweep();
    assert_eq!(q.counters(), 0, "idle counters are dropped");
}

pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn param_errors() {
    let err = |p: &str| {
        let text = format!(
            "apiVersion: config.istio.io/v1alpha2\nkind: handler\nmetadata: {{name: q}}\nspec:\n  compiledAdapter: memquota\n  params:\n{p}"
        );
        let (set, errors) = mixr_rules::config::load_str("q.yaml", &text, "istio-system");
        assert!(errors.is_empty());
        parse(&set.handlers[0]).unwrap_err().to_string()
    };
    assert!(
        err("    quotas:\n    - name: a\n      maxAmount: 0\n")
            .ends_with("spec.params.quotas[0].maxAmount: must be greater than 0")
    );
    assert!(
        err("    quotas:\n    - name: a\n      maxAmount: 1\n    - name: a\n      maxAmount: 2\n")
            .contains("configured twice")
    );
    assert!(err("    quotas:\n    - name: a\n      maxAmount: 1\n      overrides:\n      - dimensions: {}\n        maxAmount: 1\n").contains("must not be empty"));
    assert!(err("    {}\n").contains("spec.params.quotas: required field is missing"));
}
