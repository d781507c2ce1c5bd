//! The sidecar against nginx: the same origin, the same load generators (wrk for
//! HTTP/1.1 keep-alive, h2load for h2c), one worker each. Proxies are pinned to CPU 1; the
//! load generator and the origin share CPU 0.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::procstat::{cpu_micros, server_command};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_file(path: &Path, child: &mut Child) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(t) = std::fs::read_to_string(path) {
            return Ok(t);
        }
        if let Ok(Some(s)) = child.try_wait() {
            return Err(format!("exited early: {s}"));
        }
        if Instant::now() > deadline {
            return Err("did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn field(text: &str, key: &str) -> Result<String, String> {
    text.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).map(str::to_string).ok_or_else(|| format!("no {key}"))
}

fn wait_port(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug, Default)]
struct WrkResult {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

fn to_us(s: &str) -> f64 {
    let (num, unit) = s.trim().split_at(s.trim().find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().unwrap_or(0.0);
    match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => n,
    }
}

fn wrk(url: &str, host: &str, seconds: u64, connections: u32) -> Result<WrkResult, String> {
    let out = Command::new("taskset")
        .args([
            "-c",
            "0",
            "wrk",
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-H",
            &format!("Host: {host}"),
            url,
        ])
        .output()
        .map_err(|e| format!("wrk: {e} (install Debian's wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut r = WrkResult::default();
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            r.p50_us = to_us(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99_us = to_us(v);
        } else if t.starts_with("Non-2xx or 3xx responses:") {
            r.errors += t.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        } else if t.starts_with("Socket errors:") {
            r.errors += t.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u64>().ok()).sum::<u64>();
        }
    }
    if r.rps == 0.0 {
        return Err(format!("wrk printed no result:\n{text}{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(r)
}

/// What the process under test used during one load run.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    peak_rss_kib: u64,
    /// CPU time (user and system) over the run, in microseconds.
    cpu_us: u64,
}

impl Usage {
    /// CPU time per request: what a saturated single worker's throughput is the inverse
    /// of, and steadier from run to run than requests/s.
    fn cpu_us_per_request(&self, rps: f64, seconds: u64) -> f64 {
        self.cpu_us as f64 / (rps * seconds as f64).max(1.0)
    }
}

/// Peak resident memory and CPU time of `pid` while `f` runs.
fn with_usage<T>(pid: u32, f: impl FnOnce() -> T) -> (T, Usage) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let (s, p) = (stop.clone(), peak.clone());
    let sampler = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            if let Some(kib) = std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            }) {
                p.fetch_max(kib, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let cpu_before = cpu_micros(pid).unwrap_or(0);
    let out = f();
    let cpu_us = cpu_micros(pid).unwrap_or(0).saturating_sub(cpu_before);
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    (out, Usage { peak_rss_kib: peak.load(Ordering::Relaxed), cpu_us })
}

type Rows = (Vec<(String, WrkResult, Usage)>, Vec<(String, H2Result, Usage)>);

/// Runs every target `rounds` times, interleaved so a noisy spell on the machine hits all
/// of them alike, and prints each target's median round.
pub fn run(seconds: u64, connections: u32, rounds: usize, bin_dir: &Path, dir: &Path) -> Result<(), String> {
    println!(
        "HTTP/1.1 proxying: wrk -t1 -c{connections}, {seconds} s per target, median of {rounds} interleaved rounds; proxies pinned to CPU 1, wrk and origin to CPU 0"
    );
    let mut all: Vec<Rows> = Vec::new();
    for n in 0..rounds.max(1) {
        eprintln!("round {}/{}", n + 1, rounds.max(1));
        all.push(round(seconds, connections, bin_dir, dir)?);
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(|a, b| a.total_cmp(b));
        values[values.len() / 2]
    };
    let (first_rows, first_h2) = &all[0];
    // Per target: the median of each figure over the rounds, and the peak memory.
    let summary = |usages: Vec<(Usage, f64)>| Summary {
        peak_rss_kib: usages.iter().map(|(u, _)| u.peak_rss_kib).max().unwrap_or(0),
        cpu_us_per_request: median(&mut usages.iter().map(|(u, rps)| u.cpu_us_per_request(*rps, seconds)).collect()),
    };
    let rows: Vec<(String, WrkResult, Summary)> = (0..first_rows.len())
        .map(|i| {
            let pick = |f: &dyn Fn(&WrkResult) -> f64| median(&mut all.iter().map(|(r, _)| f(&r[i].1)).collect());
            let r = WrkResult {
                rps: pick(&|r| r.rps),
                p50_us: pick(&|r| r.p50_us),
                p99_us: pick(&|r| r.p99_us),
                errors: all.iter().map(|(r, _)| r[i].1.errors).sum(),
            };
            (first_rows[i].0.clone(), r, summary(all.iter().map(|(r, _)| (r[i].2, r[i].1.rps)).collect()))
        })
        .collect();
    let h2_rows: Vec<(String, H2Result, Summary)> = (0..first_h2.len())
        .map(|i| {
            let pick = |f: &dyn Fn(&H2Result) -> f64| median(&mut all.iter().map(|(_, r)| f(&r[i].1)).collect());
            let r = H2Result {
                rps: pick(&|r| r.rps),
                mean_us: pick(&|r| r.mean_us),
                errors: all.iter().map(|(_, r)| r[i].1.errors).sum(),
            };
            (first_h2[i].0.clone(), r, summary(all.iter().map(|(_, r)| (r[i].2, r[i].1.rps)).collect()))
        })
        .collect();
    print_rows(&rows);
    println!("policy with cache hits / no policy (inbound): {:.2}x", rows[4].1.rps / rows[3].1.rps.max(1.0));
    let mesh = &rows[rows.len() - 4..];
    println!(
        "ISTIO_MUTUAL / plaintext, kept-alive: {:.2}x req/s, {:.2}x CPU per request (both sidecars)",
        mesh[1].1.rps / mesh[0].1.rps.max(1.0),
        mesh[1].2.cpu_us_per_request / mesh[0].2.cpu_us_per_request.max(0.001)
    );
    println!(
        "handshakes/s (ISTIO_MUTUAL, a new upstream connection per request): {:.0}, {:.2}x plaintext connections/s",
        mesh[3].1.rps,
        mesh[3].1.rps / mesh[2].1.rps.max(1.0)
    );

    println!(
        "\nh2c: h2load -t1 -c{connections} -m{H2_STREAMS}, {seconds} s per target (h2load reports mean latency, not percentiles)"
    );
    let nginx_h2 = &h2_rows[1];
    println!(
        "{:<40} {:>10} {:>12} {:>9} {:>10} {:>9} {:>8} {:>7}",
        "target", "req/s", "mean us", "x nginx", "CPU us/req", "x nginx", "RSS MB", "errors"
    );
    for (name, r, usage) in &h2_rows {
        println!(
            "{name:<40} {:>10.0} {:>12.0} {:>9.2} {:>10} {:>9} {:>8.1} {:>7}",
            r.rps,
            r.mean_us,
            r.rps / nginx_h2.1.rps.max(1.0),
            usage.cpu_text(),
            usage.ratio_text(&nginx_h2.2),
            usage.peak_rss_kib as f64 / 1024.0,
            r.errors
        );
    }
    Ok(())
}

fn round(seconds: u64, connections: u32, bin_dir: &Path, dir: &Path) -> Result<Rows, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    // The origin: a tiny hyper server on CPU 0.
    let origin_file = dir.join("origin.addr");
    let _ = std::fs::remove_file(&origin_file);
    let mut origin = Command::new("taskset")
        .args(["-c", "0"])
        .arg(&me)
        .arg("origin-server")
        .arg("--addr-file")
        .arg(&origin_file)
        .spawn()
        .map_err(|e| e.to_string())?;
    let origin_addr = field(&wait_for_file(&origin_file, &mut origin)?, "http")?;
    let _origin = Proc(origin);
    let origin_port = origin_addr.rsplit(':').next().unwrap_or("0").to_string();

    let mut rows: Vec<(String, WrkResult, Usage)> = Vec::new();
    rows.push((
        "direct".into(),
        wrk(&format!("http://{origin_addr}/"), "origin", seconds, connections)?,
        Usage::default(),
    ));

    // nginx, one worker, keep-alive upstream.
    let nginx_port = free_port();
    let nginx_h2_port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\nuser root;\npid {pid};\nerror_log stderr error;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n  upstream origin {{ server {origin_addr}; keepalive 64; keepalive_requests 1000000; }}\n  server {{\n    listen 127.0.0.1:{nginx_port};\n    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n  server {{\n    listen 127.0.0.1:{nginx_h2_port} http2;\n    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
            pid = dir.join("nginx.pid").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let nginx = Command::new("taskset")
        .args(["-c", "1", "nginx", "-c"])
        .arg(&conf)
        // One process that is the worker: nothing outlives the benchmark.
        .args(["-g", "daemon off; master_process off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("nginx: {e} (install Debian's nginx-light)"))?;
    let nginx = Proc(nginx);
    wait_port(&format!("127.0.0.1:{nginx_port}"));
    // The worker is nginx's child; its RSS is what serves.
    let worker = Command::new("pgrep")
        .args(["-P", &nginx.0.id().to_string()])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().ok())
        .unwrap_or(nginx.0.id());
    let (r, usage) =
        with_usage(worker, || wrk(&format!("http://127.0.0.1:{nginx_port}/"), "origin", seconds, connections));
    rows.push(("nginx (1 worker)".into(), r?, usage));
    let mut h2_rows: Vec<(String, H2Result, Usage)> = Vec::new();
    h2_rows.push((
        "direct".into(),
        h2load(&format!("http://{origin_addr}/"), "origin", seconds, connections)?,
        Usage::default(),
    ));
    let (r, usage) =
        with_usage(worker, || h2load(&format!("http://127.0.0.1:{nginx_h2_port}/"), "origin", seconds, connections));
    h2_rows.push(("nginx (1 worker, h2c to HTTP/1.1)".into(), r?, usage));
    drop(nginx);

    // mixr-proxy: outbound routing, inbound without and with policy, and with telemetry.
    let traffic = dir.join("traffic.yaml");
    std::fs::write(
        &traffic,
        format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: origin}}\nspec:\n  hosts: [origin]\n  ports: [{{number: 80, name: http}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {origin_port}}}}}]\n---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: origin}}\nspec:\n  hosts: [origin]\n  http:\n  - route: [{{destination: {{host: origin}}}}]\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let mixr_bin = bin_dir.join("mixr");
    let proxy_bin = bin_dir.join("mixr-proxy");
    let start_mixr = |configs: &[PathBuf], extra: &[&str]| -> Result<(Proc, String), String> {
        let file = dir.join("mixr.addrs");
        let _ = std::fs::remove_file(&file);
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"]).arg(&mixr_bin).args([
            "serve",
            "--grpc-addr=127.0.0.1:0",
            "--monitoring-addr=127.0.0.1:0",
            "--log-level=error",
            "--no-watch",
        ]);
        for c in configs {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd.args(extra).arg("--addr-file").arg(&file).spawn().map_err(|e| e.to_string())?;
        let t = wait_for_file(&file, &mut child)?;
        Ok((Proc(child), field(&t, "grpc")?))
    };
    let start_proxy_on = |config: &Path, extra: &[String]| -> Result<(Proc, String), String> {
        let file = dir.join("proxy.addrs");
        let _ = std::fs::remove_file(&file);
        let mut cmd = server_command(&proxy_bin);
        for flag in ["--outbound-addr", "--inbound-addr", "--admin-addr", "--stats-addr"] {
            cmd.arg(flag).arg("127.0.0.1:0");
        }
        cmd.arg("--config").arg(config).args([
            "--worker-threads",
            "1",
            "--log-level",
            "error",
            "--app-addr",
            &origin_addr,
        ]);
        let mut child = cmd.args(extra).arg("--addr-file").arg(&file).spawn().map_err(|e| e.to_string())?;
        let t = wait_for_file(&file, &mut child)?;
        Ok((Proc(child), t))
    };
    let start_proxy = |extra: &[String]| -> Result<(Proc, String, String), String> {
        let (p, t) = start_proxy_on(&traffic, extra)?;
        Ok((p, field(&t, "outbound")?, field(&t, "inbound")?))
    };

    let (proxy, outbound, inbound) = start_proxy(&[])?;
    let pid = proxy.0.id();
    let (r, usage) = with_usage(pid, || wrk(&format!("http://{outbound}/"), "origin", seconds, connections));
    rows.push(("mixr-proxy routing".into(), r?, usage));
    let (r, usage) = with_usage(pid, || wrk(&format!("http://{inbound}/"), "origin", seconds, connections));
    rows.push(("mixr-proxy inbound".into(), r?, usage));
    let (r, usage) = with_usage(pid, || h2load(&format!("http://{outbound}/"), "origin", seconds, connections));
    h2_rows.push(("mixr-proxy routing (h2c both sides)".into(), r?, usage));
    drop(proxy);

    let empty = dir.join("empty.yaml");
    std::fs::write(&empty, "").map_err(|e| e.to_string())?;
    let (_mixr, grpc) = start_mixr(std::slice::from_ref(&empty), &[])?;
    // Policy alone, as Istio ran it with telemetry off (disable_report_calls).
    let policy_only = |grpc: String| vec!["--mixr".to_string(), grpc, "--disable-report-calls".into()];
    let (proxy, _, inbound) = start_proxy(&policy_only(grpc))?;
    let (r, usage) = with_usage(proxy.0.id(), || wrk(&format!("http://{inbound}/"), "origin", seconds, connections));
    rows.push(("+ policy, cache hits".into(), r?, usage));
    drop(proxy);
    drop(_mixr);

    // Every answer valid for 0 s: each request asks mixr.
    let nocache = dir.join("nocache.yaml");
    std::fs::write(&nocache, "apiVersion: config.istio.io/v1alpha2\nkind: handler\nmetadata: {name: allow}\nspec:\n  compiledAdapter: listchecker\n  params: {overrides: [ok], cachingInterval: 0s}\n---\napiVersion: config.istio.io/v1alpha2\nkind: instance\nmetadata: {name: v}\nspec: {compiledTemplate: listentry, params: {value: '\"ok\"'}}\n---\napiVersion: config.istio.io/v1alpha2\nkind: rule\nmetadata: {name: allow}\nspec:\n  actions: [{handler: allow, instances: [v]}]\n").map_err(|e| e.to_string())?;
    let (_mixr, grpc) = start_mixr(&[nocache], &[])?;
    let (proxy, _, inbound) = start_proxy(&policy_only(grpc))?;
    let (r, usage) = with_usage(proxy.0.id(), || wrk(&format!("http://{inbound}/"), "origin", seconds, connections));
    rows.push(("+ policy, every request a miss".into(), r?, usage));
    drop(proxy);
    drop(_mixr);

    let telemetry = bin_dir.join("../../rules/examples/telemetry.yaml");
    let (_mixr, grpc) = start_mixr(&[empty.clone(), telemetry], &[])?;
    let (proxy, _, inbound) = start_proxy(&["--mixr".into(), grpc])?;
    let (r, usage) = with_usage(proxy.0.id(), || wrk(&format!("http://{inbound}/"), "origin", seconds, connections));
    rows.push(("+ policy + telemetry".into(), r?, usage));
    drop(proxy);
    drop(_mixr);

    // Sidecar to sidecar (client outbound → server inbound → origin), plaintext against
    // ISTIO_MUTUAL, kept-alive and with a new upstream connection (so a handshake) per
    // request. CPU is both sidecars'.
    let (token, line) = ca_token(&mixr_bin)?;
    let tokens = dir.join("ca-tokens.yaml");
    let token_file = dir.join("sidecar.token");
    std::fs::write(&tokens, format!("{line}\n"))
        .and_then(|_| std::fs::write(&token_file, token))
        .map_err(|e| e.to_string())?;
    let (_mixr, grpc) = start_mixr(&[empty], &["--ca-tokens", tokens.to_str().unwrap_or_default()])?;
    let with_cert = vec![
        "--ca-addr".to_string(),
        grpc,
        "--ca-token-file".into(),
        token_file.display().to_string(),
        "--namespace".into(),
        "bench".into(),
        "--service-account".into(),
        "sidecar".into(),
    ];
    let (server, server_addrs) = start_proxy_on(&traffic, &with_cert)?;
    wait_for_certificate(&field(&server_addrs, "admin")?)?;
    let server_inbound = field(&server_addrs, "inbound")?;
    for (name, mode, per_connection) in [
        ("sidecar -> sidecar, plaintext", "DISABLE", false),
        ("sidecar -> sidecar, ISTIO_MUTUAL", "ISTIO_MUTUAL", false),
        ("sidecar -> sidecar, plaintext, 1 req/conn", "DISABLE", true),
        ("sidecar -> sidecar, ISTIO_MUTUAL, 1 req/conn", "ISTIO_MUTUAL", true),
    ] {
        let mesh = dir.join("mesh.yaml");
        std::fs::write(&mesh, mesh_route(&server_inbound, mode, per_connection)).map_err(|e| e.to_string())?;
        let (client, client_addrs) = start_proxy_on(&mesh, &with_cert)?;
        wait_for_certificate(&field(&client_addrs, "admin")?)?;
        let outbound = field(&client_addrs, "outbound")?;
        let server_cpu = cpu_micros(server.0.id()).unwrap_or(0);
        let (r, mut usage) =
            with_usage(client.0.id(), || wrk(&format!("http://{outbound}/"), "upstream-sidecar", seconds, connections));
        usage.cpu_us += cpu_micros(server.0.id()).unwrap_or(0).saturating_sub(server_cpu);
        rows.push((name.into(), r?, usage));
    }
    Ok((rows, h2_rows))
}

/// The client sidecar's route to the server sidecar's inbound listener, with `mode` TLS.
fn mesh_route(server_inbound: &str, mode: &str, per_connection: bool) -> String {
    let port = server_inbound.rsplit(':').next().unwrap_or("0");
    let pool = if per_connection { ", connectionPool: {http: {maxRequestsPerConnection: 1}}" } else { "" };
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: upstream-sidecar}}\nspec:\n  hosts: [upstream-sidecar]\n  ports: [{{number: 80, name: http}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]\n---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: upstream-sidecar}}\nspec:\n  host: upstream-sidecar\n  trafficPolicy: {{tls: {{mode: {mode}}}{pool}}}\n"
    )
}

/// `mixr ca-token bench/sidecar`: the token and its line for the tokens file.
fn ca_token(mixr: &Path) -> Result<(String, String), String> {
    let out = Command::new(mixr).args(["ca-token", "bench/sidecar"]).output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string());
    get("token:").zip(get("line:")).ok_or_else(|| format!("mixr ca-token: {text}"))
}

/// Waits until the sidecar with admin address `admin` holds its workload certificate.
fn wait_for_certificate(admin: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let mut text = String::new();
        if let Ok(mut s) = std::net::TcpStream::connect(admin) {
            let _ = s.write_all(b"GET /certs HTTP/1.0\r\n\r\n");
            let _ = s.read_to_string(&mut text);
        }
        if text.contains("\"spiffe\":\"spiffe://") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("the sidecar at {admin} got no workload certificate"))
}

/// A target's figures over all rounds.
struct Summary {
    peak_rss_kib: u64,
    /// The median round's; 0 where no process of ours served (the direct rows).
    cpu_us_per_request: f64,
}

impl Summary {
    fn cpu_text(&self) -> String {
        if self.cpu_us_per_request > 0.0 { format!("{:.2}", self.cpu_us_per_request) } else { "-".into() }
    }

    /// CPU per request against `baseline`'s: below 1, cheaper per request.
    fn ratio_text(&self, baseline: &Summary) -> String {
        if self.cpu_us_per_request > 0.0 && baseline.cpu_us_per_request > 0.0 {
            format!("{:.2}", self.cpu_us_per_request / baseline.cpu_us_per_request)
        } else {
            "-".into()
        }
    }
}

fn print_rows(rows: &[(String, WrkResult, Summary)]) {
    let direct_p50 = rows[0].1.p50_us;
    let direct_p99 = rows[0].1.p99_us;
    let nginx = &rows[1];
    println!(
        "\n{:<44} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>8} {:>7}",
        "target",
        "req/s",
        "x nginx",
        "p50 us",
        "p99 us",
        "+p50 us",
        "+p99 us",
        "CPU us/req",
        "x nginx",
        "RSS MB",
        "errors"
    );
    for (name, r, usage) in rows {
        println!(
            "{name:<44} {:>10.0} {:>9.2} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10} {:>9} {:>8.1} {:>7}",
            r.rps,
            r.rps / nginx.1.rps.max(1.0),
            r.p50_us,
            r.p99_us,
            r.p50_us - direct_p50,
            r.p99_us - direct_p99,
            usage.cpu_text(),
            usage.ratio_text(&nginx.2),
            usage.peak_rss_kib as f64 / 1024.0,
            r.errors
        );
    }
}

/// Concurrent streams per h2c connection.
const H2_STREAMS: u32 = 10;

#[derive(Debug, Default)]
struct H2Result {
    rps: f64,
    mean_us: f64,
    errors: u64,
}

fn h2load(url: &str, host: &str, seconds: u64, connections: u32) -> Result<H2Result, String> {
    let out = Command::new("taskset")
        .args(["-c", "0", "h2load", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-m{H2_STREAMS}"))
        .arg(format!("-D{seconds}"))
        .args(["-H", &format!(":authority: {host}"), url])
        .output()
        .map_err(|e| format!("h2load: {e} (install Debian's nghttp2-client)"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut r = H2Result::default();
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("finished in") {
            r.rps = rest.split(',').nth(1).and_then(|v| v.trim().strip_suffix(" req/s")?.parse().ok()).unwrap_or(0.0);
        } else if let Some(rest) = t.strip_prefix("time for request:") {
            r.mean_us = rest.split_whitespace().nth(2).map(to_us).unwrap_or(0.0);
        } else if let Some(rest) = t.strip_prefix("requests:") {
            let field = |name: &str| {
                rest.split(',').find_map(|p| p.trim().strip_suffix(name)?.trim().parse::<u64>().ok()).unwrap_or(0)
            };
            r.errors = field("failed") + field("errored");
        } else if let Some(rest) = t.strip_prefix("status codes:") {
            r.errors += ["3xx", "4xx", "5xx"]
                .iter()
                .map(|c| {
                    rest.split(',').find_map(|p| p.trim().strip_suffix(c)?.trim().parse::<u64>().ok()).unwrap_or(0)
                })
                .sum::<u64>();
        }
    }
    if r.rps == 0.0 {
        return Err(format!("h2load printed no result:\n{text}{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(r)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(18080)
}

/// The origin: answers every request with a small body, as fast as it can.
pub fn origin_server(addr_file: &Path) -> std::process::ExitCode {
    use http_body_util::Full;
    use hyper::service::service_fn;
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else {
        return std::process::ExitCode::FAILURE;
    };
    rt.block_on(async {
        let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
            return std::process::ExitCode::FAILURE;
        };
        let Ok(addr) = listener.local_addr() else { return std::process::ExitCode::FAILURE };
        if std::fs::write(addr_file, format!("http={addr}\n")).is_err() {
            return std::process::ExitCode::FAILURE;
        }
        while let Ok((sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(bytes::Bytes::from_static(
                        b"ok\n",
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                    .await;
            });
        }
        std::process::ExitCode::SUCCESS
    })
}
