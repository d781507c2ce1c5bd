//! Helpers adapters share when reading their params.

use std::time::Duration;

use mixr_rules::config::{ConfigError, Param};

/// A non-negative duration param.
pub fn duration(p: Param<'_>) -> Result<Duration, ConfigError> {
    let d = p.duration()?;
    if d.as_nanos() < 0 {
        return Err(p.error("must not be negative"));
    }
    Ok(d.to_std())
}

/// A non-negative count that fits an i32 (valid use counts).
pub fn count(p: Param<'_>) -> Result<i32, ConfigError> {
    let n = p.i64()?;
    i32::try_from(n).ok().filter(|n| *n >= 0).ok_or_else(|| p.error(format!("{n} is out of range (0 to {})", i32::MAX)))
}

/// `url` with the password of its userinfo replaced by `****` (`redis://:****@host:6379`),
/// for anything shown: errors, logs, debug pages. Other text is returned as it is.
pub fn redact_url(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = url.find("://") else { return url.into() };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..].find(['/', '?', '#']).map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else { return url.into() };
    let Some(colon) = authority[..at].find(':') else { return url.into() };
    let password = authority_start + colon + 1..authority_start + at;
    format!("{}****{}", &url[..password.start], &url[password.end..]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(redact_url("redis://:s3cret@host:6379"), "redis://:****@host:6379");
        assert_eq!(
            redact_url("postgres://mixr:s3cret@db:5432/logs?sslmode=require"),
            "postgres://mixr:****@db:5432/logs?sslmode=require"
        );
        assert_eq!(redact_url("https://u:p@lists.example.com/a@b"), "https://u:****@lists.example.com/a@b");
        assert_eq!(redact_url("https://p:a:ss@h/"), "https://p:****@h/", "a colon in the password");
        for plain in ["redis://host:6379", "https://user@host/", "localhost:6379", "file:///etc/list", "x@y:z"] {
            assert_eq!(redact_url(plain), plain);
        }
    }
}
