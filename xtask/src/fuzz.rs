//! `cargo xtask fuzz [--max-examples N] [--seed N]`: both APIs fuzzed from their
//! `/openapi.json` by schemathesis (an external tool, installed pinned into a virtualenv of its
//! own; its hooks are `fuzz/hooks.py`) on a stack of their own: a debug build, a private broker,
//! database `fuzz`, write rate limits off. Fails on any 5xx, any answer that does not match the
//! document, an invalid input that is not refused with a 4xx, or an error in the services' logs.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::layout::{absolute, log_dir, repo_root, shown, stack_dir, tool_cache};
use crate::output::{say, warn};
use crate::postgres::{ensure_postgres, recreate_database};
use crate::process::{free_port, interrupted, require, run_bounded};
use crate::settings::{Waits, seconds, var_or};
use crate::stack::{Launch, Profile, Stack, build_binaries};
use crate::tansu::Broker;

/// The schemathesis release the hooks are written for.
const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// How long `pip install` of schemathesis may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);

/// The database the fuzzed stack runs on.
const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/fuzz";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Examples per operation and phase (200: about 3 minutes on 2 cores).
    #[arg(long, default_value_t = 200)]
    pub max_examples: u64,
    /// The seed of a run to repeat (a failed run prints its seed).
    #[arg(long)]
    pub seed: Option<u64>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let waits = Waits::from_env()?;
    let mut stack = Stack::new(log_dir(), waits)?;
    let outcome = tokio::select! {
        outcome = fuzz(&mut stack, &args) => outcome,
        code = interrupted() => Ok(code),
    };
    Ok(stack.close(outcome).await)
}

async fn fuzz(stack: &mut Stack, args: &Args) -> anyhow::Result<ExitCode> {
    let mut schemathesis_args = Vec::new();
    if let Some(seed) = args.seed {
        schemathesis_args.extend(["--seed".to_owned(), seed.to_string()]);
    }
    schemathesis_args.extend(["--max-examples".to_owned(), args.max_examples.to_string()]);
    let out = stack_dir().join("fuzz");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("cannot empty {}", out.display()))?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;

    // A database and a broker of its own, so that a running `up` is left alone.
    say("Checking PostgreSQL");
    ensure_postgres(DATABASE_URL, &stack.waits).await?;
    recreate_database(DATABASE_URL).await?;
    let schemathesis = ensure_schemathesis().await?;
    // Debug: CI has just built them for `test`; the fuzzer checks behaviour, not speed.
    let bin_dir = build_binaries(Profile::Debug).await?;

    let broker = Broker::start_private("the fuzzer's broker", &stack.waits).await?;
    stack.set_env("KAFKA_BROKERS", broker.brokers());
    stack.broker = Some(broker);
    stack.set_env("DATABASE_URL", DATABASE_URL);
    stack.set_env("KAFKA_TOPIC", "fuzz");
    stack.set_env("RUST_LOG", var_or("RUST_LOG", "warn"));
    stack.set_env("LOG_FORMAT", "text");
    let command_addr = format!("127.0.0.1:{}", free_port());
    let projector_addr = format!("127.0.0.1:{}", free_port());
    let query_addr = format!("127.0.0.1:{}", free_port());
    // Write rate limits off: the fuzzer writes hundreds of times a second as one user from one IP.
    let services = [
        (
            "fuzz-command-api",
            Launch::service(
                &bin_dir,
                "command-api",
                &command_addr,
                &[
                    ("COMMAND_API_ADDR", &command_addr),
                    ("WRITE_RATE_PER_SEC", "0"),
                ],
            ),
        ),
        (
            "fuzz-projector",
            Launch::service(
                &bin_dir,
                "projector",
                &projector_addr,
                &[("PROJECTOR_ADDR", &projector_addr)],
            ),
        ),
        (
            "fuzz-query-api",
            Launch::service(
                &bin_dir,
                "query-api",
                &query_addr,
                &[("QUERY_API_ADDR", &query_addr)],
            ),
        ),
    ];
    for (name, launch) in services {
        stack.start_service(name, launch).await?;
    }

    let fuzzed = Fuzzed {
        schemathesis: &schemathesis,
        out: &out,
        command_url: format!("http://{command_addr}"),
        query_url: format!("http://{query_addr}"),
        args: &schemathesis_args,
        timeout: seconds("FUZZ_API_TIMEOUT_SECS", 900)?,
    };
    let mut passed = fuzzed.api("command API", &command_addr).await;
    passed &= fuzzed.api("query API", &query_addr).await;

    // A bug that the answers hide (the problem+json of a 500 says nothing) is in the logs.
    for name in ["fuzz-command-api", "fuzz-projector", "fuzz-query-api"] {
        let log = std::fs::read_to_string(stack.log_of(name)).unwrap_or_default();
        let errors: Vec<&str> = log
            .lines()
            .filter(|line| line.contains(" ERROR "))
            .collect();
        if !errors.is_empty() {
            say(format_args!("{name} logged {} errors:", errors.len()));
            for line in errors.iter().take(20) {
                eprintln!("{line}");
            }
            passed = false;
        }
    }
    if passed {
        say("fuzz passed: no 5xx, every answer as documented, every invalid input refused");
        Ok(ExitCode::SUCCESS)
    } else {
        say(format_args!(
            "fuzz FAILED (JUnit reports in {}, service logs in {}/fuzz-*.log)",
            shown(&out),
            shown(&stack.log_dir)
        ));
        Ok(ExitCode::FAILURE)
    }
}

/// One run of schemathesis against each API of the fuzzed stack.
struct Fuzzed<'a> {
    schemathesis: &'a Path,
    /// Where it runs (and keeps its cache) and writes its JUnit reports.
    out: &'a Path,
    command_url: String,
    query_url: String,
    /// `--seed N` and `--max-examples N`.
    args: &'a [String],
    /// `FUZZ_API_TIMEOUT_SECS` (900): the bound of one API's run.
    timeout: Duration,
}

impl Fuzzed<'_> {
    /// Fuzzes the API `name` on `addr`; true when schemathesis found nothing.
    async fn api(&self, name: &str, addr: &str) -> bool {
        say(format_args!(
            "Fuzzing the {name} from http://{addr}/openapi.json"
        ));
        let report = self
            .out
            .join(format!("{}.junit.xml", name.replace(' ', "-")));
        // Every check, and the phases that apply: coverage (boundary values and every kind of
        // invalid input for each parameter) and fuzzing (random valid and invalid requests);
        // examples and stateful skip themselves (the documents have no examples and no links).
        // --suppress-health-check=too_slow: on 2 cores the services and the generator share the
        // CPU, and the health check would abort the run for the generator's own slowness.
        let mut command = Command::new(self.schemathesis);
        command
            .current_dir(self.out)
            .env("SCHEMATHESIS_HOOKS", "hooks")
            .env("PYTHONPATH", repo_root().join("fuzz"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("FUZZ_COMMAND_URL", &self.command_url)
            .env("FUZZ_QUERY_URL", &self.query_url)
            .arg("run")
            .arg(format!("http://{addr}/openapi.json"))
            .args(["--checks", "all", "--suppress-health-check", "too_slow"])
            .args([
                "--request-timeout",
                "30",
                "--report",
                "junit",
                "--report-junit-path",
            ])
            .arg(&report)
            .arg("--no-color")
            .args(self.args)
            .stdin(Stdio::null());
        match run_bounded(&mut command, self.timeout, "schemathesis").await {
            Ok(status) => status.success(),
            Err(error) => {
                warn(format_args!("{error:#}"));
                false
            }
        }
    }
}

/// Installs schemathesis (pinned) from PyPI into a virtualenv of its own, once (the marker is
/// written last, so that an interrupted install is not taken for a done one); returns its
/// program.
async fn ensure_schemathesis() -> anyhow::Result<PathBuf> {
    let venv = match std::env::var_os("SCHEMATHESIS_VENV").filter(|dir| !dir.is_empty()) {
        Some(dir) => absolute(Path::new(&dir)),
        None => tool_cache().join(format!("schemathesis-{SCHEMATHESIS_VERSION}")),
    };
    let program = venv.join("bin/schemathesis");
    let marker = venv.join(".installed");
    if marker.exists() {
        return Ok(program);
    }
    require("python3", "it is needed to install schemathesis")?;
    say(format_args!(
        "Installing schemathesis {SCHEMATHESIS_VERSION} into {} (once)",
        venv.display()
    ));
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("cannot remove the unfinished {}", venv.display()))?;
    }
    let mut make = Command::new("python3");
    make.args(["-m", "venv"]).arg(&venv).stdin(Stdio::null());
    if !run_bounded(&mut make, INSTALL_TIMEOUT, "python3 -m venv")
        .await?
        .success()
    {
        bail!("cannot make a virtualenv (apt-get install python3-venv)");
    }
    let mut install = Command::new(venv.join("bin/pip"));
    install
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("schemathesis=={SCHEMATHESIS_VERSION}"))
        .stdin(Stdio::null());
    let installed = run_bounded(&mut install, INSTALL_TIMEOUT, "pip install schemathesis").await;
    if !matches!(installed, Ok(status) if status.success()) {
        let _ = std::fs::remove_dir_all(&venv);
        bail!("installing schemathesis failed");
    }
    std::fs::write(&marker, "").with_context(|| format!("cannot write {}", marker.display()))?;
    Ok(program)
}
