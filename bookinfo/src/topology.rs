//! Starting Bookinfo: mixr, one sidecar per service instance, the services, and the
//! traffic rules of a scenario.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::services::{Service, serve};

/// Which of Istio's Bookinfo tasks the traffic rules show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `end-user: jason` sees reviews v2, everyone else v1.
    Routing,
    /// Half of the traffic to reviews v1, half to v3.
    Split,
    /// Routing, plus a 7 s delay on ratings for jason.
    Delay,
    /// Routing, plus HTTP 500 from ratings for jason.
    Abort,
}

impl Scenario {
    pub fn parse(s: &str) -> Option<Scenario> {
        Some(match s {
            "routing" => Scenario::Routing,
            "split" => Scenario::Split,
            "delay" => Scenario::Delay,
            "abort" => Scenario::Abort,
            _ => return None,
        })
    }
}

const SERVICES: [Service; 6] = [
    Service::ProductPage,
    Service::Details,
    Service::Reviews(1),
    Service::Reviews(2),
    Service::Reviews(3),
    Service::Ratings,
];

/// mixr's policy for Bookinfo: reviews v3 may not call ratings (a denier on workload
/// labels), and the product API is rate-limited (memquota, asked for by the QuotaSpec).
pub const POLICY: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: denyreviewsv3}
spec:
  compiledAdapter: denier
  params: {status: {code: 7, message: Not allowed}}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: denyrequest}
spec: {compiledTemplate: checknothing}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: denyreviewsv3}
spec:
  match: destination.workload.name == "ratings-v1" && (source.workload.name | "") == "reviews-v3"
  actions: [{handler: denyreviewsv3, instances: [denyrequest]}]
---
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: quotahandler}
spec:
  compiledAdapter: memquota
  params:
    quotas: [{name: requestcountquota, maxAmount: 3, validDuration: 60s}]
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: requestcountquota}
spec: {compiledTemplate: quota, params: {dimensions: {destination: destination.workload.name | "unknown"}}}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: quota}
spec:
  actions: [{handler: quotahandler, instances: [requestcountquota]}]
"#;

/// The QuotaSpec the productpage sidecar reads: 1 unit of requestcountquota per call to
/// the product API.
pub const QUOTA_SPEC: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: QuotaSpec
metadata: {name: request-count, namespace: default}
spec:
  rules:
  - match: [{clause: {request.url_path: {prefix: /api/v1/products}}}]
    quotas: [{quota: requestcountquota, charge: 1}]
---
apiVersion: config.istio.io/v1alpha2
kind: QuotaSpecBinding
metadata: {name: request-count, namespace: default}
spec:
  quotaSpecs: [{name: request-count, namespace: default}]
  services: [{name: productpage, namespace: default}]
"#;

struct Sidecar {
    service: Service,
    child: Child,
    inbound: SocketAddr,
    outbound: SocketAddr,
    admin: SocketAddr,
    stats: SocketAddr,
}

pub struct Topology {
    mixr: Child,
    pub mixr_grpc: String,
    pub mixr_monitoring: String,
    sidecars: Vec<Sidecar>,
    traffic: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for s in &mut self.sidecars {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        let _ = self.mixr.kill();
        let _ = self.mixr.wait();
    }
}

fn read_addrs(file: &Path, child: &mut Child, what: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(t) = std::fs::read_to_string(file) {
            return Ok(t);
        }
        if let Ok(Some(s)) = child.try_wait() {
            return Err(format!("{what} exited: {s}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not start"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn field(text: &str, key: &str) -> Result<String, String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .ok_or_else(|| format!("no {key} in {text}"))
}

impl Topology {
    /// Starts everything; `mixr` and `proxy` are the binaries' paths, `telemetry` an extra
    /// mixr config (the sample telemetry).
    pub async fn start(mixr: &Path, proxy: &Path, telemetry: Option<&Path>) -> Result<Topology, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, POLICY).map_err(|e| e.to_string())?;
        let addr_file = dir.path().join("mixr.addrs");
        let mut cmd = Command::new(mixr);
        cmd.args(["serve", "--grpc-addr=127.0.0.1:0", "--monitoring-addr=127.0.0.1:0", "--log-level=warn", "--config"])
            .arg(&policy);
        if let Some(t) = telemetry {
            cmd.arg("--config").arg(t);
        }
        let mut mixr_child = cmd
            .arg("--addr-file")
            .arg(&addr_file)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("start mixr: {e}"))?;
        let text = read_addrs(&addr_file, &mut mixr_child, "mixr")?;
        let (mixr_grpc, mixr_monitoring) = (field(&text, "grpc")?, field(&text, "monitoring")?);

        // Sidecars start on an empty traffic config: the real one needs their ports.
        let traffic = dir.path().join("traffic.yaml");
        std::fs::write(&traffic, "").map_err(|e| e.to_string())?;
        let quota = dir.path().join("quota.yaml");
        std::fs::write(&quota, QUOTA_SPEC).map_err(|e| e.to_string())?;
        let mut apps = Vec::new();
        let mut sidecars = Vec::new();
        for svc in SERVICES {
            let app = TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
            let app_addr = app.local_addr().map_err(|e| e.to_string())?;
            let addr_file = dir.path().join(format!("{}.addrs", svc.workload()));
            let mut cmd = Command::new(proxy);
            for flag in ["--outbound-addr", "--inbound-addr", "--admin-addr", "--stats-addr"] {
                cmd.arg(flag).arg("127.0.0.1:0");
            }
            cmd.arg("--config").arg(&traffic).arg("--config").arg(&quota);
            cmd.args([
                "--app-addr",
                &app_addr.to_string(),
                "--workload",
                &svc.workload(),
                "--mixr",
                &mixr_grpc,
                "--log-level",
                "warn",
            ]);
            cmd.args(["-l", &format!("app={}", svc.name()), "-l", &format!("version={}", svc.version())]);
            let mut child = cmd
                .arg("--addr-file")
                .arg(&addr_file)
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("start mixr-proxy: {e}"))?;
            let t = read_addrs(&addr_file, &mut child, "mixr-proxy")?;
            let parse =
                |k: &str| -> Result<SocketAddr, String> { field(&t, k)?.parse().map_err(|e| format!("{k}: {e}")) };
            sidecars.push(Sidecar {
                service: svc,
                inbound: parse("inbound")?,
                outbound: parse("outbound")?,
                admin: parse("admin")?,
                stats: parse("stats")?,
                child,
            });
            apps.push((svc, app));
        }
        for ((svc, app), sidecar) in apps.into_iter().zip(&sidecars) {
            tokio::spawn(serve(svc, app, sidecar.outbound));
        }
        let topo = Topology { mixr: mixr_child, mixr_grpc, mixr_monitoring, sidecars, traffic, dir };
        topo.apply(Scenario::Routing).await?;
        Ok(topo)
    }

    /// Where a browser (or curl) reaches productpage: its sidecar's inbound listener.
    pub fn productpage(&self) -> String {
        format!("http://{}/productpage", self.sidecars[0].inbound)
    }

    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stats_addr(&self, workload: &str) -> Option<SocketAddr> {
        self.sidecars.iter().find(|s| s.service.workload() == workload).map(|s| s.stats)
    }

    fn traffic_config(&self, scenario: Scenario) -> String {
        let mut y = String::new();
        for name in ["productpage", "details", "reviews", "ratings"] {
            let endpoints: Vec<String> = self
                .sidecars
                .iter()
                .filter(|s| s.service.name() == name)
                .map(|s| {
                    format!(
                        "  - {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{app: {name}, version: {}}}}}",
                        s.inbound.port(),
                        s.service.version()
                    )
                })
                .collect();
            y.push_str(&format!(
                "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}]\n  ports: [{{number: 9080, name: http}}]\n  endpoints:\n{}\n---\n",
                endpoints.join("\n")
            ));
            y.push_str(&format!(
                "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: {name}}}\nspec:\n  host: {name}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n  - {{name: v3, labels: {{version: v3}}}}\n---\n"
            ));
        }
        let jason = "- match: [{headers: {end-user: {exact: jason}}}]";
        let reviews = match scenario {
            Scenario::Split => "  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 50}\n    - {destination: {host: reviews, subset: v3}, weight: 50}\n".to_string(),
            _ => format!("  {jason}\n    route: [{{destination: {{host: reviews, subset: v2}}}}]\n  - route: [{{destination: {{host: reviews, subset: v1}}}}]\n"),
        };
        y.push_str(&format!("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n{reviews}---\n"));
        let fault = match scenario {
            Scenario::Delay => Some("{delay: {percentage: {value: 100.0}, fixedDelay: 7s}}"),
            Scenario::Abort => Some("{abort: {percentage: {value: 100.0}, httpStatus: 500}}"),
            _ => None,
        };
        if let Some(f) = fault {
            y.push_str(&format!(
                "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: ratings}}\nspec:\n  hosts: [ratings]\n  http:\n  {jason}\n    fault: {f}\n    route: [{{destination: {{host: ratings, subset: v1}}}}]\n  - route: [{{destination: {{host: ratings, subset: v1}}}}]\n"
            ));
        }
        y
    }

    /// Switches the traffic rules; returns once every sidecar serves the new ones.
    pub async fn apply(&self, scenario: Scenario) -> Result<(), String> {
        let text = self.traffic_config(scenario);
        if std::fs::read_to_string(&self.traffic).is_ok_and(|current| current == text) {
            return Ok(());
        }
        let generations: Vec<u64> = futures_generations(&self.sidecars).await;
        let tmp = self.traffic.with_extension("tmp");
        std::fs::write(&tmp, self.traffic_config(scenario))
            .and_then(|_| std::fs::rename(&tmp, &self.traffic))
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let now = futures_generations(&self.sidecars).await;
            if now.iter().zip(&generations).all(|(n, before)| n > before) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("sidecars did not load the new traffic rules".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Each sidecar's config generation, from its admin `/config_dump`.
async fn futures_generations(sidecars: &[Sidecar]) -> Vec<u64> {
    let mut out = Vec::new();
    for s in sidecars {
        out.push(
            http_get(s.admin, "/config_dump")
                .await
                .ok()
                .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
                .and_then(|v| v["generation"].as_u64())
                .unwrap_or(0),
        );
    }
    out
}

/// A plain GET on loopback.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    sock.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    sock.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).to_string();
    Ok(text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}
