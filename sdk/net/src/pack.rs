//! Whether compressing a paced link's bulk messages pays (sans-IO: sizes and times in, decisions out).
//!
//! On a link that moves `rate` bytes per second, compressing `n` bytes to `n / ratio` saves
//! `n * (1 - 1/ratio) / rate` seconds on the wire and costs `n / speed` seconds of compressing (and
//! about a quarter of that to decompress at the other end). So it pays when
//! `(1 - 1/ratio) * speed >= PAYS_MARGIN * rate`. The ratio and the speed are learned from the
//! messages compressed so far (an exponential average, as the state being moved changes); the
//! first message held back is compressed to learn them; once it stops paying, one message in
//! [`Packer::PROBE_EVERY`] is compressed anyway, so that a change in the data or the machine is
//! noticed. Messages under [`Packer::MIN_BYTES`] are never compressed.
//!
//! The rate is what holds the message back. When the pacer would (its wait is not zero), the cap,
//! or the link's own rate if that is lower. When the pacer would not, only a link slower than the
//! cap: the rate its congestion controller allows (its window over the round trip,
//! [`Packer::link_rate`]) below the cap says the link is the bottleneck and how fast it moves. A
//! message neither holds back goes as it is (on a link faster than its cap, as for a handoff's
//! final round after the link rested, compressing would only add to its delivery). An unpaced
//! link makes no [`Packer`].

use std::time::Duration;

/// Decides, message by message, whether to compress a paced link's bulk messages.
#[derive(Clone, Debug)]
pub struct Packer {
    /// The pacer's cap, bytes per second.
    cap: f64,
    /// The rate the link's congestion controller allows, bytes per second, as last told.
    drain: Option<f64>,
    /// Learned compression ratio (input over output bytes) and speed (input bytes per second).
    learned: Option<(f64, f64)>,
    /// Messages sent as they are since the last one compressed.
    skipped: u32,
}

/// Compressing must save this many times its own cost (the receiver's decompressing, the
/// estimate's noise).
const PAYS_MARGIN: f64 = 1.25;
/// Weight of the newest measurement in the averages.
const WEIGHT: f64 = 0.25;

impl Packer {
    /// Smallest message worth compressing, bytes.
    pub const MIN_BYTES: usize = 4096;
    /// While compressing does not pay, one message in this many is compressed to measure again.
    pub const PROBE_EVERY: u32 = 32;

    /// A packer for a link paced at `bytes_per_second`.
    #[must_use]
    pub fn new(bytes_per_second: u64) -> Packer {
        Packer { cap: bytes_per_second.max(1) as f64, drain: None, learned: None, skipped: 0 }
    }

    /// Whether to compress a message of `bytes` that the pacer would send after `wait` (zero:
    /// at once).
    pub fn should_pack(&mut self, bytes: usize, wait: Duration) -> bool {
        if bytes < Self::MIN_BYTES {
            return false;
        }
        let Some(rate) = self.holding_rate(wait) else {
            return false;
        };
        if self.pays_at(rate) != Some(false) {
            return true;
        }
        self.skipped += 1;
        if self.skipped >= Self::PROBE_EVERY {
            self.skipped = 0;
            return true;
        }
        false
    }

    /// A message of `raw` bytes was compressed to `packed` bytes in `took`.
    pub fn packed(&mut self, raw: usize, packed: usize, took: Duration) {
        let ratio = raw as f64 / packed.max(1) as f64;
        let speed = raw as f64 / took.as_secs_f64().max(1e-7);
        self.learned = Some(match self.learned {
            None => (ratio, speed),
            Some((old_ratio, old_speed)) => {
                (old_ratio + WEIGHT * (ratio - old_ratio), old_speed + WEIGHT * (speed - old_speed))
            }
        });
    }

    /// The link's congestion controller allows `window` bytes in flight per round trip of `rtt`
    /// now (none known: a round trip of zero).
    pub fn link_rate(&mut self, window: u64, rtt: Duration) {
        if rtt.is_zero() {
            return;
        }
        self.drain = Some(window as f64 / rtt.as_secs_f64());
    }

    /// The rate that holds back a message the pacer would send after `wait`: the cap (or the
    /// link's rate when lower) if the pacer holds it, else the link's rate when it is below the
    /// cap; `None` when nothing holds it back.
    fn holding_rate(&self, wait: Duration) -> Option<f64> {
        let link = self.drain.filter(|drain| *drain < self.cap);
        if wait.is_zero() { link } else { Some(link.unwrap_or(self.cap)) }
    }

    /// Whether compressing pays at `rate` by what was learned; `None` before anything was.
    fn pays_at(&self, rate: f64) -> Option<bool> {
        let (ratio, speed) = self.learned?;
        Some((1.0 - 1.0 / ratio.max(1.0)) * speed >= PAYS_MARGIN * rate)
    }

    /// Whether compressing a message the pacer holds back pays, by what was learned; `None`
    /// before anything was.
    #[must_use]
    pub fn pays(&self) -> Option<bool> {
        self.pays_at(self.holding_rate(Duration::MAX)?)
    }

    /// The link's rate as last told, bytes per second, if any.
    #[must_use]
    pub fn drain_rate(&self) -> Option<f64> {
        self.drain
    }

    /// The learned compression ratio, if any.
    #[must_use]
    pub fn ratio(&self) -> Option<f64> {
        self.learned.map(|(ratio, _)| ratio)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn small_messages_and_those_the_pacer_lets_go_are_never_packed_and_the_first_held_one_is() {
        let mut packer = Packer::new(50_000_000);
        assert!(!packer.should_pack(Packer::MIN_BYTES - 1, MS));
        assert!(packer.should_pack(Packer::MIN_BYTES, MS));
        // One the pacer lets go at once goes as it is.
        assert!(!packer.should_pack(1 << 20, Duration::ZERO));
        assert_eq!(packer.pays(), None);
        assert_eq!(packer.ratio(), None);
    }

    #[test]
    fn it_pays_on_a_slow_link_and_not_on_a_fast_one() {
        // 1 MB compressed to 600 kB (ratio 1.67) in 2 ms (500 MB/s): saves 40% of the bytes,
        // (1 - 0.6) * 500 = 200 MB/s against the link.
        let mut slow = Packer::new(50_000_000);
        slow.packed(1_000_000, 600_000, 2 * MS);
        assert_eq!(slow.pays(), Some(true));
        assert!((slow.ratio().unwrap() - 1_000_000.0 / 600_000.0).abs() < 1e-9);
        assert!((0..100).all(|_| slow.should_pack(100_000, MS)));
        assert!(!slow.should_pack(100_000, Duration::ZERO));
        // At 1 GB/s the wire saves less than compressing costs.
        let mut fast = Packer::new(1_000_000_000);
        fast.packed(1_000_000, 600_000, 2 * MS);
        assert_eq!(fast.pays(), Some(false));
        // The margin: 200 MB/s saved against a link of 200 MB/s (break-even) does not pay, nor
        // against 170 MB/s (under the quarter more it must save); against 150 MB/s it does.
        assert_eq!(Packer::new(200_000_000).pays(), None);
        let mut even = Packer::new(200_000_000);
        even.packed(1_000_000, 600_000, 2 * MS);
        assert_eq!(even.pays(), Some(false));
        let mut short = Packer::new(170_000_000);
        short.packed(1_000_000, 600_000, 2 * MS);
        assert_eq!(short.pays(), Some(false));
        let mut enough = Packer::new(150_000_000);
        enough.packed(1_000_000, 600_000, 2 * MS);
        assert_eq!(enough.pays(), Some(true));
        // Data that does not compress (ratio at most 1) never pays.
        let mut incompressible = Packer::new(1);
        incompressible.packed(1000, 1000, Duration::from_nanos(1));
        assert_eq!(incompressible.pays(), Some(false));
        let mut grows = Packer::new(1);
        grows.packed(1000, 1100, Duration::from_nanos(1));
        assert_eq!(grows.pays(), Some(false));
    }

    #[test]
    fn a_link_slower_than_its_cap_holds_messages_back_by_its_congestion_window() {
        let mut packer = Packer::new(50_000_000);
        packer.packed(1_000_000, 600_000, 2 * MS);
        // The pacer lets it go and nothing is known of the link: as it is.
        assert!(!packer.should_pack(100_000, Duration::ZERO));
        packer.link_rate(1_000_000, Duration::ZERO);
        assert_eq!(packer.drain_rate(), None, "no round trip, no rate");
        // A window of 1 MB a 10 ms round trip allows 100 MB/s, over the cap: the pacer rules; so
        // it does at exactly the cap.
        packer.link_rate(1_000_000, 10 * MS);
        assert!(!packer.should_pack(100_000, Duration::ZERO));
        packer.link_rate(500_000, 10 * MS);
        assert!(!packer.should_pack(100_000, Duration::ZERO));
        // 125 kB a 10 ms round trip: 12.5 MB/s, below the 50 MB/s cap, so a message goes
        // compressed even when the pacer would let it go, and it pays at that rate.
        packer.link_rate(125_000, 10 * MS);
        assert_eq!(packer.drain_rate(), Some(12_500_000.0));
        assert!(packer.should_pack(100_000, Duration::ZERO));
        // Over a fast link the cap is what holds a message back, and there it does not pay.
        let mut fast_link = Packer::new(1_000_000_000);
        fast_link.packed(1_000_000, 600_000, 2 * MS);
        fast_link.link_rate(20_000_000, 10 * MS);
        assert_eq!(fast_link.pays(), Some(false), "a link of 2 GB/s under a 1 GB/s cap");
        assert!(!fast_link.should_pack(100_000, Duration::ZERO));
        assert!(!fast_link.should_pack(100_000, MS));
    }

    #[test]
    fn once_it_stops_paying_one_message_in_thirty_two_is_packed_to_measure_again() {
        let mut packer = Packer::new(600_000_000);
        packer.packed(1_000_000, 600_000, 2 * MS);
        let packed: Vec<usize> = (0..96).filter(|_| packer.should_pack(100_000, MS)).collect();
        assert_eq!(packed.len(), 3, "{packed:?}");
        // The data becomes very compressible: each measurement moves the averages a quarter of the
        // way (ratio 1.67 towards 20: 6.25; speed 500 towards 2,000 MB/s: 875), and it pays again.
        packer.packed(1_000_000, 50_000, Duration::from_micros(500));
        let ratio = 1_000_000.0 / 600_000.0;
        assert!((packer.ratio().unwrap() - (ratio + 0.25 * (20.0 - ratio))).abs() < 1e-9);
        // Saving 84% at 875 MB/s is 735 MB/s, not yet a quarter over the 600 MB/s cap.
        assert_eq!(packer.pays(), Some(false));
        for _ in 0..20 {
            packer.packed(1_000_000, 50_000, Duration::from_micros(500));
        }
        assert_eq!(packer.pays(), Some(true));
        assert!(packer.ratio().unwrap() > 15.0);
    }
}
