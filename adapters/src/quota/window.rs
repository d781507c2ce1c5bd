//! The rolling-window counter itself (memquota's; redisquota's Lua script mirrors it).

use std::time::Duration;

/// How a window is cut into ticks. Sub-second windows use 10 ticks (Mixer's 100 ms at 1 s);
/// longer ones up to 60, so memory per counter stays small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticks {
    pub tick_nanos: u64,
    pub per_window: u64,
}

impl Ticks {
    pub fn for_window(window: Duration) -> Ticks {
        let n = (window.as_millis().div_ceil(100) as u64).clamp(10, 60);
        Ticks::new(window, n)
    }

    /// Buckets of `bucket` (redisquota's bucketDuration): ceil(window / bucket) per window.
    pub fn with_bucket(window: Duration, bucket: Duration) -> Ticks {
        let bucket = nanos(bucket).max(1);
        Ticks { tick_nanos: bucket, per_window: nanos(window).div_ceil(bucket).max(1) }
    }

    fn new(window: Duration, n: u64) -> Ticks {
        Ticks { tick_nanos: (nanos(window) / n).max(1), per_window: n }
    }

    pub fn tick_of(&self, since_epoch: Duration) -> u64 {
        nanos(since_epoch) / self.tick_nanos
    }
}

/// Durations in nanoseconds; u64 holds 584 years.
fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// Grants of one counter, by tick, oldest first. A Vec rather than a VecDeque: most
/// counters hold one bucket, and a Vec allocates room for just that (at most 61 entries
/// are ever shifted).
#[derive(Debug, Default, Clone)]
pub struct Window {
    buckets: Vec<(u64, i64)>,
    sum: i64,
}

/// What an allocation did, and the counter's state after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub granted: i64,
    pub remaining: i64,
    /// Ticks until the oldest grant stops counting (0 when nothing counts).
    pub reset_ticks: u64,
}

impl Window {
    /// Drops buckets that no longer count at tick `now`.
    pub fn retire(&mut self, now: u64, ticks: Ticks) {
        let expired = self.buckets.iter().take_while(|(b, _)| b + 1 + ticks.per_window <= now).count();
        if expired > 0 {
            self.sum -= self.buckets[..expired].iter().map(|(_, a)| a).sum::<i64>();
            self.buckets.drain(..expired);
            if self.buckets.is_empty() {
                self.buckets = Vec::new();
            }
        }
    }

    pub fn is_idle(&self) -> bool {
        self.buckets.is_empty()
    }

    pub fn used(&self) -> i64 {
        self.sum
    }

    /// Grants `amount` (or what is left, with `best_effort`) if it fits under `max`.
    pub fn allocate(&mut self, now: u64, ticks: Ticks, max: i64, amount: i64, best_effort: bool) -> Allocation {
        self.retire(now, ticks);
        let available = (max - self.sum).max(0);
        let granted = if amount <= available {
            amount
        } else if best_effort {
            available
        } else {
            0
        };
        if granted > 0 {
            match self.buckets.last_mut() {
                Some((b, a)) if *b == now => *a += granted,
                _ => {
                    if self.buckets.capacity() == 0 {
                        self.buckets.reserve_exact(1);
                    }
                    self.buckets.push((now, granted));
                }
            }
            self.sum += granted;
        }
        let reset_ticks = self.buckets.first().map_or(0, |(b, _)| (b + 1 + ticks.per_window).saturating_sub(now));
        Allocation { granted, remaining: (max - self.sum).max(0), reset_ticks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_count_for_at_least_a_window() {
        let t = Ticks::for_window(Duration::from_secs(1));
        assert_eq!((t.tick_nanos, t.per_window), (100_000_000, 10));
        let mut w = Window::default();
        assert_eq!(w.allocate(5, t, 3, 2, false).granted, 2);
        assert_eq!(w.allocate(9, t, 3, 2, false).granted, 0, "all-or-nothing");
        assert_eq!(w.allocate(9, t, 3, 2, true).granted, 1, "best effort takes what is left");
        // Tick 5's grant counts until tick 16 (5 + 1 + 10).
        assert_eq!(w.allocate(15, t, 3, 1, false).granted, 0);
        let a = w.allocate(16, t, 3, 2, false);
        assert_eq!((a.granted, a.remaining), (2, 0));
        assert_eq!(a.reset_ticks, 4, "tick 9's grant retires at tick 20");
        w.retire(100, t);
        assert!(w.is_idle());
        assert_eq!(w.used(), 0);
    }

    #[test]
    fn tick_sizes() {
        assert_eq!(Ticks::for_window(Duration::from_millis(100)).per_window, 10);
        assert_eq!(Ticks::for_window(Duration::from_secs(3)).per_window, 30);
        let h = Ticks::for_window(Duration::from_secs(3600));
        assert_eq!((h.per_window, h.tick_nanos), (60, 60_000_000_000));
        let b = Ticks::with_bucket(Duration::from_secs(1), Duration::from_millis(300));
        assert_eq!((b.per_window, b.tick_nanos), (4, 300_000_000));
    }
}
