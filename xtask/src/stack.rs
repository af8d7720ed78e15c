//! The processes a task starts and stops: the services (each with its launch, so that a killed
//! one can be started again exactly as it was), helpers such as nginx, and the broker; the
//! environment they all get; the build they run from; the command API's signing keys.
//!
//! A task owns one [`Stack`] and calls [`Stack::stop`] on every way out (success, failure,
//! Ctrl-C or SIGTERM): services in reverse order of their start, then the broker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::layout::{repo_root, shown, stack_dir};
use crate::output::{say, show_log_tail};
use crate::process::{is_running, kill_child, port_accepts, probe_target, stop_child};
use crate::settings::Waits;
use crate::tansu::{Broker, DEFAULT_BROKER_PORT, ensure_installed};

/// How a service instance is started: where it listens, the path that says it is ready, its
/// program, arguments and settings of its own (on top of the stack's [`Stack::env`]).
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `host:port` it listens on (its `*_ADDR`).
    pub addr: String,
    /// `readyz` for the services, `healthz` for loadgen's bare server.
    pub ready_path: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Variables of this instance only, such as its `COMMAND_API_ADDR`.
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// A service binary (`bin_dir/program`) on `addr`, ready at `/readyz`, with `env`.
    pub fn service(bin_dir: &Path, program: &str, addr: &str, env: &[(&str, &str)]) -> Launch {
        Launch {
            addr: addr.to_owned(),
            ready_path: "readyz".to_owned(),
            program: bin_dir.join(program),
            args: Vec::new(),
            env: env
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
        }
    }

    /// `http://addr/<ready_path>`, a wildcard host probed on loopback.
    pub fn ready_url(&self) -> anyhow::Result<String> {
        let (host, port) = probe_target(&self.addr)?;
        Ok(format!("http://{host}:{port}/{}", self.ready_path))
    }
}

/// One process the task started.
#[derive(Debug)]
pub struct Started {
    pub name: String,
    pub child: Child,
    /// How it was started, for a service; `None` for a helper such as nginx.
    pub launch: Option<Launch>,
}

impl Started {
    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// What a task started, in order, and what they share.
#[derive(Debug)]
pub struct Stack {
    /// Where each process's log goes: `<log_dir>/<name>.log`.
    pub log_dir: PathBuf,
    pub waits: Waits,
    /// Variables every service gets (KAFKA_BROKERS, DATABASE_URL, …), on top of this process's
    /// own environment, which they inherit.
    pub env: BTreeMap<String, String>,
    pub processes: Vec<Started>,
    pub broker: Option<Broker>,
    http: reqwest::Client,
    stopped: bool,
}

impl Stack {
    pub fn new(log_dir: PathBuf, waits: Waits) -> anyhow::Result<Stack> {
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .context("cannot make an HTTP client")?;
        Ok(Stack {
            log_dir,
            waits,
            env: BTreeMap::new(),
            processes: Vec::new(),
            broker: None,
            http,
            stopped: false,
        })
    }

    /// Sets a variable for every service started from now on.
    pub fn set_env(&mut self, name: &str, value: impl Into<String>) {
        self.env.insert(name.to_owned(), value.into());
    }

    /// The log of the process named `name`.
    pub fn log_of(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// The process named `name`.
    pub fn find(&mut self, name: &str) -> anyhow::Result<&mut Started> {
        self.processes
            .iter_mut()
            .find(|started| started.name == name)
            .with_context(|| format!("no instance named {name}"))
    }

    /// The launch of the service named `name`.
    pub fn launch(&self, name: &str) -> Option<&Launch> {
        self.processes
            .iter()
            .find(|started| started.name == name)?
            .launch
            .as_ref()
    }

    /// Starts a service in the background with its log at `<log_dir>/<name>.log` and waits until
    /// its ready path answers (up to `waits.ready`). Fails, with the log's tail shown, when
    /// something else already holds its port, when it exits or is not ready in time.
    pub async fn start_service(&mut self, name: &str, launch: Launch) -> anyhow::Result<()> {
        let (host, port) = probe_target(&launch.addr)?;
        if port_accepts(&host, port).await {
            // Otherwise the readiness probe could be answered by whatever holds the port.
            bail!(
                "something already listens on {host}:{port}, where {name} should listen (another ./dev up?)"
            );
        }
        say(format_args!(
            "Starting {name} on {} (log: {})",
            launch.addr,
            shown(&self.log_of(name))
        ));
        let child = self.spawn(name, &launch)?;
        self.processes.push(Started {
            name: name.to_owned(),
            child,
            launch: Some(launch),
        });
        self.wait_until_ready(name).await
    }

    fn spawn(&self, name: &str, launch: &Launch) -> anyhow::Result<Child> {
        let log = self.log_of(name);
        let output = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        Command::new(&launch.program)
            .args(&launch.args)
            .envs(&self.env)
            .envs(launch.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(
                output
                    .try_clone()
                    .with_context(|| format!("{}", log.display()))?,
            )
            .stderr(output)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", launch.program.display()))
    }

    /// Adds a process started elsewhere (nginx) to those [`Stack::stop`] stops.
    pub fn adopt(&mut self, name: &str, child: Child) {
        self.processes.push(Started {
            name: name.to_owned(),
            child,
            launch: None,
        });
    }

    /// Waits until the service `name` answers its ready path (HTTP status below 400), up to
    /// `waits.ready`; fails with its log's tail when it exits first or the time is up.
    pub async fn wait_until_ready(&mut self, name: &str) -> anyhow::Result<()> {
        let ready = self.waits.ready;
        let log = self.log_of(name);
        let http = self.http.clone();
        let started = self.find(name)?;
        let url = started
            .launch
            .as_ref()
            .with_context(|| format!("{name} has no ready path"))?
            .ready_url()?;
        let deadline = Instant::now() + ready;
        loop {
            if let Ok(answer) = http.get(&url).send().await
                && answer.status().as_u16() < 400
            {
                return Ok(());
            }
            if !is_running(&mut started.child) {
                show_log_tail(&log);
                bail!("{name} exited during start-up");
            }
            if Instant::now() >= deadline {
                show_log_tail(&log);
                bail!("{name} was not ready ({url}) within {}s", ready.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// True when the service `name` answers its ready path now (within `within`).
    pub async fn is_ready(&self, name: &str, within: Duration) -> bool {
        let Some(Ok(url)) = self.launch(name).map(Launch::ready_url) else {
            return false;
        };
        matches!(
            self.http.get(&url).timeout(within).send().await,
            Ok(answer) if answer.status().as_u16() < 400
        )
    }

    /// Kills the process `name` at once (SIGKILL: no shutdown of any kind).
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        kill_child(&mut self.find(name)?.child).await;
        Ok(())
    }

    /// Starts the killed service `name` again exactly as it was started, without waiting (see
    /// [`Stack::wait_until_ready`]); its old log is kept as `<name>.killed.log`.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let launch = self
            .launch(name)
            .cloned()
            .with_context(|| format!("no service named {name}"))?;
        let log = self.log_of(name);
        let killed = self.log_dir.join(format!("{name}.killed.log"));
        std::fs::rename(&log, &killed)
            .with_context(|| format!("cannot move {} aside", log.display()))?;
        let child = self.spawn(name, &launch)?;
        self.find(name)?.child = child;
        Ok(())
    }

    /// The names of everything it started, the broker last.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.processes.iter().map(|p| p.name.clone()).collect();
        if self.broker.is_some() {
            names.push("the broker (tansu)".to_owned());
        }
        names
    }

    /// Waits until any started process (or the broker) exits; returns its name and log. Forever
    /// while they all run: a caller races it with a signal.
    pub async fn first_exit(&mut self) -> (String, PathBuf) {
        loop {
            for started in &mut self.processes {
                if !is_running(&mut started.child) {
                    let name = started.name.clone();
                    let log = self.log_dir.join(format!("{name}.log"));
                    return (name, log);
                }
            }
            if let Some(broker) = &mut self.broker
                && !broker.is_running()
            {
                return ("tansu".to_owned(), broker.log.clone());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts the developer's tansu (`up`, `broker`) on 127.0.0.1:9092 with its data in
    /// `.stack/tansu` and its log in `<log_dir>/tansu.log`, after saying `announcement`; true
    /// when it had no data yet (a new log).
    pub async fn start_dev_broker(&mut self, announcement: &str) -> anyhow::Result<bool> {
        let bin = ensure_installed(&self.waits).await?;
        let data_dir = stack_dir().join("tansu");
        let fresh = !test_support::tansu::storage_in(&data_dir).exists();
        say(announcement);
        let log = self.log_of("tansu");
        let broker = Broker::start(&bin, DEFAULT_BROKER_PORT, &data_dir, &log, &self.waits).await?;
        self.broker = Some(broker);
        Ok(fresh)
    }

    /// Ends a task: a failure is reported first (so that it is the line next to its cause, such
    /// as a log's tail), then everything is stopped; the task's exit code (1 for a failure).
    pub async fn close(&mut self, outcome: anyhow::Result<ExitCode>) -> ExitCode {
        let code = match outcome {
            Ok(code) => code,
            Err(failure) => {
                crate::output::error(format_args!("{failure:#}"));
                ExitCode::FAILURE
            }
        };
        self.stop().await;
        code
    }

    /// Stops everything it started, once: the processes in reverse order of their start
    /// (SIGTERM, a grace period, SIGKILL), then the broker. A Ctrl-C in the terminal reaches
    /// them too, so some may have stopped already.
    pub async fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let names = self.names();
        if names.is_empty() {
            return;
        }
        say(format_args!(
            "Stopping what this ./dev command started: {}",
            names.join(" ")
        ));
        for started in self.processes.iter_mut().rev() {
            stop_child(&mut started.child, &started.name).await;
        }
        if let Some(broker) = &mut self.broker {
            broker.stop().await;
        }
        say("Stopped");
    }
}

/// Which build the services run from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Release,
    Debug,
}

impl Profile {
    /// `release` or `debug` (DEV_PROFILE's values).
    pub fn parse(name: &str) -> anyhow::Result<Profile> {
        match name {
            "release" => Ok(Profile::Release),
            "debug" => Ok(Profile::Debug),
            other => bail!("DEV_PROFILE must be release or debug, not '{other}'"),
        }
    }

    /// The directory name under cargo's target directory.
    pub fn dir_name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// Builds every binary of the workspace with `profile`; returns the directory they are in. The
/// target directory may be moved by CARGO_TARGET_DIR or a cargo config, so cargo is asked where
/// it is.
///
/// A debug build also names the test targets: cargo then resolves the dependencies' features as
/// `./dev test` does (dev-dependencies included), so the binaries are the very ones the tests
/// built, and a fuzz or chaos run after the tests compiles nothing. Without `--tests` the same
/// binaries come out of a second build of most of the dependency tree.
pub async fn build_binaries(profile: Profile) -> anyhow::Result<PathBuf> {
    let arguments: &[&str] = match profile {
        // This crate is left out: nothing runs it in release.
        Profile::Release => &[
            "build",
            "--workspace",
            "--exclude",
            "xtask",
            "--bins",
            "--release",
        ],
        Profile::Debug => &["build", "--workspace", "--bins", "--tests"],
    };
    say(format_args!(
        "Building the binaries (cargo {})",
        arguments.join(" ")
    ));
    let mut build = Command::new("cargo");
    build.current_dir(repo_root()).args(arguments);
    let status = build
        .stdin(Stdio::null())
        .status()
        .await
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("the build failed");
    }
    Ok(target_dir().await?.join(profile.dir_name()))
}

/// cargo's target directory for this workspace.
pub async fn target_dir() -> anyhow::Result<PathBuf> {
    let metadata = Command::new("cargo")
        .current_dir(repo_root())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("cannot run cargo metadata")?;
    let metadata: serde_json::Value =
        serde_json::from_slice(&metadata.stdout).context("cannot read cargo metadata's answer")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cannot find cargo's target directory")
}

/// The command API's signing keys for `up` and the benchmarks: AUTH_KEYS when it is set, else a
/// key generated once into `.stack/auth-keys` (gitignored, readable by its owner only), so that
/// the tokens a developer holds survive restarts of the stack. A key is never written into the
/// repository.
pub fn ensure_auth_keys() -> anyhow::Result<String> {
    if let Some(keys) = crate::settings::var("AUTH_KEYS") {
        say("Signing access tokens with the keys in AUTH_KEYS");
        return Ok(keys);
    }
    let file = stack_dir().join("auth-keys");
    let existing = std::fs::read_to_string(&file).unwrap_or_default();
    if !existing.is_empty() {
        return Ok(existing.trim_end_matches('\n').to_owned());
    }
    std::fs::create_dir_all(stack_dir())
        .with_context(|| format!("cannot create {}", stack_dir().display()))?;
    let keys = format!(
        "dev-{}:{}",
        chrono::Utc::now().format("%Y%m%d"),
        random_hex(32)?
    );
    write_private(&file, &format!("{keys}\n"))?;
    say(format_args!(
        "Generated a key for access tokens into {}",
        shown(&file)
    ));
    Ok(keys)
}

/// `bytes` random bytes from the kernel, as lowercase hex.
pub fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read;
    let mut random = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut random))
        .with_context(|| format!("cannot read {bytes} random bytes from /dev/urandom"))?;
    Ok(random.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Writes `text` into a new file only its owner may read.
fn write_private(file: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .and_then(|mut out| out.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", file.display()))
}
