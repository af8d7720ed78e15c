//! Step 5, the report: the figures, the machine they ran on and the rebuild's ratio to `COPY`,
//! as the Markdown table BENCHMARKS.md shows and, with `--json`, as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::args::Source;
use crate::baseline::TableRows;

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub source: Source,
    pub events: u64,
    pub partitions: i32,
    pub batch_size: u32,
    pub fill_secs: f64,
    pub live_projection_secs: f64,
    /// Projection and verification, start to READY.
    pub rebuild_secs: f64,
    pub rebuild_events_per_sec: f64,
    /// Of which the table-by-table comparison.
    pub verify_compare_secs: f64,
    pub live_held_ms: u128,
    pub rows: Vec<TableRows>,
    pub copy_bytes: u64,
    pub copy_secs: f64,
    /// `rebuild_secs / copy_secs`: how many times longer the rebuild takes than loading its
    /// result with COPY.
    pub rebuild_to_copy_ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    cpu: String,
    cores: usize,
    memory_gib: f64,
    postgres: String,
}

impl Machine {
    /// This machine, from /proc, and the server's `SELECT version()`.
    pub fn read(postgres: String) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: memory_kib / 1024.0 / 1024.0,
            postgres: postgres
                .split(" on ")
                .next()
                .unwrap_or(&postgres)
                .to_owned(),
        }
    }
}

impl Report {
    /// The report as printed: a heading, the machine, the table of steps and the ratio.
    pub fn render(&self) -> String {
        let r = self;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nrebuild benchmark: {} events, {} partitions, batches of {}, log read from {}",
            r.events,
            r.partitions,
            r.batch_size,
            match r.source {
                Source::Memory => "memory",
                Source::Broker => "the broker",
            }
        );
        let _ = writeln!(
            out,
            "machine: {} cores ({}), {:.0} GiB, {}; everything on it",
            r.machine.cores, r.machine.cpu, r.machine.memory_gib, r.machine.postgres
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "| step | seconds | events/s |");
        let _ = writeln!(out, "|---|---:|---:|");
        let line = |out: &mut String, step: &str, secs: f64| {
            let _ = writeln!(
                out,
                "| {step} | {secs:.1} | {:.0} |",
                r.events as f64 / secs
            );
        };
        line(&mut out, "fill the log", r.fill_secs);
        line(&mut out, "live projection", r.live_projection_secs);
        line(&mut out, "**rebuild, verified**", r.rebuild_secs);
        let _ = writeln!(
            out,
            "| (of which the comparison) | {:.1} | |",
            r.verify_compare_secs
        );
        let _ = writeln!(
            out,
            "| COPY of the rebuilt rows ({} MB) | {:.1} | |",
            r.copy_bytes / 1_000_000,
            r.copy_secs
        );
        let _ = writeln!(out);
        let rows = r
            .rows
            .iter()
            .map(|t| format!("{} {}", t.table, t.rows))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(out, "rows: {rows}");
        let _ = writeln!(
            out,
            "live projector held for {} ms by the verification",
            r.live_held_ms
        );
        let _ = writeln!(
            out,
            "rebuild / COPY = {:.2} (the rebuild decides, writes and verifies in {:.2}x the time \
             PostgreSQL takes to load its result)",
            r.rebuild_to_copy_ratio, r.rebuild_to_copy_ratio
        );
        out
    }
}
