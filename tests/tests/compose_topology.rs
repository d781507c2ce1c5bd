//! docker-compose.yml's topology as processes on loopback (no Docker engine here): the
//! config directories and command lines are read from the compose file, the compose host
//! names (`redis`, `postgres`) become the local Redis and PostgreSQL, and the real mixr
//! and mixr-proxy run them in front of a stand-in app. Requests through the sidecar must
//! leave their quota counts in Redis, their access-log rows in PostgreSQL and their
//! metrics on mixr, as they would in the containers. The compose file and image are also
//! read for what cannot run here: exec-form health checks that work with the real binary,
//! environment variables the programs read, read-only config, a writable data volume.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mixr_e2e::{Mixr, MixrProxy, backend, binary, check_request, eventually};
use mixr_proto::istio::mixer::v1::check_request::QuotaParams;
use mixr_rules::value::Value;
use yaml_serde::Value as Yaml;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn compose() -> Yaml {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    yaml_serde::from_str(&text).unwrap()
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let s = &compose["services"][name];
    assert!(s.is_mapping(), "no service {name} in docker-compose.yml");
    s
}

/// The host directory a service mounts at `target`, and whether read-only.
fn mount(svc: &Yaml, target: &str) -> Option<(String, bool)> {
    strings(&svc["volumes"]).iter().find_map(|v| {
        let mut parts = v.split(':');
        let (source, dest) = (parts.next()?, parts.next()?);
        (dest == target).then(|| (source.to_string(), parts.next() == Some("ro")))
    })
}

/// The value of `--flag=value` on a compose command line.
fn flag<'a>(command: &'a [String], name: &str) -> Option<&'a str> {
    command.iter().find_map(|a| a.strip_prefix(name)?.strip_prefix('='))
}

/// The config directory a service's `--config=` names, as a host path.
fn config_dir(svc: &Yaml) -> PathBuf {
    let command = strings(&svc["command"]);
    let target = flag(&command, "--config").expect("--config on the command line");
    let (source, read_only) = mount(svc, target).unwrap_or_else(|| panic!("{target} is not mounted"));
    assert!(read_only, "{source}:{target} should be mounted read-only: the programs only read config");
    repo().join(source.trim_start_matches("./"))
}

/// Copies `from` into `to`, replacing each compose address with its local one; every
/// replacement must apply somewhere, or the compose file and this test drifted apart.
fn copy_rewritten(from: &Path, to: &Path, replace: &[(String, String)]) {
    let mut used = vec![false; replace.len()];
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let mut text = std::fs::read_to_string(&path).unwrap();
        for (i, (compose, local)) in replace.iter().enumerate() {
            if text.contains(compose.as_str()) {
                text = text.replace(compose.as_str(), local);
                used[i] = true;
            }
        }
        std::fs::write(to.join(path.file_name().unwrap()), text).unwrap();
    }
    for ((compose, _), used) in replace.iter().zip(used) {
        assert!(used, "{compose} appears nowhere in {}", from.display());
    }
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The query's rows, or psql's error (the table appears with sqllog's first write, so
/// callers poll through "does not exist").
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql").arg(url).args(["-tAc", sql]).output().expect("psql (bash .ci/services.sh)");
    if !out.status.success() {
        return format!("psql: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The compose health check of `svc`, run with the real binary against `addr` (the
/// container's 127.0.0.1 port replaced): its exit status.
fn run_healthcheck(svc: &Yaml, addr: &str) -> bool {
    let test = strings(&svc["healthcheck"]["test"]);
    let (program, args) = test.split_at(2);
    assert_eq!(program[0], "CMD");
    let local = binary(Path::new(&program[1]).file_name().unwrap().to_str().unwrap());
    let args: Vec<String> = args.iter().map(|a| a.replace("127.0.0.1:15014", addr)).collect();
    Command::new(local).args(&args).status().unwrap().success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_config_does_real_work_on_loopback() {
    let compose = compose();
    let (mixr_svc, proxy_svc) = (service(&compose, "mixr"), service(&compose, "proxy"));
    let postgres = &service(&compose, "postgres")["environment"];
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let database_url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    // What compose's services answer to, from the compose file itself.
    let compose_postgres = format!(
        "postgres://postgres:{}@postgres:5432/{}",
        postgres["POSTGRES_PASSWORD"].as_str().unwrap(),
        postgres["POSTGRES_DB"].as_str().unwrap()
    );
    service(&compose, "redis");
    let rewrites = [
        ("redisServerUrl: redis:6379".to_string(), format!("redisServerUrl: {redis_url}")),
        (compose_postgres, database_url.clone()),
    ];

    let dir = tempfile::tempdir().unwrap();
    let (mixr_config, proxy_config) = (dir.path().join("mixr"), dir.path().join("proxy"));
    std::fs::create_dir(&mixr_config).unwrap();
    std::fs::create_dir(&proxy_config).unwrap();
    copy_rewritten(&config_dir(mixr_svc), &mixr_config, &rewrites);
    copy_rewritten(&config_dir(proxy_svc), &proxy_config, &[]);
    let (mixr_files, proxy_files) = (file_names(&mixr_config), file_names(&proxy_config));

    // mixr with compose's flags, on free ports; no Jaeger here.
    let mixr_flags: Vec<String> = strings(&mixr_svc["command"])
        .into_iter()
        .filter(|a| {
            a != "serve"
                && !["--config=", "--grpc-addr=", "--monitoring-addr=", "--otlp-endpoint="]
                    .iter()
                    .any(|f| a.starts_with(f))
        })
        .collect();
    let flags: Vec<&str> = mixr_flags.iter().map(String::as_str).collect();
    let mixr = Mixr::start(&[&mixr_config], &flags);
    let healthy = eventually(Duration::from_secs(10), || async { run_healthcheck(mixr_svc, &mixr.monitoring) }).await;
    assert!(healthy, "compose's health check fails against mixr:\n{}", mixr.logs());

    // The sidecar with compose's flags; its own workload name per run, so that counters in
    // the shared Redis start from zero.
    let app = backend::start("httpbin").await;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let workload =
        format!("{}-{}-{nanos}", flag(&strings(&proxy_svc["command"]), "--workload").unwrap(), std::process::id());
    let mut proxy_flags =
        vec![format!("--app-addr={}", app.addr), format!("--mixr={}", mixr.grpc), format!("--workload={workload}")];
    proxy_flags.extend(
        strings(&proxy_svc["command"])
            .into_iter()
            .filter(|a| ["--namespace=", "--label="].iter().any(|f| a.starts_with(f))),
    );
    let flags: Vec<&str> = proxy_flags.iter().map(String::as_str).collect();
    let proxy = MixrProxy::start(&[&proxy_config], &flags);

    // 20 requests per 10 s (redisquota, asked for by the sidecar's QuotaSpec), then 429.
    let client = reqwest::Client::new();
    let mut codes = Vec::new();
    for _ in 0..25 {
        let resp = client.get(format!("http://{}/get", proxy.inbound)).header("host", "httpbin").send().await.unwrap();
        codes.push(resp.status().as_u16());
    }
    let expected: Vec<u16> = [vec![200; 20], vec![429; 5]].concat();
    assert_eq!(codes, expected, "proxy log:\n{}\nmixr log:\n{}", proxy.logs(), mixr.logs());
    assert_eq!(app.hits(), 20);

    // The counter lives in Redis, shared: a Mixer Check from anyone else finds it spent.
    let redis = redis::Client::open(redis_url.as_str()).unwrap();
    let mut con = redis.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("mixr:*{workload}*:c")).query_async(&mut con).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let sum: i64 = redis::cmd("HGET").arg(&keys[0]).arg("sum").query_async(&mut con).await.unwrap();
    assert_eq!(sum, 20);
    let mut check = check_request(&[("destination.workload.name", Value::String(workload.as_str().into()))]);
    check.quotas = HashMap::from([("requestcountquota".to_string(), QuotaParams { amount: 1, best_effort: false })]);
    let answer = mixr.client().await.check(check).await.unwrap().into_inner();
    assert_eq!(answer.quotas["requestcountquota"].granted_amount, 0, "{answer:?}");

    // Every request's access-log row reaches PostgreSQL (the sidecar reports, mixr's
    // sqllog writes), with its response code.
    let query = format!(
        "SELECT variables->>'responseCode', count(*) FROM mixr_log_entries \
         WHERE instance = 'accesslog.instance.istio-system' AND variables->>'destinationWorkload' = '{workload}' \
         GROUP BY 1 ORDER BY 1"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = psql(&database_url, &query);
        if rows == "200|20\n429|5" {
            break;
        }
        assert!(Instant::now() < deadline, "access log rows: {rows:?}\nmixr log:\n{}", mixr.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Request metrics for the compose Prometheus, from the same reports.
    let labels = [("destination_workload", workload.as_str()), ("reporter", "destination"), ("response_code", "200")];
    assert_eq!(mixr.metric_where("istio_requests_total", &labels).await, Some(20.0));

    // The programs wrote nothing beside their (read-only in compose) config.
    assert_eq!(file_names(&mixr_config), mixr_files);
    assert_eq!(file_names(&proxy_config), proxy_files);
    let (grpc, monitoring) = (mixr.grpc.clone(), mixr.monitoring.clone());
    assert!(mixr.terminate().success());
    // And the health check fails once mixr is gone: it can tell.
    assert!(!run_healthcheck(mixr_svc, &monitoring), "health check passes with mixr stopped ({grpc})");
}

#[test]
fn health_checks_are_exec_form_and_every_build_variable_is_read() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    let sources: String = ["server/src", "proxy/src"].iter().map(|d| rust_sources(&repo().join(d))).collect();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if !svc["healthcheck"].is_null() {
            let test = strings(&svc["healthcheck"]["test"]);
            // CMD-SHELL runs /bin/sh (dash in Debian: no /dev/tcp); our image needs none.
            assert_eq!(test.first().map(String::as_str), Some("CMD"), "{name}: {test:?}");
        }
        for (source, _) in strings(&svc["volumes"]).iter().filter_map(|v| v.split_once(':')) {
            if source.starts_with("./") {
                assert!(repo().join(source).exists(), "{name} mounts {source}, which does not exist");
            }
        }
        if svc["build"].is_null() {
            continue;
        }
        // A variable set on our programs must be one they read (REDIS_URL once was not).
        if let Some(env) = svc["environment"].as_mapping() {
            for key in env.keys().filter_map(Yaml::as_str) {
                assert!(sources.contains(&format!("\"{key}\"")), "{name}: {key} is set but never read");
            }
        }
        let probe = strings(&svc["healthcheck"]["test"]);
        assert_eq!(probe.get(2).map(String::as_str), Some("probe"), "{name} health check: {probe:?}");
    }
    let (mixr, proxy) = (service(&compose, "mixr"), service(&compose, "proxy"));
    assert_eq!(
        strings(&proxy["healthcheck"]["test"])[1..],
        ["/usr/local/bin/mixr-proxy", "probe", "http://127.0.0.1:15000/ready"]
    );

    // The image: a non-root user, and mixr's data directory as a volume compose mounts.
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let last = |directive: &str| {
        dockerfile
            .lines()
            .filter_map(|l| l.strip_prefix(directive))
            .next_back()
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {directive} in the Dockerfile"))
            .to_string()
    };
    let user = last("USER ");
    assert!(!["root", "0", "0:0"].contains(&user.as_str()), "runs as {user}");
    let data_dir = last("ENV MIXR_DATA_DIR=");
    assert!(sources.contains("\"MIXR_DATA_DIR\""), "mixr does not read MIXR_DATA_DIR");
    assert!(last("VOLUME ").contains(&format!("\"{data_dir}\"")));
    let (volume, read_only) = mount(mixr, &data_dir).expect("compose gives mixr its data directory");
    assert!(!read_only && !volume.starts_with('.'), "{volume}: a writable named volume");
    assert!(compose["volumes"].as_mapping().unwrap().contains_key(volume.as_str()));

    // The build context leaves out the build output.
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"), "{ignore}");
}

fn rust_sources(dir: &Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.push_str(&rust_sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            all.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    all
}

/// Grafana's provisioning, read as Grafana would: its datasource is compose's Prometheus,
/// and its dashboard provider reads the directory compose mounts mixr's dashboard into.
#[test]
fn grafana_is_provisioned_with_prometheus_and_the_mixr_dashboard() {
    let compose = compose();
    let grafana = service(&compose, "grafana");
    let (provisioning, read_only) =
        mount(grafana, "/etc/grafana/provisioning").expect("grafana mounts its provisioning directory");
    assert!(read_only, "{provisioning}");
    let provisioning = repo().join(provisioning.trim_start_matches("./"));
    let read =
        |p: &str| -> Yaml { yaml_serde::from_str(&std::fs::read_to_string(provisioning.join(p)).unwrap()).unwrap() };

    let datasources = read("datasources/prometheus.yaml");
    let ds = &datasources["datasources"][0];
    // Istio's dashboards ask for a datasource named Prometheus.
    assert_eq!(ds["name"].as_str(), Some("Prometheus"));
    assert_eq!(ds["type"].as_str(), Some("prometheus"));
    let url = ds["url"].as_str().unwrap();
    let (host, port) = url.strip_prefix("http://").and_then(|h| h.split_once(':')).expect("http://HOST:PORT");
    let prometheus = service(&compose, "prometheus");
    assert_eq!(host, "prometheus");
    assert!(strings(&prometheus["ports"]).iter().any(|p| p.ends_with(&format!(":{port}"))), "{url}");

    let providers = read("dashboards/mixr.yaml");
    let dir = providers["providers"][0]["options"]["path"].as_str().unwrap();
    let (dashboard, _) =
        mount(grafana, &format!("{dir}/mixr.json")).expect("mixr.json is mounted where the provider looks");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join(dashboard.trim_start_matches("./"))).unwrap())
            .expect("the dashboard is JSON");
    assert_eq!(json["uid"], "mixr");
    assert!(strings(&grafana["depends_on"]).contains(&"prometheus".to_string()));
}
