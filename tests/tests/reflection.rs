//! gRPC reflection as a real client uses it: Python's grpcio and grpcio-reflection (as
//! grpcurl or Postman would) list mixr's services through reflection v1alpha and v1,
//! resolve their files and every import by name, then call Envoy's rate-limit and
//! ext_authz services with messages built only from the served descriptors.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mixr_e2e::Mixr;
use serde_json::{Value, json};

/// A denier on one ext_authz path, and a rate limit of 1 for the RLS domain the client
/// uses: answers the client can only get right if its messages encode as Envoy's.
const POLICY: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: private}
spec:
  compiledAdapter: denier
  params: {status: {code: 7, message: private path}}
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
  match: (request.path | "") == "/private" && request.headers["end-user"] == "jason"
  actions: [{handler: private, instances: [nothing]}]
---
apiVersion: config.istio.io/v1alpha2
kind: handler
metadata: {name: limits}
spec:
  compiledAdapter: memquota
  params:
    quotas: [{name: perkey, maxAmount: 1, validDuration: 60s}]
---
apiVersion: config.istio.io/v1alpha2
kind: instance
metadata: {name: perkey}
spec:
  compiledTemplate: quota
  params: {dimensions: {key: 'ratelimit.descriptor["generic_key"] | "none"'}}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: limits}
spec:
  match: (ratelimit.domain | "") == "reflection"
  actions: [{handler: limits, instances: [perkey]}]
"#;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/reflection_client.py")
}

/// Runs the Python client against `addr`, for at most a minute; its JSON report.
fn run_client(addr: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out.json"), dir.path().join("err.txt"));
    let mut child = Command::new("python3")
        .arg(script())
        .arg(addr)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("python3 runs (bash .ci/services.sh installs grpcio and grpcio-reflection)");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the reflection client did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(status.success(), "reflection client failed ({status}):\n{stderr}");
    let stdout = std::fs::read_to_string(&out).unwrap();
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

#[test]
fn reflection_v1_and_v1alpha_list_and_resolve_every_service() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mixr = Mixr::start(&[&policy], &[]);
    let report = run_client(&mixr.grpc);

    let every_service = json!([
        "envoy.service.auth.v3.Authorization",
        "envoy.service.ratelimit.v3.RateLimitService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "istio.mixer.v1.Mixer",
    ]);
    for version in ["v1", "v1alpha"] {
        let r = &report[version];
        assert_eq!(r["services"], every_service, "{version}");
        let resolved = &r["resolved"];
        assert_eq!(
            resolved["envoy.service.ratelimit.v3.RateLimitService"],
            json!({
                "file": "envoy/service/ratelimit/v3/rls.proto",
                "methods": {"ShouldRateLimit": [
                    "envoy.service.ratelimit.v3.RateLimitRequest",
                    "envoy.service.ratelimit.v3.RateLimitResponse"
                ]}
            }),
            "{version}"
        );
        assert_eq!(
            resolved["envoy.service.auth.v3.Authorization"],
            json!({
                "file": "envoy/service/auth/v3/external_auth.proto",
                "methods": {"Check": ["envoy.service.auth.v3.CheckRequest", "envoy.service.auth.v3.CheckResponse"]}
            }),
            "{version}"
        );
        assert_eq!(
            resolved["istio.mixer.v1.Mixer"],
            json!({
                "file": "istio/mixer/v1/mixer.proto",
                "methods": {
                    "Check": ["istio.mixer.v1.CheckRequest", "istio.mixer.v1.CheckResponse"],
                    "Report": ["istio.mixer.v1.ReportRequest", "istio.mixer.v1.ReportResponse"]
                }
            }),
            "{version}"
        );
        assert_eq!(resolved["grpc.health.v1.Health"]["methods"]["Check"][0], "grpc.health.v1.HealthCheckRequest");
    }

    // Messages built from the served descriptors mean to the server what Envoy means.
    assert_eq!(
        report["rate_limit"],
        json!([
            {"overall_code": "OK", "requests_per_unit": 1, "limit_remaining": 0},
            {"overall_code": "OVER_LIMIT", "requests_per_unit": 1, "limit_remaining": 0}
        ])
    );
    assert_eq!(report["authz"]["/public"]["code"], 0, "{}", report["authz"]);
    assert_eq!(report["authz"]["/private"]["code"], 7, "{}", report["authz"]);
    assert_eq!(report["authz"]["/private"]["http_status"], 403, "{}", report["authz"]);
    assert!(
        report["authz"]["/private"]["message"].as_str().unwrap_or_default().contains("private path"),
        "{}",
        report["authz"]
    );
}
