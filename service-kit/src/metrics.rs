//! A deliberately small Prometheus text registry: counters with labels, and gauges sampled at
//! scrape time. Enough for request and decision counts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

type Labels = Vec<(&'static str, String)>;
type Sampler = Box<dyn Fn() -> Vec<(Labels, f64)> + Send + Sync>;

#[derive(Default)]
struct Inner {
    counters: BTreeMap<&'static str, (&'static str, BTreeMap<Labels, u64>)>,
    gauges: Vec<(&'static str, &'static str, Sampler)>,
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
    /// Adds `by` to the counter `name` with these labels.
    pub fn count(&self, name: &'static str, help: &'static str, labels: Labels, by: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
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
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.gauges.push((name, help, Box::new(sample)));
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, (help, series)) in &inner.counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, value) in series {
                let _ = writeln!(out, "{name}{} {value}", render_labels(labels));
            }
        }
        for (name, help, sample) in &inner.gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, value) in sample() {
                let _ = writeln!(out, "{name}{} {value}", render_labels(&labels));
            }
        }
        out
    }
}

fn render_labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    format!("{{{}}}", parts.join(","))
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
}
