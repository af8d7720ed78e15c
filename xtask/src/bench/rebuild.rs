//! `bench rebuild`: the projector's rebuild benchmark (`projector/benches/rebuild/`) against the
//! machine's PostgreSQL (it creates a database of its own beside `DATABASE_URL`) and a broker of
//! its own, since the benchmark's topic is large and a running `up` is left alone.

use std::process::{ExitCode, Stdio};

use tokio::process::Command;

use crate::layout::repo_root;
use crate::output::say;
use crate::postgres::ensure_postgres;
use crate::process::{exit_code, interrupted, run_foreground};
use crate::settings::{Waits, var_or};
use crate::tansu::Broker;

/// Runs `cargo bench -p projector --bench rebuild -- <args>`; its exit status is the task's.
pub async fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let waits = Waits::from_env()?;
    let database_url = var_or(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    say("Checking PostgreSQL");
    ensure_postgres(&database_url, &waits).await?;
    let mut broker = tokio::select! {
        broker = Broker::start_private("the benchmark's broker", &waits) => broker?,
        code = interrupted() => return Ok(code),
    };
    say(format_args!(
        "Running cargo bench -p projector --bench rebuild -- {}",
        args.join(" ")
    ));
    let mut cargo = Command::new("cargo");
    cargo
        .current_dir(repo_root())
        .args(["bench", "-p", "projector", "--bench", "rebuild", "--"])
        .args(args)
        .env("DATABASE_URL", &database_url)
        .env("KAFKA_BROKERS", broker.brokers())
        .stdin(Stdio::null());
    // A Ctrl-C meanwhile stops the benchmark (which drops its database) before the broker.
    let outcome = run_foreground(&mut cargo, "cargo bench").await;
    broker.stop().await;
    Ok(match outcome? {
        Ok(status) => exit_code(status),
        Err(signal_code) => signal_code,
    })
}
