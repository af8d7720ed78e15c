//! The load benchmarks' summary: from the files the runs left in the output directory, a table
//! of each run's throughput, latencies and errors, the ratios BENCHMARKS.md reports (writes to
//! the broker's own appends, the lag to the broker's own delivery, cached reads to a bare
//! handler, cache misses to `pgbench -S`), each part's CPU over each run and the projector's
//! batches; printed, and written to `summary.json` beside the reports.
//!
//! The table and `summary.json` keep one format across runs (keys in a fixed order, numbers as
//! [`numbers`] writes them), so that the figures of different runs compare; a test pins it
//! against the files in `xtask/testdata/bench-summary/`.
//!
//! Below this module: [`inputs`] (what it reads), [`document`] (`summary.json`'s shape, which
//! copies the broker's percentiles from [`inputs`]) and [`numbers`].

mod document;
mod inputs;
mod numbers;

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use document::{
    Batches, BrokerEntry, LagMs, LoadEntry, Ordered, P99, Ratios, RunEntry, Side, Summary, Trend,
};
use inputs::{BatchCounters, BrokerReport, RunReport, read_json, read_snapshot};
use numbers::{round_to, shortest, whole};

/// Clock ticks a second in `/proc/<pid>/stat` (USER_HZ): 100 on every Linux architecture.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// The operations of each side of a run's time series.
const WRITE_OPERATIONS: &[&str] = &["create_post", "edit_post", "delete_post"];
const READ_OPERATIONS: &[&str] = &["read_post", "read_user", "read_user_posts", "read_feed"];

/// Summarizes the runs `runs` (in this order) whose files are in `out`, with each process's
/// resident memory (`name`, KiB) as measured at the end: prints the summary on stdout and writes
/// `out/summary.json`.
pub fn summarize(out: &Path, rss_kib: &[(String, String)], runs: &[&str]) -> anyhow::Result<()> {
    let mut text = String::new();
    let summary = build(out, rss_kib, runs, &mut text)?;
    print!("{text}");
    write_json(out, &summary)?;
    print!("{}", trailer(out, &summary));
    Ok(())
}

fn write_json(out: &Path, summary: &Summary) -> anyhow::Result<()> {
    let path = out.join("summary.json");
    let json = serde_json::to_vec_pretty(summary).context("cannot serialize the summary")?;
    std::fs::write(&path, json).with_context(|| format!("cannot write {}", path.display()))
}

/// The lines after `summary.json` is written: the resident memory and where the files are.
fn trailer(out: &Path, summary: &Summary) -> String {
    format!(
        "resident memory (KiB): {}\n\nReports, plots and summary.json in {}\n",
        dict_text(&summary.rss_kib),
        out.display()
    )
}

/// The summary of the runs, its table written into `text`.
fn build(
    out: &Path,
    rss_kib: &[(String, String)],
    runs: &[&str],
    text: &mut String,
) -> anyhow::Result<Summary> {
    let mut summary = Summary {
        runs: Ordered(Vec::new()),
        rss_kib: Ordered(rss_kib.to_vec()),
        writes_vs_broker_flat: None,
        lag_vs_broker_delivery: None,
        pgbench_select_tps: None,
        cached_posts_vs_bare: None,
        uncached_posts_vs_pgbench: None,
    };
    let _ = writeln!(
        text,
        "\n{:<16}{:<8}{:>10}{:>11}{:>11}{:>8}",
        "run", "side", "per s", "p50 ms", "p99 ms", "errors"
    );
    let mut previous_batches: Option<BatchCounters> = None;
    for &run in runs {
        let report_path = out.join(format!("{run}.json"));
        let entry = if run.starts_with("broker") {
            let entry = broker_entry(out, run, &read_json(&report_path)?);
            broker_rows(&entry, run, text);
            RunEntry::Broker(entry)
        } else {
            let now = BatchCounters::read(&out.join(format!("{run}.projector-metrics")));
            let entry = load_entry(out, run, &read_json(&report_path)?, now, previous_batches);
            previous_batches = now.or(previous_batches);
            load_rows(&entry, run, text);
            RunEntry::Load(entry)
        };
        summary.runs.0.push((run.to_owned(), entry));
    }
    write_ratios(&mut summary, text);
    write_cpu_and_batches(&summary, text);
    let pgbench = out.join("pgbench.txt");
    if pgbench.exists() {
        write_pgbench(&mut summary, &pgbench, text)?;
    }
    Ok(summary)
}

/// A `loadgen broker` run's rows: appends, deliveries and the read-back.
fn broker_rows(entry: &BrokerEntry, run: &str, text: &mut String) {
    let (a, d) = (&entry.append_ms, &entry.delivery_ms);
    let _ = writeln!(
        text,
        "{run:<16}{:<8}{:>10}{:>11.1}{:>11.1}{:>8}",
        "appends", entry.appends_per_s, a.p50, a.p99, entry.errors
    );
    let _ = writeln!(
        text,
        "{run:<16}{:<8}{:>10}{:>11.1}{:>11.1}",
        "deliver", "", d.p50, d.p99
    );
    if let Some(read_back) = entry.read_back_per_s {
        let _ = writeln!(text, "{run:<16}{:<8}{read_back:>10}", "readback");
    }
}

/// A `loadgen run` run's rows: each side that ran, and the visibility lag.
fn load_rows(entry: &LoadEntry, run: &str, text: &mut String) {
    for (name, side) in [("reads", &entry.reads), ("writes", &entry.writes)] {
        let Some(side) = side.as_ref().filter(|s| s.per_s != 0) else {
            continue;
        };
        let _ = writeln!(
            text,
            "{run:<16}{name:<8}{:>10}{:>11}{:>11}{:>8}",
            side.per_s,
            one_decimal(side.p50_ms),
            one_decimal(side.p99_ms),
            side.errors
        );
    }
    if let Some(lag) = &entry.lag_ms {
        let _ = writeln!(
            text,
            "{run:<16}{:<8}{:>10}{:>11.1}{:>11.1}",
            "lag", "", lag.p50, lag.p99
        );
    }
}

fn broker_entry(out: &Path, run: &str, report: &BrokerReport) -> BrokerEntry {
    let appended: Vec<f64> = report.seconds.iter().map(|s| s.appended as f64).collect();
    BrokerEntry {
        appends_per_s: whole(report.appends_per_s),
        append_ms: report.append_latency_ms,
        delivery_ms: report.delivery_latency_ms,
        errors: report.append_errors.values().sum(),
        appends_slope_per_min: slope_per_minute(&appended),
        read_back_per_s: report.read_back.as_ref().map(|r| whole(r.records_per_s)),
        cpu_percent: cpu_shares(out, run),
    }
}

fn load_entry(
    out: &Path,
    run: &str,
    report: &RunReport,
    now: Option<BatchCounters>,
    previous: Option<BatchCounters>,
) -> LoadEntry {
    let projector_batches = match (now, previous) {
        (Some(now), Some(previous)) if now.batches > previous.batches => {
            let n = now.batches - previous.batches;
            Some(Batches {
                count: n as i64,
                events_mean: round_to((now.events - previous.events) / n, 1),
                ms_mean: round_to((now.seconds - previous.seconds) / n * 1000.0, 2),
            })
        }
        _ => None,
    };
    let lag_ms = report
        .operations
        .iter()
        .find(|o| o.operation == "visibility_lag")
        .and_then(|o| o.latency_ms)
        .map(|l| LagMs {
            p50: l.p50,
            p99: l.p99,
            max: l.max,
        });
    LoadEntry {
        reads: side(report, "reads", READ_OPERATIONS),
        writes: side(report, "writes", WRITE_OPERATIONS),
        cpu_percent: cpu_shares(out, run),
        projector_batches,
        lag_ms,
    }
}

/// One side (`reads` or `writes`) of a run: its total, and, when it ran, its trend and worst
/// seconds from the time series.
fn side(report: &RunReport, name: &str, operations: &[&str]) -> Option<Side> {
    let total = report.totals.iter().find(|t| t.operation == name)?;
    let mut side = Side {
        per_s: whole(total.throughput),
        errors: total.errors,
        p50_ms: total.latency_ms.map(|l| l.p50),
        p99_ms: total.latency_ms.map(|l| l.p99),
        trend: None,
    };
    if side.per_s != 0 {
        let seconds = per_second(report, operations);
        let throughputs: Vec<f64> = seconds.iter().map(|(t, _)| *t).collect();
        side.trend = Some(Trend {
            slope_per_min: slope_per_minute(&throughputs),
            worst_second_p99_ms: first_max(seconds.iter().map(|(_, p)| *p)),
            first_5s_worst_p99_ms: first_max(seconds.iter().take(5).map(|(_, p)| *p)),
        });
    }
    Some(side)
}

/// Per second: the side's throughput and the worst p99 of its operations.
fn per_second(report: &RunReport, operations: &[&str]) -> Vec<(f64, P99)> {
    report
        .time_series
        .iter()
        .map(|second| {
            let figures: Vec<_> = operations
                .iter()
                .filter_map(|name| second.operations.get(*name))
                .collect();
            let throughput = figures.iter().fold(0.0, |sum, o| sum + o.throughput);
            let p99s = figures.iter().map(|o| match o.p99_ms {
                Some(ms) if ms != 0.0 => P99::Ms(ms),
                _ => P99::None,
            });
            (throughput, first_max(p99s).unwrap_or(P99::None))
        })
        .collect()
}

/// The largest of `values`, the first of equal ones; `None` when there are none.
fn first_max(values: impl Iterator<Item = P99>) -> Option<P99> {
    values.fold(None, |max, value| match max {
        Some(max) if value.ms() <= max.ms() => Some(max),
        _ => Some(value),
    })
}

/// The least-squares trend of a per-second series, as a share of its mean per minute; `None`
/// for fewer than two seconds or a series of zeros.
fn slope_per_minute(values: &[f64]) -> Option<f64> {
    let n = values.len();
    let total = values.iter().fold(0.0, |sum, v| sum + v);
    if n < 2 || total == 0.0 {
        return None;
    }
    let mean_x = (n - 1) as f64 / 2.0;
    let mean_y = total / n as f64;
    let covariance = values
        .iter()
        .enumerate()
        .fold(0.0, |sum, (x, y)| sum + (x as f64 - mean_x) * (y - mean_y));
    let variance = (0..n).fold(0.0, |sum, x| sum + (x as f64 - mean_x).powi(2));
    let slope = covariance / variance;
    Some(round_to(slope * 60.0 / mean_y, 4))
}

/// Each part's CPU over the run, in % of one core (200 is both cores of a 2-core machine), from
/// the snapshots taken before and after it; `None` when one is missing.
fn cpu_shares(out: &Path, run: &str) -> Option<Ordered<i64>> {
    let before = read_snapshot(&out.join(format!("{run}.cpu-before")))?;
    let after = read_snapshot(&out.join(format!("{run}.cpu-after")))?;
    let value = |snapshot: &[(String, i64)], name: &str| {
        snapshot.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    };
    let wall_ms = value(&after, "wall_ms")? - value(&before, "wall_ms")?;
    let seconds = wall_ms as f64 / 1000.0;
    let shares = after
        .iter()
        .filter(|(name, _)| name != "wall_ms")
        .filter_map(|(name, ticks)| {
            let earlier = value(&before, name)?;
            let share = (ticks - earlier) as f64 / CLOCK_TICKS_PER_SECOND / seconds * 100.0;
            Some((name.clone(), whole(share)))
        })
        .collect();
    Some(Ordered(shares))
}

/// The services' writes against the broker's own appends, and the lag against the broker's own
/// delivery, when the runs for them ran.
fn write_ratios(summary: &mut Summary, text: &mut String) {
    let broker = |name: &str| match summary.runs.get(name) {
        Some(RunEntry::Broker(entry)) => Some(entry),
        _ => None,
    };
    let load = |name: &str| match summary.runs.get(name) {
        Some(RunEntry::Load(entry)) => Some(entry),
        _ => None,
    };
    let mut writes_vs_broker_flat = None;
    if let (Some(flat), Some(writes)) = (
        broker("broker-flat"),
        load("writes").and_then(|e| e.writes.as_ref()),
    ) {
        let share = writes.per_s as f64 / flat.appends_per_s.max(1) as f64;
        writes_vs_broker_flat = Some(round_to(share, 2));
        let trend = match writes.trend.as_ref().and_then(|t| t.slope_per_min) {
            Some(slope) => format!("{:+.1}%", slope * 100.0),
            None => "unknown".to_owned(),
        };
        let _ = writeln!(
            text,
            "\nwrites flat out / the broker's own appends flat out: {share:.2} (trend {trend} a minute)"
        );
    }
    let mut lag_vs_broker_delivery = None;
    if let (Some(rate), Some(lag)) = (
        broker("broker-rate"),
        load("lag").and_then(|e| e.lag_ms.as_ref()),
    ) {
        let floor = rate.delivery_ms;
        lag_vs_broker_delivery = Some(Ratios {
            p50: round_to(lag.p50 / floor.p50, 2),
            p99: round_to(lag.p99 / floor.p99, 2),
        });
        let _ = writeln!(
            text,
            "lag at the write rate / the broker's own send-to-delivery at that rate: \
             p50 {:.1} / {:.1} ms, p99 {:.1} / {:.1} ms",
            lag.p50, floor.p50, lag.p99, floor.p99
        );
    }
    summary.writes_vs_broker_flat = writes_vs_broker_flat;
    summary.lag_vs_broker_delivery = lag_vs_broker_delivery;
}

fn write_cpu_and_batches(summary: &Summary, text: &mut String) {
    let _ = writeln!(
        text,
        "\nCPU per part of the stack, % of one core (the machine has 200), over each run:"
    );
    for (run, entry) in &summary.runs.0 {
        let Some(cpu) = entry.cpu_percent().filter(|cpu| !cpu.0.is_empty()) else {
            continue;
        };
        let mut parts: Vec<&(String, i64)> = cpu.0.iter().collect();
        parts.sort_by_key(|(_, share)| std::cmp::Reverse(*share));
        let parts: Vec<String> = parts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(text, "  {run:<14}{}", parts.join("  "));
    }
    for (run, entry) in &summary.runs.0 {
        if let RunEntry::Load(LoadEntry {
            projector_batches: Some(b),
            ..
        }) = entry
        {
            let _ = writeln!(
                text,
                "  {run:<14}projector: {} batches, {} events and {} ms each",
                b.count,
                shortest(b.events_mean),
                shortest(b.ms_mean)
            );
        }
    }
}

/// `pgbench -S` beside the reads: cached reads against the bare handler, cache misses against
/// PostgreSQL's own primary-key select.
fn write_pgbench(summary: &mut Summary, pgbench: &Path, text: &mut String) -> anyhow::Result<()> {
    let output = std::fs::read_to_string(pgbench)
        .with_context(|| format!("cannot read {}", pgbench.display()))?;
    let tps = inputs::pgbench_tps(&output)
        .with_context(|| format!("no 'tps = N' in {}", pgbench.display()))?;
    let reads = |run: &str| match summary.runs.get(run) {
        Some(RunEntry::Load(LoadEntry {
            reads: Some(side), ..
        })) => Ok(side.per_s),
        _ => bail!("no reads in run {run} to set beside pgbench"),
    };
    let (cached, bare, uncached) = (
        reads("cached-posts")?,
        reads("bare-posts")?,
        reads("uncached-posts")?,
    );
    if bare == 0 || tps == 0.0 {
        bail!("the bare handler or pgbench answered nothing: no ratio to report");
    }
    summary.pgbench_select_tps = Some(whole(tps));
    let cached_vs_bare = round_to(cached as f64 / bare as f64, 2);
    let uncached_vs_pgbench = round_to(uncached as f64 / tps, 2);
    summary.cached_posts_vs_bare = Some(cached_vs_bare);
    summary.uncached_posts_vs_pgbench = Some(uncached_vs_pgbench);
    let _ = writeln!(text, "{:<16}{:<8}{:>10}", "pgbench -S", "", whole(tps));
    let _ = writeln!(
        text,
        "\ncached GET /v1/posts/{{id}} / bare handler: {} (target >= 0.7)",
        shortest(cached_vs_bare)
    );
    let _ = writeln!(
        text,
        "cache-miss GET /v1/posts/{{id}} / pgbench -S: {} (target >= 0.5)",
        shortest(uncached_vs_pgbench)
    );
    Ok(())
}

/// `{'name': 'value', ...}`: how the summary has always printed the resident memory.
fn dict_text(map: &Ordered<String>) -> String {
    let pairs: Vec<String> = map.0.iter().map(|(k, v)| format!("'{k}': '{v}'")).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// A figure with one decimal, or `n/a` when there is none.
fn one_decimal(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writes and a reads benchmark's files, trimmed (`xtask/testdata/bench-summary/`), and
    /// the summary they give: the table and `summary.json`, byte for byte.
    #[test]
    fn the_summary_of_a_run_keeps_its_format() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/bench-summary");
        let out = tempfile::tempdir().expect("temp dir");
        for entry in std::fs::read_dir(&fixture).expect("the fixture") {
            let path = entry.expect("a fixture file").path();
            let name = path
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            if !name.starts_with("expected") {
                std::fs::copy(&path, out.path().join(&name)).expect("copy the fixture");
            }
        }
        let rss: Vec<(String, String)> = [
            ("command-api", "12796"),
            ("projector", "17104"),
            ("query-api", "28872"),
            ("tansu", "29124"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec();
        let runs = [
            "broker-flat",
            "writes",
            "broker-rate",
            "lag",
            "cached-posts",
            "bare-posts",
            "uncached-posts",
        ];
        let mut text = String::new();
        let summary = build(out.path(), &rss, &runs, &mut text).expect("the summary");
        write_json(out.path(), &summary).expect("summary.json");
        text.push_str(&trailer(out.path(), &summary));

        let read = |path: &Path| std::fs::read_to_string(path).expect("a file");
        let expected =
            read(&fixture.join("expected.txt")).replace("{out}", &out.path().display().to_string());
        assert_eq!(text, expected);
        assert_eq!(
            read(&out.path().join("summary.json")),
            read(&fixture.join("expected-summary.json"))
        );
    }

    #[test]
    fn the_slope_is_a_share_of_the_mean_per_minute() {
        assert_eq!(slope_per_minute(&[1.0]), None);
        assert_eq!(slope_per_minute(&[0.0, 0.0]), None);
        // One more per second on a mean of 1.5: 60 / 1.5 = 40 a minute.
        assert_eq!(slope_per_minute(&[1.0, 2.0]), Some(40.0));
    }

    #[test]
    fn the_first_of_equal_maxima_wins() {
        let values = [P99::None, P99::Ms(0.0), P99::Ms(2.0), P99::Ms(2.0)];
        assert!(matches!(first_max(values.into_iter()), Some(P99::Ms(2.0))));
        assert!(matches!(
            first_max([P99::None, P99::Ms(0.0)].into_iter()),
            Some(P99::None)
        ));
        assert!(first_max(std::iter::empty()).is_none());
    }
}
