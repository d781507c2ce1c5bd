//! Wire types shared by the server, the proxy and the CLI.
//!
//! - `istio::mixer::v1`: Istio's Mixer API (Check/Report, compressed attributes), generated
//!   from our own `.proto` files under `protos/`, field-for-field compatible with Istio's.
//! - `istio::policy::v1beta1`: `DirectHttpResponse`, carried in Check status details.
//! - `google::rpc::Status`.
//! - [`dictionary`]: Istio's global word list used for attribute compression, compiled in
//!   from `global_dictionary.yaml` in its exact order.

pub mod dictionary;

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
}

/// Encoded `FileDescriptorSet` of our protos, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mixr_descriptor.bin"));

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
