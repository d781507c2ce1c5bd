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
            return Ok(Server { endpoint: format!("http://{addr}"), child });
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

fn sibling(name: &str) -> Result<PathBuf, String> {
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
}

impl Measured {
    /// Calls per second one core could serve at the measured CPU cost per call: the
    /// server's throughput when it, not the load generator, is the limit.
    fn capacity(&self) -> f64 {
        if self.cpu_us_per_call > 0.0 { 1e6 / self.cpu_us_per_call } else { 0.0 }
    }
}

const CHECK: &str = "/istio.mixer.v1.Mixer/Check";

async fn measure(
    name: &'static str,
    server: &Server,
    path: &'static str,
    requests: &[CheckRequest],
    concurrency: usize,
    seconds: Duration,
) -> Result<Measured, String> {
    let pid = server.child.id();
    let mut samples = Vec::new();
    let bodies = requests.iter().map(|r| Bytes::from(r.encode_to_vec())).collect();
    let load = run(&server.endpoint, path, bodies, concurrency, Duration::from_secs(1), seconds, || {
        samples.push(cpu_micros(pid).unwrap_or(0));
    })
    .await?;
    let cpu = samples.get(1).zip(samples.first()).map(|(b, a)| b.saturating_sub(*a)).unwrap_or(0);
    let cpu_us_per_call = if load.requests > 0 { cpu as f64 / load.requests as f64 } else { 0.0 };
    Ok(Measured { name, load, cpu_us_per_call })
}

fn table(title: &str, rows: &[Measured]) -> String {
    let mut out = format!("\n{title}\n");
    let _ = writeln!(
        out,
        "{:<10} {:>10} {:>9} {:>9} {:>14} {:>16} {:>8}",
        "server", "req/s", "p50 us", "p99 us", "cpu us/call", "1-core req/s", "errors"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<10} {:>10.0} {:>9} {:>9} {:>14.1} {:>16.0} {:>8}",
            r.name,
            r.load.rps(),
            r.load.percentile_us(0.50),
            r.load.percentile_us(0.99),
            r.cpu_us_per_call,
            r.capacity(),
            r.load.errors
        );
    }
    if let [base, ours, ..] = rows {
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
    out
}

fn labels(pairs: &[(&str, &str)]) -> Value<'static> {
    Value::StringMap(MapVal::from(StringMap::new(
        pairs.iter().map(|(k, v)| (Cow::Owned(k.to_string()), Cow::Owned(v.to_string()))).collect(),
    )))
}

/// A request shaped like an Istio sidecar's: ~20 attributes, a dozen headers.
fn sidecar_request(service: &str, user: &str, version: &str) -> CheckRequest {
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
    let base = measure("noop", &noop, CHECK, &requests, concurrency, seconds).await?;
    drop(noop);

    let args = vec![
        "serve".to_string(),
        "--config".into(),
        config.display().to_string(),
        "--grpc-addr=127.0.0.1:0".into(),
        "--monitoring-addr=127.0.0.1:0".into(),
        "--no-watch".into(),
        "--log-level=warn".into(),
        "--addr-file".into(),
        addr_file.display().to_string(),
    ];
    let server = start(&mixr, &args, &addr_file)?;
    let answers = answers(&server, &requests).await?;
    println!("mixr answers per request shape: {answers}");
    let ours = measure("mixr", &server, CHECK, &requests, concurrency, seconds).await?;
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
