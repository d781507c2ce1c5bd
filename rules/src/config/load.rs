//! Reading config files: a file or a directory (recursively, `*.yaml`/`*.yml`, in name
//! order), each holding documents separated by `---`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use yaml_serde::Value as Yaml;

use super::model::ConfigSet;
use super::yaml::{ConfigError, Loc, Param};

/// One document of a config file, its envelope (`apiVersion`, `kind`, `metadata`) read:
/// `loc` names file, position, kind and name.
#[derive(Debug, Clone)]
pub struct Document {
    pub loc: Loc,
    pub kind: String,
    pub namespace: String,
    pub spec: Yaml,
}

/// Reads every config file under `paths` and hands each document to `f`. Returns every
/// error: unreadable files, invalid YAML, bad envelopes and `f`'s own (a document with an
/// error is left out, so later checks still report problems in the rest).
pub fn read_documents(
    paths: &[PathBuf],
    default_namespace: &str,
    mut f: impl FnMut(Document) -> Result<(), ConfigError>,
) -> Vec<ConfigError> {
    let (files, mut errors) = yaml_files(paths);
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => read_text(&file.display().to_string(), &text, default_namespace, &mut f, &mut errors),
            Err(e) => errors.push(io_error(&file, e)),
        }
    }
    errors
}

/// Like [`read_documents`], for text already in memory.
pub fn read_documents_str(
    file: &str,
    text: &str,
    default_namespace: &str,
    mut f: impl FnMut(Document) -> Result<(), ConfigError>,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    read_text(file, text, default_namespace, &mut f, &mut errors);
    errors
}

/// Loads every Mixer config file under `paths`.
pub fn load_paths(paths: &[PathBuf], default_namespace: &str) -> (ConfigSet, Vec<ConfigError>) {
    let mut set = ConfigSet { default_namespace: default_namespace.to_string(), ..ConfigSet::default() };
    let errors = read_documents(paths, default_namespace, |d| set.add_document(&d.loc, &d.kind, &d.namespace, &d.spec));
    (set, errors)
}

/// Loads Mixer config from text (tests, and configs embedded elsewhere).
pub fn load_str(file: &str, text: &str, default_namespace: &str) -> (ConfigSet, Vec<ConfigError>) {
    let mut set = ConfigSet { default_namespace: default_namespace.to_string(), ..ConfigSet::default() };
    let errors =
        read_documents_str(file, text, default_namespace, |d| set.add_document(&d.loc, &d.kind, &d.namespace, &d.spec));
    (set, errors)
}

fn io_error(path: &Path, e: std::io::Error) -> ConfigError {
    ConfigError::new(&Loc::file(path.display().to_string()), "-", e.to_string())
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

fn read_text(
    file: &str,
    text: &str,
    default_namespace: &str,
    f: &mut impl FnMut(Document) -> Result<(), ConfigError>,
    errors: &mut Vec<ConfigError>,
) {
    let first_error = errors.len();
    read_stream(file, text, default_namespace, f, errors);
    super::lines::add_lines_from(&mut errors[first_error..], file, text);
}

fn read_stream(
    file: &str,
    text: &str,
    default_namespace: &str,
    f: &mut impl FnMut(Document) -> Result<(), ConfigError>,
    errors: &mut Vec<ConfigError>,
) {
    let file: Arc<str> = file.into();
    for (i, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let loc = Loc { file: file.clone(), document: i + 1, ..Loc::default() };
        let value = match Yaml::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                let mut error = ConfigError::new(&loc, "-", format!("invalid YAML: {e}"));
                error.line = e.location().map(|l| l.line());
                errors.push(error);
                // A syntax error ends the stream: later documents cannot be found reliably.
                return;
            }
        };
        if value.is_null() {
            continue;
        }
        match list_items(&loc, &value) {
            Ok(Some(items)) => {
                for (n, item) in items.iter().enumerate() {
                    let loc = Loc { item: Some(n), ..loc.clone() };
                    if let Err(e) = envelope(loc, item, default_namespace).and_then(&mut *f) {
                        errors.push(e);
                    }
                }
            }
            Ok(None) => {
                if let Err(e) = envelope(loc, &value, default_namespace).and_then(&mut *f) {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(e),
        }
    }
}

/// The items of a Kubernetes list (`kubectl get -o yaml` writes `kind: List`; the API
/// writes `kind: RuleList` and the like), or `None` for a single resource.
fn list_items<'y>(loc: &Loc, value: &'y Yaml) -> Result<Option<&'y Vec<Yaml>>, ConfigError> {
    let is_list =
        value.get("kind").and_then(Yaml::as_str).is_some_and(|k| k.ends_with("List")) && value.get("items").is_some();
    if !is_list {
        return Ok(None);
    }
    let root = Param::new(value, loc, "").obj()?;
    root.require("apiVersion", |p| p.text())?;
    root.require("kind", |p| p.text())?;
    // A list's own metadata (resourceVersion, selfLink) describes the listing, not config.
    let _ = root.raw("metadata");
    let _ = root.raw("items");
    root.finish()?;
    match value.get("items") {
        Some(Yaml::Sequence(items)) => Ok(Some(items)),
        Some(Yaml::Null) | None => Ok(Some(EMPTY)),
        Some(_) => Err(ConfigError::new(loc, "items", "expected a list")),
    }
}

static EMPTY: &Vec<Yaml> = &Vec::new();

/// Metadata the API server writes and `kubectl get -o yaml` shows; none of it is config.
const SERVER_METADATA: &[&str] = &[
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "finalizers",
    "ownerReferences",
    "generateName",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "clusterName",
];

fn envelope(loc: Loc, value: &Yaml, default_namespace: &str) -> Result<Document, ConfigError> {
    let root = Param::new(value, &loc, "").obj()?;
    let kind = root.require("kind", |p| p.text())?;
    let (name, namespace) = root.require("metadata", |p| {
        let m = p.obj()?;
        let name = m.require("name", |p| p.text())?;
        let namespace = m.get("namespace", |p| p.text())?;
        for k in SERVER_METADATA {
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
    Ok(Document { loc: Loc { kind: kind.clone(), name, ..loc }, kind, namespace, spec })
}
