//! The command line: `loadgen run`, `loadgen chaos`, `loadgen bare-server` and `loadgen broker`,
//! from flags or environment, and the parsers of their values.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// Load generator for the user-data service: the target read-heavy workload against any
/// deployment, with latency percentiles, visibility lag and a plot.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Seed a population, then run the workload and report per operation.
    Run(Box<RunConfig>),
    /// Write and read at a steady rate while faults are injected, then check that no
    /// acknowledged write was lost or applied twice and no token read was stale.
    Chaos(Box<ChaosConfig>),
    /// Serve a fixed post from memory: the baseline a cached read is compared with.
    BareServer(BareServerConfig),
    /// Append to and read from a Kafka topic directly, with no service in between: the
    /// broker's own ceiling, which every write figure is a fraction of.
    Broker(Box<BrokerConfig>),
}

/// Open loop sends on a fixed schedule whatever the server does; closed loop sends each
/// connection's next request when the previous one answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Open,
    Closed,
}

/// `loadgen run`.
#[derive(Debug, Clone, Parser)]
pub struct RunConfig {
    /// Base URL of the command API (writes). Plain http only.
    #[arg(
        long,
        env = "LOADGEN_COMMAND_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub command_url: String,

    /// Base URL of the query API (reads).
    #[arg(
        long,
        env = "LOADGEN_QUERY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub query_url: String,

    /// How long to measure, after the warm-up: `60s`, `500ms`, `2m`, or plain seconds.
    #[arg(long, env = "LOADGEN_DURATION", default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Load sent before measuring starts and not counted: it opens the connections and warms
    /// the servers' caches and pools.
    #[arg(long, env = "LOADGEN_WARMUP", default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// `open`: a fixed arrival schedule at --rate, latency counted from each request's intended
    /// send time. `closed`: --connections tasks, each sending when its previous request answered.
    #[arg(long, env = "LOADGEN_MODE", value_enum, default_value_t = Mode::Closed)]
    pub mode: Mode,

    /// Open loop: requests per second, all operations together.
    #[arg(long, env = "LOADGEN_RATE", default_value_t = 1000.0, value_parser = parse_positive)]
    pub rate: f64,

    /// Closed loop: concurrent requests. Open loop: most requests in flight; more wait, and their
    /// wait counts as latency. One keep-alive connection per API per task.
    #[arg(long, env = "LOADGEN_CONNECTIONS", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,

    /// Reads per write (the target load reads 100 times per write).
    #[arg(long, env = "LOADGEN_READ_RATIO", default_value_t = 100.0, value_parser = parse_non_negative)]
    pub read_ratio: f64,

    /// Users in the population.
    #[arg(long, env = "LOADGEN_USERS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub users: u32,

    /// Posts in the population (spread over the users).
    #[arg(long, env = "LOADGEN_POSTS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub posts: u32,

    /// Zipf skew of which user or post a request picks: 1.0 is the classic law, 0 is uniform.
    #[arg(long, env = "LOADGEN_ZIPF", default_value_t = 1.0, value_parser = parse_non_negative)]
    pub zipf: f64,

    /// Seed of every random choice (operations, items, made-up ids): the same seed, the same
    /// draws.
    #[arg(long, env = "LOADGEN_SEED", default_value_t = 42)]
    pub seed: u64,

    /// Fraction of writes whose visibility lag (202 to readable) is measured, 0 to 1. The lag
    /// reads go through connections of their own and are not counted as workload reads.
    #[arg(long, env = "LOADGEN_LAG_SAMPLE", default_value_t = 0.1, value_parser = parse_fraction)]
    pub lag_sample: f64,

    /// Write the report as JSON (with the parameters and a per-second time series) here.
    #[arg(long, env = "LOADGEN_JSON")]
    pub json: Option<PathBuf>,

    /// Write an SVG plot of throughput and p99 latency per second here.
    #[arg(long, env = "LOADGEN_SVG")]
    pub svg: Option<PathBuf>,

    /// Reuse a seeded population across runs: read it from this file when it exists (after
    /// checking a few of its ids still exist; its sizes then win over --users and --posts),
    /// else seed and write it.
    #[arg(long, env = "LOADGEN_POPULATION_FILE")]
    pub population_file: Option<PathBuf>,

    /// Make up random ids instead of seeding (for servers that answer any id, such as
    /// `loadgen bare-server`).
    #[arg(long, env = "LOADGEN_NO_SEED", conflicts_with = "population_file")]
    pub no_seed: bool,

    /// Send only reads.
    #[arg(long, env = "LOADGEN_READS_ONLY", conflicts_with = "writes_only")]
    pub reads_only: bool,

    /// Send only writes.
    #[arg(long, env = "LOADGEN_WRITES_ONLY")]
    pub writes_only: bool,

    /// Weights of the read kinds: `posts` (GET /v1/posts/{id}), `users` (GET /v1/users/{id}),
    /// `user_posts` (GET /v1/users/{id}/posts?limit=20), `feed` (GET /v1/posts?limit=20).
    /// Kinds left out get no reads.
    #[arg(
        long,
        env = "LOADGEN_READ_MIX",
        default_value = "posts=70,users=20,user_posts=5,feed=5"
    )]
    pub read_mix: ReadMix,

    /// Weights of the write kinds: `create` (a 1 KB post), `edit` (PATCH title and body),
    /// `delete` (a post this run created).
    #[arg(
        long,
        env = "LOADGEN_WRITE_MIX",
        default_value = "create=60,edit=35,delete=5"
    )]
    pub write_mix: WriteMix,

    /// Bytes of each post body that seeding and the workload write.
    #[arg(long, env = "LOADGEN_POST_BYTES", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub post_bytes: u32,

    /// Longest wait for one answer; past it the request counts as a timeout and its connection
    /// is replaced. Longer than the services' own 5 s bounds, so those show as 503s.
    #[arg(long, env = "LOADGEN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Concurrent requests while seeding.
    #[arg(long, env = "LOADGEN_SEED_CONNECTIONS", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub seed_connections: u32,

    /// How long seeding waits for the read model to show the seeded population.
    #[arg(long, env = "LOADGEN_SEED_WAIT", default_value = "120s", value_parser = parse_duration)]
    pub seed_wait: Duration,
}

impl RunConfig {
    /// The share of requests that are reads.
    pub fn read_share(&self) -> f64 {
        if self.reads_only {
            1.0
        } else if self.writes_only {
            0.0
        } else {
            self.read_ratio / (self.read_ratio + 1.0)
        }
    }

    pub fn sends_reads(&self) -> bool {
        self.read_share() > 0.0
    }

    pub fn sends_writes(&self) -> bool {
        self.read_share() < 1.0
    }
}

/// `loadgen chaos`: the client and checker of a fault-injection run (see [`crate::chaos`]).
#[derive(Debug, Clone, Parser)]
pub struct ChaosConfig {
    /// Base URL of the command API (writes). Plain http only.
    #[arg(long, env = "LOADGEN_COMMAND_URL")]
    pub command_url: String,

    /// Base URL of the query API (reads).
    #[arg(long, env = "LOADGEN_QUERY_URL")]
    pub query_url: String,

    /// Writer tasks. Each registers its own one or two users and is the only one to write as
    /// them, one operation at a time, so the order of each user's writes is known.
    #[arg(long, env = "LOADGEN_CHAOS_WRITERS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub writers: u32,

    /// Writes per second, all writers together. A writer whose write is held up by retries
    /// skips the slots it missed rather than burst afterwards.
    #[arg(long, env = "LOADGEN_CHAOS_WRITE_RATE", default_value_t = 40.0, value_parser = parse_positive)]
    pub write_rate: f64,

    /// Reads after each acknowledged write, with its consistency token: the written resource,
    /// and every third one the command's decision.
    #[arg(long, env = "LOADGEN_CHAOS_READS_PER_WRITE", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub reads_per_write: u32,

    /// The fault timeline the orchestrator writes while the run goes (JSON lines
    /// `{"at_ms", "fault", "phase"}`), read at the end. A missing file means no fault windows.
    #[arg(long, env = "LOADGEN_CHAOS_TIMELINE")]
    pub timeline: Option<PathBuf>,

    /// Write the JSON report here.
    #[arg(long, env = "LOADGEN_CHAOS_OUT")]
    pub out: Option<PathBuf>,

    /// After the load, how long to wait for every acknowledged command to be decided; one
    /// still undecided then is lost.
    #[arg(long, env = "LOADGEN_CHAOS_SETTLE_TIMEOUT", default_value = "180s", value_parser = parse_duration)]
    pub settle_timeout: Duration,

    /// Stop the load after this long; without it, the load runs until SIGINT or SIGTERM.
    #[arg(long, env = "LOADGEN_CHAOS_DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// How long one operation keeps retrying (503s, honouring `Retry-After`, connection errors,
    /// timeouts) with the same idempotency key before it gives up, which fails the run.
    #[arg(long, env = "LOADGEN_CHAOS_RETRY_FOR", default_value = "120s", value_parser = parse_duration)]
    pub retry_for: Duration,

    /// Longest wait for one answer; past it the attempt counts as a timeout and is retried.
    #[arg(long, env = "LOADGEN_CHAOS_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// A fault window recovered when no request failed in its last stretch of this length:
    /// the orchestrator leaves at least this much healthy load after each fault is ready.
    #[arg(long, env = "LOADGEN_CHAOS_RECOVERY_TAIL", default_value = "5s", value_parser = parse_duration)]
    pub recovery_tail: Duration,
}

/// `loadgen bare-server`.
#[derive(Debug, Clone, Parser)]
pub struct BareServerConfig {
    /// Address to listen on.
    #[arg(long, env = "LOADGEN_BARE_ADDR", default_value = "127.0.0.1:8090")]
    pub addr: SocketAddr,
}

/// `loadgen broker`.
#[derive(Debug, Clone, Parser)]
pub struct BrokerConfig {
    /// The broker's bootstrap address.
    #[arg(long, env = "LOADGEN_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// The topic to fill; created with --partitions unless it exists. Use a topic of its own:
    /// the final read takes every record in it.
    #[arg(long, env = "LOADGEN_BROKER_TOPIC", default_value = "loadgen-broker")]
    pub topic: String,

    /// Partitions of a topic this creates (as many as the command API creates by default).
    #[arg(long, env = "LOADGEN_BROKER_PARTITIONS", default_value_t = 12,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,

    /// How long to append, after the warm-up.
    #[arg(long, env = "LOADGEN_BROKER_DURATION", default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Appends before measuring starts, not counted.
    #[arg(long, env = "LOADGEN_BROKER_WARMUP", default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Records awaiting their acknowledgement at once (as many as the command API's
    /// concurrent writes under a closed loop of that many connections).
    #[arg(long, env = "LOADGEN_BROKER_IN_FLIGHT", default_value_t = 64)]
    pub in_flight: usize,

    /// Records per second on a fixed schedule; 0 appends flat out.
    #[arg(long, env = "LOADGEN_BROKER_RATE", default_value_t = 0.0, value_parser = parse_non_negative)]
    pub rate: f64,

    /// Bytes of each record's value.
    #[arg(long, env = "LOADGEN_BROKER_VALUE_BYTES", default_value_t = 1024)]
    pub value_bytes: usize,

    /// The projector's `KAFKA_FETCH_WAIT_MS` for the tailing consumer.
    #[arg(long, env = "LOADGEN_BROKER_FETCH_WAIT_MS", default_value_t = 10)]
    pub fetch_wait_ms: u32,

    /// Skip the final read of the whole topic from its start.
    #[arg(long, env = "LOADGEN_BROKER_NO_READ_BACK")]
    pub no_read_back: bool,

    /// Write the report as JSON here.
    #[arg(long, env = "LOADGEN_BROKER_JSON")]
    pub json: Option<PathBuf>,
}

/// A duration such as `60s`, `500ms`, `2m`, `1h`, `1.5s`, or a plain number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 60s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit `{other}` in `{text}` (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

fn parse_number(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(format!("`{text}` is not a finite number"))
    }
}

fn parse_positive(text: &str) -> Result<f64, String> {
    let value = parse_number(text)?;
    if value > 0.0 {
        Ok(value)
    } else {
        Err(format!("`{text}` must be greater than 0"))
    }
}

fn parse_non_negative(text: &str) -> Result<f64, String> {
    let value = parse_number(text)?;
    if value >= 0.0 {
        Ok(value)
    } else {
        Err(format!("`{text}` must not be negative"))
    }
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    let value = parse_number(text)?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("`{text}` must be between 0 and 1"))
    }
}

/// Parses `name=weight,name=weight` against a fixed list of names, in that list's order.
fn parse_weights<const N: usize>(text: &str, names: [&str; N]) -> Result<[f64; N], String> {
    let mut weights = [0.0; N];
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not name=weight"))?;
        let slot = names
            .iter()
            .position(|known| *known == name.trim())
            .ok_or_else(|| format!("unknown kind `{name}` (known: {})", names.join(", ")))?;
        weights[slot] = parse_non_negative(weight)?;
    }
    if weights.iter().sum::<f64>() <= 0.0 {
        return Err(format!("`{text}` gives no kind a weight"));
    }
    Ok(weights)
}

fn format_weights<const N: usize>(
    f: &mut fmt::Formatter<'_>,
    names: [&str; N],
    weights: &[f64; N],
) -> fmt::Result {
    let parts: Vec<String> = names
        .iter()
        .zip(weights)
        .filter(|(_, w)| **w > 0.0)
        .map(|(name, w)| format!("{name}={w}"))
        .collect();
    f.write_str(&parts.join(","))
}

/// How reads split between their kinds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadMix {
    pub posts: f64,
    pub users: f64,
    pub user_posts: f64,
    pub feed: f64,
}

impl ReadMix {
    const NAMES: [&'static str; 4] = ["posts", "users", "user_posts", "feed"];

    pub fn weights(&self) -> [f64; 4] {
        [self.posts, self.users, self.user_posts, self.feed]
    }
}

impl FromStr for ReadMix {
    type Err = String;

    fn from_str(text: &str) -> Result<ReadMix, String> {
        let [posts, users, user_posts, feed] = parse_weights(text, ReadMix::NAMES)?;
        Ok(ReadMix {
            posts,
            users,
            user_posts,
            feed,
        })
    }
}

impl fmt::Display for ReadMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        format_weights(f, ReadMix::NAMES, &self.weights())
    }
}

/// How writes split between their kinds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteMix {
    pub create: f64,
    pub edit: f64,
    pub delete: f64,
}

impl WriteMix {
    const NAMES: [&'static str; 3] = ["create", "edit", "delete"];

    pub fn weights(&self) -> [f64; 3] {
        [self.create, self.edit, self.delete]
    }
}

impl FromStr for WriteMix {
    type Err = String;

    fn from_str(text: &str) -> Result<WriteMix, String> {
        let [create, edit, delete] = parse_weights(text, WriteMix::NAMES)?;
        Ok(WriteMix {
            create,
            edit,
            delete,
        })
    }
}

impl fmt::Display for WriteMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        format_weights(f, WriteMix::NAMES, &self.weights())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_config(args: &[&str]) -> Result<RunConfig, clap::Error> {
        let mut all = vec!["loadgen", "run"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all)?;
        match cli.command {
            Command::Run(config) => Ok(*config),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "s", "5x", "-1s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mixes_parse_and_print() {
        let mix: ReadMix = "posts=70,users=20,user_posts=5,feed=5"
            .parse()
            .expect("mix");
        assert_eq!(mix.weights(), [70.0, 20.0, 5.0, 5.0]);
        assert_eq!(mix.to_string(), "posts=70,users=20,user_posts=5,feed=5");
        let only: ReadMix = "posts=100".parse().expect("mix");
        assert_eq!(only.weights(), [100.0, 0.0, 0.0, 0.0]);
        assert_eq!(only.to_string(), "posts=100");
        for bad in ["", "posts=0", "likes=3", "posts", "posts=-1", "posts=x"] {
            assert!(bad.parse::<ReadMix>().is_err(), "{bad}");
        }
        let writes: WriteMix = "create=1, delete=1".parse().expect("mix");
        assert_eq!(writes.weights(), [1.0, 0.0, 1.0]);
    }

    #[test]
    fn run_defaults_are_the_target_workload() {
        let config = run_config(&[]).expect("defaults parse");
        if std::env::var_os("LOADGEN_READ_RATIO").is_none() {
            assert_eq!(config.read_ratio, 100.0);
            assert!((config.read_share() - 100.0 / 101.0).abs() < 1e-12);
        }
        if std::env::var_os("LOADGEN_USERS").is_none() {
            assert_eq!(config.users, 1000);
        }
        if std::env::var_os("LOADGEN_WARMUP").is_none() {
            assert_eq!(config.warmup, Duration::from_secs(5));
        }
    }

    fn chaos_config(args: &[&str]) -> Result<ChaosConfig, clap::Error> {
        let mut all = vec![
            "loadgen",
            "chaos",
            "--command-url",
            "http://c",
            "--query-url",
            "http://q",
        ];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all)?.command {
            Command::Chaos(config) => Ok(*config),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn chaos_takes_the_agreed_flags() {
        let config = chaos_config(&[
            "--writers",
            "2",
            "--write-rate",
            "5",
            "--reads-per-write",
            "0",
            "--timeline",
            "t.jsonl",
            "--out",
            "r.json",
            "--settle-timeout",
            "30s",
            "--duration",
            "1m",
        ])
        .expect("flags parse");
        assert_eq!(config.writers, 2);
        assert_eq!(config.write_rate, 5.0);
        assert_eq!(config.reads_per_write, 0);
        assert_eq!(config.timeline, Some(PathBuf::from("t.jsonl")));
        assert_eq!(config.out, Some(PathBuf::from("r.json")));
        assert_eq!(config.settle_timeout, Duration::from_secs(30));
        assert_eq!(config.duration, Some(Duration::from_secs(60)));
        if std::env::var_os("LOADGEN_CHAOS_DURATION").is_none() {
            assert_eq!(chaos_config(&[]).expect("defaults").duration, None);
        }
        for bad in [
            &["--writers", "0"][..],
            &["--write-rate", "0"],
            &["--settle-timeout", "x"],
        ] {
            assert!(chaos_config(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_are_checked() {
        let config =
            run_config(&["--reads-only", "--mode", "open", "--rate", "500"]).expect("flags parse");
        assert_eq!(config.mode, Mode::Open);
        assert_eq!(config.read_share(), 1.0);
        assert!(!config.sends_writes());
        for bad in [
            &["--reads-only", "--writes-only"][..],
            &["--rate", "0"],
            &["--lag-sample", "1.5"],
            &["--zipf", "-1"],
            &["--connections", "0"],
            &["--users", "0"],
            &["--mode", "half-open"],
            &["--no-seed", "--population-file", "p.json"],
        ] {
            assert!(run_config(bad).is_err(), "{bad:?}");
        }
    }
}
