//! The projector's configuration, from flags or the environment.

use std::net::SocketAddr;

use clap::Parser;
pub use service_kit::telemetry::LogFormat;

/// Decides the events of the log in order and materializes them into PostgreSQL.
#[derive(Debug, Clone, Parser)]
#[command(name = "projector", version)]
pub struct Config {
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "PROJECTOR_ADDR", default_value = "127.0.0.1:8082")]
    pub addr: SocketAddr,

    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// The event topic.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "user-data-events")]
    pub kafka_topic: String,

    /// The consumer group shared by all projector instances.
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "projector")]
    pub kafka_group_id: String,

    /// How long the group waits for a silent instance before giving its partitions to others.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub kafka_session_timeout_ms: u32,

    /// PostgreSQL holding the read models.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/userdata"
    )]
    pub database_url: String,

    /// Most events decided in one transaction.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,

    /// Connections to PostgreSQL.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 4)]
    pub db_pool_size: u32,

    /// This instance's name in the group and in projector_offsets.owner (default: host-pid).
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "projector".into());
            format!("{host}-{}", std::process::id())
        })
    }
}
