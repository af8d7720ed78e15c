//! tansu, the Kafka-protocol broker the stack and the tests run against: installed once into a
//! cache outside the checkout, started on a port and a data directory with the indexes its
//! storage lacks (test-support's [`test_support::tansu::start`], which the tests' own brokers
//! use too), stopped, killed and started again.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::fs::{FlockOperation, flock};
use tokio::process::{Child, Command};

use crate::layout::{absolute, log_dir, tool_cache};
use crate::output::{say, show_log_tail};
use crate::process::{is_executable, is_running, kill_child, require, run_bounded, stop_child};
use crate::settings::Waits;

/// The tansu release the project runs (its storage's missing indexes are this version's).
pub const TANSU_VERSION: &str = "0.6.0";

/// Where `up` and `broker` run the developer's broker: Kafka's usual port.
pub const DEFAULT_BROKER_PORT: u16 = 9092;

/// Where tansu is installed: `TANSU_ROOT`, else `~/.cache/cqrs-kafka/tansu-0.6.0`.
pub fn root() -> PathBuf {
    match std::env::var_os("TANSU_ROOT").filter(|root| !root.is_empty()) {
        Some(root) => absolute(Path::new(&root)),
        None => tool_cache().join(format!("tansu-{TANSU_VERSION}")),
    }
}

/// The broker binary under [`root`].
pub fn bin() -> PathBuf {
    root().join("bin/tansu")
}

/// Makes sure tansu is installed (and the sqlite3 shell that indexes its storage is there);
/// installs it when it is not: `cargo install` into [`root`], ~12 minutes on 2 cores, bounded by
/// `waits.tansu_install`. Two tasks never compile it side by side: the second waits for the
/// first's lock. Returns the binary.
pub async fn ensure_installed(waits: &Waits) -> anyhow::Result<PathBuf> {
    require(
        "sqlite3",
        "it adds the indexes tansu's storage lacks (deploy/tansu/indexes.sql): apt-get install sqlite3",
    )?;
    let root = root();
    let bin = bin();
    if is_executable(&bin) {
        return Ok(bin);
    }
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let lock_path = PathBuf::from(format!("{}.install.lock", root.display()));
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("cannot create the install lock {}", lock_path.display()))?;
    if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
        say(format_args!(
            "Another task is installing tansu; waiting for it (up to {}s)",
            waits.tansu_install.as_secs()
        ));
        let deadline = Instant::now() + waits.tansu_install;
        while flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            if Instant::now() >= deadline {
                bail!(
                    "gave up waiting for the other tansu install (lock {})",
                    lock_path.display()
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    if !is_executable(&bin) {
        let logs = log_dir();
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        let log = logs.join("tansu-install.log");
        say(format_args!(
            "Installing tansu {TANSU_VERSION} into {}: it is the Kafka-protocol broker the stack and the",
            root.display()
        ));
        say(
            "tests run against, and it is not installed yet. This compiles it once (~12 minutes on 2 cores);",
        );
        say(format_args!("progress in {}", log.display()));
        let output = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut install = Command::new("cargo");
        install
            .args(["install", "tansu", "--version", TANSU_VERSION, "--locked"])
            .args(["--features", "libsql", "--root"])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(output.try_clone().context("the install log")?)
            .stderr(output);
        let installed = run_bounded(&mut install, waits.tansu_install, "cargo install tansu").await;
        if !matches!(installed, Ok(ref status) if status.success()) {
            show_log_tail(&log);
            installed?;
            bail!("installing tansu failed");
        }
    }
    // Closing the file releases the lock.
    drop(lock);
    if !is_executable(&bin) {
        bail!("tansu is still missing at {}", bin.display());
    }
    Ok(bin)
}

/// A running tansu this task started: its port, data, log and process.
#[derive(Debug)]
pub struct Broker {
    pub port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    /// The temporary data directory of a private broker, removed when the broker is dropped.
    _temp: Option<tempfile::TempDir>,
}

impl Broker {
    /// Starts tansu (`bin`, from [`ensure_installed`]) on 127.0.0.1:`port` with its data in
    /// `data_dir` and its output in `log`; waits up to `waits.broker` for it and adds the
    /// missing indexes. On failure shows the log's tail.
    pub async fn start(
        bin: &Path,
        port: u16,
        data_dir: &Path,
        log: &Path,
        waits: &Waits,
    ) -> anyhow::Result<Broker> {
        let mut broker = Broker {
            port,
            data_dir: data_dir.to_path_buf(),
            log: log.to_path_buf(),
            bin: bin.to_path_buf(),
            child: None,
            _temp: None,
        };
        broker.start_again(waits).await?;
        Ok(broker)
    }

    /// A broker of a task's own on a free port with its data in a temporary directory (removed
    /// when the broker is dropped): so that what the task does neither sees nor disturbs a
    /// running `up`. `label` names it in the step line ("the tests' broker").
    pub async fn start_private(label: &str, waits: &Waits) -> anyhow::Result<Broker> {
        let bin = ensure_installed(waits).await?;
        let temp = tempfile::Builder::new()
            .prefix("dev-test-broker.")
            .tempdir()
            .context("cannot make a temporary directory for the broker")?;
        let port = crate::process::free_port();
        let log = temp.path().join("tansu.log");
        say(format_args!(
            "Starting {label} on 127.0.0.1:{port} (log: {})",
            log.display()
        ));
        let mut broker = Broker::start(&bin, port, temp.path(), &log, waits).await?;
        broker._temp = Some(temp);
        Ok(broker)
    }

    /// Starts the process again on the same port, data and log (emptied) after [`Broker::kill`]
    /// or [`Broker::stop`].
    pub async fn start_again(&mut self, waits: &Waits) -> anyhow::Result<()> {
        if let Some(parent) = self.log.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        match test_support::tansu::start(
            &self.bin,
            self.port,
            &self.data_dir,
            &self.log,
            waits.broker,
        )
        .await
        {
            Ok(child) => {
                self.child = Some(child);
                Ok(())
            }
            Err(error) => {
                show_log_tail(&self.log);
                Err(error)
            }
        }
    }

    /// The bootstrap address: `127.0.0.1:port`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The sqlite file of its storage.
    pub fn storage(&self) -> PathBuf {
        test_support::tansu::storage_in(&self.data_dir)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(is_running)
    }

    /// Waits until the process exits (forever while it runs: a caller bounds it or races it).
    pub async fn exited(&mut self) {
        match self.child.as_mut() {
            Some(child) => {
                let _ = child.wait().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Stops it gracefully (SIGTERM, then SIGKILL after the grace period); its data stays.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, "tansu").await;
        }
    }

    /// Kills it at once (SIGKILL); its data stays.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child).await;
        }
    }
}
