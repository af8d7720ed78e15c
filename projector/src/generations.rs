//! Read-model generations and their catalogue, `public.read_model_generations`.
//!
//! A generation is a whole read model in a PostgreSQL schema of its own, made by the unchanged
//! migrations with that schema alone on the `search_path` (as `verify`'s scratch schema is).
//! The live read model is the schema `public`, catalogued as the `active` generation; rebuilds
//! make `generation_1`, `generation_2`, ... (`building`, then `ready` or `failed`). The
//! catalogue lives in `public` beside the live read model and is no generation's table: its
//! migration does nothing when run inside a generation schema.
//!
//! Rebuilding and dropping take one session-level advisory lock, so that two rebuilds never
//! project into the same generation and a generation is never dropped under a rebuild.

use std::collections::BTreeMap;
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use events::progress::FIRST_GENERATION;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::{Config, DropGenerationArgs};

/// The catalogue, in `public` beside the first generation's read model: every database has it,
/// whichever generation is active.
pub const CATALOGUE: &str = "public.read_model_generations";
/// Prefix of every generation schema but the first one.
pub const GENERATION_PREFIX: &str = "generation_";
/// Bound on waiting for a lock on the live database (its offsets table, or a schema being
/// dropped): the live projector's commits queue behind the wait.
pub(crate) const LOCK_TIMEOUT: &str = "30s";
/// The advisory lock key held by a rebuild and by drop-generation: "rebuild" in ASCII.
const GENERATIONS_LOCK: i64 = 0x0072_6562_7569_6c64;

/// Where a generation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationState {
    Building,
    Ready,
    Active,
    Retired,
    Failed,
}

impl GenerationState {
    pub fn as_str(self) -> &'static str {
        match self {
            GenerationState::Building => "building",
            GenerationState::Ready => "ready",
            GenerationState::Active => "active",
            GenerationState::Retired => "retired",
            GenerationState::Failed => "failed",
        }
    }

    pub(crate) fn parse(text: &str) -> anyhow::Result<GenerationState> {
        [
            GenerationState::Building,
            GenerationState::Ready,
            GenerationState::Active,
            GenerationState::Retired,
            GenerationState::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
        .with_context(|| format!("unknown generation state {text:?}"))
    }
}

impl fmt::Display for GenerationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the catalogue.
#[derive(Debug, Clone)]
pub struct Generation {
    pub name: String,
    pub state: GenerationState,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Events projected into it; for the live read model, its position now.
    pub events: i64,
}

/// The generation number of a schema called `generation_<n>`.
pub fn generation_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(GENERATION_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// A small pool on the live database, failing fast when PostgreSQL is not there.
pub(crate) async fn connect(database_url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(database_url)
        .await
        .context("cannot connect to PostgreSQL")
}

/// Holds the generations' advisory lock for as long as the connection lives; None when someone
/// else holds it.
pub(crate) async fn try_lock(database_url: &str) -> anyhow::Result<Option<PgConnection>> {
    let mut conn = PgConnection::connect(database_url)
        .await
        .context("cannot connect to PostgreSQL")?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(GENERATIONS_LOCK)
        .fetch_one(&mut conn)
        .await?;
    Ok(locked.then_some(conn))
}

/// Releases the lock [`try_lock`] took, then closes its connection. Unlocked explicitly, since
/// a closed session's backend ends (and drops its locks) only some time after the client has
/// moved on: a rebuild, switch or drop right after another would find the lock still held.
pub(crate) async fn release(mut lock: PgConnection) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(GENERATIONS_LOCK)
        .execute(&mut lock)
        .await
        .context("cannot release the generations lock")?;
    lock.close().await?;
    Ok(())
}

/// name, state, created_at, completed_at, events.
type CatalogueRow = (
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<i64>,
);

/// Every catalogued generation, oldest first (the first one, `public`, first of all).
pub async fn list(live: &PgPool) -> anyhow::Result<Vec<Generation>> {
    let rows: Vec<CatalogueRow> = sqlx::query_as(&format!(
        "SELECT name, state, created_at, completed_at, events FROM {CATALOGUE}"
    ))
    .fetch_all(live)
    .await
    .context("cannot read the generations catalogue (is the database migrated?)")?;
    // The first generation's row counts no events: its offsets do.
    let first_events: i64 = sqlx::query_scalar(&format!(
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM {FIRST_GENERATION}.projector_offsets"
    ))
    .fetch_one(live)
    .await?;
    let mut generations = rows
        .into_iter()
        .map(|(name, state, created_at, completed_at, events)| {
            Ok(Generation {
                events: events.unwrap_or(if name == FIRST_GENERATION {
                    first_events
                } else {
                    0
                }),
                state: GenerationState::parse(&state)?,
                name,
                created_at,
                completed_at,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    generations.sort_by_key(|g| {
        (
            g.name != FIRST_GENERATION,
            generation_number(&g.name),
            g.created_at,
        )
    });
    Ok(generations)
}

/// The newest generation still `building`, to resume; or else a new one, created (schema and
/// catalogue row) with the next number. True when resumed. Call with the lock held.
pub(crate) async fn resume_or_create(live: &PgPool) -> anyhow::Result<(String, bool)> {
    let generations = list(live).await?;
    if let Some(building) = generations
        .iter()
        .filter(|g| g.state == GenerationState::Building)
        .max_by_key(|g| (generation_number(&g.name), g.created_at))
    {
        // Dropped by hand? Then it starts again from nothing.
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", building.name))
            .execute(live)
            .await?;
        return Ok((building.name.clone(), true));
    }
    // Numbers are never reused, also when a schema outlived its catalogue row.
    let schemas: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(GENERATION_PREFIX)
            .fetch_all(live)
            .await?;
    let next = generations
        .iter()
        .map(|g| g.name.as_str())
        .chain(schemas.iter().map(String::as_str))
        .filter_map(generation_number)
        .max()
        .unwrap_or(0)
        + 1;
    let name = format!("{GENERATION_PREFIX}{next}");
    let mut tx = live.begin().await?;
    sqlx::query(&format!(
        "INSERT INTO {CATALOGUE} (name, state) VALUES ($1, 'building')"
    ))
    .bind(&name)
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!("CREATE SCHEMA {name}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((name, false))
}

/// Records how far a generation got and, unless still `building`, how it ended. Only a
/// generation that is still `building` changes.
pub(crate) async fn record(
    live: &PgPool,
    name: &str,
    state: GenerationState,
    events: i64,
) -> anyhow::Result<()> {
    sqlx::query(&format!(
        "UPDATE {CATALOGUE}
         SET state = $2, events = $3,
             completed_at = CASE WHEN $2 = 'building' THEN NULL ELSE now() END
         WHERE name = $1 AND state = 'building'"
    ))
    .bind(name)
    .bind(state.as_str())
    .bind(events)
    .execute(live)
    .await
    .context("cannot update the generations catalogue")?;
    Ok(())
}

/// Events a generation has projected of `topic`: the sum of its stored offsets; 0 before its
/// tables exist.
pub(crate) async fn events_in(live: &PgPool, name: &str, topic: &str) -> anyhow::Result<i64> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("{name}.projector_offsets"))
        .fetch_one(live)
        .await?;
    if !exists {
        return Ok(0);
    }
    let events = sqlx::query_scalar(&format!(
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM {name}.projector_offsets WHERE topic = $1"
    ))
    .bind(topic)
    .fetch_one(live)
    .await?;
    Ok(events)
}

/// The active generation as the catalogue says, or the first one (`public`) when the database
/// has no catalogue yet.
pub async fn active_generation(pool: &PgPool) -> Result<String, sqlx::Error> {
    let has_catalogue: bool =
        sqlx::query_scalar(&format!("SELECT to_regclass('{CATALOGUE}') IS NOT NULL"))
            .fetch_one(pool)
            .await?;
    if !has_catalogue {
        return Ok(FIRST_GENERATION.to_owned());
    }
    let active: Option<String> = sqlx::query_scalar(&format!(
        "SELECT name FROM {CATALOGUE} WHERE state = 'active'"
    ))
    .fetch_optional(pool)
    .await?;
    Ok(active.unwrap_or_else(|| FIRST_GENERATION.to_owned()))
}

/// Next offset per partition stored in `schema`'s `projector_offsets`, 0 for a partition with
/// no row. A row for a partition the topic does not have is an error.
pub(crate) async fn offsets_of<'c, E>(
    executor: E,
    schema: &str,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<BTreeMap<i32, i64>>
where
    E: sqlx::PgExecutor<'c>,
{
    let rows: Vec<(i32, i64)> = sqlx::query_as(&format!(
        "SELECT partition, next_offset FROM {schema}.projector_offsets WHERE topic = $1"
    ))
    .bind(topic)
    .fetch_all(executor)
    .await?;
    let mut offsets: BTreeMap<i32, i64> = partitions.iter().map(|p| (*p, 0)).collect();
    for (partition, next_offset) in rows {
        let Some(slot) = offsets.get_mut(&partition) else {
            bail!(
                "{schema}.projector_offsets has partition {partition}, which topic {topic:?} does not have"
            );
        };
        *slot = next_offset;
    }
    Ok(offsets)
}

/// `0:12 1:40`: partition and next offset.
pub(crate) fn offsets_text(offsets: &BTreeMap<i32, i64>) -> String {
    offsets
        .iter()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a generation was not dropped.
#[derive(Debug, thiserror::Error)]
pub enum DropRefused {
    #[error(
        "{0:?} is not a generation that can be dropped: only {GENERATION_PREFIX}<n> schemas are \
         (public also holds the generations catalogue)"
    )]
    NotAGeneration(String),
    #[error("{0} is the active generation: the services use it")]
    Active(String),
    #[error("there is no generation {0}")]
    Unknown(String),
    #[error("a rebuild is running on this database: stop it first")]
    RebuildRunning,
}

/// Drops a generation that is not active: its schema and its catalogue row, together. The outer
/// error is a failure; the inner one a refusal.
pub async fn drop_generation(
    config: &Config,
    name: &str,
) -> anyhow::Result<Result<(), DropRefused>> {
    if generation_number(name).is_none() {
        return Ok(Err(DropRefused::NotAGeneration(name.to_owned())));
    }
    let live = connect(&config.database_url).await?;
    let Some(lock) = try_lock(&config.database_url).await? else {
        return Ok(Err(DropRefused::RebuildRunning));
    };
    let outcome = drop_locked(&live, name).await;
    release(lock).await?;
    live.close().await;
    outcome
}

async fn drop_locked(live: &PgPool, name: &str) -> anyhow::Result<Result<(), DropRefused>> {
    let mut tx = live.begin().await?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        .execute(&mut *tx)
        .await?;
    let state: Option<String> = sqlx::query_scalar(&format!(
        "SELECT state FROM {CATALOGUE} WHERE name = $1 FOR UPDATE"
    ))
    .bind(name)
    .fetch_optional(&mut *tx)
    .await
    .context("cannot read the generations catalogue (is the database migrated?)")?;
    if state.as_deref() == Some(GenerationState::Active.as_str()) {
        return Ok(Err(DropRefused::Active(name.to_owned())));
    }
    let schema_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
    if state.is_none() && !schema_exists {
        return Ok(Err(DropRefused::Unknown(name.to_owned())));
    }
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
        .execute(&mut *tx)
        .await
        .with_context(|| format!("cannot drop schema {name}"))?;
    sqlx::query(&format!("DELETE FROM {CATALOGUE} WHERE name = $1"))
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(generation = name, "generation dropped");
    Ok(Ok(()))
}

/// `projector generations`: prints the catalogue; exit 0, or 2 when it cannot be read.
pub async fn run_list(config: &Config) -> ExitCode {
    let listed = async {
        let live = connect(&config.database_url).await?;
        let generations = list(&live).await;
        live.close().await;
        generations
    }
    .await;
    match listed {
        Ok(generations) => {
            println!("{}", GenerationTable(&generations));
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot list the generations");
            println!("cannot list the generations: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `projector drop-generation <name>`: exit 0 dropped, 1 refused, 2 failed.
pub async fn run_drop(config: &Config, args: &DropGenerationArgs) -> ExitCode {
    match drop_generation(config, &args.name).await {
        Ok(Ok(())) => {
            println!("dropped {}", args.name);
            ExitCode::SUCCESS
        }
        Ok(Err(refused)) => {
            println!("refused: {refused}");
            ExitCode::from(1)
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot drop the generation");
            println!("cannot drop {}: {e:#}", args.name);
            ExitCode::from(2)
        }
    }
}

/// The catalogue as a table.
pub struct GenerationTable<'a>(pub &'a [Generation]);

impl fmt::Display for GenerationTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let time = |t: &DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
        let line = |name: &str, state: &str, events: &str, created: &str, completed: &str| {
            let line =
                format!("{name:<16} {state:<9} {events:>12}  {created:<19}  {completed:<19}");
            line.trim_end().to_owned()
        };
        write!(
            f,
            "{}",
            line("generation", "state", "events", "created", "completed")
        )?;
        for g in self.0 {
            write!(
                f,
                "\n{}",
                line(
                    &g.name,
                    g.state.as_str(),
                    &g.events.to_string(),
                    &time(&g.created_at),
                    &g.completed_at.as_ref().map(time).unwrap_or_default()
                )
            )?;
        }
        Ok(())
    }
}
