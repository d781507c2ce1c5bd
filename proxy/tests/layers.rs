//! The proxy's modules form layers: the roles (`sidecar`, `gateway`) over the shared
//! pipeline (`forward`, `proxy`, `worker`...), over the leaves. No module may reach back up:
//! this test fails on any import cycle between the crate's top-level modules (test code
//! aside), naming the modules in it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") && p.file_name().is_some_and(|n| n != "tests.rs") {
            out.push(p);
        }
    }
}

/// `crate::NAME` references and `use crate::{NAME::...}` groups of one file's non-test code.
fn references(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or(text);
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            for item in group.split(',') {
                if let Some((m, _)) = item.trim().split_once("::") {
                    out.insert(ident(m));
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

#[test]
fn no_module_imports_a_module_that_imports_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let refs = references(&std::fs::read_to_string(&f).unwrap());
        deps.entry(top.clone()).or_default().extend(refs.into_iter().filter(|r| *r != top && !r.is_empty()));
    }
    // A cycle exists when a module reaches itself through others.
    let mut cycles = Vec::new();
    for start in deps.keys() {
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((m, path)) = stack.pop() {
            for next in deps.get(&m).into_iter().flatten() {
                if next == start {
                    cycles.push(format!("{} -> {start}", path.join(" -> ")));
                } else if seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles between the proxy's modules:\n{}", cycles.join("\n"));
    // The roles sit on top: nothing but the command line uses them.
    for (m, d) in &deps {
        for role in ["sidecar", "gateway"] {
            assert!(m == "cli" || m == role || !d.contains(role), "{m} uses the {role} role");
        }
    }
}
