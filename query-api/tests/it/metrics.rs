//! `/metrics` is what `docs/metrics.md` says it is, and the read cache's counters count.

use std::time::Duration;

use test_support::{TestDb, unique_topic};

use crate::helpers::{json_ok, spawn_app};
use crate::seed;

#[tokio::test]
async fn the_exposed_metrics_are_the_documented_ones_and_the_cache_counts_reads() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let topic = unique_topic("query-metrics");
    let user_id = seed::user(&pool, "Ada", None, seed::at(0)).await;
    let app = spawn_app(&db.url, &topic, Duration::from_secs(5)).await;
    app.wait_for_cache_following(true).await;
    seed::advance_and_notify(&pool, &topic, 0, 1).await;
    app.wait_for_offset(0, 1).await;

    let path = format!("/v1/users/{user_id}");
    json_ok(app.get(&path).await).await;
    assert_eq!(app.metric("query_api_cache_misses_total").await, Some(1.0));
    assert_eq!(app.metric("query_api_cache_hits_total").await, Some(0.0));
    json_ok(app.get(&path).await).await;
    assert_eq!(app.metric("query_api_cache_hits_total").await, Some(1.0));
    json_ok(
        app.get_with(&path, &[("consistency-token", "v1.0.0")])
            .await,
    )
    .await;
    assert_eq!(
        app.metric(r#"query_api_consistency_waits_total{outcome="immediate"}"#)
            .await,
        Some(1.0)
    );

    let metrics = app
        .get("/metrics")
        .await
        .text()
        .await
        .expect("metrics text");
    test_support::metrics_docs::assert_documented(
        &metrics,
        &["Every service", "Query API", "Query API read cache"],
    );
    drop(app);
    db.drop_database().await;
}
