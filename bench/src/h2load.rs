//! `mixr-bench h2load`: the gRPC hot path under a load generator nobody here wrote.
//!
//! h2load (Debian's nghttp2-client) sends one pre-framed gRPC request body over one HTTP/2
//! connection with 64 streams in flight, so the server, not the load generator, is the
//! limit. Each server runs pinned to CPU 0 with one tokio worker (`TOKIO_WORKER_THREADS=1`);
//! h2load runs pinned to CPU 1. Every server is started once and the targets are measured
//! in interleaved rounds (a round measures each target once), so a machine whose speed
//! drifts over the run moves every row alike; each figure printed is the median round.
//!
//! CPU per call is the server's user + system time from `/proc/PID/stat` over one h2load
//! run divided by the calls it answered; for redisquota rows Redis's own CPU per call
//! comes from `INFO cpu` (`used_cpu_user` + `used_cpu_sys`) before and after.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request as AuthzRequest};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest as AuthzCheckRequest};
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use prost::Message;

use crate::procstat::cpu_micros;
use crate::scenario::{check_config, sidecar_request};

const RLS_PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
const AUTHZ_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
const CHECK_PATH: &str = "/istio.mixer.v1.Mixer/Check";

/// CPU the servers are pinned to, and the load generator's.
const SERVER_CPU: &str = "0";
const LOAD_CPU: &str = "1";

#[derive(Debug, Clone)]
pub struct Options {
    /// Calls per measured h2load run.
    pub requests: u64,
    /// Calls sent to each server before its first measured run.
    pub warmup: u64,
    pub rounds: usize,
    pub streams: u32,
    pub mixr: PathBuf,
    pub redis: String,
    /// Only targets whose name contains one of these (all when empty).
    pub only: Vec<String>,
    /// Write the request bodies and configs here and stop (for the callgrind script).
    pub write_files: Option<PathBuf>,
}

/// Writes the request bodies (`rls.bin`, `authz.bin`, `check.bin`) and mixr configs
/// (`rls-memquota.yaml`, `rls-redis-fixed.yaml`, `rls-redis-rolling.yaml`, `check.yaml`).
pub fn write_files(d: &Path, redis: &str) -> Result<(), String> {
    let err = |e: std::io::Error| e.to_string();
    std::fs::write(d.join("rls.bin"), grpc_frame(&rls_request().encode_to_vec())).map_err(err)?;
    std::fs::write(d.join("authz.bin"), grpc_frame(&authz_request().encode_to_vec())).map_err(err)?;
    std::fs::write(d.join("check.bin"), grpc_frame(&sidecar_request("svc10", "user-5000", "v1").encode_to_vec()))
        .map_err(err)?;
    for (adapter, algorithm, name) in [
        ("memquota", None, "rls-memquota.yaml"),
        ("redisquota", Some("FIXED_WINDOW"), "rls-redis-fixed.yaml"),
        ("redisquota", Some("ROLLING_WINDOW"), "rls-redis-rolling.yaml"),
    ] {
        let p = rls_config(d, adapter, algorithm, redis).map_err(err)?;
        std::fs::rename(&p, d.join(name)).map_err(err)?;
    }
    let p = check_config(d).map_err(err)?;
    std::fs::rename(p, d.join("check.yaml")).map_err(err)
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One row: a request body sent to one server.
struct Target {
    name: &'static str,
    group: &'static str,
    server: usize,
    path: &'static str,
    body: PathBuf,
    redis: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Run {
    rps: f64,
    cpu_us: f64,
    redis_us: Option<f64>,
    mean_ms: f64,
    failed: u64,
}

/// A gRPC message framed as on the wire (uncompressed flag, big-endian length, message).
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// RLS: domain `bench`, one descriptor `generic_key=k1`.
pub fn rls_request() -> RateLimitRequest {
    RateLimitRequest {
        domain: "bench".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry { key: "generic_key".into(), value: "k1".into() }],
            ..Default::default()
        }],
        hits_addend: 1,
    }
}

/// ext_authz: an Envoy sidecar's HTTP request to `svc10` from user-5000 (a listed user).
pub fn authz_request() -> AuthzCheckRequest {
    let sock = |ip: &str, port: u32| {
        Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        })
    };
    let headers = [
        (":authority", "svc10:9080"),
        (":method", "GET"),
        (":path", "/reviews/0"),
        ("accept", "*/*"),
        ("user-agent", "python-requests/2.18.4"),
        ("x-request-id", "2f5d3fd0-7a55-4b5c-9d4c-6f7b2a8c1e01"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "1"),
        ("x-user", "user-5000"),
    ];
    AuthzCheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: sock("10.1.2.3", 40000),
                principal: "spiffe://cluster.local/ns/default/sa/bookinfo-productpage".into(),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: sock("10.1.9.9", 9080),
                service: "svc10.default.svc.cluster.local".into(),
                ..Default::default()
            }),
            request: Some(AuthzRequest {
                http: Some(HttpRequest {
                    id: "2f5d3fd0-7a55-4b5c-9d4c-6f7b2a8c1e01".into(),
                    method: "GET".into(),
                    path: "/reviews/0".into(),
                    host: "svc10:9080".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("destination.service.name".to_string(), "svc10".to_string())].into(),
            ..Default::default()
        }),
    }
}

/// Rate limits for domain `bench`: one quota keyed on `generic_key`, never exhausted.
fn rls_config(dir: &Path, adapter: &str, algorithm: Option<&str>, redis: &str) -> std::io::Result<PathBuf> {
    let mut quota = "    - name: rlsquota\n      maxAmount: 1000000000\n      validDuration: 1s\n".to_string();
    if let Some(a) = algorithm {
        let _ = writeln!(quota, "      rateLimitAlgorithm: {a}");
        if a == "ROLLING_WINDOW" {
            quota.push_str("      bucketDuration: 100ms\n");
        }
    }
    // A 1 s deadline, not the default 100 ms: on a busy machine a slow answer must not
    // turn into a cheap UNAVAILABLE that h2load counts as a success.
    let server =
        if adapter == "redisquota" { format!("    redisServerUrl: {redis}\n    timeout: 1s\n") } else { String::new() };
    let y = format!(
        "apiVersion: config.istio.io/v1alpha2\nkind: handler\nmetadata: {{name: q}}\nspec:\n  compiledAdapter: {adapter}\n  params:\n{server}    quotas:\n{quota}---\n\
         apiVersion: config.istio.io/v1alpha2\nkind: instance\nmetadata: {{name: rlsquota}}\nspec:\n  compiledTemplate: quota\n  params:\n    dimensions:\n      key: ratelimit.descriptor[\"generic_key\"] | \"none\"\n---\n\
         apiVersion: config.istio.io/v1alpha2\nkind: rule\nmetadata: {{name: rls}}\nspec:\n  match: ratelimit.domain == \"bench\"\n  actions:\n  - {{handler: q, instances: [rlsquota]}}\n"
    );
    let path = dir.join(format!("rls-{adapter}-{}.yaml", algorithm.unwrap_or("memory")));
    std::fs::write(&path, y)?;
    Ok(path)
}

fn pinned(program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(SERVER_CPU).arg(program).env("TOKIO_WORKER_THREADS", "1");
    c
}

fn start(name: &'static str, mut cmd: Command, addr_file: &Path) -> Result<Server, String> {
    let _ = std::fs::remove_file(addr_file);
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().map_err(|e| format!("start {name}: {e}"))?;
    let mut server = Server { child, addr: String::new() };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(addr_file)
            && let Some(addr) = text.lines().find_map(|l| l.strip_prefix("grpc="))
        {
            server.addr = addr.to_string();
            return Ok(server);
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!("{name} exited: {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{name} did not start"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Redis's own CPU seconds (user + system) from `INFO cpu`.
fn redis_cpu_us(url: &str) -> Option<f64> {
    let hostport = url.trim_start_matches("redis://").trim_end_matches('/');
    let (host, port) = hostport.split_once(':')?;
    let out = Command::new("redis-cli").args(["-h", host, "-p", port, "info", "cpu"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).and_then(|v| v.trim().parse().ok())
    };
    Some((field("used_cpu_user")? + field("used_cpu_sys")?) * 1e6)
}

/// Peak resident set of a process, in MB.
fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// One h2load run; returns (calls answered, req/s, mean ms, failed).
fn h2load(addr: &str, path: &str, body: &Path, requests: u64, streams: u32) -> Result<(u64, f64, f64, u64), String> {
    let out = Command::new("taskset")
        .args(["-c", LOAD_CPU, "h2load", "-c", "1", "-t", "1"])
        .arg(format!("-n{requests}"))
        .arg(format!("-m{streams}"))
        .arg(format!("--data={}", body.display()))
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .map_err(|e| format!("h2load: {e} (apt-get install -y nghttp2-client)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let num = |line: &str, after: &str, until: &str| -> Option<f64> {
        let rest = &line[line.find(after)? + after.len()..];
        rest[..rest.find(until).unwrap_or(rest.len())].trim().parse().ok()
    };
    let mut rps = None;
    let mut done = None;
    let mut failed = 0;
    let mut mean_ms = 0.0;
    for line in text.lines() {
        if line.starts_with("finished in") {
            rps = num(line, ", ", " req/s");
        } else if line.starts_with("requests:") {
            done = num(line, "started, ", " done");
            failed = num(line, "succeeded, ", " failed").unwrap_or(0.0) as u64
                + num(line, "failed, ", " errored").unwrap_or(0.0) as u64;
        } else if let Some(rest) = line.strip_prefix("time for request:") {
            // min max mean sd +/- sd: the mean, with its unit.
            if let Some(mean) = rest.split_whitespace().nth(2) {
                mean_ms = if let Some(us) = mean.strip_suffix("us") {
                    us.parse::<f64>().unwrap_or(0.0) / 1000.0
                } else if let Some(ms) = mean.strip_suffix("ms") {
                    ms.parse().unwrap_or(0.0)
                } else {
                    mean.trim_end_matches('s').parse::<f64>().unwrap_or(0.0) * 1000.0
                };
            }
        }
    }
    match (done, rps) {
        (Some(d), Some(r)) => Ok((d as u64, r, mean_ms, failed)),
        _ => Err(format!("h2load gave no result: {}{}", text, String::from_utf8_lossy(&out.stderr))),
    }
}

fn measure(server: &Server, t: &Target, opts: &Options) -> Result<Run, String> {
    let pid = server.child.id();
    let redis_before = if t.redis { redis_cpu_us(&opts.redis) } else { None };
    let before = cpu_micros(pid).ok_or("cannot read the server's CPU time")?;
    let (done, rps, mean_ms, failed) = h2load(&server.addr, t.path, &t.body, opts.requests, opts.streams)?;
    let after = cpu_micros(pid).ok_or("cannot read the server's CPU time")?;
    let redis_after = if t.redis { redis_cpu_us(&opts.redis) } else { None };
    let calls = done.max(1) as f64;
    Ok(Run {
        rps,
        cpu_us: after.saturating_sub(before) as f64 / calls,
        redis_us: redis_before.zip(redis_after).map(|(a, b)| (b - a) / calls),
        mean_ms,
        failed,
    })
}

/// Sends each target's request once and requires an OK gRPC status: h2load counts any
/// HTTP 200 as a success, and a gRPC error is an HTTP 200 too.
fn verify(servers: &[Server], targets: &[Target]) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        for t in targets {
            let endpoint = format!("http://{}", servers[t.server].addr);
            let channel = tonic::transport::Channel::from_shared(endpoint)
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| format!("{}: {e}", t.name))?;
            let mut grpc = tonic::client::Grpc::new(channel);
            let framed = std::fs::read(&t.body).map_err(|e| e.to_string())?;
            let body = bytes::Bytes::from(framed[5..].to_vec());
            crate::load::call_raw(&mut grpc, t.path, body).await.map_err(|e| format!("{}: {e}", t.name))?;
        }
        Ok(())
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

pub fn run(opts: &Options) -> Result<(), String> {
    if let Some(d) = &opts.write_files {
        return write_files(d, &opts.redis);
    }
    if Command::new("h2load").arg("--version").output().is_err() {
        return Err("h2load not found: apt-get install -y nghttp2-client".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let write = |name: &str, msg: Vec<u8>| -> Result<PathBuf, String> {
        let p = d.join(name);
        std::fs::write(&p, grpc_frame(&msg)).map_err(|e| e.to_string())?;
        Ok(p)
    };
    let rls_body = write("rls.bin", rls_request().encode_to_vec())?;
    let authz_body = write("authz.bin", authz_request().encode_to_vec())?;
    let check_body = write("check.bin", sidecar_request("svc10", "user-5000", "v1").encode_to_vec())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;

    let wanted = |name: &str| opts.only.is_empty() || opts.only.iter().any(|o| name.contains(o.as_str()));
    let mut servers: Vec<Server> = Vec::new();
    let mut targets: Vec<Target> = Vec::new();
    let add_server = |servers: &mut Vec<Server>, name: &'static str, cmd: Command| -> Result<usize, String> {
        let addr_file = d.join(format!("{name}.addr"));
        let mut cmd = cmd;
        cmd.arg("--addr-file").arg(&addr_file);
        servers.push(start(name, cmd, &addr_file)?);
        Ok(servers.len() - 1)
    };
    let noop = {
        let mut c = pinned(&me);
        c.arg("noop-server");
        add_server(&mut servers, "noop", c)?
    };
    let mixr_server = |config: PathBuf| {
        let mut c = pinned(&opts.mixr);
        c.arg("serve").arg("--config").arg(config).args([
            "--grpc-addr=127.0.0.1:0",
            "--monitoring-addr=127.0.0.1:0",
            "--no-watch",
            "--log-level=warn",
        ]);
        c
    };
    let rls =
        |name, group, server, redis| Target { name, group, server, path: RLS_PATH, body: rls_body.clone(), redis };
    // A group's no-op row is measured whenever one of its mixr rows is (the ratios).
    const RLS_ROWS: [&str; 3] = ["mixr rls memquota", "mixr rls redis fixed", "mixr rls redis rolling"];
    if RLS_ROWS.iter().any(|n| wanted(n)) {
        targets.push(rls("noop rls", "rls", noop, false));
        if wanted(RLS_ROWS[0]) {
            let cfg = rls_config(d, "memquota", None, &opts.redis).map_err(|e| e.to_string())?;
            let s = add_server(&mut servers, "mixr memquota", mixr_server(cfg))?;
            targets.push(rls(RLS_ROWS[0], "rls", s, false));
        }
        for (algo, name) in [("FIXED_WINDOW", RLS_ROWS[1]), ("ROLLING_WINDOW", RLS_ROWS[2])] {
            if !wanted(name) {
                continue;
            }
            let cfg = rls_config(d, "redisquota", Some(algo), &opts.redis).map_err(|e| e.to_string())?;
            let s = add_server(
                &mut servers,
                if algo == "FIXED_WINDOW" { "mixr redis fixed" } else { "mixr redis rolling" },
                mixr_server(cfg),
            )?;
            targets.push(rls(name, "rls", s, true));
        }
    }
    if wanted("mixr ext_authz") || wanted("mixr check") {
        let cfg = check_config(d).map_err(|e| e.to_string())?;
        let s = add_server(&mut servers, "mixr check", mixr_server(cfg))?;
        if wanted("mixr ext_authz") {
            targets.push(Target {
                name: "noop ext_authz",
                group: "ext_authz",
                server: noop,
                path: AUTHZ_PATH,
                body: authz_body.clone(),
                redis: false,
            });
            targets.push(Target {
                name: "mixr ext_authz",
                group: "ext_authz",
                server: s,
                path: AUTHZ_PATH,
                body: authz_body.clone(),
                redis: false,
            });
        }
        if wanted("mixr check") {
            targets.push(Target {
                name: "noop check",
                group: "check",
                server: noop,
                path: CHECK_PATH,
                body: check_body.clone(),
                redis: false,
            });
            targets.push(Target {
                name: "mixr check",
                group: "check",
                server: s,
                path: CHECK_PATH,
                body: check_body.clone(),
                redis: false,
            });
        }
    }

    println!(
        "h2load: 1 connection, {} streams in flight, {} calls per run, {} interleaved rounds; servers on CPU {SERVER_CPU} with TOKIO_WORKER_THREADS=1, h2load on CPU {LOAD_CPU}",
        opts.streams, opts.requests, opts.rounds
    );
    verify(&servers, &targets)?;
    for t in &targets {
        let s = &servers[t.server];
        h2load(&s.addr, t.path, &t.body, opts.warmup, opts.streams)?;
    }
    let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..opts.rounds {
        for (i, t) in targets.iter().enumerate() {
            let r = measure(&servers[t.server], t, opts)?;
            eprintln!(
                "round {} {:<24} {:>9.0} req/s {:>7.1} us/call{}",
                round + 1,
                t.name,
                r.rps,
                r.cpu_us,
                r.redis_us.map_or(String::new(), |u| format!(" redis {u:.1} us/call"))
            );
            runs[i].push(r);
        }
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<24} {:>9} {:>9} {:>13} {:>15} {:>15} {:>13} {:>7}",
        "target", "req/s", "mean ms", "cpu us/call", "1-core req/s", "redis us/call", "peak RSS MB", "failed"
    );
    let mut medians = Vec::new();
    for (t, rs) in targets.iter().zip(&runs) {
        let rps = median(rs.iter().map(|r| r.rps).collect());
        let cpu = median(rs.iter().map(|r| r.cpu_us).collect());
        let mean = median(rs.iter().map(|r| r.mean_ms).collect());
        let redis = t.redis.then(|| median(rs.iter().filter_map(|r| r.redis_us).collect()));
        let failed: u64 = rs.iter().map(|r| r.failed).sum();
        let rss = peak_rss_mb(servers[t.server].child.id()).unwrap_or(0.0);
        let _ = writeln!(
            out,
            "{:<24} {:>9.0} {:>9.2} {:>13.1} {:>15.0} {:>15} {:>13.1} {:>7}",
            t.name,
            rps,
            mean,
            cpu,
            if cpu > 0.0 { 1e6 / cpu } else { 0.0 },
            redis.map_or("-".into(), |r| format!("{r:.1}")),
            rss,
            failed
        );
        medians.push((t, rps, cpu));
    }
    for (base, brps, bcpu) in medians.iter().filter(|(t, ..)| t.server == noop) {
        for (ours, rps, cpu) in medians.iter().filter(|(t, ..)| t.group == base.group && t.server != noop) {
            let _ = writeln!(
                out,
                "ratio {} / {}: req/s {:.2}x, single-core capacity {:.2}x, CPU per call {:+.1} us",
                ours.name,
                base.name,
                rps / brps.max(1.0),
                bcpu / cpu.max(0.001),
                cpu - bcpu
            );
        }
    }
    print!("{out}");
    Ok(())
}
