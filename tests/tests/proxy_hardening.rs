//! The sidecar under hostile callers: the real `mixr-proxy` (and `mixr`, for policy) on
//! loopback ports, driven with raw bytes where the subject is the wire. Each test names
//! the audit finding it covers; each fails on the code before the fix.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mixr_e2e::raw_http::{self, Client, RawApp, WrappedProxy, ok_response};
use mixr_e2e::{Mixr, MixrProxy, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// reviews (with a VirtualService whose routes say which one they took in `x-route`) and
/// ratings (a service without one), both served by `app`.
fn traffic(dir: &Path, app_port: u16) -> PathBuf {
    let text = format!(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  ports: [{{number: 9080, name: http}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {app_port}}}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: ratings}}
spec:
  hosts: [ratings]
  ports: [{{number: 9080, name: http}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {app_port}}}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{x-user: {{exact: jason}}}}}}]
    headers: {{request: {{set: {{x-route: jason}}}}}}
    route: [{{destination: {{host: reviews}}}}]
  - match: [{{uri: {{prefix: /admin}}}}]
    headers: {{request: {{set: {{x-route: admin}}}}}}
    route: [{{destination: {{host: reviews}}}}]
  - headers: {{request: {{set: {{x-route: default}}}}}}
    route: [{{destination: {{host: reviews}}}}]
"#
    );
    let path = dir.join("traffic.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Users bob and jason only (`end-user`, absent means bob), nothing under `/admin`, and
/// a request header operation on what is allowed.
const POLICY: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: users}
spec:
  compiledAdapter: listchecker
  params: {overrides: [bob, jason]}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: user}
spec: {compiledTemplate: listentry, params: {value: 'request.headers["end-user"] | "bob"'}}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: users}
spec:
  actions: [{handler: users, instances: [user]}]
  requestHeaderOperations:
  - {name: x-checked-by, values: ['"mixr"']}
---
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: admin}
spec:
  compiledAdapter: denier
  params: {status: {code: 7, message: admin is off limits}}
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
  match: match(request.url_path, "/admin*")
  actions: [{handler: admin, instances: [nothing]}]
"#;

/// mixr with [`POLICY`], and a sidecar enforcing it in front of `app`.
fn enforced(dir: &Path, app: &RawApp, extra: &[&str]) -> (Mixr, MixrProxy) {
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mixr = Mixr::start(&[&policy], &[]);
    let empty = dir.join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    let app_addr = app.addr.to_string();
    let mut args = vec!["--app-addr", &app_addr, "--workload", "productpage-v1", "--mixr", &mixr.grpc];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-l", "app=productpage", "--disable-report-calls"]);
    let proxy = MixrProxy::start(&[&empty], &args);
    (mixr, proxy)
}

fn get(target: &str, fields: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: reviews\r\n{fields}\r\n").into_bytes()
}

async fn status(addr: &str, request: &[u8]) -> u16 {
    raw_http::exchange(addr, request).await.map_or(0, |r| r.status)
}

/// A request the proxy refuses gets 400, and the connection ends with it.
async fn refused(addr: &str, request: &[u8]) -> String {
    let mut c = Client::connect(addr).await;
    let r = c.exchange(request).await.unwrap_or_else(|| panic!("no answer to {}", String::from_utf8_lossy(request)));
    assert_eq!(r.status, 400, "{}\n{}", String::from_utf8_lossy(request), r.head);
    let (closed, _) = c.closed_within(Duration::from_secs(2)).await;
    assert!(closed, "the connection stays open after refusing {}", String::from_utf8_lossy(request));
    r.text()
}

/// Finding 1: `Upgrade: h2c` was forwarded and the 101 spliced, so the HTTP/2 streams
/// that followed reached the app unchecked.
#[tokio::test]
async fn h2c_upgrades_are_stripped_and_every_request_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let app = RawApp::start(|r| {
        if r.fields("upgrade").iter().any(|u| u.eq_ignore_ascii_case("h2c")) {
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n".to_vec()
        } else {
            ok_response("plain")
        }
    })
    .await;
    let (_mixr, inbound) = enforced(dir.path(), &app, &[]);
    let outbound = MixrProxy::start(&[&traffic(dir.path(), app.port())], &[]);
    let upgrade = |user: &str| {
        get(
            "/page",
            &format!(
                "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nend-user: {user}\r\n"
            ),
        )
    };
    for addr in [&outbound.outbound, &inbound.inbound] {
        let mut c = Client::connect(addr).await;
        let r = c.exchange(&upgrade("bob")).await.expect("an answer");
        assert_eq!((r.status, r.text().as_str()), (200, "plain"), "{addr}: {}", r.head);
        let seen = app.last();
        for field in ["upgrade", "http2-settings", "connection"] {
            assert!(seen.fields(field).is_empty(), "{addr}: the app got {field}: {}", seen.head);
        }
        // The connection stays HTTP/1.1, each request on it a request of its own.
        let r = c.exchange(&get("/again", "end-user: bob\r\n")).await.expect("a second answer");
        assert_eq!(r.status, 200, "{addr}");
    }
    // Inbound, every request is checked: the upgrade request itself, the plain HTTP/1.1
    // requests after it, and each stream of an h2c connection (prior knowledge).
    let mut c = Client::connect(&inbound.inbound).await;
    assert_eq!(c.exchange(&upgrade("mallory")).await.unwrap().status, 403);
    assert_eq!(c.exchange(&get("/next", "end-user: mallory\r\n")).await.unwrap().status, 403);
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(&inbound.inbound).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    for (user, denied) in [("mallory", true), ("bob", false), ("eve", true)] {
        let req = hyper::Request::builder()
            .uri(format!("http://{}/h2", inbound.inbound))
            .header("end-user", user)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let code = h2.send_request(req).await.unwrap().status().as_u16();
        assert_eq!(code == 403, denied, "{user}: {code}");
    }
}

/// Finding 2: of repeated fields, the check read the last value, routing the first, and
/// the app got all of them.
#[tokio::test]
async fn repeated_fields_are_one_value_for_checks_routing_and_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let app = RawApp::ok().await;
    let (_mixr, inbound) = enforced(dir.path(), &app, &[]);
    let outbound = MixrProxy::start(&[&traffic(dir.path(), app.port())], &[]);

    // `eve` then `bob`: the check sees "eve, bob", which is not on the list.
    assert_eq!(status(&inbound.inbound, &get("/p", "end-user: eve\r\nend-user: bob\r\n")).await, 403);
    assert_eq!(status(&inbound.inbound, &get("/p", "end-user: bob\r\n")).await, 200);
    let seen = app.last();
    assert_eq!(seen.fields("end-user"), ["bob"]);
    assert_eq!(seen.fields("x-checked-by"), ["mixr"]);

    let r =
        raw_http::exchange(&inbound.inbound, &get("/p", "x-a: 1\r\nx-a: 2\r\nCookie: a=1\r\nCookie: b=2\r\n")).await;
    assert_eq!(r.map(|r| r.status), Some(200));
    let seen = app.last();
    assert_eq!(seen.fields("x-a"), ["1, 2"], "one field, as checked: {}", seen.head);
    assert_eq!(seen.fields("cookie"), ["a=1; b=2"], "{}", seen.head);

    // Routing matches the combined value too: "jason, eve" is not "jason".
    assert_eq!(status(&outbound.outbound, &get("/r", "x-user: jason\r\nx-user: eve\r\n")).await, 200);
    let seen = app.last();
    assert_eq!(seen.fields("x-route"), ["default"], "{}", seen.head);
    assert_eq!(seen.fields("x-user"), ["jason, eve"]);
    assert_eq!(status(&outbound.outbound, &get("/r", "x-user: jason\r\n")).await, 200);
    assert_eq!(app.last().fields("x-route"), ["jason"]);
}

/// Finding 3: an absolute-form target was checked and routed while the app got the
/// Host field; repeated, missing and invalid Hosts went through.
#[tokio::test]
async fn the_target_names_the_host_and_bad_hosts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let app = RawApp::ok().await;
    let config = traffic(dir.path(), app.port());
    let proxy = MixrProxy::start(&[&config], &["--app-addr", &app.addr.to_string()]);

    let r = raw_http::exchange(&proxy.outbound, b"GET http://reviews/x HTTP/1.1\r\nHost: ratings\r\n\r\n").await;
    assert_eq!(r.map(|r| r.status), Some(200));
    let seen = app.last();
    assert_eq!((seen.target(), seen.fields("host")), ("/x", vec!["reviews".to_string()]), "{}", seen.head);
    assert_eq!(seen.fields("x-route"), ["default"], "routed as reviews");
    let r = raw_http::exchange(&proxy.inbound, b"GET http://productpage:9080/y HTTP/1.1\r\nHost: evil\r\n\r\n").await;
    assert_eq!(r.map(|r| r.status), Some(200));
    assert_eq!(app.last().fields("host"), ["productpage:9080"]);

    for addr in [&proxy.outbound, &proxy.inbound] {
        refused(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        refused(addr, b"GET / HTTP/1.1\r\nHost: reviews\r\nHost: reviews\r\n\r\n").await;
        refused(addr, b"GET / HTTP/1.1\r\nHost: reviews\r\nHost: ratings\r\n\r\n").await;
        refused(addr, b"GET http://user:pw@reviews/ HTTP/1.1\r\nHost: reviews\r\n\r\n").await;
        refused(addr, b"GET / HTTP/1.1\r\nHost: user@reviews\r\n\r\n").await;
        refused(addr, b"GET / HTTP/1.1\r\nHost: reviews/admin\r\n\r\n").await;
        refused(addr, b"GET / HTTP/1.1\r\nHost: reviews:80:80\r\n\r\n").await;
        // Served by hyper (a chunked body): the same rules.
        refused(addr, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").await;
        refused(addr, b"POST / HTTP/1.1\r\nHost: a\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").await;
    }
}

/// Finding 4: paths were checked, routed and forwarded as sent, so `/public/../admin`
/// passed a policy on `/admin`.
#[tokio::test]
async fn paths_are_normalized_for_checks_routing_and_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let app = RawApp::ok().await;
    let (_mixr, inbound) = enforced(dir.path(), &app, &[]);
    for path in ["/admin", "/public/../admin", "//admin", "/%61dmin", "/./admin/x", "/public/%2E%2e/admin", "/../admin"]
    {
        assert_eq!(status(&inbound.inbound, &get(path, "")).await, 403, "{path}");
    }
    assert_eq!(app.received().len(), 0, "nothing under /admin reached the app");
    assert_eq!(status(&inbound.inbound, &get("/x/%2fadmin/..//y?q=/../z", "")).await, 200);
    assert_eq!(app.last().target(), "/x/y?q=/../z", "%2F stays encoded; the query is as sent");

    let config = traffic(dir.path(), app.port());
    let outbound = MixrProxy::start(&[&config], &[]);
    assert_eq!(status(&outbound.outbound, &get("/x/../admin/page?q=/../y", "")).await, 200);
    let seen = app.last();
    assert_eq!((seen.target(), seen.fields("x-route")), ("/admin/page?q=/../y", vec!["admin".to_string()]));
    assert_eq!(status(&outbound.outbound, &get("/../../etc/%7Epasswd", "")).await, 200);
    assert_eq!(app.last().target(), "/etc/~passwd", "`..` at the root stays at the root");
    for bad in ["/a%zz", "/a%2", "/a%", "/a\\b", "/a|b", "/a{b}", "/a\"b"] {
        let text = refused(&outbound.outbound, &get(bad, "")).await;
        assert!(text.is_empty() || text.contains("path"), "{bad}: {text}");
    }
    // Through hyper (a chunked body), the same.
    let chunked = b"POST /x/../admin HTTP/1.1\r\nHost: reviews\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(status(&outbound.outbound, chunked).await, 200);
    assert_eq!(app.last().target(), "/admin");

    // Turned off, paths go as they came.
    let raw = MixrProxy::start(&[&config], &["--no-normalize-path"]);
    assert_eq!(status(&raw.outbound, &get("/x/../admin", "")).await, 200);
    let seen = app.last();
    assert_eq!((seen.target(), seen.fields("x-route")), ("/x/../admin", vec!["default".to_string()]));
}

/// Finding 5: a caller's `Connection` field removed the Host and the fields the proxy
/// adds (the identity header, `traceparent`, header operations).
#[tokio::test]
async fn connection_cannot_strip_the_host_or_what_the_proxy_adds() {
    let dir = tempfile::tempdir().unwrap();
    let app = RawApp::ok().await;
    let (mixr, inbound) = enforced(dir.path(), &app, &[]);
    let outbound = MixrProxy::start(
        &[&traffic(dir.path(), app.port())],
        &["--mixr", &mixr.grpc, "--disable-report-calls", "--otlp-endpoint", "http://127.0.0.1:9"],
    );
    let listed = "Connection: keep-alive, host, x-istio-attributes, traceparent, x-route, x-hop\r\nx-hop: 1\r\n";
    assert_eq!(status(&outbound.outbound, &get("/c", listed)).await, 200);
    let seen = app.last();
    assert_eq!(seen.fields("host"), ["reviews"], "{}", seen.head);
    assert_eq!(seen.fields("x-istio-attributes").len(), 1, "{}", seen.head);
    assert_eq!(seen.fields("traceparent").len(), 1, "{}", seen.head);
    assert_eq!(seen.fields("x-route"), ["default"], "{}", seen.head);
    assert!(seen.fields("x-hop").is_empty() && seen.fields("connection").is_empty(), "{}", seen.head);

    let listed = "Connection: x-checked-by, host, x-hop\r\nx-hop: 1\r\nend-user: jason\r\n";
    assert_eq!(status(&inbound.inbound, &get("/c", listed)).await, 200);
    let seen = app.last();
    assert_eq!(seen.fields("x-checked-by"), ["mixr"], "{}", seen.head);
    assert_eq!(seen.fields("host"), ["reviews"], "{}", seen.head);
    assert!(seen.fields("x-hop").is_empty(), "{}", seen.head);
}

/// Finding 6: `Content-Length` was read with `str::trim` and `parse`, so `+5` and `5`
/// followed by a no-break space were lengths.
#[tokio::test]
async fn content_length_is_digits_only() {
    let dir = tempfile::tempdir().unwrap();
    let app = RawApp::start(|r| ok_response(&format!("body={}", String::from_utf8_lossy(&r.body)))).await;
    let proxy = MixrProxy::start(&[&traffic(dir.path(), app.port())], &["--app-addr", &app.addr.to_string()]);
    let post = |fields: &[u8]| {
        let mut r = b"POST /cl HTTP/1.1\r\nHost: reviews\r\n".to_vec();
        r.extend_from_slice(fields);
        r.extend_from_slice(b"\r\nhello");
        r
    };
    for addr in [&proxy.outbound, &proxy.inbound] {
        for bad in [
            &b"Content-Length: +5\r\n"[..],
            b"Content-Length: 5\xC2\xA0\r\n",
            b"Content-Length: \xC2\xA05\r\n",
            b"Content-Length: 0x5\r\n",
            b"Content-Length: 5 5\r\n",
            b"Content-Length: 5, 5\r\n",
            b"Content-Length: -5\r\n",
            b"Content-Length: 5e0\r\n",
            b"Content-Length: 5\r\nContent-Length: 6\r\n",
            b"Content-Length: 99999999999999999999999\r\n",
        ] {
            refused(addr, &post(bad)).await;
        }
        let r = raw_http::exchange(addr, &post(b"Content-Length: 5\r\n")).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "body=hello"));
        let r = raw_http::exchange(addr, &post(b"Content-Length: 5\r\nContent-Length: 5\r\n")).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "body=hello"));
        assert_eq!(app.last().fields("content-length"), ["5"]);
    }
}

/// Finding 7: a malformed chunk from the caller failed the upstream exchange, and the
/// caller got 503 on a connection that stayed open.
#[tokio::test]
async fn malformed_chunks_get_400_and_the_connection_closes() {
    let dir = tempfile::tempdir().unwrap();
    let app = RawApp::start(|r| ok_response(&format!("body={}", String::from_utf8_lossy(&r.body)))).await;
    let proxy = MixrProxy::start(&[&traffic(dir.path(), app.port())], &["--app-addr", &app.addr.to_string()]);
    let head = b"POST /chunks HTTP/1.1\r\nHost: reviews\r\nTransfer-Encoding: chunked\r\n\r\n";
    for addr in [&proxy.outbound, &proxy.inbound] {
        for body in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX\r\n0\r\n\r\n",
            b"5\r\nhello\r\n-1\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"fffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
        ] {
            let mut request = head.to_vec();
            request.extend_from_slice(body);
            refused(addr, &request).await;
        }
        let mut good = head.to_vec();
        good.extend_from_slice(b"5\r\nhello\r\n0\r\n\r\n");
        let r = raw_http::exchange(addr, &good).await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "body=hello"));
    }
}

/// Finding 8: an upgrade request's body was dropped while its `Content-Length` went on.
#[tokio::test]
async fn upgrade_requests_keep_their_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let app = RawApp::start(|r| ok_response(&format!("body={}", String::from_utf8_lossy(&r.body)))).await;
    let proxy = MixrProxy::start(&[&traffic(dir.path(), app.port())], &["--app-addr", &app.addr.to_string()]);
    let head = "POST /up HTTP/1.1\r\nHost: reviews\r\nConnection: upgrade\r\nUpgrade: foo\r\n";
    for addr in [&proxy.outbound, &proxy.inbound] {
        let sized = format!("{head}Content-Length: 5\r\n\r\nhello");
        let r = raw_http::exchange(addr, sized.as_bytes()).await.expect("an answer");
        assert_eq!((r.status, r.text().as_str()), (200, "body=hello"), "{addr}");
        assert_eq!(app.last().fields("content-length"), ["5"]);
        assert_eq!(app.last().fields("upgrade"), ["foo"]);
        let chunked = format!("{head}Transfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n");
        let r = raw_http::exchange(addr, chunked.as_bytes()).await.expect("an answer");
        assert_eq!((r.status, r.text().as_str()), (200, "body=hello"), "{addr}");
    }
}

/// Finding 9: 204 and 304 answers kept their `Content-Length`; trailers passed framing
/// and hop-by-hop fields on.
#[tokio::test]
async fn bodiless_answers_and_trailers_carry_no_framing() {
    let dir = tempfile::tempdir().unwrap();
    let app = RawApp::start(|r| match r.target() {
        "/204" => b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n".to_vec(),
        "/304" => b"HTTP/1.1 304 Not Modified\r\ncontent-length: 42\r\netag: \"x\"\r\n\r\n".to_vec(),
        // Declared, as hyper writes only the trailers a response declares.
        "/trailers" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: grpc-status, x-sum, content-length, host\r\n\r\n5\r\nhello\r\n0\r\ngrpc-status: 0\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\nhost: evil\r\nconnection: close\r\nkeep-alive: 1\r\ntrailer: x\r\nx-sum: 1\r\n\r\n".to_vec(),
        _ => ok_response("ok"),
    })
    .await;
    let proxy = MixrProxy::start(&[&traffic(dir.path(), app.port())], &["--app-addr", &app.addr.to_string()]);
    let check = |r: raw_http::Response, path: &str| match path {
        "/trailers" => {
            assert_eq!(r.text(), "hello");
            let mut names: Vec<String> =
                r.trailers.lines().filter_map(|l| Some(l.split_once(':')?.0.to_ascii_lowercase())).collect();
            names.sort();
            assert_eq!(names, ["grpc-status", "x-sum"], "{}", r.trailers);
        }
        _ => {
            assert_eq!(r.status, path[1..].parse::<u16>().unwrap());
            assert!(r.fields("content-length").is_empty() && r.fields("transfer-encoding").is_empty(), "{}", r.head);
        }
    };
    for addr in [&proxy.outbound, &proxy.inbound] {
        // The fast path.
        let mut c = Client::connect(addr).await;
        for path in ["/204", "/304", "/trailers"] {
            let r = c.exchange(&get(path, "TE: trailers\r\n")).await.expect("an answer");
            check(r, path);
        }
        // hyper, on a connection the fast path handed over (a chunked body).
        let mut c = Client::connect(addr).await;
        let handoff = b"POST /first HTTP/1.1\r\nHost: reviews\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(c.exchange(handoff).await.map(|r| r.status), Some(200));
        for path in ["/204", "/304", "/trailers"] {
            let r = c.exchange(&get(path, "TE: trailers\r\n")).await.expect("an answer");
            check(r, path);
        }
    }
}

/// Finding 10 (time): a caller holding a connection with a slow head, an idle
/// connection or a stalled body is cut off, on both code paths.
#[tokio::test]
async fn slow_heads_idle_connections_and_stalled_bodies_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let app = RawApp::ok().await;
    let proxy = MixrProxy::start(
        &[&traffic(dir.path(), app.port())],
        &["--request-head-timeout-ms", "400", "--idle-timeout-ms", "700", "--request-body-timeout-ms", "400"],
    );
    let addr = proxy.outbound.as_str();
    let bounded = |started: Instant, least: u64| {
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(least) && took < Duration::from_millis(2500), "{took:?}");
    };

    // A slow-loris head, a field every 100 ms: 408 at the head timeout.
    let started = Instant::now();
    let (mut read, mut write) = tokio::net::TcpStream::connect(addr).await.unwrap().into_split();
    let trickle = tokio::spawn(async move {
        let _ = write.write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\n").await;
        for i in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write.write_all(format!("x-{i}: y\r\n").as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(ended.is_ok() && got.starts_with("HTTP/1.1 408"), "{got}");
    bounded(started, 350);
    trickle.abort();

    // A connection that never sends anything: closed at the head timeout.
    let started = Instant::now();
    let (closed, got) = Client::connect(addr).await.closed_within(Duration::from_secs(5)).await;
    assert!(closed && got.is_empty(), "{got}");
    bounded(started, 350);

    // Kept alive after a request, then idle: closed at the idle timeout.
    let mut c = Client::connect(addr).await;
    assert_eq!(c.exchange(&get("/", "")).await.map(|r| r.status), Some(200));
    let started = Instant::now();
    let (closed, got) = c.closed_within(Duration::from_secs(5)).await;
    assert!(closed && got.is_empty(), "{got}");
    bounded(started, 600);

    // A later request's head, started and left: 408 at the head timeout.
    let mut c = Client::connect(addr).await;
    assert_eq!(c.exchange(&get("/", "")).await.map(|r| r.status), Some(200));
    c.send(b"GET / HTTP/1.1\r\nHo").await;
    let started = Instant::now();
    let (closed, got) = c.closed_within(Duration::from_secs(5)).await;
    assert!(closed && got.starts_with("HTTP/1.1 408"), "{got}");
    bounded(started, 350);

    // A body that stalls, read by the fast path: 408.
    let mut c = Client::connect(addr).await;
    c.send(b"POST / HTTP/1.1\r\nHost: reviews\r\nContent-Length: 10\r\n\r\nabc").await;
    let started = Instant::now();
    let (closed, got) = c.closed_within(Duration::from_secs(5)).await;
    assert!(closed && got.starts_with("HTTP/1.1 408"), "{got}");
    bounded(started, 350);

    // A chunked body that stalls, streamed by hyper: 408.
    let mut c = Client::connect(addr).await;
    c.send(b"POST / HTTP/1.1\r\nHost: reviews\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n").await;
    let started = Instant::now();
    let (closed, got) = c.closed_within(Duration::from_secs(5)).await;
    assert!(closed && got.starts_with("HTTP/1.1 408"), "{got}");
    bounded(started, 350);

    // On a connection hyper serves, a slow head after a request.
    let mut c = Client::connect(addr).await;
    let handoff = b"POST / HTTP/1.1\r\nHost: reviews\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(c.exchange(handoff).await.map(|r| r.status), Some(200));
    c.send(b"GET / HTTP/1.1\r\nHo").await;
    let started = Instant::now();
    let (closed, _) = c.closed_within(Duration::from_secs(5)).await;
    assert!(closed);
    bounded(started, 0);

    // An h2c connection without requests: closed at the idle timeout.
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let (_h2, conn) = hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        io,
    )
    .await
    .unwrap();
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the idle h2c connection stayed open");
    bounded(started, 600);
}

/// Finding 10 (connections): past `--max-connections` a listener closes new connections
/// at once, and the ones it holds go on.
#[tokio::test]
async fn connections_past_the_limit_are_closed_and_the_others_served() {
    let dir = tempfile::tempdir().unwrap();
    let app = RawApp::ok().await;
    let proxy =
        MixrProxy::start(&[&traffic(dir.path(), app.port())], &["--max-connections", "3", "--worker-threads", "2"]);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&proxy.outbound).await;
        assert_eq!(c.exchange(&get("/", "")).await.map(|r| r.status), Some(200));
        held.push(c);
    }
    for _ in 0..3 {
        let mut extra = Client::connect(&proxy.outbound).await;
        let (closed, got) = extra.closed_within(Duration::from_secs(2)).await;
        assert!(closed && got.is_empty(), "a fourth connection was served: {got}");
    }
    for c in &mut held {
        assert_eq!(c.exchange(&get("/", "")).await.map(|r| r.status), Some(200), "a held connection still works");
    }
    drop(held.pop());
    let served =
        eventually(Duration::from_secs(5), || async { status(&proxy.outbound, &get("/", "")).await == 200 }).await;
    assert!(served, "a connection closed, so a new one is served");
    let metrics = reqwest::get(format!("http://{}/metrics", proxy.stats)).await.unwrap().text().await.unwrap();
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mixr_proxy_downstream_connections_refused_total{listener=\"outbound\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(refused.is_some_and(|n| n >= 3), "{metrics}");

    // An upgraded (spliced) connection counts until it closes.
    let upgrading =
        RawApp::start(|_| b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n".to_vec())
            .await;
    let dir = tempfile::tempdir().unwrap();
    let one = MixrProxy::start(&[&traffic(dir.path(), upgrading.port())], &["--max-connections", "1"]);
    let upgrade = get("/ws", "Connection: upgrade\r\nUpgrade: echo\r\n");
    let mut spliced = Client::connect(&one.outbound).await;
    assert_eq!(spliced.exchange(&upgrade).await.map(|r| r.status), Some(101));
    let (closed, _) = Client::connect(&one.outbound).await.closed_within(Duration::from_secs(2)).await;
    assert!(closed, "a second connection was served beside the spliced one");
    drop(spliced);
    let served = eventually(Duration::from_secs(5), || async { status(&one.outbound, &upgrade).await == 101 }).await;
    assert!(served, "the spliced connection ended, so a new one is served");
}

/// Finding 11: out of file descriptors, the accept loops spun a core and wrote a log line
/// per attempt. Run for real under `prlimit --nofile=64:64`.
#[tokio::test]
async fn running_out_of_descriptors_backs_off_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let app = RawApp::ok().await;
    let config = traffic(dir.path(), app.port());
    let proxy = WrappedProxy::start(&["prlimit", "--nofile=64:64", "--"], &[&config], &["--worker-threads", "1"]);
    let count = |logs: &str| logs.matches("accept failed").count();
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(tokio::net::TcpStream::connect(&proxy.outbound).await.expect("the kernel queues the connection"));
    }
    let failing = eventually(Duration::from_secs(5), || async { count(&proxy.logs()) > 0 }).await;
    assert!(failing, "accepts never failed: {}", proxy.logs());
    let (lines, cpu) = (count(&proxy.logs()), proxy.cpu_time());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (lines, cpu) = (count(&proxy.logs()) - lines, proxy.cpu_time() - cpu);
    assert!(lines <= 5, "{lines} lines about failed accepts in 3 s");
    assert!(cpu < Duration::from_millis(600), "{cpu:?} of CPU in 3 s of failing accepts");
    drop(held);
    let served = eventually(Duration::from_secs(10), || async {
        tokio::time::timeout(Duration::from_secs(2), status(&proxy.outbound, &get("/", ""))).await == Ok(200)
    })
    .await;
    assert!(served, "the proxy serves again once descriptors are free: {}", proxy.logs());
}

/// Finding 12a: request metrics were labelled with the caller's Host, so every new Host
/// made new series (and, for a service without a VirtualService, a new cluster).
#[tokio::test]
async fn metric_series_stay_bounded_whatever_hosts_callers_send() {
    let dir = tempfile::tempdir().unwrap();
    let app = RawApp::ok().await;
    let proxy = MixrProxy::start(
        &[&traffic(dir.path(), app.port())],
        &["--app-addr", &app.addr.to_string(), "-l", "app=productpage"],
    );
    // 10,000 Hosts: unknown ones (404), and names that resolve to reviews (a
    // VirtualService) and to ratings (none) by their first label.
    let mut tasks = Vec::new();
    for conn in 0..4 {
        let addr = proxy.outbound.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&addr).await;
            let mut codes = Vec::new();
            for batch in 0..25 {
                let mut requests = Vec::new();
                for n in 0..25 {
                    let i = conn * 2500 + batch * 100 + n * 4;
                    for host in [
                        format!("h{i}.example"),
                        format!("reviews.{i}"),
                        format!("ratings.x{i}"),
                        format!("Reviews.{i}:9080"),
                    ] {
                        requests.extend_from_slice(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
                    }
                }
                c.send(&requests).await;
                for _ in 0..100 {
                    codes.push(c.response(false).await.expect("an answer").status);
                }
            }
            codes
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.extend(t.await.unwrap());
    }
    assert_eq!(codes.len(), 10_000);
    assert_eq!(codes.iter().filter(|c| **c == 404).count(), 2_500);
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 7_500);
    let mut c = Client::connect(&proxy.inbound).await;
    for i in 0..1000 {
        c.send(format!("GET / HTTP/1.1\r\nHost: p{i}\r\n\r\n").as_bytes()).await;
        assert_eq!(c.response(false).await.map(|r| r.status), Some(200));
    }

    let metrics = reqwest::get(format!("http://{}/metrics", proxy.stats)).await.unwrap().text().await.unwrap();
    let series: Vec<&str> = metrics.lines().filter(|l| l.starts_with("mixr_proxy_requests_total{")).collect();
    assert_eq!(series.len(), 4, "{series:#?}");
    for service in ["unknown", "reviews", "ratings", "productpage"] {
        let label = format!("destination_service=\"{service}\"");
        assert!(series.iter().any(|s| s.contains(&label)), "{service}: {series:#?}");
    }
    assert!(metrics.len() < 64 * 1024, "/metrics is {} bytes", metrics.len());
    let dump = reqwest::get(format!("http://{}/config_dump", proxy.admin)).await.unwrap().text().await.unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["clusters"].as_array().map(Vec::len), Some(2), "{dump}");
}
