//! `cargo xtask chaos`: the fault-injection run of docs/fault-injection.md. A stack of its own
//! (a throwaway PostgreSQL cluster, a private broker, two instances of each service behind
//! nginx), `loadgen chaos` writing and reading through nginx, one fault after another, a check
//! that every process that was not killed rode them out, then loadgen's verdict, whose exit
//! status is the run's (0 passed, 1 a check failed, 2 it could not run; 1 when a survivor died).
//!
//! The output directory (default `.stack/chaos`) keeps `report.json`, `timeline.jsonl`,
//! `loadgen.txt` (the verdict's table), `loadgen.log`, and `logs/` with every process's log (a
//! killed one's log before its restart is `<name>.killed.log`).
//!
//! Layout, bottom to top: [`timeline`], [`cluster`] (the run's PostgreSQL), [`load`] (`loadgen
//! chaos`) and [`survivors`] stand alone; [`faults`] uses the first three; this module runs them.

mod cluster;
mod faults;
mod load;
mod survivors;
mod timeline;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use anyhow::Context;

use crate::layout::stack_dir;
use crate::nginx::{Instances, require_nginx, start_instances_behind_nginx};
use crate::output::{say, show_log_tail, warn};
use crate::process::{instance_port, interrupted, require, shell_code, succeeds};
use crate::settings::{Waits, seconds, var_or};
use crate::stack::{Profile, Stack, build_binaries, random_hex};
use crate::tansu::{self, Broker};
use cluster::Cluster;
use faults::{Fault, Target};
use load::{Load, LoadPlan};
use timeline::Timeline;

/// `chaos [--short] [--write-rate N] [--out DIR]`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Shorter outages and a debug build (CI).
    #[arg(long)]
    pub short: bool,
    /// Writes a second.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..))]
    pub write_rate: u32,
    /// The output directory: report.json, timeline.jsonl, logs/ (default .stack/chaos).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// How long each phase of the run lasts.
#[derive(Debug, Clone, Copy)]
struct Timings {
    /// Each fault stays down this long (`CHAOS_DOWN_SECS`).
    down: Duration,
    /// Load between one recovery and the next fault (`CHAOS_SETTLE_SECS`).
    settle: Duration,
    /// Load before the first fault.
    warmup: Duration,
    /// How long loadgen waits, after the load, for every acknowledged command to be decided.
    settle_timeout: Duration,
    profile: Profile,
}

impl Timings {
    /// The full run's (a release build, 15 s down, 30 s between), or `--short`'s (a debug
    /// build, 3 s down, 8 s between); the variables override down and settle.
    fn new(short: bool) -> anyhow::Result<Timings> {
        let (down, settle, warmup, settle_timeout, profile) = if short {
            (3, 8, 5, 60, Profile::Debug)
        } else {
            (15, 30, 15, 180, Profile::Release)
        };
        Ok(Timings {
            down: seconds("CHAOS_DOWN_SECS", down)?,
            settle: seconds("CHAOS_SETTLE_SECS", settle)?,
            warmup: Duration::from_secs(warmup),
            settle_timeout: Duration::from_secs(settle_timeout),
            profile,
        })
    }

    /// The settle after the projector's fault. Its partitions move to the survivor when its
    /// session times out; but tansu may leave a dead member's share assigned to nobody until a
    /// survivor's stall guard rejoins the group (README, Known limits): the session timeout,
    /// the stall timeout and a quarter of it (how often the guard looks) after the kill. The
    /// settle covers this plus loadgen's 5 s recovery tail, so that its window shows the
    /// recovery.
    fn projector_settle(&self) -> anyhow::Result<Duration> {
        let session_ms = seconds_or_ms("KAFKA_SESSION_TIMEOUT_MS", 10_000)?;
        let stall_ms = seconds_or_ms("PARTITION_STALL_TIMEOUT_MS", 3 * session_ms)?;
        let needed =
            ((session_ms + stall_ms * 5 / 4) / 1000 + 10).saturating_sub(self.down.as_secs());
        Ok(Duration::from_secs(needed).max(self.settle))
    }
}

/// The variable `name` as a whole number (of milliseconds), `default` when unset or empty.
fn seconds_or_ms(name: &str, default: u64) -> anyhow::Result<u64> {
    let value = var_or(name, &default.to_string());
    value
        .trim()
        .parse()
        .with_context(|| format!("{name} must be a whole number of milliseconds, not '{value}'"))
}

/// What the run started and must stop on every way out.
struct Parts {
    stack: Stack,
    cluster: Option<Cluster>,
    load: Option<Load>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Each writer has one operation in flight (a write and its token reads, tens of
    // milliseconds), so more writers carry a higher rate: one per 5 writes a second, at least 8.
    let writers = (args.write_rate / 5).max(8);
    let timings = Timings::new(args.short)?;
    let waits = Waits::from_env()?;
    require_nginx()?;
    require(
        "pg_isready",
        "install the PostgreSQL client (apt-get install postgresql-client)",
    )?;
    let out = prepare_out(args.out.unwrap_or_else(|| stack_dir().join("chaos")))?;
    let log_dir = out.join("logs");
    let timeline = Timeline::create(&out.join("timeline.jsonl"))?;

    let bin = build_binaries(timings.profile).await?;
    let loadgen = bin.join("loadgen");
    let help_wait = Duration::from_secs(30);
    let loadgen_text = loadgen.display().to_string();
    if !succeeds(&loadgen_text, &["chaos", "--help"], help_wait).await {
        anyhow::bail!("this loadgen has no 'chaos' subcommand");
    }
    let tansu_bin = tansu::ensure_installed(&waits).await?;

    let tmp = tempfile::Builder::new()
        .prefix("dev-chaos.")
        .tempdir()
        .context("cannot make the run's temporary directory")?;
    // postgres (and nginx's workers, as root) must reach their dirs inside it.
    open_up(tmp.path())?;
    let mut parts = Parts {
        stack: Stack::new(log_dir, waits)?,
        cluster: None,
        load: None,
    };
    let run = Run {
        write_rate: args.write_rate,
        writers,
        timings,
        out: &out,
        tmp: tmp.path(),
        bin: &bin,
        tansu_bin: &tansu_bin,
        timeline: &timeline,
    };
    let outcome = tokio::select! {
        outcome = run.inject_faults(&mut parts) => outcome,
        code = interrupted() => Ok(code),
    };
    clean_up(&mut parts).await;
    drop(tmp);
    outcome
}

/// Makes the output directory and removes what an earlier run left there; returns its
/// absolute path.
fn prepare_out(out: PathBuf) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let out = out
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", out.display()))?;
    let logs = out.join("logs");
    if logs.exists() {
        std::fs::remove_dir_all(&logs)
            .with_context(|| format!("cannot remove {}", logs.display()))?;
    }
    for stale in [
        "report.json",
        "timeline.jsonl",
        "loadgen.txt",
        "loadgen.log",
    ] {
        let path = out.join(stale);
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    Ok(out)
}

fn open_up(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot open up {}", dir.display()))
}

/// The run's settings and where its files go.
struct Run<'a> {
    write_rate: u32,
    writers: u32,
    timings: Timings,
    out: &'a Path,
    tmp: &'a Path,
    bin: &'a Path,
    tansu_bin: &'a Path,
    timeline: &'a Timeline,
}

impl Run<'_> {
    /// The run from the stack's start to loadgen's verdict; its exit code.
    async fn inject_faults(&self, parts: &mut Parts) -> anyhow::Result<ExitCode> {
        let Parts {
            stack,
            cluster,
            load,
        } = parts;
        let waits = stack.waits;
        say(format_args!(
            "Starting the run's own PostgreSQL (initdb in {})",
            self.tmp.join("postgres").display()
        ));
        let cluster =
            cluster.insert(Cluster::init(self.tmp, &stack.log_of("initdb"), waits).await?);
        cluster.start().await?;
        cluster.create_database("chaos").await?;

        let broker_port = instance_port().await?;
        say(format_args!(
            "Starting the run's own broker on 127.0.0.1:{broker_port}"
        ));
        let broker = Broker::start(
            self.tansu_bin,
            broker_port,
            &self.tmp.join("tansu"),
            &stack.log_of("tansu"),
            &waits,
        )
        .await?;
        let brokers = broker.brokers();
        stack.broker = Some(broker);

        // The command API creates the topic, the projectors apply the migrations (as in `up`).
        stack.set_env("DATABASE_URL", cluster.url_of("chaos"));
        stack.set_env("KAFKA_BROKERS", &brokers);
        stack.set_env("KAFKA_TOPIC", "chaos-events");
        stack.set_env("RUST_LOG", var_or("RUST_LOG", "info"));
        stack.set_env("LOG_FORMAT", "text");
        // Tokens signed by one command API instance are checked by the other: one key for
        // both, made for this run only.
        stack.set_env("AUTH_KEYS", format!("chaos:{}", random_hex(32)?));
        let command_addr = format!("127.0.0.1:{}", instance_port().await?);
        let query_addr = format!("127.0.0.1:{}", instance_port().await?);
        let nginx_dir = self.tmp.join("nginx");
        // Write rate limits off: the load generator's users all sign up from one address.
        let instances = Instances {
            count: 2,
            bin_dir: self.bin,
            nginx_dir: &nginx_dir,
            command_listen: &command_addr,
            query_listen: &query_addr,
            projector_addr: None,
            command_env: &[("WRITE_RATE_PER_SEC", "0")],
        };
        start_instances_behind_nginx(stack, &instances).await?;

        let timings = self.timings;
        say(format_args!(
            "Starting loadgen chaos through nginx ({} writes/s from {} writers; output: {}); \
             warming up {}s",
            self.write_rate,
            self.writers,
            self.out.join("loadgen.txt").display(),
            timings.warmup.as_secs()
        ));
        let plan = LoadPlan {
            loadgen: &self.bin.join("loadgen"),
            env: &stack.env,
            command_url: &format!("http://{command_addr}"),
            query_url: &format!("http://{query_addr}"),
            write_rate: self.write_rate,
            writers: self.writers,
            timeline: &self.timeline.path,
            out: self.out,
            settle_timeout: timings.settle_timeout,
        };
        let load = load.insert(Load::start(&plan)?);
        load.sleep_watching(timings.warmup).await?;

        let projector_settle = timings.projector_settle()?;
        let mut target = Target {
            stack,
            cluster,
            load,
            timeline: self.timeline,
        };
        for fault in Fault::ALL {
            let settle = match fault {
                Fault::Projector => projector_settle,
                _ => timings.settle,
            };
            faults::inject(fault, timings.down, settle, &mut target).await?;
        }

        let survived = survivors::all_survived(target.stack).await;
        say(format_args!(
            "Stopping the load; loadgen verifies every acknowledged write (up to {}s)",
            timings.settle_timeout.as_secs()
        ));
        let status = target.load.finish(timings.settle_timeout).await?;
        self.verdict(target.stack, target.load, status, survived)
    }

    /// Prints loadgen's table, and on a failure the logs that matter; the run's exit code.
    fn verdict(
        &self,
        stack: &Stack,
        load: &Load,
        status: ExitStatus,
        survived: bool,
    ) -> anyhow::Result<ExitCode> {
        let table = std::fs::read_to_string(&load.table)
            .with_context(|| format!("cannot read {}", load.table.display()))?;
        print!("{table}");
        let mut code = shell_code(status);
        if code != 0 {
            show_log_tail(&load.log);
            for name in ["command-api-1", "projector-1", "query-api-1", "nginx"] {
                show_log_tail(&stack.log_of(name));
            }
        }
        if !survived {
            warn("a process that was not killed did not ride out the faults (see above)");
            if code == 0 {
                code = 1;
            }
        }
        say(format_args!(
            "Report: {}; timeline: {}; logs: {}/",
            self.out.join("report.json").display(),
            self.timeline.path.display(),
            stack.log_dir.display()
        ));
        if code == 0 {
            say("chaos run passed");
        } else {
            warn(format_args!("chaos run failed (exit {code})"));
        }
        Ok(ExitCode::from(code))
    }
}

/// Stops everything the run started, whichever way it ends: the load, the services, nginx and
/// the broker, then the cluster, whose log is kept beside the others.
async fn clean_up(parts: &mut Parts) {
    if let Some(load) = parts.load.as_mut() {
        load.stop().await;
    }
    parts.stack.stop().await;
    if let Some(cluster) = &parts.cluster {
        let _ = cluster.stop().await;
        let log = cluster.log();
        if log.exists() {
            let kept = parts.stack.log_of("postgres");
            if let Err(error) = std::fs::copy(&log, &kept) {
                warn(format_args!(
                    "cannot keep the run's PostgreSQL log as {}: {error}",
                    kept.display()
                ));
            }
        }
    }
}
