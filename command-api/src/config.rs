//! The service's settings, from flags or environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use service_kit::server::Timeouts;
pub use service_kit::telemetry::LogFormat;

use crate::auth::Keys;
use crate::client_ip::TrustedProxies;

/// The command API: validates writes, appends them to Kafka as events, answers 202.
#[derive(Debug, Clone, Parser)]
#[command(name = "command-api", version, about)]
pub struct Config {
    /// Address to listen on for HTTP.
    #[arg(long, env = "COMMAND_API_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// The topic every event is appended to; created at start-up if missing.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "user-data-events")]
    pub kafka_topic: String,

    /// Partitions of the topic when this service creates it. Changing it later re-maps users
    /// to partitions, so pick it once.
    #[arg(long, env = "KAFKA_PARTITIONS", default_value_t = 12,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub kafka_partitions: i32,

    /// Replication factor of the topic when this service creates it.
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub kafka_replication_factor: i32,

    /// How long a write may wait for the broker's acknowledgement before it answers 503.
    /// A fresh producer needs about a second to get its producer id, so values under 2000
    /// make the first writes after a start or an outage likely to fail.
    #[arg(long, env = "APPEND_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub append_timeout_ms: u64,

    /// Most writes waiting for the broker's acknowledgement at once. A write that finds this
    /// many in flight is answered 503 (`/problems/overloaded`, `Retry-After`) at once, and
    /// nothing is appended. The default is about twice what a stalled broker holds at the
    /// target load of 400 writes/s: 400 a second for the 5 s append timeout (docs/operations.md,
    /// Sizing the write bound).
    #[arg(long, env = "MAX_IN_FLIGHT_WRITES", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight_writes: u32,

    /// Writes a second each client may make on average: the authenticated user for every write
    /// but sign-up, the peer IP for sign-ups. Past it (and the burst), 429
    /// (`/problems/rate-limited`, `Retry-After`) and nothing is appended. 0 turns limits off.
    #[arg(long, env = "WRITE_RATE_PER_SEC", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub write_rate_per_sec: u32,

    /// Writes each client may make at once before `WRITE_RATE_PER_SEC` applies. 0 turns
    /// limits off.
    #[arg(long, env = "WRITE_BURST", default_value_t = 40,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub write_burst: u32,

    /// Proxies whose `X-Forwarded-For` is believed: IP addresses or CIDR ranges,
    /// comma-separated (`10.0.0.0/8,::1`). A sign-up from one of them is limited by the
    /// rightmost address in that header that is not itself a trusted proxy (a malformed header:
    /// by the peer). Empty, the default: trust no one, and limit every sign-up by its peer
    /// address.
    #[arg(
        long,
        env = "TRUSTED_PROXIES",
        default_value = "",
        hide_default_value = true
    )]
    pub trusted_proxies: TrustedProxies,

    /// How long start-up keeps trying to reach the broker (to create the topic) before it
    /// gives up.
    #[arg(long, env = "KAFKA_STARTUP_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub kafka_startup_timeout_ms: u64,

    /// Keys that sign and verify access tokens: `kid:secret` pairs, comma-separated, each
    /// secret hex or base64 of at least 32 bytes. The first signs new tokens; all verify. Unset
    /// or empty: a random key for this process only, with a warning (its tokens die with it
    /// and no other instance takes them). Pass it in the environment, not as a flag: a flag
    /// shows in the process list.
    #[arg(long, env = "AUTH_KEYS", hide_env_values = true, value_parser = parse_secret)]
    pub auth_keys: Option<Secret>,

    /// Lifetime of access tokens in seconds; unset, tokens do not expire. Also bounds tokens
    /// issued before it was set or shortened (by their `iat`).
    #[arg(long, env = "AUTH_TOKEN_TTL_SECS",
          value_parser = clap::value_parser!(u64).range(1..=i64::MAX as u64 / 2))]
    pub auth_token_ttl_secs: Option<u64>,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// How long a client may take over a request's headers and its body: the server loop's
    /// defaults (10 s each); not a flag, the tests shorten them.
    #[arg(skip)]
    pub client_timeouts: Timeouts,
}

/// A setting that holds secrets: parsed by the service itself (so that a bad value's error never
/// quotes it, as clap's own errors would), and never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

fn parse_secret(text: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret(text.to_owned()))
}

impl Config {
    /// Settings for tests: an ephemeral port on loopback, the given broker and topic, a small
    /// topic, and the production timeouts (tests that need others set the fields).
    pub fn for_tests(kafka_brokers: impl Into<String>, kafka_topic: impl Into<String>) -> Config {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            kafka_brokers: kafka_brokers.into(),
            kafka_topic: kafka_topic.into(),
            kafka_partitions: 4,
            kafka_replication_factor: 1,
            append_timeout_ms: 5000,
            max_in_flight_writes: 4096,
            write_rate_per_sec: 20,
            write_burst: 40,
            trusted_proxies: TrustedProxies::default(),
            kafka_startup_timeout_ms: 30_000,
            auth_keys: None,
            auth_token_ttl_secs: None,
            log_format: LogFormat::Text,
            client_timeouts: Timeouts::default(),
        }
    }

    /// The keys of `AUTH_KEYS`; empty when it is unset or blank. A bad value is an error that
    /// names the variable and what is wrong, never the secret.
    pub fn auth_keys(&self) -> anyhow::Result<Keys> {
        match &self.auth_keys {
            None => Ok(Keys::default()),
            Some(Secret(text)) => Keys::parse(text)
                .map_err(anyhow::Error::msg)
                .context("AUTH_KEYS (--auth-keys) is invalid"),
        }
    }

    pub fn auth_token_ttl(&self) -> Option<Duration> {
        self.auth_token_ttl_secs.map(Duration::from_secs)
    }

    pub fn append_timeout(&self) -> Duration {
        Duration::from_millis(self.append_timeout_ms)
    }

    pub fn kafka_startup_timeout(&self) -> Duration {
        Duration::from_millis(self.kafka_startup_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let config = Config::try_parse_from(["command-api"]).expect("defaults parse");
        // The environment of whoever runs the tests may set these; only check what it cannot.
        if std::env::var_os("COMMAND_API_ADDR").is_none() {
            assert_eq!(config.addr, SocketAddr::from(([127, 0, 0, 1], 8080)));
        }
        if std::env::var_os("KAFKA_TOPIC").is_none() {
            assert_eq!(config.kafka_topic, "user-data-events");
        }
        if std::env::var_os("TRUSTED_PROXIES").is_none() {
            assert!(config.trusted_proxies.is_empty(), "trust no one");
        }
        assert_eq!(config.client_timeouts, Timeouts::default());
    }

    #[test]
    fn flags_override_defaults_and_bad_values_are_refused() {
        let config = Config::try_parse_from([
            "command-api",
            "--addr",
            "0.0.0.0:9000",
            "--kafka-partitions",
            "3",
            "--append-timeout-ms",
            "250",
            "--max-in-flight-writes",
            "8",
            "--write-rate-per-sec",
            "0",
            "--write-burst",
            "5",
            "--trusted-proxies",
            "10.0.0.0/8, 192.0.2.7",
            "--log-format",
            "json",
        ])
        .expect("flags parse");
        assert_eq!(config.addr.port(), 9000);
        assert_eq!(config.kafka_partitions, 3);
        assert_eq!(config.append_timeout(), Duration::from_millis(250));
        assert_eq!(config.max_in_flight_writes, 8);
        assert_eq!((config.write_rate_per_sec, config.write_burst), (0, 5));
        assert_eq!(
            config.trusted_proxies.to_string(),
            "10.0.0.0/8,192.0.2.7/32"
        );
        assert_eq!(config.log_format, LogFormat::Json);

        for bad in [
            ["--kafka-partitions", "0"],
            ["--append-timeout-ms", "99"],
            ["--max-in-flight-writes", "0"],
            ["--write-rate-per-sec", "-1"],
            ["--write-burst", "lots"],
            ["--trusted-proxies", "10.0.0.0/8,proxy.local"],
            ["--log-format", "xml"],
            ["--auth-token-ttl-secs", "0"],
            ["--auth-token-ttl-secs", "soon"],
        ] {
            assert!(
                Config::try_parse_from(["command-api", bad[0], bad[1]]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn auth_keys_errors_name_the_variable_and_hide_the_secret() {
        let secret = "ab".repeat(32);
        let short = Config::try_parse_from([
            "command-api",
            "--auth-keys",
            &format!("k:{}", "cd".repeat(8)),
        ])
        .expect("clap takes any text");
        let message = format!(
            "{:#}",
            short.auth_keys().expect_err("16 bytes is too short")
        );
        assert!(message.contains("AUTH_KEYS"), "{message}");
        assert!(message.contains("32"), "{message}");

        let config = Config::try_parse_from(["command-api", "--auth-keys", &format!("k:{secret}")])
            .expect("parses");
        assert_eq!(config.auth_keys().expect("valid").kids(), ["k"]);
        assert!(!format!("{config:?}").contains(&secret), "{config:?}");

        let blank = Config::try_parse_from(["command-api", "--auth-keys", ""]).expect("parses");
        assert!(blank.auth_keys().expect("blank is none").is_empty());
        let ttl =
            Config::try_parse_from(["command-api", "--auth-token-ttl-secs", "60"]).expect("parses");
        assert_eq!(ttl.auth_token_ttl(), Some(Duration::from_secs(60)));
    }
}
