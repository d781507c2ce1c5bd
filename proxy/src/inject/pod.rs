//! Injecting one pod template: the sidecar container, the init container that installs the
//! capture rules, the config volume, and the annotations.
//!
//! An earlier injection (ours, found by its container, init container and volume names) is
//! removed first, so injecting again changes nothing, and injecting with other options (a
//! new image) replaces it.

use yaml_serde::{Mapping, Value};

use super::{InjectError, Options, invalid};
use crate::capture::{self, CaptureError};

pub const SIDECAR: &str = "mixr-proxy";
pub const INIT: &str = "mixr-init";
pub const CONFIG_VOLUME: &str = "mixr-proxy-config";
pub const CONFIG_DIR: &str = "/etc/mixr-proxy";
/// With `--mesh-identity`: the volume holding the workload's CA bootstrap token, from the
/// Secret `mixr-ca-token-<service account>`, and where the sidecar reads it.
pub const TOKEN_VOLUME: &str = "mixr-ca-token";
pub const TOKEN_DIR: &str = "/var/run/secrets/mixr-ca";
/// Where the image keeps the binary: its entrypoint is `mixr`, so the containers name it.
pub const BINARY: &str = "/usr/local/bin/mixr-proxy";
/// Istio's: what was injected, and the mark that a pod has a sidecar.
pub const STATUS: &str = "sidecar.istio.io/status";
/// Istio's per-pod opt-out (`"false"`).
pub const INJECT: &str = "sidecar.istio.io/inject";

/// Istio's capture annotations and the `mixr-proxy iptables` flags they become.
const CAPTURE_ANNOTATIONS: [(&str, &str); 4] = [
    ("traffic.sidecar.istio.io/includeOutboundIPRanges", "--include-outbound-ip-ranges"),
    ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "--exclude-outbound-ip-ranges"),
    ("traffic.sidecar.istio.io/excludeOutboundPorts", "--exclude-outbound-ports"),
    ("traffic.sidecar.istio.io/excludeInboundPorts", "--exclude-inbound-ports"),
];

/// Where a template is, for errors: the document, and the template's key path (`spec.
/// template.`, or empty for a Pod).
#[derive(Debug)]
pub struct Where<'a> {
    pub place: &'a str,
    pub prefix: &'a str,
}

impl Where<'_> {
    fn err(&self, key: &str, reason: impl Into<String>) -> InjectError {
        invalid(self.place, &format!("{}{key}", self.prefix), reason)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped(String),
}

fn s(text: impl Into<String>) -> Value {
    Value::String(text.into())
}

fn num(n: u16) -> Value {
    Value::Number(u64::from(n).into())
}

fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Mapping(pairs.into_iter().map(|(k, v)| (s(k), v)).collect())
}

/// A mapping under `key`, or `None` when absent; anything else is an error.
fn mapping<'a>(parent: &'a Mapping, key: &str, at: &Where, path: &str) -> Result<Option<&'a Mapping>, InjectError> {
    match parent.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Mapping(m)) => Ok(Some(m)),
        Some(_) => Err(at.err(path, "expected a mapping")),
    }
}

/// The mapping under `key`, created when absent (or null).
fn mapping_mut<'a>(parent: &'a mut Mapping, key: &str, at: &Where, path: &str) -> Result<&'a mut Mapping, InjectError> {
    let slot = parent.entry(s(key)).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Mapping(Mapping::new());
    }
    slot.as_mapping_mut().ok_or_else(|| at.err(path, "expected a mapping"))
}

/// The list under `key`, created when absent; an error when it is something else.
fn list_mut<'a>(parent: &'a mut Mapping, key: &str, at: &Where) -> Result<&'a mut Vec<Value>, InjectError> {
    let slot = parent.entry(s(key)).or_insert(Value::Sequence(Vec::new()));
    if slot.is_null() {
        *slot = Value::Sequence(Vec::new());
    }
    match slot {
        Value::Sequence(items) => Ok(items),
        _ => Err(at.err(&format!("spec.{key}"), "expected a list")),
    }
}

/// Go's strconv.ParseBool, which Istio read `sidecar.istio.io/inject` with.
fn parse_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(t) => match t.as_str() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
            "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Drops the items of a list whose `name` is `name`; every item must be a named mapping.
fn remove_named(items: &mut Vec<Value>, name: &str, at: &Where, key: &str) -> Result<(), InjectError> {
    for (i, item) in items.iter().enumerate() {
        if item.get("name").and_then(Value::as_str).is_none() {
            return Err(at.err(&format!("spec.{key}[{i}].name"), "missing (every item needs a name)"));
        }
    }
    items.retain(|item| item.get("name").and_then(Value::as_str) != Some(name));
    Ok(())
}

/// The `mixr-proxy iptables` flags the capture annotations ask for, each checked.
fn capture_args(annotations: Option<&Mapping>, at: &Where) -> Result<Vec<String>, InjectError> {
    let mut args = Vec::new();
    for (annotation, flag) in CAPTURE_ANNOTATIONS {
        let Some(value) = annotations.and_then(|a| a.get(annotation)) else { continue };
        let key = format!("metadata.annotations.{annotation}");
        let Some(text) = value.as_str() else { return Err(at.err(&key, "expected a string")) };
        let checked = match flag {
            "--include-outbound-ip-ranges" => capture::rules::parse_ranges(&key, text).map(drop),
            "--exclude-outbound-ip-ranges" => capture::rules::parse_cidrs(&key, text).map(drop),
            _ => capture::rules::parse_ports(&key, text).map(drop),
        };
        if let Err(CaptureError::Invalid { value, reason, .. }) = checked {
            return Err(at.err(&key, format!("{value:?}: {reason}")));
        }
        args.push(format!("{flag}={}", text.trim()));
    }
    Ok(args)
}

/// The port inbound traffic goes to: the first port an app container declares. Ports the
/// sidecar itself listens on are refused (both would fail to bind).
fn app_port(containers: &[Value], at: &Where) -> Result<Option<u16>, InjectError> {
    let ours = [capture::ADMIN_PORT, capture::OUTBOUND_PORT, capture::INBOUND_PORT, capture::STATS_PORT];
    let mut first = None;
    for (i, c) in containers.iter().enumerate() {
        let Some(ports) = c.get("ports") else { continue };
        let Some(ports) = ports.as_sequence() else {
            return Err(at.err(&format!("spec.containers[{i}].ports"), "expected a list"));
        };
        for (j, p) in ports.iter().enumerate() {
            let key = format!("spec.containers[{i}].ports[{j}].containerPort");
            let port = p.get("containerPort").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok());
            let Some(port) = port.filter(|p| *p > 0) else { return Err(at.err(&key, "expected a port number")) };
            if ours.contains(&port) {
                return Err(at.err(&key, format!("{port} is a port of the sidecar")));
            }
            first = first.or(Some(port));
        }
    }
    Ok(first)
}

fn env_field(name: &str, path: &str) -> Value {
    map([("name", s(name)), ("valueFrom", map([("fieldRef", map([("fieldPath", s(path))]))]))])
}

fn sidecar(workload: &str, labels: &[String], app_port: Option<u16>, options: &Options) -> Value {
    let any = if options.ipv6 { "[::]" } else { "0.0.0.0" };
    let outbound = if options.ipv6 { "[::]" } else { "127.0.0.1" };
    let mut args = vec![
        format!("--outbound-addr={outbound}:{}", capture::OUTBOUND_PORT),
        format!("--inbound-addr={any}:{}", capture::INBOUND_PORT),
        // The kubelet probes /ready and Prometheus scrapes from outside the pod.
        format!("--admin-addr={any}:{}", capture::ADMIN_PORT),
        format!("--stats-addr={any}:{}", capture::STATS_PORT),
    ];
    if let Some(port) = app_port {
        args.push(format!("--app-addr=127.0.0.1:{port}"));
    }
    args.push(format!("--workload={workload}"));
    // Kubernetes expands $(VAR) in args from the container's env: the downward API below.
    args.push("--namespace=$(POD_NAMESPACE)".into());
    args.push("--service-account=$(SERVICE_ACCOUNT)".into());
    let mut env = vec![
        env_field("POD_NAME", "metadata.name"),
        env_field("POD_NAMESPACE", "metadata.namespace"),
        env_field("INSTANCE_IP", "status.podIP"),
        env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ];
    for (i, key) in labels.iter().enumerate() {
        let var = format!("MIXR_LABEL_{i}");
        args.push(format!("--label={key}=$({var})"));
        env.push(env_field(&var, &format!("metadata.labels['{key}']")));
    }
    args.push(format!("--config={CONFIG_DIR}"));
    if !options.mixr.is_empty() {
        args.push(format!("--mixr={}", options.mixr));
    }
    if options.mesh_identity {
        args.push(format!("--ca-token-file={TOKEN_DIR}/token"));
    }
    args.push("--log-format=json".into());
    let port = |name: &str, n: u16| map([("name", s(name)), ("containerPort", num(n)), ("protocol", s("TCP"))]);
    let mount =
        |name: &str, path: &str| map([("name", s(name)), ("mountPath", s(path)), ("readOnly", Value::Bool(true))]);
    let mut mounts = vec![mount(CONFIG_VOLUME, CONFIG_DIR)];
    if options.mesh_identity {
        mounts.push(mount(TOKEN_VOLUME, TOKEN_DIR));
    }
    map([
        ("name", s(SIDECAR)),
        ("image", s(&options.image)),
        ("imagePullPolicy", s("IfNotPresent")),
        ("command", Value::Sequence(vec![s(BINARY)])),
        ("args", Value::Sequence(args.into_iter().map(s).collect())),
        ("env", Value::Sequence(env)),
        (
            "ports",
            Value::Sequence(vec![
                port("mixr-outbound", capture::OUTBOUND_PORT),
                port("mixr-inbound", capture::INBOUND_PORT),
                port("mixr-admin", capture::ADMIN_PORT),
                port("http-envoy-prom", capture::STATS_PORT),
            ]),
        ),
        (
            "readinessProbe",
            map([
                ("httpGet", map([("path", s("/ready")), ("port", num(capture::ADMIN_PORT))])),
                ("initialDelaySeconds", num(1)),
                ("periodSeconds", num(2)),
                ("failureThreshold", num(30)),
            ]),
        ),
        (
            "resources",
            map([
                ("requests", map([("cpu", s("100m")), ("memory", s("128Mi"))])),
                ("limits", map([("cpu", s("2")), ("memory", s("1Gi"))])),
            ]),
        ),
        (
            "securityContext",
            map([
                ("runAsUser", Value::Number(u64::from(capture::PROXY_UID).into())),
                ("runAsGroup", Value::Number(u64::from(capture::PROXY_UID).into())),
                ("runAsNonRoot", Value::Bool(true)),
                ("allowPrivilegeEscalation", Value::Bool(false)),
                ("privileged", Value::Bool(false)),
                ("readOnlyRootFilesystem", Value::Bool(true)),
                ("capabilities", map([("drop", Value::Sequence(vec![s("ALL")]))])),
            ]),
        ),
        ("volumeMounts", Value::Sequence(mounts)),
    ])
}

/// The init container: root with NET_ADMIN and NET_RAW only for the time it takes to
/// install the rules, as istio-init.
fn init(capture_args: Vec<String>, options: &Options) -> Value {
    let mut args = vec!["iptables".to_string(), "--apply".into(), format!("--proxy-uid={}", capture::PROXY_UID)];
    args.extend(capture_args);
    if options.ipv6 {
        args.push("--ipv6".into());
    }
    map([
        ("name", s(INIT)),
        ("image", s(&options.image)),
        ("imagePullPolicy", s("IfNotPresent")),
        ("command", Value::Sequence(vec![s(BINARY)])),
        ("args", Value::Sequence(args.into_iter().map(s).collect())),
        (
            "resources",
            map([
                ("requests", map([("cpu", s("10m")), ("memory", s("10Mi"))])),
                ("limits", map([("cpu", s("100m")), ("memory", s("50Mi"))])),
            ]),
        ),
        (
            "securityContext",
            map([
                ("runAsUser", num(0)),
                ("runAsGroup", num(0)),
                ("runAsNonRoot", Value::Bool(false)),
                ("allowPrivilegeEscalation", Value::Bool(false)),
                ("privileged", Value::Bool(false)),
                ("readOnlyRootFilesystem", Value::Bool(false)),
                (
                    "capabilities",
                    map([
                        ("add", Value::Sequence(vec![s("NET_ADMIN"), s("NET_RAW")])),
                        ("drop", Value::Sequence(vec![s("ALL")])),
                    ]),
                ),
            ]),
        ),
    ])
}

/// Istio's status annotation: what was injected, so tools can find it.
fn status(options: &Options) -> String {
    let token = if options.mesh_identity { format!(r#","{TOKEN_VOLUME}""#) } else { String::new() };
    format!(
        r#"{{"version":"mixr-{}","initContainers":["{INIT}"],"containers":["{SIDECAR}"],"volumes":["{CONFIG_VOLUME}"{token}],"imagePullSecrets":null}}"#,
        env!("CARGO_PKG_VERSION")
    )
}

/// Injects one pod template (`metadata` and `spec`).
pub fn inject(template: &mut Mapping, workload: &str, at: &Where, options: &Options) -> Result<Outcome, InjectError> {
    let meta = mapping(template, "metadata", at, "metadata")?;
    let annotations = match meta {
        Some(m) => mapping(m, "annotations", at, "metadata.annotations")?,
        None => None,
    };
    if let Some(value) = annotations.and_then(|a| a.get(INJECT)) {
        match parse_bool(value) {
            Some(false) => return Ok(Outcome::Skipped(format!("{INJECT} is \"false\""))),
            Some(true) => {}
            None => return Err(at.err(&format!("metadata.annotations.{INJECT}"), "expected \"true\" or \"false\"")),
        }
    }
    let capture_args = capture_args(annotations, at)?;
    let mut labels = Vec::new();
    if let Some(l) = meta.map(|m| mapping(m, "labels", at, "metadata.labels")).transpose()?.flatten() {
        for (k, _) in l {
            let Some(k) = k.as_str() else { return Err(at.err("metadata.labels", "keys must be strings")) };
            labels.push(k.to_string());
        }
    }

    let spec = match template.get_mut("spec") {
        Some(Value::Mapping(m)) => m,
        Some(_) => return Err(at.err("spec", "expected a mapping")),
        None => return Err(at.err("spec", "missing")),
    };
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped("hostNetwork: the capture rules would take the node's traffic".into()));
    }
    let containers = match spec.get_mut("containers") {
        Some(Value::Sequence(c)) => c,
        Some(_) => return Err(at.err("spec.containers", "expected a list")),
        None => return Err(at.err("spec.containers", "missing")),
    };
    remove_named(containers, SIDECAR, at, "containers")?;
    if containers.is_empty() {
        return Err(at.err("spec.containers", "no container besides the sidecar"));
    }
    let port = app_port(containers, at)?;
    containers.push(sidecar(workload, &labels, port, options));
    let inits = list_mut(spec, "initContainers", at)?;
    remove_named(inits, INIT, at, "initContainers")?;
    inits.push(init(capture_args, options));
    // The token Secret is named for the pod's service account, as it is at injection.
    let account = ["serviceAccountName", "serviceAccount"]
        .iter()
        .find_map(|k| spec.get(*k).and_then(Value::as_str))
        .unwrap_or("default")
        .to_string();
    let volumes = list_mut(spec, "volumes", at)?;
    remove_named(volumes, CONFIG_VOLUME, at, "volumes")?;
    remove_named(volumes, TOKEN_VOLUME, at, "volumes")?;
    volumes.push(map([
        ("name", s(CONFIG_VOLUME)),
        ("configMap", map([("name", s(&options.config_map)), ("optional", Value::Bool(true))])),
    ]));
    if options.mesh_identity {
        // Optional: the pod starts before the Secret exists, and the sidecar, which reads
        // the token again at each attempt, gets its certificate once it is there.
        volumes.push(map([
            ("name", s(TOKEN_VOLUME)),
            (
                "secret",
                map([
                    ("secretName", s(format!("mixr-ca-token-{account}"))),
                    ("optional", Value::Bool(true)),
                    ("defaultMode", num(0o440)),
                ]),
            ),
        ]));
    }

    let meta = mapping_mut(template, "metadata", at, "metadata")?;
    let annotations = mapping_mut(meta, "annotations", at, "metadata.annotations")?;
    // Scraped like Istio's sidecars, unless the pod already tells Prometheus otherwise.
    if !annotations.contains_key("prometheus.io/scrape") {
        annotations.insert(s("prometheus.io/scrape"), s("true"));
        annotations.insert(s("prometheus.io/port"), s(capture::STATS_PORT.to_string()));
        annotations.insert(s("prometheus.io/path"), s("/stats/prometheus"));
    }
    annotations.shift_remove(STATUS);
    annotations.insert(s(STATUS), s(status(options)));
    Ok(Outcome::Injected)
}
