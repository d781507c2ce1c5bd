//! `mixr serve` end to end: Check and Report over gRPC with compressed attributes, hot
//! reload, invalid reloads, graceful shutdown.

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

use mixr_e2e::{Mixr, check_request, eventually, precondition};
use mixr_proto::istio::mixer::v1::report_request::RepeatedAttributesSemantics;
use mixr_proto::istio::mixer::v1::{CompressedAttributes, ReportRequest};
use mixr_rules::bag::Encoder;
use mixr_rules::bag::referenced::decode_referenced;
use mixr_rules::value::{MapVal, StringMap, Value, ip_to_bytes};

const POLICY: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: denyv3}
spec:
  compiledAdapter: denier
  params:
    status: {code: 7, message: Not allowed}
    validDuration: 7s
    validUseCount: 50
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: nothing}
spec: {compiledTemplate: checknothing}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: denyv3}
spec:
  match: destination.labels["app"] == "ratings" && source.labels["version"] == "v3"
  actions:
  - {handler: denyv3, instances: [nothing]}
---
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: nets}
spec:
  compiledAdapter: listchecker
  params:
    entryType: IP_ADDRESSES
    overrides: ["10.0.0.0/8"]
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: srcip}
spec:
  compiledTemplate: listentry
  params: {value: source.ip}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: nets}
spec:
  match: destination.labels["app"] == "details"
  actions:
  - {handler: nets, instances: [srcip]}
  requestHeaderOperations:
  - name: x-checked
    values: ['"yes"']
  - name: x-user
    values: ['request.headers["end-user"] | ""']
"#;

fn map(pairs: &[(&str, &str)]) -> Value<'static> {
    Value::StringMap(MapVal::from(StringMap::new(
        pairs.iter().map(|(k, v)| (Cow::Owned(k.to_string()), Cow::Owned(v.to_string()))).collect(),
    )))
}

fn ip(text: &str) -> Value<'static> {
    Value::Bytes(Cow::Owned(ip_to_bytes(text.parse().unwrap())))
}

fn write_policy(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("policy.yaml");
    // Write then rename, as deploy tools do, so the watcher never sees half a file.
    let tmp = dir.join(".policy.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

#[tokio::test]
async fn check_denies_and_allows_with_exact_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(dir.path(), POLICY);
    let mixr = Mixr::start(&[&path], &[]);
    let mut client = mixr.client().await;

    let denied = client
        .check(check_request(&[
            ("destination.labels", map(&[("app", "ratings")])),
            ("source.labels", map(&[("app", "reviews"), ("version", "v3")])),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(precondition(&denied), (7, "denyv3.istio-system:Not allowed".to_string()));
    let p = denied.precondition.as_ref().unwrap();
    assert_eq!(p.valid_duration.unwrap().seconds, 7);
    assert_eq!(p.valid_use_count, 50);

    let allowed = client
        .check(check_request(&[
            ("destination.labels", map(&[("app", "ratings")])),
            ("source.labels", map(&[("version", "v2")])),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(precondition(&allowed), (0, String::new()));
    // No check ran: Mixer's default validity.
    let p = allowed.precondition.as_ref().unwrap();
    assert_eq!((p.valid_duration.unwrap().seconds, p.valid_use_count), (60, 10000));

    let outsider = client
        .check(check_request(&[("destination.labels", map(&[("app", "details")])), ("source.ip", ip("192.168.0.1"))]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(precondition(&outsider), (7, "nets.istio-system:192.168.0.1 is not whitelisted".to_string()));

    let insider = client
        .check(check_request(&[
            ("destination.labels", map(&[("app", "details")])),
            ("source.ip", ip("10.1.2.3")),
            ("request.headers", map(&[("end-user", "jason")])),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(precondition(&insider).0, 0);
    let ops = &insider.precondition.as_ref().unwrap().route_directive.as_ref().unwrap().request_header_operations;
    let got: Vec<(&str, &str)> = ops.iter().map(|o| (o.name.as_str(), o.value.as_str())).collect();
    assert_eq!(got, vec![("x-checked", "yes"), ("x-user", "jason")]);

    // Referenced attributes: what the answer depended on, so a proxy can cache it.
    let refs =
        decode_referenced(insider.precondition.as_ref().unwrap().referenced_attributes.as_ref().unwrap()).unwrap();
    let names: Vec<String> = refs
        .iter()
        .map(|r| format!("{}{}", r.name, r.map_key.as_ref().map(|k| format!("[{k}]")).unwrap_or_default()))
        .collect();
    assert_eq!(names, vec!["destination.labels[app]", "request.headers[end-user]", "source.ip"]);
    mixr.terminate();
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(dir.path(), POLICY);
    let mixr = Mixr::start(&[&path], &[]);
    let mut client = mixr.client().await;

    let mut attrs = CompressedAttributes::default();
    attrs.strings.insert(-5, 3);
    let req = mixr_proto::istio::mixer::v1::CheckRequest {
        attributes: Some(attrs),
        global_word_count: 222,
        ..Default::default()
    };
    let err = client.check(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("word index -5 is out of range"), "{}", err.message());

    let req = mixr_proto::istio::mixer::v1::CheckRequest { global_word_count: 500, ..Default::default() };
    let err = client.check(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Internal);
    assert!(err.message().contains("inconsistent global dictionary versions"));

    let mut attrs = CompressedAttributes::default();
    attrs.bytes.insert(0, vec![1, 2, 3]);
    let req = mixr_proto::istio::mixer::v1::CheckRequest {
        attributes: Some(attrs),
        global_word_count: 222,
        ..Default::default()
    };
    let err = client.check(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("source.ip: an IP address must be 4 or 16 bytes"));

    // The server is still healthy afterwards.
    let ok = client.check(check_request(&[])).await.unwrap().into_inner();
    assert_eq!(precondition(&ok).0, 0);
    assert_eq!(mixr.terminate().code(), Some(0));
}

#[tokio::test]
async fn short_global_dictionary_moves_names_into_reply_words() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(dir.path(), POLICY);
    let mixr = Mixr::start(&[&path], &[]);
    let mut client = mixr.client().await;
    let mut req = check_request(&[("destination.labels", map(&[("app", "details")])), ("source.ip", ip("10.0.0.1"))]);
    // A caller built against an older, shorter dictionary: encode every name locally.
    let mut enc_words = Vec::new();
    let mut ca = CompressedAttributes::default();
    enc_words.push("destination.labels".to_string());
    enc_words.push("app".to_string());
    enc_words.push("details".to_string());
    enc_words.push("source.ip".to_string());
    let mut m = mixr_proto::istio::mixer::v1::StringMap::default();
    m.entries.insert(-2, -3);
    ca.string_maps.insert(-1, m);
    ca.bytes.insert(-4, vec![10, 0, 0, 1]);
    ca.words = enc_words;
    req.attributes = Some(ca);
    req.global_word_count = 1;
    let resp = client.check(req).await.unwrap().into_inner();
    let refs = resp.precondition.unwrap().referenced_attributes.unwrap();
    for m in &refs.attribute_matches {
        assert!(m.name < 1, "name index {} is beyond the caller's dictionary", m.name);
    }
    let decoded = decode_referenced(&refs).unwrap();
    let source_ip = decoded.iter().find(|r| r.name == "source.ip").expect("source.ip referenced");
    assert_eq!(source_ip.condition, mixr_rules::bag::Condition::Exact);
    assert!(refs.words.contains(&"destination.labels".to_string()));
    assert!(refs.words.contains(&"app".to_string()));
}

#[tokio::test]
async fn report_accepts_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(dir.path(), POLICY);
    let mixr = Mixr::start(&[&path], &[]);
    let mut client = mixr.client().await;
    let mut enc = Encoder::new();
    let entries: Vec<CompressedAttributes> = (0..10)
        .map(|i| {
            let attrs =
                [("request.path", Value::String(format!("/p{i}").into())), ("response.code", Value::Int64(200))];
            enc.encode(attrs.iter().map(|(n, v)| (*n, v)))
        })
        .collect();
    let req = ReportRequest {
        attributes: entries,
        default_words: enc.into_words(),
        global_word_count: Encoder::global_word_count(),
        repeated_attributes_semantics: RepeatedAttributesSemantics::IndependentEncoding as i32,
    };
    client.report(req).await.unwrap();
    assert_eq!(mixr.metric("mixr_report_entries_total{api=\"mixer\"}").await, Some(10.0));

    let mut bad = CompressedAttributes::default();
    bad.int64s.insert(-99, 1);
    let err = client
        .report(ReportRequest { attributes: vec![bad], global_word_count: 222, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

async fn answer(mixr: &Mixr) -> (i32, String) {
    let mut client = mixr.client().await;
    let resp = client
        .check(check_request(&[
            ("destination.labels", map(&[("app", "ratings")])),
            ("source.labels", map(&[("version", "v3")])),
        ]))
        .await
        .unwrap()
        .into_inner();
    precondition(&resp)
}

#[tokio::test]
async fn hot_reload_changes_answers_and_invalid_config_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(dir.path(), POLICY);
    let mixr = Mixr::start(&[dir.path()], &[]);
    assert_eq!(answer(&mixr).await.0, 7);

    // Edit: the denier now answers UNAUTHENTICATED with another message.
    write_policy(dir.path(), &POLICY.replace("{code: 7, message: Not allowed}", "{code: 16, message: Log in first}"));
    let changed = eventually(Duration::from_secs(10), || async { answer(&mixr).await.0 == 16 }).await;
    assert!(changed, "reload did not change the answer; logs:\n{}", mixr.logs());
    assert_eq!(answer(&mixr).await.1, "denyv3.istio-system:Log in first");
    assert_eq!(mixr.metric("mixr_config_generation").await, Some(2.0));

    // An invalid edit: rejected, counted, and the last good config keeps answering.
    write_policy(dir.path(), &POLICY.replace("compiledAdapter: denier", "compiledAdapter: nosuch"));
    let rejected = eventually(Duration::from_secs(10), || async {
        // At least once: the watcher may report one edit as two events, each a rejection.
        mixr.metric("mixr_config_reloads_total{result=\"failed\"}").await.is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(rejected, "invalid reload not counted; logs:\n{}", mixr.logs());
    assert_eq!(answer(&mixr).await, (16, "denyv3.istio-system:Log in first".to_string()));
    assert_eq!(mixr.metric("mixr_config_generation").await, Some(2.0));
    assert!(
        mixr.logs().contains("unknown adapter \\\"nosuch\\\"") || mixr.logs().contains("unknown adapter \"nosuch\"")
    );
    let (status, body) = mixr.http_get("/readyz").await;
    assert_eq!((status, body.trim()), (200, "ready, config generation 2"));

    // Removing the rule allows the request.
    let _ = path;
    write_policy(
        dir.path(),
        POLICY
            .split("---")
            .filter(|d| !d.contains("kind: rule\nmetadata: {name: denyv3}"))
            .collect::<Vec<_>>()
            .join("---")
            .as_str(),
    );
    assert!(eventually(Duration::from_secs(10), || async { answer(&mixr).await.0 == 0 }).await);
    assert_eq!(mixr.terminate().code(), Some(0));
}

#[tokio::test]
async fn sighup_reloads_when_watching_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(dir.path(), POLICY);
    let mixr = Mixr::start(&[&path], &["--no-watch"]);
    assert_eq!(answer(&mixr).await.0, 7);
    write_policy(dir.path(), &POLICY.replace("code: 7,", "code: 9,"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(answer(&mixr).await.0, 7, "without watching, nothing changes until SIGHUP");
    mixr.signal("HUP");
    assert!(eventually(Duration::from_secs(10), || async { answer(&mixr).await.0 == 9 }).await);
    let (_, summary) = mixr.http_get("/debug/config").await;
    assert!(summary.contains("\"generation\": 2"), "{summary}");
    assert!(summary.contains("denyv3.rule.istio-system"), "{summary}");
}

#[tokio::test]
async fn invalid_initial_config_fails_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(dir.path(), "apiVersion: v1\nkind: rule\nmetadata: {name: r}\nspec: {match: 'nope =='}\n");
    let out = std::process::Command::new(mixr_e2e::binary("mixr"))
        .args(["serve", "--grpc-addr=127.0.0.1:0", "--monitoring-addr=127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("document 1 (rule r): spec.match"), "{stderr}");
}

#[tokio::test]
async fn direct_http_response_becomes_a_route_directive() {
    let policy = r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: login}
spec:
  compiledAdapter: denier
  params:
    status:
      code: 16
      message: log in first
      details:
      - '@type': type.googleapis.com/istio.policy.v1beta1.DirectHttpResponse
        code: 302
        body: see /login
        headers: {location: /login}
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: nothing}
spec: {compiledTemplate: checknothing}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: private}
spec:
  match: request.path.startsWith("/private")
  actions: [{handler: login, instances: [nothing]}]
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = write_policy(dir.path(), policy);
    let mixr = Mixr::start(&[&path], &[]);
    let mut client = mixr.client().await;
    let resp = client
        .check(check_request(&[("request.path", Value::String("/private/x".into()))]))
        .await
        .unwrap()
        .into_inner();
    let p = resp.precondition.unwrap();
    let status = p.status.unwrap();
    assert_eq!((status.code, status.message.as_str()), (16, "login.istio-system:log in first"));
    assert_eq!(status.details[0].type_url, "type.googleapis.com/istio.policy.v1beta1.DirectHttpResponse");
    let rd = p.route_directive.unwrap();
    assert_eq!((rd.direct_response_code, rd.direct_response_body.as_str()), (302, "see /login"));
    let loc = rd.response_header_operations.iter().find(|o| o.name == "location").unwrap();
    assert_eq!(loc.value, "/login");
}
