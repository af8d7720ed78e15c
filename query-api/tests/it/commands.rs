//! GET /v1/commands/{id}: the projector's decision.

use std::time::Duration;

use test_support::{TestDb, unique_topic};
use uuid::Uuid;

use crate::helpers::{json_ok, problem, spawn_app};
use crate::seed;

#[tokio::test]
async fn decisions_read_as_applied_or_rejected_and_are_not_found_until_made() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let app = spawn_app(&db.url, &unique_topic("query"), Duration::from_secs(5)).await;
    let (applied, rejected, undecided) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let aggregate = Uuid::now_v7();
    seed::applied(&pool, applied, aggregate, 3).await;
    seed::rejected(&pool, rejected, aggregate, "version_conflict").await;

    let (_, body) = json_ok(app.get(&format!("/v1/commands/{applied}")).await).await;
    assert_eq!(
        body,
        serde_json::json!({"command_id": applied, "status": "applied", "aggregate_id": aggregate, "version": 3})
    );

    let (_, body) = json_ok(app.get(&format!("/v1/commands/{rejected}")).await).await;
    assert_eq!(
        body,
        serde_json::json!({
            "command_id": rejected, "status": "rejected", "reason": "version_conflict", "aggregate_id": aggregate
        })
    );

    problem(app.get(&format!("/v1/commands/{undecided}")).await, 404).await;
    seed::applied(&pool, undecided, aggregate, 4).await;
    let (_, body) = json_ok(app.get(&format!("/v1/commands/{undecided}")).await).await;
    assert_eq!(body["status"], "applied");
    db.drop_database().await;
}
