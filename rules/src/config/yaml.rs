//! Typed reading of YAML trees. Keys match whether written camelCase or snake_case
//! (`maxAmount` == `max_amount`), as protobuf's JSON mapping allows; keys nobody reads are
//! reported as unknown.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use yaml_serde::Value as Yaml;

use crate::value::{Duration, parse_duration};

/// Where a document came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Loc {
    pub file: Arc<str>,
    /// 1-based position of the document in its file.
    pub document: usize,
    /// Position in the document's `items` when the document is a Kubernetes `List`: keys
    /// of errors are then prefixed with `items[N].`.
    pub item: Option<usize>,
    pub kind: String,
    pub name: String,
}

impl Loc {
    /// The first document of `file` (errors that concern a whole file).
    pub fn file(file: impl Into<Arc<str>>) -> Loc {
        Loc { file: file.into(), ..Loc::default() }
    }
}

impl Loc {
    fn describe(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if !self.kind.is_empty() || !self.name.is_empty() {
            write!(f, " ({} {})", self.kind, self.name)?;
        }
        Ok(())
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        self.describe(f)
    }
}

/// A config error: file, line of the key (once located, see [`super::lines`]), document,
/// key path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Boxed: errors travel in `Result`s everywhere config is read; keep them small.
    pub loc: Box<Loc>,
    /// 1-based line of `key` in the file.
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.loc.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        self.loc.describe(f)?;
        write!(f, ": {}: {}", self.key, self.message)
    }
}

impl ConfigError {
    /// An error at `key`, a path from the document's root (`spec.params.x`); inside a
    /// `List` the item's position is prefixed.
    pub fn new(loc: &Loc, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let key = key.into();
        let key = match loc.item {
            Some(i) if key != "-" => format!("items[{i}].{key}"),
            _ => key,
        };
        ConfigError { loc: Box::new(loc.clone()), line: None, key, message: message.into() }
    }
}

/// `maxAmount`, `max_amount` and `MaxAmount` all become `maxamount`.
pub fn normalize_key(key: &str) -> String {
    key.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect()
}

/// One YAML value at a known path.
#[derive(Clone, Copy)]
pub struct Param<'y> {
    pub value: &'y Yaml,
    pub loc: &'y Loc,
    path: &'y str,
}

impl fmt::Debug for Param<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.loc, self.path)
    }
}

fn type_name(v: &Yaml) -> &'static str {
    match v {
        Yaml::Null => "null",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Sequence(_) => "a list",
        Yaml::Mapping(_) => "a map",
        Yaml::Tagged(_) => "a tagged value",
    }
}

impl<'y> Param<'y> {
    pub fn new(value: &'y Yaml, loc: &'y Loc, path: &'y str) -> Param<'y> {
        Param { value, loc, path }
    }

    pub fn path(&self) -> &str {
        self.path
    }

    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.loc, self.path, message)
    }

    fn wrong(&self, want: &str) -> ConfigError {
        self.error(format!("expected {want}, found {}", type_name(self.value)))
    }

    pub fn is_null(&self) -> bool {
        self.value.is_null()
    }

    pub fn str(&self) -> Result<&'y str, ConfigError> {
        self.value.as_str().ok_or_else(|| self.wrong("a string"))
    }

    /// A scalar as text: YAML writes `version: v1` and `code: 7` alike.
    pub fn text(&self) -> Result<String, ConfigError> {
        match self.value {
            Yaml::String(s) => Ok(s.clone()),
            Yaml::Number(n) => Ok(n.to_string()),
            Yaml::Bool(b) => Ok(b.to_string()),
            _ => Err(self.wrong("a string")),
        }
    }

    pub fn bool(&self) -> Result<bool, ConfigError> {
        match self.value {
            Yaml::Bool(b) => Ok(*b),
            Yaml::String(s) if s == "true" || s == "false" => Ok(s == "true"),
            _ => Err(self.wrong("true or false")),
        }
    }

    /// Integers may be written as numbers or strings (protobuf JSON writes int64 as text).
    pub fn i64(&self) -> Result<i64, ConfigError> {
        match self.value {
            Yaml::Number(n) => n.as_i64().ok_or_else(|| self.error(format!("{n} is not an integer"))),
            Yaml::String(s) => s.parse().map_err(|_| self.error(format!("{s:?} is not an integer"))),
            _ => Err(self.wrong("an integer")),
        }
    }

    pub fn f64(&self) -> Result<f64, ConfigError> {
        match self.value {
            Yaml::Number(n) => n.as_f64().ok_or_else(|| self.wrong("a number")),
            Yaml::String(s) => s.parse().map_err(|_| self.error(format!("{s:?} is not a number"))),
            _ => Err(self.wrong("a number")),
        }
    }

    /// A Go-syntax duration (`"5s"`, `"100ms"`); a bare number is seconds.
    pub fn duration(&self) -> Result<Duration, ConfigError> {
        match self.value {
            Yaml::String(s) => parse_duration(s)
                .ok_or_else(|| self.error(format!("{s:?} is not a duration (like \"5s\" or \"100ms\")"))),
            Yaml::Number(n) => n
                .as_f64()
                .map(|secs| Duration::from_nanos((secs * 1e9) as i128))
                .ok_or_else(|| self.wrong("a duration")),
            _ => Err(self.wrong("a duration")),
        }
    }

    /// The entries of a list, with their paths (`key[0]`, `key[1]`...).
    pub fn list(&self) -> Result<Vec<(Yaml, String)>, ConfigError> {
        match self.value {
            Yaml::Sequence(items) => {
                Ok(items.iter().enumerate().map(|(i, v)| (v.clone(), format!("{}[{i}]", self.path))).collect())
            }
            Yaml::Null => Ok(Vec::new()),
            _ => Err(self.wrong("a list")),
        }
    }

    pub fn string_list(&self) -> Result<Vec<String>, ConfigError> {
        let mut out = Vec::new();
        for (v, path) in self.list()? {
            out.push(Param::new(&v, self.loc, &path).text()?);
        }
        Ok(out)
    }

    /// A map with string keys, in document order.
    pub fn entries(&self) -> Result<Vec<(String, &'y Yaml)>, ConfigError> {
        match self.value {
            Yaml::Mapping(m) => m
                .iter()
                .map(|(k, v)| match k {
                    Yaml::String(s) => Ok((s.clone(), v)),
                    Yaml::Number(n) => Ok((n.to_string(), v)),
                    Yaml::Bool(b) => Ok((b.to_string(), v)),
                    other => Err(self.error(format!("map keys must be strings, found {}", type_name(other)))),
                })
                .collect(),
            Yaml::Null => Ok(Vec::new()),
            _ => Err(self.wrong("a map")),
        }
    }

    pub fn obj(&self) -> Result<Obj<'y>, ConfigError> {
        match self.value {
            Yaml::Mapping(_) | Yaml::Null => Ok(Obj { param: *self, used: RefCell::new(Vec::new()) }),
            _ => Err(self.wrong("a map")),
        }
    }
}

/// A YAML map read field by field; [`Obj::finish`] reports the keys nobody asked for.
pub struct Obj<'y> {
    param: Param<'y>,
    /// The names asked for, as written by the reader (for suggestions) and normalised.
    used: RefCell<Vec<(String, String)>>,
}

impl<'y> Obj<'y> {
    pub fn loc(&self) -> &'y Loc {
        self.param.loc
    }

    pub fn path(&self) -> &'y str {
        self.param.path
    }

    fn lookup(&self, name: &str) -> Option<(&'y str, &'y Yaml)> {
        let want = normalize_key(name);
        self.used.borrow_mut().push((name.to_string(), want.clone()));
        match self.param.value {
            Yaml::Mapping(m) => m.iter().find_map(|(k, v)| match k {
                Yaml::String(s) if normalize_key(s) == want => Some((s.as_str(), v)),
                _ => None,
            }),
            _ => None,
        }
    }

    /// The field `name` (either spelling); `f` reads it at its full path.
    pub fn get<T>(
        &self,
        name: &str,
        f: impl FnOnce(Param<'_>) -> Result<T, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        match self.lookup(name) {
            Some((_, v)) if v.is_null() => Ok(None),
            Some((key, v)) => {
                let path = self.child_path(key);
                f(Param::new(v, self.param.loc, &path)).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Like [`Obj::get`], but absence is an error.
    pub fn require<T>(
        &self,
        name: &str,
        f: impl FnOnce(Param<'_>) -> Result<T, ConfigError>,
    ) -> Result<T, ConfigError> {
        if let Some(v) = self.get(name, f)? {
            return Ok(v);
        }
        // A misspelt key is the likelier mistake than a forgotten one: say so.
        if let Some((key, suggestion)) = self.unknown_keys().into_iter().find(|(_, s)| s.is_some()) {
            return Err(unknown_key(self.param.loc, &self.child_path(&key), suggestion.as_deref()));
        }
        Err(ConfigError::new(self.param.loc, self.child_path(name), "required field is missing"))
    }

    /// Keys of the map nobody asked for so far, each with the closest name that was asked
    /// for, if one is close.
    fn unknown_keys(&self) -> Vec<(String, Option<String>)> {
        let used = self.used.borrow();
        let Yaml::Mapping(m) = self.param.value else { return Vec::new() };
        m.keys()
            .map(|k| match k {
                Yaml::String(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .filter(|k| !used.iter().any(|(_, n)| *n == normalize_key(k)))
            .map(|k| {
                let suggestion = closest(&k, used.iter().map(|(name, _)| name.as_str()));
                (k, suggestion)
            })
            .collect()
    }

    /// The raw value of a field, for storing and reading later (instance params).
    pub fn raw(&self, name: &str) -> Option<(&'y Yaml, String)> {
        self.lookup(name).map(|(k, v)| (v, self.child_path(k)))
    }

    pub fn child_path(&self, key: &str) -> String {
        if self.param.path.is_empty() { key.to_string() } else { format!("{}.{key}", self.param.path) }
    }

    /// An error for the first key that was never read, with the closest known key.
    pub fn finish(self) -> Result<(), ConfigError> {
        match self.unknown_keys().into_iter().next() {
            Some((key, suggestion)) => Err(unknown_key(self.param.loc, &self.child_path(&key), suggestion.as_deref())),
            None => Ok(()),
        }
    }
}

fn unknown_key(loc: &Loc, path: &str, suggestion: Option<&str>) -> ConfigError {
    let message = match suggestion {
        Some(s) => format!("unknown key (did you mean {s}?)"),
        None => "unknown key".to_string(),
    };
    ConfigError::new(loc, path, message)
}

/// The candidate nearest to `key` (edit distance over the normalised spellings), if it is
/// near enough to be a typo of it.
pub fn closest<'c>(key: &str, candidates: impl Iterator<Item = &'c str>) -> Option<String> {
    let key = normalize_key(key);
    let limit = if key.len() >= 10 { 3 } else { 2 };
    candidates
        .map(|c| (edit_distance(&key, &normalize_key(c)), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(cur).min(row[j]) };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc() -> Loc {
        Loc { file: "f.yaml".into(), document: 1, kind: "handler".into(), name: "h".into(), item: None }
    }

    #[test]
    fn camel_and_snake_keys_are_the_same_field() {
        let y: Yaml = yaml_serde::from_str("max_amount: 5\nvalidDuration: 2s\n").unwrap();
        let l = loc();
        let o = Param::new(&y, &l, "spec").obj().unwrap();
        assert_eq!(o.get("maxAmount", |p| p.i64()).unwrap(), Some(5));
        assert_eq!(o.get("valid_duration", |p| p.duration()).unwrap().unwrap().seconds, 2);
        assert!(o.finish().is_ok());
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_path() {
        let y: Yaml = yaml_serde::from_str("maxAmount: five\nbogus: 1\n").unwrap();
        let l = loc();
        let o = Param::new(&y, &l, "spec.params").obj().unwrap();
        let e = o.get("maxAmount", |p| p.i64()).unwrap_err();
        assert_eq!(e.to_string(), "f.yaml: document 1 (handler h): spec.params.maxAmount: \"five\" is not an integer");
        let e = o.finish().unwrap_err();
        assert_eq!(e.key, "spec.params.bogus");
        assert_eq!(e.message, "unknown key");
    }

    #[test]
    fn misspelt_keys_are_unknown_with_the_closest_known_key() {
        let y: Yaml = yaml_serde::from_str("compiledAdaptr: denier\nparams: {}\n").unwrap();
        let l = loc();
        let o = Param::new(&y, &l, "spec").obj().unwrap();
        assert_eq!(o.get("compiledAdapter", |p| p.text()).unwrap(), None);
        let e = o.require("adapter", |p| p.text()).unwrap_err();
        assert_eq!(e.key, "spec.compiledAdaptr");
        assert_eq!(e.message, "unknown key (did you mean compiledAdapter?)");

        let y: Yaml = yaml_serde::from_str("max_amout: 1\nzzz: 2\n").unwrap();
        let o = Param::new(&y, &l, "spec").obj().unwrap();
        let _ = o.get("maxAmount", |p| p.i64());
        let e = o.finish().unwrap_err();
        assert_eq!(e.message, "unknown key (did you mean maxAmount?)");
        let y: Yaml = yaml_serde::from_str("zzz: 2\n").unwrap();
        let o = Param::new(&y, &l, "spec").obj().unwrap();
        let e = o.require("maxAmount", |p| p.i64()).unwrap_err();
        assert_eq!((e.key.as_str(), e.message.as_str()), ("spec.maxAmount", "required field is missing"));
    }

    #[test]
    fn errors_inside_a_list_name_the_item() {
        let l = Loc { item: Some(3), ..loc() };
        let e = ConfigError::new(&l, "spec.match", "bad");
        assert_eq!(e.to_string(), "f.yaml: document 1 (handler h): items[3].spec.match: bad");
        let e = ConfigError { line: Some(12), ..e };
        assert_eq!(e.to_string(), "f.yaml:12: document 1 (handler h): items[3].spec.match: bad");
    }
}
