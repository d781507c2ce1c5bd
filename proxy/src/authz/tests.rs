//! The allow/deny matrix of AuthorizationPolicy and RBAC, on Istio-shaped documents.

use super::*;

fn facts<'a>(method: &'a str, path: &'a str, headers: &'a [(&'a str, &'a str)], ip: &str) -> Facts<'a> {
    Facts {
        principal: None,
        namespace: None,
        source_ip: ip.parse().ok(),
        host: "reviews:9080",
        port: Some(9080),
        method,
        path,
        headers,
        labels: &[],
    }
}

fn authz(yaml: &str, labels: &[(&str, &str)]) -> Authz {
    let (cfg, errors) = load_str("authz.yaml", yaml, "bookinfo");
    assert!(errors.is_empty(), "{errors:?}");
    let labels: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Authz::for_workload(&cfg, "bookinfo", &labels, "reviews")
}

const POLICIES: &str = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - to: [{operation: {methods: [GET, HEAD], paths: ["/reviews/*", /health]}}]
  - from: [{source: {ipBlocks: [10.1.0.0/16], notIpBlocks: [10.1.9.0/24]}}]
    to: [{operation: {methods: [POST]}}]
  - when: [{key: "request.headers[x-role]", values: [admin]}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: no-debug, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/reviews/debug*"]}}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: ratings-only, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: ratings}}
  rules: [{}]
"#;

/// Method, path, headers, source address, and the decision.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str, Decision);

#[test]
fn allow_deny_matrix() {
    let a = authz(POLICIES, &[("app", "reviews"), ("version", "v1")]);
    let none: &[(&str, &str)] = &[];
    let cases: &[Case] = &[
        ("GET", "/reviews/1", none, "192.168.0.1", Decision::Allow),
        ("HEAD", "/health", none, "192.168.0.1", Decision::Allow),
        ("GET", "/health/x", none, "192.168.0.1", Decision::Deny("no ALLOW policy matched".into())),
        ("DELETE", "/reviews/1", none, "192.168.0.1", Decision::Deny("no ALLOW policy matched".into())),
        ("POST", "/reviews/1", none, "10.1.2.3", Decision::Allow),
        ("POST", "/reviews/1", none, "10.1.9.3", Decision::Deny("no ALLOW policy matched".into())),
        ("POST", "/reviews/1", none, "10.2.0.1", Decision::Deny("no ALLOW policy matched".into())),
        ("DELETE", "/x", &[("x-role", "admin")], "192.168.0.1", Decision::Allow),
        ("DELETE", "/x", &[("x-role", "user")], "192.168.0.1", Decision::Deny("no ALLOW policy matched".into())),
        // DENY wins over every ALLOW, and a root-namespace policy applies mesh-wide.
        (
            "GET",
            "/reviews/debug/vars",
            &[("x-role", "admin")],
            "10.1.2.3",
            Decision::Deny("istio-system/no-debug".into()),
        ),
    ];
    for (method, path, headers, ip, want) in cases {
        assert_eq!(a.decide(&facts(method, path, headers, ip)), *want, "{method} {path} {headers:?} from {ip}");
    }
}

#[test]
fn selectors_scope_policies_and_no_policy_allows() {
    // ratings' policy (one empty rule: allow all) does not reach reviews; nothing selects
    // details, so everything passes there.
    let details = authz(POLICIES.split("---").nth(1).unwrap(), &[("app", "details")]);
    assert_eq!(details.decide(&facts("DELETE", "/anything", &[], "1.2.3.4")), Decision::Allow);
    let ratings = authz(POLICIES, &[("app", "ratings")]);
    assert_eq!(ratings.decide(&facts("DELETE", "/anything", &[], "1.2.3.4")), Decision::Allow);
    let empty = authz(
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all}\nspec: {}\n",
        &[("app", "reviews")],
    );
    assert_eq!(empty.decide(&facts("GET", "/", &[], "1.2.3.4")), Decision::Deny("no ALLOW policy matched".into()));
}

#[test]
fn principals_need_a_verified_peer() {
    let a = authz(
        r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: only-productpage}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/bookinfo/sa/bookinfo-productpage"]}}]
"#,
        &[],
    );
    let plain = facts("GET", "/", &[], "1.2.3.4");
    assert_eq!(a.decide(&plain), Decision::Deny("no ALLOW policy matched".into()));
    let verified = Facts { principal: Some("cluster.local/ns/bookinfo/sa/bookinfo-productpage"), ..plain };
    assert_eq!(a.decide(&verified), Decision::Allow);
}

const RBAC: &str = r#"
apiVersion: rbac.istio.io/v1alpha1
kind: ClusterRbacConfig
metadata: {name: default}
spec:
  mode: ON_WITH_INCLUSION
  inclusion: {namespaces: [bookinfo]}
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRole
metadata: {name: reviews-viewer, namespace: bookinfo}
spec:
  rules:
  - services: ["reviews.bookinfo.svc.cluster.local"]
    methods: [GET]
    constraints: [{key: "destination.labels[version]", values: [v1, v2]}]
---
apiVersion: rbac.istio.io/v1alpha1
kind: ServiceRoleBinding
metadata: {name: bind-reviews-viewer, namespace: bookinfo}
spec:
  subjects:
  - user: "*"
    properties: {"request.headers[end-user]": jason}
  - properties: {source.ip: 10.0.0.0/8}
  roleRef: {kind: ServiceRole, name: reviews-viewer}
"#;

#[test]
fn rbac_when_the_cluster_config_covers_the_service() {
    let (cfg, errors) = load_str("rbac.yaml", RBAC, "bookinfo");
    assert!(errors.is_empty(), "{errors:?}");
    let v1 = vec![("app".to_string(), "reviews".to_string()), ("version".to_string(), "v1".to_string())];
    let a = Authz::for_workload(&cfg, "bookinfo", &v1, "reviews");
    let jason = [("end-user", "jason")];
    let mut f = facts("GET", "/reviews/1", &jason, "192.168.1.1");
    f.labels = &v1;
    assert_eq!(a.decide(&f), Decision::Allow);
    f.headers = &[];
    assert_eq!(a.decide(&f), Decision::Deny("no ServiceRoleBinding matched".into()));
    f.source_ip = "10.3.3.3".parse().ok();
    assert_eq!(a.decide(&f), Decision::Allow);
    f.method = "POST";
    assert_eq!(a.decide(&f), Decision::Deny("no ServiceRoleBinding matched".into()));
    // v3 is outside the role's constraint.
    let v3 = vec![("app".to_string(), "reviews".to_string()), ("version".to_string(), "v3".to_string())];
    let mut g = facts("GET", "/reviews/1", &jason, "10.3.3.3");
    g.labels = &v3;
    assert_eq!(
        Authz::for_workload(&cfg, "bookinfo", &v3, "reviews").decide(&g),
        Decision::Deny("no ServiceRoleBinding matched".into())
    );
    // Another namespace is not included: RBAC is off there.
    assert!(Authz::for_workload(&cfg, "other", &v1, "reviews").is_empty());
}

#[test]
fn bad_documents_name_the_key() {
    for (yaml, key) in [
        ("kind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {action: AUDIT}\n", "spec.action"),
        (
            "kind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {rules: [{when: [{key: source.color, values: [x]}]}]}\n",
            "key",
        ),
        (
            "kind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {rules: [{from: [{source: {ipBlocks: [10.0.0.0/40]}}]}]}\n",
            "ipBlocks",
        ),
        (
            "kind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {rules: [{to: [{operation: {method: [GET]}}]}]}\n",
            "method",
        ),
        ("kind: ClusterRbacConfig\nmetadata: {name: default}\nspec: {mode: MAYBE}\n", "spec.mode"),
    ] {
        let text = format!("apiVersion: security.istio.io/v1beta1\n{yaml}");
        let (_, errors) = load_str("bad.yaml", &text, "default");
        assert_eq!(errors.len(), 1, "{yaml}: {errors:?}");
        let e = errors[0].to_string();
        assert!(e.contains("bad.yaml") && e.contains(key), "{e}");
    }
}
