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

/// Largest config file read, in bytes: far above any real config (Istio's whole installed
/// mixer config is 40 KB), small enough that a mistaken path cannot exhaust memory.
pub const MAX_FILE_BYTES: u64 = 8 << 20;

/// Deepest nesting of flow collections (`[`, `{`) accepted. Deeper input is refused before
/// the YAML parser sees it: nested flow collections cost that parser super-linear time.
pub const MAX_FLOW_DEPTH: usize = 64;

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
        match read_bounded(&file) {
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

/// A file's text, refusing one larger than [`MAX_FILE_BYTES`] before reading it.
fn read_bounded(path: &Path) -> std::io::Result<String> {
    let size = std::fs::metadata(path)?.len();
    if size > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "file of {size} bytes is larger than the {MAX_FILE_BYTES}-byte limit for config files"
        )));
    }
    std::fs::read_to_string(path)
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

/// Hidden entries are skipped: a Kubernetes ConfigMap mount keeps its files in `..data`
/// and `..<timestamp>` directories and shows them through symlinks (which are followed),
/// so reading the hidden ones too would load every document three times. Editors' lock and
/// swap files are hidden too.
fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> =
            std::fs::read_dir(path)?.collect::<Result<Vec<_>, _>>()?.into_iter().map(|e| e.path()).collect();
        entries.sort();
        for e in entries {
            if e.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
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
    if let Err((line, message)) = check_shape(text) {
        let mut e = ConfigError::new(&Loc { file: file.into(), document: 1, ..Loc::default() }, "-", message);
        e.line = Some(line);
        errors.push(e);
        return;
    }
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

/// Refuses text too large or nested too deep to parse quickly, with the line where the
/// limit was passed. Quotes and comments are skipped, as far as a scan without a parser can
/// tell them: a quote opens a scalar only where a scalar may start.
fn check_shape(text: &str) -> Result<(), (usize, String)> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err((1, format!("text of {} bytes is larger than the {MAX_FILE_BYTES}-byte limit", text.len())));
    }
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<u8> = None;
    let mut prev = b'\n';
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\n' {
            line += 1;
        }
        match quote {
            Some(q) if b == q => {
                // '' inside single quotes is an escaped quote.
                if q == b'\'' && bytes.get(i + 1) == Some(&b'\'') {
                    i += 1;
                } else {
                    quote = None;
                }
            }
            Some(b'"') if b == b'\\' => i += 1,
            Some(_) => {}
            None => match b {
                b'#' if prev.is_ascii_whitespace() => {
                    while i + 1 < bytes.len() && bytes[i + 1] != b'\n' {
                        i += 1;
                    }
                }
                b'\'' | b'"' if prev.is_ascii_whitespace() || matches!(prev, b':' | b'-' | b'[' | b'{' | b',') => {
                    quote = Some(b)
                }
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Err((line, format!("collections nested deeper than {MAX_FLOW_DEPTH} levels")));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        prev = b;
        i += 1;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Vec<String> {
        let (_, errors) = load_str("c.yaml", text, "istio-system");
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        for deep in ["[".repeat(100_000), "{a: ".repeat(25_000), format!("x:\n{}", "  [\n".repeat(50_000))] {
            let started = std::time::Instant::now();
            let errors = load(&deep);
            assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].contains("collections nested deeper than 64 levels"), "{errors:?}");
        }
        let line = load(&format!("a: 1\nb: 2\nc: {}", "[".repeat(70)));
        assert!(line[0].starts_with("c.yaml:3: "), "{line:?}");
    }

    #[test]
    fn brackets_in_quotes_comments_and_words_do_not_count() {
        let quoted = format!(
            "apiVersion: v1\nkind: rule\nmetadata: {{name: r}}\n# {}\nspec:\n  match: '{}' == \"{}\"\n  x: don't {}\n",
            "[".repeat(100),
            "[".repeat(100),
            "{".repeat(100),
            "",
        );
        assert!(check_shape(&quoted).is_ok());
        assert!(check_shape(&format!("a: {}1{}", "[".repeat(64), "]".repeat(64))).is_ok());
    }

    #[test]
    fn oversized_files_are_refused_without_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let (_, errors) = load_paths(&[path], "istio-system");
        assert!(errors[0].to_string().contains("larger than the 8388608-byte limit"), "{errors:?}");
    }
}
