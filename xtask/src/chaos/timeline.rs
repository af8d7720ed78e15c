//! The run's timeline (`timeline.jsonl`): one line per fault and phase (`kill`, `restart`,
//! `ready`) with its time, which `loadgen chaos` reads to cut its record into one window per
//! fault.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// The timeline file, appended to as the faults go.
#[derive(Debug)]
pub struct Timeline {
    pub path: PathBuf,
}

impl Timeline {
    /// Creates (or empties) the file.
    pub fn create(path: &Path) -> anyhow::Result<Timeline> {
        std::fs::write(path, "").with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Timeline {
            path: path.to_path_buf(),
        })
    }

    /// Appends `{"at_ms": <now, ms since the epoch>, "fault": …, "phase": …}`.
    pub fn record(&self, fault: &str, phase: &str) -> anyhow::Result<()> {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis());
        let line =
            format!("{{\"at_ms\": {at_ms}, \"fault\": \"{fault}\", \"phase\": \"{phase}\"}}\n");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .and_then(|mut file| file.write_all(line.as_bytes()))
            .with_context(|| format!("cannot append to {}", self.path.display()))
    }
}
