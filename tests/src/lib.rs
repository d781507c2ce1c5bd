//! Helpers for end-to-end tests: run the real `mixr` binary on free loopback ports, talk
//! to it over gRPC and HTTP, and stop it cleanly.
//!
//! The binary is found next to the test executable (`target/<profile>/mixr`), where
//! `cargo test --workspace` builds it; `MIXR_BIN` overrides the path.

pub mod backend;
pub mod gateway;
pub mod kube_api;
pub mod kube_schema;
pub mod mesh;
pub mod netns;
pub mod raw_http;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use mixr_proto::istio::mixer::v1::mixer_client::MixerClient;
use mixr_proto::istio::mixer::v1::{CheckRequest, CheckResponse};
use mixr_rules::bag::Encoder;
use mixr_rules::value::Value;
use tonic::transport::Channel;

/// Path of a workspace binary (`mixr`, later `mixr-proxy`).
pub fn binary(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!("{}_BIN", name.to_uppercase().replace('-', "_"))) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not found: run `cargo test --workspace` (it builds the binaries) or set {}_BIN",
        bin.display(),
        name.to_uppercase()
    );
    bin
}

/// A running `mixr serve`. Killed on drop if still running.
pub struct Mixr {
    child: Child,
    pub grpc: String,
    pub monitoring: String,
    _dir: tempfile::TempDir,
    pub log: PathBuf,
    /// What mixr wrote on stdout (the `stdio` adapter's default output).
    pub stdout: PathBuf,
}

impl Mixr {
    /// Starts `mixr serve --config <paths> <extra...>` on free ports and waits until it
    /// listens (at most 20 s).
    pub fn start(config: &[&Path], extra: &[&str]) -> Mixr {
        Mixr::start_wrapped(&[], config, extra)
    }

    /// Like [`Mixr::start`], run through `wrapper` (`prlimit --nofile=64:64`, say).
    pub fn start_wrapped(wrapper: &[&str], config: &[&Path], extra: &[&str]) -> Mixr {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr_file = dir.path().join("addrs");
        let log = dir.path().join("mixr.log");
        let stdout = dir.path().join("stdout.log");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary("mixr"));
                c
            }
            None => Command::new(binary("mixr")),
        };
        cmd.arg("serve").arg("--grpc-addr=127.0.0.1:0").arg("--monitoring-addr=127.0.0.1:0");
        cmd.arg("--addr-file").arg(&addr_file);
        if !extra.contains(&"--data-dir") {
            cmd.arg("--data-dir").arg(dir.path().join("data"));
        }
        for c in config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(extra);
        cmd.env("RUST_LOG", "info");
        cmd.stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = cmd.spawn().expect("start mixr");
        let deadline = Instant::now() + Duration::from_secs(20);
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&addr_file) {
                break t;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mixr exited with {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "mixr did not start listening in time");
            std::thread::sleep(Duration::from_millis(20));
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k} in {text}"))
                .to_string()
        };
        Mixr { grpc: field("grpc"), monitoring: field("monitoring"), child, _dir: dir, log, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn client(&self) -> MixerClient<Channel> {
        MixerClient::connect(format!("http://{}", self.grpc)).await.expect("connect to mixr")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().expect("kill");
        assert!(ok.success());
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "mixr did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// GET on the monitoring port.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("http://{}{path}", self.monitoring)).await.expect("monitoring GET");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    /// The value of one sample on `/metrics` (first line starting with `series`).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics").await;
        body.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// The sum of the series of metric `name` whose labels include every one of `labels`,
    /// or `None` when none does.
    pub async fn metric_where(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let (_, body) = self.http_get("/metrics").await;
        sum_series(&body, name, labels)
    }
}

/// In Prometheus's text format `text`: the sum of the series of metric `name` whose labels
/// include every one of `labels` (the others may be anything), or `None` when none does.
pub fn sum_series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (set, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((set, value)) => (set, value),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(value) => ("", value),
                None => continue,
            },
        };
        // Label values here never hold `",`, so splitting on it is exact.
        let pairs: Vec<&str> = set.split("\",").map(|p| p.trim_end_matches('"')).collect();
        let has = |w: &String| pairs.iter().any(|p| *p == w.trim_end_matches('"'));
        if wanted.iter().all(has)
            && let Ok(v) = value.trim().parse::<f64>()
        {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

impl Drop for Mixr {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Check request carrying `attrs`, compressed as a proxy does.
pub fn check_request(attrs: &[(&str, Value<'_>)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(Encoder::encode_message(attrs.iter().map(|(n, v)| (*n, v)))),
        global_word_count: Encoder::global_word_count(),
        ..Default::default()
    }
}

/// The precondition's (code, message).
pub fn precondition(resp: &CheckResponse) -> (i32, String) {
    let s = resp.precondition.as_ref().and_then(|p| p.status.clone()).unwrap_or_default();
    (s.code, s.message)
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running `mixr-proxy`. Killed on drop if still running.
pub struct MixrProxy {
    child: Child,
    pub outbound: String,
    pub inbound: String,
    pub admin: String,
    pub stats: String,
    _dir: tempfile::TempDir,
    pub log: PathBuf,
}

impl MixrProxy {
    /// Starts `mixr-proxy --config <paths> <extra...>` on free ports (at most 20 s).
    pub fn start(config: &[&Path], extra: &[&str]) -> MixrProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr_file = dir.path().join("addrs");
        let log = dir.path().join("proxy.log");
        let mut cmd = Command::new(binary("mixr-proxy"));
        for flag in ["--outbound-addr", "--inbound-addr", "--admin-addr", "--stats-addr"] {
            cmd.arg(flag).arg("127.0.0.1:0");
        }
        cmd.arg("--addr-file").arg(&addr_file);
        for c in config {
            cmd.arg("--config").arg(c);
        }
        cmd.args(extra).stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = cmd.spawn().expect("start mixr-proxy");
        let deadline = Instant::now() + Duration::from_secs(20);
        let text = loop {
            if let Ok(t) = std::fs::read_to_string(&addr_file) {
                break t;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mixr-proxy exited with {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "mixr-proxy did not start listening in time");
            std::thread::sleep(Duration::from_millis(20));
        };
        let field = |k: &str| {
            text.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).unwrap_or_else(|| panic!("no {k}")).to_string()
        };
        MixrProxy {
            outbound: field("outbound"),
            inbound: field("inbound"),
            admin: field("admin"),
            stats: field("stats"),
            child,
            _dir: dir,
            log,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for MixrProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mixr ca-token ACCOUNT`: the token (for the workload) and the line for the tokens file.
pub fn ca_token(account: &str) -> (String, String) {
    let out = Command::new(binary("mixr")).args(["ca-token", account]).output().expect("run mixr ca-token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .trim()
            .to_string()
    };
    (field("token:"), field("line:"))
}

/// `promtool check metrics` on an exposition: `Err` with promtool's complaints, `Ok(false)`
/// when promtool is not installed (CI installs it; callers say the lint was skipped).
pub fn promtool_lint(exposition: &str) -> Result<bool, String> {
    use std::io::Write;
    let Ok(mut promtool) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return Ok(false);
    };
    promtool.stdin.take().expect("piped").write_all(exposition.as_bytes()).map_err(|e| e.to_string())?;
    let out = promtool.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(true)
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn series_are_summed_over_the_labels_not_named() {
        let text = "# HELP x_total x\nx_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"1\",b=\"3\"} 4\nx_total_other{a=\"1\"} 9\nx_total{a=\"10\"} 5\ny 2\n";
        assert_eq!(super::sum_series(text, "x_total", &[("a", "1")]), Some(7.0));
        assert_eq!(super::sum_series(text, "x_total", &[("a", "1"), ("b", "3")]), Some(4.0));
        assert_eq!(super::sum_series(text, "x_total", &[]), Some(12.0));
        assert_eq!(super::sum_series(text, "x_total", &[("a", "2")]), None);
        assert_eq!(super::sum_series(text, "y", &[]), Some(2.0));
    }
}
