//! Network namespaces for the capture tests: "pods" with their own loopback, addresses,
//! veth links and nat tables, made with `ip netns` and removed on drop (also when a test
//! panics). Processes run inside with `ip netns exec`; the apps and clients are
//! tests/python/netns_tool.py, since the test process itself stays outside.
//!
//! Needs root (CI runs as root) and iproute2 and iptables (.ci/services.sh installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Whether this process runs with uid 0 (`/proc/self/status`, effective uid).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        .unwrap_or(false)
}

/// True (and says so loudly) when the test cannot run here.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("\n*** SKIPPED {test}: network namespaces and iptables need root; CI runs this as root ***\n");
    true
}

pub fn tool() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/netns_tool.py")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (.ci/services.sh installs iproute2 and iptables)"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A named network namespace with its loopback up.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `mx<tag><pid>`: unique per test (tag) and per test run (pid).
    pub fn new(tag: &str) -> Netns {
        let name = format!("mx{tag}{}", std::process::id());
        // Left over by a run that was killed before its drops ran.
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS args...`.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// A command run inside, bounded to 20 s.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["20", "ip", "netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs a command inside to completion: its output, whatever its status.
    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("ip netns exec")
    }

    /// Runs a command inside and returns its stdout; panics when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&run(&mut self.command(args)).stdout).into_owned()
    }

    /// `/etc/hosts` for processes started inside (`ip netns exec` mounts
    /// /etc/netns/NS/hosts over it).
    pub fn hosts(&self, text: &str) {
        let dir = Path::new("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), text).unwrap();
    }

    /// Starts a long-running process inside, as `uid` when given; killed on drop. stdout
    /// and stderr go to `log`.
    pub fn spawn(&self, uid: Option<u32>, args: &[&str], log: &Path) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]);
        if let Some(uid) = uid {
            cmd.args(["setpriv", &format!("--reuid={uid}"), &format!("--regid={uid}"), "--clear-groups"]);
        }
        let file = std::fs::File::create(log).unwrap();
        cmd.args(args).stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Proc { child, log: log.to_path_buf() }
    }

    /// The nat table as `iptables-save` (or `ip6tables-save`) prints it.
    pub fn nat(&self, save: &str) -> String {
        self.ok(&[save, "-t", "nat"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

/// A veth pair from `a` (interface `a_if`, address `a_addr` with prefix) to `b`.
pub fn link(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    a.ip(&["link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name]);
    a.ip(&["addr", "add", a_addr, "dev", a_if]);
    b.ip(&["addr", "add", b_addr, "dev", b_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// A process inside a namespace. Killed on drop.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (at most 20 s) for `file` to appear, written by the process once it is up.
    pub fn wait_for(&mut self, file: &Path) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !file.exists() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}: {}", self.log.display(), self.logs());
            }
            assert!(Instant::now() < deadline, "{} did not start: {}", self.log.display(), self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
