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
        // 9.9 MB below zero: a byte waits for 9.9 MB (and itself) to be earned back.
        assert_eq!(bucket.delay(later, 1), Duration::from_secs_f64(9_900_001.0 / 1_000_000.0));
        // 10.1 s later the bucket is full again: 100 kB, not the 200 kB earned (the burst caps
        // it). Then 10 kB messages: the first 10 go at once, each of the other 990 waits 10 ms.
        let full = later + Duration::from_millis(10_100);
        let mut now = full;
        let mut waits = Vec::new();
        for _ in 0..1000 {
            let wait = bucket.delay(now, 10_000);
            waits.push(wait);
            now += wait;
            bucket.consume(now, 10_000);
        }
        assert!(waits[..10].iter().all(Duration::is_zero), "the burst goes at once: {:?}", &waits[..10]);
        for (index, wait) in waits.iter().enumerate().skip(10) {
            assert!(
                wait.abs_diff(Duration::from_millis(10)) < Duration::from_micros(1),
                "message {index} waited {wait:?}"
            );
        }
        // 10 MB in 9.9 s: the rate, after the burst.
        assert!((now - full).abs_diff(Duration::from_millis(9_900)) < Duration::from_millis(1), "{:?}", now - full);
    }
}
