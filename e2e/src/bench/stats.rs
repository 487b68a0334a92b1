//! Pure figures from samples: latency percentiles and histograms. No I/O, no clocks.

use std::time::Duration;

use serde::Serialize;

/// Latency distribution of one run, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Nearest-rank percentile (`q` in 0..=100) of sorted samples; `None` when there are none.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank: the smallest sample with at least q% of the samples at or below it.
    let rank = ((q / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted.get(index).copied()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Latency {
    /// Summarises `samples` (any order); all zero when empty.
    pub fn of(samples: &[Duration]) -> Latency {
        let mut sorted = samples.to_vec();
        sorted.sort();
        let at = |q| percentile(&sorted, q).map(ms).unwrap_or(0.0);
        let mean = if sorted.is_empty() {
            0.0
        } else {
            sorted.iter().map(|d| ms(*d)).sum::<f64>() / sorted.len() as f64
        };
        Latency {
            samples: sorted.len(),
            p50_ms: at(50.0),
            p90_ms: at(90.0),
            p99_ms: at(99.0),
            max_ms: sorted.last().copied().map(ms).unwrap_or(0.0),
            mean_ms: mean,
        }
    }
}

/// One histogram bucket: values in `[from, to)` (the last bucket also holds `to`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bucket {
    pub from: f64,
    pub to: f64,
    pub count: usize,
}

/// `buckets` equal-width buckets spanning the values' range. All values land in one bucket when
/// they are equal; no buckets when there are no values.
pub fn histogram(values: &[f64], buckets: usize) -> Vec<Bucket> {
    let buckets = buckets.max(1);
    let (Some(min), Some(max)) = (
        values.iter().copied().reduce(f64::min),
        values.iter().copied().reduce(f64::max),
    ) else {
        return Vec::new();
    };
    if max <= min {
        return vec![Bucket {
            from: min,
            to: max,
            count: values.len(),
        }];
    }
    let width = (max - min) / buckets as f64;
    let mut out: Vec<Bucket> = (0..buckets)
        .map(|i| Bucket {
            from: min + width * i as f64,
            to: min + width * (i + 1) as f64,
            count: 0,
        })
        .collect();
    for v in values {
        let i = (((v - min) / width) as usize).min(buckets - 1);
        if let Some(b) = out.get_mut(i) {
            b.count += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).rev().map(d).collect();
        let l = Latency::of(&samples);
        assert_eq!(l.samples, 100);
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p90_ms, 90.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
        assert_eq!(l.mean_ms, 50.5);
    }

    #[test]
    fn few_samples_take_the_top_for_high_percentiles() {
        let l = Latency::of(&[d(3), d(1), d(2)]);
        assert_eq!(l.p50_ms, 2.0);
        assert_eq!(l.p99_ms, 3.0);
        assert_eq!(Latency::of(&[]).p50_ms, 0.0);
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn histogram_spreads_values_and_keeps_the_maximum() {
        let h = histogram(&[0.0, 1.0, 2.5, 9.9, 10.0], 4);
        assert_eq!(h.len(), 4);
        assert_eq!(h.iter().map(|b| b.count).collect::<Vec<_>>(), [2, 1, 0, 2]);
        assert_eq!(h[0].from, 0.0);
        assert_eq!(h[3].to, 10.0);
        assert_eq!(histogram(&[], 4), Vec::new());
        assert_eq!(histogram(&[5.0, 5.0], 4)[0].count, 2);
    }
}
