//! `projector rebuild`: projects the whole log into a new read-model generation and verifies it
//! against the live read model, without touching the live one.
//!
//! 1. The generation: the newest one still `building` is resumed, else `generation_<n+1>` is
//!    created (see [`generations`]). Its schema gets the unchanged
//!    migrations and its store sends no progress notices, so the query API never takes its
//!    progress for the live one's.
//! 2. Bulk projection: a `Replay` claims every partition of the generation and reads the log
//!    from the generation's own `projector_offsets` (0 for a new one) in large batches
//!    (`--batch-size`), up to where the live read model stands. Every batch commits with its
//!    offsets, so an interrupted run (Ctrl-C, kill, `--max-events`) loses nothing and the next
//!    run resumes from there.
//! 3. Catch-up and verification, exactly as `verify` does (`compare_with_live`): a
//!    few unlocked rounds towards the moving live position, a short hold of the live
//!    projector's commits for the last stretch, and a table-by-table comparison of the two
//!    generations at that one point of the log.
//! 4. The verdict in the catalogue: `ready` when identical, `failed` (kept for inspection, never
//!    resumed) when rows differ; `building` when stopped before the end.
//!
//! The live read model is only read (and its commits held for the last catch-up, as by
//! `verify`). `projector switch` ([`switch`](crate::switch)) makes a ready generation active.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};

use crate::compare::{Comparison, TableDiff, compare_with_live, write_differences, write_tables};
use crate::config::{Config, RebuildArgs};
use crate::generations::{self, GenerationState, offsets_text};
use crate::replay::{EventLimitReached, LogSource, Replay};
use crate::store::{Store, check_live_schema};

/// The generation's owner name in its own `projector_offsets`.
const REBUILD_OWNER: &str = "rebuild";

/// Stopped by the `interrupted` future (Ctrl-C, SIGTERM).
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
struct Interrupted;

/// What a rebuild run did.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    pub topic: String,
    pub generation: String,
    /// Whether this run went on with a generation an earlier run left `building`.
    pub resumed: bool,
    /// `Ready`, `Failed`, or `Building` when it stopped before the end.
    pub state: GenerationState,
    /// Records projected by this run.
    pub events_projected: u64,
    /// Records projected into the generation in all, by every run.
    pub events: i64,
    /// Why it stopped before the end, when it did.
    pub stopped: Option<String>,
    /// The verification, when it got that far.
    pub comparison: Option<Comparison>,
}

impl RebuildReport {
    pub fn is_ready(&self) -> bool {
        self.state == GenerationState::Ready
    }

    pub fn table(&self, name: &str) -> Option<&TableDiff> {
        self.comparison
            .as_ref()
            .and_then(|c| c.tables.iter().find(|t| t.table == name))
    }
}

/// `projector rebuild`: rebuilds, prints the report, and says how it went as the exit status:
/// 0 ready, 1 rows differ (the generation is marked failed), 2 could not rebuild, 3 stopped
/// before the end (run again to resume).
pub async fn run(
    config: &Config,
    args: &RebuildArgs,
    interrupted: impl Future<Output = ()>,
) -> ExitCode {
    match rebuild(config, args, interrupted).await {
        Ok(report) => {
            println!("{report}");
            match report.state {
                GenerationState::Ready => ExitCode::SUCCESS,
                GenerationState::Failed => ExitCode::from(1),
                _ => ExitCode::from(3),
            }
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "could not rebuild");
            println!("could not rebuild: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Rebuilds into the next generation, or resumes the one left `building`. Differences are in
/// the report (and the generation is `failed`); an error means it could not tell, and the
/// generation stays `building` for the next run. Stops, resumable, when `interrupted` resolves
/// or after `--max-events`.
pub async fn rebuild(
    config: &Config,
    args: &RebuildArgs,
    interrupted: impl Future<Output = ()>,
) -> anyhow::Result<RebuildReport> {
    let source = LogSource::Kafka {
        brokers: config.kafka_brokers.clone(),
    };
    rebuild_from(config, args, &source, interrupted).await
}

/// [`rebuild`], reading the log from `source`.
pub async fn rebuild_from(
    config: &Config,
    args: &RebuildArgs,
    source: &LogSource,
    interrupted: impl Future<Output = ()>,
) -> anyhow::Result<RebuildReport> {
    let live = generations::connect(&config.database_url).await?;
    check_live_schema(&live).await?;
    let Some(lock) = generations::try_lock(&config.database_url).await? else {
        anyhow::bail!("another rebuild or drop-generation is running on this database");
    };
    let outcome = rebuild_locked(config, args, source, &live, interrupted).await;
    // Failing to unlock only delays that: the session's end releases it too.
    if let Err(e) = generations::release(lock).await {
        tracing::warn!(
            error = format!("{e:#}"),
            "cannot release the generations lock"
        );
    }
    live.close().await;
    outcome
}

async fn rebuild_locked(
    config: &Config,
    args: &RebuildArgs,
    source: &LogSource,
    live: &sqlx::PgPool,
    interrupted: impl Future<Output = ()>,
) -> anyhow::Result<RebuildReport> {
    let topic = &config.kafka_topic;
    let bounds = source.bounds(topic).await?;
    let (generation, resumed) = generations::resume_or_create(live).await?;
    let events_before = generations::events_in(live, &generation, topic).await?;
    tracing::info!(
        %generation,
        resumed,
        events = events_before,
        "rebuilding the read model"
    );
    let store =
        Store::connect_lazy_in_schema(&config.database_url, &generation, topic, 2)?.replay();

    let outcome = tokio::select! {
        outcome = project_and_verify(config, args, source, live, &store, &generation, bounds) => outcome,
        () = interrupted => Err(anyhow!(Interrupted)),
    };
    store.pool().close().await;

    let events = generations::events_in(live, &generation, topic).await?;
    let events_projected = u64::try_from(events - events_before).unwrap_or(0);
    let (state, stopped, comparison) = match outcome {
        Ok(comparison) => {
            let identical = comparison.tables.iter().all(TableDiff::is_identical);
            let state = if identical {
                GenerationState::Ready
            } else {
                GenerationState::Failed
            };
            (state, None, Some(comparison))
        }
        Err(e) if e.is::<Interrupted>() || e.is::<EventLimitReached>() => {
            (GenerationState::Building, Some(e.to_string()), None)
        }
        Err(e) => {
            generations::record(live, &generation, GenerationState::Building, events).await?;
            return Err(e.context(format!(
                "{generation} stays building; run rebuild again to resume it"
            )));
        }
    };
    generations::record(live, &generation, state, events).await?;
    tracing::info!(%generation, %state, events, events_projected, "rebuild run ended");
    Ok(RebuildReport {
        topic: topic.clone(),
        generation,
        resumed,
        state,
        events_projected,
        events,
        stopped,
        comparison,
    })
}

async fn project_and_verify(
    config: &Config,
    args: &RebuildArgs,
    source: &LogSource,
    live: &sqlx::PgPool,
    store: &Store,
    generation: &str,
    bounds: BTreeMap<i32, (i64, i64)>,
) -> anyhow::Result<Comparison> {
    store
        .migrate()
        .await
        .with_context(|| format!("cannot create the tables of {generation}"))?;
    let partitions: Vec<i32> = bounds.keys().copied().collect();
    let mut replay = Replay::start(
        source,
        &config.kafka_topic,
        store.clone(),
        REBUILD_OWNER,
        &partitions,
        args.batch_size,
        "rebuilding",
    )
    .await?;
    replay.stop_after(args.max_events);
    let compared = compare_with_live(
        config,
        source,
        live,
        &mut replay,
        generation,
        bounds,
        args.max_diff_rows,
    )
    .await;
    replay.finish();
    compared
}

impl fmt::Display for RebuildReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "generation {} ({}) of topic {:?}: {} events projected in this run, {} in all",
            self.generation,
            if self.resumed { "resumed" } else { "new" },
            self.topic,
            self.events_projected,
            self.events
        )?;
        let Some(comparison) = &self.comparison else {
            let why = self.stopped.as_deref().unwrap_or("stopped");
            return write!(
                f,
                "STOPPED ({why}): {} stays building; run `projector rebuild` again to resume it",
                self.generation
            );
        };
        writeln!(
            f,
            "verified against the live read model at offsets (partition:next offset) {}; live \
             projector held for {} ms",
            offsets_text(&comparison.offsets),
            live_held_ms(comparison.live_held_for)
        )?;
        writeln!(f)?;
        write_tables(f, &comparison.tables)?;
        if self.is_ready() {
            return write!(
                f,
                "READY: {} equals the live read model; `projector switch {}` makes it active",
                self.generation, self.generation
            );
        }
        let differing = comparison
            .tables
            .iter()
            .filter(|t| !t.is_identical())
            .count();
        writeln!(
            f,
            "DIFFERENT: {differing} of {} tables of {} differ from the live read model; it is \
             marked failed",
            comparison.tables.len(),
            self.generation
        )?;
        write_differences(f, &comparison.tables)
    }
}

fn live_held_ms(held: Duration) -> u128 {
    held.as_millis()
}
