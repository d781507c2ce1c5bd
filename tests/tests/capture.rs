//! Transparent capture for real: `mixr-proxy iptables --apply` inside a network namespace
//! (a "pod") sends its traffic through the sidecar while the apps and their callers know
//! nothing of it. Three namespaces on veth links:
//!
//! ```text
//!   client 10.201.0.1 ── 10.201.0.2 pod 10.202.0.1 ── 10.202.0.2 upstream
//! ```
//!
//! The pod runs an app, the sidecar (as uid 1337, as injected) and, for the inbound
//! test, mixr on its loopback. Root only (CI runs as root); otherwise skipped, loudly.
//! Connections that are not HTTP are proxied as TCP by the sidecar (read from
//! SO_ORIGINAL_DST), checked and reported with Istio's TCP attributes.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mixr_e2e::netns::{Netns, Proc, link, skip_unless_root, tool};
use mixr_e2e::{Mixr, binary};

const POD_IP: &str = "10.201.0.2";
const UPSTREAM_IP: &str = "10.202.0.2";

struct Dirs {
    dir: tempfile::TempDir,
}

impl Dirs {
    /// A directory the sidecar (uid 1337) can write its address file in and read from.
    fn new() -> Dirs {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        Dirs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    }
}

fn python() -> String {
    tool().display().to_string()
}

fn proxy_bin() -> String {
    binary("mixr-proxy").display().to_string()
}

/// An HTTP app (netns_tool serve-http) on `port` inside `ns`, answering as `name`.
fn http_app(ns: &Netns, dirs: &Dirs, port: u16, name: &str) -> Proc {
    http_app_on(ns, dirs, port, name, "0.0.0.0")
}

fn http_app_on(ns: &Netns, dirs: &Dirs, port: u16, name: &str, host: &str) -> Proc {
    let ready = dirs.path(&format!("{name}.ready"));
    let mut app = ns.spawn(
        None,
        &["python3", &python(), "serve-http", &port.to_string(), name, ready.to_str().unwrap(), host],
        &dirs.path(&format!("{name}.log")),
    );
    app.wait_for(&ready);
    app
}

fn tcp_app(ns: &Netns, dirs: &Dirs, port: u16) -> Proc {
    tcp_app_on(ns, dirs, port, "0.0.0.0")
}

fn tcp_app_on(ns: &Netns, dirs: &Dirs, port: u16, host: &str) -> Proc {
    let ready = dirs.path(&format!("tcp{port}.ready"));
    let mut app = ns.spawn(
        None,
        &["python3", &python(), "serve-tcp", &port.to_string(), ready.to_str().unwrap(), host],
        &dirs.path(&format!("tcp{port}.log")),
    );
    app.wait_for(&ready);
    app
}

/// The sidecar as the injector configures it, as uid 1337.
fn sidecar(pod: &Netns, dirs: &Dirs, name: &str, config: &Path, extra: &[&str]) -> Proc {
    let addrs = dirs.path(&format!("{name}.addrs"));
    // `extra` may replace the listeners' addresses.
    let listeners = ["--outbound-addr=127.0.0.1:15001", "--inbound-addr=0.0.0.0:15006"]
        .into_iter()
        .filter(|d| !extra.iter().any(|e| e.split('=').next() == d.split('=').next()))
        .map(String::from);
    let mut args = vec![proxy_bin()];
    args.extend(listeners);
    args.extend([
        "--admin-addr=127.0.0.1:15000".into(),
        "--stats-addr=127.0.0.1:15090".into(),
        "--worker-threads=1".into(),
        "--workload=web".into(),
        "--namespace=default".into(),
        "--label=app=web".into(),
        format!("--config={}", config.display()),
        format!("--addr-file={}", addrs.display()),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proxy = pod.spawn(Some(1337), &args, &dirs.path(&format!("{name}.log")));
    proxy.wait_for(&addrs);
    proxy
}

fn apply(pod: &Netns, flags: &[&str]) {
    let mut args = vec![binary("mixr-proxy").display().to_string(), "iptables".into(), "--apply".into()];
    args.extend(flags.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    pod.ok(&args);
}

/// `get URL headers...` from inside `ns`, as `uid` when given: (status, body).
fn get(ns: &Netns, uid: Option<u32>, url: &str, headers: &[&str]) -> (String, String) {
    let python = python();
    let mut args: Vec<String> = Vec::new();
    if let Some(uid) = uid {
        args.extend(["setpriv".into(), format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()]);
    }
    args.extend(["python3".into(), python, "get".into(), url.into()]);
    args.extend(headers.iter().map(|h| h.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ns.ok(&args);
    let (status, body) = out.split_once('\n').unwrap_or((&out, ""));
    (status.to_string(), body.to_string())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn tcp(ns: &Netns, host: &str, port: u16, line: &str) -> String {
    ns.ok(&["python3", &python(), "tcp", host, &port.to_string(), line])
}

/// The value of the first sample of `series` whose labels contain every one of `labels`.
fn sample(text: &str, series: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Topology {
    // Declared in drop order: the links go with the namespaces.
    client: Netns,
    pod: Netns,
    upstream: Netns,
}

impl Topology {
    fn new(tag: &str) -> Topology {
        let t = Topology {
            client: Netns::new(&format!("{tag}c")),
            pod: Netns::new(&format!("{tag}p")),
            upstream: Netns::new(&format!("{tag}u")),
        };
        link(&t.pod, "eth0", "10.201.0.2/24", &t.client, "eth0", "10.201.0.1/24");
        link(&t.pod, "eth1", "10.202.0.1/24", &t.upstream, "eth0", "10.202.0.2/24");
        t.pod.hosts(&format!("127.0.0.1 localhost\n{UPSTREAM_IP} upstream\n"));
        t
    }
}

const MIXR_POLICY: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: blocked}
spec:
  compiledAdapter: listchecker
  params: {overrides: [mallory], blacklist: true}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: user}
spec: {compiledTemplate: listentry, params: {value: 'request.headers["end-user"] | "anonymous"'}}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: blocked}
spec:
  match: destination.workload.name == "web"
  actions: [{handler: blocked, instances: [user]}]
  requestHeaderOperations:
  - {name: x-checked-by, values: ['"mixr"']}
"#;

/// TCP connections' open and close events on mixr's stdout (JSON lines), and a denial of
/// TCP to port 9002.
const MIXR_TCP: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: tcplog}
spec: {compiledAdapter: stdio, params: {outputAsJson: true}}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: tcpconnection}
spec:
  compiledTemplate: logentry
  params:
    severity: '"Info"'
    timestamp: context.time | timestamp("2017-01-01T00:00:00Z")
    variables:
      event: connection.event | ""
      port: destination.port | 0
      reporter: context.reporter.kind | ""
      received: connection.received.bytes | 0
      sent: connection.sent.bytes | 0
      service: destination.service.host | ""
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: tcplog}
spec:
  match: context.protocol == "tcp"
  actions: [{handler: tcplog, instances: [tcpconnection]}]
---
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: notcp}
spec: {compiledAdapter: denier, params: {status: {code: 7, message: no TCP to 9002}}}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: nothing}
spec: {compiledTemplate: checknothing}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: notcp}
spec:
  match: context.protocol == "tcp" && destination.port == 9002
  actions: [{handler: notcp, instances: [nothing]}]
"#;

/// Waits (at most 10 s) for mixr to log a TCP `event` for `port` as `reporter`: its line.
fn tcp_event(mixr: &Mixr, event: &str, port: u16, reporter: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = mixr.stdout_text();
        let found = out.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find(|e| {
            e["event"] == event
                && e["port"] == port
                && e["reporter"] == reporter
                && e["instance"] == "tcpconnection.instance.istio-system"
        });
        if let Some(e) = found {
            return e;
        }
        assert!(Instant::now() < deadline, "no {event} of a connection to {port} ({reporter}) in mixr's log:\n{out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn inbound_traffic_to_the_pods_ip_goes_through_the_sidecar_and_mixr() {
    if skip_unless_root("inbound_traffic_to_the_pods_ip_goes_through_the_sidecar_and_mixr") {
        return;
    }
    let net = Topology::new("in");
    let dirs = Dirs::new();
    let telemetry = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/examples/telemetry.yaml");
    let policy = dirs.write("policy.yaml", MIXR_POLICY);
    let tcp_config = dirs.write("tcp.yaml", MIXR_TCP);
    let mixr = Mixr::start_wrapped(&["ip", "netns", "exec", &net.pod.name], &[&policy, &tcp_config, &telemetry], &[]);
    let _app = http_app(&net.pod, &dirs, 8080, "web");
    let _second_port = http_app(&net.pod, &dirs, 8081, "web-admin");
    let _tcp_excluded = tcp_app(&net.pod, &dirs, 9000);
    let _tcp_captured = tcp_app(&net.pod, &dirs, 9001);
    let _tcp_denied = tcp_app(&net.pod, &dirs, 9002);
    let config = dirs.write("traffic.yaml", "");
    let proxy =
        sidecar(&net.pod, &dirs, "sidecar", &config, &["--app-addr=127.0.0.1:8080", &format!("--mixr={}", mixr.grpc)]);

    // Before the rules: the client reaches the app itself.
    let url = format!("http://{POD_IP}:8080/hello");
    let (status, body) = get(&net.client, None, &url, &["end-user:alice"]);
    assert_eq!(status, "200", "{body}");
    assert_eq!(json(&body)["peer"], "10.201.0.1");

    apply(&net.pod, &["--exclude-inbound-ports=9000"]);

    // The same call now reaches the app from the sidecar, checked by mixr (whose rule
    // adds a header) on the way; the client still just called the pod's IP.
    let (status, body) = get(&net.client, None, &url, &["end-user:alice"]);
    assert_eq!(status, "200", "{body}\n{}", proxy.logs());
    let seen = json(&body);
    assert_eq!(seen["peer"], "127.0.0.1", "{seen}");
    assert_eq!(seen["path"], "/hello");
    assert_eq!(seen["headers"]["x-checked-by"], "mixr", "{seen}");
    // A second port of the app: the request goes to the port the client dialled (not
    // --app-addr's), checked the same way.
    let (status, body) = get(&net.client, None, &format!("http://{POD_IP}:8081/two"), &[]);
    assert_eq!(status, "200", "{body}");
    let seen = json(&body);
    assert_eq!((seen["name"].as_str(), seen["peer"].as_str()), (Some("web-admin"), Some("127.0.0.1")), "{seen}");
    assert_eq!(seen["headers"]["x-checked-by"], "mixr", "{seen}");
    let (status, body) = get(&net.client, None, &url, &["end-user:mallory"]);
    assert_eq!(status, "403", "{body}");
    assert!(body.contains("mallory"), "{body}");

    // Counted by the sidecar as inbound traffic, and reported to mixr.
    let stats = net.pod.ok(&["python3", &python(), "get", "http://127.0.0.1:15090/stats/prometheus"]);
    assert!(
        sample(&stats, "mixr_proxy_requests_total{", &["reporter=\"destination\"", "response_code=\"200\""]) >= 1.0,
        "{stats}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = net.pod.ok(&["python3", &python(), "get", &format!("http://{}/metrics", mixr.monitoring)]);
        if sample(&metrics, "mixr_report_entries_total{", &["api=\"mixer\""]) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no Reports reached mixr:\n{metrics}\n{}", proxy.logs());
        std::thread::sleep(Duration::from_millis(200));
    }

    // Raw TCP: an excluded port reaches the app directly; any other port goes through
    // the sidecar to the app's port on loopback, checked and reported.
    assert_eq!(tcp(&net.client, POD_IP, 9000, "ping").trim(), "echo 10.201.0.1 ping");
    assert_eq!(tcp(&net.client, POD_IP, 9001, "ping").trim(), "echo 127.0.0.1 ping", "{}", proxy.logs());
    let closed = tcp_event(&mixr, "close", 9001, "inbound");
    let answer = "echo 127.0.0.1 ping\n".len() as i64;
    assert_eq!((closed["received"].as_i64(), closed["sent"].as_i64()), (Some(5), Some(answer)), "{closed}");
    tcp_event(&mixr, "open", 9001, "inbound");
    let denied = tcp(&net.client, POD_IP, 9002, "ping");
    assert!(!denied.contains("echo"), "mixr's denial did not apply: {denied}");
    // The sidecar's own ports are never redirected: its admin port, on the pod's loopback
    // only, stays out of reach (captured, the call would reach the app through 15006).
    let (status, body) = get(&net.client, None, &format!("http://{POD_IP}:15000/ready"), &[]);
    assert_eq!(status, "ERR", "{body}");
}

const ROUTES: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: upstream}
spec:
  hosts: [upstream]
  ports: [{number: 8080, name: http}]
  endpoints: [{address: 10.202.0.2, ports: {http: 8080}}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: upstream}
spec:
  hosts: [upstream]
  http:
  - match: [{uri: {prefix: /teapot}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: upstream}}]
  - route: [{destination: {host: upstream}}]
    headers: {request: {set: {x-routed-by: mixr-proxy}}}
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: upstream-tcp}
spec:
  hosts: [upstream-tcp]
  ports: [{number: 9001, name: tcp, protocol: TCP}]
  endpoints: [{address: 10.202.0.2}]
"#;

#[test]
fn outbound_calls_by_name_and_by_ip_go_through_the_sidecar() {
    if skip_unless_root("outbound_calls_by_name_and_by_ip_go_through_the_sidecar") {
        return;
    }
    let net = Topology::new("out");
    let dirs = Dirs::new();
    let tcp_config = dirs.write("tcp.yaml", MIXR_TCP);
    let mixr = Mixr::start_wrapped(&["ip", "netns", "exec", &net.pod.name], &[&tcp_config], &[]);
    let _upstream = http_app(&net.upstream, &dirs, 8080, "upstream");
    let _tcp_excluded = tcp_app(&net.upstream, &dirs, 9000);
    let _tcp_captured = tcp_app(&net.upstream, &dirs, 9001);
    let _tcp_unlisted = tcp_app(&net.upstream, &dirs, 9003);
    let config = dirs.write("traffic.yaml", ROUTES);
    let proxy = sidecar(&net.pod, &dirs, "allow-any", &config, &[&format!("--mixr={}", mixr.grpc)]);
    apply(&net.pod, &["--exclude-outbound-ports=9000"]);

    // The app (root here, any uid but the sidecar's) calls the upstream by name; the
    // rules take the call to the sidecar, whose VirtualService sets a header.
    let (status, body) = get(&net.pod, None, "http://upstream:8080/a", &[]);
    assert_eq!(status, "200", "{body}\n{}", proxy.logs());
    let seen = json(&body);
    assert_eq!(seen["name"], "upstream");
    assert_eq!(seen["headers"]["x-routed-by"], "mixr-proxy", "{seen}");
    assert_eq!(seen["peer"], "10.202.0.1");
    let (status, _) = get(&net.pod, None, "http://upstream:8080/teapot", &[]);
    assert_eq!(status, "418", "the fault of the VirtualService did not apply");

    // By IP, with no Host any route or service knows: passed through to where the app
    // was going (ALLOW_ANY), counted as PassthroughCluster.
    let (status, body) = get(&net.pod, None, &format!("http://{UPSTREAM_IP}:8080/by-ip"), &[]);
    assert_eq!(status, "200", "{body}");
    let seen = json(&body);
    assert_eq!((seen["path"].as_str(), seen["peer"].as_str()), (Some("/by-ip"), Some("10.202.0.1")), "{seen}");
    assert!(seen["headers"].get("x-routed-by").is_none(), "{seen}");
    let stats = net.pod.ok(&["python3", &python(), "get", "http://127.0.0.1:15090/stats/prometheus"]);
    assert!(
        sample(&stats, "mixr_proxy_requests_total{", &["destination_service=\"PassthroughCluster\""]) >= 1.0,
        "{stats}"
    );

    // The sidecar's uid is never captured: the call above got out through the sidecar,
    // which runs as 1337 (captured, its upstream connection would loop back to itself).
    // With the rules naming root's uid instead, the app's calls go straight out.
    apply(&net.pod, &["--exclude-outbound-ports=9000", "--proxy-uid=0"]);
    let (status, body) = get(&net.pod, None, "http://upstream:8080/a", &[]);
    assert_eq!(status, "200", "{body}");
    assert!(json(&body)["headers"].get("x-routed-by").is_none(), "the owner match did not apply: {body}");
    apply(&net.pod, &["--exclude-outbound-ports=9000"]);

    // Loopback is never captured: the sidecar's admin port answers itself, not the outbound listener.
    let (status, _) = get(&net.pod, None, "http://127.0.0.1:15000/ready", &[]);
    assert_eq!(status, "200");

    // Raw TCP: an excluded port goes straight out; another goes through the sidecar to
    // where the app was going (ALLOW_ANY), reported as outbound.
    assert_eq!(tcp(&net.pod, UPSTREAM_IP, 9000, "ping").trim(), "echo 10.202.0.1 ping");
    assert_eq!(tcp(&net.pod, UPSTREAM_IP, 9001, "ping").trim(), "echo 10.202.0.1 ping", "{}", proxy.logs());
    let closed = tcp_event(&mixr, "close", 9001, "outbound");
    let answer = "echo 10.202.0.1 ping\n".len() as i64;
    assert_eq!((closed["received"].as_i64(), closed["sent"].as_i64()), (Some(5), Some(answer)), "{closed}");
    assert_eq!(closed["service"], "upstream-tcp", "the ServiceEntry listing the endpoint: {closed}");
    // A destination no ServiceEntry lists passes through (ALLOW_ANY, the default).
    assert_eq!(tcp(&net.pod, UPSTREAM_IP, 9003, "ping").trim(), "echo 10.202.0.1 ping");
    assert_eq!(tcp_event(&mixr, "close", 9003, "outbound")["service"], "PassthroughCluster");
    assert!(
        !mixr.stdout_text().contains("\"port\":9000"),
        "the excluded port went through the sidecar:\n{}",
        mixr.stdout_text()
    );

    let stats = net.pod.ok(&["python3", &python(), "get", "http://127.0.0.1:15090/stats/prometheus"]);
    assert!(
        sample(&stats, "mixr_proxy_requests_total{", &["reporter=\"source\"", "destination_service=\"upstream\""])
            >= 1.0,
        "{stats}"
    );

    // REGISTRY_ONLY: the unlisted destination is refused, the listed one still works.
    drop(proxy);
    let _strict = sidecar(
        &net.pod,
        &dirs,
        "registry-only",
        &config,
        &[&format!("--mixr={}", mixr.grpc), "--outbound-traffic-policy=REGISTRY_ONLY"],
    );
    let refused = tcp(&net.pod, UPSTREAM_IP, 9003, "ping");
    assert!(!refused.contains("echo"), "REGISTRY_ONLY let an unlisted destination through: {refused}");
    let blackholed = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = mixr.stdout_text();
            if out.contains("\"service\":\"BlackHoleCluster\"") {
                break out;
            }
            assert!(Instant::now() < deadline, "no BlackHoleCluster report:\n{out}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(blackholed.contains("\"port\":9003"), "{blackholed}");
    assert_eq!(tcp(&net.pod, UPSTREAM_IP, 9001, "ping").trim(), "echo 10.202.0.1 ping");
    let (status, _) = get(&net.pod, None, &format!("http://{UPSTREAM_IP}:8080/by-ip"), &[]);
    assert_eq!(status, "502", "REGISTRY_ONLY let HTTP for an unknown Host through");
    let (status, body) = get(&net.pod, None, "http://upstream:8080/a", &[]);
    assert_eq!((status.as_str(), json(&body)["headers"]["x-routed-by"].as_str()), ("200", Some("mixr-proxy")));
}

const POD_IP6: &str = "fd00:201::2";
const UPSTREAM_IP6: &str = "fd00:202::2";

/// Only the upstream's IPv6 TCP port 9001 is in the registry.
const ROUTES_V6: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: upstream-v6}
spec:
  hosts: [upstream-v6]
  ports: [{number: 9001, name: tcp, protocol: TCP}]
  endpoints: [{address: "fd00:202::2"}]
"#;

#[test]
fn ipv6_is_captured_too_and_a_dual_stack_sidecar_serves_both() {
    if skip_unless_root("ipv6_is_captured_too_and_a_dual_stack_sidecar_serves_both") {
        return;
    }
    let net = Topology::new("v6");
    for (ns, dev, addr) in [
        (&net.pod, "eth0", "fd00:201::2/64"),
        (&net.client, "eth0", "fd00:201::1/64"),
        (&net.pod, "eth1", "fd00:202::1/64"),
        (&net.upstream, "eth0", "fd00:202::2/64"),
    ] {
        // No duplicate address detection: the address is usable at once.
        ns.ip(&["addr", "add", addr, "dev", dev, "nodad"]);
    }
    let dirs = Dirs::new();
    let _app = http_app_on(&net.pod, &dirs, 8080, "web", "::");
    let _tcp = tcp_app_on(&net.pod, &dirs, 9001, "::");
    let _listed = tcp_app_on(&net.upstream, &dirs, 9001, "::");
    let _unlisted = tcp_app_on(&net.upstream, &dirs, 9003, "::");
    let config = dirs.write("traffic.yaml", ROUTES_V6);
    // As `inject --ipv6` runs it: dual-stack listeners.
    let proxy = sidecar(
        &net.pod,
        &dirs,
        "sidecar",
        &config,
        &[
            "--outbound-addr=[::]:15001",
            "--inbound-addr=[::]:15006",
            "--app-addr=127.0.0.1:8080",
            "--outbound-traffic-policy=REGISTRY_ONLY",
        ],
    );
    apply(&net.pod, &["--ipv6"]);

    // Inbound over IPv6: to the app's port on IPv6 loopback (IP6T_SO_ORIGINAL_DST).
    assert_eq!(tcp(&net.client, POD_IP6, 9001, "ping").trim(), "echo ::1 ping", "{}", proxy.logs());
    // Over IPv4, through the same dual-stack listener (SO_ORIGINAL_DST of a v4-mapped
    // connection): to the app on IPv4 loopback.
    assert_eq!(tcp(&net.client, POD_IP, 9001, "ping").trim(), "echo ::ffff:127.0.0.1 ping");
    let (status, body) = get(&net.client, None, &format!("http://[{POD_IP6}]:8080/six"), &[]);
    assert_eq!(status, "200", "{body}");
    assert_eq!(json(&body)["peer"], "::ffff:127.0.0.1", "{body}");

    // Outbound over IPv6: the listed destination is reached through the sidecar, the
    // unlisted one refused (REGISTRY_ONLY), so both were captured and their original
    // destinations read.
    assert_eq!(tcp(&net.pod, UPSTREAM_IP6, 9001, "ping").trim(), "echo fd00:202::1 ping", "{}", proxy.logs());
    let refused = tcp(&net.pod, UPSTREAM_IP6, 9003, "ping");
    assert!(!refused.contains("echo"), "an unlisted IPv6 destination went through: {refused}");
}

#[test]
fn applying_twice_leaves_one_set_and_cleanup_leaves_nothing_of_ours() {
    if skip_unless_root("applying_twice_leaves_one_set_and_cleanup_leaves_nothing_of_ours") {
        return;
    }
    let pod = Netns::new("rules");
    // Someone else's rules, which must survive.
    pod.ok(&["iptables", "-t", "nat", "-N", "OTHER"]);
    pod.ok(&["iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "OTHER"]);
    pod.ok(&["ip6tables", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "-j", "RETURN"]);
    let before = [pod.nat("iptables-save"), pod.nat("ip6tables-save")];

    apply(&pod, &["--ipv6", "--exclude-inbound-ports=22"]);
    let first = [pod.nat("iptables-save"), pod.nat("ip6tables-save")];
    apply(&pod, &["--ipv6", "--exclude-inbound-ports=22"]);
    let second = [pod.nat("iptables-save"), pod.nat("ip6tables-save")];
    for (save, text) in ["iptables", "ip6tables"].iter().zip(&second) {
        assert_eq!(text.matches("-A PREROUTING -p tcp -j MIXR_INBOUND").count(), 1, "{save}:\n{text}");
        assert_eq!(text.matches("-A OUTPUT -p tcp -j MIXR_OUTPUT").count(), 1, "{save}:\n{text}");
        assert_eq!(text.matches("--dport 22 -j RETURN").count(), 1, "{save}:\n{text}");
        assert!(text.contains("REDIRECT --to-ports 15006") && text.contains("REDIRECT --to-ports 15001"), "{text}");
    }
    let strip = |t: &str| t.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
    assert_eq!(strip(&first[0]), strip(&second[0]));
    assert_eq!(strip(&first[1]), strip(&second[1]));

    // A changed config replaces the rules instead of adding to them.
    apply(&pod, &["--exclude-inbound-ports=2222"]);
    let v4 = pod.nat("iptables-save");
    assert!(v4.contains("--dport 2222 -j RETURN") && !v4.contains("--dport 22 -j"), "{v4}");
    assert!(!pod.nat("ip6tables-save").contains("MIXR"), "IPv6 rules stayed after an IPv4-only apply");

    let out = pod.output(&[&proxy_bin(), "iptables", "--cleanup"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = [pod.nat("iptables-save"), pod.nat("ip6tables-save")];
    for (b, a) in before.iter().zip(&after) {
        assert!(!a.contains("MIXR"), "{a}");
        assert_eq!(strip(b), strip(a), "cleanup touched rules that are not ours");
    }
    // Cleaning clean tables is fine.
    assert!(pod.output(&[&proxy_bin(), "iptables", "--cleanup"]).status.success());
}
