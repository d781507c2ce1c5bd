//! Which attributes an evaluation looked at. The caller (a proxy's check cache) builds its
//! cache key from exactly this list, so it must name every attribute read (EXACT), every
//! attribute looked for and missing (ABSENCE), and map lookups by key.

use std::borrow::Cow;

use mixr_proto::dictionary;
use mixr_proto::istio::mixer::v1::{ReferencedAttributes, referenced_attributes};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Condition {
    Absence,
    Exact,
}

/// One recorded lookup.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference<'a> {
    pub name: Cow<'a, str>,
    pub map_key: Option<Cow<'a, str>>,
    pub condition: Condition,
}

/// Lookups recorded during one request's evaluation. Duplicates are removed once, when the
/// reply is built, rather than on every lookup.
#[derive(Debug, Default, Clone)]
pub struct Referenced<'a> {
    entries: Vec<Reference<'a>>,
}

impl<'a> Referenced<'a> {
    pub fn new() -> Referenced<'a> {
        Referenced::default()
    }

    pub fn attribute(&mut self, name: &'a str, present: bool) {
        self.entries.push(Reference {
            name: Cow::Borrowed(name),
            map_key: None,
            condition: if present { Condition::Exact } else { Condition::Absence },
        });
    }

    pub fn map_key(&mut self, name: &'a str, key: Cow<'a, str>, present: bool) {
        self.entries.push(Reference {
            name: Cow::Borrowed(name),
            map_key: Some(key),
            condition: if present { Condition::Exact } else { Condition::Absence },
        });
    }

    pub fn extend(&mut self, other: Referenced<'a>) {
        self.entries.extend(other.entries);
    }

    /// Keeps the lookups of attributes `keep` accepts.
    pub fn retain_attributes(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|r| keep(&r.name));
    }

    /// The same record, owning its names.
    pub fn into_owned(self) -> Referenced<'static> {
        Referenced {
            entries: self
                .entries
                .into_iter()
                .map(|r| Reference {
                    name: Cow::Owned(r.name.into_owned()),
                    map_key: r.map_key.map(|k| Cow::Owned(k.into_owned())),
                    condition: r.condition,
                })
                .collect(),
        }
    }

    /// Sorted, duplicate-free view.
    pub fn entries(&self) -> Vec<Reference<'a>> {
        let mut v = self.entries.clone();
        v.sort();
        v.dedup();
        v
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Encodes for the reply. Names are global word indices only below the caller's
    /// `global_word_count`; anything else goes into the reply's own `words`.
    pub fn to_proto(&self, global_word_count: u32) -> ReferencedAttributes {
        let mut out = ReferencedAttributes::default();
        fn local_word(word: &str, words: &mut Vec<String>) -> i32 {
            let pos = match words.iter().position(|w| w == word) {
                Some(p) => p,
                None => {
                    words.push(word.to_string());
                    words.len() - 1
                }
            };
            -(pos as i32) - 1
        }
        let word_index = |word: &str, words: &mut Vec<String>| -> i32 {
            if let Some(i) = dictionary::index_of(word)
                && (i as u32) < global_word_count
            {
                return i;
            }
            local_word(word, words)
        };
        for r in self.entries() {
            let name = word_index(&r.name, &mut out.words);
            let map_key = r
                .map_key
                .as_deref()
                .map(|k| match word_index(k, &mut out.words) {
                    // 0 on the wire means "no map key", so a key that is global word 0
                    // must be spelled out.
                    0 => local_word(k, &mut out.words),
                    i => i,
                })
                .unwrap_or(0);
            out.attribute_matches.push(referenced_attributes::AttributeMatch {
                name,
                condition: match r.condition {
                    Condition::Absence => referenced_attributes::Condition::Absence as i32,
                    Condition::Exact => referenced_attributes::Condition::Exact as i32,
                },
                regex: String::new(),
                map_key,
            });
        }
        out
    }
}

/// Decodes a reply's referenced attributes back into names (for clients and tests).
pub fn decode_referenced(refs: &ReferencedAttributes) -> Result<Vec<Reference<'static>>, super::BagError> {
    let word = |i: i32| -> Result<String, super::BagError> {
        let global = dictionary::words();
        let w = if i >= 0 {
            global.get(i as usize).map(|s| s.to_string())
        } else {
            refs.words.get((-(i as i64) - 1) as usize).cloned()
        };
        w.ok_or(super::BagError::BadWordIndex { index: i, global: global.len(), local: refs.words.len() })
    };
    let mut out = Vec::new();
    for m in &refs.attribute_matches {
        let condition = match referenced_attributes::Condition::try_from(m.condition) {
            Ok(referenced_attributes::Condition::Absence) => Condition::Absence,
            _ => Condition::Exact,
        };
        // A map key of 0 is "source.ip": never a header name, so it means "no key".
        let map_key = if m.map_key != 0 { Some(Cow::Owned(word(m.map_key)?)) } else { None };
        out.push(Reference { name: Cow::Owned(word(m.name)?), map_key, condition });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_uses_global_words_only_below_the_callers_count() {
        let mut r = Referenced::new();
        r.attribute("source.ip", true);
        r.attribute("request.method", false);
        r.map_key("request.headers", Cow::Borrowed("x-user"), true);
        r.map_key("request.headers", Cow::Borrowed("x-user"), true);
        let full = r.to_proto(222);
        assert_eq!(full.attribute_matches.len(), 3, "duplicates removed");
        assert_eq!(full.words, vec!["x-user".to_string()]);
        let decoded = decode_referenced(&full).unwrap();
        assert!(decoded.contains(&Reference {
            name: "request.method".into(),
            map_key: None,
            condition: Condition::Absence
        }));
        assert!(decoded.contains(&Reference {
            name: "request.headers".into(),
            map_key: Some("x-user".into()),
            condition: Condition::Exact
        }));

        // A caller that knows only 1 global word gets every other name spelled out.
        let short = r.to_proto(1);
        assert!(short.words.contains(&"request.method".to_string()));
        assert!(short.words.contains(&"request.headers".to_string()));
        assert!(!short.words.contains(&"source.ip".to_string()));
        assert_eq!(decode_referenced(&short).unwrap(), decoded);
    }
}
