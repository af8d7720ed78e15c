//! Start-up settings, from flags or environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
pub use service_kit::telemetry::LogFormat;

/// Serves contract v1's reads from the PostgreSQL read models that the projector maintains.
#[derive(Debug, Clone, Parser)]
#[command(name = "query-api", version, about)]
pub struct Config {
    /// Address the HTTP server listens on (port 0 picks a free port).
    #[arg(long, env = "QUERY_API_ADDR", default_value = "127.0.0.1:8081")]
    pub addr: SocketAddr,

    /// PostgreSQL database holding the read models (the projector creates the schema).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/userdata"
    )]
    pub database_url: String,

    /// Hot standbys of DATABASE_URL, comma-separated, that reads are spread over (none by
    /// default). A read that must see a consistency token, or that fills the read cache, goes to
    /// a standby only once that standby has replayed far enough; otherwise to DATABASE_URL.
    #[arg(long, env = "DATABASE_REPLICA_URLS", value_delimiter = ',')]
    pub database_replica_urls: Vec<String>,

    /// How often each standby's replayed projector offsets are read, in milliseconds.
    #[arg(long, env = "REPLICA_POLL_MS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub replica_poll_ms: u64,

    /// Kafka topic the read models are projected from; selects this topic's rows in
    /// projector_offsets when checking consistency tokens.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "user-data-events")]
    pub kafka_topic: String,

    /// Longest time a read carrying a Consistency-Token waits for the read model to catch up
    /// before answering 503.
    #[arg(long, env = "CONSISTENCY_WAIT_MS", default_value_t = 5000)]
    pub consistency_wait_ms: u64,

    /// Most PostgreSQL connections the service holds at once.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub db_pool_size: u32,

    /// Longest time a request waits for a PostgreSQL connection before answering 503.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub db_acquire_timeout_ms: u64,

    /// Most entries the read cache holds (single users, posts and decisions, first pages of
    /// posts); 0 turns the cache off.
    #[arg(long, env = "CACHE_ENTRIES", default_value_t = 100_000)]
    pub cache_entries: usize,

    /// Most bytes the read cache's entries weigh (their JSON and a fixed overhead each); 0 turns
    /// the cache off. The default keeps the service within about 150 MiB.
    #[arg(long, env = "CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub cache_bytes: usize,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    pub fn consistency_wait(&self) -> Duration {
        Duration::from_millis(self.consistency_wait_ms)
    }

    pub fn db_acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.db_acquire_timeout_ms)
    }

    /// The replica URLs given, without blank entries: an empty variable (as a compose file's
    /// `${VAR:-}` leaves it) or a trailing comma names no replica.
    pub fn replica_urls(&self) -> impl Iterator<Item = &str> {
        self.database_replica_urls
            .iter()
            .map(|url| url.trim())
            .filter(|url| !url.is_empty())
    }

    pub fn replica_poll(&self) -> Duration {
        Duration::from_millis(self.replica_poll_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let config = Config::try_parse_from(["query-api"]).expect("defaults parse");
        assert_eq!(config.addr.to_string(), "127.0.0.1:8081");
        assert_eq!(config.kafka_topic, "user-data-events");
        assert_eq!(config.consistency_wait(), Duration::from_secs(5));
        assert_eq!(config.db_pool_size, 16);
        assert_eq!(config.cache_entries, 100_000);
        assert_eq!(config.cache_bytes, 64 << 20);
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(config.database_replica_urls.is_empty());
        assert_eq!(config.replica_poll(), Duration::from_millis(20));
    }

    #[test]
    fn replica_urls_are_comma_separated() {
        let config = Config::try_parse_from([
            "query-api",
            "--database-replica-urls",
            "postgres://a/db,postgres://b/db",
        ])
        .expect("parses");
        assert_eq!(
            config.replica_urls().collect::<Vec<_>>(),
            ["postgres://a/db", "postgres://b/db"]
        );
        let blank =
            Config::try_parse_from(["query-api", "--database-replica-urls", " ,"]).expect("parses");
        assert_eq!(blank.replica_urls().count(), 0);
    }

    #[test]
    fn rejects_an_empty_pool() {
        assert!(Config::try_parse_from(["query-api", "--db-pool-size", "0"]).is_err());
        // No connection could ever be had: every read would be a 503.
        assert!(Config::try_parse_from(["query-api", "--db-acquire-timeout-ms", "0"]).is_err());
    }
}
