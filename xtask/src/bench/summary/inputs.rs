//! What the summary reads from a load benchmark's output directory: each run's JSON report (the
//! fields of `loadgen run`'s and `loadgen broker`'s reports that it uses), the CPU snapshots
//! taken around each run, and the projector's metrics after it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The parts of a `loadgen run --json` report the summary uses.
#[derive(Debug, Deserialize)]
pub struct RunReport {
    /// Per operation, `visibility_lag` among them.
    pub operations: Vec<OperationFigures>,
    /// `reads` and `writes`: all reads together, all writes together.
    pub totals: Vec<OperationFigures>,
    pub time_series: Vec<Second>,
}

#[derive(Debug, Deserialize)]
pub struct OperationFigures {
    pub operation: String,
    #[serde(default)]
    pub throughput: f64,
    #[serde(default)]
    pub errors: u64,
    pub latency_ms: Option<Latency>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// One second of a run's time series.
#[derive(Debug, Deserialize)]
pub struct Second {
    pub operations: BTreeMap<String, SecondFigures>,
}

#[derive(Debug, Deserialize)]
pub struct SecondFigures {
    pub throughput: f64,
    pub p99_ms: Option<f64>,
}

/// The parts of a `loadgen broker --json` report the summary uses.
#[derive(Debug, Deserialize)]
pub struct BrokerReport {
    pub appends_per_s: f64,
    pub append_latency_ms: Percentiles,
    pub delivery_latency_ms: Percentiles,
    pub append_errors: BTreeMap<String, u64>,
    pub seconds: Vec<BrokerSecond>,
    pub read_back: Option<ReadBack>,
}

/// `loadgen broker`'s latency percentiles, which the summary copies whole (in this order).
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Deserialize)]
pub struct BrokerSecond {
    pub appended: u64,
}

#[derive(Debug, Deserialize)]
pub struct ReadBack {
    pub records_per_s: f64,
}

/// Reads and parses the JSON file `path`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text)
        .with_context(|| format!("{} is not the report this summary reads", path.display()))
}

/// A CPU snapshot file (`<run>.cpu-before`, `<run>.cpu-after`): one `name value` line per part
/// of the stack, in file order; `None` when the file is missing or a line is not such a pair.
pub fn read_snapshot(path: &Path) -> Option<Vec<(String, i64)>> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .map(|line| {
            let mut words = line.split_whitespace();
            let (Some(name), Some(value), None) = (words.next(), words.next(), words.next()) else {
                return None;
            };
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The projector's batch counters as of the end of a run (`<run>.projector-metrics`).
#[derive(Debug, Clone, Copy)]
pub struct BatchCounters {
    pub batches: f64,
    pub seconds: f64,
    pub events: f64,
}

impl BatchCounters {
    /// From the metrics file; `None` when it is missing or lacks one of the three series.
    pub fn read(path: &Path) -> Option<BatchCounters> {
        let text = std::fs::read_to_string(path).ok()?;
        Some(BatchCounters {
            batches: unlabelled_value(&text, "projector_apply_duration_seconds_count")?,
            seconds: unlabelled_value(&text, "projector_apply_duration_seconds_sum")?,
            events: unlabelled_value(&text, "projector_batch_events_sum")?,
        })
    }
}

/// The value of the first `name value` line of a Prometheus exposition (a series without
/// labels).
fn unlabelled_value(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        if value.is_empty() || value.contains(char::is_whitespace) {
            return None;
        }
        value.parse().ok()
    })
}

/// The first `tps = N` of pgbench's output.
pub fn pgbench_tps(output: &str) -> Option<f64> {
    let (_, rest) = output.split_once("tps = ")?;
    let number: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_unlabelled_series_and_pgbench_tps() {
        let metrics =
            "# HELP x\nprojector_batch_events_sum{a=\"b\"} 9\nprojector_batch_events_sum 12.5\n";
        assert_eq!(
            unlabelled_value(metrics, "projector_batch_events_sum"),
            Some(12.5)
        );
        assert_eq!(unlabelled_value(metrics, "projector_batch_events"), None);
        let pgbench =
            "latency average = 0.6 ms\ntps = 25371.123456 (without initial connection time)\n";
        assert_eq!(pgbench_tps(pgbench), Some(25371.123456));
    }
}
