//! The run's own PostgreSQL cluster, which the run crashes and starts again: `initdb` into the
//! run's temporary directory, on a port below the kernel's range for outgoing ports (so that it
//! is still free when the cluster comes back), started and stopped with `pg_ctl`. As root the
//! server programs run as the `postgres` user (initdb and postgres refuse root).
//!
//! test-support's `OwnPostgres` is the tests' cluster: it panics on failure, takes a port from
//! the kernel's range and turns `fsync` off; this one fails with what to look at and keeps the
//! server's defaults, so that a crash here is the crash a deployment would see.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use test_support::running_as_root;
use tokio::process::Command;

use crate::output::show_log_tail;
use crate::postgres::newest_server_bin_dir;
use crate::process::{instance_port, run_bounded};
use crate::settings::Waits;

/// How long `initdb` may take.
const INITDB_WAIT: Duration = Duration::from_secs(300);
/// How long `pg_ctl stop` and one `pg_isready` may take.
const STOP_WAIT: Duration = Duration::from_secs(120);

/// A cluster of the run's own; stop it with [`Cluster::stop`] (its files go with the run's
/// temporary directory).
#[derive(Debug)]
pub struct Cluster {
    pub port: u16,
    bin: PathBuf,
    /// `<tmp>/postgres`: the data directory, the socket and the server's log.
    dir: PathBuf,
    waits: Waits,
}

impl Cluster {
    /// Runs `initdb` into `<tmp>/postgres/data` (its output in `initdb_log`) and picks the
    /// cluster's port; [`Cluster::start`] starts it.
    pub async fn init(tmp: &Path, initdb_log: &Path, waits: Waits) -> anyhow::Result<Cluster> {
        let bin = newest_server_bin_dir()?;
        let dir = tmp.join("postgres");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        if running_as_root() {
            let mut chown = Command::new("chown");
            chown
                .arg("postgres:postgres")
                .arg(&dir)
                .stdin(Stdio::null());
            if !run_bounded(&mut chown, STOP_WAIT, "chown").await?.success() {
                bail!("cannot give {} to the postgres user", dir.display());
            }
        }
        let log = std::fs::File::create(initdb_log)
            .with_context(|| format!("cannot create {}", initdb_log.display()))?;
        let mut initdb = Command::from(test_support::as_postgres(&bin.join("initdb")));
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "--no-sync"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("initdb's log")?)
            .stderr(log);
        if !run_bounded(&mut initdb, INITDB_WAIT, "initdb")
            .await?
            .success()
        {
            show_log_tail(initdb_log);
            bail!("initdb failed");
        }
        Ok(Cluster {
            port: instance_port().await?,
            bin,
            dir,
            waits,
        })
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The server's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Creates database `name`.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let admin = self.url_of("postgres");
        crate::postgres::execute(&admin, &format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("cannot create database {name} on {admin}"))
    }

    /// Starts the cluster (again) with the same settings; returns once it accepts connections.
    pub async fn start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let wait = self.waits.postgres.as_secs().to_string();
        let mut start = self.pg_ctl();
        start
            .arg("-l")
            .arg(self.log())
            .args(["-o", &options, "-w", "-t", &wait, "start"])
            .stdout(Stdio::null());
        let within = self.waits.postgres + STOP_WAIT;
        if !run_bounded(&mut start, within, "pg_ctl start")
            .await?
            .success()
        {
            show_log_tail(&self.log());
            bail!("the run's PostgreSQL did not start");
        }
        Ok(())
    }

    /// A crash, as far as its clients can tell: no shutdown checkpoint, connections cut.
    pub async fn crash(&self) -> anyhow::Result<()> {
        self.stop_with("immediate").await
    }

    /// A clean stop (`-m fast`), for the end of the run.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.stop_with("fast").await
    }

    async fn stop_with(&self, mode: &str) -> anyhow::Result<()> {
        let mut stop = self.pg_ctl();
        stop.args(["-m", mode, "-w", "stop"]).stdout(Stdio::null());
        if !run_bounded(&mut stop, STOP_WAIT, "pg_ctl stop")
            .await?
            .success()
        {
            bail!(
                "pg_ctl stop -m {mode} failed for the run's PostgreSQL (log: {})",
                self.log().display()
            );
        }
        Ok(())
    }

    /// Waits until the cluster answers `pg_isready`, up to `waits.postgres`.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.waits.postgres;
        loop {
            let mut probe = Command::new("pg_isready");
            probe
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .stdin(Stdio::null());
            if run_bounded(&mut probe, STOP_WAIT, "pg_isready")
                .await
                .is_ok_and(|status: ExitStatus| status.success())
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the run's PostgreSQL did not answer pg_isready");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `pg_ctl -D <data>`, as the postgres user when we are root.
    fn pg_ctl(&self) -> Command {
        let mut command = Command::from(test_support::as_postgres(&self.bin.join("pg_ctl")));
        command
            .arg("-D")
            .arg(self.dir.join("data"))
            .stdin(Stdio::null());
        command
    }
}
