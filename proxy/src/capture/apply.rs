//! Installing and removing the rules with the system's tools: `iptables-save` to see what
//! is there, `iptables` to delete, `iptables-restore --noflush` to install (and the
//! `ip6tables` ones for IPv6).
//!
//! Applying first removes whatever an earlier apply left, so applying twice leaves one
//! set of rules, and a changed config replaces the old one instead of adding to it.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::rules::{CHAINS, Capture, CaptureError, Family};

struct Tools {
    save: &'static str,
    restore: &'static str,
    edit: &'static str,
}

fn tools(family: Family) -> Tools {
    match family {
        Family::V4 => Tools { save: "iptables-save", restore: "iptables-restore", edit: "iptables" },
        Family::V6 => Tools { save: "ip6tables-save", restore: "ip6tables-restore", edit: "ip6tables" },
    }
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, CaptureError> {
    let command = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CaptureError::Spawn { program: program.into(), source })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error means the tool exited early; its status and stderr say why.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| CaptureError::Spawn { program: program.into(), source })?;
    if !out.status.success() {
        return Err(CaptureError::Failed {
            command: command(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What [`cleanup_family`] found and removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub jumps: usize,
    pub chains: usize,
}

/// What of ours `iptables-save -t nat` output shows: the jump rules from other chains
/// (as the arguments that delete them) and our chains that exist.
pub fn ours(saved: &str) -> (Vec<Vec<String>>, Vec<String>) {
    let mut jumps = Vec::new();
    let mut chains = Vec::new();
    for line in saved.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if CHAINS.contains(&name) {
                chains.push(name.to_string());
            }
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let [append, chain, rest @ ..] = words.as_slice() else { continue };
        let targets_ours = rest.windows(2).any(|w| w[0] == "-j" && CHAINS.contains(&w[1]));
        if *append == "-A" && !CHAINS.contains(chain) && targets_ours {
            let mut delete = vec!["-t".to_string(), "nat".into(), "-D".into(), chain.to_string()];
            delete.extend(rest.iter().map(|w| w.to_string()));
            jumps.push(delete);
        }
    }
    (jumps, chains)
}

/// Removes our jumps and chains from one family's nat table.
pub fn cleanup_family(family: Family) -> Result<Removed, CaptureError> {
    let t = tools(family);
    let saved = run(t.save, &["-t", "nat"], None)?;
    let (jumps, chains) = ours(&saved);
    for args in &jumps {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(t.edit, &args, None)?;
    }
    // Emptied first, then deleted: a chain still jumped to from another cannot go.
    for chain in &chains {
        run(t.edit, &["-t", "nat", "-F", chain], None)?;
    }
    for chain in &chains {
        run(t.edit, &["-t", "nat", "-X", chain], None)?;
    }
    Ok(Removed { jumps: jumps.len(), chains: chains.len() })
}

/// Removes our rules from both families. IPv6 is cleaned only where its tools run (a
/// host without ip6tables, or without IPv6, has no IPv6 rules of ours to remove).
pub fn cleanup() -> Result<Removed, CaptureError> {
    let mut removed = cleanup_family(Family::V4)?;
    match cleanup_family(Family::V6) {
        Ok(r) => {
            removed.jumps += r.jumps;
            removed.chains += r.chains;
        }
        Err(e) => tracing::debug!(error = %e, "no IPv6 rules removed"),
    }
    Ok(removed)
}

/// Installs the rules, replacing any of ours already there.
pub fn apply(capture: &Capture) -> Result<(), CaptureError> {
    cleanup()?;
    for family in capture.families() {
        run(tools(family).restore, &["--noflush"], Some(&capture.script(family)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_jumps_and_chains_are_found() {
        let saved = "\
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:MIXR_INBOUND - [0:0]
:MIXR_OUTPUT - [0:0]
:OTHER - [0:0]
-A PREROUTING -p tcp -j MIXR_INBOUND
-A PREROUTING -p tcp -j OTHER
-A OUTPUT -p tcp -j MIXR_OUTPUT
-A OUTPUT -p tcp -j MIXR_OUTPUT
-A MIXR_INBOUND -p tcp -j MIXR_IN_REDIRECT
-A OTHER -m comment --comment \"-j MIXR_X\" -j RETURN
COMMIT
";
        let (jumps, chains) = ours(saved);
        let jumps: Vec<String> = jumps.iter().map(|j| j.join(" ")).collect();
        assert_eq!(
            jumps,
            [
                "-t nat -D PREROUTING -p tcp -j MIXR_INBOUND",
                "-t nat -D OUTPUT -p tcp -j MIXR_OUTPUT",
                "-t nat -D OUTPUT -p tcp -j MIXR_OUTPUT"
            ]
        );
        assert_eq!(chains, ["MIXR_INBOUND", "MIXR_OUTPUT"]);
    }
}
