//! Percentiles over a set of samples (nearest-rank, so every reported value was measured).

use serde::Serialize;

/// p50, p90, p99 and max of one metric.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentile `p` (0-100) of sorted `xs`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarises `xs` (in any order); `None` if there are no samples.
pub fn summarize(xs: &[f64]) -> Option<Summary> {
    if xs.is_empty() {
        return None;
    }
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    Some(Summary {
        n: s.len(),
        min: s[0],
        p50: percentile(&s, 50.0),
        p90: percentile(&s, 90.0),
        p99: percentile(&s, 99.0),
        max: s[s.len() - 1],
    })
}

/// Summarises `f` of each of `items`, which must not be empty.
pub fn summarize_by<T>(items: &[T], f: impl Fn(&T) -> f64) -> Summary {
    summarize(&items.iter().map(f).collect::<Vec<_>>()).expect("at least one sample")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_of_one_to_ten() {
        let xs: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        let s = summarize(&xs).unwrap();
        assert_eq!(
            (s.min, s.p50, s.p90, s.p99, s.max),
            (1.0, 5.0, 9.0, 10.0, 10.0)
        );
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[3.0]).unwrap().p99, 3.0);
    }
}
