//! Istio's global dictionary: word index `i >= 0` on the wire means `GLOBAL_WORDS[i]`.

include!(concat!(env!("OUT_DIR"), "/global_words.rs"));

/// The global word list, in wire order.
pub fn words() -> &'static [&'static str] {
    &GLOBAL_WORDS
}

/// Index of `word` in the global dictionary, if it is there.
///
/// Every attribute name and many values of every Report entry come through here. The table
/// is fixed, so it is built at compile time, open-addressed by a word's length and first
/// and last bytes: most words have a slot of their own, and most values a Report carries
/// (paths, hosts, header values, names), which are not words, find an empty one. Either
/// way a lookup hashes nothing and compares at most a word or two.
pub fn index_of(word: &str) -> Option<i32> {
    let w = word.as_bytes();
    let mut slot = slot_of(w);
    loop {
        let i = TABLE[slot];
        if i == EMPTY {
            return None;
        }
        if GLOBAL_WORDS[i as usize].as_bytes() == w {
            return Some(i32::from(i));
        }
        slot = (slot + 1) % SLOTS;
    }
}

const SLOTS: usize = 4096;
const EMPTY: u16 = u16::MAX;

const fn slot_of(word: &[u8]) -> usize {
    let (first, last) = match word {
        [] => (0, 0),
        [first, .., last] => (*first as usize, *last as usize),
        [only] => (*only as usize, *only as usize),
    };
    (word.len().wrapping_mul(131) ^ first.wrapping_mul(31) ^ last.wrapping_mul(1021)) % SLOTS
}

const fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Word indexes by slot. Istio's list holds "0", "1" and "200" twice (quoted and unquoted
/// YAML); the first position wins, as in Istio's own encoder.
static TABLE: [u16; SLOTS] = {
    assert!(GLOBAL_WORD_LIST.len() < SLOTS / 4);
    let mut table = [EMPTY; SLOTS];
    let mut i = 0;
    while i < GLOBAL_WORD_LIST.len() {
        let w = GLOBAL_WORD_LIST[i].as_bytes();
        let mut slot = slot_of(w);
        loop {
            if table[slot] == EMPTY {
                table[slot] = i as u16;
                break;
            }
            if same(GLOBAL_WORD_LIST[table[slot] as usize].as_bytes(), w) {
                break;
            }
            slot = (slot + 1) % SLOTS;
        }
        i += 1;
    }
    table
};

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
    fn words_are_found_in_a_probe_or_two_and_most_values_in_none() {
        let probes = |w: &str| {
            let mut slot = slot_of(w.as_bytes());
            let mut n = 1;
            while TABLE[slot] != EMPTY && GLOBAL_WORDS[TABLE[slot] as usize] != w {
                slot = (slot + 1) % SLOTS;
                n += 1;
            }
            n
        };
        for (i, w) in GLOBAL_WORDS.iter().enumerate() {
            let at = index_of(w).unwrap() as usize;
            assert_eq!(GLOBAL_WORDS[at], *w);
            assert!(at <= i);
            assert!(probes(w) <= 3, "{w}: {}", probes(w));
        }
        let values = [
            "",
            "/",
            "/reviews/1",
            "default",
            "reviews-v1",
            "h2load nghttp2/1.59.0",
            "curl/8.5.0",
            "*/*",
            "origin",
            "127.0.0.1:18482",
            "productpage",
            "9080",
            "spiffe://cluster.local/ns/default/sa/x",
        ];
        let occupied: Vec<&str> = values.iter().copied().filter(|v| TABLE[slot_of(v.as_bytes())] != EMPTY).collect();
        assert!(occupied.len() <= 2, "{occupied:?}");
        assert!(values.iter().all(|v| index_of(v).is_none()));
    }

    #[test]
    fn only_istios_known_duplicates() {
        let mut seen = std::collections::HashSet::new();
        let dups: Vec<&str> = GLOBAL_WORDS.iter().copied().filter(|w| !seen.insert(*w)).collect();
        assert_eq!(dups, vec!["0", "1", "200"]);
        assert_eq!(index_of("0"), Some(GLOBAL_WORDS.iter().position(|w| *w == "0").unwrap() as i32));
    }
}
