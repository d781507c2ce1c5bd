//! Sharded counters and the deduplication record.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use mixr_rules::snapshot::InstanceValues;

use super::Params;
use crate::clock::Clock;
use crate::quota::window::{Ticks, Window};
use crate::quota::{counter_key, dimensions};
use crate::variety::{QuotaArgs, QuotaLimit, QuotaResult, Status, code};

const SHARDS: usize = 64;

enum Counter {
    Rolling {
        window: Window,
        ticks: Ticks,
    },
    /// validDuration 0: a plain allocation counter.
    Allocation(i64),
}

/// Answers given within the dedup interval, in two generations (so an id is remembered
/// for one to two intervals, as Mixer did).
#[derive(Default)]
struct Dedup {
    current: HashMap<String, QuotaResult>,
    previous: HashMap<String, QuotaResult>,
    rotated_at: Option<Instant>,
}

impl Dedup {
    fn rotate_if_due(&mut self, now: Instant, interval: Duration) {
        let Some(at) = self.rotated_at else {
            self.rotated_at = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(at);
        if elapsed >= interval * 2 {
            // Both generations are stale.
            self.current.clear();
            self.previous.clear();
            self.rotated_at = Some(now);
        } else if elapsed >= interval {
            self.previous = std::mem::take(&mut self.current);
            self.rotated_at = Some(now);
        }
    }

    fn get(&self, id: &str) -> Option<&QuotaResult> {
        self.current.get(id).or_else(|| self.previous.get(id))
    }
}

#[derive(Default)]
struct Shard {
    // Box<str>, not String: a million keys save 8 MB of capacity fields.
    counters: HashMap<Box<str>, Counter>,
    dedup: Dedup,
}

pub struct MemQuota {
    params: Params,
    shards: Vec<Mutex<Shard>>,
    clock: Arc<dyn Clock>,
    epoch: Instant,
}

impl MemQuota {
    pub fn new(params: Params, clock: Arc<dyn Clock>) -> MemQuota {
        let epoch = clock.now();
        MemQuota { params, shards: (0..SHARDS).map(|_| Mutex::default()).collect(), clock, epoch }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        // A panic elsewhere cannot leave a counter half-updated: every update is one
        // assignment, so a poisoned lock's data is still consistent.
        self.shards[(h.finish() as usize) % SHARDS].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn allocate(&self, instance: &InstanceValues, instance_name: &str, args: &QuotaArgs) -> QuotaResult {
        let Some(q) = self.params.quotas.iter().find(|q| q.configures(instance_name)) else {
            return QuotaResult::failed(Status::new(
                code::INTERNAL,
                format!("memquota: no quota configured for {instance_name}"),
            ));
        };
        let dims = dimensions(instance);
        let limit = q.limit_for(&dims);
        let key = counter_key(&q.name, &dims, &limit);
        let now = self.clock.now();
        let mut shard = self.shard(&key);
        let dedup_key = (!args.dedup_id.is_empty()).then(|| format!("{}\u{0}{key}", args.dedup_id));
        if let Some(id) = &dedup_key {
            shard.dedup.rotate_if_due(now, self.params.min_dedup);
            if let Some(earlier) = shard.dedup.get(id) {
                return earlier.clone();
            }
        }
        let result = if limit.window.is_zero() {
            let counter = shard.counters.entry(key.into_boxed_str()).or_insert(Counter::Allocation(0));
            if !matches!(counter, Counter::Allocation(_)) {
                *counter = Counter::Allocation(0);
            }
            let Counter::Allocation(used) = counter else {
                return QuotaResult::failed(Status::new(code::INTERNAL, "memquota: counter kind changed"));
            };
            let granted = if args.amount < 0 {
                // A release: never below zero.
                let released = (-args.amount).min(*used);
                *used -= released;
                -released
            } else {
                let available = (limit.max_amount - *used).max(0);
                let g = if args.amount <= available {
                    args.amount
                } else if args.best_effort {
                    available
                } else {
                    0
                };
                *used += g;
                g
            };
            QuotaResult {
                status: Status::ok(),
                granted,
                valid_duration: Duration::ZERO,
                limit: Some(QuotaLimit {
                    max_amount: limit.max_amount,
                    window: Duration::ZERO,
                    remaining: (limit.max_amount - *used).max(0),
                    reset_after: Duration::ZERO,
                }),
            }
        } else if args.amount < 0 {
            QuotaResult::failed(Status::new(
                code::INVALID_ARGUMENT,
                "negative amounts release only allocation quotas (validDuration 0)",
            ))
        } else {
            let ticks = Ticks::for_window(limit.window);
            let tick = ticks.tick_of(now.saturating_duration_since(self.epoch));
            let counter = shard
                .counters
                .entry(key.into_boxed_str())
                .or_insert_with(|| Counter::Rolling { window: Window::default(), ticks });
            if !matches!(counter, Counter::Rolling { .. }) {
                *counter = Counter::Rolling { window: Window::default(), ticks };
            }
            let Counter::Rolling { window, ticks } = counter else {
                return QuotaResult::failed(Status::new(code::INTERNAL, "memquota: counter kind changed"));
            };
            let a = window.allocate(tick, *ticks, limit.max_amount, args.amount, args.best_effort);
            let until_reset = Duration::from_nanos(a.reset_ticks.saturating_mul(ticks.tick_nanos));
            QuotaResult {
                status: Status::ok(),
                granted: a.granted,
                valid_duration: limit.window,
                limit: Some(QuotaLimit {
                    max_amount: limit.max_amount,
                    window: limit.window,
                    remaining: a.remaining,
                    reset_after: until_reset,
                }),
            }
        };
        if let Some(id) = dedup_key {
            shard.dedup.current.insert(id, result.clone());
        }
        result
    }

    /// Drops counters nothing counts in any more, and stale dedup records.
    pub fn sweep(&self) {
        let now = self.clock.now();
        let since = now.saturating_duration_since(self.epoch);
        for shard in &self.shards {
            let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
            s.counters.retain(|_, c| match c {
                Counter::Rolling { window, ticks } => {
                    window.retire(ticks.tick_of(since), *ticks);
                    !window.is_idle()
                }
                Counter::Allocation(used) => *used != 0,
            });
            s.dedup.rotate_if_due(now, self.params.min_dedup);
        }
    }

    /// Counters currently held (for tests and memory accounting).
    pub fn counters(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).counters.len()).sum()
    }

    /// Sweeps in the background until the handler is dropped.
    pub fn start_sweeping(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let weak: Weak<MemQuota> = Arc::downgrade(self);
        let shortest = self.params.quotas.iter().map(|q| q.valid_duration).filter(|d| !d.is_zero()).min();
        let interval =
            shortest.unwrap_or(Duration::from_secs(60)).clamp(Duration::from_secs(1), Duration::from_secs(60));
        rt.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(q) = weak.upgrade() else { return };
                q.sweep();
            }
        });
    }
}
