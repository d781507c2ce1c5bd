//! The running sidecar: config (swapped atomically on reload), upstream clients and the
//! listeners. Outbound traffic is routed by the traffic config; inbound traffic goes to
//! the local app.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{ProxyBody, reply};
use crate::config::{TrafficConfig, load_paths};
use crate::identity::Identity;
use crate::listener::conn::{ClientBody, ConnState, Tracked};
use crate::listener::{ConnectionCount, OpenConnection};
use crate::route::RouteTable;
use crate::stats::Stats;
use crate::upstream::{Cluster, Clusters, RouteClusters};
use crate::worker::Worker;
use mixr_rules::config::fingerprint;

/// The `destination_service` of requests that resolved to no service.
pub const UNKNOWN: &str = "unknown";

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

    /// `context.reporter.kind`.
    pub fn reporter_kind(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// One config generation: routes and the clusters built from them.
#[derive(Debug, Default)]
pub struct Tables {
    pub routes: RouteTable,
    pub clusters: Clusters,
    /// Each route's destinations' clusters, resolved at load.
    pub route_clusters: RouteClusters,
    pub config: TrafficConfig,
    pub generation: u64,
    fingerprint: u64,
    /// Names of `resolution: DNS` ServiceEntries to look up (`dns`), as the files have
    /// them: `config` holds the addresses found in their place.
    pub dns_names: Vec<String>,
}

pub struct Proxy {
    pub tables: ArcSwap<Tables>,
    /// Enforcement through mixr, when `--mixr` is given.
    pub policy: Option<Arc<crate::policy::Policy>>,
    pub identity: Identity,
    pub stats: Stats,
    /// The local app as a cluster of one, so inbound traffic shares the pool's code.
    pub app: Option<Arc<Cluster>>,
    /// Request spans over OTLP, when `--otlp-endpoint` is given.
    pub tracer: Option<crate::trace::Tracer>,
    /// This workload's identity, sent to peers in `x-istio-attributes`.
    pub identity_header: hyper::header::HeaderValue,
    /// `destination.labels` of inbound requests, built once.
    pub destination_labels: mixr_rules::value::StringMap<'static>,
    pub config_paths: Vec<PathBuf>,
    pub namespace: String,
    /// Timeouts and the connection ceiling of both listeners.
    pub limits: crate::listener::Limits,
    /// What every request goes through as it arrives (`ingress`).
    pub ingress: crate::ingress::Options,
    /// Connections open on the inbound and outbound listeners, across workers.
    inbound_connections: Arc<ConnectionCount>,
    outbound_connections: Arc<ConnectionCount>,
    /// `destination_service` of inbound requests' metrics: the service this workload
    /// backs (its `app` label), never a caller's Host.
    inbound_service: String,
    /// Which VirtualServices this proxy applies: a sidecar's (the mesh's) by default, a
    /// gateway's (`gateway`) when it runs as one.
    pub role: Role,
    /// Addresses of the names of `resolution: DNS` ServiceEntries.
    pub dns: Arc<crate::dns::Dns>,
}

/// What a proxy is to the mesh. Its routes follow: a sidecar applies the VirtualServices
/// bound to the mesh, a gateway those bound to the Gateways that select its labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Sidecar,
    Gateway,
}

impl Proxy {
    pub fn new(
        identity: Identity,
        app_addr: Option<SocketAddr>,
        config_paths: Vec<PathBuf>,
        mixr: Option<(String, crate::policy::PolicyOptions)>,
    ) -> Result<Proxy, Vec<String>> {
        let namespace = identity.namespace.clone();
        let stats = Stats::new();
        let stats_registry = stats.registry.clone();
        let policy = match mixr {
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
                Some(Arc::new(policy))
            }
            None => None,
        };
        let app = app_addr.map(|a| {
            let upstream = crate::route::Upstream { address: a.ip().to_string(), port: a.port(), labels: Vec::new() };
            Arc::new(Cluster::new("inbound|app".into(), vec![upstream], Default::default()))
        });
        let identity_header =
            hyper::header::HeaderValue::try_from(crate::policy::attributes::identity_header(&identity))
                .unwrap_or_else(|_| hyper::header::HeaderValue::from_static(""));
        let destination_labels = crate::policy::attributes::destination_labels(&identity);
        let inbound_service =
            identity.labels.iter().find(|(k, _)| k == "app").map_or_else(|| UNKNOWN.to_string(), |(_, v)| v.clone());
        let proxy = Proxy {
            policy,
            tables: ArcSwap::from_pointee(Tables::default()),
            identity,
            stats,
            app,
            tracer: None,
            identity_header,
            destination_labels,
            config_paths,
            namespace,
            limits: Default::default(),
            ingress: Default::default(),
            inbound_connections: Default::default(),
            outbound_connections: Default::default(),
            inbound_service,
            role: Role::Sidecar,
            dns: Arc::new(crate::dns::Dns::new(&stats_registry, crate::dns::DEFAULT_REFRESH)),
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
        let (mut config, errors) = load_paths(&self.config_paths, &self.namespace);
        if !errors.is_empty() {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            for e in &errors {
                tracing::error!(error = %e, "traffic config rejected; keeping the last good one");
            }
            return Err(errors);
        }
        let generation = self.tables.load().generation + 1;
        let dns_names = crate::dns::names(&config);
        crate::dns::expand(&mut config, &self.dns.resolved.load());
        let binding = match self.role {
            Role::Sidecar => crate::route::Binding::Mesh,
            Role::Gateway => crate::route::Binding::Gateways(
                config.gateways.iter().filter(|g| g.selects(&self.identity.labels)).map(|g| g.key()).collect(),
            ),
        };
        let routes = RouteTable::build_for(&config, &binding);
        for w in crate::route::analyze::analyze(&config, &routes) {
            tracing::warn!(warning = %w, "traffic config");
        }
        let clusters = Clusters::default();
        let route_clusters = clusters.resolve(&routes);
        self.tables.store(Arc::new(Tables {
            routes,
            clusters,
            route_clusters,
            config,
            generation,
            fingerprint,
            dns_names,
        }));
        tracing::info!(generation, "traffic config loaded");
        Ok(generation)
    }

    pub fn clusters_for<'t>(&self, tables: &'t Tables) -> &'t Clusters {
        &tables.clusters
    }

    /// Counts a request in the stats. `service` is the destination service the request
    /// resolved to (a name from the config, or this workload's service), or [`UNKNOWN`]:
    /// never anything a caller chose, so the number of series stays bounded.
    pub fn observe(&self, worker: &Worker, dir: Direction, service: &str, route: &str, code: u16, started: Instant) {
        let code = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        let labels = [dir.reporter(), self.identity.workload.as_str(), service, code.as_str(), route];
        self.stats.record_request(&worker.metrics, labels, started.elapsed().as_secs_f64() * 1000.0);
    }

    fn connections(&self, dir: Direction) -> &Arc<ConnectionCount> {
        match dir {
            Direction::Inbound => &self.inbound_connections,
            Direction::Outbound => &self.outbound_connections,
        }
    }

    /// Handles one request on the inbound listener: checked with mixr, then to the local app.
    pub async fn inbound(&self, worker: &Worker, req: Request<ProxyBody>, peer: SocketAddr) -> Response<ProxyBody> {
        let started = Instant::now();
        let authority = crate::forward::authority_of(&req);
        let authority = authority.as_str();
        let Some(app) = &self.app else { return reply(503, "no --app-addr configured\n") };
        let (mut parts, body) = req.into_parts();
        // The caller's identity is for us, not for the app.
        let peer_identity = parts.headers.remove(crate::policy::attributes::ISTIO_ATTRIBUTES);
        let mut response_ops = Vec::new();
        let mut report = None;
        let checker = self.policy.as_ref().filter(|p| p.checks()).zip(worker.mixr.as_ref());
        if checker.is_some() || worker.reporter.is_some() {
            let headers = crate::forward::header_pairs(&parts.headers);
            let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let grpc = crate::forward::is_grpc_headers(&parts.headers);
            let mut attrs = crate::policy::attributes::inbound(
                &self.identity,
                &self.destination_labels,
                peer,
                parts.method.as_str(),
                path,
                authority,
                &headers,
                grpc,
            );
            if let Some(v) = peer_identity.as_ref().and_then(|v| v.to_str().ok()) {
                attrs.extend(crate::policy::attributes::peer_attributes(v));
            }
            let verdict = match checker {
                Some((policy, mixr)) => {
                    // The service this workload backs: its `app` label, as Kubernetes
                    // services select pods; else the name the caller used.
                    let service = match self.identity.labels.iter().find(|(k, _)| k == "app") {
                        Some((_, app)) => app.as_str(),
                        None => crate::route::service_name(authority),
                    };
                    let quotas = policy.quotas_for(service, &self.identity.namespace, &attrs);
                    let header = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
                    let dedup = header("x-request-id").unwrap_or_default();
                    // Boxed, as are other large, conditional steps: futures are sized for
                    // their largest state, and every request's future is moved.
                    match policy.cached(&attrs, &quotas) {
                        Some(hit) => Some(hit),
                        None => Some(Box::pin(policy.ask(mixr, &attrs, &quotas, dedup, header("traceparent"))).await),
                    }
                }
                None => None,
            };
            let traceparent = headers.iter().find(|(k, _)| *k == "traceparent").map(|(_, v)| v.to_string());
            let entry = worker.reporter.as_ref().map(|_| (crate::policy::reports::owned(attrs), traceparent));
            match verdict {
                Some(crate::policy::Verdict::Deny { http_status, body, headers: extra }) => {
                    let mut resp = reply(http_status, body);
                    for (k, v) in extra {
                        if let (Ok(k), Ok(v)) =
                            (hyper::header::HeaderName::try_from(k), hyper::header::HeaderValue::try_from(v))
                        {
                            resp.headers_mut().insert(k, v);
                        }
                    }
                    self.observe(
                        worker,
                        Direction::Inbound,
                        &self.inbound_service,
                        "",
                        resp.status().as_u16(),
                        started,
                    );
                    self.report(worker, entry, &resp, started);
                    return resp;
                }
                Some(crate::policy::Verdict::Allow { request_headers, response_headers }) => {
                    crate::policy::apply_header_ops(&mut parts.headers, &request_headers);
                    response_ops = response_headers;
                    report = entry;
                }
                None => report = entry,
            }
        }
        let Some(target) = app.pick(None) else { return reply(503, "no --app-addr configured\n") };
        if crate::upgrade::wants_upgrade(&parts.headers) {
            let resp = Box::pin(crate::upgrade::forward(&target, Request::from_parts(parts, body))).await;
            self.observe(worker, Direction::Inbound, &self.inbound_service, "", resp.status().as_u16(), started);
            return resp;
        }
        let http2 = crate::forward::is_grpc_headers(&parts.headers) || parts.version == hyper::Version::HTTP_2;
        let result = crate::forward::send_upstream(&worker.pool, &target, &parts, body, http2, authority).await;
        drop(target);
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "local app unreachable");
                reply(503, "upstream connect error (local app)\n")
            }
        };
        crate::policy::apply_header_ops(resp.headers_mut(), &response_ops);
        self.observe(worker, Direction::Inbound, &self.inbound_service, "", resp.status().as_u16(), started);
        self.report(worker, report, &resp, started);
        resp
    }

    /// Queues a Report of this request and its response; never waits.
    pub fn report<B>(
        &self,
        worker: &Worker,
        entry: Option<(crate::policy::reports::Entry, Option<String>)>,
        resp: &Response<B>,
        started: Instant,
    ) {
        let (Some(reporter), Some((mut entry, traceparent))) = (&worker.reporter, entry) else { return };
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
        reporter.report(entry, traceparent);
    }
}

/// Serves HTTP/1.1 and h2c on `listener` until `shutdown` turns true.
pub async fn serve(
    proxy: Arc<Proxy>,
    worker: Arc<Worker>,
    listener: TcpListener,
    dir: Direction,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = crate::listener::accept::Backoff::default();
    let timeouts = crate::http1::server::Timeouts {
        head: proxy.limits.head_timeout,
        idle: proxy.limits.idle_timeout,
        body: proxy.limits.body_timeout,
    };
    loop {
        let (sock, peer) = tokio::select! {
            a = crate::listener::accept::next(&listener, &mut backoff, dir.reporter_kind()) => a,
            _ = shutdown.changed() => return,
        };
        // Past the ceiling a connection is closed at once: the caller sees it end rather
        // than wait in the backlog, and the ones being served go on.
        let Some(open) = proxy.connections(dir).try_open(proxy.limits.max_connections) else {
            proxy.stats.connections_refused.with_label_values(&[dir.reporter_kind()]).inc();
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let handler = Listener { proxy: proxy.clone(), worker: worker.clone(), dir, peer, open: Arc::new(open) };
        tokio::spawn(async move { crate::http1::server::serve(sock, &handler, &timeouts).await });
    }
}

/// One accepted connection's requests, whichever path serves them.
#[derive(Clone)]
struct Listener {
    proxy: Arc<Proxy>,
    worker: Arc<Worker>,
    dir: Direction,
    peer: SocketAddr,
    /// Counts the connection against `--max-connections` while any clone lives: an
    /// upgraded connection's splice keeps one.
    open: Arc<OpenConnection>,
}

impl crate::http1::server::Handle for Listener {
    async fn handle(&self, mut req: Request<ProxyBody>) -> Response<ProxyBody> {
        let Listener { proxy, worker, dir, peer, .. } = self;
        if let Err(why) = crate::ingress::admit(&mut req, proxy.ingress) {
            tracing::debug!(error = %why, "request refused");
            let mut resp = reply(400, format!("bad request: {why}\n"));
            resp.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
            proxy.observe(worker, *dir, UNKNOWN, "", 400, Instant::now());
            return resp;
        }
        let mut resp = crate::trace::traced(proxy.tracer.as_ref(), *dir, req, |req| async {
            match dir {
                Direction::Outbound => proxy.outbound(worker, req, *peer).await,
                Direction::Inbound => proxy.inbound(worker, req, *peer).await,
            }
        })
        .await;
        let status = resp.status();
        crate::http1::strip_bodiless_framing(status, resp.headers_mut());
        resp
    }

    /// hyper serves h2c, upgrades and whatever else the fast path leaves to it, under the
    /// same limits (`listener::conn`).
    async fn fallback(&self, io: crate::http1::server::Rewind) {
        let limits = self.proxy.limits;
        let state = ConnState::new();
        let listener = self.clone();
        let conn = state.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let listener = listener.clone();
            let conn = conn.clone();
            async move {
                let busy = conn.begin();
                let mut req = req;
                if req.headers().contains_key(hyper::header::UPGRADE) {
                    // An upgraded connection outlives this one's task; it counts until it ends.
                    req.extensions_mut().insert(listener.open.clone());
                }
                // HTTP/2 fails a stream alone; an HTTP/1.1 body fault ends the connection.
                let h1 = req.version() != hyper::Version::HTTP_2;
                let req = req.map(|b| ClientBody::new(b, limits.body_timeout, h1.then(|| conn.clone())).boxed_unsync());
                // Boxed: the request's future is several kilobytes, and hyper moves it.
                let mut resp = Box::pin(listener.handle(req)).await;
                if let Some(fault) = conn.fault().filter(|_| h1) {
                    resp = fault.response();
                }
                Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, busy)))
            }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper's timer runs from when it starts waiting for a head, idle time included.
        builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.head_timeout.min(limits.idle_timeout));
        let serve = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::select! {
            biased;
            result = serve => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended");
                }
            }
            () = state.idle(limits.idle_timeout) => tracing::debug!("idle connection closed"),
        }
    }
}
