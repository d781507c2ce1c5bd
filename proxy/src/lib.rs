//! The mixr sidecar proxy: HTTP/1.1, HTTP/2 and gRPC proxying with Istio traffic rules and
//! policy enforcement through mixr's Check/Report.
//!
//! Not built yet: this crate only reserves its place in the workspace. It will depend on
//! `mixr-proto` and `mixr-rules` (attribute encoding, QuotaSpec), never on the server.
