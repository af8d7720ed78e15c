//! `cargo xtask bench`: the benchmarks of BENCHMARKS.md. `bench rebuild` runs the projector's
//! rebuild benchmark ([`rebuild`]); `bench reads` and `bench writes` run the load benchmarks on a
//! stack of their own ([`load`]: the stack and the runs, [`plan`]: each run's loadgen
//! arguments, [`cpu`]: the CPU snapshots around each run, [`summary`]: the table, the ratios and
//! `summary.json`).
//!
//! Layout, bottom to top: [`plan`], [`cpu`] and [`summary`] import nothing of the others;
//! [`load`] uses all three; [`rebuild`] stands alone.

mod cpu;
mod load;
mod plan;
mod rebuild;
mod summary;

use std::process::ExitCode;

/// `bench rebuild [ARGS…]` or `bench reads|writes [OPTIONS]`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub benchmark: Benchmark,
}

#[derive(clap::Subcommand, Debug)]
pub enum Benchmark {
    /// The rebuild benchmark: a log of N events (in memory, or with --source broker on a broker
    /// of its own), times `projector rebuild` and a plain COPY of its rows. The arguments
    /// (--events N, --json FILE, --source memory|broker) go to the benchmark.
    Rebuild {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Cached reads, a bare handler, cache-miss reads and `pgbench -S`, with their ratios.
    Reads(load::LoadArgs),
    /// The broker's own ceiling, writes flat out, the visibility lag at the write rate, a burst.
    Writes(load::LoadArgs),
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.benchmark {
        Benchmark::Rebuild { args } => rebuild::run(&args).await,
        Benchmark::Reads(args) => load::run(plan::Kind::Reads, args).await,
        Benchmark::Writes(args) => load::run(plan::Kind::Writes, args).await,
    }
}
