//! The mixr policy server (binary `mixr`).
//!
//! - [`ca`]: the mesh's certificate authority (workload certificates for sidecars).
//! - [`cli`]: the command line: `serve`, `validate`, and the `check`/`report` client.
//! - [`runtime`]: the active config (compiled snapshot + built handlers), swapped
//!   atomically; loading and hot reload with last-good-config semantics.
//! - [`dispatch`]: Check and Report semantics over a runtime: rule matching, adapter calls,
//!   status aggregation, header operations. No wire types here.
//! - [`grpc`]: the `istio.mixer.v1.Mixer` service: wire decoding and encoding, and the one
//!   place where errors become gRPC statuses.
//! - [`monitor`]: the HTTP monitoring port (`/healthz`, `/readyz`, `/metrics`,
//!   `/debug/config`).
//! - [`metrics`]: mixr's own Prometheus metrics.
//! - [`serve`], [`listen`]: `mixr serve`'s listeners, with connection limits, handshake and
//!   idle deadlines and accept backoff; reload and shutdown.
//! - [`tls`]: TLS on the gRPC port, and the refusal of callers without a mesh client
//!   certificate.

pub mod ca;
pub mod cli;
pub mod dispatch;
pub mod grpc;
pub mod listen;
pub mod metrics;
pub mod monitor;
pub mod runtime;
pub mod serve;
pub mod tls;
