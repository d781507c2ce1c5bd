//! Lines of config errors. Documents are parsed into plain YAML values, which keep no
//! positions; an error's key path (`spec.params.metrics[2].kind`) is found again in the
//! file's text only when an error is reported, so loading a good config pays nothing.
//!
//! The parser gives positions only with its errors, so the search walks the document with
//! a deserializer that fails on purpose at the key: the failure carries the key's line.
//! A key that is not in the file (a required field that is missing) takes the line of the
//! nearest enclosing key that is.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::yaml::{ConfigError, normalize_key};

const FOUND: &str = "mixr: key found";

/// Fills in the line of every error that has none, reading each file once.
pub fn add_lines(errors: &mut [ConfigError]) {
    let mut texts: HashMap<String, Option<String>> = HashMap::new();
    for e in errors.iter_mut().filter(|e| e.line.is_none() && e.loc.document > 0) {
        let text = texts.entry(e.loc.file.to_string()).or_insert_with(|| std::fs::read_to_string(&*e.loc.file).ok());
        if let Some(text) = text {
            e.line = key_line(text, e.loc.document, &e.key);
        }
    }
}

/// Like [`add_lines`], for errors about `text` held in memory under the name `file`.
pub fn add_lines_from(errors: &mut [ConfigError], file: &str, text: &str) {
    for e in errors.iter_mut().filter(|e| e.line.is_none() && &*e.loc.file == file && e.loc.document > 0) {
        e.line = key_line(text, e.loc.document, &e.key);
    }
}

/// The 1-based line of `key` in the `document`-th document of `text`, or of its nearest
/// enclosing key present there, or of the document's start.
pub fn key_line(text: &str, document: usize, key: &str) -> Option<usize> {
    let mut path = if key == "-" { "" } else { key };
    loop {
        match seek(text, document, path) {
            Seek::Found(line) => return Some(line),
            Seek::NoDocument => return None,
            Seek::Missing if path.is_empty() => return None,
            Seek::Missing => path = parent(path),
        }
    }
}

fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

enum Seek {
    Found(usize),
    Missing,
    NoDocument,
}

fn seek(text: &str, document: usize, path: &str) -> Seek {
    let Some(doc) = yaml_serde::Deserializer::from_str(text).nth(document.saturating_sub(1)) else {
        return Seek::NoDocument;
    };
    let target = Target { rest: path };
    match target.deserialize(doc) {
        Err(e) if e.to_string().contains(FOUND) => e.location().map_or(Seek::Missing, |l| Seek::Found(l.line())),
        _ => Seek::Missing,
    }
}

/// Walks to `rest` (the remainder of a key path) and fails there on purpose.
struct Target<'p> {
    rest: &'p str,
}

impl<'de> DeserializeSeed<'de> for Target<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Target<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.rest.is_empty() {
            return Err(de::Error::custom(FOUND));
        }
        while let Some(rest) = map.next_key_seed(Key { path: self.rest })? {
            match rest {
                Some(rest) => return map.next_value_seed(Target { rest }),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Err(de::Error::custom("not found"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.rest.is_empty() {
            return Err(de::Error::custom(FOUND));
        }
        let Some((index, rest)) = index_step(self.rest) else {
            return Err(de::Error::custom("not found"));
        };
        for _ in 0..index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Err(de::Error::custom("not found"));
            }
        }
        seq.next_element_seed(Target { rest })?;
        Err(de::Error::custom("not found"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
}

impl Target<'_> {
    /// A list element or a value the path ends at: here is the place.
    fn scalar<E: de::Error>(&self) -> Result<(), E> {
        if self.rest.is_empty() { Err(E::custom(FOUND)) } else { Err(E::custom("not found")) }
    }
}

/// `[3].x` → (3, "x"); `[3][1]` → (3, "[1]"); `[3]` → (3, "").
fn index_step(rest: &str) -> Option<(usize, &str)> {
    let inner = rest.strip_prefix('[')?;
    let close = inner.find(']')?;
    let index = inner[..close].parse().ok()?;
    let after = &inner[close + 1..];
    Some((index, after.strip_prefix('.').unwrap_or(after)))
}

/// A map key, compared with the head of the path. Yields the rest of the path when the key
/// leads on, fails (with the key's position) when the path ends at it, `None` otherwise.
/// Keys may hold dots (`source.ip` in an attribute manifest), so the path is matched by
/// prefix, not split beforehand.
struct Key<'p> {
    path: &'p str,
}

impl<'de, 'p> DeserializeSeed<'de> for Key<'p> {
    type Value = Option<&'p str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'p> Visitor<'de> for Key<'p> {
    type Value = Option<&'p str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        let path = self.path;
        if path == key || normalize_key(path) == normalize_key(key) && !path.contains(['.', '[']) {
            return Err(E::custom(FOUND));
        }
        match path.strip_prefix(key) {
            Some(rest) if rest.starts_with('.') => Ok(Some(&rest[1..])),
            Some(rest) if rest.starts_with('[') => Ok(Some(rest)),
            _ => Ok(None),
        }
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# a comment
apiVersion: v1
kind: handler
metadata: {name: a}
spec:
  compiledAdapter: prometheus
  params:
    metrics:
    - name: one
      kind: COUNTER
    - name: two
      kind: BOGUS
---
kind: List
items:
- kind: attributemanifest
  spec:
    attributes:
      source.ip:
        valueType: NOPE
";

    #[test]
    fn finds_keys_list_items_and_dotted_keys() {
        assert_eq!(key_line(TEXT, 1, "spec.params.metrics[1].kind"), Some(12));
        assert_eq!(key_line(TEXT, 1, "spec.params.metrics[1]"), Some(11));
        assert_eq!(key_line(TEXT, 1, "spec.compiledAdapter"), Some(6));
        assert_eq!(key_line(TEXT, 1, "metadata.name"), Some(4), "flow style too");
        assert_eq!(key_line(TEXT, 2, "items[0].spec.attributes.source.ip.valueType"), Some(20));
    }

    #[test]
    fn a_missing_key_takes_its_parents_line() {
        assert_eq!(key_line(TEXT, 1, "spec.params.metrics[1].buckets"), Some(11));
        assert_eq!(key_line(TEXT, 1, "spec.params.nothing.here"), Some(7));
        assert_eq!(key_line(TEXT, 1, "-"), Some(2), "the document's start");
        assert_eq!(key_line(TEXT, 3, "spec"), None, "no such document");
    }

    #[test]
    fn errors_get_lines_from_text() {
        let loc = super::super::Loc { file: "t.yaml".into(), document: 1, ..Default::default() };
        let mut errors = vec![ConfigError::new(&loc, "spec.compiledAdapter", "bad")];
        add_lines_from(&mut errors, "t.yaml", TEXT);
        assert_eq!(errors[0].to_string(), "t.yaml:6: document 1: spec.compiledAdapter: bad");
    }
}
