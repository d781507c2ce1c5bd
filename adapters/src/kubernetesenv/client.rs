//! A thin Kubernetes API client: HTTPS and JSON over the Pod list and watch endpoints,
//! nothing more. Credentials come from the pod's service account (in a cluster) or from
//! a kubeconfig file.
//!
//! The loop lists every pod (in pages), then watches from the list's resource version,
//! applying each event to the cache; it lists again when the watch ends past the resync
//! period, when the API says the version is gone (410), or after an error (with backoff).
//! Everything read is bounded: a page, an event line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use yaml_serde::Value as Yaml;

use super::cache::PodCache;
use super::pod::{PodInfo, PodJson};

const TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// Pods per list page.
const PAGE: usize = 500;
/// Largest list page or watch event accepted.
const MAX_BODY: usize = 64 << 20;
const MAX_EVENT: usize = 4 << 20;
/// The API server ends a watch after this; a read idle longer than it means a dead peer.
const WATCH_SECONDS: u64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(pub String);

fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError(e.to_string())
}

#[derive(Debug, Clone)]
enum Token {
    None,
    Static(String),
    /// Re-read per request: projected service-account tokens rotate.
    File(PathBuf),
}

/// Where the API server is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct ApiServer {
    base: String,
    client: reqwest::Client,
    token: Token,
}

impl ApiServer {
    /// The API server of the cluster this process runs in, from the environment and the
    /// service account's files; `None` outside a cluster.
    pub fn in_cluster() -> Result<Option<ApiServer>, ClientError> {
        let (Ok(host), Ok(port)) = (std::env::var("KUBERNETES_SERVICE_HOST"), std::env::var("KUBERNETES_SERVICE_PORT"))
        else {
            return Ok(None);
        };
        if !Path::new(TOKEN_FILE).exists() {
            return Ok(None);
        }
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        let ca = std::fs::read(CA_FILE).map_err(|e| ClientError(format!("{CA_FILE}: {e}")))?;
        let builder = client_builder().tls_certs_only([reqwest::Certificate::from_pem(&ca).map_err(err)?]);
        Ok(Some(ApiServer {
            base: format!("https://{host}:{port}"),
            client: builder.build().map_err(err)?,
            token: Token::File(TOKEN_FILE.into()),
        }))
    }

    /// The cluster of a kubeconfig file's current context: its server, CA (file or
    /// inline), `insecure-skip-tls-verify`, and a token, token file or client certificate.
    pub fn from_kubeconfig(path: &Path) -> Result<ApiServer, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| ClientError(format!("{}: {e}", path.display())))?;
        let doc: Yaml = yaml_serde::from_str(&text).map_err(|e| ClientError(format!("{}: {e}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let current = doc.get("current-context").and_then(Yaml::as_str).ok_or_else(|| err("no current-context"))?;
        let context = named(&doc, "contexts", current, "context")?;
        let cluster_name =
            context.get("cluster").and_then(Yaml::as_str).ok_or_else(|| err("context without cluster"))?;
        let cluster = named(&doc, "clusters", cluster_name, "cluster")?;
        let user = match context.get("user").and_then(Yaml::as_str) {
            Some(name) => Some(named(&doc, "users", name, "user")?),
            None => None,
        };
        let server = cluster.get("server").and_then(Yaml::as_str).ok_or_else(|| err("cluster without server"))?;
        let mut builder = client_builder();
        if let Some(ca) = inline_or_file(cluster, "certificate-authority", dir)? {
            builder = builder.tls_certs_only([reqwest::Certificate::from_pem(&ca).map_err(err)?]);
        }
        if cluster.get("insecure-skip-tls-verify").and_then(Yaml::as_bool) == Some(true) {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let mut token = Token::None;
        if let Some(user) = user {
            if let Some(t) = user.get("token").and_then(Yaml::as_str) {
                token = Token::Static(t.to_string());
            } else if let Some(f) = user.get("tokenFile").and_then(Yaml::as_str) {
                token = Token::File(dir.join(f));
            }
            let cert = inline_or_file(user, "client-certificate", dir)?;
            let key = inline_or_file(user, "client-key", dir)?;
            if let (Some(cert), Some(key)) = (cert, key) {
                builder = builder.identity(reqwest::Identity::from_pkcs8_pem(&cert, &key).map_err(err)?);
            }
        }
        Ok(ApiServer { base: server.trim_end_matches('/').to_string(), client: builder.build().map_err(err)?, token })
    }

    async fn get(&self, path: &str, timeout: Option<Duration>) -> Result<reqwest::Response, ClientError> {
        let mut req = self.client.get(format!("{}{path}", self.base)).header("accept", "application/json");
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let token = match &self.token {
            Token::None => None,
            Token::Static(t) => Some(t.clone()),
            Token::File(f) => Some(std::fs::read_to_string(f).map_err(err)?.trim().to_string()),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(err)?;
        if !resp.status().is_success() {
            return Err(ClientError(format!("GET {path}: HTTP {}", resp.status())));
        }
        Ok(resp)
    }
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(WATCH_SECONDS + 30))
}

/// The `field` of the entry called `name` in the kubeconfig list `list`.
fn named<'y>(doc: &'y Yaml, list: &str, name: &str, field: &str) -> Result<&'y Yaml, ClientError> {
    doc.get(list)
        .and_then(Yaml::as_sequence)
        .and_then(|items| items.iter().find(|i| i.get("name").and_then(Yaml::as_str) == Some(name)))
        .and_then(|i| i.get(field))
        .ok_or_else(|| ClientError(format!("no {list} entry named {name:?}")))
}

/// `KEY-data` (base64) or the file `KEY` names (relative to the kubeconfig's folder).
fn inline_or_file(section: &Yaml, key: &str, dir: &Path) -> Result<Option<Vec<u8>>, ClientError> {
    use base64::Engine as _;
    if let Some(data) = section.get(format!("{key}-data").as_str()).and_then(Yaml::as_str) {
        return base64::engine::general_purpose::STANDARD.decode(data.trim()).map(Some).map_err(err);
    }
    match section.get(key).and_then(Yaml::as_str) {
        Some(file) => std::fs::read(dir.join(file)).map(Some).map_err(|e| ClientError(format!("{file}: {e}"))),
        None => Ok(None),
    }
}

#[derive(Debug, Deserialize)]
struct PodList {
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<PodJson>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default)]
    resource_version: String,
    #[serde(default, rename = "continue")]
    next: String,
}

#[derive(Debug, Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

/// Reads a whole body, refusing one larger than `limit`.
async fn body(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(err)? {
        if out.len() + chunk.len() > limit {
            return Err(ClientError(format!("response larger than {limit} bytes")));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Every pod, and the resource version to watch from.
pub async fn list(api: &ApiServer) -> Result<(Vec<PodInfo>, String), ClientError> {
    let mut pods = Vec::new();
    let mut next = String::new();
    loop {
        let mut path = format!("/api/v1/pods?limit={PAGE}");
        if !next.is_empty() {
            path.push_str("&continue=");
            path.push_str(&next);
        }
        let bytes = body(api.get(&path, Some(Duration::from_secs(60))).await?, MAX_BODY).await?;
        let page: PodList = serde_json::from_slice(&bytes).map_err(|e| ClientError(format!("pod list: {e}")))?;
        pods.extend(page.items.into_iter().map(PodInfo::from_json));
        if page.metadata.next.is_empty() {
            return Ok((pods, page.metadata.resource_version));
        }
        next = page.metadata.next;
    }
}

/// How a watch ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchEnd {
    /// The server closed it (its timeout): watch again from this version.
    Closed(String),
    /// The version is too old (410 Gone): list again.
    Expired,
}

/// Applies watch events from `version` on to the cache until the watch ends.
pub async fn watch(api: &ApiServer, cache: &PodCache, mut version: String) -> Result<WatchEnd, ClientError> {
    let path = format!(
        "/api/v1/pods?watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={version}"
    );
    let mut resp = api.get(&path, None).await?;
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(err)? {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event: WatchEvent =
                serde_json::from_slice(&line).map_err(|e| ClientError(format!("watch event: {e}")))?;
            if let Some(v) = apply(cache, event)? {
                version = v;
            } else {
                return Ok(WatchEnd::Expired);
            }
        }
        if pending.len() > MAX_EVENT {
            return Err(ClientError(format!("watch event larger than {MAX_EVENT} bytes")));
        }
    }
    Ok(WatchEnd::Closed(version))
}

/// Applies one event; returns the resource version it carries, or `None` when the watch
/// must start over from a new list.
fn apply(cache: &PodCache, event: WatchEvent) -> Result<Option<String>, ClientError> {
    if event.kind == "ERROR" {
        let code = event.object.get("code").and_then(serde_json::Value::as_i64);
        return match code {
            Some(410) => Ok(None),
            _ => Err(ClientError(format!("watch error: {}", event.object))),
        };
    }
    let version = event
        .object
        .get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    match event.kind.as_str() {
        "ADDED" | "MODIFIED" => {
            let pod: PodJson = serde_json::from_value(event.object).map_err(|e| ClientError(format!("pod: {e}")))?;
            cache.upsert(PodInfo::from_json(pod));
        }
        "DELETED" => {
            let pod: PodJson = serde_json::from_value(event.object).map_err(|e| ClientError(format!("pod: {e}")))?;
            cache.delete(&super::pod::key(&pod.metadata.namespace, &pod.metadata.name));
        }
        // Bookmarks only move the version on.
        _ => {}
    }
    Ok(Some(version))
}

/// Keeps `cache` in step with the cluster until the task is aborted.
pub async fn run(api: ApiServer, cache: Arc<PodCache>, resync: Duration, handler: String) {
    let mut backoff = Duration::from_secs(1);
    let mut failing = false;
    loop {
        let (pods, mut version) = match list(&api).await {
            Ok(listed) => listed,
            Err(e) => {
                if !failing {
                    tracing::warn!(handler = %handler, error = %e, "kubernetesenv: listing pods failed; retrying");
                    failing = true;
                } else {
                    tracing::debug!(handler = %handler, error = %e, "kubernetesenv: listing pods failed");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        if failing || !cache.is_synced() {
            tracing::info!(handler = %handler, pods = pods.len(), "kubernetesenv: pods listed");
        }
        failing = false;
        backoff = Duration::from_secs(1);
        cache.replace(pods);
        let relist_at = tokio::time::Instant::now() + resync;
        loop {
            let started = tokio::time::Instant::now();
            match watch(&api, &cache, version.clone()).await {
                Ok(WatchEnd::Closed(v)) if tokio::time::Instant::now() < relist_at => {
                    // A server that ends watches at once must not be asked in a tight loop.
                    if started.elapsed() < Duration::from_secs(1) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    version = v;
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(handler = %handler, error = %e, "kubernetesenv: watch failed; listing again");
                    tokio::time::sleep(backoff).await;
                    break;
                }
            }
        }
    }
}
