//! The rebuild benchmark: how long `projector rebuild` takes to project and verify a log of N
//! events, and how that compares with the fastest bulk load PostgreSQL itself can do of the same
//! rows on the same machine, measured in the same run.
//!
//! `./dev bench rebuild --events 1000000` runs it against a database (and, with `--source
//! broker`, a broker) of its own. Directly: `cargo bench -p projector --bench rebuild --
//! --events 1000000` with `DATABASE_URL` (any database of the server: the benchmark creates its
//! own next to it) and, for `--source broker`, `KAFKA_BROKERS`.
//!
//! 1. **Fill**: N events of the seed's shape (1 KB posts and bios; publishes, edits with right,
//!    stale and no `If-Match`, profile updates, deletes, retried commands) from a seeded
//!    generator. `--source broker` produces them into a new topic in large batches and reads
//!    them back from the broker in the steps below; `--source memory` (the default) keeps the
//!    same records in memory, so that the figure is the projection's and PostgreSQL's alone,
//!    apart from the broker's fetch speed (see BENCHMARKS.md).
//! 2. **Live**: the live read model is projected first. With the broker, by the projector as it
//!    runs in production (its catch-up rate is reported); in memory, by the same batch
//!    transaction, batch after batch.
//! 3. **Rebuild**: `projector rebuild` projects the log into `generation_1` and verifies it,
//!    table by table, against the live read model. This is the figure.
//! 4. **Baseline**: the rows the rebuild wrote, copied out beforehand, are loaded with
//!    `COPY ... FROM STDIN (FORMAT binary)` in one transaction into fresh tables that the same
//!    migrations created (same indexes and constraints).
//! 5. **Report**: the figures, the machine and the ratio; `--json` writes them to a file.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, Utc};
use clap::Parser;
use events::UserRegistered;
use events::{Envelope, Event, PostEdited, PostFormat, PostPublished, UserProfileUpdated};
use projector::config::RebuildArgs;
use projector::store::{Record, Store};
use projector::{LogSource, RecordedLog};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::oneshot;
use uuid::Uuid;

/// The read-model tables, in an order that satisfies their foreign keys.
const TABLES: &[&str] = &[
    "users",
    "posts",
    "decisions",
    "idempotency_keys",
    "aggregate_events",
    "dead_letters",
];
const BASELINE_SCHEMA: &str = "copy_baseline";
/// A post body and a bio: the seed's 1 KB per write.
const TEXT_BYTES: usize = 1000;

/// Times a rebuild of N events against a plain `COPY` of the same rows.
#[derive(Debug, Parser)]
struct Args {
    /// Events in the log.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,

    /// Where the rebuild reads the log from.
    #[arg(long, value_enum, default_value_t = Source::Memory)]
    source: Source,

    /// Partitions of the benchmark's topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,

    /// Events per rebuild transaction (`projector rebuild --batch-size`).
    #[arg(long, default_value_t = 5000)]
    batch_size: u32,

    /// Seed of the event generator: the same seed gives the same log.
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,

    /// Any database of the PostgreSQL server; the benchmark creates its own beside it.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,

    /// Keep the benchmark's database (and topic) afterwards, for inspection.
    #[arg(long)]
    keep: bool,

    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// `cargo bench` passes this to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Source {
    /// The records in memory: the projection's speed, apart from the broker's.
    Memory,
    /// A topic on the broker at KAFKA_BROKERS: end to end.
    Broker,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    source: Source,
    events: u64,
    partitions: i32,
    batch_size: u32,
    fill_secs: f64,
    live_projection_secs: f64,
    /// Projection and verification, start to READY.
    rebuild_secs: f64,
    rebuild_events_per_sec: f64,
    /// Of which the table-by-table comparison.
    verify_compare_secs: f64,
    live_held_ms: u128,
    rows: Vec<TableRows>,
    copy_bytes: u64,
    copy_secs: f64,
    /// `rebuild_secs / copy_secs`: how many times longer the rebuild takes than loading its
    /// result with COPY.
    rebuild_to_copy_ratio: f64,
}

#[derive(Debug, Serialize)]
struct TableRows {
    table: &'static str,
    rows: i64,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    memory_gib: f64,
    postgres: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    service_kit::telemetry::init(service_kit::telemetry::LogFormat::Text)?;
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.events > 0, "--events must be at least 1");
    let bench = BenchDatabase::create(&args.database_url).await?;
    let topic = format!("rebuild-bench-{}", Uuid::new_v4().simple());
    let outcome = measure(&args, &bench, &topic).await;
    if !args.keep {
        bench.drop().await;
        if args.source == Source::Broker {
            delete_topic(&args.kafka_brokers, &topic).await;
        }
    } else {
        eprintln!("kept database {} and topic {topic}", bench.name);
    }
    let report = outcome?;
    print!("{}", render(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

async fn measure(args: &Args, bench: &BenchDatabase, topic: &str) -> anyhow::Result<Report> {
    let config = projector_config(args, &bench.url, topic);

    let (produced, fill_secs, live_projection_secs, source) = match args.source {
        Source::Broker => fill_and_project_via_broker(args, &config, topic).await?,
        Source::Memory => fill_and_project_in_memory(args, &config).await?,
    };

    say("3/4 projector rebuild (projection and verification)".into());
    let rebuild_args = RebuildArgs {
        batch_size: args.batch_size,
        max_events: None,
        max_diff_rows: 20,
    };
    let started = Instant::now();
    let rebuilt =
        projector::rebuild::rebuild_from(&config, &rebuild_args, &source, std::future::pending())
            .await?;
    let rebuild_secs = started.elapsed().as_secs_f64();
    ensure!(rebuilt.is_ready(), "the rebuild is not ready:\n{rebuilt}");
    let comparison = rebuilt
        .comparison
        .as_ref()
        .context("a ready rebuild has a comparison")?;
    say(format!(
        "    READY in {rebuild_secs:.1} s ({:.0} events/s)",
        produced as f64 / rebuild_secs
    ));

    say(format!(
        "4/4 COPY of the same rows into fresh tables ({BASELINE_SCHEMA})"
    ));
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&bench.url)
        .await?;
    let rows = row_counts(&pool, &rebuilt.generation).await?;
    let (copy_bytes, copy_secs) = copy_baseline(&bench.url, &rebuilt.generation, topic).await?;
    say(format!(
        "    {} MB in {copy_secs:.1} s",
        copy_bytes / 1_000_000
    ));
    let postgres: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&pool)
        .await?;
    pool.close().await;

    Ok(Report {
        machine: Machine::read(postgres),
        source: args.source,
        events: produced,
        partitions: args.partitions,
        batch_size: args.batch_size,
        fill_secs,
        live_projection_secs,
        rebuild_secs,
        rebuild_events_per_sec: produced as f64 / rebuild_secs,
        verify_compare_secs: comparison.compared_in.as_secs_f64(),
        live_held_ms: comparison.live_held_for.as_millis(),
        rows,
        copy_bytes,
        copy_secs,
        rebuild_to_copy_ratio: rebuild_secs / copy_secs,
    })
}

/// Steps 1 and 2 through the broker: returns the events, the fill and live-projection seconds,
/// and where the rebuild reads them.
async fn fill_and_project_via_broker(
    args: &Args,
    config: &projector::Config,
    topic: &str,
) -> anyhow::Result<(u64, f64, f64, LogSource)> {
    say(format!(
        "1/4 filling topic {topic} with {} events",
        args.events
    ));
    let started = Instant::now();
    create_topic(&args.kafka_brokers, topic, args.partitions).await?;
    let produced = fill(args, topic).await?;
    let fill_secs = started.elapsed().as_secs_f64();
    say(format!(
        "    {produced} events in {fill_secs:.1} s ({:.0}/s)",
        produced as f64 / fill_secs
    ));

    say("2/4 projecting them into the live read model (the projector as it runs live)".into());
    let started = Instant::now();
    let live = LiveProjector::start(config.clone()).await?;
    live.wait_for(produced as i64, &config.database_url, topic)
        .await?;
    live.stop().await?;
    let live_secs = started.elapsed().as_secs_f64();
    say(format!(
        "    {live_secs:.1} s ({:.0} events/s)",
        produced as f64 / live_secs
    ));
    let source = LogSource::Kafka {
        brokers: args.kafka_brokers.clone(),
    };
    Ok((produced, fill_secs, live_secs, source))
}

/// Steps 1 and 2 in memory: the same records, partitioned by their key as the command API's
/// producer would, projected into the live read model by the batch transaction.
async fn fill_and_project_in_memory(
    args: &Args,
    config: &projector::Config,
) -> anyhow::Result<(u64, f64, f64, LogSource)> {
    say(format!("1/4 generating {} events in memory", args.events));
    let started = Instant::now();
    let mut workload = Workload::new(args.seed, args.events);
    let mut log = RecordedLog::default();
    let mut in_order = Vec::with_capacity(args.events as usize);
    for _ in 0..args.events {
        let envelope = workload.next_event();
        let partition = (envelope.partition_key.as_u128() % args.partitions as u128) as i32;
        let records = log.partitions.entry(partition).or_default();
        records.push(Record {
            partition,
            offset: records.len() as i64,
            key: Some(envelope.partition_key.to_string().into_bytes()),
            payload: Some(envelope.encode()),
            headers: Vec::new(),
        });
        in_order.push((partition, records.len() - 1));
    }
    let fill_secs = started.elapsed().as_secs_f64();

    say("2/4 projecting them into the live read model (batch after batch)".into());
    let started = Instant::now();
    let store = Store::connect_lazy(&config.database_url, &config.kafka_topic, 2)?;
    store.migrate().await?;
    let partitions: Vec<i32> = log.partitions.keys().copied().collect();
    let mut claims = store.claim(&partitions, "rebuild-bench").await?;
    for chunk in in_order.chunks(args.batch_size as usize) {
        let batch: Vec<Record> = chunk
            .iter()
            .map(|(p, i)| log.partitions[p][*i].clone())
            .collect();
        let outcome = store.commit_batch(&batch, &claims, false).await?;
        ensure!(outcome.fenced.is_empty(), "the live batch was fenced");
        for (partition, next_offset) in outcome.committed {
            if let Some(claim) = claims.get_mut(&partition) {
                claim.next_offset = next_offset;
            }
        }
    }
    store.pool().close().await;
    let live_secs = started.elapsed().as_secs_f64();
    say(format!(
        "    {live_secs:.1} s ({:.0} events/s)",
        args.events as f64 / live_secs
    ));
    Ok((
        args.events,
        fill_secs,
        live_secs,
        LogSource::Recorded(Arc::new(log)),
    ))
}

fn say(line: String) {
    eprintln!("{line}");
}

fn projector_config(args: &Args, database_url: &str, topic: &str) -> projector::Config {
    projector::Config::parse_from([
        "projector".to_owned(),
        "--addr=127.0.0.1:0".to_owned(),
        format!("--kafka-brokers={}", args.kafka_brokers),
        format!("--kafka-topic={topic}"),
        format!("--kafka-group-id=projector-{topic}"),
        format!("--database-url={database_url}"),
        // The live projector's largest batches: it is catching up with a full log.
        format!("--batch-size={}", args.batch_size),
    ])
}

// ---------------------------------------------------------------------------------------------
// The benchmark's own database

struct BenchDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl BenchDatabase {
    async fn create(admin_url: &str) -> anyhow::Result<BenchDatabase> {
        let name = format!("rebuild_bench_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("cannot connect to {admin_url}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let url = with_database(admin_url, &name)?;
        Ok(BenchDatabase {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }

    async fn drop(&self) {
        let dropped = async {
            let mut admin = PgConnection::connect(&self.admin_url).await?;
            sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut admin)
            .await
        }
        .await;
        if let Err(e) = dropped {
            eprintln!("warning: cannot drop database {}: {e}", self.name);
        }
    }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let Some(slash) = base
        .rfind('/')
        .filter(|i| base[..*i].ends_with(|c| c != '/'))
    else {
        bail!("DATABASE_URL {url:?} names no database");
    };
    let mut out = format!("{}/{database}", &base[..slash]);
    if let Some(query) = query {
        let _ = write!(out, "?{query}");
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// 1. Fill

async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&new_topic], &AdminOptions::new())
        .await
        .context("cannot create the benchmark's topic")?;
    for result in results {
        if let Err((name, code)) = result {
            bail!("cannot create topic {name}: {code}");
        }
    }
    Ok(())
}

async fn delete_topic(brokers: &str, topic: &str) {
    let admin: Result<AdminClient<DefaultClientContext>, _> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create();
    if let Ok(admin) = admin {
        let _ = admin.delete_topics(&[topic], &AdminOptions::new()).await;
    }
}

/// Produces the workload into `topic` and checks that the log holds all of it.
async fn fill(args: &Args, topic: &str) -> anyhow::Result<u64> {
    let (brokers, topic_name, events, seed) = (
        args.kafka_brokers.clone(),
        topic.to_owned(),
        args.events,
        args.seed,
    );
    tokio::task::spawn_blocking(move || produce(&brokers, &topic_name, events, seed)).await??;
    let logged = log_end(&args.kafka_brokers, topic, args.partitions).await?;
    ensure!(
        logged == events,
        "produced {events} events but the log holds {logged}"
    );
    Ok(logged)
}

fn produce(brokers: &str, topic: &str, events: u64, seed: u64) -> anyhow::Result<()> {
    // Throughput settings, unlike the command API's: large batches, a long linger.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // The command API's partitioner: a user's events land where they would live.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "50")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "600000")
        .create()
        .context("cannot create a Kafka producer")?;
    let mut workload = Workload::new(seed, events);
    let mut last_said = Instant::now();
    for sent in 0..events {
        let envelope = workload.next_event();
        let key = envelope.partition_key.to_string();
        let payload = envelope.encode();
        let mut record = BaseRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .headers(command_api::appender::record_headers(&envelope));
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(e).context("cannot produce"),
            }
        }
        producer.poll(Duration::ZERO);
        if last_said.elapsed() > Duration::from_secs(5) {
            last_said = Instant::now();
            say(format!("    {sent}/{events} produced"));
        }
    }
    producer
        .flush(Duration::from_secs(600))
        .context("the broker did not acknowledge every event")?;
    Ok(())
}

/// Records in the log, all partitions together.
async fn log_end(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<u64> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("rebuild-bench-{}", Uuid::new_v4()))
            .create()?;
        let mut total = 0;
        for partition in 0..partitions {
            let (low, high) =
                consumer.fetch_watermarks(&topic, partition, Duration::from_secs(30))?;
            total += high - low;
        }
        Ok(u64::try_from(total)?)
    })
    .await?
}

/// The seed's write mix as events, in the order a command API would append them: users sign up
/// first (2 % of the log), then publish, edit, update and delete, with some stale `If-Match`
/// and some retried commands, so that rejections and duplicates are decided too.
struct Workload {
    random: SplitMix64,
    users: Vec<UserState>,
    to_register: u64,
    /// Recent envelopes, re-sent as a client's retry would be.
    recent: VecDeque<Envelope>,
    clock: DateTime<Utc>,
}

struct UserState {
    id: Uuid,
    /// Live posts and their versions, as the projector will decide them.
    posts: Vec<(Uuid, i64)>,
}

impl Workload {
    fn new(seed: u64, events: u64) -> Workload {
        Workload {
            random: SplitMix64(seed),
            users: Vec::new(),
            to_register: (events / 50).max(1),
            recent: VecDeque::new(),
            clock: DateTime::<Utc>::from_timestamp(1_790_000_000, 0).unwrap_or_default(),
        }
    }

    fn next_event(&mut self) -> Envelope {
        self.clock += chrono::Duration::microseconds(1500);
        let envelope = self.choose();
        if self.recent.len() == 64 {
            self.recent.pop_front();
        }
        self.recent.push_back(envelope.clone());
        envelope
    }

    fn choose(&mut self) -> Envelope {
        if self.to_register > 0 {
            self.to_register -= 1;
            let id = self.random.uuid();
            self.users.push(UserState {
                id,
                posts: Vec::new(),
            });
            let event = Event::UserRegistered(UserRegistered {
                display_name: self.random.text(20),
                bio: Some(self.random.text(TEXT_BYTES)),
            });
            return self.envelope(id, id, event, None);
        }
        let roll = self.random.below(100);
        if roll < 2 {
            if let Some(retry) = self.recent.front().cloned() {
                return retry;
            }
        }
        let user = self.random.below(self.users.len() as u64) as usize;
        let user_id = self.users[user].id;
        let has_posts = !self.users[user].posts.is_empty();
        match roll {
            2..=9 => {
                let event = Event::UserProfileUpdated(UserProfileUpdated {
                    display_name: None,
                    bio: Some(self.random.text(TEXT_BYTES)),
                });
                self.envelope(user_id, user_id, event, None)
            }
            10..=34 if has_posts => {
                let index = self.random.below(self.users[user].posts.len() as u64) as usize;
                let (post_id, version) = self.users[user].posts[index];
                let expected = match self.random.below(10) {
                    0..=6 => Some(version),
                    7 => Some(version - 1).filter(|v| *v >= 1).or(Some(version + 1)),
                    _ => None,
                };
                // A stale If-Match is rejected; every other edit applies.
                if expected.is_none_or(|e| e == version) {
                    self.users[user].posts[index].1 += 1;
                }
                let event = Event::PostEdited(PostEdited {
                    title: Some(self.random.text(60)),
                    body: Some(self.random.text(TEXT_BYTES)),
                });
                self.envelope(post_id, user_id, event, expected)
            }
            35..=44 if has_posts => {
                let index = self.random.below(self.users[user].posts.len() as u64) as usize;
                let (post_id, _) = self.users[user].posts.swap_remove(index);
                self.envelope(post_id, user_id, Event::PostDeleted, None)
            }
            _ => {
                let post_id = self.random.uuid();
                self.users[user].posts.push((post_id, 1));
                let event = Event::PostPublished(PostPublished {
                    title: self.random.text(60),
                    body: self.random.text(TEXT_BYTES),
                    format: PostFormat::Plain,
                });
                self.envelope(post_id, user_id, event, None)
            }
        }
    }

    fn envelope(
        &mut self,
        aggregate_id: Uuid,
        partition_key: Uuid,
        event: Event,
        expected_version: Option<i64>,
    ) -> Envelope {
        Envelope {
            event_id: self.random.uuid(),
            aggregate_id,
            partition_key,
            command_id: self.random.uuid(),
            idempotency: None,
            expected_version,
            accepted_at: self.clock,
            event,
        }
    }
}

/// A small, fast, seeded generator: the benchmark's log is the same for the same seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn uuid(&mut self) -> Uuid {
        let bytes = (u128::from(self.next()) << 64 | u128::from(self.next())).to_be_bytes();
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    /// About `len` bytes of lower-case words.
    fn text(&mut self, len: usize) -> String {
        const WORDS: &[&str] = &[
            "event",
            "log",
            "replay",
            "kafka",
            "partition",
            "offset",
            "read",
            "model",
            "user",
            "post",
            "version",
            "command",
            "query",
            "scale",
            "million",
            "batch",
            "commit",
            "decide",
            "apply",
            "stream",
            "projection",
            "consistent",
            "token",
            "durable",
        ];
        let mut text = String::with_capacity(len + 16);
        while text.len() < len {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(WORDS[self.below(WORDS.len() as u64) as usize]);
        }
        text.truncate(len);
        text
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Live

struct LiveProjector {
    stop: oneshot::Sender<()>,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl LiveProjector {
    async fn start(config: projector::Config) -> anyhow::Result<LiveProjector> {
        let app = projector::Application::build(config).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Ok(LiveProjector { stop, running })
    }

    /// Waits until the live read model has projected `events` records of `topic`.
    async fn wait_for(&self, events: i64, database_url: &str, topic: &str) -> anyhow::Result<()> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(database_url)
            .await?;
        let (mut last, mut moved_at, mut said) = (0, Instant::now(), Instant::now());
        loop {
            ensure!(
                !self.running.is_finished(),
                "the live projector stopped; its log says why"
            );
            let done = projected(&pool, topic).await?;
            if done >= events {
                break;
            }
            if done > last {
                (last, moved_at) = (done, Instant::now());
            }
            ensure!(
                moved_at.elapsed() < Duration::from_secs(120),
                "the live projector has not moved for 120 s, at {done}/{events}"
            );
            if said.elapsed() > Duration::from_secs(5) {
                said = Instant::now();
                say(format!("    {done}/{events} projected"));
            }
            // A benchmark's progress poll, not a test's synchronisation.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        pool.close().await;
        Ok(())
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.running.await?
    }
}

async fn projected(pool: &PgPool, topic: &str) -> anyhow::Result<i64> {
    let done: Option<i64> = sqlx::query_scalar(
        "SELECT sum(next_offset)::bigint FROM public.projector_offsets WHERE topic = $1",
    )
    .bind(topic)
    .fetch_one(pool)
    .await?;
    Ok(done.unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// 4. Baseline

async fn row_counts(pool: &PgPool, schema: &str) -> anyhow::Result<Vec<TableRows>> {
    let mut rows = Vec::new();
    for table in TABLES {
        let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.{table}"))
            .fetch_one(pool)
            .await?;
        rows.push(TableRows { table, rows: count });
    }
    Ok(rows)
}

/// Copies the rebuilt rows out (untimed), then times loading them with `COPY ... FROM STDIN`
/// into tables the migrations create fresh. Returns the bytes loaded and the seconds it took.
async fn copy_baseline(
    database_url: &str,
    generation: &str,
    topic: &str,
) -> anyhow::Result<(u64, f64)> {
    let mut conn = PgConnection::connect(database_url).await?;
    sqlx::query(&format!("CREATE SCHEMA {BASELINE_SCHEMA}"))
        .execute(&mut conn)
        .await?;
    let mut dumps = Vec::new();
    for table in TABLES {
        let mut out = conn
            .copy_out_raw(&format!(
                "COPY {generation}.{table} TO STDOUT (FORMAT binary)"
            ))
            .await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = futures::StreamExt::next(&mut out).await {
            bytes.extend_from_slice(&chunk?);
        }
        dumps.push((table, bytes));
    }
    let baseline =
        projector::store::Store::connect_lazy_in_schema(database_url, BASELINE_SCHEMA, topic, 1)?;
    baseline.migrate().await?;
    baseline.pool().close().await;

    let started = Instant::now();
    let mut tx = conn.begin().await?;
    let mut loaded = 0;
    for (table, bytes) in &dumps {
        let mut copy = tx
            .copy_in_raw(&format!(
                "COPY {BASELINE_SCHEMA}.{table} FROM STDIN (FORMAT binary)"
            ))
            .await?;
        for chunk in bytes.chunks(1 << 20) {
            copy.send(chunk).await?;
        }
        copy.finish().await?;
        loaded += bytes.len() as u64;
    }
    tx.commit().await?;
    Ok((loaded, started.elapsed().as_secs_f64()))
}

// ---------------------------------------------------------------------------------------------
// 5. Report

impl Machine {
    fn read(postgres: String) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: memory_kib / 1024.0 / 1024.0,
            postgres: postgres
                .split(" on ")
                .next()
                .unwrap_or(&postgres)
                .to_owned(),
        }
    }
}

fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nrebuild benchmark: {} events, {} partitions, batches of {}, log read from {}",
        r.events,
        r.partitions,
        r.batch_size,
        match r.source {
            Source::Memory => "memory",
            Source::Broker => "the broker",
        }
    );
    let _ = writeln!(
        out,
        "machine: {} cores ({}), {:.0} GiB, {}; everything on it",
        r.machine.cores, r.machine.cpu, r.machine.memory_gib, r.machine.postgres
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "| step | seconds | events/s |");
    let _ = writeln!(out, "|---|---:|---:|");
    let line = |out: &mut String, step: &str, secs: f64| {
        let _ = writeln!(
            out,
            "| {step} | {secs:.1} | {:.0} |",
            r.events as f64 / secs
        );
    };
    line(&mut out, "fill the log", r.fill_secs);
    line(&mut out, "live projection", r.live_projection_secs);
    line(&mut out, "**rebuild, verified**", r.rebuild_secs);
    let _ = writeln!(
        out,
        "| (of which the comparison) | {:.1} | |",
        r.verify_compare_secs
    );
    let _ = writeln!(
        out,
        "| COPY of the rebuilt rows ({} MB) | {:.1} | |",
        r.copy_bytes / 1_000_000,
        r.copy_secs
    );
    let _ = writeln!(out);
    let rows = r
        .rows
        .iter()
        .map(|t| format!("{} {}", t.table, t.rows))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(out, "rows: {rows}");
    let _ = writeln!(
        out,
        "live projector held for {} ms by the verification",
        r.live_held_ms
    );
    let _ = writeln!(
        out,
        "rebuild / COPY = {:.2} (the rebuild decides, writes and verifies in {:.2}x the time \
         PostgreSQL takes to load its result)",
        r.rebuild_to_copy_ratio, r.rebuild_to_copy_ratio
    );
    out
}
