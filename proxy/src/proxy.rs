//! The running sidecar: config (swapped atomically on reload), upstream clients and the
//! listeners. Outbound traffic is routed by the traffic config; inbound traffic goes to
//! the local app.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{ProxyBody, reply, stream};
use crate::config::{TrafficConfig, load_paths};
use crate::identity::Identity;
use crate::route::RouteTable;
use crate::stats::Stats;
use crate::upstream::Clusters;
use mixr_rules::config::fingerprint;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn reporter(self) -> &'static str {
        match self {
            Direction::Inbound => "destination",
            Direction::Outbound => "source",
        }
    }
}

/// One config generation: routes and the clusters built from them.
#[derive(Debug, Default)]
pub struct Tables {
    pub routes: RouteTable,
    pub clusters: Clusters,
    pub config: TrafficConfig,
    pub generation: u64,
    fingerprint: u64,
}

pub type HttpClient = Client<HttpConnector, ProxyBody>;

pub struct Proxy {
    pub tables: ArcSwap<Tables>,
    /// Enforcement through mixr, when `--mixr` is given.
    pub policy: Option<Arc<crate::policy::Policy>>,
    pub reporter: Option<crate::policy::reports::Reporter>,
    pub identity: Identity,
    pub h1: HttpClient,
    pub h2: HttpClient,
    pub stats: Stats,
    /// This workload's identity, sent to peers in `x-istio-attributes`.
    pub identity_header: hyper::header::HeaderValue,
    pub app_addr: Option<SocketAddr>,
    pub config_paths: Vec<PathBuf>,
    pub namespace: String,
}

impl Proxy {
    pub fn new(
        identity: Identity,
        app_addr: Option<SocketAddr>,
        config_paths: Vec<PathBuf>,
        mixr: Option<(String, crate::policy::PolicyOptions)>,
    ) -> Result<Proxy, Vec<String>> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .build(connector.clone());
        let h2 = Client::builder(TokioExecutor::new()).http2_only(true).build(connector);
        let namespace = identity.namespace.clone();
        let stats = Stats::new();
        let (policy, reporter) = match mixr {
            Some((addr, options)) => {
                // QuotaSpecs live beside the traffic rules, in Mixer's config format.
                let (set, errors) = mixr_rules::config::load_paths(&config_paths, &namespace);
                if !errors.is_empty() {
                    return Err(errors.iter().map(ToString::to_string).collect());
                }
                let policy = crate::policy::Policy::new(
                    &addr,
                    options,
                    set.quota_specs,
                    set.quota_spec_bindings,
                    stats.check_cache.clone(),
                )
                .map_err(|e| vec![e])?;
                let reporter = crate::policy::reports::Reporter::start(policy.client(), stats.reports_dropped.clone());
                (Some(Arc::new(policy)), Some(reporter))
            }
            None => (None, None),
        };
        let identity_header =
            hyper::header::HeaderValue::try_from(crate::policy::attributes::identity_header(&identity))
                .unwrap_or_else(|_| hyper::header::HeaderValue::from_static(""));
        let proxy = Proxy {
            policy,
            reporter,
            tables: ArcSwap::from_pointee(Tables::default()),
            identity,
            h1,
            h2,
            stats,
            identity_header,
            app_addr,
            config_paths,
            namespace,
        };
        proxy.reload()?;
        Ok(proxy)
    }

    /// Reloads when the files' contents changed.
    pub fn reload_if_changed(&self) -> Option<Result<u64, Vec<String>>> {
        let fp = fingerprint(&self.config_paths);
        if fp == self.tables.load().fingerprint {
            return None;
        }
        Some(self.reload())
    }

    /// Loads the config again; an invalid one is rejected and the last good one stays.
    pub fn reload(&self) -> Result<u64, Vec<String>> {
        let fingerprint = fingerprint(&self.config_paths);
        let (config, errors) = load_paths(&self.config_paths, &self.namespace);
        if !errors.is_empty() {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            for e in &errors {
                tracing::error!(error = %e, "traffic config rejected; keeping the last good one");
            }
            return Err(errors);
        }
        let generation = self.tables.load().generation + 1;
        let routes = RouteTable::build(&config);
        self.tables.store(Arc::new(Tables { routes, clusters: Clusters::default(), config, generation, fingerprint }));
        tracing::info!(generation, "traffic config loaded");
        Ok(generation)
    }

    pub fn clusters_for<'t>(&self, tables: &'t Tables) -> &'t Clusters {
        &tables.clusters
    }

    pub fn observe(&self, dir: Direction, authority: &str, route: &str, code: u16, started: Instant) {
        let service = crate::route::normalize_host(authority);
        let code = code.to_string();
        let labels = [dir.reporter(), self.identity.workload.as_str(), service.as_str(), code.as_str(), route];
        self.stats.requests.with_label_values(&labels).inc();
        self.stats.duration.with_label_values(&labels).observe(started.elapsed().as_secs_f64() * 1000.0);
    }

    /// Handles one request on the inbound listener: checked with mixr, then to the local app.
    pub async fn inbound(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let started = Instant::now();
        let authority = crate::forward::authority_of(&req);
        let Some(app) = self.app_addr else { return reply(503, "no --app-addr configured\n") };
        let (mut parts, body) = req.into_parts();
        // The caller's identity is for us, not for the app.
        let peer_identity = parts.headers.remove(crate::policy::attributes::ISTIO_ATTRIBUTES);
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        let grpc_in = parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/grpc"));
        let method = parts.method.as_str().to_string();
        let mut attrs =
            crate::policy::attributes::inbound(&self.identity, peer, &method, &path, &authority, &headers, grpc_in);
        if let Some(v) = peer_identity.as_ref().and_then(|v| v.to_str().ok()) {
            attrs.extend(crate::policy::attributes::peer_attributes(v));
        }
        let mut response_ops = Vec::new();
        if let Some(policy) = &self.policy {
            // The service this workload backs: its `app` label, as Kubernetes services
            // select pods; else the name the caller used.
            let service = match self.identity.labels.iter().find(|(k, _)| k == "app") {
                Some((_, app)) => app.clone(),
                None => crate::route::normalize_host(&authority).split('.').next().unwrap_or("").to_string(),
            };
            let quotas = policy.quotas_for(&service, &self.identity.namespace, &attrs);
            let dedup = headers.iter().find(|(k, _)| k == "x-request-id").map(|(_, v)| v.clone()).unwrap_or_default();
            let traceparent = headers.iter().find(|(k, _)| k == "traceparent").map(|(_, v)| v.as_str());
            match policy.check(&attrs, &quotas, &dedup, traceparent).await {
                crate::policy::Verdict::Deny { http_status, body, headers: extra } => {
                    let mut resp = reply(http_status, body);
                    for (k, v) in extra {
                        if let (Ok(k), Ok(v)) =
                            (hyper::header::HeaderName::try_from(k), hyper::header::HeaderValue::try_from(v))
                        {
                            resp.headers_mut().insert(k, v);
                        }
                    }
                    self.observe(Direction::Inbound, &authority, "", resp.status().as_u16(), started);
                    self.report(attrs, &resp, started);
                    return resp;
                }
                crate::policy::Verdict::Allow { request_headers, response_headers } => {
                    crate::policy::apply_header_ops(&mut parts.headers, &request_headers);
                    response_ops = response_headers;
                }
            }
        }
        let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let Ok(uri) = format!("http://{app}{pq}").parse::<Uri>() else { return reply(400, "bad request target\n") };
        parts.uri = uri;
        if parts.headers.contains_key(hyper::header::UPGRADE) {
            let uri = parts.uri.clone();
            let req = Request::from_parts(parts, body);
            if crate::upgrade::is_upgrade(&req) {
                let resp = crate::upgrade::forward(&self.h1, req, uri).await;
                self.observe(Direction::Inbound, &authority, "", resp.status().as_u16(), started);
                return resp;
            }
            let (p, b) = req.into_parts();
            return self.send_inbound(p, b, attrs, response_ops, &authority, started).await;
        }
        self.send_inbound(parts, body, attrs, response_ops, &authority, started).await
    }

    async fn send_inbound(
        &self,
        parts: hyper::http::request::Parts,
        body: Incoming,
        attrs: Vec<(&'static str, mixr_rules::value::Value<'_>)>,
        response_ops: Vec<(String, String, i32)>,
        authority: &str,
        started: Instant,
    ) -> Response<ProxyBody> {
        let grpc = parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/grpc"));
        let client = if grpc || parts.version == hyper::Version::HTTP_2 { &self.h2 } else { &self.h1 };
        let mut resp = match client.request(Request::from_parts(parts, stream(body))).await {
            Ok(r) => r.map(stream),
            Err(_) => reply(503, "upstream connect error (local app)\n"),
        };
        crate::policy::apply_header_ops(resp.headers_mut(), &response_ops);
        self.observe(Direction::Inbound, authority, "", resp.status().as_u16(), started);
        self.report(attrs, &resp, started);
        resp
    }

    /// Queues a Report of this request and its response; never waits.
    pub fn report<B>(
        &self,
        attrs: Vec<(&'static str, mixr_rules::value::Value<'_>)>,
        resp: &Response<B>,
        started: Instant,
    ) {
        let Some(reporter) = &self.reporter else { return };
        let mut entry: Vec<(&'static str, mixr_rules::value::OwnedValue)> =
            attrs.into_iter().map(|(n, v)| (n, v.into_owned())).collect();
        entry.push(("response.code", mixr_rules::value::Value::Int64(resp.status().as_u16() as i64)));
        entry.push((
            "response.duration",
            mixr_rules::value::Value::Duration(mixr_rules::value::Duration::from_std(started.elapsed())),
        ));
        entry.push(("response.time", crate::policy::attributes::now()));
        if let Some(size) =
            resp.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
        {
            entry.push(("response.size", mixr_rules::value::Value::Int64(size)));
        }
        reporter.report(entry);
    }
}

/// Serves HTTP/1.1 and h2c on `listener` until `shutdown` turns true.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, dir: Direction, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (sock, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = sock.set_nodelay(true);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let proxy = proxy.clone();
                async move {
                    let resp = match dir {
                        Direction::Outbound => proxy.outbound(req, peer).await,
                        Direction::Inbound => proxy.inbound(req, peer).await,
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(sock), svc).await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}
