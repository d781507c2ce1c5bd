//! redisquota against real Redis: the shared quota suite, fixed windows, script reloads,
//! two replicas sharing one limit, and Redis dying and coming back.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{RedisQuota, parse};
use crate::quota::tests::{INSTANCE, dims, handler_doc, params, take};
use crate::registry::BuildContext;
use crate::variety::{QuotaArgs, QuotaHandler, code};

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn redisquota(params: &str, url: &str) -> Arc<RedisQuota> {
    redisquota_within(params, url, "500ms")
}

fn redisquota_within(params: &str, url: &str, timeout: &str) -> Arc<RedisQuota> {
    let p = format!("{params}    redisServerUrl: {url}\n    timeout: {timeout}\n");
    let q = RedisQuota::new(
        "q.istio-system".into(),
        parse(&handler_doc("redisquota", &p)).unwrap(),
        &BuildContext::default(),
    );
    Arc::new(q.unwrap())
}

fn make(params: &str) -> Arc<dyn QuotaHandler> {
    redisquota(params, &redis_url())
}

#[tokio::test]
async fn windows() {
    crate::quota::tests::windows(&make).await;
}

#[tokio::test]
async fn overrides() {
    crate::quota::tests::overrides(&make).await;
}

#[tokio::test]
async fn best_effort() {
    crate::quota::tests::best_effort(&make).await;
}

#[tokio::test]
async fn dedup() {
    crate::quota::tests::dedup(&make).await;
}

#[tokio::test]
async fn rolling_expiry() {
    crate::quota::tests::rolling_expiry(&make).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_under_concurrency() {
    crate::quota::tests::exact_under_concurrency(&make).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_one_limit() {
    let p = params(30, "2s", "");
    let (a, b) = (make(&p), make(&p));
    let d = Arc::new(dims(&[]));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let q = if i % 2 == 0 { a.clone() } else { b.clone() };
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..10 {
                n += take(&*q, &d, 1, false, "").await;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 30, "160 requests over two handlers, one limit of 30");
}

#[tokio::test]
async fn fixed_window_resets_at_the_window_end() {
    let p = "    quotas:\n    - name: requestcount\n      maxAmount: 3\n      validDuration: 1s\n      rateLimitAlgorithm: FIXED_WINDOW\n";
    let q = make(p);
    let d = dims(&[]);
    let r = q.alloc(&d, INSTANCE, QuotaArgs { dedup_id: String::new(), amount: 3, best_effort: false }).await;
    assert_eq!(r.granted, 3);
    let l = r.limit.unwrap();
    assert_eq!((l.max_amount, l.remaining), (3, 0));
    assert!(
        l.reset_after <= Duration::from_secs(1) && l.reset_after > Duration::from_millis(500),
        "{:?}",
        l.reset_after
    );
    assert_eq!(take(&*q, &d, 1, false, "").await, 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(take(&*q, &d, 3, false, "").await, 3);
}

#[tokio::test]
async fn script_is_loaded_again_after_a_flush() {
    let q = make(&params(5, "1s", ""));
    let d = dims(&[]);
    assert_eq!(take(&*q, &d, 1, false, "").await, 1);
    let client = redis::Client::open(redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut con).await.unwrap();
    assert_eq!(take(&*q, &d, 1, false, "").await, 1, "NOSCRIPT is answered by loading the script");
}

#[tokio::test]
async fn keys_share_one_cluster_slot() {
    let q = make(&params(5, "1s", ""));
    let d = crate::quota::tests::with(&dims(&[]), "weird", "a{b}c");
    assert_eq!(take(&*q, &d, 1, false, "x").await, 1);
    let client = redis::Client::open(redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let run = d.maps[0].1[0].1.to_text();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("mixr:*{run}*")).query_async(&mut con).await.unwrap();
    // The rolling counter (one hash of its buckets) and the dedup record.
    assert_eq!(keys.len(), 2, "{keys:?}");
    // Redis Cluster hashes only the text between the first '{' and the next '}'.
    let tag = |k: &str| -> String {
        let open = k.find('{').expect("hash tag");
        let close = open + 1 + k[open + 1..].find('}').expect("closing brace");
        k[open + 1..close].to_string()
    };
    let tags: Vec<String> = keys.iter().map(|k| tag(k)).collect();
    assert!(tags.iter().all(|t| *t == tags[0] && !t.is_empty()), "{keys:?}");
    assert!(tags[0].contains("a%7Bb%7Dc"), "braces in values are escaped: {}", tags[0]);
}

/// A redis-server of our own, on a free port, that the test may kill.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (it is on CI: see .ci/run)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis { child, port }
    }

    fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn timed(
    q: &dyn QuotaHandler,
    d: &mixr_rules::snapshot::InstanceValues,
) -> (crate::variety::QuotaResult, Duration) {
    let start = Instant::now();
    let r = q.alloc(d, INSTANCE, QuotaArgs { dedup_id: String::new(), amount: 1, best_effort: false }).await;
    (r, start.elapsed())
}

#[tokio::test]
async fn redis_dies_and_returns() {
    let redis = OwnRedis::start(free_port());
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let base = params(1000, "1s", "");
    let closed = redisquota(&base, &url);
    let open = redisquota(&format!("{base}    failOpen: true\n"), &url);
    let d = dims(&[]);
    assert_eq!(timed(&*closed, &d).await.0.granted, 1);
    assert_eq!(timed(&*open, &d).await.0.granted, 1);

    let port = redis.kill();
    for _ in 0..5 {
        let (r, took) = timed(&*closed, &d).await;
        assert_eq!((r.granted, r.status.code), (0, code::UNAVAILABLE), "fail closed: {:?}", r.status);
        assert!(took < Duration::from_millis(700), "a call waited {took:?}, beyond the 500 ms timeout");
        let (r, took) = timed(&*open, &d).await;
        assert!(r.status.is_ok() && r.granted == 1, "fail open grants: {:?}", r.status);
        assert!(took < Duration::from_millis(700), "a call waited {took:?}");
    }

    let _back = OwnRedis::start(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (r, _) = timed(&*closed, &d).await;
        if r.status.is_ok() && r.granted == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the handler did not reconnect by itself: {:?}", r.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn param_errors() {
    let err = |p: &str| parse(&handler_doc("redisquota", p)).unwrap_err().to_string();
    assert!(
        err("    quotas:\n    - {name: a, maxAmount: 1, validDuration: 1s, rateLimitAlgorithm: ROLLING_WINDOW}\n")
            .contains("ROLLING_WINDOW needs 0 < bucketDuration < validDuration")
    );
    assert!(err("    quotas:\n    - {name: a, maxAmount: 1, validDuration: 1s, rateLimitAlgorithm: ROLLING_WINDOW, bucketDuration: 2s}\n").contains("bucketDuration"));
    assert!(err("    quotas:\n    - {name: a, maxAmount: 1}\n").contains("validDuration: must be greater than 0"));
    assert!(
        err("    quotas:\n    - {name: a, maxAmount: 1, validDuration: 1s}\n    redisServerUrl: 'ftp://x'\n")
            .contains("redisServerUrl")
    );
    assert!(
        err("    quotas:\n    - {name: a, maxAmount: 1, validDuration: 1s}\n    connectionPoolSize: 0\n")
            .contains("between 1 and 1000")
    );
}

/// Three redis-server processes forming a Cluster on free ports, removed on drop.
struct OwnCluster {
    nodes: Vec<OwnRedis>,
    _dir: tempfile::TempDir,
}

impl OwnCluster {
    fn start() -> OwnCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes: Vec<OwnRedis> = ports
            .iter()
            .map(|&port| {
                let conf = dir.path().join(format!("nodes-{port}.conf"));
                let child = Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--cluster-enabled", "yes", "--cluster-config-file", conf.to_str().unwrap()])
                    .current_dir(dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server");
                let deadline = Instant::now() + Duration::from_secs(10);
                while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                    assert!(Instant::now() < deadline, "redis-server did not start");
                    std::thread::sleep(Duration::from_millis(20));
                }
                OwnRedis { child, port }
            })
            .collect();
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (package redis-tools)");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info =
                Command::new("redis-cli").args(["-p", &ports[0].to_string(), "cluster", "info"]).output().unwrap();
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < deadline, "cluster did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        OwnCluster { nodes, _dir: dir }
    }

    fn url(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        format!("redis+cluster://{}", nodes.join(","))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_redis_cluster() {
    let cluster = OwnCluster::start();
    let url = cluster.url();
    // Keys of many different counters land on all three nodes; each counter's keys in one
    // slot (a CROSSSLOT error would fail the script).
    // Discovering the cluster's slots takes a few round trips on first use: a generous
    // timeout keeps a busy CI machine from failing the first call.
    let q = redisquota_within(&params(3, "60s", ""), &url, "10s");
    for i in 0..20 {
        let d = dims(&[("tenant", &format!("t{i}"))]);
        assert_eq!(take(&*q, &d, 2, false, &format!("dedup-{i}")).await, 2);
        assert_eq!(take(&*q, &d, 2, false, "").await, 0);
        assert_eq!(take(&*q, &d, 2, true, "").await, 1);
    }
}

/// The key of the one counter a handler made for `d` (its dimension `weird` is unique).
async fn counter_key(con: &mut redis::aio::MultiplexedConnection, run: &str) -> String {
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("mixr:*{run}*:c")).query_async(con).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys[0].clone()
}

#[tokio::test]
async fn rolling_counters_of_the_earlier_two_key_layout_keep_counting() {
    // Earlier versions kept a rolling counter's ticks in a sorted set beside the hash; the
    // hash (`sum`, `b<tick>`) is read whole when it has no `lo`, so a counter written by an
    // older replica still counts after an upgrade.
    let q = make(&params(10, "1s", ""));
    let run = format!("legacy{}", std::process::id());
    let d = crate::quota::tests::with(&dims(&[]), "weird", &run);
    assert_eq!(take(&*q, &d, 1, false, "").await, 1);
    let client = redis::Client::open(redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let key = counter_key(&mut con, &run).await;
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut con).await.unwrap();
    let tick = (secs * 1_000_000 + micros) / 100_000;
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut con).await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("sum")
        .arg(7)
        .arg(format!("b{}", tick - 2))
        .arg(4)
        .arg(format!("b{}", tick - 40))
        .arg(3)
        .query_async(&mut con)
        .await
        .unwrap();
    // The bucket 40 ticks back has retired (3); the one 2 ticks back (4) still counts.
    assert_eq!(take(&*q, &d, 7, false, "").await, 0, "4 + 7 is over 10");
    assert_eq!(take(&*q, &d, 6, false, "").await, 6);
    assert_eq!(take(&*q, &d, 1, false, "").await, 0);
    let sum: i64 = redis::cmd("HGET").arg(&key).arg("sum").query_async(&mut con).await.unwrap();
    assert_eq!(sum, 10);
}

#[tokio::test]
async fn rolling_windows_of_many_small_buckets_retire_exactly() {
    // 1 ms buckets over 300 ms: live grants span far more than the 64 buckets read tick by
    // tick, so retiring them reads the whole counter.
    let p = "    quotas:\n    - name: requestcount\n      maxAmount: 4\n      validDuration: 300ms\n      rateLimitAlgorithm: ROLLING_WINDOW\n      bucketDuration: 1ms\n";
    let q = make(p);
    let run = format!("tiny{}", std::process::id());
    let d = crate::quota::tests::with(&dims(&[]), "weird", &run);
    let start = Instant::now();
    for _ in 0..4 {
        assert_eq!(take(&*q, &d, 1, false, "").await, 1);
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    if start.elapsed() < Duration::from_millis(300) {
        assert_eq!(take(&*q, &d, 1, false, "").await, 0, "four grants within the window");
    }
    // The first grant retires 301-302 ms after it; the others stay.
    tokio::time::sleep(Duration::from_millis(330).saturating_sub(start.elapsed().min(Duration::from_millis(330))))
        .await;
    let r = q.alloc(&d, INSTANCE, QuotaArgs { dedup_id: String::new(), amount: 2, best_effort: true }).await;
    assert!(r.granted >= 1, "at least the first grant retired: {r:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(take(&*q, &d, 4, false, "").await, 4, "everything retired");
    let client = redis::Client::open(redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let key = counter_key(&mut con, &run).await;
    let fields: Vec<String> = redis::cmd("HKEYS").arg(&key).query_async(&mut con).await.unwrap();
    let buckets = fields.iter().filter(|f| f.starts_with('b')).count();
    assert_eq!(buckets, 1, "retired buckets are deleted: {fields:?}");
}
