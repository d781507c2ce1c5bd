//! Request paths as the proxy checks, routes and forwards them. On by default, as Envoy's
//! `normalize_path` and `merge_slashes`, which Istio turned on after CVE-2019-9901: a
//! policy on `/admin` must see `/public/../admin`, `//admin` and `/%61dmin` as the app
//! will, and the app must get the path that was checked.
//!
//! The rules, in order:
//! 1. every byte is one RFC 3986 allows in a path (unreserved, sub-delims, `:`, `@`, `/`,
//!    `%`); a percent sign starts an escape of two hex digits. Anything else is an error
//!    (400): control characters, space, `"`, `\`, `{`, `|`, bytes above 0x7F...;
//! 2. escapes of unreserved characters (ALPHA, DIGIT, `-`, `.`, `_`, `~`) are decoded
//!    (RFC 3986 §6.2.2.2); other escapes stay encoded, their hex digits in upper case.
//!    `%2F` in particular stays `%2F`: decoding it would change which segments the path
//!    has, and apps that read it as data (object keys) would get another resource;
//! 3. runs of slashes become one slash;
//! 4. `.` and `..` segments are resolved (RFC 3986 §5.2.4, `remove_dot_segments`); a `..`
//!    at the root stays at the root (`/../a` is `/a`), as RFC 3986 has it, rather than
//!    being an error.
//!
//! The result is idempotent: normalizing it again changes nothing. The query string is not
//! touched.

/// Why a path cannot be normalized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("a percent sign not followed by two hex digits")]
    BadEscape,
    #[error("byte 0x{0:02x} is not allowed in a path")]
    InvalidByte(u8),
    #[error("the path does not start with /")]
    NotAbsolute,
}

/// Bytes a path may hold as they are (RFC 3986 `pchar` and `/`, escapes aside).
static ALLOWED: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            );
        b += 1;
    }
    t
};

fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The byte an escape at `p[i]` (the `%`) stands for.
fn escape(p: &[u8], i: usize) -> Result<u8, PathError> {
    match (p.get(i + 1).copied().and_then(hex), p.get(i + 2).copied().and_then(hex)) {
        (Some(h), Some(l)) => Ok(h << 4 | l),
        _ => Err(PathError::BadEscape),
    }
}

/// The normalized form of `path`, or `None` when it is normal already (the common case,
/// found by one scan without allocating).
pub fn normalize(path: &str) -> Result<Option<String>, PathError> {
    let p = path.as_bytes();
    if p.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if !needs_work(p)? {
        return Ok(None);
    }
    Ok(Some(rewrite(p)))
}

/// Validates `p` and says whether normalizing would change it.
fn needs_work(p: &[u8]) -> Result<bool, PathError> {
    let mut work = false;
    // Where the current segment starts (after its slash).
    let mut segment = 1;
    let mut i = 1;
    while i < p.len() {
        match p[i] {
            b'/' => {
                work |= matches!(&p[segment..i], b"" | b"." | b"..");
                segment = i + 1;
            }
            b'%' => {
                let decoded = escape(p, i)?;
                work |= unreserved(decoded) || p[i + 1].is_ascii_lowercase() || p[i + 2].is_ascii_lowercase();
                i += 3;
                continue;
            }
            c if !ALLOWED[c as usize] => return Err(PathError::InvalidByte(c)),
            _ => {}
        }
        i += 1;
    }
    Ok(work || matches!(&p[segment..], b"." | b".."))
}

/// Decodes, merges and resolves a path `needs_work` accepted.
fn rewrite(p: &[u8]) -> String {
    // Validated: ASCII only, every escape complete.
    let mut decoded = String::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        if p[i] != b'%' {
            decoded.push(char::from(p[i]));
            i += 1;
            continue;
        }
        match escape(p, i) {
            Ok(c) if unreserved(c) => decoded.push(char::from(c)),
            _ => {
                decoded.push('%');
                for digit in p.iter().skip(i + 1).take(2) {
                    decoded.push(char::from(digit.to_ascii_uppercase()));
                }
            }
        }
        i += 3;
    }
    let mut out = String::with_capacity(decoded.len());
    // Where each segment kept in `out` starts, for `..` to drop it.
    let mut starts: Vec<usize> = Vec::new();
    // Whether the path ends in a slash: a last segment that is empty, `.` or `..`.
    let mut trailing = false;
    for segment in decoded[1..].split('/') {
        trailing = true;
        match segment {
            "" | "." => {}
            ".." => {
                if let Some(start) = starts.pop() {
                    out.truncate(start);
                }
            }
            s => {
                starts.push(out.len());
                out.push('/');
                out.push_str(s);
                trailing = false;
            }
        }
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(|n| n.unwrap_or_else(|| p.to_string()))
    }

    #[test]
    fn normal_paths_are_left_alone_without_a_copy() {
        for p in ["/", "/a", "/a/b/", "/a.b/c..d/.e/..f", "/%2F/%3A", "/a;b=c/d@e:f", "/~user/x-y_z"] {
            assert_eq!(normalize(p), Ok(None), "{p}");
        }
    }

    #[test]
    fn dot_segments_slashes_and_unreserved_escapes() {
        for (raw, want) in [
            ("/public/../admin", "/admin"),
            ("//admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a/./b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/b/../../..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/.", "/"),
            ("/..", "/"),
            ("/a//b///c//", "/a/b/c/"),
            ("/a/%2e%2E/b", "/b"),
            ("/a/%2F/../b", "/a/b"),
            ("/x%2fy%3a", "/x%2Fy%3A"),
            ("/%7Euser/%41%5a%30%2D%5F", "/~user/AZ0-_"),
            ("/a//../b", "/b"),
        ] {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn what_cannot_be_normalized_is_an_error() {
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%2"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%"), Err(PathError::BadEscape));
        for (p, b) in [("/a b", b' '), ("/a\"b", b'"'), ("/a\\b", b'\\'), ("/a{b", b'{'), ("/a|b", b'|')] {
            assert_eq!(normalize(p), Err(PathError::InvalidByte(b)), "{p}");
        }
        assert_eq!(normalize("/caf\u{e9}"), Err(PathError::InvalidByte(0xc3)));
        assert_eq!(normalize("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(normalize(""), Err(PathError::NotAbsolute));
    }

    /// Every path built from the pieces that matter, normalized twice: the second time
    /// changes nothing, and the result has no dot segments or empty segments.
    #[test]
    fn normalizing_is_idempotent() {
        let pieces = ["/", "a", ".", "..", "%2e", "%2F", "%41", "//", "b/"];
        let mut paths = vec![String::from("/")];
        for _ in 0..4 {
            let mut next = Vec::new();
            for p in &paths {
                for piece in pieces {
                    next.push(format!("{p}{piece}"));
                }
            }
            paths.extend(next);
            paths.sort();
            paths.dedup();
        }
        for p in &paths {
            let once = norm(p).unwrap();
            assert_eq!(normalize(&once), Ok(None), "{p} -> {once}");
            assert!(!once.contains("//") && !once.contains("/./") && !once.contains("/../"), "{p} -> {once}");
        }
    }
}
