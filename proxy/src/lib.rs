//! The mixr sidecar proxy (`mixr-proxy`): Istio traffic rules (VirtualService,
//! DestinationRule, ServiceEntry) for one workload's outbound and inbound HTTP/1.1 and h2c
//! traffic, and enforcement through mixr's Check/Report.
//!
//! Layout, in the order a request meets it:
//! - [`cli`], [`worker`]: the command line; what each worker thread owns (upstream
//!   [`pool`], mixr channel, report batcher); the roles run the threads and listeners.
//! - [`listener`]: what one caller may hold of a listener (timeouts, a connection
//!   ceiling), accept loops that back off when descriptors run out.
//! - [`http1`]: HTTP/1.1 on the wire (the listener's fast path, body framing); hyper
//!   serves h2c, upgrades and what the fast path leaves to it.
//! - [`ingress`]: what every request goes through before anything looks at it (Host,
//!   hop-by-hop and repeated fields, path normalization).
//! - [`proxy`]: the shared state (config generation, clusters, policy, stats);
//!   [`forward`]: the pipeline a routed request goes through (redirect, fault, pool
//!   limits, retries, mirror); [`upgrade`]: WebSocket and other upgrades; [`role`],
//!   [`request`]: what the layers below the roles know of a request.
//! - [`config`], [`route`]: the networking YAML (compiled at load) and the route table;
//!   [`upstream`]: clusters with load balancing, circuit breaking and outlier detection;
//!   [`dns`]: ServiceEntry names resolved off the request path.
//! - [`policy`]: attributes, the check cache, quotas and the report batcher; [`trace`]:
//!   request spans over OTLP and `traceparent` propagation.
//! - [`admin`], [`stats`], [`reload`]: the admin and stats ports and hot reload.
//! - Around the pod: [`capture`] (`mixr-proxy iptables`, the init container's capture
//!   rules) and [`inject`] (`mixr-proxy inject`, adding the sidecar to workloads).
//!
//! Roles, over that one pipeline, as linkerd2-proxy's `app/inbound` and `app/outbound`:
//! the [`sidecar`]'s inbound side (`sidecar::inbound`, to the local app) and outbound side
//! (`sidecar::outbound`, routed by the mesh's VirtualServices), and the [`gateway`]
//! (`--role gateway`: Istio's ingress gateway, with TLS termination, routed by the
//! VirtualServices bound to its Gateways). The roles depend on the pipeline's modules;
//! none of those depends on a role, and no two modules import each other
//! (`tests/layers.rs` fails on any cycle).
//!
//! The crate depends on `mixr-proto`, `mixr-rules` and `mixr-otlp`, never on the server.

pub mod admin;
pub mod authz;
pub mod body;
pub mod capture;
pub mod certs;
pub mod cli;
pub mod config;
pub mod dns;
pub use mixr_proto::fasthash;
pub mod forward;
pub mod gateway;
pub mod http1;
pub mod identity;
pub mod ingress;
pub mod inject;
pub mod listener;
pub mod mtls;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod rand;
pub mod reload;
pub mod request;
pub mod role;
pub mod route;
pub mod sidecar;
pub mod stats;
pub mod trace;
pub mod upgrade;
pub mod upstream;
pub mod worker;
