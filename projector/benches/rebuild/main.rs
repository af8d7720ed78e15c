//! The rebuild benchmark: how long `projector rebuild` takes to project and verify a log of N
//! events, and how that compares with the fastest bulk load PostgreSQL itself can do of the same
//! rows on the same machine, measured in the same run.
//!
//! `./dev bench rebuild --events 1000000` runs it against a database (and, with `--source
//! broker`, a broker) of its own. Directly: `cargo bench -p projector --bench rebuild --
//! --events 1000000` with `DATABASE_URL` (any database of the server: the benchmark creates its
//! own next to it) and, for `--source broker`, `KAFKA_BROKERS`.
//!
//! 1. **Fill** ([`log`]): N events of the expected load's shape (1 KB posts and bios;
//!    publishes, edits with right, stale and no `If-Match`, profile updates, deletes, retried
//!    commands) from a seeded generator ([`workload`]). `--source broker` produces them into a
//!    new topic in large batches and reads them back from the broker in the steps below;
//!    `--source memory` (the default) keeps the same records in memory, so that the figure is
//!    the projection's and PostgreSQL's alone, apart from the broker's fetch speed (see
//!    BENCHMARKS.md).
//! 2. **Live** ([`live`]): the live read model is projected first. With the broker, by the
//!    projector as it runs in production (its catch-up rate is reported); in memory, by the same
//!    batch transaction, batch after batch.
//! 3. **Rebuild** (here): `projector rebuild` projects the log into `generation_1` and verifies
//!    it, table by table, against the live read model. This is the figure.
//! 4. **Baseline** ([`baseline`]): the rows the rebuild wrote, copied out beforehand, are loaded
//!    with `COPY ... FROM STDIN (FORMAT binary)` in one transaction into fresh tables that the
//!    same migrations created (same indexes and constraints).
//! 5. **Report** ([`report`]): the figures, the machine and the ratio; `--json` writes them to a
//!    file.
//!
//! Everything runs in a database of its own ([`database`]), dropped afterwards unless `--keep`.

mod args;
mod baseline;
mod database;
mod live;
mod log;
mod report;
mod workload;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Parser;
use projector::LogSource;
use projector::config::RebuildArgs;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::args::{Args, Source};
use crate::baseline::BASELINE_SCHEMA;
use crate::database::BenchDatabase;
use crate::live::LiveProjector;
use crate::report::{Machine, Report};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    service_kit::telemetry::init(service_kit::telemetry::LogFormat::Text)?;
    tokio::runtime::Runtime::new()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.events > 0, "--events must be at least 1");
    ensure!(args.partitions > 0, "--partitions must be at least 1");
    let bench = BenchDatabase::create(&args.database_url).await?;
    let topic = format!("rebuild-bench-{}", Uuid::new_v4().simple());
    let outcome = measure(&args, &bench, &topic).await;
    if !args.keep {
        bench.drop().await;
        if args.source == Source::Broker {
            log::delete_topic(&args.kafka_brokers, &topic).await;
        }
    } else {
        eprintln!("kept database {} and topic {topic}", bench.name);
    }
    let report = outcome?;
    print!("{}", report.render());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The log and the live read model, steps 1 and 2.
struct Projected {
    events: u64,
    fill_secs: f64,
    live_secs: f64,
    /// Where the rebuild reads the log.
    source: LogSource,
}

async fn measure(args: &Args, bench: &BenchDatabase, topic: &str) -> anyhow::Result<Report> {
    let config = projector_config(args, &bench.url, topic);

    let projected = match args.source {
        Source::Broker => fill_and_project_via_broker(args, &config, topic).await?,
        Source::Memory => fill_and_project_in_memory(args, &config).await?,
    };
    let events = projected.events;

    eprintln!("3/4 projector rebuild (projection and verification)");
    let rebuild_args = RebuildArgs {
        batch_size: args.batch_size,
        max_events: None,
        max_diff_rows: 20,
    };
    let started = Instant::now();
    let rebuilt = projector::rebuild::rebuild_from(
        &config,
        &rebuild_args,
        &projected.source,
        std::future::pending(),
    )
    .await?;
    let rebuild_secs = started.elapsed().as_secs_f64();
    ensure!(rebuilt.is_ready(), "the rebuild is not ready:\n{rebuilt}");
    let comparison = rebuilt
        .comparison
        .as_ref()
        .context("a ready rebuild has a comparison")?;
    eprintln!(
        "    READY in {rebuild_secs:.1} s ({:.0} events/s)",
        events as f64 / rebuild_secs
    );

    eprintln!("4/4 COPY of the same rows into fresh tables ({BASELINE_SCHEMA})");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&bench.url)
        .await
        .with_context(|| format!("cannot connect to the benchmark's database {}", bench.name))?;
    let rows = baseline::row_counts(&pool, &rebuilt.generation).await?;
    let (copy_bytes, copy_secs) =
        baseline::copy_baseline(&bench.url, &rebuilt.generation, topic).await?;
    eprintln!("    {} MB in {copy_secs:.1} s", copy_bytes / 1_000_000);
    let postgres: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&pool)
        .await?;
    pool.close().await;

    Ok(Report {
        machine: Machine::read(postgres),
        source: args.source,
        events,
        partitions: args.partitions,
        batch_size: args.batch_size,
        fill_secs: projected.fill_secs,
        live_projection_secs: projected.live_secs,
        rebuild_secs,
        rebuild_events_per_sec: events as f64 / rebuild_secs,
        verify_compare_secs: comparison.compared_in.as_secs_f64(),
        live_held_ms: comparison.live_held_for.as_millis(),
        rows,
        copy_bytes,
        copy_secs,
        rebuild_to_copy_ratio: rebuild_secs / copy_secs,
    })
}

/// Steps 1 and 2 through the broker: the topic filled, then projected by the live projector.
async fn fill_and_project_via_broker(
    args: &Args,
    config: &projector::Config,
    topic: &str,
) -> anyhow::Result<Projected> {
    eprintln!("1/4 filling topic {topic} with {} events", args.events);
    let started = Instant::now();
    log::create_topic(&args.kafka_brokers, topic, args.partitions).await?;
    let produced = log::fill(args, topic).await?;
    let fill_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "    {produced} events in {fill_secs:.1} s ({:.0}/s)",
        produced as f64 / fill_secs
    );

    eprintln!("2/4 projecting them into the live read model (the projector as it runs live)");
    let started = Instant::now();
    let live = LiveProjector::start(config.clone()).await?;
    let expected = i64::try_from(produced).context("more events than a Kafka offset holds")?;
    live.wait_for(expected, &config.database_url, topic).await?;
    live.stop().await?;
    let live_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "    {live_secs:.1} s ({:.0} events/s)",
        produced as f64 / live_secs
    );
    Ok(Projected {
        events: produced,
        fill_secs,
        live_secs,
        source: LogSource::Kafka {
            brokers: args.kafka_brokers.clone(),
        },
    })
}

/// Steps 1 and 2 in memory: the same records, projected into the live read model by the batch
/// transaction.
async fn fill_and_project_in_memory(
    args: &Args,
    config: &projector::Config,
) -> anyhow::Result<Projected> {
    eprintln!("1/4 generating {} events in memory", args.events);
    let started = Instant::now();
    let memory = log::generate(args);
    let fill_secs = started.elapsed().as_secs_f64();

    eprintln!("2/4 projecting them into the live read model (batch after batch)");
    let started = Instant::now();
    live::project_in_memory(config, &memory, args.batch_size).await?;
    let live_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "    {live_secs:.1} s ({:.0} events/s)",
        args.events as f64 / live_secs
    );
    Ok(Projected {
        events: args.events,
        fill_secs,
        live_secs,
        source: LogSource::Recorded(Arc::new(memory.log)),
    })
}

/// The projector's settings for the benchmark's database and topic.
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
