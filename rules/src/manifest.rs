//! The attribute vocabulary: Istio's built-in attributes plus whatever `attributemanifest`
//! documents declare. Expressions are type-checked against it at load time.

use std::collections::HashMap;

use crate::value::ValueType;

/// Attribute name to type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifest {
    types: HashMap<String, ValueType>,
}

const BUILTIN: &[(&str, ValueType)] = {
    use ValueType::*;
    &[
        ("source.uid", String),
        ("source.name", String),
        ("source.namespace", String),
        ("source.principal", String),
        ("source.owner", String),
        ("source.serviceAccount", String),
        ("source.services", String),
        ("source.user", String),
        ("source.workload.uid", String),
        ("source.workload.name", String),
        ("source.workload.namespace", String),
        ("source.ip", IpAddress),
        ("source.port", Int64),
        ("source.labels", StringMap),
        ("source.metadata", StringMap),
        ("destination.uid", String),
        ("destination.name", String),
        ("destination.namespace", String),
        ("destination.principal", String),
        ("destination.owner", String),
        ("destination.serviceAccount", String),
        ("destination.container.name", String),
        ("destination.container.image", String),
        ("destination.service.host", String),
        ("destination.service.uid", String),
        ("destination.service.name", String),
        ("destination.service.namespace", String),
        ("destination.workload.uid", String),
        ("destination.workload.name", String),
        ("destination.workload.namespace", String),
        ("destination.ip", IpAddress),
        ("destination.port", Int64),
        ("destination.labels", StringMap),
        ("destination.metadata", StringMap),
        ("origin.ip", IpAddress),
        ("origin.uid", String),
        ("origin.user", String),
        ("request.id", String),
        ("request.host", String),
        ("request.method", String),
        ("request.path", String),
        ("request.url_path", String),
        ("request.reason", String),
        ("request.referer", String),
        ("request.scheme", String),
        ("request.useragent", String),
        ("request.api_key", String),
        ("request.headers", StringMap),
        ("request.query_params", StringMap),
        ("request.size", Int64),
        ("request.total_size", Int64),
        ("request.time", Timestamp),
        ("request.auth.principal", String),
        ("request.auth.audiences", String),
        ("request.auth.presenter", String),
        ("request.auth.raw_claims", String),
        ("request.auth.claims", StringMap),
        ("response.code", Int64),
        ("response.size", Int64),
        ("response.total_size", Int64),
        ("response.duration", Duration),
        ("response.time", Timestamp),
        ("response.headers", StringMap),
        ("response.grpc_status", String),
        ("response.grpc_message", String),
        ("connection.id", String),
        ("connection.event", String),
        ("connection.requested_server_name", String),
        ("connection.received.bytes", Int64),
        ("connection.received.bytes_total", Int64),
        ("connection.sent.bytes", Int64),
        ("connection.sent.bytes_total", Int64),
        ("connection.duration", Duration),
        ("connection.mtls", Bool),
        ("context.protocol", String),
        ("context.proxy_error_code", String),
        ("context.reporter.kind", String),
        ("context.reporter.uid", String),
        ("context.proxy_version", String),
        ("context.time", Timestamp),
        ("context.timestamp", Timestamp),
        ("context.reporter.local", Bool),
        ("api.service", String),
        ("api.version", String),
        ("api.operation", String),
        ("api.protocol", String),
        ("check.error_code", Int64),
        ("check.error_message", String),
        ("check.cache_hit", Bool),
        ("quota.cache_hit", Bool),
        ("rbac.permissive.response_code", String),
        ("rbac.permissive.effective_policy_id", String),
        // mixr's own: what Envoy's ext_authz and rate-limit requests carry.
        ("context.extensions", StringMap),
        // mixr's own: the sidecar's enforced authorization denial, by the policy that decided.
        ("rbac.effective_policy_id", String),
        ("ratelimit.domain", String),
        ("ratelimit.descriptor", StringMap),
    ]
};

impl Manifest {
    /// Istio's standard vocabulary.
    pub fn builtin() -> Manifest {
        Manifest { types: BUILTIN.iter().map(|(n, t)| (n.to_string(), *t)).collect() }
    }

    pub fn empty() -> Manifest {
        Manifest::default()
    }

    /// Declares an attribute; returns the earlier type if it had a different one.
    pub fn declare(&mut self, name: &str, ty: ValueType) -> Option<ValueType> {
        match self.types.insert(name.to_string(), ty) {
            Some(old) if old != ty => Some(old),
            _ => None,
        }
    }

    pub fn type_of(&self, name: &str) -> Option<ValueType> {
        self.types.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.types.len()
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, ValueType)> {
        self.types.iter().map(|(n, t)| (n.as_str(), *t))
    }
}
