//! A token bucket that paces bulk bytes on a link (invariant 6: bounded interference).
//!
//! Pure: the caller passes the time. `rate` bytes per second refill the bucket up to `burst`
//! bytes; sending `n` bytes takes `n` tokens, and when there are not enough, [`TokenBucket::delay`]
//! says how long to wait. A message larger than the burst may go once the bucket is full, driving
//! it negative, so large messages are paced rather than refused.

use std::time::{Duration, Instant};

/// Paces bytes at a configured rate.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket: `bytes_per_second` sustained, `burst_bytes` at once.
    #[must_use]
    pub fn new(bytes_per_second: u64, burst_bytes: u64, now: Instant) -> TokenBucket {
        let burst = burst_bytes.max(1) as f64;
        TokenBucket { rate: bytes_per_second.max(1) as f64, burst, tokens: burst, updated: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
    }

    /// How long to wait before `bytes` may be sent (zero: now).
    pub fn delay(&mut self, now: Instant, bytes: usize) -> Duration {
        self.refill(now);
        let needed = (bytes as f64).min(self.burst);
        if self.tokens >= needed { Duration::ZERO } else { Duration::from_secs_f64((needed - self.tokens) / self.rate) }
    }

    /// Records that `bytes` were sent at `now`.
    pub fn consume(&mut self, now: Instant, bytes: usize) {
        self.refill(now);
        self.tokens -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_to_the_rate_after_the_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1_000_000, 100_000, start);
        assert_eq!(bucket.delay(start, 100_000), Duration::ZERO);
        bucket.consume(start, 100_000);
        // Empty: 50 kB needs 50 ms at 1 MB/s.
        assert_eq!(bucket.delay(start, 50_000), Duration::from_millis(50));
        // A 10 MB message waits for a full bucket, then drives it negative: the next waits longer.
        let later = start + Duration::from_millis(100);
        assert_eq!(bucket.delay(later, 10_000_000), Duration::ZERO);
        bucket.consume(later, 10_000_000);
        assert!(bucket.delay(later, 1) >= Duration::from_secs(9));
        // Over 10 s the bucket let through about rate x time.
        let mut sent = 0usize;
        let mut now = later + Duration::from_secs(10);
        for _ in 0..1000 {
            let wait = bucket.delay(now, 10_000);
            now += wait;
            bucket.consume(now, 10_000);
            sent += 10_000;
        }
        assert!(now > later + Duration::from_secs(10), "{sent} bytes cannot all go at once");
    }
}
