//! Quotas through Mixer Check, Envoy's ext_authz and rate-limit APIs, gRPC health and
//! reflection, and redisquota shared by two servers and surviving a Redis restart.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request as AuthRequest};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest as AuthzCheck};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::Code;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use mixr_e2e::{Mixr, check_request, precondition};
use mixr_proto::istio::mixer::v1::check_request::QuotaParams;
use mixr_rules::value::Value;

const POLICY: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: quotahandler}
spec:
  compiledAdapter: memquota
  params:
    quotas:
    - name: requestcount
      maxAmount: 3
      validDuration: 10s
    - name: rlsquota.instance.istio-system
      maxAmount: 2
      validDuration: 60s
      overrides:
      - dimensions: {key: vip}
        maxAmount: 5
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: requestcount}
spec:
  compiledTemplate: quota
  params:
    dimensions:
      destination: destination.service.name | "unknown"
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: quota}
spec:
  match: (context.protocol | "") == "http"
  actions:
  - {handler: quotahandler, instances: [requestcount]}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: rlsquota}
spec:
  compiledTemplate: quota
  params:
    dimensions:
      key: ratelimit.descriptor["generic_key"] | "none"
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: rls}
spec:
  match: ratelimit.domain == "edge"
  actions:
  - {handler: quotahandler, instances: [rlsquota]}
---
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: admins}
spec:
  compiledAdapter: denier
  params: {status: {code: 7, message: admins only}}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: nothing}
spec: {compiledTemplate: checknothing}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: admin}
spec:
  match: request.path.startsWith("/admin")
  actions:
  - {handler: admins, instances: [nothing]}
  requestHeaderOperations:
  - {name: x-never, values: ['"set"']}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: tag}
spec:
  match: (request.headers["end-user"] | "") != ""
  requestHeaderOperations:
  - {name: x-user, values: ['request.headers["end-user"]']}
  - {name: x-internal, operation: REMOVE}
  responseHeaderOperations:
  - {name: x-served-by, values: ['"mixr"']}
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn s(v: &str) -> Value<'static> {
    Value::String(Cow::Owned(v.to_string()))
}

#[tokio::test]
async fn mixer_check_quotas() {
    let dir = tempfile::tempdir().unwrap();
    let mixr = Mixr::start(&[&write(dir.path(), "p.yaml", POLICY)], &[]);
    let mut client = mixr.client().await;
    let ask = |amount: i64, best_effort: bool, dedup: &str| {
        let mut req = check_request(&[
            ("destination.service.name", s("reviews")),
            ("request.path", s("/r")),
            ("context.protocol", s("http")),
        ]);
        req.quotas.insert("RequestCount".into(), QuotaParams { amount, best_effort });
        req.quotas.insert("nobody-configured-this".into(), QuotaParams { amount: 7, best_effort: false });
        req.deduplication_id = dedup.to_string();
        req
    };
    let mut granted = Vec::new();
    for i in 0..4 {
        let resp = client.check(ask(1, false, &format!("d{i}"))).await.unwrap().into_inner();
        assert_eq!(precondition(&resp).0, 0);
        let q = &resp.quotas["RequestCount"];
        granted.push(q.granted_amount);
        assert_eq!(q.valid_duration.unwrap().seconds, 10);
        assert_eq!(resp.quotas["nobody-configured-this"].granted_amount, 7, "unconfigured quotas are granted in full");
    }
    assert_eq!(granted, vec![1, 1, 1, 0]);
    // A retry with an earlier dedup id replays that answer.
    let resp = client.check(ask(1, false, "d0")).await.unwrap().into_inner();
    assert_eq!(resp.quotas["RequestCount"].granted_amount, 1);
    assert_eq!(mixr.metric("mixr_quota_unconfigured_total{quota=\"nobody-configured-this\"}").await, Some(5.0));
    assert_eq!(mixr.logs().matches("nobody-configured-this").count(), 1, "logged once:\n{}", mixr.logs());

    // A denied precondition charges nothing.
    let mut denied = check_request(&[("destination.service.name", s("other")), ("request.path", s("/admin/x"))]);
    denied.quotas.insert("requestcount".into(), QuotaParams { amount: 1, best_effort: false });
    let resp = client.check(denied).await.unwrap().into_inner();
    assert_eq!(precondition(&resp), (7, "admins.istio-system:admins only".to_string()));
    assert!(resp.quotas.is_empty());
}

fn authz_request(path: &str, headers: &[(&str, &str)]) -> AuthzCheck {
    static ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let peer = |ip: &str, port: u32| Peer {
        address: Some(Address {
            address: Some(AddressKind::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        principal: "spiffe://cluster.local/ns/default/sa/web".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        ..Default::default()
    };
    AuthzCheck {
        attributes: Some(AttributeContext {
            source: Some(peer("10.0.0.7", 40000)),
            destination: Some(peer("10.0.0.9", 9080)),
            request: Some(AuthRequest {
                http: Some(HttpRequest {
                    id: format!("req-{id}"),
                    method: "GET".into(),
                    path: path.into(),
                    host: "reviews:9080".into(),
                    scheme: "http".into(),
                    headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
                    size: 0,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn ext_authz_allows_denies_and_rate_limits() {
    let dir = tempfile::tempdir().unwrap();
    let mixr = Mixr::start(&[&write(dir.path(), "p.yaml", POLICY)], &[]);
    let mut authz = AuthorizationClient::connect(format!("http://{}", mixr.grpc)).await.unwrap();

    let resp = authz.check(authz_request("/admin/panel", &[])).await.unwrap().into_inner();
    assert_eq!(resp.status.as_ref().unwrap().code, 7);
    match resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            assert_eq!(d.status.unwrap().code, 403);
            assert_eq!(d.body, "PERMISSION_DENIED:admins.istio-system:admins only");
        }
        other => panic!("expected a denial, got {other:?}"),
    }

    let resp = authz.check(authz_request("/reviews/1", &[("End-User", "jason")])).await.unwrap().into_inner();
    assert_eq!(resp.status.as_ref().unwrap().code, 0);
    match resp.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            let set: Vec<(String, String)> = ok
                .headers
                .iter()
                .map(|h| h.header.as_ref().map(|h| (h.key.clone(), h.value.clone())).unwrap())
                .collect();
            assert_eq!(set, vec![("x-user".to_string(), "jason".to_string())]);
            assert_eq!(ok.headers_to_remove, vec!["x-internal".to_string()]);
            assert_eq!(ok.response_headers_to_add[0].header.as_ref().unwrap().key, "x-served-by");
        }
        other => panic!("expected ok, got {other:?}"),
    }

    // requestcount allows 3 per 10 s for this destination ("unknown": ext_authz has no
    // destination.service.name); one was used above.
    for _ in 0..2 {
        let r = authz.check(authz_request("/reviews/2", &[])).await.unwrap().into_inner();
        assert_eq!(r.status.unwrap().code, 0);
    }
    let resp = authz.check(authz_request("/reviews/3", &[])).await.unwrap().into_inner();
    assert_eq!(resp.status.as_ref().unwrap().code, 8);
    match resp.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            assert_eq!(d.status.unwrap().code, 429);
            assert_eq!(d.body, "RESOURCE_EXHAUSTED:quota exhausted for: requestcount");
        }
        other => panic!("expected 429, got {other:?}"),
    }
}

fn rls_request(domain: &str, descriptors: &[&[(&str, &str)]], hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors: descriptors
            .iter()
            .map(|entries| RateLimitDescriptor {
                entries: entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
                ..Default::default()
            })
            .collect(),
        hits_addend: hits,
    }
}

async fn rls(mixr: &Mixr, req: RateLimitRequest) -> RateLimitResponse {
    let mut c = RateLimitServiceClient::connect(format!("http://{}", mixr.grpc)).await.unwrap();
    c.should_rate_limit(req).await.unwrap().into_inner()
}

#[tokio::test]
async fn rate_limit_service_statuses_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let mixr = Mixr::start(&[&write(dir.path(), "p.yaml", POLICY)], &["--rate-limit-headers"]);
    let descriptors: &[&[(&str, &str)]] = &[&[("generic_key", "basic")], &[("generic_key", "vip")], &[("other", "x")]];

    let r = rls(&mixr, rls_request("edge", descriptors, 0)).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert_eq!(r.statuses.len(), 3, "one status per descriptor");
    let basic = &r.statuses[0];
    assert_eq!(basic.code, Code::Ok as i32);
    let limit = basic.current_limit.as_ref().unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit), (2, 2), "2 per minute (unit MINUTE = 2)");
    assert_eq!(basic.limit_remaining, 1);
    let reset = basic.duration_until_reset.as_ref().unwrap();
    assert!(reset.seconds >= 59 && reset.seconds <= 61, "{reset:?}");
    assert_eq!(r.statuses[1].current_limit.as_ref().unwrap().requests_per_unit, 5, "the vip override");
    assert_eq!(r.statuses[1].limit_remaining, 4);
    assert_eq!(r.statuses[2].limit_remaining, 1, "key defaults to \"none\", its own counter");
    let headers: HashMap<String, String> =
        r.response_headers_to_add.iter().map(|h| (h.key.clone(), h.value.clone())).collect();
    assert_eq!(headers["X-RateLimit-Limit"], "2, 2;w=60");
    assert_eq!(headers["X-RateLimit-Remaining"], "1");

    // hits_addend 2 on the basic key: only 1 left, so over the limit.
    let r = rls(&mixr, rls_request("edge", &[&[("generic_key", "basic")]], 2)).await;
    assert_eq!(r.overall_code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(r.statuses[0].limit_remaining, 1, "a denied request is not charged");

    // Another domain matches no rule: OK without limits.
    let r = rls(&mixr, rls_request("internal", &[&[("generic_key", "basic")]], 100)).await;
    assert_eq!(r.overall_code, Code::Ok as i32);
    assert!(r.statuses[0].current_limit.is_none());
}

#[tokio::test]
async fn health_and_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let mixr = Mixr::start(&[&write(dir.path(), "p.yaml", POLICY)], &[]);
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", mixr.grpc)).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in
        ["istio.mixer.v1.Mixer", "envoy.service.auth.v3.Authorization", "envoy.service.ratelimit.v3.RateLimitService"]
    {
        let r =
            health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service}");
    }
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl.server_reflection_info(tokio_stream_once(req)).await.unwrap().into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else { panic!("{msg:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"istio.mixer.v1.Mixer".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");
}

fn tokio_stream_once<T: Send + 'static>(
    item: T,
) -> impl tonic::codegen::tokio_stream::Stream<Item = T> + Send + 'static {
    tonic::codegen::tokio_stream::iter(vec![item])
}

fn redis_policy(url: &str, fail_open: bool) -> String {
    format!(
        r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {{name: shared}}
spec:
  compiledAdapter: redisquota
  params:
    redisServerUrl: {url}
    failOpen: {fail_open}
    timeout: 300ms
    quotas:
    - name: requestcount
      maxAmount: 10
      validDuration: 30s
      rateLimitAlgorithm: ROLLING_WINDOW
      bucketDuration: 1s
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {{name: requestcount}}
spec:
  compiledTemplate: quota
  params:
    dimensions: {{user: 'request.headers["x-user"] | "anonymous"'}}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {{name: quota}}
spec:
  actions:
  - {{handler: shared, instances: [requestcount]}}
"#
    )
}

fn quota_request(user: &str) -> mixr_proto::istio::mixer::v1::CheckRequest {
    let headers = Value::StringMap(mixr_rules::value::MapVal::from(mixr_rules::value::StringMap::new(vec![(
        "x-user".into(),
        user.to_string().into(),
    )])));
    let mut req = check_request(&[("request.headers", headers)]);
    req.quotas.insert("requestcount".into(), QuotaParams { amount: 1, best_effort: false });
    req
}

fn unique_user() -> String {
    format!("u{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

#[tokio::test]
async fn two_servers_on_one_redis_enforce_one_limit() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "p.yaml", &redis_policy(&url, false));
    let (a, b) = (Mixr::start(&[&policy], &[]), Mixr::start(&[&policy], &[]));
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let user = unique_user();
    let mut granted = 0;
    for i in 0..30 {
        let client = if i % 2 == 0 { &mut ca } else { &mut cb };
        let resp = client.check(quota_request(&user)).await.unwrap().into_inner();
        granted += resp.quotas["requestcount"].granted_amount;
    }
    assert_eq!(granted, 10, "30 requests over two servers, one shared limit of 10");
}

struct OwnRedis(std::process::Child);

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis(child)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn redis_killed_and_restarted_under_a_running_server() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let redis = OwnRedis::start(port);
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "p.yaml", &redis_policy(&format!("redis://127.0.0.1:{port}"), false));
    let mixr = Mixr::start(&[&policy], &[]);
    let mut client = mixr.client().await;
    let user = unique_user();
    let resp = client.check(quota_request(&user)).await.unwrap().into_inner();
    assert_eq!(resp.quotas["requestcount"].granted_amount, 1);

    drop(redis);
    for _ in 0..3 {
        let start = Instant::now();
        let resp = client.check(quota_request(&user)).await.unwrap().into_inner();
        let q = &resp.quotas["requestcount"];
        assert_eq!((q.granted_amount, q.status.as_ref().unwrap().code), (0, 14), "fails closed with UNAVAILABLE");
        assert!(start.elapsed() < Duration::from_millis(800), "took {:?}", start.elapsed());
    }
    // The rule matches every descriptor too: Envoy gets UNAVAILABLE and applies its own
    // failure mode.
    let mut c = RateLimitServiceClient::connect(format!("http://{}", mixr.grpc)).await.unwrap();
    let err = c.should_rate_limit(rls_request("any", &[&[("k", "v")]], 1)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        mixr.metric("mixr_redis_errors_total{handler=\"shared.istio-system\",kind=\"error\"}").await.unwrap_or(0.0)
            + mixr
                .metric("mixr_redis_errors_total{handler=\"shared.istio-system\",kind=\"timeout\"}")
                .await
                .unwrap_or(0.0)
            >= 3.0
    );

    let _back = OwnRedis::start(port);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let resp = client.check(quota_request(&user)).await.unwrap().into_inner();
        if resp.quotas["requestcount"].granted_amount == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "mixr did not reconnect to Redis");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_calls_finish() {
    // A Redis that accepts connections but never answers (stopped with SIGSTOP) holds a
    // quota call in flight for the handler's whole timeout.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let redis = OwnRedis::start(port);
    let dir = tempfile::tempdir().unwrap();
    let policy = redis_policy(&format!("redis://127.0.0.1:{port}"), false).replace("timeout: 300ms", "timeout: 1500ms");
    let policy = write(dir.path(), "p.yaml", &policy);
    let mixr = Mixr::start(&[&policy], &[]);
    let mut client = mixr.client().await;
    // Connect first so the stall is in the call, not the connection.
    let user = unique_user();
    client.check(quota_request(&user)).await.unwrap();
    assert!(std::process::Command::new("kill").args(["-STOP", &redis.0.id().to_string()]).status().unwrap().success());

    let call = tokio::spawn(async move { client.check(quota_request(&user)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || mixr.terminate()).await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(started.elapsed() >= Duration::from_millis(800), "shutdown waited for the call ({:?})", started.elapsed());
    let resp = call.await.unwrap().expect("the in-flight call got its answer").into_inner();
    let q = &resp.quotas["requestcount"];
    assert_eq!(q.status.as_ref().unwrap().code, 14, "answered by the fail-closed policy after the timeout");
    let _ = std::process::Command::new("kill").args(["-CONT", &redis.0.id().to_string()]).status();
}

/// The sample config's rate limits, shaped like envoyproxy/ratelimit's example, apart
/// from the sample's Check quota.
#[tokio::test]
async fn sample_rate_limits_work_as_envoyproxy_ratelimit_would() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/examples");
    let mixr = Mixr::start(&[&sample], &["--rate-limit-headers"]);
    let per_ip = |ip: &'static str| rls_request("edge_proxy_per_ip", &[&[("remote_address", ip)]], 1);

    let first = rls(&mixr, per_ip("10.1.2.3")).await;
    assert_eq!(first.overall_code, Code::Ok as i32);
    let limit = first.statuses[0].current_limit.clone().unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit), (10, 1), "10 per SECOND");
    let mut codes = Vec::new();
    for _ in 0..10 {
        codes.push(rls(&mixr, per_ip("10.1.2.3")).await.overall_code);
    }
    assert!(codes[..9].iter().all(|c| *c == Code::Ok as i32) && codes[9] == Code::OverLimit as i32, "{codes:?}");
    assert_eq!(rls(&mixr, per_ip("50.0.0.5")).await.overall_code, Code::OverLimit as i32, "the blocked address");
    assert_eq!(rls(&mixr, per_ip("10.9.9.9")).await.overall_code, Code::Ok as i32, "each address counts apart");

    let marketing =
        |to: &'static str| rls_request("messaging", &[&[("message_type", "marketing"), ("to_number", to)]], 1);
    let answers: Vec<i32> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(rls(&mixr, marketing("2061111111")).await.overall_code);
        }
        v
    };
    assert_eq!(answers.iter().filter(|c| **c == Code::OverLimit as i32).count(), 1, "5 a day: {answers:?}");
    let answer = rls(&mixr, marketing("2062222222")).await;
    let limit = answer.statuses[0].current_limit.clone().unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit), (5, 4), "5 per DAY");

    // Rate-limit calls do not spend the Check quota (5 per 10 s per service): a Check for
    // the same service still gets its quota.
    let mut client = mixr.client().await;
    let mut req = check_request(&[("destination.service.name", Value::String("productpage".into()))]);
    req.quotas.insert("requestcountquota".into(), QuotaParams { amount: 1, best_effort: false });
    let resp = client.check(req).await.unwrap().into_inner();
    assert_eq!(precondition(&resp).0, 0);
    assert_eq!(resp.quotas["requestcountquota"].granted_amount, 1);
}
