//! Timing samples and the figures quoted from them. Medians, not means: the machines these run
//! on are shared, and one stalled repetition should not move the figure.

use std::time::Duration;

/// The timings of one measurement, one per repetition.
#[derive(Clone, Debug, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Records one repetition.
    pub fn push(&mut self, sample: Duration) {
        self.0.push(sample);
    }

    /// How many repetitions were recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `q` quantile (0.0 to 1.0) by the nearest-rank method; zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let rank = (q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[rank.min(sorted.len() - 1)]
    }

    /// The median.
    pub fn median(&self) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        let middle = sorted.len() / 2;
        if sorted.len() % 2 == 1 {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2
        }
    }
}

/// `a / b` of two durations (0 when `b` is zero).
pub fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        0.0
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(ms: &[u64]) -> Samples {
        let mut s = Samples::default();
        for &m in ms {
            s.push(Duration::from_millis(m));
        }
        s
    }

    #[test]
    fn medians_and_quantiles() {
        assert_eq!(samples(&[5, 1, 3]).median(), Duration::from_millis(3));
        assert_eq!(samples(&[4, 1, 3, 2]).median(), Duration::from_micros(2500));
        assert_eq!(samples(&[]).median(), Duration::ZERO);
        let s = samples(&(1..=11).collect::<Vec<_>>());
        assert_eq!(s.quantile(0.1), Duration::from_millis(2));
        assert_eq!(s.quantile(0.9), Duration::from_millis(10));
        assert_eq!(s.len(), 11);
        assert_eq!(
            ratio(Duration::from_millis(3), Duration::from_millis(2)),
            1.5
        );
    }
}
