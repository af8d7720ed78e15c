//! `projector verify`: proves that the live read model is exactly what the log says.
//!
//! The procedure:
//!
//! 1. A *scratch generation*: a schema `verify_<random>` in the same database, and a second
//!    [`Store`] whose connections put only that schema on their `search_path`. The unchanged
//!    migrations create every table there, and the unchanged batch transaction fills them: the
//!    same code decides as in the live run. The scratch store sends no progress notices, which
//!    the query API would take for the live read model's progress.
//! 2. The log, read by a consumer of its own: no group membership (partitions are assigned by
//!    hand, from offset 0) and no commits, so the live projector's group never notices it.
//!    Steps 1 and 2 are the `replay` module, shared with `projector rebuild`,
//!    which also runs steps 3 to 5 ([`compare`](crate::compare)) against its new generation.
//! 3. Catch-up without holding anything: the live read model's offsets (`public.projector_offsets`)
//!    are read, and the scratch generation is projected up to them in large batches; again, a
//!    few times, while the live projector keeps moving on.
//! 4. One consistent point: in a transaction on a connection of its own, verify takes
//!    `LOCK TABLE public.projector_offsets IN SHARE MODE`. Every live batch ends by updating that
//!    table (and a claim writes it), so from then on no live batch commits and the committed
//!    live read model holds still at the offsets read under the lock. The scratch generation is
//!    projected up to exactly those offsets; then a `REPEATABLE READ` transaction takes its
//!    snapshot, which sees both generations at the same offsets (checked), and the lock is
//!    released. The live projector waited only for the last catch-up; the comparison runs in the
//!    snapshot while the live projector goes on.
//! 5. The comparison, table by table (every read-model table, the decisions, the idempotency
//!    keys, the event history, the dead letters), over every column except the wall-clock times
//!    of the projection itself (`decisions.decided_at`, `dead_letters.recorded_at`): a checksum
//!    of each side, both scanned at once in the same snapshot, and where they differ the SQL
//!    multiset differences both ways (`EXCEPT ALL`), which name the rows. A table the
//!    migrations add that is not listed for comparison fails verification rather than going
//!    unchecked.
//! 6. The scratch schema is dropped, on failure too, unless asked to keep it.
//!
//! Why it is sound: a projection is a function of the log prefix it has consumed (the projector
//! decides from the partition's own state only; the property test in `tests/it/determinism.rs`
//! checks that batch boundaries and takeovers do not matter), and both sides are compared at the
//! same prefix of every partition. So any difference is a row the live read model holds that the
//! log does not justify, or the other way round. Why step 4 locks the table rather than the
//! offset rows: see [`compare`](crate::compare).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::compare::{Comparison, TableDiff, compare_with_live, write_differences, write_tables};
use crate::config::{Config, VerifyArgs};
use crate::generations::{LOCK_TIMEOUT, offsets_text};
use crate::replay::{LogSource, Replay};
use crate::store::{Store, check_live_schema};

/// The scratch store's owner name in its own `projector_offsets`.
const SCRATCH_OWNER: &str = "verify";

/// What verify found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub topic: String,
    /// The scratch generation's schema.
    pub scratch_schema: String,
    /// False when it was kept (`--keep-scratch`) or could not be dropped.
    pub scratch_dropped: bool,
    /// Next offset per partition: the log prefix both generations were compared at.
    pub offsets: BTreeMap<i32, i64>,
    /// Records projected into the scratch generation.
    pub events_projected: u64,
    /// How long the live projector's commits were held.
    pub live_held_for: Duration,
    pub tables: Vec<TableDiff>,
}

impl VerifyReport {
    pub fn is_identical(&self) -> bool {
        self.tables.iter().all(TableDiff::is_identical)
    }

    pub fn table(&self, name: &str) -> Option<&TableDiff> {
        self.tables.iter().find(|t| t.table == name)
    }
}

/// `projector verify`: verifies, prints the report, and says how it went as the exit status:
/// 0 identical, 1 differences, 2 could not verify.
pub async fn run(
    config: &Config,
    args: &VerifyArgs,
    interrupted: impl Future<Output = ()>,
) -> ExitCode {
    match verify(config, args, interrupted).await {
        Ok(report) => {
            println!("{report}");
            if report.is_identical() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "could not verify");
            println!("could not verify: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Rebuilds the read model from the log into a scratch schema and compares it with the live one
/// at the same offsets. An error means it could not tell; differences are in the report. Stops
/// (cleaning up) when `interrupted` resolves.
pub async fn verify(
    config: &Config,
    args: &VerifyArgs,
    interrupted: impl Future<Output = ()>,
) -> anyhow::Result<VerifyReport> {
    let live = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&config.database_url)
        .await
        .context("cannot connect to PostgreSQL")?;
    check_live_schema(&live).await?;
    let source = LogSource::Kafka {
        brokers: config.kafka_brokers.clone(),
    };
    let bounds = source.bounds(&config.kafka_topic).await?;

    let schema = format!("verify_{}", &Uuid::new_v4().simple().to_string()[..12]);
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&live)
        .await
        .context("cannot create the scratch schema")?;
    tracing::info!(%schema, "scratch schema created");
    let scratch =
        Store::connect_lazy_in_schema(&config.database_url, &schema, &config.kafka_topic, 2)?
            .replay();

    let outcome = tokio::select! {
        outcome = rebuild_and_compare(config, args, &source, &live, &scratch, &schema, bounds) => outcome,
        () = interrupted => Err(anyhow!("interrupted")),
    };

    scratch.pool().close().await;
    let scratch_dropped = if args.keep_scratch {
        tracing::info!(%schema, "scratch schema kept (--keep-scratch)");
        false
    } else {
        drop_schema(&live, &schema).await
    };
    live.close().await;
    let mut report = outcome?;
    report.scratch_dropped = scratch_dropped;
    Ok(report)
}

async fn rebuild_and_compare(
    config: &Config,
    args: &VerifyArgs,
    source: &LogSource,
    live: &PgPool,
    scratch: &Store,
    schema: &str,
    bounds: BTreeMap<i32, (i64, i64)>,
) -> anyhow::Result<VerifyReport> {
    scratch
        .migrate()
        .await
        .context("cannot create the scratch tables")?;
    let partitions: Vec<i32> = bounds.keys().copied().collect();
    let mut replay = Replay::start(
        source,
        &config.kafka_topic,
        scratch.clone(),
        SCRATCH_OWNER,
        &partitions,
        args.batch_size,
        "projecting into the scratch schema",
    )
    .await?;
    let compared = compare_with_live(
        config,
        source,
        live,
        &mut replay,
        schema,
        bounds,
        args.max_diff_rows,
    )
    .await;
    replay.finish();
    let Comparison {
        offsets,
        live_held_for,
        tables,
        ..
    } = compared?;
    Ok(VerifyReport {
        topic: config.kafka_topic.clone(),
        scratch_schema: schema.to_owned(),
        scratch_dropped: false,
        offsets,
        events_projected: replay.projected(),
        live_held_for,
        tables,
    })
}

/// Drops the scratch schema; false (and logged) when it cannot.
async fn drop_schema(live: &PgPool, schema: &str) -> bool {
    let dropped = async {
        let mut tx = live.begin().await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
    .await;
    match dropped {
        Ok(()) => {
            tracing::info!(%schema, "scratch schema dropped");
            true
        }
        Err(e) => {
            tracing::error!(%schema, error = %e, "cannot drop the scratch schema; drop it by hand: DROP SCHEMA {schema} CASCADE");
            false
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "topic {:?} at offsets (partition:next offset) {}",
            self.topic,
            offsets_text(&self.offsets)
        )?;
        writeln!(
            f,
            "{} events projected into scratch schema {} ({}); live projector held for {} ms",
            self.events_projected,
            self.scratch_schema,
            if self.scratch_dropped {
                "dropped"
            } else {
                "kept"
            },
            self.live_held_for.as_millis()
        )?;
        writeln!(f)?;
        write_tables(f, &self.tables)?;
        if self.is_identical() {
            return write!(
                f,
                "IDENTICAL: the live read model is exactly what the log says"
            );
        }
        let differing = self.tables.iter().filter(|t| !t.is_identical()).count();
        writeln!(
            f,
            "DIFFERENT: {differing} of {} tables differ from what the log says",
            self.tables.len()
        )?;
        write_differences(f, &self.tables)
    }
}
