//! Benchmark scenarios: each starts the baseline and mixr, drives both with the same
//! requests, and prints one comparison table.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mixr_proto::istio::mixer::v1::CheckRequest;
use mixr_proto::istio::mixer::v1::mixer_client::MixerClient;
use mixr_rules::bag::Encoder;
use mixr_rules::value::{MapVal, StringMap, Value, ip_to_bytes};
use prost::Message;

use crate::load::{LoadResult, run};
use crate::procstat::{cpu_micros, server_command};

struct Server {
    child: Child,
    endpoint: String,
    monitoring: Option<String>,
}

impl Server {
    /// Sum of a counter over all its series on the monitoring port's /metrics.
    fn counter(&self, name: &str) -> Option<f64> {
        use std::io::{Read, Write};
        let mut sock = std::net::TcpStream::connect(self.monitoring.as_ref()?).ok()?;
        sock.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        sock.read_to_string(&mut body).ok()?;
        Some(
            body.lines()
                .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(program: &Path, args: &[String], addr_file: &Path) -> Result<Server, String> {
    let _ = std::fs::remove_file(addr_file);
    let mut child = server_command(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("start {}: {e}", program.display()))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(addr_file)
            && let Some(addr) = text.lines().find_map(|l| l.strip_prefix("grpc="))
        {
            let monitoring = text.lines().find_map(|l| l.strip_prefix("monitoring=")).map(str::to_string);
            return Ok(Server { endpoint: format!("http://{addr}"), child, monitoring });
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{} exited: {status}", program.display()));
        }
        if Instant::now() > deadline {
            return Err(format!("{} did not start", program.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `mixr serve` on free loopback ports, quiet, without file watching.
fn serve_args(configs: &[PathBuf], addr_file: &Path) -> Vec<String> {
    let mut args = vec!["serve".to_string()];
    for c in configs {
        args.push("--config".into());
        args.push(c.display().to_string());
    }
    args.extend([
        "--grpc-addr=127.0.0.1:0".to_string(),
        "--monitoring-addr=127.0.0.1:0".into(),
        "--no-watch".into(),
        "--log-level=warn".into(),
        "--addr-file".into(),
        addr_file.display().to_string(),
    ]);
    args
}

pub fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = exe.with_file_name(name);
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("{} not found: build it with `cargo build --release --bins`", p.display()))
    }
}

struct Measured {
    name: &'static str,
    load: LoadResult,
    cpu_us_per_call: f64,
    /// CPU of a helper process (Redis) per call, when measured.
    helper_cpu_us_per_call: Option<f64>,
}

impl Measured {
    /// Calls per second one core could serve at the measured CPU cost per call: the
    /// server's throughput when it, not the load generator, is the limit.
    fn capacity(&self) -> f64 {
        if self.cpu_us_per_call > 0.0 { 1e6 / self.cpu_us_per_call } else { 0.0 }
    }
}

const CHECK: &str = "/istio.mixer.v1.Mixer/Check";

async fn measure<M: Message>(
    name: &'static str,
    server: &Server,
    path: &'static str,
    requests: &[M],
    concurrency: usize,
    seconds: Duration,
    helper_pid: Option<u32>,
) -> Result<Measured, String> {
    let pid = server.child.id();
    let mut samples = Vec::new();
    let bodies = requests.iter().map(|r| Bytes::from(r.encode_to_vec())).collect();
    let load = run(&server.endpoint, path, bodies, concurrency, Duration::from_secs(1), seconds, || {
        samples.push((cpu_micros(pid).unwrap_or(0), helper_pid.and_then(cpu_micros).unwrap_or(0)));
    })
    .await?;
    let per_call = |delta: u64| if load.requests > 0 { delta as f64 / load.requests as f64 } else { 0.0 };
    let (cpu, helper) = match (samples.first(), samples.get(1)) {
        (Some(a), Some(b)) => (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)),
        _ => (0, 0),
    };
    Ok(Measured {
        name,
        cpu_us_per_call: per_call(cpu),
        helper_cpu_us_per_call: helper_pid.map(|_| per_call(helper)),
        load,
    })
}

fn table(title: &str, rows: &[Measured]) -> String {
    let mut out = format!("\n{title}\n");
    let _ = writeln!(
        out,
        "{:<16} {:>10} {:>9} {:>9} {:>14} {:>16} {:>14} {:>8}",
        "server", "req/s", "p50 us", "p99 us", "cpu us/call", "1-core req/s", "redis us/call", "errors"
    );
    for r in rows {
        let helper = r.helper_cpu_us_per_call.map_or("-".to_string(), |c| format!("{c:.1}"));
        let _ = writeln!(
            out,
            "{:<16} {:>10.0} {:>9} {:>9} {:>14.1} {:>16.0} {:>14} {:>8}",
            r.name,
            r.load.rps(),
            r.load.percentile_us(0.50),
            r.load.percentile_us(0.99),
            r.cpu_us_per_call,
            r.capacity(),
            helper,
            r.load.errors
        );
    }
    if let [base, rest @ ..] = rows {
        for ours in rest {
            let _ = writeln!(
                out,
                "ratio {}/{}: throughput {:.2}x, single-core capacity {:.2}x, p99 {:.2}x, server CPU per call {:+.1} us",
                ours.name,
                base.name,
                ours.load.rps() / base.load.rps().max(1.0),
                ours.capacity() / base.capacity().max(1.0),
                ours.load.percentile_us(0.99) as f64 / base.load.percentile_us(0.99).max(1) as f64,
                ours.cpu_us_per_call - base.cpu_us_per_call
            );
        }
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> Value<'static> {
    Value::StringMap(MapVal::from(StringMap::new(
        pairs.iter().map(|(k, v)| (Cow::Owned(k.to_string()), Cow::Owned(v.to_string()))).collect(),
    )))
}

/// A request shaped like an Istio sidecar's: ~20 attributes, a dozen headers.
pub fn sidecar_request(service: &str, user: &str, version: &str) -> CheckRequest {
    let s = |v: &str| Value::String(Cow::Owned(v.to_string()));
    let attrs: Vec<(&str, Value<'static>)> = vec![
        (
            "source.ip",
            Value::Bytes(Cow::Owned(ip_to_bytes("10.1.2.3".parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into())))),
        ),
        ("source.uid", s("kubernetes://productpage-v1-6b746f74dc-9stvs.default")),
        ("source.namespace", s("default")),
        ("source.labels", labels(&[("app", "productpage"), ("version", version), ("pod-template-hash", "6b746f74dc")])),
        ("source.principal", s("cluster.local/ns/default/sa/bookinfo-productpage")),
        ("destination.ip", Value::Bytes(Cow::Owned(vec![10, 1, 9, 9]))),
        ("destination.port", Value::Int64(9080)),
        ("destination.uid", s("kubernetes://reviews-v1-7f6558b974-kq6kz.default")),
        ("destination.namespace", s("default")),
        ("destination.service.name", s(service)),
        ("destination.service.host", s(&format!("{service}.default.svc.cluster.local"))),
        ("destination.labels", labels(&[("app", service), ("version", "v1")])),
        ("request.method", s("GET")),
        ("request.path", s("/reviews/0")),
        ("request.host", s(&format!("{service}:9080"))),
        ("request.scheme", s("http")),
        ("request.useragent", s("python-requests/2.18.4")),
        ("request.id", s("2f5d3fd0-7a55-4b5c-9d4c-6f7b2a8c1e01")),
        ("request.size", Value::Int64(0)),
        ("request.time", Value::Timestamp(mixr_rules::value::Timestamp { seconds: 1_700_000_000, nanos: 0 })),
        ("context.protocol", s("http")),
        (
            "request.headers",
            labels(&[
                (":authority", "reviews:9080"),
                (":method", "GET"),
                (":path", "/reviews/0"),
                ("accept", "*/*"),
                ("accept-encoding", "gzip, deflate"),
                ("user-agent", "python-requests/2.18.4"),
                ("x-request-id", "2f5d3fd0-7a55-4b5c-9d4c-6f7b2a8c1e01"),
                ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
                ("x-b3-sampled", "1"),
                ("x-user", user),
            ]),
        ),
    ];
    CheckRequest {
        attributes: Some(Encoder::encode_message(attrs.iter().map(|(n, v)| (*n, v)))),
        global_word_count: Encoder::global_word_count(),
        ..Default::default()
    }
}

/// 50 rules keyed on the destination service; every tenth uses a 10k-entry listchecker,
/// the last denies v3 callers with a denier.
pub fn check_config(dir: &Path) -> std::io::Result<PathBuf> {
    let mut y = String::new();
    let users: Vec<String> = (0..10_000).map(|i| format!("\"user-{i}\"")).collect();
    let _ = write!(
        y,
        "apiVersion: config.istio.io/v1alpha2\nkind: handler\nmetadata: {{name: users}}\nspec:\n  compiledAdapter: listchecker\n  params:\n    overrides: [{}]\n---\n",
        users.join(",")
    );
    y.push_str("apiVersion: config.istio.io/v1alpha2\nkind: instance\nmetadata: {name: user}\nspec:\n  compiledTemplate: listentry\n  params: {value: 'request.headers[\"x-user\"] | \"anonymous\"'}\n---\n");
    y.push_str("apiVersion: config.istio.io/v1alpha2\nkind: handler\nmetadata: {name: deny}\nspec:\n  compiledAdapter: denier\n  params: {status: {code: 7, message: denied}}\n---\n");
    y.push_str("apiVersion: config.istio.io/v1alpha2\nkind: instance\nmetadata: {name: nothing}\nspec: {compiledTemplate: checknothing}\n---\n");
    for i in 0..50 {
        let (matcher, handler, instance) = if i == 49 {
            (
                format!("destination.service.name == \"svc{i}\" && source.labels[\"version\"] == \"v3\""),
                "deny",
                "nothing",
            )
        } else if i % 10 == 0 {
            (format!("destination.service.name == \"svc{i}\" && request.method == \"GET\""), "users", "user")
        } else {
            (format!("destination.service.name == \"svc{i}\" && match(request.path, \"/admin*\")"), "deny", "nothing")
        };
        let _ = write!(
            y,
            "apiVersion: config.istio.io/v1alpha2\nkind: rule\nmetadata: {{name: r{i}}}\nspec:\n  match: '{}'\n  actions:\n  - {{handler: {handler}, instances: [{instance}]}}\n---\n",
            matcher.replace('\'', "''")
        );
    }
    let path = dir.join("bench.yaml");
    std::fs::write(&path, y)?;
    Ok(path)
}

pub async fn check(seconds: Duration, concurrency: usize, mixr: Option<PathBuf>) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = check_config(dir.path()).map_err(|e| e.to_string())?;
    let mixr = match mixr {
        Some(p) => p,
        None => sibling("mixr")?,
    };
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let requests = vec![
        sidecar_request("svc10", "user-5000", "v1"), // listchecker: allowed
        sidecar_request("svc20", "mallory", "v1"),   // listchecker: denied
        sidecar_request("svc49", "user-1", "v3"),    // denier
        sidecar_request("svc7", "user-2", "v1"),     // rule evaluated, no match
    ];
    let addr_file = dir.path().join("addr");
    println!("Mixer Check: {concurrency} concurrent callers, 1 s warm-up, {} s measured per server", seconds.as_secs());
    println!("config: 50 rules, a 10000-entry listchecker, a denier; 4 request shapes of 22 attributes");

    let noop = start(&me, &["noop-server".into(), "--addr-file".into(), addr_file.display().to_string()], &addr_file)?;
    let base = measure("noop", &noop, CHECK, &requests, concurrency, seconds, None).await?;
    drop(noop);

    let server = start(&mixr, &serve_args(&[config], &addr_file), &addr_file)?;
    let answers = answers(&server, &requests).await?;
    println!("mixr answers per request shape: {answers}");
    let ours = measure("mixr", &server, CHECK, &requests, concurrency, seconds, None).await?;
    drop(server);
    print!("{}", table("results", &[base, ours]));
    Ok(())
}

/// The status code mixr gives each request shape: proof the benchmark exercises real
/// decisions (allow, whitelist denial, denier, no match).
async fn answers(server: &Server, requests: &[CheckRequest]) -> Result<String, String> {
    let mut client = MixerClient::connect(server.endpoint.clone()).await.map_err(|e| e.to_string())?;
    let mut codes = Vec::new();
    for r in requests {
        let resp = client.check(r.clone()).await.map_err(|e| e.to_string())?.into_inner();
        let code = resp.precondition.and_then(|p| p.status).map_or(-1, |s| s.code);
        codes.push(code.to_string());
    }
    Ok(codes.join(", "))
}

const RLS: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// memquota and redisquota handlers with the same (never exhausted) limits, one rule for
/// Mixer quotas and one for rate-limit descriptors.
fn quota_config(dir: &Path, adapter: &str, redis: &str) -> std::io::Result<PathBuf> {
    let quota = |name: &str| {
        let mut q = format!("    - name: {name}\n      maxAmount: 1000000000\n      validDuration: 1s\n");
        if adapter == "redisquota" {
            q.push_str("      rateLimitAlgorithm: ROLLING_WINDOW\n      bucketDuration: 100ms\n");
        }
        q
    };
    let server =
        if adapter == "redisquota" { format!("    redisServerUrl: {redis}\n    timeout: 1s\n") } else { String::new() };
    let y = format!(
        "apiVersion: config.istio.io/v1alpha2\nkind: handler\nmetadata: {{name: q}}\nspec:\n  compiledAdapter: {adapter}\n  params:\n{server}    quotas:\n{}{}---\n\
         apiVersion: config.istio.io/v1alpha2\nkind: instance\nmetadata: {{name: requestcount}}\nspec:\n  compiledTemplate: quota\n  params:\n    dimensions:\n      user: 'request.headers[\"x-user\"] | \"anonymous\"'\n      service: destination.service.name | \"unknown\"\n---\n\
         apiVersion: config.istio.io/v1alpha2\nkind: rule\nmetadata: {{name: mixerquota}}\nspec:\n  match: (context.protocol | \"\") == \"http\"\n  actions:\n  - {{handler: q, instances: [requestcount]}}\n---\n\
         apiVersion: config.istio.io/v1alpha2\nkind: instance\nmetadata: {{name: rlsquota}}\nspec:\n  compiledTemplate: quota\n  params:\n    dimensions:\n      key: ratelimit.descriptor[\"generic_key\"] | \"none\"\n---\n\
         apiVersion: config.istio.io/v1alpha2\nkind: rule\nmetadata: {{name: rls}}\nspec:\n  match: ratelimit.domain == \"edge\"\n  actions:\n  - {{handler: q, instances: [rlsquota]}}\n",
        quota("requestcount"),
        quota("rlsquota")
    );
    let path = dir.join(format!("{adapter}.yaml"));
    std::fs::write(&path, y)?;
    Ok(path)
}

fn rls_requests() -> Vec<envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest> {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    (0..4)
        .map(|i| envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![
                    Entry { key: "generic_key".into(), value: format!("tenant-{i}") },
                    Entry { key: "remote_address".into(), value: "10.1.2.3".into() },
                ],
                ..Default::default()
            }],
            hits_addend: 1,
        })
        .collect()
}

/// The local redis-server's pid, to account its CPU too.
fn redis_pid(url: &str) -> Option<u32> {
    let hostport = url.trim_start_matches("redis://");
    let (host, port) = hostport.split_once(':')?;
    let out = std::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port.trim_end_matches('/'), "info", "server"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
}

pub async fn quota(seconds: Duration, concurrency: usize, mixr: Option<PathBuf>, redis: String) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mixr = match mixr {
        Some(p) => p,
        None => sibling("mixr")?,
    };
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let addr_file = dir.path().join("addr");
    let mut check_requests = Vec::new();
    for (i, svc) in ["svc1", "svc2", "svc3", "svc4"].iter().enumerate() {
        let mut r = sidecar_request(svc, &format!("user-{i}"), "v1");
        r.quotas.insert(
            "requestcount".into(),
            mixr_proto::istio::mixer::v1::check_request::QuotaParams { amount: 1, best_effort: false },
        );
        r.deduplication_id = String::new();
        check_requests.push(r);
    }
    let rls = rls_requests();
    println!("Quotas: {concurrency} concurrent callers, 1 s warm-up, {} s measured per server", seconds.as_secs());
    println!("Mixer Check carries quota requestcount=1 (22 attributes); RLS carries one 2-entry descriptor");

    let noop = start(&me, &["noop-server".into(), "--addr-file".into(), addr_file.display().to_string()], &addr_file)?;
    let base_check = measure("noop", &noop, CHECK, &check_requests, concurrency, seconds, None).await?;
    let base_rls = measure("noop", &noop, RLS, &rls, concurrency, seconds, None).await?;
    drop(noop);

    let mut check_rows = vec![base_check];
    let mut rls_rows = vec![base_rls];
    for (adapter, label_check, label_rls) in
        [("memquota", "mixr memquota", "mixr memquota"), ("redisquota", "mixr redisquota", "mixr redisquota")]
    {
        let config = quota_config(dir.path(), adapter, &redis).map_err(|e| e.to_string())?;
        let server = start(&mixr, &serve_args(&[config], &addr_file), &addr_file)?;
        let helper = if adapter == "redisquota" { redis_pid(&redis) } else { None };
        check_rows.push(measure(label_check, &server, CHECK, &check_requests, concurrency, seconds, helper).await?);
        rls_rows.push(measure(label_rls, &server, RLS, &rls, concurrency, seconds, helper).await?);
    }
    print!("{}", table("Mixer Check with a quota", &check_rows));
    print!("{}", table("Envoy RLS ShouldRateLimit", &rls_rows));
    Ok(())
}

const REPORT: &str = "/istio.mixer.v1.Mixer/Report";
const ENTRIES: usize = 100;

/// A proxy's Report: 100 entries of 20 attributes, independent encoding, shared words.
fn report_request(seed: usize) -> mixr_proto::istio::mixer::v1::ReportRequest {
    use mixr_proto::istio::mixer::v1::report_request::RepeatedAttributesSemantics;
    let s = |v: String| Value::String(Cow::Owned(v));
    let mut enc = Encoder::new();
    let entries = (0..ENTRIES)
        .map(|i| {
            let n = seed * ENTRIES + i;
            let attrs: Vec<(&str, Value<'static>)> = vec![
                ("context.protocol", s("http".into())),
                ("context.reporter.kind", s("inbound".into())),
                ("source.workload.name", s(format!("productpage-v{}", n % 3 + 1))),
                ("source.workload.namespace", s("default".into())),
                ("source.principal", s("cluster.local/ns/default/sa/bookinfo-productpage".into())),
                ("source.ip", Value::Bytes(Cow::Owned(vec![10, 1, 2, (n % 250) as u8]))),
                ("destination.workload.name", s(format!("reviews-v{}", n % 3 + 1))),
                ("destination.workload.namespace", s("default".into())),
                ("destination.service.host", s(format!("svc{}.default.svc.cluster.local", n % 10))),
                ("destination.port", Value::Int64(9080)),
                ("request.method", s("GET".into())),
                ("request.path", s(format!("/reviews/{}", n % 100))),
                ("request.host", s("reviews:9080".into())),
                ("request.size", Value::Int64((n % 2000) as i64)),
                ("request.time", Value::Timestamp(mixr_rules::value::Timestamp { seconds: 1_700_000_000, nanos: 0 })),
                ("response.code", Value::Int64(if n.is_multiple_of(20) { 503 } else { 200 })),
                ("response.size", Value::Int64(4096)),
                (
                    "response.duration",
                    Value::Duration(mixr_rules::value::Duration {
                        seconds: 0,
                        nanos: ((n % 50) as i32 + 1) * 1_000_000,
                    }),
                ),
                (
                    "response.time",
                    Value::Timestamp(mixr_rules::value::Timestamp { seconds: 1_700_000_000, nanos: 5_000_000 }),
                ),
                ("request.id", s(format!("{seed:08x}-{i:04x}-4b5c-9d4c-6f7b2a8c1e01"))),
            ];
            enc.encode(attrs.iter().map(|(k, v)| (*k, v)))
        })
        .collect();
    mixr_proto::istio::mixer::v1::ReportRequest {
        attributes: entries,
        default_words: enc.into_words(),
        global_word_count: Encoder::global_word_count(),
        repeated_attributes_semantics: RepeatedAttributesSemantics::IndependentEncoding as i32,
    }
}

fn sample(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/release/mixr-bench -> the repository's rules/examples
    let root = exe.parent().and_then(Path::parent).and_then(Path::parent).ok_or("cannot find the repository")?;
    let p = root.join("rules/examples").join(name);
    if p.exists() { Ok(p) } else { Err(format!("{} not found", p.display())) }
}

fn sets_table(title: &str, rows: &[Measured]) -> String {
    let mut out = format!("\n{title}\n");
    let _ =
        writeln!(out, "{:<22} {:>12} {:>14} {:>14} {:>8}", "server", "sets/s", "cpu us/set", "1-core sets/s", "errors");
    for r in rows {
        let per_set = r.cpu_us_per_call / ENTRIES as f64;
        let _ = writeln!(
            out,
            "{:<22} {:>12.0} {:>14.2} {:>14.0} {:>8}",
            r.name,
            r.load.rps() * ENTRIES as f64,
            per_set,
            if per_set > 0.0 { 1e6 / per_set } else { 0.0 },
            r.load.errors
        );
    }
    if let [base, rest @ ..] = rows {
        for ours in rest {
            let _ = writeln!(
                out,
                "ratio {}/{}: sets/s {:.2}x, server CPU per set {:+.2} us",
                ours.name,
                base.name,
                ours.load.rps() / base.load.rps().max(1.0),
                (ours.cpu_us_per_call - base.cpu_us_per_call) / ENTRIES as f64
            );
        }
    }
    out
}

pub async fn report(seconds: Duration, concurrency: usize, mixr: Option<PathBuf>) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mixr = match mixr {
        Some(p) => p,
        None => sibling("mixr")?,
    };
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let addr_file = dir.path().join("addr");
    let requests: Vec<_> = (0..8).map(report_request).collect();
    println!(
        "Report: batches of {ENTRIES} entries x 20 attributes, {concurrency} concurrent callers, 1 s warm-up, {} s measured",
        seconds.as_secs()
    );
    let noop = start(&me, &["noop-server".into(), "--addr-file".into(), addr_file.display().to_string()], &addr_file)?;
    let mut rows = vec![measure("noop", &noop, REPORT, &requests, concurrency, seconds, None).await?];
    drop(noop);
    let mut sqllog_note = None;
    let mut configs = vec![("mixr prometheus", vec![sample("telemetry.yaml")?])];
    if let Ok(log) = sample("accesslog.yaml") {
        let sqlite = dir.path().join("bench-logs.db");
        let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
        let local = dir.path().join("accesslog.yaml");
        std::fs::write(&local, text.replace("mixr-logs.db", &sqlite.display().to_string()))
            .map_err(|e| e.to_string())?;
        configs.push(("mixr prometheus+sqllog", vec![sample("telemetry.yaml")?, local]));
    }
    for (name, files) in configs {
        let server = start(&mixr, &serve_args(&files, &addr_file), &addr_file)?;
        rows.push(measure(name, &server, REPORT, &requests, concurrency, seconds, None).await?);
        if let (Some(written), Some(dropped)) =
            (server.counter("mixr_sqllog_written_total"), server.counter("mixr_sqllog_dropped_total"))
            && written + dropped > 0.0
        {
            let total = seconds.as_secs_f64() + 1.0;
            sqllog_note = Some(format!(
                "sqllog (SQLite) wrote {:.0} entries/s during the run; {:.0} entries were dropped (queue full) and counted",
                written / total,
                dropped
            ));
        }
    }
    print!("{}", sets_table("Report attribute sets", &rows));
    if let Some(note) = sqllog_note {
        println!("{note}");
    }
    Ok(())
}
