//! The projector's configuration, from flags or the environment.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
pub use service_kit::telemetry::LogFormat;

/// Decides the events of the log in order and materializes them into PostgreSQL.
///
/// Without a subcommand it runs the projector; `projector verify` checks the read model instead,
/// `projector rebuild` projects the log again into a new read-model generation, and `projector
/// switch` makes the services use a rebuilt one.
#[derive(Debug, Clone, Parser)]
#[command(name = "projector", version)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "PROJECTOR_ADDR", default_value = "127.0.0.1:8082")]
    pub addr: SocketAddr,

    /// Kafka bootstrap servers, comma-separated.
    #[arg(
        long,
        global = true,
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_brokers: String,

    /// The event topic.
    #[arg(
        long,
        global = true,
        env = "KAFKA_TOPIC",
        default_value = "user-data-events"
    )]
    pub kafka_topic: String,

    /// The consumer group shared by all projector instances.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "projector", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub kafka_group_id: String,

    /// How long the group waits for a silent instance before giving its partitions to others.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=3_600_000))]
    pub kafka_session_timeout_ms: u32,

    /// How long a partition this instance does not own may sit behind its log without moving
    /// before the instance takes it for orphaned (a coordinator that lost an assignment) and
    /// rejoins the group so that it is assigned again. Default: 3 × the session timeout.
    #[arg(long, env = "PARTITION_STALL_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub partition_stall_timeout_ms: Option<u64>,

    /// Longest a fetch waits at the broker for new records (librdkafka `fetch.wait.max.ms`).
    /// Kafka answers as soon as records arrive; tansu holds every fetch for the whole wait, which
    /// adds about 1.5 times it to every write's visibility lag, and serves an idle projector a
    /// pass over its partitions that often.
    #[arg(long, env = "KAFKA_FETCH_WAIT_MS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub kafka_fetch_wait_ms: u32,

    /// PostgreSQL holding the read models.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/userdata"
    )]
    pub database_url: String,

    /// Most events decided in one transaction.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,

    /// Connections to PostgreSQL.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub db_pool_size: u32,

    /// This instance's name in the group and in projector_offsets.owner (default: host-pid).
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Log format: text or json.
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// What to do instead of running the projector.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Checks that the live read model is exactly what the log says: exit 0 identical, 1 rows
    /// differ, 2 could not verify.
    ///
    /// Projects the whole log again into a scratch schema of the same database and compares it,
    /// table by table, with the live read model at the same offsets; then drops the scratch
    /// schema. Holds the live projector's commits only for the last, short catch-up. Prints the
    /// report on stdout (logs go to stderr). Exit status: 0 when identical, 1 when rows differ
    /// (they are printed), 2 when it could not verify.
    Verify(VerifyArgs),

    /// Projects the whole log into a new read-model generation (schema generation_<n>) and
    /// verifies it against the live read model: exit 0 ready, 1 rows differ, 2 could not
    /// rebuild, 3 stopped before the end (run it again to resume).
    ///
    /// Resumes the newest generation still `building` (interrupted by Ctrl-C, kill or
    /// --max-events) from that generation's own offsets; otherwise creates the next one. Every
    /// partition is projected from offset 0 in large batches up to the live read model's
    /// position, then compared with it table by table at one consistent point, exactly as
    /// `verify` does. A generation that equals the live read model is marked `ready`; one that
    /// differs is marked `failed` and its differing rows are printed. Never writes to the live
    /// read model, and sends no progress notices. `projector switch` makes a ready generation
    /// active.
    Rebuild(RebuildArgs),

    /// Lists the read-model generations: name, state, events, created and completed times.
    Generations,

    /// Drops a generation that is not active: its schema and its catalogue row.
    DropGeneration(DropGenerationArgs),

    /// Makes a ready generation the active one: exit 0 switched, 1 refused, 2 could not switch.
    ///
    /// Catches the generation up with the active one, then, in one transaction that holds the
    /// live projector's commits for the last stretch, brings it to exactly the active one's
    /// offsets, fences the live projector there, marks the generation active and the old one
    /// retired, and notifies the services (channel read_model_generation). The old generation
    /// is kept until dropped with drop-generation.
    Switch(SwitchArgs),
}

/// Arguments of `projector switch`.
#[derive(Debug, Clone, Args)]
pub struct SwitchArgs {
    /// The generation, as `projector generations` lists it (generation_<n>); it must be ready.
    pub name: String,
}

/// Flags of `projector rebuild`.
#[derive(Debug, Clone, Args)]
pub struct RebuildArgs {
    /// Most events projected into the new generation in one transaction.
    #[arg(long = "batch-size", env = "REBUILD_BATCH_SIZE", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,

    /// Stop after projecting this many events in this run, as if interrupted (exit 3); the
    /// next run resumes. For rebuilding in bounded steps.
    #[arg(long, env = "REBUILD_MAX_EVENTS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_events: Option<u64>,

    /// Most differing rows shown per table and direction.
    #[arg(long, env = "REBUILD_MAX_DIFF_ROWS", default_value_t = 20)]
    pub max_diff_rows: u32,
}

/// Arguments of `projector drop-generation`.
#[derive(Debug, Clone, Args)]
pub struct DropGenerationArgs {
    /// The generation, as `projector generations` lists it (generation_<n>).
    pub name: String,
}

/// Flags of `projector verify`; the database, broker and topic are the projector's own.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Most events projected into the scratch schema in one transaction.
    #[arg(long = "batch-size", env = "VERIFY_BATCH_SIZE", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,

    /// Leave the scratch schema (verify_...) in place for inspection instead of dropping it.
    #[arg(long, env = "VERIFY_KEEP_SCRATCH")]
    pub keep_scratch: bool,

    /// Most differing rows shown per table and direction.
    #[arg(long, env = "VERIFY_MAX_DIFF_ROWS", default_value_t = 20)]
    pub max_diff_rows: u32,
}

impl Config {
    pub fn partition_stall_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.partition_stall_timeout_ms
                .unwrap_or(3 * u64::from(self.kafka_session_timeout_ms)),
        )
    }

    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "projector".into());
            format!("{host}-{}", std::process::id())
        })
    }
}
