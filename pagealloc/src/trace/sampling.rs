//! What the probes sample, as user space sets it in them: the byte sampler's mean and its
//! exponential gaps, the pinning set of pages, how much stack a sample copies.
use pagealloc_common::{LN2_Q16, MAX_STACK_BYTES, NO_PAGES, REMAINDERS, Sampling};

/// How allocations are sampled for their stacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleOptions {
    /// Mean bytes between samples of a Poisson process over allocated bytes (as jemalloc's
    /// and Go's 512 KiB); 1 samples every allocation, 0 none (no stacks at all).
    pub sample_bytes: u64,
    /// One page in this many (a power of two; 0: none) is in the pinning set: every
    /// allocation whose chunk begins or ends on one of them is sampled, for the pinned bytes.
    pub pin_pages: u64,
    /// How much of the stack a sample copies, from the stack pointer up.
    pub stack_bytes: u32,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            sample_bytes: DEFAULT_SAMPLE_BYTES,
            pin_pages: DEFAULT_PIN_PAGES,
            stack_bytes: DEFAULT_STACK_BYTES,
        }
    }
}

pub const DEFAULT_SAMPLE_BYTES: u64 = 512 << 10;
pub const DEFAULT_PIN_PAGES: u64 = 256;
pub const DEFAULT_STACK_BYTES: u32 = 8 << 10;
/// The largest mean the programs' fixed-point gaps hold.
pub const MAX_SAMPLE_BYTES: u64 = 1 << 40;
pub const MAX_STACK: u32 = MAX_STACK_BYTES as u32;

impl SampleOptions {
    /// No stacks: nothing sampled.
    pub const OFF: SampleOptions = SampleOptions {
        sample_bytes: 0,
        pin_pages: 0,
        stack_bytes: 0,
    };

    /// Whether any allocation is sampled.
    pub fn any(&self) -> bool {
        self.sample_bytes > 0 || self.pin_pages > 0
    }

    /// Whether every allocation is sampled: then every page is covered for the pinned bytes.
    pub fn every_allocation(&self) -> bool {
        self.sample_bytes == 1
    }

    /// log2 of the pinning set's one page in N, as the programs take it.
    pub fn page_shift(&self) -> u64 {
        match self.pin_pages {
            _ if self.every_allocation() => 0,
            0 => NO_PAGES,
            n => u64::from(n.ilog2()),
        }
    }

    /// What the programs are set with; `salt` picks the pinning set.
    pub fn for_programs(&self, salt: u64, page_size: u64) -> Sampling {
        Sampling {
            mean_bytes: self.sample_bytes.min(MAX_SAMPLE_BYTES),
            page_shift: self.page_shift(),
            page_salt: salt,
            page_bits: u64::from(page_size.max(1).ilog2()),
            stack_bytes: u64::from(self.stack_bytes.min(MAX_STACK)),
            remainders: remainders(),
        }
    }
}

/// The quantiles of an exponential's remainder below ln 2 (its density ∝ e^(−x) on [0, ln 2)),
/// at the midpoints of [`REMAINDERS`] equal steps of probability, 16 fractional bits.
fn remainders() -> [u32; REMAINDERS] {
    let mut table = [0; REMAINDERS];
    for (i, slot) in table.iter_mut().enumerate() {
        let u = (i as f64 + 0.5) / REMAINDERS as f64;
        *slot = (-(1.0 - u / 2.0).ln() * 65536.0).round() as u32;
    }
    table
}

/// A random word from the kernel.
pub fn random_u64() -> u64 {
    let mut word = [0u8; 8];
    // SAFETY: getrandom fills the buffer it is given; it cannot fail for 8 bytes once the
    // pool is initialised (and a short read leaves zeros, still a valid salt).
    unsafe { libc::getrandom(word.as_mut_ptr().cast(), word.len(), 0) };
    u64::from_le_bytes(word)
}

/// A gap of the byte sampler drawn the way the programs draw theirs, for a CPU's first.
pub fn first_gap(options: &SampleOptions) -> i64 {
    let word = random_u64();
    let halvings = u64::from((word as u32).trailing_zeros().min(32));
    let remainder = u64::from(remainders()[(word >> 32) as usize % REMAINDERS]);
    let mean = options.sample_bytes.min(MAX_SAMPLE_BYTES);
    ((mean * (halvings * LN2_Q16 + remainder)) >> 16) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The programs' gaps (the same arithmetic, with many draws) have the exponential's mean
    /// and spread: the byte sampler is unbiased to within the table's rounding.
    #[test]
    fn the_gaps_are_exponential() {
        let options = SampleOptions {
            sample_bytes: 1 << 19,
            ..SampleOptions::default()
        };
        let draws = 200_000;
        let gaps: Vec<f64> = (0..draws).map(|_| first_gap(&options) as f64).collect();
        let mean = gaps.iter().sum::<f64>() / draws as f64;
        let mean_of_squares = gaps.iter().map(|g| g * g).sum::<f64>() / draws as f64;
        let expected = options.sample_bytes as f64;
        // The mean's standard error is mean/√n (0.22 %): 4 of them.
        assert!(
            (mean / expected - 1.0).abs() < 4.0 / (draws as f64).sqrt(),
            "{mean}"
        );
        // An exponential's second moment is twice its mean squared.
        let ratio = mean_of_squares / (expected * expected);
        assert!((ratio - 2.0).abs() < 0.05, "{ratio}");
        // Memoryless: beyond one mean, the excess has the same mean.
        let beyond: Vec<f64> = gaps
            .iter()
            .filter(|&&g| g > expected)
            .map(|g| g - expected)
            .collect();
        let excess = beyond.iter().sum::<f64>() / beyond.len() as f64;
        assert!((excess / expected - 1.0).abs() < 0.02, "{excess}");
    }

    #[test]
    fn the_remainders_lie_below_ln_2_in_order() {
        let table = remainders();
        assert!(table.windows(2).all(|w| w[0] < w[1]));
        assert!(u64::from(table[REMAINDERS - 1]) < LN2_Q16);
    }

    #[test]
    fn every_allocation_covers_every_page() {
        let every = SampleOptions {
            sample_bytes: 1,
            ..SampleOptions::default()
        };
        assert_eq!(every.page_shift(), 0);
        assert_eq!(SampleOptions::OFF.page_shift(), NO_PAGES);
        assert_eq!(SampleOptions::default().page_shift(), 8);
    }

    /// The pinning set holds its share of pages, whatever the salt.
    #[test]
    fn the_pinning_set_holds_its_share() {
        for salt in [0, 1, random_u64()] {
            let pages = 1 << 20;
            let shift = 6;
            let held = (0..pages)
                .filter(|&page| pagealloc_common::page_sampled(page, salt, shift))
                .count() as f64;
            let expected = pages as f64 / 64.0;
            // Binomial: sd ≈ √expected (128): 4 of them.
            assert!(
                (held - expected).abs() < 4.0 * expected.sqrt(),
                "{salt}: {held}"
            );
        }
    }
}
