//! A delay-based "scavenger" congestion controller for bulk links (LEDBAT, RFC 6817, with the
//! multiplicative decrease of LEDBAT++): it backs off as soon as the link's round trip grows past
//! its target, so a handoff's state yields to players' updates crossing the same link (invariant
//! 6), down to a floor that keeps the handoff going. The fixed rate of [`crate::TokenBucket`] stays
//! above it as a cap.
//!
//! The queueing delay is the connection's smoothed round trip (quinn's, corrected for the ack
//! delay the peer reports) minus the least round trip seen on it. What it measures is the whole
//! round trip's growth: queues on the way there and back, and a receiver slow to read (a busy
//! process), which it yields to as well. Baton opens one connection per handoff, so that least
//! round trip is fresh (standby feeds, which live as long as their region, do not use it). Per
//! acknowledged byte the window grows by `GAIN * (1 - queueing / target)` segments per window while
//! the queue is below `target`, and shrinks by `min(queueing / target - 1, 1/2)` of the
//! acknowledged bytes above it (at most half the window per round trip). A loss halves it, as in
//! every TCP-friendly controller. Slow start doubles the window per round trip until the queue
//! reaches three quarters of `target` (the smoothed round trip lags a few round trips behind, so it
//! overshoots by about that much). No rule takes the window below four packets, nor below what
//! sends [`LedbatConfig::floor_bytes_per_second`] at the current round trip.
//!
//! The arithmetic is in [`Ledbat::acked`] and [`Ledbat::lost`], which take the delays as numbers,
//! so that the tests can drive it against a model of a link.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};

/// Settings of the controller.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LedbatConfig {
    /// The queueing delay the bulk link may add (RFC 6817 allows at most 100 ms; players'
    /// updates share the queue, so Baton aims far lower).
    pub target: Duration,
    /// Segments the window grows per round trip with an empty queue.
    pub gain: f64,
    /// The window at the start, in segments.
    pub initial_segments: u64,
    /// The window never goes below this many segments (RFC 6817 says 2; a QUIC receiver
    /// acknowledges every second packet at once and a lone one only after its ack delay, 25 ms,
    /// so a window of two packets with one in flight crawls at one packet per 25 ms).
    pub min_segments: u64,
    /// Nor below what sends this many bytes per second at the current round trip: a handoff
    /// makes progress however busy the link (without it, a link full of other traffic, or a
    /// receiver too busy to read for a while, shrinks the window until a chunk takes longer than
    /// the peer's silence limit to cross).
    pub floor_bytes_per_second: f64,
}

impl Default for LedbatConfig {
    fn default() -> Self {
        LedbatConfig {
            target: Duration::from_millis(2),
            gain: 1.0,
            initial_segments: 4,
            min_segments: 4,
            floor_bytes_per_second: 1e6,
        }
    }
}

impl ControllerFactory for LedbatConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Ledbat::new(*self, now, current_mtu))
    }
}

/// The controller of one connection.
#[derive(Clone, Debug)]
pub struct Ledbat {
    config: LedbatConfig,
    mtu: f64,
    window: f64,
    slow_start: bool,
    /// Packets sent before this were sent before the last loss was handled.
    recovery_start: Instant,
    /// The round trip at the last acknowledgement (for the floor).
    round_trip: Duration,
}

impl Ledbat {
    /// A controller in slow start with the initial window.
    #[must_use]
    pub fn new(config: LedbatConfig, now: Instant, mtu: u16) -> Ledbat {
        let mtu = f64::from(mtu);
        Ledbat {
            window: config.initial_segments.max(config.min_segments) as f64 * mtu,
            config,
            mtu,
            slow_start: true,
            recovery_start: now,
            round_trip: Duration::ZERO,
        }
    }

    fn min_window(&self) -> f64 {
        let floor = self.config.floor_bytes_per_second.max(0.0) * self.round_trip.as_secs_f64();
        (self.config.min_segments.max(1) as f64 * self.mtu).max(floor)
    }

    /// The window, in bytes.
    #[must_use]
    pub fn window_bytes(&self) -> u64 {
        self.window as u64
    }

    /// Whether it is still in slow start.
    #[must_use]
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }

    /// `bytes` sent at `sent` were acknowledged `latest` later; the link's round trip is
    /// `smoothed` now and was never less than `least`. `app_limited`: the sender had nothing more
    /// to send, so the window was not the limit (it does not grow then, but it still shrinks under
    /// a queue). The floor is worked out from the lesser of `latest` and `smoothed`: before its
    /// first sample quinn's smoothed round trip is its initial guess (333 ms), which would make
    /// the floor a third of a megabyte.
    pub fn acked(
        &mut self,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        latest: Duration,
        smoothed: Duration,
        least: Duration,
    ) {
        self.round_trip = smoothed.min(latest);
        if sent < self.recovery_start {
            return;
        }
        let target = self.config.target.as_secs_f64().max(1e-6);
        let queueing = smoothed.saturating_sub(least).as_secs_f64();
        let bytes = bytes as f64;
        if self.slow_start && queueing >= 0.75 * target {
            self.slow_start = false;
        }
        if queueing > target {
            let share = (queueing / target - 1.0).min(0.5);
            self.window -= share * bytes;
        } else if !app_limited {
            if self.slow_start {
                self.window += bytes;
            } else {
                let off_target = 1.0 - queueing / target;
                self.window += self.config.gain * off_target * bytes * self.mtu / self.window;
            }
        }
        self.window = self.window.max(self.min_window());
    }

    /// Packets sent at `sent` were lost at `now` (or marked congested); `persistent`: every packet
    /// of the persistent-congestion period was.
    pub fn lost(&mut self, now: Instant, sent: Instant, persistent: bool) {
        if persistent {
            self.window = self.min_window();
            self.recovery_start = now;
            self.slow_start = false;
            return;
        }
        if sent < self.recovery_start {
            return;
        }
        self.recovery_start = now;
        self.slow_start = false;
        self.window = (self.window / 2.0).max(self.min_window());
    }
}

impl Controller for Ledbat {
    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &quinn_proto::RttEstimator) {
        self.acked(sent, bytes, app_limited, now.saturating_duration_since(sent), rtt.get(), rtt.min());
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent_congestion: bool, _lost_bytes: u64) {
        self.lost(now, sent, is_persistent_congestion);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = f64::from(new_mtu);
        self.window = self.window.max(self.min_window());
    }

    fn window(&self) -> u64 {
        self.window_bytes()
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = ControllerMetrics::default();
        metrics.congestion_window = self.window_bytes();
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        (self.config.initial_segments.max(self.config.min_segments) as f64 * self.mtu) as u64
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    //! The controller against a model of one bottleneck: a link of fixed rate and base round
    //! trip with a FIFO queue, fed one window per round trip (a fluid model, enough to check the
    //! loop's gains and the queue it settles at).

    use super::*;

    const MTU: u16 = 1200;

    /// A target of 5 ms, which the figures below are worked out for.
    fn five() -> LedbatConfig {
        LedbatConfig { target: Duration::from_millis(5), ..LedbatConfig::default() }
    }

    /// Runs `rounds` round trips of a sender always wanting to send over a link of `rate` bytes
    /// per second and `base` round trip; `cross` bytes per second of other traffic share the
    /// queue. Returns (queueing delay, throughput) per round.
    fn run(config: LedbatConfig, rate: f64, base: Duration, cross: f64, rounds: usize) -> Vec<(Duration, f64)> {
        let start = Instant::now();
        let mut ledbat = Ledbat::new(config, start, MTU);
        let mut now = start;
        let mut queue = 0.0_f64; // bytes waiting at the bottleneck
        let mut smoothed = base;
        let mut trace = Vec::new();
        for _ in 0..rounds {
            let window = ledbat.window_bytes() as f64;
            let rtt = base + Duration::from_secs_f64(queue / rate);
            // One round trip: the window and the cross traffic arrive, the link drains its rate.
            let drained = rate * rtt.as_secs_f64();
            let arriving = window + cross * rtt.as_secs_f64();
            let throughput = window.min(drained * window / arriving.max(1.0)) / rtt.as_secs_f64();
            queue = (queue + arriving - drained).max(0.0);
            smoothed = (smoothed * 7 + rtt) / 8;
            let sent = now;
            now += rtt;
            // Acknowledged a segment at a time, as quinn reports them.
            let mut left = window;
            while left > 0.0 {
                let bytes = left.min(f64::from(MTU));
                ledbat.acked(sent, bytes as u64, false, rtt, smoothed, base);
                left -= bytes;
            }
            trace.push((Duration::from_secs_f64(queue / rate), throughput));
        }
        trace
    }

    #[test]
    fn alone_on_a_link_it_fills_it_and_keeps_the_queue_near_its_target() {
        let rate = 12.5e6; // 100 Mbit/s
        let config = five();
        let trace = run(config, rate, Duration::from_millis(1), 0.0, 4000);
        let settled = &trace[2000..];
        let worst = settled.iter().map(|(queue, _)| *queue).max().unwrap();
        assert!(worst <= config.target * 2, "queue up to {worst:?} against a target of {:?}", config.target);
        let mean = settled.iter().map(|(_, throughput)| throughput).sum::<f64>() / settled.len() as f64;
        assert!(mean >= 0.9 * rate, "uses {:.0}% of the link", 100.0 * mean / rate);
    }

    #[test]
    fn a_queue_above_target_shrinks_the_window_and_below_it_grows_it() {
        let now = Instant::now();
        let base = Duration::from_millis(1);
        let mut ledbat = Ledbat::new(five(), now, MTU);
        ledbat.slow_start = false;
        ledbat.window = 100.0 * f64::from(MTU);
        // 10 ms of queue against 5: half of each acknowledged byte comes off.
        ledbat.acked(now, 12_000, false, base + Duration::from_millis(11), base + Duration::from_millis(11), base);
        assert_eq!(ledbat.window_bytes(), 120_000 - 6_000);
        // 7.5 ms: a half again, the most per acknowledged byte.
        let before = ledbat.window;
        ledbat.acked(
            now,
            12_000,
            false,
            base + Duration::from_micros(7_500),
            base + Duration::from_micros(7_500),
            base,
        );
        assert!((before - ledbat.window - 6_000.0).abs() < 1e-6);
        // 6 ms: a fifth.
        let before = ledbat.window;
        ledbat.acked(now, 10_000, false, base + Duration::from_millis(6), base + Duration::from_millis(6), base);
        assert!((before - ledbat.window - 2_000.0).abs() < 1e-6, "{}", before - ledbat.window);
        // Empty queue: one segment per window of acknowledged bytes.
        let before = ledbat.window;
        ledbat.acked(now, before as u64, false, base, base, base);
        assert!((ledbat.window - before - f64::from(MTU)).abs() < 1.0, "{}", ledbat.window - before);
        // Half the target: half a segment.
        let before = ledbat.window;
        ledbat.acked(
            now,
            before as u64,
            false,
            base + Duration::from_micros(2_500),
            base + Duration::from_micros(2_500),
            base,
        );
        assert!((ledbat.window - before - f64::from(MTU) / 2.0).abs() < 1.0, "{}", ledbat.window - before);
        // Exactly at the target: no change.
        let before = ledbat.window;
        ledbat.acked(now, 50_000, false, base + Duration::from_millis(5), base + Duration::from_millis(5), base);
        assert!((ledbat.window - before).abs() < 1e-9);
        // With nothing more to send it does not grow.
        let before = ledbat.window;
        ledbat.acked(now, 50_000, true, base, base, base);
        assert!((ledbat.window - before).abs() < 1e-9);
    }

    #[test]
    fn it_takes_only_what_other_traffic_leaves() {
        let rate = 12.5e6;
        let base = Duration::from_millis(1);
        let config = five();
        // Other traffic takes 85% of the link: the bulk link settles at most at the rest, with
        // the queue near its target (not at the link's whole buffer).
        let crowded = run(config, rate, base, 0.85 * rate, 3000);
        let settled = &crowded[2000..];
        let mean = settled.iter().map(|(_, throughput)| throughput).sum::<f64>() / settled.len() as f64;
        assert!(mean <= 0.16 * rate, "takes {:.0}% of the link", 100.0 * mean / rate);
        assert!(mean >= 0.1 * rate, "leaves spare capacity unused: {:.0}% of the link", 100.0 * mean / rate);
        let worst = settled.iter().map(|(queue, _)| *queue).max().unwrap();
        assert!(worst <= config.target * 2, "queue up to {worst:?}");
    }

    #[test]
    fn with_the_default_settings_it_fills_a_link_alone_and_keeps_the_queue_near_its_target() {
        let rate = 12.5e6;
        let config = LedbatConfig::default();
        for base in [Duration::from_micros(200), Duration::from_millis(1), Duration::from_millis(20)] {
            let trace = run(config, rate, base, 0.0, 6000);
            let settled = &trace[4000..];
            let worst = settled.iter().map(|(queue, _)| *queue).max().unwrap();
            assert!(worst <= config.target * 2, "base {base:?}: queue up to {worst:?}");
            let mean = settled.iter().map(|(_, throughput)| throughput).sum::<f64>() / settled.len() as f64;
            assert!(mean >= 0.9 * rate, "base {base:?}: uses {:.0}% of the link", 100.0 * mean / rate);
        }
    }

    #[test]
    fn quinns_first_guess_of_the_round_trip_does_not_raise_the_floor() {
        let now = Instant::now();
        let mut ledbat = Ledbat::new(LedbatConfig::default(), now, MTU);
        // The handshake's acknowledgement: quinn's smoothed round trip is still its initial
        // 333 ms; the sample itself took 0.2 ms.
        let initial = Duration::from_millis(333);
        ledbat.acked(now, 1200, true, Duration::from_micros(200), initial, initial);
        assert_eq!(ledbat.window_bytes(), 4 * 1200, "the initial window, not 333 kB");
    }

    #[test]
    fn however_long_the_queue_it_keeps_sending_at_its_floor() {
        let now = Instant::now();
        let base = Duration::from_millis(1);
        let mut ledbat = Ledbat::new(five(), now, MTU);
        ledbat.slow_start = false;
        ledbat.window = 100_000.0;
        // A round trip of 201 ms, 200 of them queue: shrink as far as the floor allows, which
        // still sends 1 MB/s at that round trip.
        for _ in 0..100 {
            ledbat.acked(now, 10_000, false, Duration::from_millis(201), Duration::from_millis(201), base);
        }
        assert_eq!(ledbat.window_bytes(), 201_000);
        let rate = ledbat.window_bytes() as f64 / 0.201;
        assert!((rate - 1e6).abs() < 1.0, "{rate}");
        // Losses do not take it below the floor either.
        ledbat.lost(now + Duration::from_secs(1), now + Duration::from_secs(1), false);
        assert_eq!(ledbat.window_bytes(), 201_000);
    }

    #[test]
    fn slow_start_ends_near_the_target_and_losses_halve_the_window() {
        let now = Instant::now();
        let base = Duration::from_millis(1);
        let mut ledbat = Ledbat::new(five(), now, MTU);
        assert_eq!(ledbat.window_bytes(), 4 * 1200);
        ledbat.acked(now, 4800, false, base, base + Duration::from_micros(3_700), base);
        assert_eq!(ledbat.window_bytes(), 9600, "slow start doubles per window");
        assert!(ledbat.in_slow_start(), "below three quarters of the target it goes on");
        ledbat.acked(now, 1200, false, base, base + Duration::from_micros(3_750), base);
        assert!(!ledbat.in_slow_start(), "three quarters of the target ends it");
        let window = ledbat.window_bytes();
        let later = now + Duration::from_millis(10);
        ledbat.lost(later, now + Duration::from_millis(1), false);
        assert_eq!(ledbat.window_bytes(), window / 2);
        // Losses of packets sent before the first was handled count once.
        ledbat.lost(later + Duration::from_millis(1), now + Duration::from_millis(2), false);
        assert_eq!(ledbat.window_bytes(), window / 2);
        // Nor do acknowledgements of them make it grow.
        ledbat.acked(now + Duration::from_millis(2), 100_000, false, base, base, base);
        assert_eq!(ledbat.window_bytes(), window / 2);
        // Persistent congestion: the least window.
        ledbat.lost(later + Duration::from_millis(2), later, true);
        assert_eq!(ledbat.window_bytes(), 4 * 1200);
        ledbat.lost(later + Duration::from_millis(3), later + Duration::from_millis(3), false);
        assert_eq!(ledbat.window_bytes(), 4 * 1200, "never below the least window");
    }
}
