//! Random draws: [`Rng`], a small seeded generator, and [`Zipf`], the skewed choice of an item
//! out of a population.
//!
//! Both are hand-written rather than taken from a crate: each is a few lines, the generator must
//! be cheap (it runs for every request, on the cores the measured servers share) and the same
//! `--seed` must draw the same sequence on every machine and release.

use uuid::Uuid;

/// SplitMix64: one 64-bit word of state, one multiply-xorshift round per draw. Statistically
/// sound for load generation (it passes BigCrush) and trivially seedable from any `u64`.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// An independent generator for stream `index` of a seed (one per connection task), so
    /// that tasks do not share a generator and each task's draws depend only on the seed.
    pub fn stream(seed: u64, index: u64) -> Rng {
        // Mixing once decorrelates neighbouring indices before they become states.
        let mut mixer = Rng::new(seed ^ index.wrapping_mul(0xA076_1D64_78BD_642F));
        Rng::new(mixer.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), with the 53 bits an `f64` can hold.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n); `n` must not be 0. Lemire's multiply-shift: no division, and its bias
    /// (at most n / 2^64) is far below anything a load test can see.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// A random (version 4) UUID drawn from this generator, so made-up ids repeat with the seed.
    pub fn uuid(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// Zipf's law over ranks 0..n: rank k (0-based) is drawn with probability proportional to
/// 1 / (k + 1)^s. Rank 0 is the hottest item; `s = 0` is uniform.
///
/// The cumulative distribution is computed once (n `f64`s) and each draw is one uniform number
/// and a binary search over it: O(log n), exact for any `s`, and no rejection loop whose cost
/// depends on the skew.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution over `n` ranks with skew `s`. `n` must be at least 1 and `s` finite and
    /// not negative (the configuration checks both).
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 1..=n {
            total += (rank as f64).powf(-s);
            cdf.push(total);
        }
        for value in &mut cdf {
            *value /= total;
        }
        Zipf { cdf }
    }

    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// A rank in 0..n.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.next_f64();
        // Rounding can leave the last entry a hair under 1.0; never index past the end.
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frequencies(zipf: &Zipf, draws: usize, seed: u64) -> Vec<usize> {
        let mut rng = Rng::new(seed);
        let mut counts = vec![0usize; zipf.len()];
        for _ in 0..draws {
            counts[zipf.sample(&mut rng)] += 1;
        }
        counts
    }

    #[test]
    fn the_same_seed_draws_the_same_sequence() {
        let mut a = Rng::stream(7, 3);
        let mut b = Rng::stream(7, 3);
        let mut c = Rng::stream(7, 4);
        let first: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let again: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        let other: Vec<u64> = (0..5).map(|_| c.next_u64()).collect();
        assert_eq!(first, again);
        assert_ne!(first, other);
    }

    #[test]
    fn uniform_draws_stay_in_range() {
        let mut rng = Rng::new(1);
        for _ in 0..10_000 {
            let x = rng.next_f64();
            assert!((0.0..1.0).contains(&x));
            assert!(rng.below(7) < 7);
        }
        assert_eq!(rng.uuid().get_version_num(), 4);
    }

    #[test]
    fn skew_zero_is_uniform() {
        let zipf = Zipf::new(10, 0.0);
        let draws = 100_000;
        let counts = frequencies(&zipf, draws, 42);
        let expected = draws as f64 / 10.0;
        for (rank, &count) in counts.iter().enumerate() {
            let off = (count as f64 - expected).abs() / expected;
            assert!(
                off < 0.05,
                "rank {rank}: {count} draws, expected about {expected}"
            );
        }
    }

    #[test]
    fn skew_one_makes_rank_one_the_most_frequent() {
        let zipf = Zipf::new(1000, 1.0);
        let counts = frequencies(&zipf, 200_000, 42);
        let hottest = counts
            .iter()
            .enumerate()
            .max_by_key(|(_, count)| **count)
            .map(|(rank, _)| rank);
        assert_eq!(hottest, Some(0));
        assert!(counts[0] > counts[1] && counts[1] > counts[3] && counts[3] > counts[20]);
    }

    #[test]
    fn frequencies_follow_one_over_k_to_the_s() {
        for s in [0.5, 1.0, 1.5] {
            let n = 100;
            let zipf = Zipf::new(n, s);
            let draws = 400_000;
            let counts = frequencies(&zipf, draws, 9);
            let norm: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
            // The first ranks have enough draws for a tight check of the law itself.
            for k in 1..=5 {
                let expected = draws as f64 * (k as f64).powf(-s) / norm;
                let got = counts[k - 1] as f64;
                assert!(
                    (got - expected).abs() / expected < 0.05,
                    "s={s} rank {k}: {got} draws, expected about {expected:.0}"
                );
            }
            // And the ratio between rank 1 and rank 10 is 10^s.
            let ratio = counts[0] as f64 / counts[9] as f64;
            let want = 10f64.powf(s);
            assert!(
                (ratio - want).abs() / want < 0.1,
                "s={s}: ratio {ratio}, want {want}"
            );
        }
    }

    #[test]
    fn a_population_of_one_always_draws_it() {
        let zipf = Zipf::new(1, 1.0);
        let mut rng = Rng::new(3);
        assert!((0..100).all(|_| zipf.sample(&mut rng) == 0));
    }
}
