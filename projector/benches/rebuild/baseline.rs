//! Step 4, the baseline: the rows the rebuild wrote, copied out beforehand, loaded with
//! `COPY ... FROM STDIN (FORMAT binary)` in one transaction into fresh tables that the same
//! migrations create (same primary keys, indexes and checks): the fastest way PostgreSQL itself
//! loads those rows, which the rebuild's time is set beside.

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};

/// The read-model tables, in an order that satisfies their foreign keys.
const TABLES: &[&str] = &[
    "users",
    "posts",
    "decisions",
    "idempotency_keys",
    "aggregate_events",
    "dead_letters",
];

/// The schema the baseline's tables are created in.
pub const BASELINE_SCHEMA: &str = "copy_baseline";

/// The rows of one read-model table.
#[derive(Debug, Serialize)]
pub struct TableRows {
    pub table: &'static str,
    pub rows: i64,
}

/// Rows of each read-model table in `schema`.
pub async fn row_counts(pool: &PgPool, schema: &str) -> anyhow::Result<Vec<TableRows>> {
    let mut rows = Vec::new();
    for table in TABLES {
        let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.{table}"))
            .fetch_one(pool)
            .await
            .with_context(|| format!("cannot count the rows of {schema}.{table}"))?;
        rows.push(TableRows { table, rows: count });
    }
    Ok(rows)
}

/// Copies the rebuilt rows out (untimed), then times loading them with `COPY ... FROM STDIN`
/// into tables the migrations create fresh. Returns the bytes loaded and the seconds it took.
pub async fn copy_baseline(
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
            .await
            .with_context(|| format!("cannot copy {generation}.{table} out"))?;
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
            .await
            .with_context(|| format!("cannot copy into {BASELINE_SCHEMA}.{table}"))?;
        for chunk in bytes.chunks(1 << 20) {
            copy.send(chunk).await?;
        }
        copy.finish().await?;
        loaded += bytes.len() as u64;
    }
    tx.commit().await?;
    Ok((loaded, started.elapsed().as_secs_f64()))
}
