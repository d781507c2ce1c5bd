//! Starting Bookinfo: mixr, one sidecar per service instance, the services, and the
//! traffic rules of a scenario.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::services::{Service, serve};

/// Which of Istio's Bookinfo tasks the traffic rules show. jason keeps reviews v2 in every
/// one, as in Istio's tasks, which add their rules to the request-routing ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `end-user: jason` sees reviews v2, everyone else v1.
    Routing,
    /// Traffic shifting: everyone else half to reviews v1, half to v3.
    Split,
    /// The end of traffic shifting: everyone else on reviews v3.
    V3,
    /// Routing, plus a 7 s delay on ratings for jason.
    Delay,
    /// Routing, plus HTTP 500 from ratings for jason.
    Abort,
}

impl Scenario {
    pub const NAMES: &'static str = "routing, split, v3, delay, abort";

    pub fn parse(s: &str) -> Option<Scenario> {
        Some(match s {
            "routing" => Scenario::Routing,
            "split" => Scenario::Split,
            "v3" => Scenario::V3,
            "delay" => Scenario::Delay,
            "abort" => Scenario::Abort,
            _ => return None,
        })
    }
}

/// How the demo starts.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Istio's Denials task: reviews v3 may not call ratings, so v3 shows "Ratings service
    /// is currently unavailable" instead of red stars.
    pub deny_reviews_v3: bool,
    /// Which of Istio's ingress policies mixr applies at the gateway.
    pub ingress_policy: crate::gateway::IngressPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options { deny_reviews_v3: true, ingress_policy: Default::default() }
    }
}

/// The ingress gateway: where its HTTP and HTTPS ports listen, and the CA that signed its
/// certificate (for `bookinfo.example.com`).
pub struct IngressGateway {
    _process: Process,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub ca_pem: String,
    pub stats: SocketAddr,
    pub admin: SocketAddr,
}

/// The sample telemetry (Istio's request metrics, trace spans), compiled in so that the
/// binary needs no checkout beside it.
pub const TELEMETRY: &str = include_str!("../../rules/examples/telemetry.yaml");

const SERVICES: [Service; 6] = [
    Service::ProductPage,
    Service::Details,
    Service::Reviews(1),
    Service::Reviews(2),
    Service::Reviews(3),
    Service::Ratings,
];

/// mixr's denial for Bookinfo (Istio's Denials task): reviews v3 may not call ratings. The
/// match is Istio's `mixer-rule-deny-serviceaccount.yaml`: the caller's service account
/// (`source.user`, from its mTLS certificate) and its version label (from its sidecar's
/// header, believed because the certificate backs it).
pub const DENY_REVIEWS_V3: &str = r#"
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
  match: destination.labels["app"] == "ratings" && source.user == "cluster.local/ns/default/sa/bookinfo-reviews" && source.labels["version"] == "v3"
  actions: [{handler: denyreviewsv3, instances: [denyrequest]}]
"#;

/// mixr's rate limit for Bookinfo: the product API (memquota, asked for by the QuotaSpec).
pub const RATE_LIMIT: &str = r#"
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

/// A started process, killed when dropped: whatever way startup ends (an error, or the
/// demo stopped halfway), nothing it started outlives it.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Sidecar {
    service: Service,
    _process: Process,
    inbound: SocketAddr,
    outbound: SocketAddr,
    admin: SocketAddr,
    stats: SocketAddr,
}

/// A service's task, stopped when dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Dropping it stops the services and every process, then removes the directory (fields
/// drop in declaration order).
pub struct Topology {
    _services: Vec<Task>,
    pub gateway: IngressGateway,
    sidecars: Vec<Sidecar>,
    _mixr: Process,
    pub mixr_grpc: String,
    pub mixr_monitoring: String,
    traffic: PathBuf,
    dir: tempfile::TempDir,
}

async fn read_addrs(file: &Path, child: &mut Process, what: &str) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(t) = std::fs::read_to_string(file) {
            return Ok(t);
        }
        if let Ok(Some(s)) = child.0.try_wait() {
            return Err(format!("{what} exited: {s}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not start"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn field(text: &str, key: &str) -> Result<String, String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .ok_or_else(|| format!("no {key} in {text}"))
}

impl Topology {
    /// Starts everything; `mixr` and `proxy` are the binaries' paths. Everything it writes
    /// is in one temporary directory ([`Topology::config_dir`]), removed on drop.
    pub async fn start(mixr: &Path, proxy: &Path, options: Options) -> Result<Topology, String> {
        let dir = tempfile::Builder::new().prefix("bookinfo-").tempdir().map_err(|e| e.to_string())?;
        let write = |name: &str, text: &str| -> Result<PathBuf, String> {
            let path = dir.path().join(name);
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(path)
        };
        let mut policy = RATE_LIMIT.to_string();
        if options.deny_reviews_v3 {
            policy = format!("{DENY_REVIEWS_V3}---{policy}");
        }
        if let Some(ingress) = options.ingress_policy.config() {
            policy = format!("{ingress}---{policy}");
        }
        let policy = write("policy.yaml", &policy)?;
        let telemetry = write("telemetry.yaml", TELEMETRY)?;
        // Every workload's bootstrap token for mixr's CA (Citadel's role): each sidecar
        // obtains its SPIFFE certificate with it, as Istio's node agent did.
        let mut token_lines = String::new();
        let mut token_files = Vec::new();
        for account in SERVICES.iter().map(|s| s.service_account()).chain([GATEWAY_ACCOUNT.to_string()]) {
            let (token, line) = ca_token(mixr, &format!("default/{account}"))?;
            token_lines.push_str(&line);
            token_lines.push('\n');
            token_files.push((account.clone(), write(&format!("{account}.token"), &token)?));
        }
        let tokens = write("ca-tokens.yaml", &token_lines)?;
        let token_file = |account: &str| -> PathBuf {
            token_files.iter().find(|(a, _)| a == account).map(|(_, f)| f.clone()).unwrap_or_default()
        };
        let addr_file = dir.path().join("mixr.addrs");
        let mut cmd = Command::new(mixr);
        cmd.args(["serve", "--grpc-addr=127.0.0.1:0", "--monitoring-addr=127.0.0.1:0", "--log-level=warn"])
            .arg("--config")
            .arg(&policy)
            .arg("--config")
            .arg(&telemetry)
            .arg("--data-dir")
            .arg(dir.path().join("mixr-data"))
            .arg("--ca-tokens")
            .arg(&tokens);
        let mut mixr_child = Process(
            cmd.arg("--addr-file")
                .arg(&addr_file)
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("start mixr: {e}"))?,
        );
        let text = read_addrs(&addr_file, &mut mixr_child, "mixr").await?;
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
                "--namespace",
                "default",
                "--service-account",
                &svc.service_account(),
            ]);
            cmd.arg("--ca-token-file").arg(token_file(&svc.service_account()));
            cmd.args(["-l", &format!("app={}", svc.name()), "-l", &format!("version={}", svc.version())]);
            let mut child = Process(
                cmd.arg("--addr-file")
                    .arg(&addr_file)
                    .stdout(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("start mixr-proxy: {e}"))?,
            );
            let t = read_addrs(&addr_file, &mut child, "mixr-proxy").await?;
            let parse =
                |k: &str| -> Result<SocketAddr, String> { field(&t, k)?.parse().map_err(|e| format!("{k}: {e}")) };
            sidecars.push(Sidecar {
                service: svc,
                inbound: parse("inbound")?,
                outbound: parse("outbound")?,
                admin: parse("admin")?,
                stats: parse("stats")?,
                _process: child,
            });
            apps.push((svc, app));
        }
        let services = apps
            .into_iter()
            .zip(&sidecars)
            .map(|((svc, app), s)| Task(tokio::spawn(serve(svc, app, s.outbound))))
            .collect();
        let gateway = start_gateway(proxy, dir.path(), &traffic, &mixr_grpc, &token_file(GATEWAY_ACCOUNT)).await?;
        // mTLS is STRICT: nothing is served until every workload holds its certificate.
        for admin in sidecars.iter().map(|s| s.admin).chain([gateway.admin]) {
            wait_for_certificate(admin).await?;
        }
        let topo = Topology {
            _services: services,
            gateway,
            sidecars,
            _mixr: mixr_child,
            mixr_grpc,
            mixr_monitoring,
            traffic,
            dir,
        };
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

    /// A workload's sidecar's inbound listener (where other sidecars call it).
    pub fn inbound_addr(&self, workload: &str) -> Option<SocketAddr> {
        self.sidecars.iter().find(|s| s.service.workload() == workload).map(|s| s.inbound)
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
                "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: {name}}}\nspec:\n  host: {name}\n  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n  - {{name: v3, labels: {{version: v3}}}}\n---\n"
            ));
        }
        y.push_str(MTLS);
        y.push_str(&reviews_routes(scenario));
        let fault = match scenario {
            Scenario::Delay => Some("{delay: {percentage: {value: 100.0}, fixedDelay: 7s}}"),
            Scenario::Abort => Some("{abort: {percentage: {value: 100.0}, httpStatus: 500}}"),
            _ => None,
        };
        if let Some(f) = fault {
            y.push_str(&format!(
                "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: ratings}}\nspec:\n  hosts: [ratings]\n  http:\n  {JASON}\n    fault: {f}\n    route: [{{destination: {{host: ratings, subset: v1}}}}]\n  - route: [{{destination: {{host: ratings, subset: v1}}}}]\n"
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

/// Starts the ingress gateway on the traffic rules (for the services' endpoints) and its
/// own Gateway config, with a certificate made now; waits until both ports listen.
async fn start_gateway(
    proxy: &Path,
    dir: &Path,
    traffic: &Path,
    mixr: &str,
    token: &Path,
) -> Result<IngressGateway, String> {
    let certs = dir.join("gateway-certs");
    std::fs::create_dir_all(&certs).map_err(|e| e.to_string())?;
    let (ca_pem, cert, key) = crate::gateway::certificates()?;
    for (name, text) in [("ca.crt", &ca_pem), ("tls.crt", &cert), ("tls.key", &key)] {
        std::fs::write(certs.join(name), text).map_err(|e| e.to_string())?;
    }
    let config = dir.join("gateway.yaml");
    std::fs::write(&config, crate::gateway::config(&certs)).map_err(|e| e.to_string())?;
    let addr_file = dir.join("gateway.addrs");
    let mut cmd = Command::new(proxy);
    cmd.args(["--role", "gateway", "--gateway-bind", "127.0.0.1", "--gateway-ephemeral-ports"]);
    cmd.args(["--admin-addr", "127.0.0.1:0", "--stats-addr", "127.0.0.1:0", "--log-level", "warn"]);
    cmd.args(["--workload", "istio-ingressgateway", "--namespace", "default", "--mixr", mixr]);
    cmd.args(["-l", "istio=ingressgateway", "-l", "app=istio-ingressgateway"]);
    cmd.args(["--service-account", GATEWAY_ACCOUNT]).arg("--ca-token-file").arg(token);
    cmd.arg("--config").arg(traffic).arg("--config").arg(&config);
    let mut child = Process(
        cmd.arg("--addr-file")
            .arg(&addr_file)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("start the gateway: {e}"))?,
    );
    // The address file is rewritten as ports open: wait for both.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let t = read_addrs(&addr_file, &mut child, "the gateway").await?;
        if t.contains("gateway.80=") && t.contains("gateway.443=") {
            break t;
        }
        if Instant::now() > deadline {
            return Err(format!("the gateway did not open its ports: {t}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let parse = |k: &str| -> Result<SocketAddr, String> { field(&text, k)?.parse().map_err(|e| format!("{k}: {e}")) };
    Ok(IngressGateway {
        http: parse("gateway.80")?,
        https: parse("gateway.443")?,
        stats: parse("stats")?,
        admin: parse("admin")?,
        ca_pem,
        _process: child,
    })
}

/// Istio 1.4's mutual TLS task: STRICT for the whole mesh (MeshPolicy), with
/// productpage PERMISSIVE so that a browser outside the mesh can still open it directly.
const MTLS: &str = r#"apiVersion: authentication.istio.io/v1alpha1
kind: MeshPolicy
metadata: {name: default}
spec: {peers: [{mtls: {}}]}
---
apiVersion: authentication.istio.io/v1alpha1
kind: Policy
metadata: {name: productpage-from-browsers, namespace: default}
spec:
  targets: [{name: productpage}]
  peers: [{mtls: {mode: PERMISSIVE}}]
---
"#;

/// The ingress gateway's service account, as Istio's chart names it.
const GATEWAY_ACCOUNT: &str = "istio-ingressgateway-service-account";

/// `mixr ca-token default/ACCOUNT`: the token, and its line for mixr's tokens file.
fn ca_token(mixr: &Path, account: &str) -> Result<(String, String), String> {
    let out = Command::new(mixr).args(["ca-token", account]).output().map_err(|e| format!("mixr ca-token: {e}"))?;
    if !out.status.success() {
        return Err(format!("mixr ca-token: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| format!("mixr ca-token printed no {name}"))
    };
    Ok((field("token:")?, field("line:")?))
}

/// Waits (at most 20 s) until the proxy with admin port `admin` holds its certificate.
async fn wait_for_certificate(admin: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if http_get(admin, "/certs").await.is_ok_and(|t| t.contains("\"spiffe\":\"spiffe://")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the proxy with admin {admin} got no workload certificate"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The header match of Istio's request-routing task.
const JASON: &str = "- match: [{headers: {end-user: {exact: jason}}}]";

/// The reviews VirtualService of `scenario`: jason's route to v2 first, in every scenario,
/// then everyone else's.
fn reviews_routes(scenario: Scenario) -> String {
    let others = match scenario {
        Scenario::Split => {
            "  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 50}\n    - {destination: {host: reviews, subset: v3}, weight: 50}\n"
        }
        Scenario::V3 => "  - route: [{destination: {host: reviews, subset: v3}}]\n",
        Scenario::Routing | Scenario::Delay | Scenario::Abort => {
            "  - route: [{destination: {host: reviews, subset: v1}}]\n"
        }
    };
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  {JASON}\n    route: [{{destination: {{host: reviews, subset: v2}}}}]\n{others}---\n"
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jason_keeps_reviews_v2_in_every_scenario() {
        for scenario in [Scenario::Routing, Scenario::Split, Scenario::V3, Scenario::Delay, Scenario::Abort] {
            let y = reviews_routes(scenario);
            let routes: Vec<&str> = y.lines().filter(|l| l.trim_start().starts_with("- ")).collect();
            assert_eq!(routes[0].trim(), JASON, "{scenario:?}:\n{y}");
            assert!(
                y.contains(&format!("{JASON}\n    route: [{{destination: {{host: reviews, subset: v2}}}}]")),
                "{y}"
            );
        }
        assert!(reviews_routes(Scenario::Split).contains("subset: v3}, weight: 50"));
        assert!(
            reviews_routes(Scenario::V3).ends_with("  - route: [{destination: {host: reviews, subset: v3}}]\n---\n")
        );
    }
}
