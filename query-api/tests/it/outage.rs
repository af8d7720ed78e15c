//! PostgreSQL going away and coming back, on a cluster of the test's own.

use std::time::Duration;

use query_api::Config;
use test_support::{MIGRATOR, OwnPostgres, TestDb, unique_topic};

use crate::helpers::{config, json_ok, problem, spawn_app_with};
use crate::seed;

/// `db` migrated, with Ada at offset 5 of partition 0 of a topic of its own.
async fn ada_on(db: TestDb) -> (TestDb, sqlx::PgPool, String, uuid::Uuid) {
    let pool = db.pool().await;
    MIGRATOR.run(&pool).await.expect("migrate");
    let topic = unique_topic("query");
    let user_id = seed::user(&pool, "Ada", None, seed::at(0)).await;
    seed::advance_and_notify(&pool, &topic, 0, 5).await;
    (db, pool, topic, user_id)
}

#[tokio::test]
async fn reads_answer_503_while_postgres_is_down_and_recover_without_a_restart() {
    let pg = OwnPostgres::start().await;
    let (db, pool, topic, user_id) = ada_on(TestDb::create_on(&pg.admin_url()).await).await;
    let user_path = format!("/v1/users/{user_id}");
    let app = spawn_app_with(Config {
        db_acquire_timeout_ms: 500,
        ..config(&db.url, &topic, Duration::from_secs(30))
    })
    .await;
    json_ok(app.get(&user_path).await).await;
    json_ok(
        app.get_with(&user_path, &[("consistency-token", "v1.0.4")])
            .await,
    )
    .await;

    pg.stop().await;
    // Until the follower has seen its connection go, the cache may still answer the user.
    app.wait_for_cache_following(false).await;

    for path in [
        user_path.clone(),
        "/v1/posts".to_owned(),
        format!("/v1/users/{user_id}/posts"),
        format!("/v1/streams/{user_id}/events"),
    ] {
        assert_eq!(
            problem(app.get(&path).await, 503).await,
            "/problems/unavailable",
            "{path}"
        );
    }
    assert_eq!(
        problem(app.get("/readyz").await, 503).await,
        "/problems/unavailable"
    );
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "alive, if not ready"
    );

    pg.resume().await;

    json_ok(app.get(&user_path).await).await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    // The progress follower reconnects too: progress made after the restart releases a read.
    seed::advance_and_notify(&pool, &topic, 0, 8).await;
    json_ok(
        app.get_with(&user_path, &[("consistency-token", "v1.0.7")])
            .await,
    )
    .await;
    let by_deadline = r#"query_api_consistency_waits_total{outcome="table"}"#;
    assert_eq!(
        app.metric(by_deadline).await,
        Some(0.0),
        "released by the follower, not the deadline"
    );
    drop(app);
    db.drop_database().await;
}

#[tokio::test]
async fn a_read_after_postgres_dropped_every_pooled_connection_is_answered() {
    let (db, pool, topic, user_id) = ada_on(TestDb::create().await).await;
    let user_path = format!("/v1/users/{user_id}");
    let app = spawn_app_with(Config {
        cache_entries: 0,
        ..config(&db.url, &topic, Duration::from_secs(30))
    })
    .await;
    // Fill the pool: concurrent reads each hold a connection.
    let reads: Vec<_> = (0..4).map(|_| app.get(&user_path)).collect();
    for response in futures::future::join_all(reads).await {
        json_ok(response).await;
    }

    // What a restart or a pooler's idle timeout does to the pool's idle connections.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&pool)
    .await
    .expect("terminate the app's connections");

    // Connections are not pinged before use: each read meets dead ones and must try again.
    for _ in 0..4 {
        json_ok(app.get(&user_path).await).await;
    }
    drop(app);
    db.drop_database().await;
}
