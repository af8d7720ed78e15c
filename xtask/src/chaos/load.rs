//! The run's load: `loadgen chaos` writing and reading through nginx for the whole run (its
//! table in `loadgen.txt`, its log in `loadgen.log`), watched while the faults go (a load that
//! stopped makes the run void), then asked to stop and give its verdict.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::Signal;
use tokio::process::{Child, Command};

use crate::output::{show_log_tail, warn};
use crate::process::{is_running, send_signal, stop_child};

/// How much longer than its own settle timeout loadgen may take for its verdict.
const VERDICT_SLACK: Duration = Duration::from_secs(300);

/// How `loadgen chaos` is run.
pub struct LoadPlan<'a> {
    pub loadgen: &'a Path,
    /// The services' environment, which loadgen gets too.
    pub env: &'a BTreeMap<String, String>,
    pub command_url: &'a str,
    pub query_url: &'a str,
    pub write_rate: u32,
    pub writers: u32,
    pub timeline: &'a Path,
    /// The run's output directory: `report.json`, `loadgen.txt`, `loadgen.log`.
    pub out: &'a Path,
    /// How long loadgen waits, after the load, for every acknowledged command to be decided
    /// (`180s`).
    pub settle_timeout: Duration,
}

/// The running `loadgen chaos`.
#[derive(Debug)]
pub struct Load {
    child: Child,
    /// Its stdout: the verdict's table.
    pub table: PathBuf,
    /// Its stderr.
    pub log: PathBuf,
}

impl Load {
    pub fn start(plan: &LoadPlan<'_>) -> anyhow::Result<Load> {
        let table = plan.out.join("loadgen.txt");
        let log = plan.out.join("loadgen.log");
        let create = |path: &Path| {
            std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))
        };
        let child = Command::new(plan.loadgen)
            .arg("chaos")
            .args([
                "--command-url",
                plan.command_url,
                "--query-url",
                plan.query_url,
            ])
            .args(["--write-rate", &plan.write_rate.to_string()])
            .args(["--writers", &plan.writers.to_string()])
            .arg("--timeline")
            .arg(plan.timeline)
            .arg("--out")
            .arg(plan.out.join("report.json"))
            .args([
                "--settle-timeout",
                &format!("{}s", plan.settle_timeout.as_secs()),
            ])
            .envs(plan.env)
            .stdin(Stdio::null())
            .stdout(create(&table)?)
            .stderr(create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} chaos", plan.loadgen.display()))?;
        Ok(Load { child, table, log })
    }

    /// Sleeps `duration`, failing early (with its log's tail) if loadgen has stopped: the run
    /// is void then.
    pub async fn sleep_watching(&mut self, duration: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            if !is_running(&mut self.child) {
                show_log_tail(&self.log);
                bail!("loadgen chaos stopped before the faults were over");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        }
        Ok(())
    }

    /// Stops the load (SIGTERM) and waits for loadgen's verdict: it lets the operations under way
    /// finish and verifies every acknowledged write within `settle_timeout`, its own bound; this
    /// waits [`VERDICT_SLACK`] longer, for a loadgen that hangs (killed then). Its exit status.
    pub async fn finish(&mut self, settle_timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(pid) = self.child.id() {
            send_signal(pid, Signal::TERM);
        }
        let within = settle_timeout + VERDICT_SLACK;
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.context("waiting for loadgen chaos"),
            Err(_) => {
                warn(format_args!(
                    "loadgen chaos did not finish within {}s + {} s; killing it",
                    settle_timeout.as_secs(),
                    VERDICT_SLACK.as_secs()
                ));
                let _ = self.child.kill().await;
                self.child.wait().await.context("waiting for loadgen chaos")
            }
        }
    }

    /// Stops it if it still runs (SIGTERM, a grace period, SIGKILL): the run's clean-up.
    pub async fn stop(&mut self) {
        stop_child(&mut self.child, "loadgen chaos").await;
    }
}
