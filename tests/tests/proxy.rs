//! The sidecar end to end: real `mixr-proxy`, real HTTP backends on loopback, Istio
//! traffic rules.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mixr_e2e::MixrProxy;
use mixr_e2e::backend::{self, Backend};

struct Setup {
    v1: Backend,
    v2: Backend,
    v3: Backend,
    mirror: Backend,
    _dir: tempfile::TempDir,
    config: PathBuf,
}

/// reviews v1/v2/v3 and a mirror target, with the traffic rules of each test appended.
async fn setup(rules: &str) -> Setup {
    let (v1, v2, v3, mirror) = (
        backend::start("v1").await,
        backend::start("v2").await,
        backend::start("v3").await,
        backend::start("mirror").await,
    );
    let text = format!(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  ports: [{{number: 9080, name: http}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{version: v2}}}}
  - {{address: 127.0.0.1, ports: {{http: {}}}, labels: {{version: v3}}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: shadowed}}
spec:
  hosts: [mirror]
  ports: [{{number: 9080, name: http}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {}}}}}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: v3, labels: {{version: v3}}}}
---
{rules}"#,
        v1.port(),
        v2.port(),
        v3.port(),
        mirror.port()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("traffic.yaml");
    std::fs::write(&config, text).unwrap();
    Setup { v1, v2, v3, mirror, _dir: dir, config }
}

async fn get(
    proxy: &MixrProxy,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, reqwest::header::HeaderMap) {
    let client = reqwest::Client::new();
    let mut req = client.get(format!("http://{}{path}", proxy.outbound)).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("proxy answered");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.text().await.unwrap_or_default(), headers)
}

const VS: &str = "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n";

#[tokio::test]
async fn header_routing_split_and_no_route() {
    let s = setup(&format!(
        "{VS}  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {{host: reviews, subset: v2}}}}]\n  - route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: 50}}\n    - {{destination: {{host: reviews, subset: v3}}, weight: 50}}\n"
    ))
    .await;
    let proxy = MixrProxy::start(&[&s.config], &[]);
    for _ in 0..5 {
        let (code, body, _) = get(&proxy, "reviews:9080", "/reviews/0", &[("end-user", "jason")]).await;
        assert_eq!(code, 200);
        assert!(body.starts_with("v2 "), "{body}");
    }
    for _ in 0..200 {
        let (code, _, _) = get(&proxy, "reviews:9080", "/reviews/0", &[]).await;
        assert_eq!(code, 200);
    }
    let (v1, v3) = (s.v1.hits(), s.v3.hits());
    assert_eq!(v1 + v3, 200);
    assert!((60..=140).contains(&v1), "50/50 split gave v1={v1} v3={v3}");
    assert_eq!(s.v2.hits(), 5);
    let (code, body, _) = get(&proxy, "details:9080", "/", &[]).await;
    assert_eq!((code, body.as_str()), (404, "no route (NR)\n"));
}

#[tokio::test]
async fn rewrite_redirect_and_headers() {
    let s = setup(&format!(
        "{VS}  - match: [{{uri: {{prefix: /old}}}}]\n    rewrite: {{uri: /new}}\n    headers:\n      request: {{set: {{x-set: yes}}, remove: [x-drop]}}\n      response: {{add: {{x-served: proxy}}}}\n    route: [{{destination: {{host: reviews, subset: v1}}}}]\n  - match: [{{uri: {{exact: /login}}}}]\n    redirect: {{uri: /auth, authority: sso.example.com, redirectCode: 302}}\n"
    ))
    .await;
    let proxy = MixrProxy::start(&[&s.config], &[]);
    let (code, body, headers) = get(&proxy, "reviews", "/old/page?q=1", &[("x-drop", "me"), ("x-keep", "k")]).await;
    assert_eq!(code, 200);
    assert!(
        body.contains("path=/new/page")
            && body.contains("x-set=yes")
            && body.contains("x-keep=k")
            && !body.contains("x-drop"),
        "{body}"
    );
    assert_eq!(s.v1.seen.paths.lock().unwrap()[0], "/new/page?q=1");
    assert_eq!(headers.get("x-served").unwrap(), "proxy");
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp = client.get(format!("http://{}/login", proxy.outbound)).header("host", "reviews").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    assert_eq!(resp.headers().get("location").unwrap(), "http://sso.example.com/auth");
}

#[tokio::test]
async fn faults_timeouts_and_retries() {
    let s = setup(&format!(
        "{VS}  - match: [{{uri: {{prefix: /abort}}}}]\n    fault: {{abort: {{httpStatus: 500, percentage: {{value: 100}}}}}}\n    route: [{{destination: {{host: reviews, subset: v1}}}}]\n  - match: [{{uri: {{prefix: /slow}}}}]\n    fault: {{delay: {{fixedDelay: 300ms, percentage: {{value: 100}}}}}}\n    route: [{{destination: {{host: reviews, subset: v1}}}}]\n  - match: [{{uri: {{prefix: /sleep}}}}]\n    timeout: 200ms\n    route: [{{destination: {{host: reviews, subset: v1}}}}]\n  - match: [{{uri: {{prefix: /fail-first}}}}]\n    retries: {{attempts: 3, perTryTimeout: 1s, retryOn: 5xx}}\n    route: [{{destination: {{host: reviews, subset: v2}}}}]\n  - match: [{{uri: {{prefix: /status}}}}]\n    retries: {{attempts: 0}}\n    route: [{{destination: {{host: reviews, subset: v3}}}}]\n"
    ))
    .await;
    let proxy = MixrProxy::start(&[&s.config], &[]);
    let (code, body, _) = get(&proxy, "reviews", "/abort", &[]).await;
    assert_eq!((code, body.as_str()), (500, "fault filter abort"));
    assert_eq!(s.v1.hits(), 0, "an aborted request never reaches the upstream");

    let t = Instant::now();
    let (code, _, _) = get(&proxy, "reviews", "/slow", &[]).await;
    assert_eq!(code, 200);
    assert!(t.elapsed() >= Duration::from_millis(300), "delayed {:?}", t.elapsed());

    let t = Instant::now();
    let (code, body, _) = get(&proxy, "reviews", "/sleep/2000", &[]).await;
    assert_eq!((code, body.as_str()), (504, "upstream request timeout\n"));
    assert!(t.elapsed() < Duration::from_millis(1500), "the route timeout cut it at 200 ms: {:?}", t.elapsed());

    // v2 fails its first two requests with 503: two retries make the third succeed.
    let (code, body, _) = get(&proxy, "reviews", "/fail-first/2", &[]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(s.v2.hits(), 3);

    // attempts: 0 means no retry: the 503 goes back as is.
    let (code, _, _) = get(&proxy, "reviews", "/status/503", &[]).await;
    assert_eq!(code, 503);
    assert_eq!(s.v3.hits(), 1);
}

#[tokio::test]
async fn circuit_breaking_overflow_and_outlier_ejection() {
    let s = setup(&format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: cb}}\nspec:\n  host: mirror\n  trafficPolicy:\n    connectionPool: {{tcp: {{maxConnections: 1}}, http: {{http1MaxPendingRequests: 1}}}}\n---\n{VS}  - route: [{{destination: {{host: reviews}}}}]\n    retries: {{attempts: 0}}\n"
    ))
    .await;
    // Outlier detection on reviews: replace the DestinationRule from setup with one that ejects.
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "spec:\n  host: reviews\n  subsets:",
        "spec:\n  host: reviews\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}\n  subsets:",
    );
    std::fs::write(&s.config, text).unwrap();
    let proxy = MixrProxy::start(&[&s.config], &[]);

    // 6 concurrent slow requests to the 1-connection, 1-pending "mirror" service.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let outbound = proxy.outbound.clone();
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new()
                .get(format!("http://{outbound}/sleep/300"))
                .header("host", "mirror")
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    let overflow = codes.iter().filter(|c| **c == 503).count();
    assert!(overflow >= 3, "with 1 connection and 1 pending slot, most of 6 concurrent requests overflow: {codes:?}");
    assert!(codes.contains(&200));

    // Round robin over v1, v2, v3, every answer a 500: two rounds give each endpoint its
    // second consecutive error, and maxEjectionPercent 100 lets all of them be ejected.
    for _ in 0..6 {
        get(&proxy, "reviews", "/status/500", &[]).await;
    }
    let (_, dump) = get_text(&format!("http://{}/config_dump", proxy.admin)).await;
    assert!(dump.contains("\"ejected\": 3"), "every failing endpoint was ejected: {dump}");
    let (_, stats) = get_text(&format!("http://{}/metrics", proxy.stats)).await;
    assert!(stats.contains("mixr_proxy_requests_total{destination_service=\"mirror\",reporter=\"source\""), "{stats}");
    assert!(stats.contains("mixr_proxy_upstream_overflow_total{cluster=\"mirror||\"}"), "{stats}");
    assert!(stats.contains("mixr_proxy_outlier_ejections_total{cluster=\"reviews||\"} 3"), "{stats}");
}

#[tokio::test]
async fn connection_pool_settings_shape_upstream_connections() {
    // A listener that never accepts: with its backlog full, connects to it hang.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let hanging = socket.listen(1).unwrap();
    let hanging_port = hanging.local_addr().unwrap().port();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let addr = hanging.local_addr().unwrap();
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(100), tokio::net::TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    let s = setup(&format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: pool}}\nspec:\n  host: mirror\n  trafficPolicy:\n    connectionPool: {{http: {{maxRequestsPerConnection: 2, idleTimeout: 1s, http2MaxRequests: 1}}}}\n---\napiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: blackhole}}\nspec:\n  hosts: [blackhole]\n  ports: [{{number: 80, name: http}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {hanging_port}}}}}]\n---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: blackhole}}\nspec:\n  host: blackhole\n  trafficPolicy:\n    connectionPool: {{tcp: {{connectTimeout: 300ms}}}}\n---\n{VS}  - route: [{{destination: {{host: reviews, subset: v1}}}}]\n    retries: {{attempts: 3, retryOn: 5xx}}\n"
    ))
    .await;
    // One retry at a time may be in flight for reviews.
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "spec:\n  host: reviews\n  subsets:",
        "spec:\n  host: reviews\n  trafficPolicy:\n    connectionPool: {http: {maxRetries: 1}}\n  subsets:",
    );
    std::fs::write(&s.config, text).unwrap();
    // Upstream connections belong to a worker; one worker makes them countable.
    let proxy = MixrProxy::start(&[&s.config], &["--worker-threads", "1"]);

    // maxRequestsPerConnection 2: four requests, two connections.
    for _ in 0..4 {
        assert_eq!(get(&proxy, "mirror", "/", &[]).await.0, 200);
    }
    assert_eq!(s.mirror.connections(), 2);
    // idleTimeout 1s: a connection left idle is closed, the next request opens another.
    assert_eq!(get(&proxy, "mirror", "/", &[]).await.0, 200);
    assert_eq!(s.mirror.connections(), 3);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(&proxy, "mirror", "/", &[]).await.0, 200);
    assert_eq!(s.mirror.connections(), 4, "the idle connection was closed");

    // http2MaxRequests 1: a second request while one is in flight overflows at once.
    let before = s.mirror.hits();
    let slow = {
        let outbound = proxy.outbound.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!("http://{outbound}/sleep/1500"))
                .header("host", "mirror")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.mirror.hits() == before {
        assert!(Instant::now() < deadline, "the slow request never reached the backend");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (code, body, _) = get(&proxy, "mirror", "/", &[]).await;
    assert_eq!((code, body.as_str()), (503, "upstream overflow (connection pool limit)\n"));
    assert_eq!(slow.await.unwrap(), 200);

    // maxRetries 1 (retries in flight at once; the limit itself is unit-tested on the
    // cluster): a lone failing request still gets its 3 retries.
    assert_eq!(get(&proxy, "reviews", "/status/503", &[]).await.0, 503);
    assert_eq!(s.v1.hits(), 1 + 3);
    let (_, stats) = get_text(&format!("http://{}/metrics", proxy.stats)).await;
    assert!(stats.contains("mixr_proxy_upstream_retries_total 3"), "{stats}");
    assert!(stats.contains("mixr_proxy_upstream_overflow_total{cluster=\"mirror||\"} 1"), "{stats}");

    // connectTimeout 300ms: an endpoint that never accepts fails fast (Istio's default 2
    // retries included), where the default 10 s would have held the request.
    let started = Instant::now();
    assert_eq!(get(&proxy, "blackhole", "/", &[]).await.0, 503);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    drop(fillers);
}

async fn get_text(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn mirroring_sends_a_shadow_copy() {
    let s = setup(&format!(
        "{VS}  - route: [{{destination: {{host: reviews, subset: v1}}}}]\n    mirror: {{host: mirror}}\n    mirrorPercentage: {{value: 100}}\n"
    ))
    .await;
    let proxy = MixrProxy::start(&[&s.config], &[]);
    let (code, _, _) = get(&proxy, "reviews:9080", "/copy", &[]).await;
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.mirror.hits() == 0 {
        assert!(Instant::now() < deadline, "the mirror never got its copy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.mirror.seen.hosts.lock().unwrap()[0], "reviews-shadow:9080");
}

#[tokio::test]
async fn inbound_traffic_reaches_the_app() {
    let app = backend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("empty.yaml");
    std::fs::write(&cfg, "").unwrap();
    let proxy = MixrProxy::start(
        &[&cfg],
        &["--app-addr", &app.addr.to_string(), "--workload", "productpage-v1", "-l", "app=productpage"],
    );
    let r = reqwest::Client::new()
        .get(format!("http://{}/hello", proxy.inbound))
        .header("host", "productpage:9080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().starts_with("app path=/hello host=productpage:9080"));
    let (code, ready) = get_text(&format!("http://{}/ready", proxy.admin)).await;
    assert_eq!((code, ready.as_str()), (200, "LIVE\n"));
}

#[tokio::test]
async fn grpc_over_h2c_keeps_trailers() {
    use mixr_proto::istio::mixer::v1::CheckRequest;
    use mixr_proto::istio::mixer::v1::mixer_client::MixerClient;
    let policy_dir = tempfile::tempdir().unwrap();
    let policy = policy_dir.path().join("empty.yaml");
    std::fs::write(&policy, "").unwrap();
    let mixr = mixr_e2e::Mixr::start(&[&policy], &[]);
    let port = mixr.grpc.rsplit(':').next().unwrap().to_string();
    let s = setup(&format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: mixr}}\nspec:\n  hosts: [mixr-grpc]\n  ports: [{{number: 9091, name: grpc, protocol: GRPC}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{grpc: {port}}}}}]\n---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: mixr}}\nspec:\n  hosts: [mixr-grpc, faulty]\n  http:\n  - match: [{{authority: {{prefix: faulty}}}}]\n    fault: {{abort: {{grpcStatus: UNAVAILABLE, percentage: {{value: 100}}}}}}\n    route: [{{destination: {{host: mixr-grpc}}}}]\n  - route: [{{destination: {{host: mixr-grpc}}}}]\n"
    ))
    .await;
    let proxy = MixrProxy::start(&[&s.config], &[]);
    let channel = |authority: &str| {
        tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.outbound))
            .unwrap()
            .origin(format!("http://{authority}").parse().unwrap())
    };
    let mut client = MixerClient::new(channel("mixr-grpc:9091").connect().await.unwrap());
    let ok = client.check(mixr_e2e::check_request(&[])).await.expect("a gRPC call through the proxy").into_inner();
    assert_eq!(ok.precondition.unwrap().status.unwrap().code, 0);
    // An error status travels in the trailers; it must arrive intact.
    let err = client.check(CheckRequest { global_word_count: 999, ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
    assert!(err.message().contains("inconsistent global dictionary"), "{}", err.message());
    // A gRPC abort fault answers with the gRPC status, not an HTTP error.
    let mut faulty = MixerClient::new(channel("faulty:9091").connect().await.unwrap());
    let err = faulty.check(mixr_e2e::check_request(&[])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn hot_reload_and_last_good_config() {
    let s = setup(&format!("{VS}  - route: [{{destination: {{host: reviews, subset: v1}}}}]\n")).await;
    let proxy = MixrProxy::start(&[&s.config], &[]);
    assert!(get(&proxy, "reviews", "/", &[]).await.1.starts_with("v1 "));
    let text = std::fs::read_to_string(&s.config).unwrap();
    let write = |t: &str| {
        let tmp = s.config.with_extension("tmp");
        std::fs::write(&tmp, t).unwrap();
        std::fs::rename(&tmp, &s.config).unwrap();
    };
    write(&text.replace("subset: v1}}]\n", "subset: v3}}]\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !get(&proxy, "reviews", "/", &[]).await.1.starts_with("v3 ") {
        assert!(Instant::now() < deadline, "the new route never applied: {}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken edit is rejected: v3 keeps serving.
    write(&text.replace("hosts: [reviews]\n  http:", "hosts: [reviews]\n  http: 7"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(get(&proxy, "reviews", "/", &[]).await.1.starts_with("v3 "));
    assert!(proxy.logs().contains("traffic config rejected"), "{}", proxy.logs());
}

#[tokio::test]
async fn upgrades_are_spliced_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup(&format!("{VS}  - route: [{{destination: {{host: reviews, subset: v1}}}}]\n")).await;
    let proxy = MixrProxy::start(&[&s.config], &[]);
    let mut sock = tokio::net::TcpStream::connect(&proxy.outbound).await.unwrap();
    sock.write_all(b"GET /ws HTTP/1.1\r\nHost: reviews\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = sock.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    sock.write_all(b"hello through the proxy").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 23 {
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"hello through the proxy");
}
