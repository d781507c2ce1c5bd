//! Reading config files: a file or a directory (recursively, `*.yaml`/`*.yml`, in name
//! order), each holding documents separated by `---`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use yaml_serde::Value as Yaml;

use super::model::ConfigSet;
use super::yaml::{ConfigError, Loc, Param};

/// Loads every file under `paths`. Returns what loaded and every error (a document with an
/// error is left out), so later checks can still report problems in the rest.
pub fn load_paths(paths: &[PathBuf], default_namespace: &str) -> (ConfigSet, Vec<ConfigError>) {
    let (files, mut errors) = yaml_files(paths);
    let mut set = ConfigSet::default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => load_into(&mut set, &file.display().to_string(), &text, default_namespace, &mut errors),
            Err(e) => errors.push(io_error(&file, e)),
        }
    }
    (set, errors)
}

/// Loads documents from text (tests, and configs embedded elsewhere).
pub fn load_str(file: &str, text: &str, default_namespace: &str) -> (ConfigSet, Vec<ConfigError>) {
    let mut set = ConfigSet::default();
    let mut errors = Vec::new();
    load_into(&mut set, file, text, default_namespace, &mut errors);
    (set, errors)
}

fn io_error(path: &Path, e: std::io::Error) -> ConfigError {
    ConfigError {
        loc: Loc { file: path.display().to_string().into(), document: 0, kind: String::new(), name: String::new() },
        key: "-".into(),
        message: e.to_string(),
    }
}

/// Every config file under `paths`, in name order, with an error for each unreadable path.
pub fn yaml_files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<ConfigError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        if let Err(e) = collect_files(p, &mut files) {
            errors.push(io_error(p, e));
        }
    }
    (files, errors)
}

/// Hash of every config file's name and content: an unchanged tree need not be reloaded.
pub fn fingerprint(paths: &[PathBuf]) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let (files, _) = yaml_files(paths);
    let mut h = DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        std::fs::read(&f).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(path)?.collect::<Result<Vec<_>, _>>()?.into_iter().map(|e| e.path()).collect();
        entries.sort();
        for e in entries {
            let is_yaml = e.extension().is_some_and(|x| x == "yaml" || x == "yml");
            if e.is_dir() || is_yaml {
                collect_files(&e, out)?;
            }
        }
        Ok(())
    } else {
        std::fs::metadata(path)?;
        out.push(path.to_path_buf());
        Ok(())
    }
}

fn load_into(set: &mut ConfigSet, file: &str, text: &str, default_namespace: &str, errors: &mut Vec<ConfigError>) {
    let file: Arc<str> = file.into();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let mut loc = Loc { file: file.clone(), document: i + 1, kind: String::new(), name: String::new() };
        let value = match Yaml::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(ConfigError::new(&loc, "-", format!("invalid YAML: {e}")));
                // A syntax error ends the stream: later documents cannot be found reliably.
                return;
            }
        };
        if value.is_null() {
            continue;
        }
        if let Err(e) = load_document(set, &mut loc, &value, default_namespace) {
            errors.push(e);
        }
    }
}

fn load_document(set: &mut ConfigSet, loc: &mut Loc, value: &Yaml, default_namespace: &str) -> Result<(), ConfigError> {
    let root = Param::new(value, loc, "").obj()?;
    let kind = root.require("kind", |p| p.text())?;
    let (name, namespace) = root.require("metadata", |p| {
        let m = p.obj()?;
        let name = m.require("name", |p| p.text())?;
        let namespace = m.get("namespace", |p| p.text())?;
        // Kubernetes metadata carries more (labels, annotations...); none of it matters here.
        for k in ["labels", "annotations", "uid", "resourceVersion", "creationTimestamp", "generation"] {
            let _ = m.raw(k);
        }
        m.finish()?;
        Ok((name, namespace))
    })?;
    root.require("apiVersion", |p| p.text())?;
    let spec = root.raw("spec").map(|(v, _)| v.clone()).unwrap_or(Yaml::Null);
    let _ = root.raw("status");
    root.finish()?;
    let namespace = namespace.unwrap_or_else(|| default_namespace.to_string());
    let loc = Loc { kind: kind.clone(), name, ..loc.clone() };
    set.add_document(&loc, &kind, &namespace, &spec)
}
