//! The `bookinfo` binary as a user runs it: copied away from the checkout it still has its
//! telemetry (the config is compiled in), and SIGTERM or SIGINT stop mixr and the sidecars
//! and remove the directory it wrote.
//!
//! mixr and mixr-proxy are taken from beside cargo's `bookinfo` (`target/<profile>/`), where
//! `cargo test --workspace` builds them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn built(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_bookinfo")).with_file_name(name);
    assert!(path.exists(), "{} not found: run `cargo test --workspace`, which builds it", path.display());
    path
}

/// A running demo; stopped with SIGTERM (then SIGKILL) if a test fails halfway.
struct Demo {
    child: Child,
    page: String,
    monitoring: String,
    config_dir: PathBuf,
    _copy: tempfile::TempDir,
}

impl Demo {
    /// Runs a copy of `bookinfo` from a directory of its own, as an installed binary would
    /// be, and waits (at most 60 s) until it says it is up.
    fn start() -> Demo {
        let copy = tempfile::tempdir().unwrap();
        let exe = copy.path().join("bookinfo");
        std::fs::copy(env!("CARGO_BIN_EXE_bookinfo"), &exe).unwrap();
        let mut child = Command::new(&exe)
            .arg("--mixr")
            .arg(built("mixr"))
            .arg("--proxy")
            .arg(built("mixr-proxy"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start bookinfo");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut lines = Vec::new();
        while !lines.last().is_some_and(|l: &String| l.contains("stops everything")) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("bookinfo did not come up:\n{}", lines.join("\n"));
                }
            }
        }
        let last_word = |marker: &str| {
            lines
                .iter()
                .find(|l| l.contains(marker))
                .and_then(|l| l.split_whitespace().last())
                .unwrap_or_else(|| panic!("no {marker:?} in:\n{}", lines.join("\n")))
                .to_string()
        };
        let page = last_word("product page");
        let monitoring =
            last_word("mixr metrics").trim_start_matches("http://").trim_end_matches("/metrics").to_string();
        let config_dir = PathBuf::from(last_word("config ("));
        Demo { child, page, monitoring, config_dir, _copy: copy }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success());
    }

    /// Waits at most `limit` for the exit.
    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal("TERM");
            if self.wait(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// A GET over HTTP/1.0: (status, body).
fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(sock, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    sock.read_to_string(&mut text)?;
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

fn assert_stopped_and_cleaned(demo: &mut Demo) {
    let status = demo.wait(Duration::from_secs(20)).expect("bookinfo exits on the signal");
    assert!(status.success(), "{status}");
    assert!(!demo.config_dir.exists(), "{} is left behind", demo.config_dir.display());
    assert!(TcpStream::connect(&demo.monitoring).is_err(), "mixr still listens on {}", demo.monitoring);
    let inbound = demo.page.trim_start_matches("http://").trim_end_matches("/productpage");
    assert!(TcpStream::connect(inbound).is_err(), "productpage's sidecar still listens on {inbound}");
}

#[test]
fn a_copied_binary_has_telemetry_and_sigterm_cleans_up() {
    let mut demo = Demo::start();
    assert!(demo.config_dir.join("telemetry.yaml").exists());
    let (addr, path) = demo.page.trim_start_matches("http://").split_once('/').unwrap();
    let (addr, path) = (addr.to_string(), format!("/{path}"));
    let (status, body) = get(&addr, &path).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"podname\":\"reviews-v1\""), "{body}");

    // The sidecars' reports reach the prometheus handler of the compiled-in telemetry.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, metrics) = get(&demo.monitoring, "/metrics").unwrap();
        if metrics.contains("istio_requests_total{") {
            break;
        }
        assert!(Instant::now() < deadline, "no request metrics from the telemetry config:\n{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    }

    demo.signal("TERM");
    assert_stopped_and_cleaned(&mut demo);
}

#[test]
fn sigint_cleans_up_too() {
    let mut demo = Demo::start();
    assert!(demo.config_dir.join("policy.yaml").exists());
    demo.signal("INT");
    assert_stopped_and_cleaned(&mut demo);
}
