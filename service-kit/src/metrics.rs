//! A deliberately small Prometheus text registry: counters with labels, gauges and counters
//! sampled at scrape time, and histograms.
//!
//! Counters through [`Metrics::count`] take the registry's lock, which is fine for a few events
//! per request at most. A [`Histogram`] is a handle that is observed with atomics alone: code on
//! a hot path registers its series once and keeps the handle (see `http` for a family whose
//! label values are only known per request). Nothing here is on the scrape path's critical
//! side: rendering takes the lock and allocates freely.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type Labels = Vec<(&'static str, String)>;
type Sampler = Box<dyn Fn() -> Vec<(Labels, f64)> + Send + Sync>;

/// Bucket bounds, in seconds, for latencies from 0.1 ms to 10 s: a cached read takes tens of
/// microseconds, a write acknowledged by the broker tens of milliseconds, and anything past
/// 10 s is a timeout whatever its exact length.
pub const LATENCY_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Default)]
struct Inner {
    counters: BTreeMap<&'static str, (&'static str, BTreeMap<Labels, u64>)>,
    sampled: Vec<Sampled>,
    histograms: BTreeMap<&'static str, (&'static str, BTreeMap<Labels, Histogram>)>,
}

/// A series family whose values are read at scrape time.
struct Sampled {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    sample: Sampler,
}

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while the lock was held left plain numbers behind, still worth showing.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `by` to the counter `name` with these labels.
    pub fn count(&self, name: &'static str, help: &'static str, labels: Labels, by: u64) {
        let mut inner = self.lock();
        let (_, series) = inner
            .counters
            .entry(name)
            .or_insert_with(|| (help, BTreeMap::new()));
        *series.entry(labels).or_default() += by;
    }

    /// Registers a gauge whose values are sampled at every scrape.
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        sample: impl Fn() -> Vec<(Labels, f64)> + Send + Sync + 'static,
    ) {
        self.sampled(name, help, "gauge", Box::new(sample));
    }

    /// Registers a counter whose values are sampled at every scrape: for counts kept elsewhere
    /// (in atomics, or derived from histograms) that must not cost a lock where they change.
    pub fn sampled_counter(
        &self,
        name: &'static str,
        help: &'static str,
        sample: impl Fn() -> Vec<(Labels, f64)> + Send + Sync + 'static,
    ) {
        self.sampled(name, help, "counter", Box::new(sample));
    }

    fn sampled(&self, name: &'static str, help: &'static str, kind: &'static str, sample: Sampler) {
        self.lock().sampled.push(Sampled {
            name,
            help,
            kind,
            sample,
        });
    }

    /// The histogram `name` with these labels, created with `bounds` (see [`Histogram::new`])
    /// on first use; later calls with the same name and labels return the same series (and
    /// ignore `help` and `bounds`). Keep the handle: observing it takes no lock.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
        bounds: &[f64],
    ) -> Histogram {
        let mut inner = self.lock();
        let (_, series) = inner
            .histograms
            .entry(name)
            .or_insert_with(|| (help, BTreeMap::new()));
        series
            .entry(labels)
            .or_insert_with(|| Histogram::new(bounds))
            .clone()
    }

    /// The Prometheus text exposition (format 0.0.4) of every series.
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        for (name, (help, series)) in &inner.counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, value) in series {
                let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
            }
        }
        for (name, (help, series)) in &inner.histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (labels, histogram) in series {
                histogram.snapshot().render(&mut out, name, labels);
            }
        }
        for Sampled {
            name,
            help,
            kind,
            sample,
        } in &inner.sampled
        {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in sample() {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    render_labels(&labels, None),
                    Value(value)
                );
            }
        }
        out
    }
}

/// A Prometheus histogram: counts of observations at or below each bound, their sum and their
/// number. Cheap to clone (clones share the series); observing takes two atomic additions and
/// no lock, so it can sit on every request.
#[derive(Clone)]
pub struct Histogram {
    inner: Arc<HistogramInner>,
}

struct HistogramInner {
    bounds: Box<[f64]>,
    /// Observations per bucket, not cumulative (one increment per observation); the last
    /// bucket is above every bound (`+Inf`).
    buckets: Box<[AtomicU64]>,
    /// The sum's `f64` bits: there is no atomic float addition, so it is a compare-exchange
    /// loop, which rarely retries with two cores.
    sum: AtomicU64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("bounds", &self.inner.bounds)
            .finish_non_exhaustive()
    }
}

impl Histogram {
    /// A histogram with these upper bounds (`le`), in the unit its name says.
    ///
    /// # Panics
    /// When the bounds are not finite and strictly increasing: a programming error that
    /// Prometheus would reject at scrape time, so it is better found at start-up.
    pub fn new(bounds: &[f64]) -> Histogram {
        assert!(
            bounds.iter().all(|b| b.is_finite()) && bounds.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must be finite and strictly increasing: {bounds:?}"
        );
        Histogram {
            inner: Arc::new(HistogramInner {
                bounds: bounds.into(),
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0.0_f64.to_bits()),
            }),
        }
    }

    /// Records one observation. A value equal to a bound counts in that bound's bucket (`le`
    /// means at or below); NaN counts above every bound.
    pub fn observe(&self, value: f64) {
        let inner = &*self.inner;
        // The first bound at or above the value, or +Inf (also for NaN, above no bound).
        let bucket = inner
            .bounds
            .partition_point(|&b| b < value || value.is_nan());
        inner.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let _ = inner
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// Records a duration, in seconds (the base unit Prometheus names use).
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// The counts and sum now. Observations that race with this call may be in the buckets
    /// but not yet in the sum; the count is the buckets' total, so it always equals `+Inf`'s.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let inner = &*self.inner;
        let mut cumulative = Vec::with_capacity(inner.buckets.len());
        let mut total = 0;
        for bucket in &inner.buckets {
            total += bucket.load(Ordering::Relaxed);
            cumulative.push(total);
        }
        HistogramSnapshot {
            bounds: inner.bounds.to_vec(),
            cumulative,
            sum: f64::from_bits(inner.sum.load(Ordering::Relaxed)),
        }
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

/// A [`Histogram`]'s values at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// The upper bounds, without `+Inf`.
    pub bounds: Vec<f64>,
    /// Observations at or below each bound, then the total (`+Inf`): one more than `bounds`.
    pub cumulative: Vec<u64>,
    pub sum: f64,
}

impl HistogramSnapshot {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// `name_bucket` lines for every bound and `+Inf`, then `name_sum` and `name_count`.
    fn render(&self, out: &mut String, name: &str, labels: &Labels) {
        let les = self
            .bounds
            .iter()
            .map(|&b| Value(b).to_string())
            .chain(std::iter::once("+Inf".to_owned()));
        for (le, count) in les.zip(&self.cumulative) {
            let _ = writeln!(
                out,
                "{name}_bucket{} {count}",
                render_labels(labels, Some(&le))
            );
        }
        let labels = render_labels(labels, None);
        let _ = writeln!(out, "{name}_sum{labels} {}", Value(self.sum));
        let _ = writeln!(out, "{name}_count{labels} {}", self.count());
    }
}

/// A sample value as the text format spells it: Rust writes infinity as `inf`, Prometheus
/// wants `+Inf`.
struct Value(f64);

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

/// `{k="v",...}` with the text format's escapes, and `le` last when given; empty without any.
fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let le = le.map(|le| ("le", le));
    let mut parts = labels
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(le)
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .peekable();
    if parts.peek().is_none() {
        return String::new();
    }
    format!("{{{}}}", parts.collect::<Vec<_>>().join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.count(
            "requests_total",
            "Requests.",
            vec![("status", "200".into())],
            2,
        );
        m.count(
            "requests_total",
            "Requests.",
            vec![("status", "200".into())],
            1,
        );
        m.gauge("lag", "Lag.", || {
            vec![(vec![("partition", "0".into())], 5.0)]
        });
        let text = m.render();
        assert!(text.contains("requests_total{status=\"200\"} 3"), "{text}");
        assert!(text.contains("lag{partition=\"0\"} 5"), "{text}");
        assert!(text.contains("# TYPE lag gauge"), "{text}");
    }

    #[test]
    fn a_sampled_counter_is_typed_counter_and_read_at_scrape_time() {
        let m = Metrics::default();
        let seen = Arc::new(AtomicU64::new(1));
        let source = seen.clone();
        m.sampled_counter("things_total", "Things.", move || {
            vec![(Vec::new(), source.load(Ordering::Relaxed) as f64)]
        });
        seen.store(7, Ordering::Relaxed);
        let text = m.render();
        assert!(
            text.contains(
                "# HELP things_total Things.\n# TYPE things_total counter\nthings_total 7\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn histogram_exposition_is_cumulative_with_inf_sum_and_count() {
        let m = Metrics::default();
        let h = m.histogram(
            "op_duration_seconds",
            "How long ops took.",
            vec![("op", "read".into())],
            &[0.25, 1.0, 4.0],
        );
        // One below the first bound, one exactly on the second (le is inclusive), one between
        // the last two and one past the last. Binary fractions, so the sum is exact.
        for v in [0.125, 1.0, 2.0, 8.0] {
            h.observe(v);
        }
        let text = m.render();
        let expected = "\
# HELP op_duration_seconds How long ops took.
# TYPE op_duration_seconds histogram
op_duration_seconds_bucket{op=\"read\",le=\"0.25\"} 1
op_duration_seconds_bucket{op=\"read\",le=\"1\"} 2
op_duration_seconds_bucket{op=\"read\",le=\"4\"} 3
op_duration_seconds_bucket{op=\"read\",le=\"+Inf\"} 4
op_duration_seconds_sum{op=\"read\"} 11.125
op_duration_seconds_count{op=\"read\"} 4
";
        assert_eq!(text, expected);
    }

    #[test]
    fn histogram_without_labels_has_only_le_and_starts_at_zero() {
        let m = Metrics::default();
        let _idle = m.histogram("idle_seconds", "Idle.", Vec::new(), &[1.0]);
        let text = m.render();
        assert!(text.contains("idle_seconds_bucket{le=\"1\"} 0\n"), "{text}");
        assert!(
            text.contains("idle_seconds_bucket{le=\"+Inf\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("idle_seconds_sum 0\n"), "{text}");
        assert!(text.contains("idle_seconds_count 0\n"), "{text}");
    }

    #[test]
    fn the_same_name_and_labels_are_one_series() {
        let m = Metrics::default();
        let a = m.histogram("x_seconds", "X.", vec![("k", "1".into())], &[1.0]);
        let b = m.histogram("x_seconds", "X.", vec![("k", "1".into())], &[1.0]);
        let other = m.histogram("x_seconds", "X.", vec![("k", "2".into())], &[1.0]);
        a.observe(0.5);
        b.observe(3.0);
        assert_eq!(a.count(), 2);
        assert_eq!(b.snapshot().cumulative, vec![1, 2]);
        assert_eq!(other.count(), 0);
        let text = m.render();
        assert_eq!(
            text.matches("# TYPE x_seconds histogram").count(),
            1,
            "{text}"
        );
        assert!(text.contains("x_seconds_count{k=\"1\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_count{k=\"2\"} 0\n"), "{text}");
    }

    #[test]
    fn durations_are_observed_in_seconds() {
        let h = Histogram::new(LATENCY_SECONDS);
        h.observe_duration(Duration::from_micros(300));
        h.observe_duration(Duration::from_secs(11));
        let snapshot = h.snapshot();
        // 300 µs is above 0.25 ms and at or below 0.5 ms.
        let le = |bound: f64| {
            let i = snapshot
                .bounds
                .iter()
                .position(|&b| b == bound)
                .expect("a bound");
            snapshot.cumulative[i]
        };
        assert_eq!((le(0.00025), le(0.0005), le(10.0)), (0, 1, 1));
        assert_eq!(snapshot.count(), 2);
        assert!((snapshot.sum - 11.0003).abs() < 1e-9, "{}", snapshot.sum);
    }

    #[test]
    fn nan_counts_above_every_bound_and_infinite_values_render_as_prometheus_spells_them() {
        let h = Histogram::new(&[1.0]);
        h.observe(f64::NAN);
        assert_eq!(h.snapshot().cumulative, vec![0, 1]);
        let m = Metrics::default();
        m.gauge("far", "Far.", || vec![(Vec::new(), f64::INFINITY)]);
        assert!(m.render().contains("far +Inf\n"));
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let h = Histogram::new(&[0.5]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        h.observe(1.0);
                    }
                });
            }
        });
        let snapshot = h.snapshot();
        assert_eq!(snapshot.cumulative, vec![0, 40_000]);
        // Integers below 2^53 add exactly: a lost update in the sum's loop would show.
        assert_eq!(snapshot.sum, 40_000.0);
    }

    #[test]
    #[should_panic(expected = "strictly increasing")]
    fn unordered_bounds_are_refused() {
        let _ = Histogram::new(&[1.0, 0.5]);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.count("e_total", "E.", vec![("v", "a\"b\\c\nd".into())], 1);
        assert!(
            m.render().contains(r#"e_total{v="a\"b\\c\nd"} 1"#),
            "{}",
            m.render()
        );
    }
}
