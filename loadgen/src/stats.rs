//! Percentiles (HdrHistogram, three significant digits), rates and ratios: the arithmetic of
//! the report, kept free of I/O so it can be tested on its own.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency recorded precisely, in microseconds (one hour); longer ones are recorded
/// as this, and the exact maximum is kept apart.
const HIGHEST_US: u64 = 3_600_000_000;

/// The percentiles of one latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// How many values.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// The largest value, exact (not rounded to the histogram's precision).
    pub max: f64,
}

impl Percentiles {
    /// The percentiles of `values_us` (microseconds), or `None` when there are none.
    pub fn of_micros(values_us: impl IntoIterator<Item = u64>) -> Option<Percentiles> {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, HIGHEST_US, 3)
            .expect("the bounds are constants and valid");
        let mut max = 0;
        for value in values_us {
            histogram.saturating_record(value);
            max = max.max(value);
        }
        if histogram.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        // A histogram value is the top of its bucket, which can lie above the exact maximum.
        let at = |quantile: f64| ms(histogram.value_at_quantile(quantile).min(max));
        Some(Percentiles {
            count: histogram.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: ms(max),
        })
    }

    /// The names of [`Percentiles::named`], in report order.
    pub const NAMES: [&'static str; 5] = ["p50", "p90", "p99", "p99.9", "max"];

    /// The percentiles with their names, in report order.
    pub fn named(&self) -> [(&'static str, f64); 5] {
        let [p50, p90, p99, p999, max] = Self::NAMES;
        [
            (p50, self.p50),
            (p90, self.p90),
            (p99, self.p99),
            (p999, self.p999),
            (max, self.max),
        ]
    }
}

/// `count` per second over `elapsed`; `None` over no time at all.
pub fn per_second(count: u64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    (secs > 0.0).then(|| count as f64 / secs)
}

/// `spent` per item, µs (CPU time per email); `None` without items.
pub fn micros_per(spent: Duration, count: u64) -> Option<f64> {
    (count > 0).then(|| spent.as_secs_f64() * 1e6 / count as f64)
}

/// `value / reference`, or `None` when that means nothing (a missing value, or a reference
/// that is zero, negative or not finite).
pub fn ratio(value: Option<f64>, reference: Option<f64>) -> Option<f64> {
    match (value, reference) {
        (Some(v), Some(r)) if r > 0.0 && r.is_finite() && v.is_finite() => Some(v / r),
        _ => None,
    }
}

/// A non-negative span between two unix-microsecond timestamps. The clocks are the same
/// machine's, but a wall clock may step: a negative span is recorded as zero.
pub fn span_us(from_us: i64, to_us: i64) -> u64 {
    u64::try_from(to_us.saturating_sub(from_us)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_a_thousand_milliseconds() {
        let p = Percentiles::of_micros((1..=1_000).map(|ms| ms * 1_000)).unwrap();
        assert_eq!(p.count, 1_000);
        // Three significant digits: within 0.1 % of the exact rank.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 1e-9;
        assert!(close(p.p50, 500.0), "{p:?}");
        assert!(close(p.p90, 900.0), "{p:?}");
        assert!(close(p.p99, 990.0), "{p:?}");
        assert!(close(p.p999, 999.0), "{p:?}");
        assert_eq!(p.max, 1_000.0);
    }

    #[test]
    fn the_maximum_is_exact_even_beyond_the_histogram() {
        let p = Percentiles::of_micros([5, 12_345_678, HIGHEST_US * 2]).unwrap();
        assert_eq!(p.max, (HIGHEST_US * 2) as f64 / 1_000.0);
        assert_eq!(p.count, 3);
        assert!(p.p50 >= 12_330.0 && p.p50 <= 12_360.0, "{p:?}");
    }

    #[test]
    fn zero_latency_is_recorded_not_dropped() {
        let p = Percentiles::of_micros([0, 0, 0]).unwrap();
        assert_eq!(p.count, 3);
        assert_eq!((p.p50, p.p999, p.max), (0.0, 0.0, 0.0));
        // So a ratio to it is refused rather than astronomically large.
        assert_eq!(ratio(Some(26.0), Some(p.p50)), None);
    }

    #[test]
    fn no_percentile_exceeds_the_maximum() {
        let p = Percentiles::of_micros([61_039, 61_039, 17_887]).unwrap();
        assert!(p.p999 <= p.max && p.p99 <= p.max, "{p:?}");
        assert_eq!(p.max, 61.039);
    }

    #[test]
    fn no_values_have_no_percentiles() {
        assert_eq!(Percentiles::of_micros([]), None);
    }

    #[test]
    fn named_percentiles_are_in_report_order() {
        let p = Percentiles::of_micros([1_000]).unwrap();
        let names: Vec<&str> = p.named().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["p50", "p90", "p99", "p99.9", "max"]);
    }

    #[test]
    fn rates_need_time() {
        assert_eq!(per_second(500, Duration::from_millis(250)), Some(2_000.0));
        assert_eq!(per_second(500, Duration::ZERO), None);
        assert_eq!(micros_per(Duration::from_millis(3), 4), Some(750.0));
        assert_eq!(micros_per(Duration::from_millis(3), 0), None);
    }

    #[test]
    fn ratios_refuse_meaningless_references() {
        assert_eq!(ratio(Some(2_345.0), Some(5_720.0)), Some(2_345.0 / 5_720.0));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(Some(1.0), Some(-3.0)), None);
        assert_eq!(ratio(Some(1.0), Some(f64::INFINITY)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
        assert_eq!(ratio(Some(0.0), Some(4.0)), Some(0.0));
    }

    #[test]
    fn spans_never_go_negative() {
        assert_eq!(span_us(1_000, 1_250), 250);
        assert_eq!(span_us(1_250, 1_000), 0);
        assert_eq!(span_us(i64::MIN, i64::MAX), i64::MAX.unsigned_abs());
    }
}
