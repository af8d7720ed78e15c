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
//!    Steps 1 and 2 are the [`replay`](crate::replay) module, shared with `projector rebuild`,
//!    which also runs steps 3 to 5 ([`compare_with_live`]) against its new generation.
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
//!    migrations add that is not listed here fails verification rather than going unchecked.
//! 6. The scratch schema is dropped, on failure too, unless asked to keep it.
//!
//! Why it is sound: a projection is a function of the log prefix it has consumed (the projector
//! decides from the partition's own state only; the property test in `tests/it/determinism.rs`
//! checks that batch boundaries and takeovers do not matter), and both sides are compared at the
//! same prefix of every partition. So any difference is a row the live read model holds that the
//! log does not justify, or the other way round.
//!
//! Why a table lock and not `SELECT ... FOR SHARE` on the offset rows: a partition that has no
//! row yet (never claimed) could be claimed and committed to during the comparison; the table
//! lock blocks that insert too. It conflicts only with writers of `projector_offsets` (batch
//! commits and claims), never with readers such as the query API.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::config::{Config, VerifyArgs};
use crate::replay::{LogSource, Replay, check_within_log, offsets_of};
use crate::store::{self, Store};

/// The live generation's schema.
pub(crate) const LIVE_SCHEMA: &str = "public";
/// The scratch store's owner name in its own `projector_offsets`.
const SCRATCH_OWNER: &str = "verify";
/// Bound on waiting for a lock: the live offsets table, or the scratch schema when dropping it.
pub(crate) const LOCK_TIMEOUT: &str = "30s";
/// Unlocked catch-up rounds at most: each one shortens the delta projected under the lock.
const CATCH_UP_ROUNDS: usize = 5;
/// Catching up stops once the live read model is at most this many events ahead: about what
/// the live projector commits in one batch, so the lock holds it for about one batch.
const LOCKED_DELTA: i64 = 500;

/// The tables compared, with the columns left out: the wall-clock time of the projection, which
/// no log can reproduce.
const COMPARED: &[(&str, &[&str])] = &[
    ("users", &[]),
    ("posts", &[]),
    ("decisions", &["decided_at"]),
    ("idempotency_keys", &[]),
    ("aggregate_events", &[]),
    ("dead_letters", &["recorded_at"]),
];
/// Bookkeeping, not derived state: the position (compared separately) and sqlx's record.
const NOT_COMPARED: &[&str] = &["projector_offsets", "_sqlx_migrations"];

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

/// One table of the comparison.
#[derive(Debug, Clone)]
pub struct TableDiff {
    pub table: &'static str,
    pub live_rows: i64,
    pub rebuilt_rows: i64,
    /// Rows of the live read model the rebuild does not have (counted with multiplicity).
    pub only_in_live: i64,
    /// Rows of the rebuild the live read model does not have.
    pub only_in_rebuild: i64,
    /// Up to `--max-diff-rows` of them each, as JSON.
    pub only_in_live_sample: Vec<String>,
    pub only_in_rebuild_sample: Vec<String>,
}

impl TableDiff {
    pub fn is_identical(&self) -> bool {
        self.only_in_live == 0 && self.only_in_rebuild == 0
    }
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

/// Both generations at one point of the log, table by table.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Next offset per partition: the log prefix both were compared at.
    pub offsets: BTreeMap<i32, i64>,
    /// How long the live projector's commits were held.
    pub live_held_for: Duration,
    /// How long the table-by-table comparison took (in the snapshot, the live projector free).
    pub compared_in: Duration,
    pub tables: Vec<TableDiff>,
}

/// Catches `replay` (projecting into `schema`) up with the live read model, holds the live
/// projector for the last stretch, and compares the two generations at that one consistent
/// point (steps 3 to 5 above).
pub(crate) async fn compare_with_live(
    config: &Config,
    source: &LogSource,
    live: &PgPool,
    replay: &mut Replay,
    schema: &str,
    mut bounds: BTreeMap<i32, (i64, i64)>,
    max_diff_rows: u32,
) -> anyhow::Result<Comparison> {
    let topic = &config.kafka_topic;
    let partitions: Vec<i32> = bounds.keys().copied().collect();
    // The live read model is the active generation: `public` until a switch.
    let active = crate::store::active_generation(live)
        .await
        .context("cannot read the active read-model generation")?;
    ensure!(
        active != schema,
        "{schema} is the active generation: it cannot be compared with itself"
    );

    // Unlocked: most of the work, while the live projector keeps going.
    let mut targets = offsets_of(live, &active, topic, &partitions).await?;
    for round in 1..=CATCH_UP_ROUNDS {
        check_within_log(&mut bounds, source, topic, &targets).await?;
        tracing::info!(
            round,
            total = targets.values().sum::<i64>(),
            "catching up with the live read model"
        );
        replay.project_up_to(&targets).await?;
        let moved = offsets_of(live, &active, topic, &partitions).await?;
        let behind: i64 = moved
            .iter()
            .map(|(p, o)| o - targets.get(p).copied().unwrap_or(0))
            .sum();
        targets = moved;
        if behind <= LOCKED_DELTA {
            break;
        }
    }

    // Locked: the live read model holds still while the other one catches up with it.
    let mut lock_conn = PgConnection::connect(&config.database_url)
        .await
        .context("cannot connect to PostgreSQL")?;
    let mut snapshot_conn = PgConnection::connect(&config.database_url)
        .await
        .context("cannot connect to PostgreSQL")?;
    let mut lock = lock_conn.begin().await?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        .execute(&mut *lock)
        .await?;
    // From the request on: while it waits, the live projector's next commit queues behind it.
    let held_since = Instant::now();
    sqlx::query(&format!(
        "LOCK TABLE {active}.projector_offsets IN SHARE MODE"
    ))
    .execute(&mut *lock)
    .await
    .context("cannot hold the live projector (lock on projector_offsets)")?;
    tracing::info!("live projector held");
    let offsets = offsets_of(&mut *lock, &active, topic, &partitions).await?;
    check_within_log(&mut bounds, source, topic, &offsets).await?;
    replay.project_up_to(&offsets).await?;

    let mut snapshot = snapshot_conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *snapshot)
        .await?;
    // The snapshot's first read: it sees both generations as they are now.
    let live_seen = offsets_of(&mut *snapshot, &active, topic, &partitions).await?;
    let scratch_seen = offsets_of(&mut *snapshot, schema, topic, &partitions).await?;
    lock.commit().await?;
    let live_held_for = held_since.elapsed();
    tracing::info!(
        held_ms = live_held_for.as_millis() as u64,
        "live projector released"
    );
    ensure!(
        live_seen == offsets && scratch_seen == offsets,
        "the generations are not at the same offsets in the snapshot (live {live_seen:?}, \
         {schema} {scratch_seen:?}, expected {offsets:?})"
    );

    // A second connection in the same snapshot, so that both sides are scanned at once.
    let snapshot_id: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut *snapshot)
        .await?;
    let mut twin_conn = PgConnection::connect(&config.database_url)
        .await
        .context("cannot connect to PostgreSQL")?;
    let mut twin = twin_conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *twin)
        .await?;
    sqlx::query(&format!("SET TRANSACTION SNAPSHOT '{snapshot_id}'"))
        .execute(&mut *twin)
        .await?;

    let started = Instant::now();
    let tables = compare(&mut snapshot, &mut twin, &active, schema, max_diff_rows).await?;
    twin.rollback().await?;
    snapshot.rollback().await?;
    let compared_in = started.elapsed();
    tracing::info!(ms = compared_in.as_millis() as u64, "compared");
    Ok(Comparison {
        offsets,
        live_held_for,
        compared_in,
        tables,
    })
}

/// Refuses a live database without the read model, or at another schema version than this
/// binary's migrations: the comparison would show the migration, not the projection.
pub(crate) async fn check_live_schema(live: &PgPool) -> anyhow::Result<()> {
    let row = sqlx::query(&format!(
        "SELECT to_regclass('{LIVE_SCHEMA}.projector_offsets') IS NOT NULL AS has_offsets,
                to_regclass('{LIVE_SCHEMA}._sqlx_migrations') IS NOT NULL AS has_migrations"
    ))
    .fetch_one(live)
    .await?;
    ensure!(
        row.try_get::<bool, _>("has_offsets")? && row.try_get::<bool, _>("has_migrations")?,
        "the database has no read model to verify (no {LIVE_SCHEMA}.projector_offsets): run the projector first"
    );
    let applied: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT max(version) FROM {LIVE_SCHEMA}._sqlx_migrations WHERE success"
    ))
    .fetch_one(live)
    .await?;
    let ours = store::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .max();
    ensure!(
        applied == ours,
        "the live read model's schema is at migration {applied:?}, this projector's at {ours:?}: \
         use the projector version that runs against this database"
    );
    Ok(())
}

/// Compares every derived table of the live generation with the scratch one, in `snapshot`
/// (and `twin`, a second connection in the same snapshot).
///
/// First a checksum of each side, both scanned at once: the row count and the XOR of a 64-bit
/// hash of every row's compared columns. Every table has a primary key among those columns, so
/// no row appears twice and XOR cannot cancel equal rows out; two sides with equal checksums
/// differ only if hashes collide (about 2^-64 for a difference). Only a table whose checksums
/// differ gets the row diff (`EXCEPT ALL` both ways), which names the rows.
async fn compare(
    snapshot: &mut PgConnection,
    twin: &mut PgConnection,
    live_schema: &str,
    scratch: &str,
    max_rows: u32,
) -> anyhow::Result<Vec<TableDiff>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY 1",
    )
    .bind(scratch)
    .fetch_all(&mut *snapshot)
    .await?;
    for table in &tables {
        ensure!(
            COMPARED.iter().any(|(t, _)| t == table) || NOT_COMPARED.contains(&table.as_str()),
            "the migrations create table {table}, which verify does not compare: add it to \
             COMPARED in projector/src/verify.rs"
        );
    }

    let mut diffs = Vec::new();
    for (table, left_out) in COMPARED {
        let live_columns = columns(snapshot, live_schema, table).await?;
        let scratch_columns = columns(snapshot, scratch, table).await?;
        ensure!(
            live_columns.iter().collect::<BTreeSet<_>>()
                == scratch_columns.iter().collect::<BTreeSet<_>>(),
            "table {table} has columns {live_columns:?} live but {scratch_columns:?} in the rebuild"
        );
        let columns = live_columns
            .iter()
            .filter(|c| !left_out.contains(&c.as_str()))
            .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(", ");
        let live_table = format!("{live_schema}.{table}");
        let scratch_table = format!("{scratch}.{table}");
        let (live_sum, rebuilt_sum) = tokio::try_join!(
            checksum(&mut *snapshot, &columns, &live_table),
            checksum(&mut *twin, &columns, &scratch_table),
        )?;
        let (live_rows, rebuilt_rows) = (live_sum.0, rebuilt_sum.0);
        let (mut only_in_live, mut only_in_live_sample) = (0, Vec::new());
        let (mut only_in_rebuild, mut only_in_rebuild_sample) = (0, Vec::new());
        if live_sum != rebuilt_sum {
            (only_in_live, only_in_live_sample) =
                difference(snapshot, &columns, &live_table, &scratch_table, max_rows).await?;
            (only_in_rebuild, only_in_rebuild_sample) =
                difference(snapshot, &columns, &scratch_table, &live_table, max_rows).await?;
            // Equal rows with colliding hashes would land here with no difference: the row
            // diff, not the checksum, has the last word.
        }
        diffs.push(TableDiff {
            table,
            live_rows,
            rebuilt_rows,
            only_in_live,
            only_in_rebuild,
            only_in_live_sample,
            only_in_rebuild_sample,
        });
    }
    Ok(diffs)
}

async fn columns(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
) -> anyhow::Result<Vec<String>> {
    let columns = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_attribute a
         JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attnum",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(conn)
    .await?;
    Ok(columns)
}

/// A table's row count and the XOR of a hash of each row's `columns`.
async fn checksum(
    conn: &mut PgConnection,
    columns: &str,
    table: &str,
) -> anyhow::Result<(i64, i64)> {
    let sum = sqlx::query_as(&format!(
        "SELECT count(*), coalesce(bit_xor(hashtextextended(ROW({columns})::text, 0)), 0)
         FROM {table}"
    ))
    .fetch_one(conn)
    .await?;
    Ok(sum)
}

/// Rows of `from` that `other` lacks, counted with multiplicity, and the first `max_rows` of
/// them as JSON.
async fn difference(
    conn: &mut PgConnection,
    columns: &str,
    from: &str,
    other: &str,
    max_rows: u32,
) -> anyhow::Result<(i64, Vec<String>)> {
    let row = sqlx::query(&format!(
        "WITH d AS (SELECT {columns} FROM {from} EXCEPT ALL SELECT {columns} FROM {other})
         SELECT (SELECT count(*) FROM d) AS n,
                ARRAY(SELECT row_to_json(d)::text FROM d ORDER BY 1 LIMIT $1) AS sample"
    ))
    .bind(i64::from(max_rows))
    .fetch_one(conn)
    .await?;
    Ok((row.try_get("n")?, row.try_get("sample")?))
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

/// `0:12 1:40`: partition and next offset.
pub(crate) fn offsets_text(offsets: &BTreeMap<i32, i64>) -> String {
    offsets
        .iter()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The row counts and differences per table, then a blank line.
pub(crate) fn write_tables(f: &mut fmt::Formatter<'_>, tables: &[TableDiff]) -> fmt::Result {
    writeln!(
        f,
        "{:<18} {:>12} {:>12} {:>14} {:>16}",
        "table", "live rows", "rebuilt rows", "only in live", "only in rebuild"
    )?;
    for t in tables {
        writeln!(
            f,
            "{:<18} {:>12} {:>12} {:>14} {:>16}",
            t.table, t.live_rows, t.rebuilt_rows, t.only_in_live, t.only_in_rebuild
        )?;
    }
    writeln!(f)
}

/// The sampled differing rows of every table that differs.
pub(crate) fn write_differences(f: &mut fmt::Formatter<'_>, tables: &[TableDiff]) -> fmt::Result {
    for t in tables {
        for (side, count, sample) in [
            ("only in live", t.only_in_live, &t.only_in_live_sample),
            (
                "only in rebuild",
                t.only_in_rebuild,
                &t.only_in_rebuild_sample,
            ),
        ] {
            if count == 0 {
                continue;
            }
            writeln!(f, "\n{} ({side}): {count} rows", t.table)?;
            for row in sample {
                writeln!(f, "  {row}")?;
            }
            if count > sample.len() as i64 {
                writeln!(f, "  ... and {} more", count - sample.len() as i64)?;
            }
        }
    }
    Ok(())
}
