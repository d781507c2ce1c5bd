//! Routing decisions on Istio's Bookinfo traffic rules.

use super::*;
use crate::config::{Abort, LoadBalancer, StringMatch, load_str};

const BOOKINFO: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: 19081}, labels: {app: reviews, version: v1}}
  - {address: 127.0.0.1, ports: {http: 19082}, labels: {app: reviews, version: v2}}
  - {address: 127.0.0.1, ports: {http: 19083}, labels: {app: reviews, version: v3}}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_CONN}
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
    outlierDetection: {consecutiveErrors: 3, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
    timeout: 0.5s
  - match:
    - uri: {prefix: /canary}
      sourceLabels: {app: productpage}
    route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v3}, weight: 50}
  - route:
    - destination: {host: reviews, subset: v1}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  http:
  - match:
    - headers: {end-user: {exact: jason}}
    fault:
      delay: {percentage: {value: 100.0}, fixedDelay: 7s}
      abort: {httpStatus: 500, percent: 10}
    route:
    - destination: {host: ratings, subset: v1}
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "gateway-error,connect-failure,refused-stream,503,unavailable"}
  - match:
    - uri: {regex: '/ratings/[0-9]+'}
      ignoreUriCase: true
      queryParams: {debug: {exact: "1"}}
      withoutHeaders: {x-skip: {}}
    route:
    - destination: {host: ratings}
    mirror: {host: ratings, subset: v2}
    mirrorPercentage: {value: 25}
  - match:
    - method: {exact: POST}
    redirect: {uri: /login, authority: auth.example.com, redirectCode: 302}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: server-side-config}
spec: {}
"#;

fn config() -> TrafficConfig {
    let (cfg, errors) = load_str("bookinfo.yaml", BOOKINFO, "default");
    assert!(errors.is_empty(), "{errors:#?}");
    cfg
}

fn headers(pairs: &[(&str, &str)]) -> hyper::HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| {
            (hyper::header::HeaderName::try_from(*k).unwrap(), hyper::header::HeaderValue::try_from(*v).unwrap())
        })
        .collect()
}

fn req<'a>(authority: &'a str, path: &'a str, headers: &'a hyper::HeaderMap) -> RequestInfo<'a> {
    RequestInfo { authority, path, method: "GET", scheme: "http", headers, port: Some(9080) }
}

fn subset_of(r: &HttpRoute) -> Vec<(Option<String>, u32)> {
    r.route.iter().map(|d| (d.destination.subset.clone(), d.weight)).collect()
}

#[test]
fn header_routing_sends_jason_to_v2_and_everyone_else_to_v1() {
    let t = RouteTable::build(&config());
    let jason = headers(&[("end-user", "jason")]);
    let r = t.route(&req("reviews:9080", "/reviews/0", &jason), &[]).unwrap();
    assert_eq!(subset_of(r), vec![(Some("v2".into()), 100)]);
    assert_eq!(r.timeout, Some(std::time::Duration::from_millis(500)));
    let r = t.route(&req("reviews", "/reviews/0", &hyper::HeaderMap::new()), &[]).unwrap();
    assert_eq!(subset_of(r), vec![(Some("v1".into()), 100)]);
    // Fully qualified names reach the short-named VirtualService and vice versa.
    assert!(t.route(&req("reviews.default.svc.cluster.local:9080", "/", &hyper::HeaderMap::new()), &[]).is_some());
    assert!(t.route(&req("ratings:9080", "/ratings/1?debug=1", &hyper::HeaderMap::new()), &[]).is_some());
    assert!(t.route(&req("details:9080", "/", &hyper::HeaderMap::new()), &[]).is_none(), "no VirtualService: no route");
}

#[test]
fn source_labels_and_weighted_splits() {
    let t = RouteTable::build(&config());
    let productpage = vec![("app".to_string(), "productpage".to_string())];
    let r = t.route(&req("reviews", "/canary/x", &hyper::HeaderMap::new()), &productpage).unwrap();
    assert_eq!(subset_of(r), vec![(Some("v1".into()), 50), (Some("v3".into()), 50)]);
    assert_eq!(total_weight(&r.route), 100);
    assert_eq!(pick_weighted(&r.route, 0).unwrap().destination.subset.as_deref(), Some("v1"));
    assert_eq!(pick_weighted(&r.route, 49).unwrap().destination.subset.as_deref(), Some("v1"));
    assert_eq!(pick_weighted(&r.route, 50).unwrap().destination.subset.as_deref(), Some("v3"));
    assert!(pick_weighted(&r.route, 100).is_none());
    // Another workload does not match the sourceLabels block.
    let other = vec![("app".to_string(), "details".to_string())];
    let r = t.route(&req("reviews", "/canary/x", &hyper::HeaderMap::new()), &other).unwrap();
    assert_eq!(subset_of(r), vec![(Some("v1".into()), 100)]);
}

#[test]
fn faults_retries_mirrors_and_redirects_parse() {
    let t = RouteTable::build(&config());
    let jason = headers(&[("end-user", "jason")]);
    let r = t.route(&req("ratings", "/ratings/1", &jason), &[]).unwrap();
    let f = r.fault.as_ref().unwrap();
    assert_eq!(f.delay, Some((std::time::Duration::from_secs(7), 100.0)));
    assert_eq!(f.abort, Some((Abort::Http(500), 10.0)));
    assert_eq!(r.retries.attempts, 3);
    assert!(r.retries.retry_on.gateway_error && r.retries.retry_on.connect_failure);
    assert_eq!(r.retries.retry_on.status_codes, vec![503]);
    assert_eq!(r.retries.retry_on.grpc_codes, vec![14]);

    let dbg = headers(&[]);
    let r = t.route(&req("ratings", "/RATINGS/12?debug=1", &dbg), &[]).unwrap();
    assert_eq!(r.mirror.as_ref().unwrap().subset.as_deref(), Some("v2"));
    assert_eq!(r.mirror_percentage, 25.0);
    assert_eq!(r.retries, crate::config::Retries::default(), "Istio's default retries");
    let skip = headers(&[("x-skip", "yes")]);
    assert!(t.route(&req("ratings", "/ratings/12?debug=1", &skip), &[]).is_none(), "withoutHeaders excludes");
    assert!(t.route(&req("ratings", "/ratings/12?debug=0", &dbg), &[]).is_none(), "query param mismatch");

    let mut post = req("ratings", "/x", &dbg);
    post.method = "POST";
    let r = t.route(&post, &[]).unwrap();
    assert_eq!(r.redirect.as_ref().unwrap().code, 302);
    assert!(r.route.is_empty());
}

#[test]
fn subsets_resolve_to_endpoints_and_policies() {
    let t = RouteTable::build(&config());
    let d = |subset: Option<&str>| Destination { host: "reviews".into(), subset: subset.map(Into::into), port: None };
    let v2 = t.endpoints(&d(Some("v2"))).unwrap();
    assert_eq!(v2.len(), 1);
    assert_eq!((v2[0].address.as_str(), v2[0].port), ("127.0.0.1", 19082));
    assert_eq!(t.endpoints(&d(None)).unwrap().len(), 3);
    assert_eq!(t.endpoints(&d(Some("v9"))), Err(RouteError::UnknownSubset("reviews".into(), "v9".into())));
    let bad_port = Destination { host: "reviews".into(), subset: None, port: Some(1) };
    assert!(matches!(t.endpoints(&bad_port), Err(RouteError::UnknownPort(..))));
    assert!(matches!(
        t.endpoints(&Destination { host: "nowhere".into(), subset: None, port: None }),
        Err(RouteError::UnknownHost(_))
    ));

    let p = t.policy(&d(Some("v1")));
    assert_eq!(p.load_balancer, LoadBalancer::LeastRequest, "LEAST_CONN is LEAST_REQUEST");
    assert_eq!(p.connection_pool.max_connections, Some(1));
    let od = p.outlier_detection.unwrap();
    assert_eq!(
        (od.consecutive_5xx_errors, od.consecutive_gateway_errors, od.max_ejection_percent),
        (None, Some(3), 100)
    );
    assert_eq!(t.policy(&d(Some("v2"))).load_balancer, LoadBalancer::Random, "a subset's policy wins");
}

#[test]
fn string_matches_and_hosts() {
    assert!(StringMatch::Exact("a".into()).matches("a"));
    assert!(StringMatch::Prefix("/api".into()).matches("/api/v1"));
    assert_eq!(normalize_host("Reviews:9080"), "reviews");
    assert_eq!(normalize_host("[::1]:8080"), "::1");
    assert_eq!(normalize_host("reviews"), "reviews");
    // Only a numeric port after the last colon is taken off.
    assert_eq!(normalize_host("reviews:"), "reviews:");
    assert_eq!(normalize_host("reviews:80x"), "reviews:80x");
    assert_eq!(normalize_host("a:b:80"), "a:b");
    assert_eq!(normalize_host("9080"), "9080");
    assert_eq!(normalize_host(":9080"), "");
}

#[test]
fn bad_traffic_config_names_file_document_and_key() {
    let err = |text: &str| {
        let (_, errors) = load_str("bad.yaml", text, "default");
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors[0].to_string()
    };
    let vs = |http: &str| {
        format!(
            "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {{name: v}}\nspec:\n  hosts: [a]\n  http:\n{http}"
        )
    };
    assert_eq!(
        err(&vs("  - route: [{destination: {host: a}}]\n    timeout: soon\n")),
        "bad.yaml:8: document 1 (VirtualService v): spec.http[0].timeout: \"soon\" is not a duration like \"5s\""
    );
    assert!(
        err(&vs("  - route: [{destination: {host: a}}]\n    retries: {attempts: 2, retryOn: sometimes}\n"))
            .contains("spec.http[0].retries.retryOn: unknown retry condition \"sometimes\"")
    );
    assert!(
        err(&vs("  - match: [{uri: {regex: '('}}]\n    route: [{destination: {host: a}}]\n"))
            .contains("spec.http[0].match[0].uri: invalid regex")
    );
    assert!(
        err(&vs("  - fault: {abort: {httpStatus: 99}}\n    route: [{destination: {host: a}}]\n"))
            .contains("httpStatus: 99 is not an HTTP status")
    );
    assert!(err(&vs("  - timeout: 1s\n")).contains("spec.http[0]: a route needs route or redirect"));
    assert!(
        err(&vs("  - route: [{destination: {host: a}, wieght: 5}]\n"))
            .contains("spec.http[0].route[0].wieght: unknown key (did you mean weight?)")
    );
    assert!(err("apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: a\n  trafficPolicy: {loadBalancer: {simple: FASTEST}}\n").contains("unknown load balancer"));
}

#[test]
fn route_destinations_resolve_at_load_to_one_cluster_per_destination() {
    use crate::upstream::Clusters;
    use std::sync::Arc;
    let t = RouteTable::build(&config());
    let clusters = Clusters::default();
    let resolved = clusters.resolve(&t);
    let none = hyper::HeaderMap::new();
    let productpage = [("app".to_string(), "productpage".to_string())];
    let (canary, _) = t.find(&req("reviews", "/canary/x", &none), &productpage).unwrap();
    let (fallthrough, route) = t.find(&req("reviews", "/", &none), &[]).unwrap();
    assert_eq!(fallthrough, RouteId { virtual_service: 0, route: 2 });
    let cluster = |id, i| resolved.get(id, i).unwrap().as_ref().unwrap();
    assert_eq!(cluster(fallthrough, 0).name, "reviews|v1|");
    assert!(Arc::ptr_eq(cluster(canary, 0), cluster(fallthrough, 0)), "v1 is one cluster, whichever route names it");
    assert!(!Arc::ptr_eq(cluster(canary, 0), cluster(canary, 1)), "v1 and v3 are two");
    let looked_up = clusters.get(&t, &route.route[0].destination).unwrap();
    assert!(Arc::ptr_eq(cluster(fallthrough, 0), &looked_up), "a lookup finds the same cluster");
    assert!(resolved.get(fallthrough, 1).is_none());
    // No ServiceEntry for ratings: the route keeps the error, for its requests' 503.
    let (ratings, _) = t.find(&req("ratings", "/ratings/1?debug=1", &none), &[]).unwrap();
    assert!(matches!(resolved.get(ratings, 0), Some(Err(RouteError::UnknownHost(h))) if h == "ratings"));
}

const BINDINGS: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: mesh-only}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: mesh}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: gateway-only}
spec:
  hosts: ["*"]
  gateways: [bookinfo-gateway]
  http:
  - route:
    - destination: {host: productpage}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: both}
spec:
  hosts: [ratings, "*.example.com"]
  gateways: [istio-system/other, mesh]
  http:
  - route:
    - destination: {host: ratings}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: specific}
spec:
  hosts: ["*.api.example.com", "exact.example.com"]
  gateways: [istio-system/other]
  http:
  - route:
    - destination: {host: details}
"#;

fn destination_of(t: &RouteTable, authority: &str) -> Option<String> {
    let h = headers(&[]);
    t.route(&req(authority, "/", &h), &[]).map(|r| r.route[0].destination.host.clone())
}

#[test]
fn virtual_services_bind_to_the_mesh_or_to_the_gateways_they_name() {
    let (cfg, errors) = load_str("b.yaml", BINDINGS, "default");
    assert!(errors.is_empty(), "{errors:#?}");
    let mesh = RouteTable::build(&cfg);
    assert_eq!(destination_of(&mesh, "reviews"), Some("reviews".into()));
    assert_eq!(destination_of(&mesh, "ratings:9080"), Some("ratings".into()));
    // Bound to a gateway only: the sidecars never apply it, even for a host only it names.
    assert_eq!(destination_of(&mesh, "anything.org"), None);
    let gw = RouteTable::build_for(&cfg, &Binding::Gateways(vec!["default/bookinfo-gateway".into()]));
    assert_eq!(destination_of(&gw, "bookinfo.example.org"), Some("productpage".into()));
    assert_eq!(destination_of(&gw, "reviews"), Some("productpage".into()), "the gateway has no mesh routes");
    // `other` is in istio-system: `bookinfo-gateway` of default is not it.
    let other = RouteTable::build_for(&cfg, &Binding::Gateways(vec!["istio-system/other".into()]));
    assert_eq!(destination_of(&other, "a.example.com"), Some("ratings".into()));
    assert_eq!(destination_of(&other, "v1.api.example.com"), Some("details".into()), "longest suffix wins");
    assert_eq!(destination_of(&other, "exact.example.com"), Some("details".into()));
    assert_eq!(destination_of(&other, "example.com"), None);
    assert_eq!(destination_of(&other, "bookinfo.example.org"), None);
    let none = RouteTable::build_for(&cfg, &Binding::Gateways(vec!["default/unknown".into()]));
    assert_eq!(destination_of(&none, "reviews"), None);
}

#[test]
fn a_literal_star_host_is_no_route_even_where_star_routes_everything() {
    let (cfg, _) = load_str("b.yaml", BINDINGS, "default");
    let gw = RouteTable::build_for(&cfg, &Binding::Gateways(vec!["default/bookinfo-gateway".into()]));
    assert_eq!(destination_of(&gw, "x"), Some("productpage".into()));
    assert_eq!(destination_of(&gw, "*"), None);
    assert_eq!(destination_of(&gw, "*:80"), None);
    assert_eq!(destination_of(&gw, "*.example.com"), None);
    assert_eq!(destination_of(&gw, ""), None);
}
