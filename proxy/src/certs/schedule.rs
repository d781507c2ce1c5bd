//! When a certificate is renewed: at half its lifetime, as Istio's node agent did, so a
//! CA outage as long as half a lifetime costs nothing; after a failure, sooner and sooner
//! as expiry nears.

use std::time::{Duration, SystemTime};

/// The first retry after a failure; doubled per failure up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// Never renew sooner than this after a success: a CA that hands out certificates about
/// to expire must not make the sidecar ask in a loop.
pub const MIN_RENEWAL: Duration = Duration::from_millis(500);

/// Half-way between receipt and expiry. Not from `notBefore`: CAs backdate it to absorb
/// clock skew (mixr's by a minute), which would put "half-way" in the past for short
/// lifetimes.
pub fn renew_at(received: SystemTime, not_after: SystemTime) -> SystemTime {
    let left = not_after.duration_since(received).unwrap_or_default();
    received + (left / 2).max(MIN_RENEWAL)
}

/// How long to wait after the `failures`-th failure in a row: exponential from
/// [`FIRST_RETRY`] to [`MAX_RETRY`], but never past a tenth of the time the held
/// certificate (if any) has left.
pub fn retry_after(failures: u32, held_until: Option<SystemTime>, now: SystemTime) -> Duration {
    let backoff = FIRST_RETRY.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(MAX_RETRY);
    match held_until.and_then(|t| t.duration_since(now).ok()) {
        Some(left) => backoff.min((left / 10).max(Duration::from_millis(100))),
        None => backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn renewal_at_half_life() {
        assert_eq!(renew_at(at(1000), at(1000 + 86_400)), at(1000 + 43_200));
        assert_eq!(renew_at(at(1000), at(1004)), at(1002));
        let soon = renew_at(at(1000), at(900));
        assert_eq!(soon, at(1000) + MIN_RENEWAL, "an expired answer is not asked again at once");
    }

    #[test]
    fn retries_back_off_but_not_past_expiry() {
        assert_eq!(retry_after(1, None, at(0)), FIRST_RETRY);
        assert_eq!(retry_after(2, None, at(0)), FIRST_RETRY * 2);
        assert_eq!(retry_after(40, None, at(0)), MAX_RETRY);
        // 20 s left on the held certificate: retry within 2 s, not 30.
        assert_eq!(retry_after(40, Some(at(120)), at(100)), Duration::from_secs(2));
        assert_eq!(retry_after(40, Some(at(100)), at(100)), Duration::from_millis(100));
    }
}
