//! A small, fast pseudo-random source for traffic decisions (weights, fault percentages,
//! jitter). Not for secrets.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0x9e37_79b9);
    let here = &t as *const u64 as u64;
    (t ^ here.rotate_left(32)) | 1
}

/// xorshift64*: uniform enough for splitting traffic.
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// Uniform in `0..n` (0 when n is 0).
pub fn below(n: u32) -> u32 {
    if n == 0 { 0 } else { (next_u64() % n as u64) as u32 }
}

/// True with probability `percent`/100.
pub fn chance(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && (next_u64() % 1_000_000) as f64 / 10_000.0 < percent)
}
