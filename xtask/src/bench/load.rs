//! `bench reads` and `bench writes`: the load benchmarks on a stack of their own (database
//! `bench_load`, a private broker, release binaries on free ports) and a population seeded
//! through the command API; each run of [`plan`] with a CPU snapshot before and after it and
//! the projector's metrics after it, `pgbench -S` after the read runs, each process's resident
//! memory at the end, then the [`summary`].
//!
//! Everything goes to the output directory (default `.stack/bench-<kind>`): per run its report
//! (`<run>.json`, `<run>.svg`), loadgen's table (`<run>.txt`), `<run>.cpu-before` and
//! `<run>.cpu-after`, `<run>.projector-metrics`; `population.json` and `seed.txt`;
//! `pgbench-init.txt` and `pgbench.txt`; `summary.json`.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

use super::cpu::{self, Part};
use super::plan::{self, Kind, Settings};
use super::summary;
use crate::layout::{log_dir, stack_dir};
use crate::output::{error, say};
use crate::postgres::{drop_database, ensure_postgres, recreate_database};
use crate::process::{exit_code, free_port, interrupted, require, run_bounded};
use crate::settings::{Waits, var, var_or};
use crate::stack::{Launch, Profile, Stack, build_binaries, ensure_auth_keys};
use crate::tansu::Broker;

/// The benchmark's database, recreated for every run of the benchmark.
const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/bench_load";
/// `pgbench`'s database, beside it, dropped afterwards.
const PGBENCH_URL: &str = "postgres://postgres@127.0.0.1:5432/bench_pgbench";
/// The bound of `pgbench -i` (scale 10: seconds), and what `pgbench -S` may take beyond its `-T`.
const PGBENCH_SLACK: Duration = Duration::from_secs(300);

/// The options of `bench reads` and `bench writes`.
#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Each run's measured time (loadgen's duration syntax: 30s, 2m).
    #[arg(long, default_value = "30s")]
    pub duration: String,
    /// The burst run's measured time.
    #[arg(long, default_value = "60s")]
    pub burst_duration: String,
    /// Connections of the closed-loop runs, and in-flight appends of the broker runs.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// Users of the seeded population.
    #[arg(long, default_value_t = 1000)]
    pub users: u64,
    /// Posts of the seeded population.
    #[arg(long, default_value_t = 5000)]
    pub posts: u64,
    /// The output directory (default .stack/bench-reads or .stack/bench-writes).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The target write rate, writes a second.
    #[arg(long, default_value_t = 400)]
    pub write_rate: u32,
}

/// Runs the load benchmark `kind`; Ctrl-C or SIGTERM stops what it started (130, 143).
pub async fn run(kind: Kind, args: LoadArgs) -> anyhow::Result<ExitCode> {
    require(
        "pgbench",
        "install the PostgreSQL client (apt-get install postgresql-client)",
    )?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| stack_dir().join(format!("bench-{}", kind.name())));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let out = out
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", out.display()))?;
    remove_previous_results(&out)?;

    let waits = Waits::from_env()?;
    let mut stack = Stack::new(log_dir(), waits)?;
    let outcome = tokio::select! {
        outcome = bench(kind, &args, &out, &mut stack) => outcome,
        code = interrupted() => Ok(code),
    };
    stack.stop().await;
    outcome
}

/// Removes what an earlier run left in `out` (reports, plots, tables, snapshots, metrics), so
/// that the summary never reads a stale file.
fn remove_previous_results(out: &Path) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(out).with_context(|| format!("cannot list {}", out.display()))?;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = [".json", ".svg", ".txt"]
            .iter()
            .any(|end| name.ends_with(end))
            || name.contains(".cpu-")
            || name.ends_with("-metrics");
        if stale && entry.path().is_file() {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

async fn bench(
    kind: Kind,
    args: &LoadArgs,
    out: &Path,
    stack: &mut Stack,
) -> anyhow::Result<ExitCode> {
    say("Checking PostgreSQL");
    ensure_postgres(DATABASE_URL, &stack.waits).await?;
    recreate_database(DATABASE_URL).await?;
    let bin = build_binaries(Profile::Release).await?;

    let broker = Broker::start_private("the benchmark's broker", &stack.waits).await?;
    let brokers = broker.brokers();
    stack.broker = Some(broker);
    let auth_keys = ensure_auth_keys()?;
    stack.set_env("DATABASE_URL", DATABASE_URL);
    stack.set_env("KAFKA_BROKERS", &brokers);
    stack.set_env("KAFKA_TOPIC", "bench-load");
    stack.set_env("RUST_LOG", var_or("RUST_LOG", "warn"));
    stack.set_env("LOG_FORMAT", "text");
    stack.set_env("AUTH_KEYS", auth_keys);

    let addr = || format!("127.0.0.1:{}", free_port());
    let (command_addr, projector_addr) = (addr(), addr());
    let (cached_addr, uncached_addr, bare_addr) = (addr(), addr(), addr());
    // Write rate limits off: the seeding signs up every user from this one address, and
    // loadgen's Zipf-hot users write tens a second, so the defaults would measure 429s, not
    // the system.
    let service =
        |program: &str, addr: &str, env: &[(&str, &str)]| Launch::service(&bin, program, addr, env);
    stack
        .start_service(
            "command-api",
            service(
                "command-api",
                &command_addr,
                &[
                    ("COMMAND_API_ADDR", &command_addr),
                    ("WRITE_RATE_PER_SEC", "0"),
                ],
            ),
        )
        .await?;
    stack
        .start_service(
            "projector",
            service(
                "projector",
                &projector_addr,
                &[("PROJECTOR_ADDR", &projector_addr)],
            ),
        )
        .await?;
    stack
        .start_service(
            "query-api",
            service(
                "query-api",
                &cached_addr,
                &[("QUERY_API_ADDR", &cached_addr)],
            ),
        )
        .await?;
    if kind == Kind::Reads {
        stack
            .start_service(
                "query-api-uncached",
                service(
                    "query-api",
                    &uncached_addr,
                    &[("QUERY_API_ADDR", &uncached_addr), ("CACHE_ENTRIES", "0")],
                ),
            )
            .await?;
        let bare = Launch {
            addr: bare_addr.clone(),
            ready_path: "healthz".to_owned(),
            program: bin.join("loadgen"),
            args: vec!["bare-server".into(), "--addr".into(), bare_addr.clone()],
            env: Vec::new(),
        };
        stack.start_service("bare-server", bare).await?;
    }

    let loadgen = bin.join("loadgen");
    let population = out.join("population.json");
    let command_url = format!("http://{command_addr}");
    let cached_url = format!("http://{cached_addr}");
    say(format_args!(
        "Seeding {} users and {} posts through the command API",
        args.users, args.posts
    ));
    let seed = [
        "run",
        "--command-url",
        &command_url,
        "--query-url",
        &cached_url,
        "--users",
        &args.users.to_string(),
        "--posts",
        &args.posts.to_string(),
        "--population-file",
        &population.display().to_string(),
        "--reads-only",
        "--warmup",
        "0s",
        "--duration",
        "1s",
    ]
    .map(str::to_owned);
    let seeded = loadgen_to_file(stack, &loadgen, &seed, &out.join("seed.txt")).await?;
    if !seeded.success() {
        error(format_args!(
            "seeding the population failed (see {})",
            out.join("seed.txt").display()
        ));
        return Ok(exit_code(seeded));
    }

    let settings = Settings {
        brokers: &brokers,
        cached_url: &cached_url,
        uncached_url: &format!("http://{uncached_addr}"),
        bare_url: &format!("http://{bare_addr}"),
        population: &population,
        out,
        duration: &args.duration,
        burst_duration: &args.burst_duration,
        connections: args.connections,
        write_rate: args.write_rate,
    };
    for &run in kind.runs() {
        let (subcommand, run_args) = plan::loadgen_args(run, &settings);
        say(format_args!(
            "Run {run}: loadgen {subcommand} {}",
            run_args.join(" ")
        ));
        let mut all = vec![subcommand.to_owned()];
        if subcommand == "run" {
            all.extend(plan::run_reports(run, &command_url, out));
        }
        all.extend(run_args);
        let table = out.join(format!("{run}.txt"));
        snapshot(stack, &out.join(format!("{run}.cpu-before")))?;
        let status = loadgen_to_file(stack, &loadgen, &all, &table).await?;
        if !status.success() {
            bail!("loadgen failed in run {run} (see {})", table.display());
        }
        snapshot(stack, &out.join(format!("{run}.cpu-after")))?;
        let text = std::fs::read_to_string(&table).unwrap_or_default();
        if subcommand == "broker" {
            eprint!("{text}");
            continue;
        }
        // The projector's batches, for the share of the visibility lag they take.
        let metrics = projector_metrics(&projector_addr).await;
        let metrics_file = out.join(format!("{run}.projector-metrics"));
        std::fs::write(&metrics_file, metrics)
            .with_context(|| format!("cannot write {}", metrics_file.display()))?;
        eprint!("{}", last_lines(&text, 12));
    }

    if kind == Kind::Reads {
        pgbench(&args.duration, out).await?;
    }

    let rss = resident_memory(stack);
    summary::summarize(out, &rss, kind.runs())?;
    Ok(ExitCode::SUCCESS)
}

/// Runs loadgen with `args`, its table (stdout) into `table`, with the stack's environment; its
/// own bounds (`--duration`, `--warmup`, its timeouts) end it.
async fn loadgen_to_file(
    stack: &Stack,
    loadgen: &Path,
    args: &[String],
    table: &Path,
) -> anyhow::Result<std::process::ExitStatus> {
    let file = std::fs::File::create(table)
        .with_context(|| format!("cannot create {}", table.display()))?;
    Command::new(loadgen)
        .args(args)
        .envs(&stack.env)
        .stdin(Stdio::null())
        .stdout(file)
        .kill_on_drop(true)
        .status()
        .await
        .with_context(|| format!("cannot run {}", loadgen.display()))
}

/// Writes a CPU snapshot of the stack's processes and broker into `file`.
fn snapshot(stack: &Stack, file: &Path) -> anyhow::Result<()> {
    let parts: Vec<Part<'_>> = stack
        .processes
        .iter()
        .map(|started| Part {
            name: &started.name,
            pid: started.pid(),
        })
        .collect();
    cpu::write_snapshot(file, &parts, stack.broker.as_ref().and_then(Broker::pid))
}

/// The projector's `/metrics`, or nothing when it does not answer (the summary then leaves the
/// batches of that run out).
async fn projector_metrics(addr: &str) -> String {
    let fetched = async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    };
    fetched.await.unwrap_or_default()
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut tail = lines[lines.len().saturating_sub(n)..].join("\n");
    if !tail.is_empty() {
        tail.push('\n');
    }
    tail
}

/// `pgbench -S` on a scale-10 database of its own beside the benchmark's, with as many clients
/// as the query API has pool connections (DB_POOL_SIZE, default 16), for the runs' duration.
async fn pgbench(duration: &str, out: &Path) -> anyhow::Result<()> {
    let pool_size = var("DB_POOL_SIZE").unwrap_or_else(|| "16".to_owned());
    let seconds = whole_seconds(duration)?;
    say(format_args!(
        "pgbench -S: {pool_size} clients for {seconds}s on database bench_pgbench (scale 10)"
    ));
    recreate_database(PGBENCH_URL).await?;
    let init = out.join("pgbench-init.txt");
    let mut command = pgbench_command(&init, &["-i", "-q", "-s", "10", PGBENCH_URL])?;
    if !run_bounded(&mut command, PGBENCH_SLACK, "pgbench -i")
        .await?
        .success()
    {
        bail!("pgbench -i failed (see {})", init.display());
    }
    let output = out.join("pgbench.txt");
    let seconds_text = seconds.to_string();
    let mut command = pgbench_command(
        &output,
        &[
            "-S",
            "-M",
            "prepared",
            "-n",
            "-c",
            &pool_size,
            "-j",
            "2",
            "-T",
            &seconds_text,
            PGBENCH_URL,
        ],
    )?;
    let within = Duration::from_secs(seconds) + PGBENCH_SLACK;
    if !run_bounded(&mut command, within, "pgbench -S")
        .await?
        .success()
    {
        bail!("pgbench failed (see {})", output.display());
    }
    let _ = drop_database(PGBENCH_URL, "bench_pgbench").await;
    Ok(())
}

/// `pgbench args…` with its output and errors into `file`.
fn pgbench_command(file: &Path, args: &[&str]) -> anyhow::Result<Command> {
    let output =
        std::fs::File::create(file).with_context(|| format!("cannot create {}", file.display()))?;
    let mut command = Command::new("pgbench");
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(
            output
                .try_clone()
                .with_context(|| file.display().to_string())?,
        )
        .stderr(output);
    Ok(command)
}

/// A run's duration (`30s`, `500ms`, `2m`, or plain seconds) in whole seconds, at least 1.
fn whole_seconds(duration: &str) -> anyhow::Result<u64> {
    let digits = duration.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = duration.split_at(digits);
    let n: u64 = number
        .parse()
        .with_context(|| format!("--duration {duration}: pgbench needs N, Nms, Ns or Nm"))?;
    let seconds = match unit {
        "ms" => n / 1000,
        "" | "s" => n,
        "m" => n * 60,
        _ => bail!("--duration {duration}: pgbench needs N, Nms, Ns or Nm"),
    };
    Ok(seconds.max(1))
}

/// Each started process's resident memory in KiB (`VmRSS`), the broker's last as `tansu`;
/// empty for a process that is gone.
fn resident_memory(stack: &Stack) -> Vec<(String, String)> {
    let mut rss: Vec<(String, String)> = stack
        .processes
        .iter()
        .map(|started| (started.name.clone(), vm_rss_kib(started.pid())))
        .collect();
    if let Some(broker) = &stack.broker {
        rss.push(("tansu".to_owned(), vm_rss_kib(broker.pid())));
    }
    rss
}

fn vm_rss_kib(pid: Option<u32>) -> String {
    let Some(pid) = pid else {
        return String::new();
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix("VmRSS:")?;
                Some(value.trim().trim_end_matches("kB").trim().to_owned())
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_become_whole_seconds_for_pgbench() {
        assert_eq!(whole_seconds("30s").ok(), Some(30));
        assert_eq!(whole_seconds("2m").ok(), Some(120));
        assert_eq!(whole_seconds("500ms").ok(), Some(1));
        assert_eq!(whole_seconds("7").ok(), Some(7));
        assert!(whole_seconds("1h").is_err());
    }

    #[test]
    fn keeps_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(last_lines("", 2), "");
    }
}
