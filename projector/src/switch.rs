//! `projector switch <generation>`: makes a `ready` generation the active one.
//!
//! 1. Refusals first: only a catalogued `generation_<n>` that is `ready` can be switched to,
//!    and not while a rebuild or drop-generation runs (the generations' advisory lock).
//! 2. Catch-up without holding anything: a ready generation stands where the live read model
//!    stood when it was verified; a `Replay` projects it up to the active generation's current
//!    offsets.
//! 3. The switch, in one transaction on the live database: the catalogue rows are locked
//!    `FOR UPDATE` (each live batch takes its generation's row `FOR KEY SHARE` first, so batches
//!    queue behind the switch and see its outcome, and no batch holds offset rows the switch
//!    must update: no deadlock), `LOCK TABLE <active>.projector_offsets IN SHARE MODE` holds the
//!    live projector's commits (readers are not affected; the same lock `verify` takes), the
//!    active generation's offsets
//!    are read under the lock and the new generation is projected up to exactly them (checked).
//!    Then, still in that transaction: every epoch of the old generation's `projector_offsets`
//!    is bumped, which fences whatever batch the live projector has in flight there; the
//!    catalogue says new `active`, old `retired`; and `pg_notify('read_model_generation', <new>)`
//!    tells the services. Commit makes all of it visible at once. The old generation stays
//!    until `drop-generation` removes it.
//!
//! The services follow: a live batch whose generation is no longer active commits nothing, and
//! the projector moves its [`ActiveStore`](crate::store::ActiveStore) to the new generation;
//! the query API moves its pool on the notice. See docs/operations.md, "Switch to a rebuilt
//! generation".

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use events::progress::{FIRST_GENERATION, GENERATION_CHANNEL};
use sqlx::{Connection, PgConnection};

use crate::config::{Config, SwitchArgs};
use crate::generations::{
    self, CATALOGUE, GENERATION_PREFIX, GenerationState, LOCK_TIMEOUT, generation_number,
    offsets_of, offsets_text,
};
use crate::replay::{LogSource, Replay, check_within_log};
use crate::store::{Store, check_live_schema};

/// The catching-up run's owner name in the new generation's `projector_offsets`.
const SWITCH_OWNER: &str = "switch";

/// Why a switch was refused.
#[derive(Debug, thiserror::Error)]
pub enum SwitchRefused {
    #[error("{0:?} is not a generation to switch to: only {GENERATION_PREFIX}<n> schemas are")]
    NotAGeneration(String),
    #[error("there is no generation {0}")]
    Unknown(String),
    #[error(
        "{name} is {state}, not ready: only a generation `rebuild` verified can be switched to"
    )]
    NotReady {
        name: String,
        state: GenerationState,
    },
    #[error("a rebuild or drop-generation is running on this database: wait for it")]
    RebuildRunning,
}

/// What a switch did.
#[derive(Debug, Clone)]
pub struct SwitchReport {
    pub topic: String,
    /// The generation that was active.
    pub from: String,
    /// The generation now active.
    pub to: String,
    /// Next offset per partition: where both stood at the switch.
    pub offsets: BTreeMap<i32, i64>,
    /// Records projected into the new generation to catch up.
    pub events_projected: u64,
    /// How long the live projector's commits were held.
    pub live_held_for: Duration,
}

/// `projector switch`: switches, prints the report, and says how it went as the exit status:
/// 0 switched, 1 refused, 2 could not switch (nothing changed).
pub async fn run(
    config: &Config,
    args: &SwitchArgs,
    interrupted: impl Future<Output = ()>,
) -> ExitCode {
    match switch(config, &args.name, interrupted).await {
        Ok(Ok(report)) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Ok(Err(refused)) => {
            println!("refused: {refused}");
            ExitCode::from(1)
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "could not switch");
            println!("could not switch to {}: {e:#}", args.name);
            ExitCode::from(2)
        }
    }
}

/// Switches the services to generation `name`. The outer error is a failure (nothing
/// switched); the inner one a refusal.
pub async fn switch(
    config: &Config,
    name: &str,
    interrupted: impl Future<Output = ()>,
) -> anyhow::Result<Result<SwitchReport, SwitchRefused>> {
    if generation_number(name).is_none() {
        return Ok(Err(SwitchRefused::NotAGeneration(name.to_owned())));
    }
    let live = generations::connect(&config.database_url).await?;
    check_live_schema(&live).await?;
    let Some(lock) = generations::try_lock(&config.database_url).await? else {
        live.close().await;
        return Ok(Err(SwitchRefused::RebuildRunning));
    };
    let outcome = tokio::select! {
        outcome = switch_locked(config, &live, name) => outcome,
        () = interrupted => Err(anyhow!("interrupted; nothing was switched")),
    };
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

/// The active generation and `name`'s state, or why `name` cannot be switched to.
async fn states<'c, E>(
    executor: E,
    name: &str,
    for_update: bool,
) -> anyhow::Result<Result<String, SwitchRefused>>
where
    E: sqlx::PgExecutor<'c>,
{
    let rows: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT name, state FROM {CATALOGUE}
         WHERE name = $1 OR state = 'active' ORDER BY name{}",
        if for_update { " FOR UPDATE" } else { "" }
    ))
    .bind(name)
    .fetch_all(executor)
    .await
    .context("cannot read the generations catalogue (is the database migrated?)")?;
    let Some((_, state)) = rows.iter().find(|(n, _)| n == name) else {
        return Ok(Err(SwitchRefused::Unknown(name.to_owned())));
    };
    let state = GenerationState::parse(state)?;
    if state != GenerationState::Ready {
        return Ok(Err(SwitchRefused::NotReady {
            name: name.to_owned(),
            state,
        }));
    }
    let active: Vec<&String> = rows
        .iter()
        .filter(|(_, s)| s == GenerationState::Active.as_str())
        .map(|(n, _)| n)
        .collect();
    ensure!(
        active.len() == 1,
        "the catalogue has {} active generations, not one: {active:?}",
        active.len()
    );
    Ok(Ok(active[0].clone()))
}

async fn switch_locked(
    config: &Config,
    live: &sqlx::PgPool,
    name: &str,
) -> anyhow::Result<Result<SwitchReport, SwitchRefused>> {
    let topic = &config.kafka_topic;
    let active = match states(live, name, false).await? {
        Ok(active) => active,
        Err(refused) => return Ok(Err(refused)),
    };
    let source = LogSource::Kafka {
        brokers: config.kafka_brokers.clone(),
    };
    let mut bounds = source.bounds(topic).await?;
    let partitions: Vec<i32> = bounds.keys().copied().collect();
    let store = Store::connect_lazy_in_schema(&config.database_url, name, topic, 2)?.replay();
    let mut replay = Replay::start(
        &source,
        topic,
        store.clone(),
        SWITCH_OWNER,
        &partitions,
        config.batch_size,
        "catching up",
    )
    .await?;

    let switched = async {
        // Unlocked: most of the catching up, while the live projector goes on.
        let targets = offsets_of(live, &active, topic, &partitions).await?;
        check_within_log(&mut bounds, &source, topic, &targets).await?;
        replay.project_up_to(&targets).await?;

        let mut conn = PgConnection::connect(&config.database_url)
            .await
            .context("cannot connect to PostgreSQL")?;
        let mut tx = conn.begin().await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            .execute(&mut *tx)
            .await?;
        // Locked in the order every writer of the catalogue takes: catalogue, then offsets.
        let locked_active = match states(&mut *tx, name, true).await? {
            Ok(active) => active,
            Err(refused) => return Ok(Err(refused)),
        };
        ensure!(
            locked_active == active,
            "the active generation changed from {active} to {locked_active} meanwhile"
        );
        let held_since = Instant::now();
        sqlx::query(&format!(
            "LOCK TABLE {active}.projector_offsets IN SHARE MODE"
        ))
        .execute(&mut *tx)
        .await
        .context("cannot hold the live projector (lock on projector_offsets)")?;
        tracing::info!(%active, "live projector held");
        let offsets = offsets_of(&mut *tx, &active, topic, &partitions).await?;
        check_within_log(&mut bounds, &source, topic, &offsets).await?;
        replay.project_up_to(&offsets).await?;
        let caught_up = offsets_of(&mut *tx, name, topic, &partitions).await?;
        ensure!(
            caught_up == offsets,
            "{name} is at {caught_up:?}, not at the active generation's {offsets:?}"
        );

        // Fences the live projector's batch in flight: it commits only at the epoch it claimed.
        sqlx::query(&format!(
            "UPDATE {active}.projector_offsets SET epoch = epoch + 1 WHERE topic = $1"
        ))
        .bind(topic)
        .execute(&mut *tx)
        .await?;
        let events: i64 = offsets.values().sum();
        sqlx::query(&format!(
            "UPDATE {CATALOGUE}
             SET state = CASE WHEN name = $1 THEN 'active' ELSE 'retired' END,
                 events = CASE WHEN name = $1 THEN $3 ELSE events END
             WHERE name IN ($1, $2)"
        ))
        .bind(name)
        .bind(&active)
        .bind(events)
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(GENERATION_CHANNEL)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let live_held_for = held_since.elapsed();
        tracing::info!(
            from = %active,
            to = name,
            held_ms = live_held_for.as_millis() as u64,
            "switched"
        );
        Ok(Ok(SwitchReport {
            topic: topic.clone(),
            from: active.clone(),
            to: name.to_owned(),
            offsets,
            events_projected: replay.projected(),
            live_held_for,
        }))
    }
    .await;
    replay.finish();
    store.pool().close().await;
    switched
}

impl fmt::Display for SwitchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "topic {:?}: {} caught up by {} events to offsets (partition:next offset) {}; live \
             projector held for {} ms",
            self.topic,
            self.to,
            self.events_projected,
            offsets_text(&self.offsets),
            self.live_held_for.as_millis()
        )?;
        write!(
            f,
            "SWITCHED: {} is active, {} is retired",
            self.to, self.from
        )?;
        if self.from != FIRST_GENERATION {
            write!(
                f,
                " (drop it with `projector drop-generation {}`)",
                self.from
            )?;
        }
        Ok(())
    }
}
