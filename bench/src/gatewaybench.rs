//! The gateway row of `mixr-bench proxy`: HTTPS termination by `mixr-proxy --role gateway`
//! against nginx, with the same certificate (ECDSA P-256, made here), the same origin and
//! one worker each, pinned to CPU 1 (wrk and the origin on CPU 0). Two loads: kept-alive
//! connections (requests/s, CPU per request), and a new connection per request
//! (`Connection: close`: a TLS handshake per request, its cost in CPU per request).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procstat::cpu_micros;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx's master process: stopped with SIGTERM so that it takes its worker with it (a
/// SIGKILL would leave the worker running).
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path, child: &mut Child, ready: impl Fn(&str) -> bool) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(t) = std::fs::read_to_string(path)
            && ready(&t)
        {
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

/// One load run: requests/s, errors, and the server's CPU microseconds per request.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    rps: f64,
    errors: u64,
    cpu_us_per_request: f64,
}

fn wrk(url: &str, seconds: u64, connections: u32, close: bool, server_pid: u32) -> Result<Run, String> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", "wrk", "-t1", &format!("-c{connections}"), &format!("-d{seconds}s")]);
    cmd.args(["-H", "Host: bookinfo.example.com"]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let before = cpu_micros(server_pid).unwrap_or(0);
    let out = cmd.arg(url).output().map_err(|e| format!("wrk: {e} (install Debian's wrk)"))?;
    let cpu = cpu_micros(server_pid).unwrap_or(0).saturating_sub(before);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut r = Run::default();
    let mut requests = 0u64;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(0.0);
        } else if line.contains("requests in") {
            requests = line.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
        } else if line.starts_with("Non-2xx or 3xx responses:") {
            r.errors += line.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        } else if line.starts_with("Socket errors:") {
            // Closed connections are the point of the second load; count the rest.
            r.errors += line
                .split(',')
                .filter(|p| !p.contains("read"))
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    if r.rps == 0.0 {
        return Err(format!("wrk printed no result:\n{text}{}", String::from_utf8_lossy(&out.stderr)));
    }
    r.cpu_us_per_request = cpu as f64 / requests.max(1) as f64;
    Ok(r)
}

/// A certificate and key for `bookinfo.example.com`, self-signed (wrk does not verify).
fn certificate(dir: &Path) -> Result<(), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = rcgen::CertificateParams::new(vec!["bookinfo.example.com".to_string()])
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("tls.crt"), cert.pem()).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).map_err(|e| e.to_string())
}

fn start_origin(dir: &Path) -> Result<(Proc, String), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let file = dir.join("gw-origin.addr");
    let _ = std::fs::remove_file(&file);
    let mut origin = Command::new("taskset")
        .args(["-c", "0"])
        .arg(&me)
        .arg("origin-server")
        .arg("--addr-file")
        .arg(&file)
        .spawn()
        .map_err(|e| e.to_string())?;
    let addr = field(&wait_for(&file, &mut origin, |_| true)?, "http")?;
    Ok((Proc(origin), addr))
}

fn start_gateway(bin_dir: &Path, dir: &Path, origin: &str) -> Result<(Proc, String), String> {
    let port = origin.rsplit(':').next().unwrap_or("0");
    let d = dir.display();
    let config = format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: origin}}
spec:
  hosts: [origin]
  ports: [{{number: 80, name: http}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: bench}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: SIMPLE, serverCertificate: {d}/tls.crt, privateKey: {d}/tls.key}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: origin}}
spec:
  hosts: ["*"]
  gateways: [bench]
  http:
  - route: [{{destination: {{host: origin}}}}]
"#
    );
    let cfg = dir.join("gateway.yaml");
    std::fs::write(&cfg, config).map_err(|e| e.to_string())?;
    let addrs = dir.join("gateway.addrs");
    let _ = std::fs::remove_file(&addrs);
    let mut child = Command::new("taskset")
        .args(["-c", "1"])
        .arg(bin_dir.join("mixr-proxy"))
        .args(["--role", "gateway", "--gateway-bind", "127.0.0.1", "--gateway-ephemeral-ports"])
        .args(["--worker-threads", "1", "--log-level", "warn", "-l", "istio=ingressgateway"])
        .args(["--admin-addr", "127.0.0.1:0", "--stats-addr", "127.0.0.1:0"])
        .arg("--config")
        .arg(&cfg)
        .arg("--addr-file")
        .arg(&addrs)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("mixr-proxy: {e}"))?;
    let text = wait_for(&addrs, &mut child, |t| t.contains("gateway.443="))?;
    Ok((Proc(child), field(&text, "gateway.443")?))
}

fn start_nginx(dir: &Path, origin: &str) -> Result<(Nginx, u32, String), String> {
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    let d = dir.display();
    let conf = dir.join("nginx-tls.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\nuser root;\npid {d}/nginx-tls.pid;\nerror_log stderr error;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n  upstream origin {{ server {origin}; keepalive 64; keepalive_requests 1000000; }}\n  server {{\n    listen 127.0.0.1:{port} ssl http2;\n    ssl_certificate {d}/tls.crt;\n    ssl_certificate_key {d}/tls.key;\n    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let nginx = Command::new("taskset")
        .args(["-c", "1", "nginx", "-c"])
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("nginx: {e} (install Debian's nginx-light)"))?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // The worker is nginx's child: it is what serves.
    let worker = Command::new("pgrep")
        .args(["-P", &nginx.id().to_string()])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next()?.trim().parse().ok())
        .unwrap_or(nginx.id());
    Ok((Nginx(nginx), worker, addr))
}

/// Runs the four loads `rounds` times, interleaved, and prints each one's median round.
pub fn run(seconds: u64, connections: u32, rounds: usize, bin_dir: &Path, dir: &Path) -> Result<(), String> {
    certificate(dir)?;
    let (_origin, origin) = start_origin(dir)?;
    let (gateway, gateway_addr) = start_gateway(bin_dir, dir, &origin)?;
    let (_nginx, nginx_pid, nginx_addr) = start_nginx(dir, &origin)?;
    let gateway_pid = gateway.0.id();
    let loads: [(&str, &str, u32, bool); 4] = [
        ("nginx, kept alive", &nginx_addr, nginx_pid, false),
        ("mixr-proxy gateway, kept alive", &gateway_addr, gateway_pid, false),
        ("nginx, a connection per request", &nginx_addr, nginx_pid, true),
        ("mixr-proxy gateway, a connection per request", &gateway_addr, gateway_pid, true),
    ];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); loads.len()];
    for n in 0..rounds.max(1) {
        eprintln!("gateway round {}/{}", n + 1, rounds.max(1));
        for (i, (_, addr, pid, close)) in loads.iter().enumerate() {
            runs[i].push(wrk(&format!("https://{addr}/"), seconds, connections, *close, *pid)?);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let summary: Vec<(f64, f64, u64)> = runs
        .iter()
        .map(|r| {
            (
                median(r.iter().map(|x| x.rps).collect()),
                median(r.iter().map(|x| x.cpu_us_per_request).collect()),
                r.iter().map(|x| x.errors).sum(),
            )
        })
        .collect();
    println!(
        "\nHTTPS termination (gateway): wrk -t1 -c{connections}, {seconds} s per load, median of {} interleaved rounds; \
         one worker each on CPU 1, same ECDSA P-256 certificate, TLS 1.3",
        rounds.max(1)
    );
    println!("{:<46} {:>10} {:>9} {:>11} {:>9} {:>7}", "target", "req/s", "x nginx", "CPU us/req", "x nginx", "errors");
    for (i, (name, ..)) in loads.iter().enumerate() {
        let base = summary[i / 2 * 2];
        let (rps, cpu, errors) = summary[i];
        println!(
            "{name:<46} {rps:>10.0} {:>9.2} {cpu:>11.2} {:>9.2} {errors:>7}",
            rps / base.0.max(1.0),
            cpu / base.1.max(f64::MIN_POSITIVE)
        );
    }
    Ok(())
}
