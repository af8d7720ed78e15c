//! The CPU each part of a load benchmark's stack has used so far, in clock ticks (user +
//! system, from `/proc`), written as a snapshot file before and after each run so that the
//! summary can tell each part's share of the run: each started process, the broker, PostgreSQL
//! (every process named `postgres`), and the load generator (the time of this process's
//! waited-for children, which each run is).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// One process's name (as the snapshot line names it) and its process id while it runs.
pub struct Part<'a> {
    pub name: &'a str,
    pub pid: Option<u32>,
}

/// Writes the snapshot of `parts` into `file`: one `name ticks` line each, then `tansu`'s when a
/// broker runs, `postgres`, `wall_ms` (milliseconds since the epoch) and `loadgen`.
pub fn write_snapshot(file: &Path, parts: &[Part<'_>], broker: Option<u32>) -> anyhow::Result<()> {
    let mut text = String::new();
    for part in parts {
        let _ = writeln!(text, "{} {}", part.name, part.pid.map_or(0, process_ticks));
    }
    if let Some(pid) = broker {
        let _ = writeln!(text, "tansu {}", process_ticks(pid));
    }
    let _ = writeln!(text, "postgres {}", postgres_ticks());
    let wall_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis());
    let _ = writeln!(text, "wall_ms {wall_ms}");
    let _ = writeln!(text, "loadgen {}", waited_children_ticks());
    std::fs::write(file, text).with_context(|| format!("cannot write {}", file.display()))
}

/// The numeric fields of `/proc/<pid>/stat` from field 4 (the parent's pid) on: after the
/// command name, which may hold spaces, and the state.
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_name) = stat.rsplit_once(')')?;
    Some(
        after_name
            .split_whitespace()
            .skip(1)
            .map(|field| field.parse().unwrap_or(0))
            .collect(),
    )
}

/// Field `n` (numbered as proc(5) does) of `fields`, from [`stat_fields`].
fn field(fields: &[u64], n: usize) -> u64 {
    fields.get(n - 4).copied().unwrap_or(0)
}

/// utime + stime of `pid`; 0 when it is gone.
fn process_ticks(pid: u32) -> u64 {
    stat_fields(&pid.to_string()).map_or(0, |f| field(&f, 14) + field(&f, 15))
}

/// cutime + cstime of this process: its children that it has waited for.
fn waited_children_ticks() -> u64 {
    stat_fields("self").map_or(0, |f| field(&f, 16) + field(&f, 17))
}

/// utime + stime of every process named `postgres`.
fn postgres_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == "postgres")
        })
        .map(|pid| stat_fields(&pid).map_or(0, |f| field(&f, 14) + field(&f, 15)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_stat_with_its_times() {
        let fields = stat_fields("self").expect("/proc/self/stat");
        assert!(field(&fields, 4) > 0, "field 4 is the parent's pid");
        assert!(fields.len() >= 17 - 3, "up to cstime, field 17");
    }
}
