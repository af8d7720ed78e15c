//! The developer tasks behind `./dev` (`cargo xtask <task>`): run the stack, test, check, fuzz,
//! benchmark and fault-inject it, each with bounded waits and failures that say what to look at.
//! `./dev` is a shim that runs this binary, so the README's commands are these.
//!
//! Layout, bottom to top (a module imports only from the rows below it):
//! - [`layout`] (where the repo and `.stack` are), [`output`] (the `==>` lines, log tails),
//!   [`settings`] (the bounds read from the environment);
//! - [`process`]: ports, bounded commands, stopping a child, signals;
//! - [`postgres`] (the shared server, databases), [`tansu`] (the broker: install, start);
//! - [`stack`]: the processes a task starts (services, the broker), their launches, builds;
//! - [`nginx`]: several instances of each service behind a load balancer;
//! - one module per task: [`up`], [`test`], [`check`], [`broker`], [`walkthrough`], [`fuzz`],
//!   [`bench`], [`chaos`], [`tools`], [`help`].

mod bench;
mod broker;
mod chaos;
mod check;
mod fuzz;
mod help;
mod layout;
mod nginx;
mod output;
mod postgres;
mod process;
mod settings;
mod stack;
mod tansu;
mod test;
mod tools;
mod up;
mod walkthrough;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `./dev` is the name the README uses; the usage text is [`help::USAGE`].
#[derive(Parser, Debug)]
#[command(
    name = "./dev",
    bin_name = "./dev",
    disable_help_subcommand = true,
    override_usage = "./dev <command> [args]  (./dev help lists them)"
)]
struct Cli {
    #[command(subcommand)]
    task: Option<Task>,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Run the whole stack locally.
    Up(up::Args),
    /// The workspace's tests against real PostgreSQL and a broker of their own; the arguments go
    /// to the test runner.
    Test(test::Args),
    /// Formatting, clippy, compose files, dependencies, shell scripts.
    Check,
    /// A broker on 127.0.0.1:9092 in the foreground.
    Broker,
    /// Walk through the API against a running `up`.
    Walkthrough,
    /// The benchmarks (BENCHMARKS.md).
    Bench(bench::Args),
    /// The fault-injection run (docs/fault-injection.md).
    Chaos(chaos::Args),
    /// Fuzz both APIs with schemathesis.
    Fuzz(fuzz::Args),
    /// Install the pinned cargo-deny.
    Tools,
    /// The commands, their options and the environment.
    Help,
}

fn main() -> ExitCode {
    // `./dev`, `./dev help`, `-h` and `--help` print the usage text rather than clap's summary.
    let first = std::env::args_os().nth(1);
    if matches!(
        first.as_ref().and_then(|arg| arg.to_str()),
        None | Some("-h" | "--help")
    ) {
        print!("{}", help::USAGE);
        return ExitCode::SUCCESS;
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // As `./dev` did: a usage error exits 1, like any other failure.
            return if error.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let task = cli.task.unwrap_or(Task::Help);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            output::error(format_args!("cannot start the async runtime: {error}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(task)) {
        Ok(code) => code,
        Err(error) => {
            output::error(format_args!("{error:#}"));
            ExitCode::FAILURE
        }
    }
}

async fn run(task: Task) -> anyhow::Result<ExitCode> {
    match task {
        Task::Up(args) => up::run(args).await,
        Task::Test(args) => test::run(args).await,
        Task::Check => check::run().await,
        Task::Broker => broker::run().await,
        Task::Walkthrough => walkthrough::run().await,
        Task::Bench(args) => bench::run(args).await,
        Task::Chaos(args) => chaos::run(args).await,
        Task::Fuzz(args) => fuzz::run(args).await,
        Task::Tools => tools::run().await,
        Task::Help => {
            print!("{}", help::USAGE);
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use clap::error::ErrorKind;

    use super::Cli;

    /// `--help` after a task prints its help and runs nothing, also where the task passes its
    /// other arguments on (`test`, `bench rebuild`).
    #[test]
    fn help_after_a_task_is_help() {
        for line in [
            "./dev up --help",
            "./dev test --help",
            "./dev bench rebuild --help",
            "./dev chaos --help",
            "./dev fuzz --help",
        ] {
            let parsed = Cli::try_parse_from(line.split(' '));
            assert!(
                matches!(&parsed, Err(error) if error.kind() == ErrorKind::DisplayHelp),
                "{line}: {parsed:?}"
            );
        }
    }

    #[test]
    fn arguments_after_test_go_to_the_runner() {
        let parsed = Cli::try_parse_from(["./dev", "test", "-p", "events", "--", "--nocapture"]);
        let Ok(Cli {
            task: Some(super::Task::Test(args)),
        }) = parsed
        else {
            panic!("{parsed:?}");
        };
        assert_eq!(args.runner_args, ["-p", "events", "--", "--nocapture"]);
    }
}
