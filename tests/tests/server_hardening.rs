//! mixr (and, for config loading, mixr-proxy) against hostile or careless input: reloads
//! on real changes only, Kubernetes ConfigMap mounts, expression and YAML depth, bounded
//! metric series, Report memory, redacted passwords, connection limits and deadlines,
//! file-descriptor exhaustion. Each test drives the real binaries over real sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mixr_e2e::{Mixr, MixrProxy, binary, check_request, eventually, precondition};
use mixr_proto::istio::mixer::v1::ReportRequest;
use mixr_proto::istio::mixer::v1::check_request::QuotaParams;
use mixr_proto::istio::mixer::v1::report_request::RepeatedAttributesSemantics;
use mixr_rules::bag::Encoder;
use mixr_rules::value::Value;

const DENY_ADMIN: &str = "apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: deny}
spec: {compiledAdapter: denier, params: {status: {code: 7, message: no}}}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: nothing}
spec: {compiledTemplate: checknothing}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: r}
spec:
  match: MATCH
  actions: [{handler: deny, instances: [nothing]}]
";

fn policy(matcher: &str) -> String {
    DENY_ADMIN.replace("MATCH", matcher)
}

fn s(v: &str) -> Value<'static> {
    Value::String(v.to_string().into())
}

async fn denied(mixr: &Mixr, path: &str) -> bool {
    let mut client = mixr.client().await;
    let resp = client.check(check_request(&[("request.path", s(path))])).await.unwrap().into_inner();
    precondition(&resp).0 == 7
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[tokio::test]
async fn config_reloads_on_real_changes_only_and_reports_a_bad_one_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy("request.path == \"/admin\"")).unwrap();
    let mixr = Mixr::start(&[dir.path()], &[]);
    let generation = || async { mixr.metric("mixr_config_generation").await };
    assert_eq!(generation().await, Some(1.0));

    // Reading the files (as `cat`, and the reload itself, do) is not a change.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let _ = std::fs::read_to_string(&file).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(generation().await, Some(1.0));
    assert_eq!(count(&mixr.logs(), "config loaded"), 1, "{}", mixr.logs());

    // A broken config is reported once, however often the files are then read or touched.
    std::fs::write(&file, policy("request.path ==")).unwrap();
    assert!(eventually(Duration::from_secs(10), || async { mixr.logs().contains("config rejected") }).await);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let _ = std::fs::read_to_string(&file).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = Command::new("touch").arg(&file).status().unwrap();
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(count(&mixr.logs(), "keeping the last good config"), 1, "{}", mixr.logs());
    assert!(denied(&mixr, "/admin").await, "the last good config still serves");

    std::fs::write(&file, policy("request.path == \"/root\"")).unwrap();
    assert!(eventually(Duration::from_secs(10), || async { generation().await == Some(2.0) }).await);
    assert!(denied(&mixr, "/root").await && !denied(&mixr, "/admin").await);
}

/// A directory laid out as the kubelet mounts a ConfigMap: the files live in a timestamped
/// hidden directory, `..data` points at it, and each name is a symlink through `..data`.
struct ConfigMapDir {
    dir: tempfile::TempDir,
    version: usize,
}

impl ConfigMapDir {
    fn new(files: &[(&str, &str)]) -> ConfigMapDir {
        let mut c = ConfigMapDir { dir: tempfile::tempdir().unwrap(), version: 0 };
        c.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), c.dir.path().join(name)).unwrap();
        }
        c
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// What the kubelet does on an update: a new timestamped directory, a `..data_tmp`
    /// symlink to it renamed over `..data` (atomically), the old directory removed.
    fn update(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let root = self.dir.path();
        let stamped = format!("..2026_12_02_10_00_0{}.{}", self.version, 1000 + self.version);
        std::fs::create_dir(root.join(&stamped)).unwrap();
        for (name, text) in files {
            std::fs::write(root.join(&stamped).join(name), text).unwrap();
        }
        let old = std::fs::read_link(root.join("..data")).ok();
        std::os::unix::fs::symlink(&stamped, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(root.join(old)).unwrap();
        }
    }
}

const SERVICE_ENTRY: &str = "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: backend}
spec:
  hosts: [backend.local]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: NAME}
spec:
  hosts: [backend.local]
  http:
  - route: [{destination: {host: backend.local}}]
";

#[tokio::test]
async fn configmap_mounts_load_once_and_follow_the_kubelets_atomic_swap() {
    let mut mount = ConfigMapDir::new(&[("policy.yaml", &policy("request.path == \"/admin\""))]);
    let out = Command::new(binary("mixr")).arg("validate").arg(mount.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok: 1 handlers, 1 instances, 1 rules"));
    let mixr = Mixr::start(&[&mount.path()], &[]);
    assert!(denied(&mixr, "/admin").await);
    mount.update(&[("policy.yaml", &policy("request.path == \"/root\""))]);
    assert!(
        eventually(Duration::from_secs(10), || async { mixr.metric("mixr_config_generation").await == Some(2.0) })
            .await,
        "{}",
        mixr.logs()
    );
    assert!(denied(&mixr, "/root").await && !denied(&mixr, "/admin").await);

    let mut traffic = ConfigMapDir::new(&[("traffic.yaml", &SERVICE_ENTRY.replace("NAME", "first"))]);
    let proxy = MixrProxy::start(&[&traffic.path()], &[]);
    let dump = || async {
        let text = reqwest::get(format!("http://{}/config_dump", proxy.admin)).await.unwrap().text().await.unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let first = dump().await;
    assert_eq!(first["virtualServices"].as_array().unwrap().len(), 1, "loaded once, not through ..data too: {first}");
    traffic.update(&[("traffic.yaml", &SERVICE_ENTRY.replace("NAME", "second"))]);
    assert!(
        eventually(Duration::from_secs(10), || async { dump().await["virtualServices"][0]["name"] == "second" }).await,
        "{}",
        proxy.logs()
    );
    assert_eq!(dump().await["generation"], 2);
}

#[tokio::test]
async fn expression_depth_holds_through_validate_start_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let chain = (0..100_000).map(|i| format!("request.path == \"/p{i}\"")).collect::<Vec<_>>().join(" || ");
    let nested = format!("{}request.path == \"/x\"{}", "(".repeat(100_000), ")".repeat(100_000));
    let chain_file = dir.path().join("chain.yaml");
    let nested_file = dir.path().join("nested.yaml");
    std::fs::write(&chain_file, policy(&format!("'{chain}'"))).unwrap();
    std::fs::write(&nested_file, policy(&format!("'{nested}'"))).unwrap();

    let out = Command::new(binary("mixr")).arg("validate").arg(&chain_file).output().unwrap();
    assert!(out.status.success(), "a long chain is fine: {}", String::from_utf8_lossy(&out.stdout));
    let out = Command::new(binary("mixr")).arg("validate").arg(&nested_file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nested deeper than 50 levels"));

    let out = Command::new(binary("mixr"))
        .args(["serve", "--grpc-addr=127.0.0.1:0", "--monitoring-addr=127.0.0.1:0", "--config"])
        .arg(&nested_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a config that cannot load is fatal at start");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nested deeper than 50 levels"));

    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    std::fs::write(live.join("policy.yaml"), policy("request.path == \"/admin\"")).unwrap();
    let mixr = Mixr::start(&[&live], &[]);
    std::fs::copy(&nested_file, live.join("policy.yaml")).unwrap();
    assert!(eventually(Duration::from_secs(10), || async { mixr.logs().contains("nested deeper than") }).await);
    assert!(denied(&mixr, "/admin").await, "rejected on reload; the server keeps serving");
    std::fs::copy(&chain_file, live.join("policy.yaml")).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async { mixr.metric("mixr_config_generation").await == Some(2.0) })
            .await
    );
    assert!(denied(&mixr, "/p99999").await && !denied(&mixr, "/admin").await);
}

#[tokio::test]
async fn deeply_nested_yaml_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nested.yaml");
    std::fs::write(&file, "[".repeat(100_000)).unwrap();
    let started = Instant::now();
    let out = Command::new(binary("mixr")).arg("validate").arg(&file).output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    assert!(String::from_utf8_lossy(&out.stdout).contains("collections nested deeper than 64 levels"));

    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    std::fs::write(live.join("policy.yaml"), policy("request.path == \"/admin\"")).unwrap();
    let mixr = Mixr::start(&[&live], &[]);
    std::fs::copy(&file, live.join("policy.yaml")).unwrap();
    assert!(eventually(Duration::from_secs(10), || async { mixr.logs().contains("nested deeper than 64") }).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&mixr.logs(), "nested deeper than 64"), 1, "rejected once, not in a loop");
    assert!(denied(&mixr, "/admin").await);
}

#[tokio::test]
async fn callers_cannot_mint_metric_series() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy("request.path == \"/admin\"")).unwrap();
    let mixr = Mixr::start(&[&file], &[]);
    let mut client = mixr.client().await;
    for batch in 0..5 {
        let mut req = check_request(&[("request.path", s("/"))]);
        for i in 0..2_000 {
            req.quotas.insert(format!("q{batch}-{i}"), QuotaParams { amount: 1, best_effort: false });
        }
        let resp = client.check(req).await.unwrap().into_inner();
        assert_eq!(resp.quotas.len(), 2_000);
    }
    let (_, metrics) = mixr.http_get("/metrics").await;
    let series: Vec<&str> = metrics.lines().filter(|l| l.starts_with("mixr_quota_unconfigured_total{")).collect();
    assert_eq!(series.len(), 101, "100 names and `other`");
    assert!(metrics.contains("mixr_quota_unconfigured_total{quota=\"other\"} 9900"), "{series:?}");
    assert_eq!(count(&mixr.logs(), "no rule selects it"), 100);
}

fn rss_peak_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_large_report_costs_memory_in_proportion_to_its_size() {
    let telemetry = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/examples/telemetry.yaml");
    let mixr = Mixr::start(&[&telemetry], &[]);
    let mut client = mixr.client().await;
    // Warm up: the first Report allocates what every Report reuses.
    let mut enc = Encoder::new();
    let entry = |i: i64| {
        vec![
            ("context.protocol", s("http")),
            ("response.code", Value::Int64(200 + i % 3)),
            ("request.size", Value::Int64(i)),
        ]
    };
    let small: Vec<_> = (0..100).map(|i| enc.encode(entry(i).iter().map(|(k, v)| (*k, v)))).collect();
    let words = enc.into_words();
    let request = |attributes| ReportRequest {
        attributes,
        default_words: words.clone(),
        global_word_count: Encoder::global_word_count(),
        repeated_attributes_semantics: RepeatedAttributesSemantics::DeltaEncoding as i32,
    };
    client.report(request(small)).await.unwrap();
    let before = rss_peak_kb(mixr.pid());
    let mut enc = Encoder::new();
    let entries: Vec<_> = (0..100_000).map(|i| enc.encode(entry(i).iter().map(|(k, v)| (*k, v)))).collect();
    let big = request(entries);
    let encoded_kb = prost::Message::encoded_len(&big) as u64 / 1024;
    client.report(big).await.unwrap();
    let grown = rss_peak_kb(mixr.pid()).saturating_sub(before);
    println!("Report of 100,000 entries: {encoded_kb} KiB encoded, peak RSS grew {grown} KiB");
    // The message itself (held by the gRPC layer while it is served), twice over for its
    // decoding buffers, plus a fixed allowance for the chunk in flight.
    assert!(grown < 3 * encoded_kb + 8 * 1024, "peak RSS grew {grown} KiB for a {encoded_kb} KiB Report");
    assert_eq!(mixr.metric("mixr_report_entries_total{api=\"mixer\"}").await, Some(100_100.0));
}

#[tokio::test]
async fn passwords_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrets.yaml");
    let config = "apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: quota}
spec:
  compiledAdapter: redisquota
  params:
    redisServerUrl: 'redis://:s3cret-redis@127.0.0.1:1'
    timeout: 50ms
    quotas: [{name: rq, maxAmount: 5, validDuration: 1s}]
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: rq}
spec: {compiledTemplate: quota, params: {dimensions: {}}}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: q}
spec: {actions: [{handler: quota, instances: [rq]}]}
---
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: logs}
spec: {compiledAdapter: sqllog, params: {url: 'postgres://mixr:s3cret-pg@127.0.0.1:1/logs', flushInterval: 50ms}}
---
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: list}
spec: {compiledAdapter: listchecker, params: {providerUrl: 'http://lists:s3cret-http@127.0.0.1:1/list', refreshInterval: 1s}}
";
    std::fs::write(&file, config).unwrap();
    let mixr = Mixr::start(&[&file], &["--log-level", "debug"]);
    let mut client = mixr.client().await;
    let mut req = check_request(&[("request.path", s("/"))]);
    req.quotas.insert("rq".into(), QuotaParams { amount: 1, best_effort: false });
    let _ = client.check(req).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, debug) = mixr.http_get("/debug/config").await;
    let (_, metrics) = mixr.http_get("/metrics").await;
    let logs = mixr.logs();
    assert!(logs.contains("127.0.0.1:1"), "the failures were logged: {logs}");
    for (what, text) in [("logs", &logs), ("/debug/config", &debug), ("/metrics", &metrics)] {
        assert!(!text.contains("s3cret"), "a password in {what}:\n{text}");
    }

    // Config errors that quote a URL redact it too.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        config
            .replace("redis://:s3cret-redis@127.0.0.1:1", "redis://:s3cret-redis@127.0.0.1:notaport")
            .replace("http://lists:s3cret-http@", "gopher://lists:s3cret-http@"),
    )
    .unwrap();
    let out = Command::new(binary("mixr")).arg("validate").arg(&bad).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("redis://:****@127.0.0.1:notaport") && text.contains("gopher://lists:****@"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

/// Whether the server closed `conn` (within `within`).
fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    conn.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[tokio::test]
async fn silent_connections_are_dropped_and_connections_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy("request.path == \"/admin\"")).unwrap();
    let mixr = Mixr::start(
        &[&file],
        &["--handshake-timeout", "1s", "--grpc-max-connections", "4", "--monitoring-max-connections", "3"],
    );
    // No HTTP/2 preface, or half a request head: closed after the handshake timeout.
    let mut silent = TcpStream::connect(&mixr.grpc).unwrap();
    let mut half = TcpStream::connect(&mixr.monitoring).unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(5)), "gRPC: a silent connection is closed");
    assert!(closed_within(&mut half, Duration::from_secs(5)), "monitoring: a slow head is closed");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());

    // Past the limit, a new connection is closed at once; those held keep working.
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&mixr.monitoring).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(&mixr.monitoring).unwrap();
    assert!(closed_within(&mut extra, Duration::from_secs(3)), "the fourth monitoring connection");
    let mut first = held.into_iter().next().unwrap();
    first.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    first.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let _grpc_held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&mixr.grpc).unwrap()).collect();
    assert!(denied(&mixr, "/admin").await, "a real client gets the fourth slot");
    assert!(mixr.logs().contains("connection limit reached"));
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn running_out_of_file_descriptors_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy("request.path == \"/admin\"")).unwrap();
    let mixr = Mixr::start_wrapped(&["prlimit", "--nofile=64:64"], &[&file], &[]);
    // More connections than descriptors left: accept fails with EMFILE until some close.
    let conns: Vec<TcpStream> = (0..120).filter_map(|_| TcpStream::connect(&mixr.monitoring).ok()).collect();
    let ticks = cpu_ticks(mixr.pid());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spent = cpu_ticks(mixr.pid()) - ticks;
    let logs = mixr.logs();
    let lines = count(&logs, "cannot accept connections");
    assert!((1..=5).contains(&lines), "{lines} lines in 3 s:\n{logs}");
    assert!(spent < 100, "{spent} ticks of CPU in 3 s: the accept loop spins");
    drop(conns);
    assert!(
        eventually(Duration::from_secs(5), || async {
            reqwest::get(format!("http://{}/healthz", mixr.monitoring)).await.is_ok_and(|r| r.status() == 200)
        })
        .await,
        "serves again once descriptors are free"
    );
}
