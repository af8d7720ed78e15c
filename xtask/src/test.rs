//! `cargo xtask test [ARGS…]`: the workspace's tests against the machine's PostgreSQL (a database
//! per test, named with this run's prefix and dropped at its end) and a broker of the tests' own
//! (so that they neither see nor disturb a running `up`). cargo-nextest when it is installed, else
//! `cargo test`; `--workspace` unless the arguments choose packages; the arguments go to the
//! runner. Exits with the runner's exit code.

use std::process::{ExitCode, Stdio};

use tokio::process::Command;

use crate::layout::repo_root;
use crate::output::{say, show_log_tail};
use crate::postgres::{drop_databases_starting_with, ensure_postgres, newest_server_bin_dir};
use crate::process::{exit_code, interrupted, run_foreground, succeeds};
use crate::settings::{Waits, var, var_or};
use crate::tansu::{Broker, bin as tansu_bin};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Arguments for the test runner, such as `-p query-api` or a test's name.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub runner_args: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let database_url = var_or(
        "TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    // Every database the tests create starts with this, so that the run drops exactly its own.
    let prefix = format!("test_r{}_", std::process::id());
    let waits = Waits::from_env()?;
    say("Checking PostgreSQL");
    ensure_postgres(&database_url, &waits).await?;
    let pg_bin_dir = match var("PG_BIN_DIR") {
        Some(dir) => dir,
        None => newest_server_bin_dir()
            .map_err(|error| error.context("needed for the tests' own clusters"))?
            .display()
            .to_string(),
    };

    // A broker of the tests' own, so that tests neither see nor disturb a running `up`.
    let broker = tokio::select! {
        broker = Broker::start_private("the tests' broker", &waits) => broker,
        code = interrupted() => return Ok(code),
    };
    let mut broker = broker?;
    let outcome = test(&args, &database_url, &prefix, &pg_bin_dir, &broker).await;
    // The databases of this run; a failed test's database is kept until here, for a look while
    // the run still goes.
    drop_databases_starting_with(&database_url, &prefix).await;
    broker.stop().await;
    outcome
}

/// Runs the test runner against `broker`; its exit code, or a signal's (the runner is given
/// the signal's grace period to stop).
async fn test(
    args: &Args,
    database_url: &str,
    prefix: &str,
    pg_bin_dir: &str,
    broker: &Broker,
) -> anyhow::Result<ExitCode> {
    let brokers = broker.brokers();
    let tansu = tansu_bin();

    let probe = succeeds("cargo", &["nextest", "--version"], NEXTEST_PROBE).await;
    let mut runner: Vec<&str> = if probe {
        vec!["nextest", "run"]
    } else {
        vec!["test"]
    };
    if !selects_packages(&args.runner_args) {
        runner.push("--workspace");
    }
    runner.push("--no-fail-fast");
    runner.extend(args.runner_args.iter().map(String::as_str));
    say(format_args!("Running cargo {}", runner.join(" ")));
    say(format_args!(
        "  KAFKA_BROKERS={brokers} TANSU_BIN={}",
        tansu.display()
    ));
    say(format_args!(
        "  TEST_DATABASE_URL={database_url} PG_BIN_DIR={pg_bin_dir}"
    ));
    let mut command = Command::new("cargo");
    command
        .current_dir(repo_root())
        .args(&runner)
        .env("TEST_DATABASE_URL", database_url)
        .env("TEST_DATABASE_PREFIX", prefix)
        .env("PG_BIN_DIR", pg_bin_dir)
        .env("KAFKA_BROKERS", &brokers)
        .env("TANSU_BIN", &tansu)
        .env("TANSU_DB", broker.storage())
        .stdin(Stdio::null());
    let status = match run_foreground(&mut command, "the test runner").await? {
        Ok(status) => status,
        Err(code) => return Ok(code),
    };
    if !status.success() {
        let code = status
            .code()
            .map_or_else(|| format!("{status}"), |code| code.to_string());
        say(format_args!(
            "tests failed (exit {code}); the broker's log is {} (removed on exit):",
            broker.log.display()
        ));
        show_log_tail(&broker.log);
    }
    Ok(exit_code(status))
}

/// How long `cargo nextest --version` may take to say whether nextest is installed.
const NEXTEST_PROBE: std::time::Duration = std::time::Duration::from_secs(60);

/// True when the arguments already choose packages, so that `--workspace` is not added.
fn selects_packages(args: &[String]) -> bool {
    for arg in args {
        match arg.as_str() {
            "--" => return false,
            "--package" => return true,
            arg if arg.starts_with("-p") || arg.starts_with("--package=") => return true,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::selects_packages;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn packages_are_chosen_by_p_or_package_before_a_double_dash() {
        assert!(selects_packages(&words("-p query-api")));
        assert!(selects_packages(&words("-pevents")));
        assert!(selects_packages(&words("--package=events")));
        assert!(selects_packages(&words("crashes --package projector")));
        assert!(!selects_packages(&words("crashes")));
        assert!(!selects_packages(&words("-- -p")));
    }
}
