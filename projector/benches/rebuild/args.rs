//! The benchmark's command line: how many events, where the rebuild reads them from, and where
//! the benchmark's database and topic go.

use std::path::PathBuf;

use clap::Parser;
use serde::Serialize;

/// Times a rebuild of N events against a plain `COPY` of the same rows.
#[derive(Debug, Parser)]
pub struct Args {
    /// Events in the log.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,

    /// Where the rebuild reads the log from.
    #[arg(long, value_enum, default_value_t = Source::Memory)]
    pub source: Source,

    /// Partitions of the benchmark's topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,

    /// Events per rebuild transaction (`projector rebuild --batch-size`).
    #[arg(long, default_value_t = 5000)]
    pub batch_size: u32,

    /// Seed of the event generator: the same seed gives the same log.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// Any database of the PostgreSQL server; the benchmark creates its own beside it.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,

    /// Keep the benchmark's database (and topic) afterwards, for inspection.
    #[arg(long)]
    pub keep: bool,

    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// `cargo bench` passes this to every bench target.
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// Where the rebuild reads the log from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The records in memory: the projection's speed, apart from the broker's.
    Memory,
    /// A topic on the broker at KAFKA_BROKERS: end to end.
    Broker,
}
