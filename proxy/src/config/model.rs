//! The traffic config model, parsed from YAML with exact error locations.

use std::time::Duration;

use mixr_rules::config::{ConfigError, Obj, Param};
use mixr_rules::value::parse_duration;
use regex::Regex;

/// Istio's StringMatch, compiled: regexes are anchored (RE2 full match).
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }

    fn parse(p: Param<'_>) -> Result<StringMatch, ConfigError> {
        let o = p.obj()?;
        let m = if let Some(s) = o.get("exact", |p| p.text())? {
            StringMatch::Exact(s)
        } else if let Some(s) = o.get("prefix", |p| p.text())? {
            StringMatch::Prefix(s)
        } else if let Some(s) = o.get("regex", |p| p.text())? {
            let re = Regex::new(&format!("^(?:{s})$")).map_err(|e| p.error(format!("invalid regex {s:?}: {e}")))?;
            StringMatch::Regex(re)
        } else {
            // `{}` on a header means "present".
            StringMatch::Prefix(String::new())
        };
        o.finish()?;
        Ok(m)
    }
}

#[derive(Debug, Clone, Default)]
pub struct HttpMatch {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub headers: Vec<(String, StringMatch)>,
    pub without_headers: Vec<(String, StringMatch)>,
    pub query_params: Vec<(String, StringMatch)>,
    pub ignore_uri_case: bool,
    pub source_labels: Vec<(String, String)>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOps {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedDestination {
    pub destination: Destination,
    pub weight: u32,
    pub headers: Headers,
}

/// Conditions that make a request worth another attempt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetryOn {
    pub five_xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub connect_failure: bool,
    pub retriable_4xx: bool,
    pub refused_stream: bool,
    /// HTTP status codes, from bare numbers (and `retriable-status-codes`).
    pub status_codes: Vec<u16>,
    /// gRPC status codes (cancelled 1, deadline-exceeded 4, resource-exhausted 8,
    /// internal 13, unavailable 14).
    pub grpc_codes: Vec<i32>,
}

impl RetryOn {
    pub fn parse(text: &str) -> Result<RetryOn, String> {
        let mut r = RetryOn::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "5xx" => r.five_xx = true,
                "gateway-error" => r.gateway_error = true,
                "reset" => r.reset = true,
                "connect-failure" => r.connect_failure = true,
                "retriable-4xx" => r.retriable_4xx = true,
                "refused-stream" => r.refused_stream = true,
                "retriable-status-codes" => {}
                "cancelled" => r.grpc_codes.push(1),
                "deadline-exceeded" => r.grpc_codes.push(4),
                "resource-exhausted" => r.grpc_codes.push(8),
                "internal" => r.grpc_codes.push(13),
                "unavailable" => r.grpc_codes.push(14),
                other => match other.parse::<u16>() {
                    Ok(code) if (100..=599).contains(&code) => r.status_codes.push(code),
                    _ => return Err(format!("unknown retry condition {other:?}")),
                },
            }
        }
        Ok(r)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retries {
    /// Retries after the first attempt (at most 1 + attempts requests).
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
}

impl Default for Retries {
    /// Istio's mesh default when a route names none.
    fn default() -> Self {
        Retries {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryOn::parse("connect-failure,refused-stream,unavailable,cancelled").unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Abort {
    Http(u16),
    Grpc(i32),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fault {
    /// Delay and the share of requests (0-100) delayed.
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(Abort, f64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct HttpRoute {
    pub name: Option<String>,
    /// OR of blocks; empty matches everything.
    pub matches: Vec<HttpMatch>,
    pub route: Vec<WeightedDestination>,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    pub timeout: Option<Duration>,
    pub retries: Retries,
    pub fault: Option<Fault>,
    pub mirror: Option<Destination>,
    /// Share of requests mirrored, 0-100.
    pub mirror_percentage: f64,
    pub headers: Headers,
}

#[derive(Debug, Clone)]
pub struct VirtualService {
    pub name: String,
    pub namespace: String,
    pub hosts: Vec<String>,
    /// `hosts`, compiled (wildcards).
    pub host_patterns: Vec<super::hosts::HostPattern>,
    /// Gateways it is bound to, `namespace/name`, and `mesh` for the sidecars; empty is
    /// the sidecars only.
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
}

impl VirtualService {
    /// Whether it applies to the sidecars.
    pub fn binds_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh")
    }

    /// Whether it applies to the gateway `key` (`namespace/name`).
    pub fn binds_gateway(&self, key: &str) -> bool {
        self.gateways.iter().any(|g| g == key)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadBalancer {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
    Passthrough,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(String),
    Cookie(String),
    SourceIp,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionPool {
    pub max_connections: Option<u32>,
    pub connect_timeout: Option<Duration>,
    pub http1_max_pending_requests: Option<u32>,
    pub http2_max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Envoy's `consecutive_5xx`: any 5xx counts. `None` or 0: off.
    pub consecutive_5xx_errors: Option<u32>,
    /// Envoy's `consecutive_gateway_failure`: 502, 503, 504 and no response count.
    pub consecutive_gateway_errors: Option<u32>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrafficPolicy {
    pub load_balancer: LoadBalancer,
    pub consistent_hash: Option<HashKey>,
    pub connection_pool: ConnectionPool,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTls>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

/// DestinationRule `trafficPolicy.tls`: how the sidecar connects to the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub mode: ClientTlsMode,
    pub client_certificate: Option<std::path::PathBuf>,
    pub private_key: Option<std::path::PathBuf>,
    pub ca_certificates: Option<std::path::PathBuf>,
    pub subject_alt_names: Vec<String>,
    pub sni: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subset {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub traffic_policy: Option<TrafficPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationRule {
    pub name: String,
    pub namespace: String,
    pub host: String,
    pub traffic_policy: TrafficPolicy,
    pub subsets: Vec<Subset>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub number: u16,
    pub name: String,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub address: String,
    /// Port name to number; an absent port uses the service port's number.
    pub ports: Vec<(String, u16)>,
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    pub name: String,
    pub namespace: String,
    pub hosts: Vec<String>,
    /// `addresses`: the service's virtual IPs or CIDR blocks (checked at load).
    pub addresses: Vec<String>,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<Endpoint>,
    pub resolution: String,
}

// ---- parsing -------------------------------------------------------------------------

fn string_map(p: Param<'_>) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (k, v) in p.entries()? {
        let path = format!("{}.{k}", p.path());
        out.push((k, Param::new(v, p.loc, &path).text()?));
    }
    Ok(out)
}

fn match_map(p: Param<'_>) -> Result<Vec<(String, StringMatch)>, ConfigError> {
    let mut out = Vec::new();
    for (k, v) in p.entries()? {
        let path = format!("{}.{k}", p.path());
        out.push((k.to_ascii_lowercase(), StringMatch::parse(Param::new(v, p.loc, &path))?));
    }
    Ok(out)
}

fn duration(p: Param<'_>) -> Result<Duration, ConfigError> {
    let t = p.text()?;
    parse_duration(&t)
        .filter(|d| d.as_nanos() >= 0)
        .map(|d| d.to_std())
        .ok_or_else(|| p.error(format!("{t:?} is not a duration like \"5s\"")))
}

fn port(p: Param<'_>) -> Result<u16, ConfigError> {
    let n = p.i64()?;
    u16::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| p.error(format!("{n} is not a port")))
}

/// `percentage: {value}` (0-100, a double) or the old integer `percent`.
fn percentage(o: &Obj<'_>) -> Result<Option<f64>, ConfigError> {
    let value = match o.get("percentage", |p| {
        let v = p.obj()?;
        let value = v.require("value", |p| p.f64())?;
        v.finish()?;
        Ok(value)
    })? {
        Some(v) => Some(v),
        None => o.get("percent", |p| p.f64())?,
    };
    match value {
        Some(v) if !(0.0..=100.0).contains(&v) => {
            Err(ConfigError::new(o.loc(), o.child_path("percentage"), format!("{v} is not between 0 and 100")))
        }
        v => Ok(v),
    }
}

pub(crate) fn destination(p: Param<'_>) -> Result<Destination, ConfigError> {
    let o = p.obj()?;
    let host = o.require("host", |p| p.text())?;
    let subset = o.get("subset", |p| p.text())?;
    let port = o.get("port", |p| {
        let po = p.obj()?;
        let n = po.require("number", port)?;
        po.finish()?;
        Ok(n)
    })?;
    o.finish()?;
    Ok(Destination { host, subset, port })
}

fn header_ops(p: Param<'_>) -> Result<HeaderOps, ConfigError> {
    let o = p.obj()?;
    let ops = HeaderOps {
        set: o.get("set", string_map)?.unwrap_or_default(),
        add: o.get("add", string_map)?.unwrap_or_default(),
        remove: o.get("remove", |p| p.string_list())?.unwrap_or_default(),
    };
    o.finish()?;
    Ok(ops)
}

fn headers(p: Param<'_>) -> Result<Headers, ConfigError> {
    let o = p.obj()?;
    let h = Headers {
        request: o.get("request", header_ops)?.unwrap_or_default(),
        response: o.get("response", header_ops)?.unwrap_or_default(),
    };
    o.finish()?;
    Ok(h)
}

fn http_match(p: Param<'_>) -> Result<HttpMatch, ConfigError> {
    let o = p.obj()?;
    let m = HttpMatch {
        name: o.get("name", |p| p.text())?,
        uri: o.get("uri", StringMatch::parse)?,
        scheme: o.get("scheme", StringMatch::parse)?,
        method: o.get("method", StringMatch::parse)?,
        authority: o.get("authority", StringMatch::parse)?,
        headers: o.get("headers", match_map)?.unwrap_or_default(),
        without_headers: o.get("withoutHeaders", match_map)?.unwrap_or_default(),
        query_params: o.get("queryParams", match_map)?.unwrap_or_default(),
        ignore_uri_case: o.get("ignoreUriCase", |p| p.bool())?.unwrap_or(false),
        source_labels: o.get("sourceLabels", string_map)?.unwrap_or_default(),
        port: o.get("port", port)?,
    };
    o.finish()?;
    Ok(m)
}

fn fault(p: Param<'_>) -> Result<Fault, ConfigError> {
    let o = p.obj()?;
    let delay = o.get("delay", |p| {
        let d = p.obj()?;
        let fixed = d.require("fixedDelay", duration)?;
        let pct = percentage(&d)?.unwrap_or(0.0);
        d.finish()?;
        Ok((fixed, pct))
    })?;
    let abort = o.get("abort", |p| {
        let a = p.obj()?;
        let kind = if let Some(code) = a.get("httpStatus", |p| {
            let c = p.i64()?;
            u16::try_from(c)
                .ok()
                .filter(|c| (200..=599).contains(c))
                .ok_or_else(|| p.error(format!("{c} is not an HTTP status")))
        })? {
            Abort::Http(code)
        } else if let Some(code) = a.get("grpcStatus", |p| {
            let t = p.text()?;
            grpc_code(&t).ok_or_else(|| p.error(format!("{t:?} is not a gRPC status")))
        })? {
            Abort::Grpc(code)
        } else {
            return Err(p.error("needs httpStatus or grpcStatus"));
        };
        let pct = percentage(&a)?.unwrap_or(0.0);
        a.finish()?;
        Ok((kind, pct))
    })?;
    o.finish()?;
    Ok(Fault { delay, abort })
}

/// A gRPC status by number or name (`UNAVAILABLE`).
pub fn grpc_code(text: &str) -> Option<i32> {
    mixr_proto::parse_grpc_code(text)
}

pub(crate) fn http_route(p: Param<'_>) -> Result<HttpRoute, ConfigError> {
    let o = p.obj()?;
    let matches = o
        .get("match", |p| {
            let mut out = Vec::new();
            for (v, path) in p.list()? {
                out.push(http_match(Param::new(&v, p.loc, &path))?);
            }
            Ok(out)
        })?
        .unwrap_or_default();
    let route = o
        .get("route", |p| {
            let items = p.list()?;
            let single = items.len() == 1;
            let mut out = Vec::new();
            for (v, path) in items {
                let r = Param::new(&v, p.loc, &path).obj()?;
                let destination = r.require("destination", destination)?;
                let weight = r
                    .get("weight", |p| {
                        let w = p.i64()?;
                        u32::try_from(w).map_err(|_| p.error(format!("{w} is not a weight")))
                    })?
                    // A lone destination gets everything; in a split an unweighted one gets none.
                    .unwrap_or(if single { 100 } else { 0 });
                let headers = r.get("headers", headers)?.unwrap_or_default();
                r.finish()?;
                out.push(WeightedDestination { destination, weight, headers });
            }
            Ok(out)
        })?
        .unwrap_or_default();
    let redirect = o.get("redirect", |p| {
        let r = p.obj()?;
        let redirect = Redirect {
            uri: r.get("uri", |p| p.text())?,
            authority: r.get("authority", |p| p.text())?,
            code: r.get("redirectCode", port)?.unwrap_or(301),
        };
        r.finish()?;
        Ok(redirect)
    })?;
    let rewrite = o.get("rewrite", |p| {
        let r = p.obj()?;
        let rw = Rewrite { uri: r.get("uri", |p| p.text())?, authority: r.get("authority", |p| p.text())? };
        r.finish()?;
        Ok(rw)
    })?;
    let timeout = o.get("timeout", duration)?;
    let retries = o
        .get("retries", |p| {
            let r = p.obj()?;
            let attempts = r.get("attempts", |p| {
                let n = p.i64()?;
                u32::try_from(n).map_err(|_| p.error("must not be negative"))
            })?;
            let per_try_timeout = r.get("perTryTimeout", duration)?;
            let retry_on = r
                .get("retryOn", |p| RetryOn::parse(&p.text()?).map_err(|e| p.error(e)))?
                .unwrap_or_else(|| Retries::default().retry_on);
            let _ = r.raw("retryRemoteLocalities");
            r.finish()?;
            Ok(Retries { attempts: attempts.unwrap_or(2), per_try_timeout, retry_on })
        })?
        .unwrap_or_default();
    let fault = o.get("fault", fault)?;
    let mirror = o.get("mirror", destination)?;
    let mirror_percentage = match o.get("mirrorPercentage", |p| {
        let v = p.obj()?;
        let value = v.require("value", |p| p.f64())?;
        v.finish()?;
        Ok(value)
    })? {
        Some(v) => v,
        None => o.get("mirrorPercent", |p| p.f64())?.unwrap_or(100.0),
    };
    let headers = o.get("headers", headers)?.unwrap_or_default();
    let name = o.get("name", |p| p.text())?;
    let _ = o.raw("corsPolicy");
    o.finish()?;
    if route.is_empty() && redirect.is_none() {
        return Err(p.error("a route needs route or redirect"));
    }
    Ok(HttpRoute {
        name,
        matches,
        route,
        redirect,
        rewrite,
        timeout,
        retries,
        fault,
        mirror,
        mirror_percentage,
        headers,
    })
}

pub(crate) fn traffic_policy(p: Param<'_>) -> Result<TrafficPolicy, ConfigError> {
    let o = p.obj()?;
    let mut policy = TrafficPolicy::default();
    if let Some((lb, hash)) = o.get("loadBalancer", |p| {
        let l = p.obj()?;
        let simple = l
            .get("simple", |p| match p.text()?.as_str() {
                "ROUND_ROBIN" => Ok(LoadBalancer::RoundRobin),
                "LEAST_REQUEST" | "LEAST_CONN" => Ok(LoadBalancer::LeastRequest),
                "RANDOM" => Ok(LoadBalancer::Random),
                "PASSTHROUGH" => Ok(LoadBalancer::Passthrough),
                other => Err(p.error(format!("unknown load balancer {other:?}"))),
            })?
            .unwrap_or_default();
        let hash = l.get("consistentHash", |p| {
            let c = p.obj()?;
            let key = if let Some(h) = c.get("httpHeaderName", |p| p.text())? {
                HashKey::Header(h.to_ascii_lowercase())
            } else if let Some(name) = c.get("httpCookie", |p| {
                let ck = p.obj()?;
                let name = ck.require("name", |p| p.text())?;
                let _ = ck.raw("ttl");
                let _ = ck.raw("path");
                ck.finish()?;
                Ok(name)
            })? {
                HashKey::Cookie(name)
            } else if c.get("useSourceIp", |p| p.bool())?.unwrap_or(false) {
                HashKey::SourceIp
            } else {
                return Err(p.error("needs httpHeaderName, httpCookie or useSourceIp"));
            };
            let _ = c.raw("minimumRingSize");
            c.finish()?;
            Ok(key)
        })?;
        l.finish()?;
        Ok((simple, hash))
    })? {
        policy.load_balancer = lb;
        policy.consistent_hash = hash;
    }
    if let Some(pool) = o.get("connectionPool", |p| {
        let c = p.obj()?;
        let mut pool = ConnectionPool::default();
        let count = |p: Param<'_>| -> Result<u32, ConfigError> {
            let n = p.i64()?;
            u32::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| p.error(format!("{n} must be a positive count")))
        };
        if let Some((max, connect)) = c.get("tcp", |p| {
            let t = p.obj()?;
            let r = (t.get("maxConnections", count)?, t.get("connectTimeout", duration)?);
            let _ = t.raw("tcpKeepalive");
            t.finish()?;
            Ok(r)
        })? {
            pool.max_connections = max;
            pool.connect_timeout = connect;
        }
        c.get("http", |p| {
            let h = p.obj()?;
            pool.http1_max_pending_requests = h.get("http1MaxPendingRequests", count)?;
            pool.http2_max_requests = h.get("http2MaxRequests", count)?;
            pool.max_requests_per_connection = h.get("maxRequestsPerConnection", count)?;
            pool.max_retries = h.get("maxRetries", count)?;
            pool.idle_timeout = h.get("idleTimeout", duration)?;
            let _ = h.raw("h2UpgradePolicy");
            h.finish()
        })?;
        c.finish()?;
        Ok(pool)
    })? {
        policy.connection_pool = pool;
    }
    policy.outlier_detection = o.get("outlierDetection", |p| {
        let d = p.obj()?;
        let n = |p: Param<'_>| -> Result<u32, ConfigError> {
            let v = p.i64()?;
            u32::try_from(v).map_err(|_| p.error(format!("{v} must not be negative")))
        };
        let five_xx = d.get("consecutive5xxErrors", n)?;
        let gateway = d.get("consecutiveGatewayErrors", n)?;
        // Istio 1.4's `consecutiveErrors` counted 502, 503 and 504 only (Envoy's gateway
        // failures, with its 5xx detector off); it is also the default (5) when no count is
        // given. The newer fields, when given, mean what Envoy's do.
        let legacy = d.get("consecutiveErrors", n)?;
        let (consecutive_5xx_errors, consecutive_gateway_errors) = match (five_xx, gateway) {
            (None, None) => (None, Some(legacy.unwrap_or(5))),
            (five_xx, gateway) => (five_xx, gateway.or(legacy)),
        };
        let od = OutlierDetection {
            consecutive_5xx_errors,
            consecutive_gateway_errors,
            interval: d.get("interval", duration)?.unwrap_or(Duration::from_secs(10)),
            base_ejection_time: d.get("baseEjectionTime", duration)?.unwrap_or(Duration::from_secs(30)),
            max_ejection_percent: d.get("maxEjectionPercent", n)?.unwrap_or(10).min(100),
            min_health_percent: d.get("minHealthPercent", n)?.unwrap_or(0).min(100),
        };
        d.finish()?;
        Ok(od)
    })?;
    policy.tls = o.get("tls", client_tls)?;
    let _ = o.raw("portLevelSettings");
    o.finish()?;
    Ok(policy)
}

fn client_tls(p: Param<'_>) -> Result<ClientTls, ConfigError> {
    let o = p.obj()?;
    let mode = match o.get("mode", |p| p.text())?.as_deref() {
        None | Some("DISABLE") => ClientTlsMode::Disable,
        Some("SIMPLE") => ClientTlsMode::Simple,
        Some("MUTUAL") => ClientTlsMode::Mutual,
        Some("ISTIO_MUTUAL") => ClientTlsMode::IstioMutual,
        Some(other) => {
            return Err(ConfigError::new(
                o.loc(),
                o.child_path("mode"),
                format!("{other:?}: expected DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL"),
            ));
        }
    };
    // Files are read now, so a missing one is a config error naming its key rather than
    // every connection failing later.
    let file = |key: &str| {
        o.get(key, |p| {
            let path = std::path::PathBuf::from(p.text()?);
            let pem = std::fs::read(&path).map_err(|e| p.error(format!("{}: {e}", path.display())))?;
            if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
                return Err(p.error(format!("{}: no PEM in it", path.display())));
            }
            Ok(path)
        })
    };
    let tls = ClientTls {
        mode,
        client_certificate: file("clientCertificate")?,
        private_key: file("privateKey")?,
        ca_certificates: file("caCertificates")?,
        subject_alt_names: o.get("subjectAltNames", |p| p.string_list())?.unwrap_or_default(),
        sni: o.get("sni", |p| p.text())?.filter(|s| !s.is_empty()),
    };
    if mode == ClientTlsMode::Mutual {
        for (key, given) in [("clientCertificate", &tls.client_certificate), ("privateKey", &tls.private_key)] {
            if given.is_none() {
                return Err(ConfigError::new(o.loc(), o.child_path(key), "MUTUAL needs it"));
            }
        }
    }
    let _ = o.raw("credentialName");
    o.finish()?;
    Ok(tls)
}

pub(crate) fn subset(p: Param<'_>) -> Result<Subset, ConfigError> {
    let o = p.obj()?;
    let s = Subset {
        name: o.require("name", |p| p.text())?,
        labels: o.get("labels", string_map)?.unwrap_or_default(),
        traffic_policy: o.get("trafficPolicy", traffic_policy)?,
    };
    o.finish()?;
    Ok(s)
}

pub(crate) fn service_port(p: Param<'_>) -> Result<ServicePort, ConfigError> {
    let o = p.obj()?;
    let sp = ServicePort {
        number: o.require("number", port)?,
        name: o.get("name", |p| p.text())?.unwrap_or_default(),
        protocol: o.get("protocol", |p| p.text())?.unwrap_or_else(|| "HTTP".into()),
    };
    let _ = o.raw("targetPort");
    o.finish()?;
    Ok(sp)
}

pub(crate) fn endpoint(p: Param<'_>) -> Result<Endpoint, ConfigError> {
    let o = p.obj()?;
    let e = Endpoint {
        address: o.require("address", |p| p.text())?,
        ports: o
            .get("ports", |p| {
                let mut out = Vec::new();
                for (k, v) in p.entries()? {
                    let path = format!("{}.{k}", p.path());
                    out.push((k, port(Param::new(v, p.loc, &path))?));
                }
                Ok(out)
            })?
            .unwrap_or_default(),
        labels: o.get("labels", string_map)?.unwrap_or_default(),
    };
    let _ = o.raw("network");
    let _ = o.raw("locality");
    let _ = o.raw("weight");
    let _ = o.raw("serviceAccount");
    o.finish()?;
    Ok(e)
}
