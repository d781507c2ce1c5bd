//! The running sidecar: config (swapped atomically on reload), upstream clients and the
//! listeners. Outbound traffic is routed by the traffic config; inbound traffic goes to
//! the local app.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use hyper::Response;

use crate::config::{TrafficConfig, load_paths};
use crate::identity::Identity;
use crate::listener::ConnectionCount;
use crate::route::RouteTable;
use crate::stats::Stats;
use crate::upstream::{Cluster, Clusters, RouteClusters};
use crate::worker::Worker;
use mixr_rules::config::fingerprint;

pub use crate::role::{Direction, UNKNOWN};

/// One config generation: routes and the clusters built from them.
#[derive(Debug, Default)]
pub struct Tables {
    pub routes: RouteTable,
    pub clusters: Clusters,
    /// Each route's destinations' clusters, resolved at load.
    pub route_clusters: RouteClusters,
    pub config: TrafficConfig,
    /// The authorization that applies to this workload, selected at load.
    pub authz: crate::authz::Authz,
    /// The inbound mTLS modes of this workload, selected at load.
    pub mtls: crate::mtls::mode::InboundMtls,
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
    /// Transparent capture: the app's ports, and what unknown outbound TCP gets.
    pub inbound_apps: crate::capture::inbound::InboundApps,
    pub outbound_policy: crate::capture::OutboundPolicy,
    pub passthrough: crate::capture::passthrough::Passthrough,
    /// Connections open on the inbound and outbound listeners, across workers.
    inbound_connections: Arc<ConnectionCount>,
    outbound_connections: Arc<ConnectionCount>,
    /// `destination_service` of inbound requests' metrics: the service this workload
    /// backs (its `app` label), never a caller's Host.
    pub(crate) inbound_service: String,
    /// The app's port: the destination port authorization rules name.
    pub(crate) app_port: Option<u16>,
    /// This workload's certificate from mixr's CA, when `--ca-token-file` is given.
    pub certs: Arc<crate::certs::CertStore>,
    /// mTLS with the certificate in `certs`.
    pub mesh: Arc<crate::mtls::Mesh>,
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
        let inbound_apps = crate::capture::inbound::InboundApps::new(app_addr.map(|a| a.port()).zip(app.clone()));
        let certs: Arc<crate::certs::CertStore> = Default::default();
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
            inbound_apps,
            outbound_policy: Default::default(),
            passthrough: Default::default(),
            inbound_connections: Default::default(),
            outbound_connections: Default::default(),
            inbound_service,
            app_port: app_addr.map(|a| a.port()),
            certs: certs.clone(),
            mesh: Arc::new(crate::mtls::Mesh::new(certs, crate::certs::DEFAULT_TRUST_DOMAIN)),
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
        let (mut config, mut errors) = load_paths(&self.config_paths, &self.namespace);
        let (authz, authz_errors) = crate::authz::load_paths(&self.config_paths, &self.namespace);
        errors.extend(authz_errors);
        let (mtls, mtls_errors) = crate::mtls::mode::load_paths(&self.config_paths, &self.namespace);
        errors.extend(mtls_errors);
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
        let authz =
            crate::authz::Authz::for_workload(&authz, &self.namespace, &self.identity.labels, &self.inbound_service);
        let mtls = crate::mtls::mode::InboundMtls::for_workload(
            &mtls,
            &self.namespace,
            &self.identity.labels,
            &self.inbound_service,
        );
        if self.tables.load().mtls != mtls {
            tracing::info!(mode = mtls.mode.as_str(), decided_by = %mtls.decided_by, "inbound mTLS");
        }
        self.tables.store(Arc::new(Tables {
            routes,
            clusters,
            route_clusters,
            config,
            authz,
            mtls,
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
        self.stats.record_request(&worker.metrics, labels, started.elapsed().as_secs_f64());
    }

    pub(crate) fn connections(&self, dir: Direction) -> &Arc<ConnectionCount> {
        match dir {
            Direction::Inbound => &self.inbound_connections,
            Direction::Outbound => &self.outbound_connections,
        }
    }

    /// Queues a Report of this request and its response; never waits.
    pub fn report<B>(
        &self,
        worker: &Worker,
        entry: Option<crate::policy::reports::Entry>,
        resp: &Response<B>,
        started: Instant,
    ) {
        use mixr_rules::value::Value;
        let (Some(reporter), Some(mut entry)) = (&worker.reporter, entry) else { return };
        entry.push("response.code", &Value::Int64(resp.status().as_u16() as i64));
        entry.push("response.duration", &Value::Duration(mixr_rules::value::Duration::from_std(started.elapsed())));
        entry.push("response.time", &crate::policy::attributes::now());
        if let Some(size) =
            resp.headers().get(hyper::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
        {
            entry.push("response.size", &Value::Int64(size));
        }
        reporter.report(entry);
    }
}
