//! [`Report`]: what a run measured, per operation and per second, as a table for people
//! ([`Report::table`]) and as JSON for tools (the same struct, serialised).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::{Mode, RunConfig};
use crate::operation::{Operation, Side};
use crate::recorder::{OperationTotals, Second};

/// The run's settings, as the report repeats them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parameters {
    pub command_url: String,
    pub query_url: String,
    pub mode: Mode,
    /// Requests per second of the open loop; `None` in a closed loop.
    pub rate: Option<f64>,
    pub connections: u32,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub read_ratio: f64,
    pub reads_only: bool,
    pub writes_only: bool,
    pub read_mix: String,
    pub write_mix: String,
    pub users: usize,
    pub posts: usize,
    pub zipf: f64,
    pub seed: u64,
    pub lag_sample: f64,
    pub post_bytes: u32,
    pub timeout_s: f64,
    /// `seeded`, `file` (reused from --population-file) or `made_up` (--no-seed).
    pub population: String,
}

impl Parameters {
    pub fn new(config: &RunConfig, users: usize, posts: usize, population: &str) -> Parameters {
        Parameters {
            command_url: config.command_url.clone(),
            query_url: config.query_url.clone(),
            mode: config.mode,
            rate: (config.mode == Mode::Open).then_some(config.rate),
            connections: config.connections,
            duration_s: config.duration.as_secs_f64(),
            warmup_s: config.warmup.as_secs_f64(),
            read_ratio: config.read_ratio,
            reads_only: config.reads_only,
            writes_only: config.writes_only,
            read_mix: config.read_mix.to_string(),
            write_mix: config.write_mix.to_string(),
            users,
            posts,
            zipf: config.zipf,
            seed: config.seed,
            lag_sample: config.lag_sample,
            post_bytes: config.post_bytes,
            timeout_s: config.timeout.as_secs_f64(),
            population: population.to_owned(),
        }
    }
}

/// Latency percentiles of the answered requests, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

impl Latency {
    /// From a histogram of microseconds; `None` when it is empty.
    pub fn of(histogram: &Histogram<u64>) -> Option<Latency> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Latency {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p99_9: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        })
    }
}

/// One operation (or a total) over the measured run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationReport {
    pub operation: String,
    /// Requests that finished: successes and errors.
    pub count: u64,
    /// `count` per measured second.
    pub throughput: f64,
    pub errors: u64,
    /// Errors by status code, `transport` (no answer), `timeout` and `bad_answer`.
    pub errors_by_status: BTreeMap<String, u64>,
    /// `None` when nothing was answered.
    pub latency_ms: Option<Latency>,
}

impl OperationReport {
    fn new(name: &str, totals: &OperationTotals, measured_s: f64) -> OperationReport {
        let count = totals.count();
        OperationReport {
            operation: name.to_owned(),
            count,
            throughput: if measured_s > 0.0 {
                count as f64 / measured_s
            } else {
                0.0
            },
            errors: totals.errors(),
            errors_by_status: totals
                .failures
                .iter()
                .map(|(failure, n)| (failure.key(), *n))
                .collect(),
            latency_ms: Latency::of(&totals.latency),
        }
    }
}

/// One operation within one second of the time series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SecondOperation {
    pub requests: u64,
    pub throughput: f64,
    pub errors: u64,
    pub p99_ms: Option<f64>,
}

/// One second of the time series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecondReport {
    /// End of the interval, in seconds since measuring started.
    pub t_s: f64,
    /// Its length (1 s but for the last, shorter one).
    pub length_s: f64,
    pub operations: BTreeMap<String, SecondOperation>,
}

/// Everything a run reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub parameters: Parameters,
    /// Seconds measured (the duration, or less when the run was stopped early).
    pub measured_s: f64,
    /// Per operation, in a fixed order.
    pub operations: Vec<OperationReport>,
    /// All reads together and all writes together.
    pub totals: Vec<OperationReport>,
    /// Open loop: requests of the measured schedule never sent, because the backlog was still
    /// there at the end plus the timeout.
    pub unsent: u64,
    /// Visibility-lag samples dropped because the probes could not keep up.
    pub lag_samples_dropped: u64,
    pub time_series: Vec<SecondReport>,
}

impl Report {
    /// The report of `operations` (those the workload sends, and any other that finished
    /// requests) from the recorder's totals and seconds.
    pub fn new(
        parameters: Parameters,
        measured: Duration,
        operations: &[Operation],
        totals: &[OperationTotals],
        series: &[Second],
    ) -> Report {
        let measured_s = measured.as_secs_f64();
        let listed: Vec<Operation> = Operation::ALL
            .into_iter()
            .filter(|op| operations.contains(op) || totals[op.index()].count() > 0)
            .collect();
        let side_total = |side: Side, name: &str| {
            let mut sum = OperationTotals::empty();
            for op in listed.iter().filter(|op| op.side() == side) {
                sum.absorb(&totals[op.index()]);
            }
            OperationReport::new(name, &sum, measured_s)
        };
        let mut side_totals = Vec::new();
        if listed.iter().any(|op| op.side() == Side::Read) {
            side_totals.push(side_total(Side::Read, "reads"));
        }
        if listed.iter().any(|op| op.side() == Side::Write) {
            side_totals.push(side_total(Side::Write, "writes"));
        }
        let time_series = series
            .iter()
            .map(|second| SecondReport {
                t_s: second.end_s,
                length_s: second.length_s,
                operations: listed
                    .iter()
                    .map(|op| {
                        let sample = second.operations[op.index()];
                        let throughput = if second.length_s > 0.0 {
                            sample.requests as f64 / second.length_s
                        } else {
                            0.0
                        };
                        let entry = SecondOperation {
                            requests: sample.requests,
                            throughput,
                            errors: sample.errors,
                            p99_ms: sample.p99_us.map(|us| us as f64 / 1000.0),
                        };
                        (op.name().to_owned(), entry)
                    })
                    .collect(),
            })
            .collect();
        Report {
            parameters,
            measured_s,
            operations: listed
                .iter()
                .map(|op| OperationReport::new(op.name(), &totals[op.index()], measured_s))
                .collect(),
            totals: side_totals,
            unsent: 0,
            lag_samples_dropped: 0,
            time_series,
        }
    }

    pub fn operation(&self, op: Operation) -> Option<&OperationReport> {
        self.operations.iter().find(|r| r.operation == op.name())
    }

    /// The report for people: a heading, one row per operation and total, then the errors.
    pub fn table(&self) -> String {
        let p = &self.parameters;
        let mut out = String::new();
        let load = match p.rate {
            Some(rate) => format!(
                "open loop at {rate} req/s (up to {} in flight)",
                p.connections
            ),
            None => format!("closed loop, {} connections", p.connections),
        };
        let _ = writeln!(
            out,
            "{load}; {:.1} s measured after {:.1} s warm-up; {} users, {} posts ({}), zipf {}, seed {}",
            self.measured_s, p.warmup_s, p.users, p.posts, p.population, p.zipf, p.seed
        );
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "operation",
            "count",
            "req/s",
            "errors",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms"
        );
        let rows = self
            .operations
            .iter()
            .filter(|r| r.operation != Operation::VisibilityLag.name())
            .chain(&self.totals)
            .chain(
                self.operations
                    .iter()
                    .filter(|r| r.operation == Operation::VisibilityLag.name()),
            );
        for row in rows {
            let _ = write!(
                out,
                "{:<16} {:>9} {:>10.1} {:>7}",
                row.operation, row.count, row.throughput, row.errors
            );
            match row.latency_ms {
                Some(l) => {
                    for value in [l.p50, l.p90, l.p99, l.p99_9, l.max] {
                        let _ = write!(out, " {:>9}", format_ms(value));
                    }
                }
                None => {
                    let _ = write!(out, " {:>9}", "-");
                }
            }
            out.push('\n');
        }
        let failing: Vec<&OperationReport> = self
            .operations
            .iter()
            .filter(|r| !r.errors_by_status.is_empty())
            .collect();
        if !failing.is_empty() {
            out.push_str("errors by status:\n");
            for row in failing {
                let kinds: Vec<String> = row
                    .errors_by_status
                    .iter()
                    .map(|(kind, n)| format!("{kind} × {n}"))
                    .collect();
                let _ = writeln!(out, "  {}: {}", row.operation, kinds.join(", "));
            }
        }
        if self.unsent > 0 {
            let _ = writeln!(
                out,
                "{} requests of the schedule were never sent: the server was too slow to drain \
                 the backlog by the end (plus the timeout)",
                self.unsent
            );
        }
        if self.lag_samples_dropped > 0 {
            let _ = writeln!(
                out,
                "{} visibility-lag samples were dropped: the probes could not keep up",
                self.lag_samples_dropped
            );
        }
        out
    }
}

/// Milliseconds with three significant digits or more: 0.123, 1.23, 12.3, 123, 1234.
fn format_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.3}")
    } else if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::{Failure, IntervalSample, new_histogram};
    use clap::Parser;

    fn parameters() -> Parameters {
        let config = RunConfig::try_parse_from(["run", "--duration", "10s"]).expect("config");
        Parameters::new(&config, 1000, 10_000, "seeded")
    }

    fn totals_with(op: Operation, micros: impl IntoIterator<Item = u64>) -> Vec<OperationTotals> {
        let mut totals: Vec<OperationTotals> =
            Operation::ALL.map(|_| OperationTotals::empty()).to_vec();
        for us in micros {
            totals[op.index()].latency.saturating_record(us);
            totals[op.index()].successes += 1;
        }
        totals
    }

    #[test]
    fn percentiles_come_from_the_histogram_in_milliseconds() {
        let mut histogram = new_histogram();
        // 1..=1000 ms, one each: p50 = 500 ms, p90 = 900 ms, p99 = 990 ms, max = 1000 ms.
        for ms in 1..=1000u64 {
            histogram.saturating_record(ms * 1000);
        }
        let latency = Latency::of(&histogram).expect("not empty");
        let close = |got: f64, want: f64| (got - want).abs() / want < 0.002;
        assert!(close(latency.p50, 500.0), "{latency:?}");
        assert!(close(latency.p90, 900.0), "{latency:?}");
        assert!(close(latency.p99, 990.0), "{latency:?}");
        assert!(close(latency.p99_9, 999.0), "{latency:?}");
        assert!(close(latency.max, 1000.0), "{latency:?}");
        assert_eq!(Latency::of(&new_histogram()), None);
    }

    #[test]
    fn milliseconds_keep_three_significant_digits() {
        assert_eq!(format_ms(0.1234), "0.123");
        assert_eq!(format_ms(1.234), "1.23");
        assert_eq!(format_ms(12.34), "12.3");
        assert_eq!(format_ms(1234.4), "1234");
    }

    #[test]
    fn the_report_counts_throughput_errors_and_totals() {
        let mut totals = totals_with(Operation::ReadPost, (0..2000).map(|i| 500 + i % 100));
        let creates = &mut totals[Operation::CreatePost.index()];
        creates.successes = 18;
        creates.latency.saturating_record(40_000);
        creates.failures.insert(Failure::Status(503), 1);
        creates.failures.insert(Failure::Timeout, 1);
        let series = vec![Second {
            end_s: 1.0,
            length_s: 1.0,
            operations: std::array::from_fn(|i| IntervalSample {
                requests: if i == 0 { 200 } else { 0 },
                errors: 0,
                p99_us: (i == 0).then_some(599),
            }),
        }];
        let report = Report::new(
            parameters(),
            Duration::from_secs(10),
            &[Operation::ReadPost, Operation::CreatePost],
            &totals,
            &series,
        );
        let reads = report.operation(Operation::ReadPost).expect("reads listed");
        assert_eq!(reads.count, 2000);
        assert!((reads.throughput - 200.0).abs() < 1e-9);
        assert_eq!(reads.errors, 0);
        let creates = report
            .operation(Operation::CreatePost)
            .expect("creates listed");
        assert_eq!(creates.count, 20);
        assert_eq!(creates.errors, 2);
        assert_eq!(creates.errors_by_status.get("503"), Some(&1));
        assert_eq!(creates.errors_by_status.get("timeout"), Some(&1));
        // Operations neither sent nor finished are left out.
        assert!(report.operation(Operation::ReadFeed).is_none());
        assert_eq!(
            report
                .totals
                .iter()
                .map(|t| t.operation.as_str())
                .collect::<Vec<_>>(),
            ["reads", "writes"]
        );
        assert_eq!(report.totals[1].count, 20);
        let second = &report.time_series[0].operations["read_post"];
        assert_eq!(second.requests, 200);
        assert_eq!(second.p99_ms, Some(0.599));

        let table = report.table();
        assert!(
            table.contains("closed loop, 32 connections; 10.0 s measured"),
            "{table}"
        );
        let row = table
            .lines()
            .find(|line| line.starts_with("read_post"))
            .expect("a read_post row");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[..4], ["read_post", "2000", "200.0", "0"], "{row}");
        assert_eq!(cells.len(), 9, "{row}");
        assert!(
            table.contains("  create_post: 503 × 1, timeout × 1"),
            "{table}"
        );
        let header = table.lines().nth(1).expect("header");
        assert_eq!(header.len(), row.len(), "columns line up:\n{header}\n{row}");

        let json = serde_json::to_string(&report).expect("encode");
        let back: Report = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, report);
    }
}
