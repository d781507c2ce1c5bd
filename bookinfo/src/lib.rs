//! Istio's Bookinfo, locally: small stand-ins for productpage, details, reviews v1/v2/v3
//! and ratings, each behind its own `mixr-proxy`, with `mixr` enforcing policy and
//! collecting telemetry. Everything listens on 127.0.0.1.
//!
//! - [`services`]: the four services (HTTP/1.1 JSON), calling each other through their
//!   sidecar's outbound listener as an iptables-captured pod would.
//! - [`page`]: productpage's HTML for browsers; [`user`]: who is signed in.
//! - [`gateway`]: the ingress gateway's config (Istio's bookinfo-gateway), its
//!   certificate and Istio's ingress policies.
//! - [`topology`]: starts mixr, the sidecars and the services on free ports, writes their
//!   config, and switches traffic scenarios (the sidecars hot-reload).

pub mod gateway;
pub mod page;
pub mod services;
pub mod topology;
pub mod user;
