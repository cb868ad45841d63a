//! Latency samples and their percentiles, and the random values the
//! workloads write.

use std::time::Duration;

/// Latency samples, in nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    samples: Vec<u64>,
}

/// Percentiles of a set of latencies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latencies {
    /// No samples.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a sample.
    pub fn record(&mut self, d: Duration) {
        self.samples
            .push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Add `n` samples of the same latency.
    pub fn record_n(&mut self, d: Duration, n: usize) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.samples.extend(std::iter::repeat_n(ns, n));
    }

    /// Add another set's samples.
    pub fn merge(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    /// How many samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there is no sample.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// p50, p99 and max (nearest-rank percentiles; zero without samples).
    pub fn summary(&self) -> LatencySummary {
        let mut s = self.samples.clone();
        s.sort_unstable();
        let rank = |p: f64| -> Duration {
            if s.is_empty() {
                return Duration::ZERO;
            }
            let i = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
            Duration::from_nanos(s[i])
        };
        LatencySummary {
            count: s.len() as u64,
            p50: rank(0.50),
            p99: rank(0.99),
            max: Duration::from_nanos(s.last().copied().unwrap_or(0)),
        }
    }
}

/// A small deterministic generator (SplitMix64) for keys and values: the
/// workloads need variety, not secrecy.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator for this seed.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value of `len` (at least 1) letters and digits.
    pub fn value(&mut self, len: usize) -> String {
        const ALPHABET: &[u8; 62] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut s = String::with_capacity(len.max(1));
        let mut bits = 0u64;
        for i in 0..len.max(1) {
            if i % 10 == 0 {
                bits = self.next_u64();
            }
            s.push(ALPHABET[(bits % 62) as usize] as char);
            bits /= 62;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut l = Latencies::new();
        assert_eq!(l.summary(), LatencySummary::default());
        for i in 1..=100 {
            l.record(Duration::from_micros(i));
        }
        let s = l.summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, Duration::from_micros(50));
        assert_eq!(s.p99, Duration::from_micros(99));
        assert_eq!(s.max, Duration::from_micros(100));
    }

    #[test]
    fn values_are_printable_and_vary() {
        let mut r = SplitMix::new(7);
        let a = r.value(32);
        let b = r.value(32);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, b);
        assert_eq!(r.value(0).len(), 1);
    }
}
