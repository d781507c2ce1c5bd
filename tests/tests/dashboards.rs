//! Istio's Grafana dashboards, Kiali's graph queries and mixr's own dashboard, run against a
//! real Prometheus that scrapes mixr and the Bookinfo sidecars while Bookinfo traffic runs.
//! The queries are in tests/testdata/dashboards/ (Istio's and Kiali's, copied as they were
//! written) and deploy/grafana/mixr.json (ours); each says what it must return.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mixr_bookinfo::topology::{Options, Scenario, Topology};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    /// Some series with a value above 0.
    Nonzero,
    /// At least one series.
    Data,
    /// Prometheus accepts the query; it may be empty (the fixture says why).
    Valid,
}

#[derive(Debug, Deserialize)]
struct IstioFixture {
    variables: BTreeMap<String, String>,
    templating: Vec<Templating>,
    edges: Vec<Edges>,
    queries: Vec<FixtureQuery>,
}

/// A dashboard's templating variable: the values Grafana offers come from `query`.
#[derive(Debug, Deserialize)]
struct Templating {
    dashboard: String,
    variable: String,
    query: String,
    /// The labels its regex takes the value from.
    labels: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Edges {
    query: String,
    series: Vec<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct FixtureQuery {
    dashboard: String,
    panel: String,
    expr: String,
    expect: Expect,
    why: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MixrFixture {
    panels: Vec<MixrPanel>,
}

#[derive(Debug, Deserialize)]
struct MixrPanel {
    panel: String,
    expect: Expect,
    why: Option<String>,
}

/// One query to run: where it comes from, the PromQL, what it must return.
#[derive(Debug, Clone)]
struct Check {
    name: String,
    expr: String,
    expect: Expect,
}

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/dashboards").join(name)
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn istio_fixture() -> IstioFixture {
    yaml_serde::from_str(&std::fs::read_to_string(testdata("istio.yaml")).unwrap()).unwrap()
}

/// Grafana's templating: `$name` becomes the variable's value. Longest names first, so a
/// name that is a prefix of another never eats it.
fn substitute(expr: &str, variables: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = expr.to_string();
    for n in names {
        out = out.replace(&format!("${n}"), &variables[n]);
    }
    assert!(!out.contains('$'), "a templating variable has no value in the fixture: {out}");
    out
}

fn istio_checks(fixture: &IstioFixture) -> Vec<Check> {
    fixture
        .queries
        .iter()
        .map(|q| {
            assert!(
                q.expect == Expect::Data || q.why.is_some(),
                "{}/{}: say why it may be empty",
                q.dashboard,
                q.panel
            );
            Check {
                name: format!("{} / {}", q.dashboard, q.panel),
                expr: substitute(&q.expr, &fixture.variables),
                expect: q.expect,
            }
        })
        .collect()
}

/// Every target of every panel of deploy/grafana/mixr.json, with what the fixture says the
/// panel must show. The dashboard and the fixture must name the same panels.
fn mixr_checks() -> Vec<Check> {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(repo("deploy/grafana/mixr.json")).unwrap())
        .expect("mixr.json is JSON");
    let fixture: MixrFixture = yaml_serde::from_str(&std::fs::read_to_string(testdata("mixr.yaml")).unwrap()).unwrap();
    let panels: Vec<&Value> =
        dashboard["panels"].as_array().expect("panels").iter().filter(|p| p["type"] != "row").collect();
    let titles: Vec<&str> = panels.iter().map(|p| p["title"].as_str().expect("a panel title")).collect();
    let listed: Vec<&str> = fixture.panels.iter().map(|p| p.panel.as_str()).collect();
    assert_eq!(titles, listed, "mixr.json's panels and tests/testdata/dashboards/mixr.yaml differ");
    let mut checks = Vec::new();
    for (panel, expected) in panels.iter().zip(&fixture.panels) {
        assert!(
            expected.expect != Expect::Valid || expected.why.is_some(),
            "{}: say why it may be empty",
            expected.panel
        );
        // Provisioned and imported alike, the panel asks the dashboard's datasource variable.
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{}", expected.panel);
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty()).expect("a panel with queries");
        for t in targets {
            checks.push(Check {
                name: format!("mixr / {} / {}", expected.panel, t["refId"].as_str().unwrap_or("?")),
                expr: t["expr"].as_str().expect("a PromQL expr").to_string(),
                expect: expected.expect,
            });
        }
    }
    checks
}

#[test]
fn fixtures_name_their_variables_and_match_the_dashboard() {
    let fixture = istio_fixture();
    let checks = istio_checks(&fixture);
    for dashboard in ["istio-mesh-dashboard", "istio-service-dashboard", "istio-workload-dashboard", "kiali"] {
        assert!(
            checks.iter().any(|c| c.name.starts_with(dashboard) && c.expect == Expect::Data),
            "{dashboard}: no query that must return data"
        );
    }
    for t in &fixture.templating {
        assert!(fixture.variables.contains_key(&t.variable), "{}: no value for ${}", t.dashboard, t.variable);
    }
    for e in &fixture.edges {
        assert!(fixture.queries.iter().any(|q| q.panel == e.query), "edges name an unknown query {}", e.query);
    }
    assert!(mixr_checks().len() >= 24);
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("deploy/grafana/mixr.json")).unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "mixr");
    assert_eq!(dashboard["templating"]["list"][0]["name"], "datasource");
}

/// A started Prometheus, killed when dropped.
struct Prometheus {
    child: Child,
    web: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(mixr: &str, sidecars: &[String]) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let quoted = |addrs: &[String]| addrs.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n- job_name: mixr\n  static_configs:\n  - targets: [{}]\n- job_name: mixr-proxy\n  static_configs:\n  - targets: [{}]\n",
            quoted(&[mixr.to_string()]),
            quoted(sidecars)
        ),
    )
    .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Prometheus { child, web, _dir: dir }
}

/// Runs `expr` through Prometheus's HTTP API: `Ok(result series)` or `Err(why not)`.
async fn query(web: std::net::SocketAddr, expr: &str) -> Result<Vec<Value>, String> {
    let resp = reqwest::Client::new()
        .get(format!("http://{web}/api/v1/query?query={}", url_encode(expr)))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let text = resp.text().await.map_err(|e| e.to_string())?;
    let body: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The values Grafana would offer for `variable`: label_values(L) asks Prometheus for
/// the label's values; a query's series give theirs.
async fn variable_values(
    web: std::net::SocketAddr,
    t: &Templating,
    variables: &BTreeMap<String, String>,
) -> Vec<String> {
    if let Some(label) = t.query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')) {
        let url = format!("http://{web}/api/v1/label/{label}/values");
        let body: Value = serde_json::from_str(&reqwest::get(url).await.unwrap().text().await.unwrap()).unwrap();
        return body["data"].as_array().unwrap().iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
    }
    let series = query(web, &substitute(&t.query, variables)).await.unwrap_or_default();
    series.iter().flat_map(|s| t.labels.iter().filter_map(|l| s["metric"][l].as_str().map(str::to_string))).collect()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn value_of(series: &Value) -> f64 {
    series["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

/// Why `check` does not hold now, or `None` when it does.
async fn failure(web: std::net::SocketAddr, check: &Check) -> Option<String> {
    match query(web, &check.expr).await {
        Err(e) => Some(format!("rejected: {e}")),
        Ok(series) => match check.expect {
            Expect::Valid => None,
            Expect::Data if series.is_empty() => Some("no series".into()),
            Expect::Nonzero if !series.iter().any(|s| value_of(s) > 0.0) => {
                Some(format!("no series above 0: {}", Value::Array(series)))
            }
            _ => None,
        },
    }
}

/// Bookinfo's users, until dropped: anonymous users (reviews v1 and v3, which mixr denies
/// ratings), jason (reviews v2, which reads ratings) and the product API past its quota.
struct Traffic(tokio::task::JoinHandle<()>);

impl Drop for Traffic {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn drive(topo: &Topology) -> Traffic {
    let page = topo.productpage();
    let api = page.replace("/productpage", "/api/v1/products");
    Traffic(tokio::spawn(async move {
        let client = reqwest::Client::new();
        loop {
            for user in [None, Some("jason")] {
                let mut req = client.get(&page);
                if let Some(u) = user {
                    req = req.header("end-user", u);
                }
                let _ = req.send().await;
            }
            let _ = client.get(&api).send().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_and_mixr_dashboards_show_bookinfo() {
    if Command::new("prometheus").arg("--version").output().is_err() {
        eprintln!("SKIPPED: prometheus is not installed (CI installs it with .ci/services.sh)");
        return;
    }
    let fixture = istio_fixture();
    let mut checks = istio_checks(&fixture);
    checks.extend(mixr_checks());

    let topo =
        Topology::start(&mixr_e2e::binary("mixr"), &mixr_e2e::binary("mixr-proxy"), Options::default()).await.unwrap();
    // Sidecars name themselves to callers in the mesh only.
    let resp = reqwest::get(topo.productpage()).await.unwrap();
    assert!(resp.headers().get("x-istio-attributes").is_none(), "{:?}", resp.headers());
    let workloads = ["productpage-v1", "details-v1", "reviews-v1", "reviews-v2", "reviews-v3", "ratings-v1"];
    let sidecars: Vec<String> = workloads.iter().map(|w| topo.stats_addr(w).unwrap().to_string()).collect();
    let prom = start_prometheus(&topo.mixr_monitoring, &sidecars);
    // The mesh dashboard counts 5xx: ratings aborts jason's calls with 500 for a while.
    topo.apply(Scenario::Abort).await.unwrap();
    let _traffic = drive(&topo);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Then anonymous users reach reviews v1 and v3 (mixr denies v3 its ratings), jason v2.
    topo.apply(Scenario::Split).await.unwrap();

    // Rates need two scrapes of each series after its first sample: poll until every check
    // holds, and name the ones that never do.
    let deadline = Instant::now() + Duration::from_secs(60);
    let failures = loop {
        let mut failures = Vec::new();
        for c in &checks {
            if let Some(why) = failure(prom.web, c).await {
                failures.push(format!("{} [{:?}]: {why}\n    {}", c.name, c.expect, c.expr));
            }
        }
        if failures.is_empty() || Instant::now() > deadline {
            break failures;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        failures.is_empty(),
        "{} of {} queries do not hold:\n{}",
        failures.len(),
        checks.len(),
        failures.join("\n")
    );

    // The abort fault's 500s are there, reported by the caller's sidecar only.
    let aborted = query(
        prom.web,
        r#"sum(istio_requests_total{reporter="source",source_workload="reviews-v2",response_code="500"})"#,
    )
    .await
    .unwrap();
    assert!(aborted.iter().any(|s| value_of(s) > 0.0), "no 500 from the abort fault: {aborted:?}");

    plot(prom.web);

    // Grafana offers Bookinfo's values in each dashboard's variables.
    for t in &fixture.templating {
        let values = variable_values(prom.web, t, &fixture.variables).await;
        let want = &fixture.variables[&t.variable];
        assert!(values.contains(want), "{} ${}: {want} is not among {values:?}", t.dashboard, t.variable);
    }

    // Kiali draws Bookinfo's edges from its graph queries' series.
    for edges in &fixture.edges {
        let q = fixture.queries.iter().find(|q| q.panel == edges.query).unwrap();
        let series = query(prom.web, &substitute(&q.expr, &fixture.variables)).await.unwrap();
        for want in &edges.series {
            let found = series.iter().any(|s| want.iter().all(|(k, v)| s["metric"][k] == v.as_str()));
            assert!(found, "Kiali's {}: no edge {want:?} among\n{}", edges.query, Value::Array(series.clone()));
        }
    }
}

/// Draws mixr's dashboard from this Prometheus (deploy/grafana/plot_dashboard.py), so the
/// script that makes docs/img/mixr-dashboard.svg keeps working;
/// `MIXR_DASHBOARD_PLOT=docs/img/mixr-dashboard.svg` keeps the picture.
fn plot(web: std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mixr-dashboard.svg");
    let run = Command::new("python3")
        .arg(repo("deploy/grafana/plot_dashboard.py"))
        .arg(format!("http://{web}"))
        .arg(&out)
        .args(["--minutes", "1"])
        .output();
    let Ok(run) = run else {
        eprintln!("python3 not installed: the dashboard picture was not drawn");
        return;
    };
    assert!(run.status.success(), "plot_dashboard.py: {}", String::from_utf8_lossy(&run.stderr));
    let svg = std::fs::read_to_string(&out).unwrap();
    assert!(!svg.contains("no data"), "a main panel has nothing to draw:\n{svg}");
    assert!(svg.matches("<polyline").count() >= 9, "{svg}");
    if let Ok(keep) = std::env::var("MIXR_DASHBOARD_PLOT") {
        std::fs::copy(&out, keep).unwrap();
    }
}
