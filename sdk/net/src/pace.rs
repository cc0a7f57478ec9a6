//! A token bucket that paces bulk bytes on a link (invariant 6: bounded interference).
//!
//! Pure: the caller passes the time. `rate` bytes per second refill the bucket up to `burst`
//! bytes; sending `n` bytes takes `n` tokens, and when there are not enough, [`TokenBucket::delay`]
//! says how long to wait (or [`TokenBucket::delay_with_slack`], for a caller whose timer wakes it
//! late). A message larger than the burst may go once the bucket is full, driving it negative, so
//! large messages are paced rather than refused.

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
        self.delay_with_slack(now, bytes, Duration::ZERO)
    }

    /// How long to wait before `bytes` may be sent (zero: now) by a caller whose sleeps wake up
    /// to `slack` late (a timer of that granularity): they may go when the bucket is short of
    /// them by no more than `slack` of the rate. What such a sleep oversleeps then refills the
    /// bucket to no more than the bytes it waited for, so nothing is lost at the burst's cap and
    /// the rate holds; over any span the bytes sent exceed the burst plus what the rate moves in
    /// the span by at most `slack` of the rate, plus, for a message larger than the burst, its
    /// excess over it. With a wait for every byte instead, each message waits for a timer tick it
    /// only partly needs: a link capped at 200 MB/s with a 1 ms timer moved 100-150 MB/s.
    pub fn delay_with_slack(&mut self, now: Instant, bytes: usize, slack: Duration) -> Duration {
        self.refill(now);
        let needed = (bytes as f64).min(self.burst) - slack.as_secs_f64() * self.rate;
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

    /// Sends `messages` of `bytes` through `bucket`, each wait ending at the next whole
    /// millisecond after it is due (a timer of 1 ms granularity); returns the bytes per second
    /// moved after the first message, and the most tokens the bucket ran below empty.
    fn through_a_coarse_timer(bucket: &mut TokenBucket, bytes: usize, messages: usize, slack: Duration) -> (f64, f64) {
        let start = Instant::now();
        let mut now = start;
        let mut lowest: f64 = 0.0;
        for _ in 0..messages {
            let wait = bucket.delay_with_slack(now, bytes, slack);
            if !wait.is_zero() {
                let due = (now - start + wait).as_micros().div_ceil(1000);
                now = start + Duration::from_millis(due as u64);
            }
            bucket.consume(now, bytes);
            lowest = lowest.min(bucket.tokens);
        }
        (((messages - 1) * bytes) as f64 / (now - start).as_secs_f64(), lowest)
    }

    #[test]
    fn a_sender_with_a_coarse_timer_keeps_to_the_rate_when_it_allows_for_the_timer() {
        // 225 kB messages at 200 MB/s with a 256 kB burst: each needs 1.125 ms of tokens.
        let rate = 200_000_000.0;
        let mut exact = TokenBucket::new(200_000_000, 256_000, Instant::now());
        let (without, lowest) = through_a_coarse_timer(&mut exact, 225_000, 400, Duration::ZERO);
        assert!(without < 0.8 * rate, "waiting for every byte, {without} B/s");
        assert!(lowest >= -1.0, "and never below empty: {lowest}");
        let mut slack = TokenBucket::new(200_000_000, 256_000, Instant::now());
        let (with, lowest) = through_a_coarse_timer(&mut slack, 225_000, 400, Duration::from_millis(1));
        assert!((with - rate).abs() < 0.02 * rate, "allowing 1 ms for the timer, {with} B/s");
        assert!(lowest >= -200_001.0, "at most 1 ms of the rate below empty: {lowest}");
        // Without a wait to make, the slack changes nothing.
        let mut idle = TokenBucket::new(1_000, 10_000, Instant::now());
        assert_eq!(idle.delay_with_slack(Instant::now(), 10_000, Duration::from_secs(1)), Duration::ZERO);
    }
}
