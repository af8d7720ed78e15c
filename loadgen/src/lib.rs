//! The load generator: the target workload of the user-data service (100 reads per write, 1 KB
//! posts, Zipf-skewed popularity) against any deployment of it, with honest latencies.
//!
//! ```text
//! # The stack of `./dev up`: seed 1000 users and 10 000 posts, warm up 5 s, measure 60 s with
//! # 32 connections sending back to back, print a table, keep the JSON and a plot.
//! loadgen run --duration 60s --mode closed --connections 32 --json run.json --svg run.svg
//!
//! # An open loop at 2000 requests/s, latency counted from each request's intended send time;
//! # the population is seeded once and reused by later runs.
//! loadgen run --mode open --rate 2000 --population-file population.json
//!
//! # Another deployment, writes only, every write's visibility lag measured.
//! loadgen run --command-url http://10.0.0.5:8080 --query-url http://10.0.0.6:8081 \
//!     --writes-only --lag-sample 1
//!
//! # The bare-handler baseline: a fixed post from memory, and reads of it.
//! loadgen bare-server --addr 127.0.0.1:8090 &
//! loadgen run --reads-only --read-mix posts=100 --no-seed --query-url http://127.0.0.1:8090
//!
//! # The broker alone: records shaped like events appended flat out for 30 s by a plain Kafka
//! # client while another tails them, then the whole topic read back from its start.
//! loadgen broker --brokers 127.0.0.1:9092 --topic broker-ceiling --duration 30s
//!
//! # The client and checker of a fault-injection run (`./dev chaos` starts it): write and read
//! # until SIGTERM, then check that no acknowledged write was lost or applied twice, and report
//! # the failed requests per fault window of the orchestrator's timeline.
//! loadgen chaos --command-url http://127.0.0.1:8080 --query-url http://127.0.0.1:8081 \
//!     --writers 8 --write-rate 40 --timeline timeline.jsonl --out chaos.json
//! ```
//!
//! Every flag has an environment variable (`LOADGEN_*`); `loadgen run --help` lists them. The
//! exit status of `run` is 0 when the run completed, errors or not (the report shows them); of
//! `chaos`, 0 when every check passed and 1 when one failed. It is 2 when a command could not
//! run at all (for instance, seeding or sign-ups could not reach the API).
//!
//! Layout, from what `main` runs down to what everything shares:
//! - here: [`execute`] (what `main` runs) and [`run_and_report`].
//! - [`runner`]: one run: population, the open or closed loop, the lag probes, progress.
//! - [`report`]: the table and the JSON; [`plot`]: the SVG.
//! - [`workload`]: which request comes next and whether its answer is a success.
//! - [`population`]: the users and posts, seeded, reused from a file, or made up.
//! - [`recorder`]: histograms and counters per operation, per second and overall.
//! - [`chaos`]: `loadgen chaos`, the fault-injection run's load and checks.
//! - [`bare_server`]: `loadgen bare-server`.
//! - [`broker`]: `loadgen broker`, the broker's own ceiling with a plain Kafka client.
//! - [`config`]: the command line ([`Cli`], [`RunConfig`], [`ChaosConfig`],
//!   [`BareServerConfig`], [`BrokerConfig`]) and the parsers of its values.
//! - [`contract`]: what is sent and read of contract v1: the headers, the `202 Accepted` body,
//!   a post's body and the text posts are filled with.
//! - [`operation`]: the kinds of request the report counts separately.
//! - [`schedule`]: the open loop's arrival times and where latency is counted from.
//! - [`client`]: one keep-alive HTTP/1.1 connection per task (hyper, no pool).
//! - [`sampling`]: the seeded generator and the Zipf sampler.
//! - [`status_line`]: the progress line on stderr.

pub mod bare_server;
pub mod broker;
pub mod chaos;
pub mod client;
pub mod config;
pub mod contract;
pub mod operation;
pub mod plot;
pub mod population;
pub mod recorder;
pub mod report;
pub mod runner;
pub mod sampling;
pub mod schedule;
pub mod status_line;
pub mod workload;

use std::future::Future;
use std::process::ExitCode;

use anyhow::Context;

pub use bare_server::BareServer;
pub use config::{BareServerConfig, BrokerConfig, ChaosConfig, Cli, Command, Mode, RunConfig};
pub use operation::Operation;
pub use report::Report;

/// Runs a parsed command line until it is done or stopped; the exit status when it could run.
pub async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(config) => {
            run_and_report(*config, interrupted()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Chaos(config) => {
            let report = chaos::run_and_report(*config, terminated()).await?;
            Ok(ExitCode::from(report.exit_code()))
        }
        Command::BareServer(config) => {
            let server = BareServer::bind(config.addr).await?;
            eprintln!(
                "bare server on http://{}: GET /v1/posts/{{id}} answers a fixed {}-byte post",
                server.address(),
                bare_server::body_len()
            );
            server.run(interrupted()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Broker(config) => {
            broker::run_and_report(*config).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One run: prints the table on stdout and writes `--json` and `--svg` if asked. Stopping early
/// (`stop` resolving) still reports what was measured.
pub async fn run_and_report(
    config: RunConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Report> {
    let json = config.json.clone();
    let svg = config.svg.clone();
    let report = runner::run(config, stop).await?;
    print!("{}", report.table());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
        std::fs::write(&path, text)
            .with_context(|| format!("cannot write the JSON report {}", path.display()))?;
    }
    if let Some(path) = svg {
        std::fs::write(&path, plot::render(&report))
            .with_context(|| format!("cannot write the plot {}", path.display()))?;
    }
    Ok(report)
}

/// Resolves on Ctrl-C. If the handler cannot be installed, never: the run then ends by its
/// duration alone.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves on Ctrl-C or SIGTERM (how an orchestrator stops a run). A signal whose handler
/// cannot be installed is never awaited.
async fn terminated() {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupted() => {}
        () = terminate => {}
    }
}
