//! Comparing a read model projected again from the log with the live one, at one point of the
//! log: what `verify` (into its scratch generation) and `rebuild` (into a new generation) share,
//! steps 3 to 5 of [`verify`](crate::verify)'s procedure.
//!
//! `compare_with_live` catches the other read model up with the live one in a few unlocked
//! rounds, holds the live projector's commits for the last stretch (`LOCK TABLE
//! <active>.projector_offsets IN SHARE MODE`), takes a snapshot that sees both at the same
//! offsets, releases the live projector and compares the two in that snapshot, table by table.
//!
//! Why a table lock and not `SELECT ... FOR SHARE` on the offset rows: a partition that has no
//! row yet (never claimed) could be claimed and committed to during the comparison; the table
//! lock blocks that insert too. It conflicts only with writers of `projector_offsets` (batch
//! commits and claims), never with readers such as the query API.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use sqlx::{Connection, PgConnection, PgPool, Row};

use crate::config::Config;
use crate::generations::{self, LOCK_TIMEOUT, offsets_of};
use crate::replay::{LogSource, Replay, check_within_log};

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
/// point.
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
    let active = generations::active_generation(live)
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
             COMPARED in projector/src/compare.rs"
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
