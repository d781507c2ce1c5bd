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
