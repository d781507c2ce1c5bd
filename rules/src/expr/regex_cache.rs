//! Regexes whose pattern is known only per request (`matches()` on a non-literal), compiled
//! on first use and kept in a small bounded cache. The pattern may come from a request, so
//! its length and compiled size are bounded too: a caller cannot make evaluation slow or
//! large.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use regex::{Regex, RegexBuilder};

/// Patterns kept per expression; when full the cache starts over, which bounds memory and
/// costs a recompile only for patterns that vary more than this.
const CAPACITY: usize = 128;
/// Longest pattern accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;
/// Compiled-program size limit handed to the regex crate.
const SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct RegexCache {
    compiled: Mutex<HashMap<String, Arc<Regex>>>,
}

impl RegexCache {
    /// The compiled `pattern`, or why it cannot be used.
    pub fn get(&self, pattern: &str) -> Result<Arc<Regex>, String> {
        let mut map = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(re) = map.get(pattern) {
            return Ok(re.clone());
        }
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(format!("regex pattern of {} bytes is longer than {MAX_PATTERN_LEN}", pattern.len()));
        }
        let re = RegexBuilder::new(pattern)
            .size_limit(SIZE_LIMIT)
            .build()
            .map(Arc::new)
            .map_err(|e| format!("invalid regex {pattern:?}: {e}"))?;
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(pattern.to_string(), re.clone());
        Ok(re)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.compiled.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_once_and_stays_bounded() {
        let cache = RegexCache::default();
        let a = cache.get("^a+$").unwrap();
        assert!(Arc::ptr_eq(&a, &cache.get("^a+$").unwrap()), "second use is a cache hit");
        for i in 0..CAPACITY * 2 {
            cache.get(&format!("p{i}")).unwrap();
        }
        assert!(cache.len() <= CAPACITY);
        assert!(cache.get("(").unwrap_err().contains("invalid regex"));
        assert!(cache.get(&"a".repeat(MAX_PATTERN_LEN + 1)).unwrap_err().contains("longer than"));
        assert!(cache.get("a{1000}{1000}").is_err(), "a pattern too large to compile is refused");
    }
}
