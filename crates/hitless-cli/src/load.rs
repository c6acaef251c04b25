//! Latency recording for the load generator (`call`) and the demo: an HdrHistogram of
//! microseconds, its percentiles, and its whole content as buckets for `--json`.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// The highest latency recorded exactly: an hour. Longer ones are recorded as an hour (a
/// request is bounded by `--timeout` anyway).
const HIGHEST_US: u64 = 3_600_000_000;

/// Latencies in microseconds, 3 significant digits (an error of at most 0.1 %).
#[derive(Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

/// The percentiles reported everywhere, with their names.
pub const PERCENTILES: [(&str, f64); 4] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
];

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Latencies {
        // Constant bounds (1 µs..1 h, 3 digits) that hdrhistogram accepts: no input can break
        // this.
        Latencies(
            Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid constant histogram bounds"),
        )
    }

    /// Records one latency (sub-microsecond ones as 1 µs, over an hour as an hour).
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.clamp(1, HIGHEST_US));
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at quantile `q` (0..=1), `None` if empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        (self.count() > 0).then(|| Duration::from_micros(self.0.value_at_quantile(q)))
    }

    /// The largest value, `None` if empty.
    pub fn max(&self) -> Option<Duration> {
        (self.count() > 0).then(|| Duration::from_micros(self.0.max()))
    }

    /// `{"count", "p50", "p90", "p99", "p99.9", "max", "mean"}` in milliseconds; `null` if empty.
    pub fn summary_json(&self) -> Value {
        if self.count() == 0 {
            return Value::Null;
        }
        let mut out = serde_json::Map::new();
        out.insert("count".into(), json!(self.count()));
        for (name, q) in PERCENTILES {
            out.insert(name.into(), json!(self.quantile(q).map(ms)));
        }
        out.insert("max".into(), json!(self.max().map(ms)));
        out.insert("mean".into(), json!((self.0.mean() * 1e3).round() / 1e6));
        Value::Object(out)
    }

    /// The whole histogram: `[[value_us, count], ...]`, one pair per non-empty bucket in
    /// increasing order, `value_us` being the highest value the bucket holds (values within
    /// 0.1 % of each other share a bucket).
    pub fn buckets_json(&self) -> Value {
        Value::Array(
            self.0
                .iter_recorded()
                .map(|v| json!([v.value_iterated_to(), v.count_at_value()]))
                .collect(),
        )
    }

    /// `p50 1.2 ms  p90 ..  p99 ..  p99.9 ..  max ..` for a person; empty if no values.
    pub fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for (name, q) in PERCENTILES {
            if let Some(d) = self.quantile(q) {
                let _ = write!(out, "{name} {:.1} ms, ", ms(d));
            }
        }
        if let Some(d) = self.max() {
            let _ = write!(out, "max {:.1} ms", ms(d));
        }
        out
    }
}

/// Milliseconds with microsecond precision.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_buckets() {
        let mut h = Latencies::new();
        for i in 1..=1000u64 {
            h.record(Duration::from_micros(i * 100));
        }
        assert_eq!(h.count(), 1000);
        let p50 = h.quantile(0.5).unwrap().as_micros() as f64;
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.002, "{p50}");
        let p999 = h.quantile(0.999).unwrap().as_micros() as f64;
        assert!((p999 - 99_900.0).abs() / 99_900.0 < 0.002, "{p999}");
        let buckets = h.buckets_json();
        let total: u64 = buckets
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b[1].as_u64().unwrap())
            .sum();
        assert_eq!(total, 1000);
        h.record(Duration::from_secs(2));
        assert_eq!(h.count(), 1001);
        assert!(h.max().unwrap() >= Duration::from_secs(2));
        assert_eq!(Latencies::new().summary_json(), Value::Null);
    }
}
