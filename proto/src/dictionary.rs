//! Istio's global dictionary: word index `i >= 0` on the wire means `GLOBAL_WORDS[i]`.

use crate::fasthash::FastMap;
use std::sync::OnceLock;

include!(concat!(env!("OUT_DIR"), "/global_words.rs"));

/// The global word list, in wire order.
pub fn words() -> &'static [&'static str] {
    &GLOBAL_WORDS
}

/// Index of `word` in the global dictionary, if it is there.
pub fn index_of(word: &str) -> Option<i32> {
    // Every attribute name and many values of every Report entry come through here; the
    // table is fixed, so a fast hash is safe.
    static INDEX: OnceLock<FastMap<&'static str, i32>> = OnceLock::new();
    INDEX
        .get_or_init(|| {
            // Istio's list holds "0", "1" and "200" twice (quoted and unquoted YAML); the first
            // position wins, as in Istio's own encoder.
            let mut index = FastMap::with_capacity_and_hasher(GLOBAL_WORDS.len(), Default::default());
            for (i, w) in GLOBAL_WORDS.iter().enumerate() {
                index.entry(*w).or_insert(i as i32);
            }
            index
        })
        .get(word)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_matches_istio_order() {
        assert_eq!(GLOBAL_WORDS.len(), 222);
        assert_eq!(GLOBAL_WORDS[0], "source.ip");
        assert_eq!(index_of("source.ip"), Some(0));
        assert_eq!(
            index_of("request.headers"),
            Some(GLOBAL_WORDS.iter().position(|w| *w == "request.headers").unwrap() as i32)
        );
        assert_eq!(*GLOBAL_WORDS.last().unwrap(), "context.proxy_version");
        assert_eq!(index_of("no-such-word"), None);
    }

    #[test]
    fn only_istios_known_duplicates() {
        let mut seen = std::collections::HashSet::new();
        let dups: Vec<&str> = GLOBAL_WORDS.iter().copied().filter(|w| !seen.insert(*w)).collect();
        assert_eq!(dups, vec!["0", "1", "200"]);
        assert_eq!(index_of("0"), Some(GLOBAL_WORDS.iter().position(|w| *w == "0").unwrap() as i32));
    }
}
