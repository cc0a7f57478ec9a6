//! Whether compressing a paced link's bulk messages pays (sans-IO: sizes and times in, decisions out).
//!
//! On a link paced at `rate` bytes per second, compressing `n` bytes to `n / ratio` saves
//! `n * (1 - 1/ratio) / rate` seconds on the wire and costs `n / speed` seconds of compressing (and
//! about a quarter of that to decompress at the other end). So it pays when
//! `(1 - 1/ratio) * speed >= PAYS_MARGIN * rate`. The ratio and the speed are learned from the
//! messages compressed so far (an exponential average, as the state being moved changes); the
//! first messages are compressed to learn them; once it stops paying, one message in
//! [`Packer::PROBE_EVERY`] is compressed anyway, so that a change in the data or the machine is
//! noticed. Only a message the pacer would hold back is compressed: one that may go at once (the
//! bucket holds its bytes, as for a handoff's final round after the link rested) goes as it is,
//! since on a link faster than its cap compressing would only add to its delivery. Messages under
//! [`Packer::MIN_BYTES`] are never compressed. An unpaced link has no rate to save time against
//! and makes no [`Packer`].

use std::time::Duration;

/// Decides, message by message, whether to compress a paced link's bulk messages.
#[derive(Clone, Debug)]
pub struct Packer {
    rate: f64,
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
        Packer { rate: bytes_per_second.max(1) as f64, learned: None, skipped: 0 }
    }

    /// Whether to compress a message of `bytes` that the pacer would send after `wait` (zero:
    /// at once).
    pub fn should_pack(&mut self, bytes: usize, wait: Duration) -> bool {
        if bytes < Self::MIN_BYTES || wait.is_zero() {
            return false;
        }
        if self.pays() != Some(false) {
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

    /// Whether compressing pays by what was learned; `None` before anything was.
    #[must_use]
    pub fn pays(&self) -> Option<bool> {
        let (ratio, speed) = self.learned?;
        Some((1.0 - 1.0 / ratio.max(1.0)) * speed >= PAYS_MARGIN * self.rate)
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
        // The margin: exactly break-even does not pay, a quarter more does.
        assert_eq!(Packer::new(200_000_000).pays(), None);
        let mut even = Packer::new(200_000_000);
        even.packed(1_000_000, 600_000, 2 * MS);
        assert_eq!(even.pays(), Some(false));
        let mut enough = Packer::new(160_000_000);
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
    fn once_it_stops_paying_one_message_in_thirty_two_is_packed_to_measure_again() {
        let mut packer = Packer::new(1_000_000_000);
        packer.packed(1_000_000, 600_000, 2 * MS);
        let packed: Vec<usize> = (0..96).filter(|_| packer.should_pack(100_000, MS)).collect();
        assert_eq!(packed.len(), 3, "{packed:?}");
        // The data becomes very compressible: the averages move towards it and it pays again.
        for _ in 0..20 {
            packer.packed(1_000_000, 50_000, Duration::from_micros(500));
        }
        assert_eq!(packer.pays(), Some(true));
        assert!(packer.ratio().unwrap() > 15.0);
    }
}
