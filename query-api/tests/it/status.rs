//! `GET /status.json` on rows put in place as the projector leaves them: the figures, the
//! rebuilds' progress, the rates, what the document says, and a 503 problem without PostgreSQL.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use test_support::openapi::check_answer;
use test_support::{TestDb, free_port, unique_topic};

use crate::helpers::{TestApp, config, eventually, problem, spawn_app, spawn_app_with};

/// One partition's row of `projector_offsets` as a projector's commit leaves it.
async fn offsets(
    pool: &PgPool,
    topic: &str,
    partition: i32,
    next: i64,
    log_end: Option<i64>,
    applied: i64,
) {
    sqlx::query(
        "INSERT INTO projector_offsets (topic, partition, next_offset, epoch, owner,
             log_end_offset, applied, rejected_not_found, dead_letters)
         VALUES ($1, $2, $3, 1, 'projector-a', $4, $5, 2, 1)
         ON CONFLICT (topic, partition) DO UPDATE
             SET next_offset = EXCLUDED.next_offset, log_end_offset = EXCLUDED.log_end_offset",
    )
    .bind(topic)
    .bind(partition)
    .bind(next)
    .bind(log_end)
    .bind(applied)
    .execute(pool)
    .await
    .expect("offsets row");
}

async fn status(app: &TestApp) -> (Vec<(String, String)>, Value) {
    let answer = app.get("/status.json").await;
    assert_eq!(answer.status(), 200);
    let headers = answer
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    (headers, answer.json().await.expect("JSON"))
}

#[tokio::test]
async fn the_status_shows_each_partition_the_totals_and_a_rebuild_s_progress() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let topic = unique_topic("status");
    offsets(&pool, &topic, 0, 10, Some(15), 7).await;
    offsets(&pool, &topic, 1, 5, None, 4).await;
    // Another topic's rows are not this one's.
    offsets(&pool, "other", 0, 99, Some(99), 1).await;
    // A rebuild part-way: its own offsets in its own schema.
    sqlx::query(
        "INSERT INTO read_model_generations (name, state) VALUES ('generation_1', 'building')",
    )
    .execute(&pool)
    .await
    .expect("catalogue row");
    for statement in [
        "CREATE SCHEMA generation_1",
        "CREATE TABLE generation_1.projector_offsets (LIKE public.projector_offsets INCLUDING ALL)",
    ] {
        sqlx::query(statement)
            .execute(&pool)
            .await
            .expect(statement);
    }
    sqlx::query(
        "INSERT INTO generation_1.projector_offsets (topic, partition, next_offset, epoch, owner)
         VALUES ($1, 0, 6, 1, 'rebuild')",
    )
    .bind(&topic)
    .execute(&pool)
    .await
    .expect("rebuild's offsets");

    let app = spawn_app(&db.url, &topic, Duration::from_secs(5)).await;
    let (headers, report) = status(&app).await;
    let document: Value = app
        .get("/openapi.json")
        .await
        .json()
        .await
        .expect("document");
    check_answer(
        &document,
        "GET",
        "/status.json",
        200,
        &headers,
        Some("application/json"),
        &report,
    )
    .unwrap_or_else(|error| panic!("{error}\n{report}"));

    assert_eq!(report["topic"], topic.as_str());
    assert_eq!(report["generation"], "public");
    let partitions = report["partitions"].as_array().expect("partitions");
    assert_eq!(partitions.len(), 2);
    let first = &partitions[0];
    assert_eq!(
        (
            &first["partition"],
            &first["next_offset"],
            &first["log_end_offset"],
            &first["lag"]
        ),
        (&0.into(), &10.into(), &15.into(), &5.into())
    );
    assert_eq!(first["owner"], "projector-a");
    assert_eq!(first["applied"], 7);
    assert_eq!(first["rejected"]["not_found"], 2);
    assert_eq!(first["rejected"]["version_conflict"], 0);
    assert_eq!(first["dead_letters"], 1);
    assert_eq!(partitions[1]["lag"], Value::Null, "no log end heard yet");
    let totals = &report["totals"];
    assert_eq!(totals["next_offset"], 15);
    assert_eq!(totals["lag"], 5);
    assert_eq!(totals["applied"], 11);
    assert_eq!(totals["rejected"], 4);
    assert_eq!(totals["dead_letters"], 2);
    assert_eq!(
        totals["events_per_second"],
        Value::Null,
        "one look has no rate"
    );
    let rebuilds = report["rebuilds"].as_array().expect("rebuilds");
    assert_eq!(rebuilds.len(), 1);
    assert_eq!(rebuilds[0]["generation"], "generation_1");
    assert_eq!(rebuilds[0]["events"], 6);
    // Of the 20 events the log holds as far as known: partition 0's log end, partition 1's
    // offset.
    assert_eq!(rebuilds[0]["target"], 20);
    assert_eq!(rebuilds[0]["progress"], 0.3);

    // The projector moves on: a later look shows it, and how fast it went.
    offsets(&pool, &topic, 0, 14, Some(15), 7).await;
    eventually("the new offset and a rate", || async {
        let (_, report) = status(&app).await;
        report["partitions"][0]["next_offset"] == 14
            && report["partitions"][0]["events_per_second"]
                .as_f64()
                .is_some_and(|rate| rate > 0.0)
    })
    .await;
    let (_, report) = status(&app).await;
    assert_eq!(report["partitions"][0]["lag"], 1);
    db.drop_database().await;
}

#[tokio::test]
async fn without_postgresql_the_status_is_a_503_problem_as_documented() {
    let unreachable = format!("postgres://postgres@127.0.0.1:{}/nowhere", free_port());
    let app = spawn_app_with(config(
        &unreachable,
        &unique_topic("status"),
        Duration::from_secs(1),
    ))
    .await;
    let kind = problem(app.get("/status.json").await, 503).await;
    assert_eq!(kind, "/problems/unavailable");
    // The page itself is served, to show that.
    let page = app.get("/status").await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
}
