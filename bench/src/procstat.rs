//! CPU accounting from /proc and CPU pinning with `taskset`.

use std::process::{Command, ExitCode};

const PINNED: &str = "MIXR_BENCH_PINNED";

/// CPU time (user + system) a process has used, in microseconds.
pub fn cpu_micros(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the full line (11 and 12 after the name).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks_per_sec = 100; // USER_HZ is 100 on Linux.
    Some((utime + stime) * 1_000_000 / ticks_per_sec)
}

pub fn have_taskset() -> bool {
    Command::new("taskset").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Re-runs this process pinned to CPU 0. Returns the child's exit code when it did.
pub fn pin_self_to_cpu0() -> Option<ExitCode> {
    if std::env::var_os(PINNED).is_some() || !have_taskset() {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    let status = Command::new("taskset")
        .arg("-c")
        .arg("0")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(PINNED, "1")
        .status()
        .ok()?;
    Some(ExitCode::from(status.code().unwrap_or(1) as u8))
}

/// A command for a server under test, pinned to CPU 1 when possible.
pub fn server_command(program: &std::path::Path) -> Command {
    if have_taskset() && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2) {
        let mut c = Command::new("taskset");
        c.arg("-c").arg("1").arg(program);
        c
    } else {
        Command::new(program)
    }
}
