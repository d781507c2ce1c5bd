//! Wire types shared by the server, the proxy and the CLI.
//!
//! - `istio::mixer::v1`: Istio's Mixer API (Check/Report, compressed attributes), generated
//!   from our own `.proto` files under `protos/`, field-for-field compatible with Istio's.
//! - `istio::policy::v1beta1`: `DirectHttpResponse`, carried in Check status details.
//! - `istio::v1::auth`: Istio's certificate service (`CreateCertificate`), which mixr's CA
//!   serves and sidecars call.
//! - `google::rpc::Status`.
//! - `mixr::server::v1::LazyCheckRequest`, `LazyReportRequest` and [`lazy_server`]: the
//!   server's view of Check and Report, attributes left encoded until the server decodes
//!   them itself (a Check's straight into its bag, a Report's one chunk at a time).
//! - [`ENVOY_FILE_DESCRIPTOR_SET`]: descriptors of Envoy's ext_authz and rate-limit APIs
//!   for reflection (the code is envoy-types').
//! - [`dictionary`]: Istio's global word list used for attribute compression, compiled in
//!   from `global_dictionary.yaml` in its exact order, looked up in a table built at compile time.
//! - [`fasthash`]: a fast hash for tables whose keys callers do not choose.

pub mod dictionary;
pub mod fasthash;

#[allow(clippy::all, missing_docs)]
pub mod google {
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

#[allow(clippy::all, missing_docs)]
pub mod istio {
    pub mod mixer {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/istio.mixer.v1.rs"));
        }
    }
    pub mod policy {
        pub mod v1beta1 {
            include!(concat!(env!("OUT_DIR"), "/istio.policy.v1beta1.rs"));
        }
    }
    pub mod v1 {
        pub mod auth {
            include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
        }
    }
}

#[allow(clippy::all, missing_docs)]
pub mod mixr {
    pub mod server {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/mixr.server.v1.rs"));
        }
    }
}

/// The Mixer service as mixr's server implements it: Check arrives as
/// [`mixr::server::v1::LazyCheckRequest`] and Report as
/// [`mixr::server::v1::LazyReportRequest`], their attributes still encoded.
#[allow(clippy::all, missing_docs)]
pub mod lazy_server {
    include!(concat!(env!("OUT_DIR"), "/lazy/istio.mixer.v1.rs"));
}

/// Encoded `FileDescriptorSet` of our protos, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mixr_descriptor.bin"));

/// Encoded `FileDescriptorSet` of Envoy's ext_authz v3 and rate-limit v3 services and what
/// their messages use, under Envoy's file and package names, for gRPC reflection. No code
/// is generated from it: the server serves these APIs with envoy-types.
pub const ENVOY_FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor.bin"));

/// Type URL under which a `DirectHttpResponse` travels inside `google.rpc.Status.details`.
pub const DIRECT_HTTP_RESPONSE_TYPE_URL: &str = "type.googleapis.com/istio.policy.v1beta1.DirectHttpResponse";

/// The HTTP status a proxy answers for a denied Check, as Istio's mixer filter mapped it.
pub fn http_status_for(grpc_code: i32) -> u16 {
    match grpc_code {
        0 => 200,
        3 => 400,  // INVALID_ARGUMENT
        7 => 403,  // PERMISSION_DENIED
        8 => 429,  // RESOURCE_EXHAUSTED
        14 => 503, // UNAVAILABLE
        16 => 401, // UNAUTHENTICATED
        _ => 500,
    }
}

/// gRPC status code names, indexed by code.
const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The name of a gRPC status code (`PERMISSION_DENIED`); UNKNOWN for codes out of range.
pub fn grpc_code_name(code: i32) -> &'static str {
    usize::try_from(code).ok().and_then(|c| GRPC_CODE_NAMES.get(c)).copied().unwrap_or("UNKNOWN")
}

/// A gRPC status code given by number or by name.
pub fn parse_grpc_code(text: &str) -> Option<i32> {
    match text.parse::<i32>() {
        Ok(n) => (0..GRPC_CODE_NAMES.len() as i32).contains(&n).then_some(n),
        Err(_) => GRPC_CODE_NAMES.iter().position(|n| *n == text).map(|p| p as i32),
    }
}
