//! The Pod-to-attributes mapping on Pod JSON fixtures, the generator's lookups, and the
//! list/watch client against an API server stand-in on loopback.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use mixr_rules::expr::GeneratedValues;
use mixr_rules::snapshot::InstanceValues;
use mixr_rules::value::{OwnedValue, Value, ip_to_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cache::PodCache;
use super::client::{self, ApiServer, WatchEnd};
use super::pod::{PodInfo, PodJson, Side, fill, key_from_uid};
use super::{AttributeGenerator, KubernetesEnv};

fn pod(json: &str) -> PodInfo {
    PodInfo::from_json(serde_json::from_str::<PodJson>(json).unwrap())
}

fn productpage() -> PodInfo {
    pod(include_str!("testdata/productpage.json"))
}

fn s(v: &str) -> OwnedValue {
    Value::String(v.to_string().into())
}

fn ip(v: &str) -> OwnedValue {
    Value::Bytes(ip_to_bytes(v.parse::<IpAddr>().unwrap()).into())
}

fn text(out: &GeneratedValues, field: &str) -> Option<String> {
    out.get(field).map(Value::to_text)
}

#[test]
fn a_deployment_pod_maps_to_its_workload_and_owner() {
    let mut out = GeneratedValues::new();
    fill(&mut out, &productpage(), Side::Source, None);
    assert_eq!(out.get("source_pod_uid"), Some(&s("kubernetes://productpage-v1-6b746f74dc-9stvs.bookinfo")));
    assert_eq!(out.get("source_pod_ip"), Some(&ip("10.44.1.7")));
    assert_eq!(out.get("source_host_ip"), Some(&ip("10.128.0.12")));
    assert_eq!(out.get("source_pod_name"), Some(&s("productpage-v1-6b746f74dc-9stvs")));
    assert_eq!(out.get("source_namespace"), Some(&s("bookinfo")));
    assert_eq!(out.get("source_service_account_name"), Some(&s("bookinfo-productpage")));
    assert_eq!(text(&out, "source_labels").as_deref(), Some("app:productpage,pod-template-hash:6b746f74dc,version:v1"));
    assert_eq!(out.get("source_workload_name"), Some(&s("productpage-v1")));
    assert_eq!(out.get("source_workload_namespace"), Some(&s("bookinfo")));
    assert_eq!(out.get("source_workload_uid"), Some(&s("istio://bookinfo/workloads/productpage-v1")));
    assert_eq!(
        out.get("source_owner"),
        Some(&s("kubernetes://apis/apps/v1/namespaces/bookinfo/deployments/productpage-v1"))
    );
    assert_eq!(out.get("destination_pod_name"), None, "only the side asked for is filled");
    assert_eq!(out.get("source_container_name"), None);
}

#[test]
fn the_destination_container_is_the_one_on_the_port() {
    let pod = productpage();
    for (port, want) in
        [(Some(9080), Some("productpage")), (Some(15090), Some("istio-proxy")), (Some(1), None), (None, None)]
    {
        let mut out = GeneratedValues::new();
        fill(&mut out, &pod, Side::Destination, port);
        assert_eq!(text(&out, "destination_container_name").as_deref(), want, "port {port:?}");
        assert_eq!(text(&out, "destination_workload_name").as_deref(), Some("productpage-v1"));
    }
}

#[test]
fn other_controllers_and_bare_pods() {
    let mut out = GeneratedValues::new();
    fill(&mut out, &pod(include_str!("testdata/mysqldb.json")), Side::Destination, Some(3306));
    assert_eq!(text(&out, "destination_workload_name").as_deref(), Some("mysqldb"));
    assert_eq!(
        text(&out, "destination_owner").as_deref(),
        Some("kubernetes://apis/apps/v1/namespaces/bookinfo/statefulsets/mysqldb")
    );
    assert_eq!(text(&out, "destination_container_name").as_deref(), Some("mysqldb"));
    assert_eq!(out.get("destination_service_account_name"), None, "no account named, none made up");

    let mut out = GeneratedValues::new();
    fill(&mut out, &pod(include_str!("testdata/debug.json")), Side::Source, None);
    assert_eq!(text(&out, "source_workload_name").as_deref(), Some("debug"));
    assert_eq!(text(&out, "source_owner").as_deref(), Some("kubernetes://apis/v1/namespaces/default/pods/debug"));
    assert_eq!(text(&out, "source_labels").as_deref(), Some(""));
    assert_eq!(out.get("source_host_ip"), None);
}

#[test]
fn uids_name_pods() {
    assert_eq!(
        key_from_uid("kubernetes://productpage-v1-6b7.bookinfo").as_deref(),
        Some("bookinfo/productpage-v1-6b7")
    );
    assert_eq!(key_from_uid("kubernetes://a.b.c").as_deref(), Some("c/a.b"), "a namespace has no dots");
    assert_eq!(key_from_uid("kubernetes://nodot"), None);
    assert_eq!(key_from_uid("spiffe://cluster.local/ns/a/sa/b"), None);
}

fn instance(fields: Vec<(&'static str, OwnedValue)>) -> InstanceValues {
    InstanceValues { fields, maps: Vec::new() }
}

fn synced_cache() -> Arc<PodCache> {
    let cache = Arc::new(PodCache::default());
    cache.replace(vec![
        productpage(),
        pod(include_str!("testdata/mysqldb.json")),
        pod(include_str!("testdata/node-exporter.json")),
    ]);
    cache
}

#[test]
fn the_generator_finds_pods_by_uid_then_by_ip() {
    let generator = KubernetesEnv::with_cache(synced_cache());
    let out = generator
        .generate(&instance(vec![
            ("source_uid", s("kubernetes://productpage-v1-6b746f74dc-9stvs.bookinfo")),
            ("source_ip", ip("10.44.2.9")),
            ("destination_uid", s("")),
            ("destination_ip", ip("10.44.2.9")),
            ("destination_port", Value::Int64(3306)),
        ]))
        .unwrap();
    assert_eq!(text(&out, "source_workload_name").as_deref(), Some("productpage-v1"), "the uid wins over the IP");
    assert_eq!(text(&out, "destination_workload_name").as_deref(), Some("mysqldb"), "an empty uid falls to the IP");
    assert_eq!(text(&out, "destination_container_name").as_deref(), Some("mysqldb"));

    // The unspecified address (what bindings default to), an unknown pod and a pod on the
    // node's network are not found: outputs stay unset.
    let out = generator
        .generate(&instance(vec![
            ("source_uid", s("")),
            ("source_ip", ip("0.0.0.0")),
            ("destination_uid", s("kubernetes://gone.bookinfo")),
        ]))
        .unwrap();
    assert!(out.is_empty(), "{out:?}");
    let out = generator.generate(&instance(vec![("source_ip", ip("10.128.0.12"))])).unwrap();
    assert!(out.is_empty(), "host-network pods share the node's address: {out:?}");
    let out = generator.generate(&instance(vec![("source_ip", ip("::ffff:10.44.1.7"))])).unwrap();
    assert_eq!(text(&out, "source_pod_name").as_deref(), Some("productpage-v1-6b746f74dc-9stvs"));
}

#[test]
fn nothing_is_generated_without_a_cluster_or_before_the_first_list() {
    let no_cluster = KubernetesEnv::start(None, std::time::Duration::from_secs(60), "k.istio-system");
    assert_eq!(no_cluster.generate(&instance(vec![("source_uid", s("kubernetes://a.b"))])), None);
    let unsynced = KubernetesEnv::with_cache(Arc::new(PodCache::default()));
    assert_eq!(unsynced.generate(&instance(vec![])), None);
}

#[test]
fn the_cache_follows_updates_and_address_reuse() {
    let cache = synced_cache();
    let addr: IpAddr = "10.44.1.7".parse().unwrap();
    assert_eq!(cache.by_ip(addr).map(|p| p.name.clone()).as_deref(), Some("productpage-v1-6b746f74dc-9stvs"));
    // Another pod takes the address, then the first one is deleted: the address stays with
    // the new pod.
    let mut other = pod(include_str!("testdata/debug.json"));
    other.ip = Some(addr);
    cache.upsert(other);
    cache.delete("bookinfo/productpage-v1-6b746f74dc-9stvs");
    assert_eq!(cache.by_ip(addr).map(|p| p.name.clone()).as_deref(), Some("debug"));
    assert!(cache.by_key("bookinfo/productpage-v1-6b746f74dc-9stvs").is_none());
    assert_eq!(cache.len(), 3);
}

/// One request the stand-in saw: path and Authorization header.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// An API server stand-in: answers GETs with `respond(path)` as the body, then closes.
async fn fake_api(respond: impl Fn(&str) -> String + Send + Sync + 'static) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let (respond, log) = (respond.clone(), log.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let auth = head
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: ").or_else(|| l.strip_prefix("Authorization: ")))
                    .unwrap_or("")
                    .to_string();
                log.lock().unwrap().push((path.clone(), auth));
                let body = respond(&path);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

fn kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(dir.join("token"), "s3cret\n").unwrap();
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\ncontexts:\n- name: test\n  context: {{cluster: c, user: u}}\nclusters:\n- name: c\n  cluster: {{server: '{server}'}}\nusers:\n- name: u\n  user: {{tokenFile: token}}\n"
        ),
    )
    .unwrap();
    path
}

fn pod_json(name: &str, ip: &str, version: &str, rv: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv, "labels": {"version": version}},
        "spec": {"containers": [{"name": "app"}]},
        "status": {"phase": "Running", "podIP": ip}
    })
}

#[tokio::test]
async fn lists_in_pages_and_applies_watch_events() {
    let (url, seen) = fake_api(|path| {
        if path.contains("watch=1") {
            let events = [
                serde_json::json!({"type": "ADDED", "object": pod_json("c", "10.0.0.3", "v1", "12")}),
                serde_json::json!({"type": "MODIFIED", "object": pod_json("a", "10.0.0.1", "v2", "13")}),
                serde_json::json!({"type": "DELETED", "object": pod_json("b", "10.0.0.2", "v1", "14")}),
                serde_json::json!({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}),
            ];
            events.iter().map(|e| format!("{e}\n")).collect()
        } else if path.contains("continue=page2") {
            serde_json::json!({"metadata": {"resourceVersion": "11"}, "items": [pod_json("b", "10.0.0.2", "v1", "9")]})
                .to_string()
        } else {
            serde_json::json!({"metadata": {"resourceVersion": "10", "continue": "page2"}, "items": [pod_json("a", "10.0.0.1", "v1", "8")]})
                .to_string()
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::from_kubeconfig(&kubeconfig(dir.path(), &url)).unwrap();
    let (pods, version) = client::list(&api).await.unwrap();
    assert_eq!(pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(version, "11", "the last page's version");
    let cache = PodCache::default();
    cache.replace(pods);
    assert_eq!(client::watch(&api, &cache, version).await.unwrap(), WatchEnd::Closed("15".into()));
    assert_eq!(cache.by_key("ns/a").unwrap().labels, vec![("version".to_string(), "v2".to_string())]);
    assert!(cache.by_key("ns/b").is_none() && cache.by_ip("10.0.0.2".parse().unwrap()).is_none());
    assert_eq!(cache.by_ip("10.0.0.3".parse().unwrap()).unwrap().name, "c");

    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().all(|(_, auth)| auth == "Bearer s3cret"), "{seen:?}");
    assert!(seen[0].0.starts_with("/api/v1/pods?limit=500"), "{seen:?}");
    assert!(seen[1].0.contains("continue=page2"));
    assert!(seen[2].0.contains("watch=1") && seen[2].0.contains("resourceVersion=11"));
}

#[tokio::test]
async fn an_expired_version_and_bad_events_end_the_watch() {
    let (url, _) = fake_api(|path| {
        if path.contains("resourceVersion=old") {
            "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"code\":410,\"reason\":\"Expired\"}}\n".into()
        } else {
            "{\"type\":\"ADDED\",\"object\":\"not a pod\"}\n".into()
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::from_kubeconfig(&kubeconfig(dir.path(), &url)).unwrap();
    let cache = PodCache::default();
    assert_eq!(client::watch(&api, &cache, "old".into()).await.unwrap(), WatchEnd::Expired);
    assert!(client::watch(&api, &cache, "new".into()).await.is_err());
}

#[tokio::test]
async fn the_handler_fills_its_cache_from_the_api() {
    let (url, _) = fake_api(|path| {
        if path.contains("watch=1") {
            String::new()
        } else {
            serde_json::json!({"metadata": {"resourceVersion": "1"}, "items": [pod_json("web", "10.9.0.1", "v3", "1")]})
                .to_string()
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::from_kubeconfig(&kubeconfig(dir.path(), &url)).unwrap();
    let handler = KubernetesEnv::start(Some(api), std::time::Duration::from_secs(60), "k.istio-system");
    let input = instance(vec![("destination_ip", ip("10.9.0.1"))]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let out = loop {
        if let Some(out) = handler.generate(&input) {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "the pod list was never read");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(text(&out, "destination_pod_name").as_deref(), Some("web"));
    assert_eq!(text(&out, "destination_labels").as_deref(), Some("version:v3"));
}

#[test]
fn kubeconfig_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let missing = ApiServer::from_kubeconfig(&dir.path().join("nope")).unwrap_err();
    assert!(missing.0.contains("nope"), "{missing}");
    let path = dir.path().join("k");
    std::fs::write(&path, "apiVersion: v1\ncurrent-context: x\ncontexts: []\n").unwrap();
    assert_eq!(ApiServer::from_kubeconfig(&path).unwrap_err().0, "no contexts entry named \"x\"");
}
