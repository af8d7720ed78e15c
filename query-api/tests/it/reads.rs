//! Single-resource reads: shapes, 404s, 400s, and the common endpoints.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use test_support::{TestDb, unique_topic};
use uuid::Uuid;

use crate::helpers::{TestApp, json_ok, problem, spawn_app};
use crate::seed;

async fn app_on(db: &TestDb) -> TestApp {
    spawn_app(&db.url, &unique_topic("query"), Duration::from_secs(5)).await
}

fn time(value: &Value) -> DateTime<Utc> {
    let text = value.as_str().expect("a time string");
    assert!(text.ends_with('Z'), "not UTC with Z: {text}");
    DateTime::parse_from_rfc3339(text)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

#[tokio::test]
async fn a_user_reads_as_the_contract_shows_it() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let created_at = seed::at(0);
    let user_id = seed::user(&pool, "Ada", Some("writes engines"), created_at).await;
    seed::post(&pool, user_id, "first", seed::at(1)).await;
    seed::post(&pool, user_id, "second", seed::at(2)).await;
    let app = app_on(&db).await;

    let (headers, body) = json_ok(app.get(&format!("/v1/users/{user_id}")).await).await;

    assert_eq!(
        keys(&body),
        [
            "bio",
            "created_at",
            "display_name",
            "id",
            "post_count",
            "updated_at",
            "version"
        ]
    );
    assert_eq!(body["id"], user_id.to_string());
    assert_eq!(body["display_name"], "Ada");
    assert_eq!(body["bio"], "writes engines");
    assert_eq!(body["post_count"], 2);
    assert_eq!(body["version"], 1);
    assert_eq!(time(&body["created_at"]), created_at);
    assert_eq!(time(&body["updated_at"]), created_at);
    assert_eq!(
        headers.get("etag").map(|v| v.as_bytes()),
        Some(&b"\"1\""[..])
    );
    db.drop_database().await;
}

#[tokio::test]
async fn a_user_without_bio_shows_null() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let user_id = seed::user(&pool, "Bo", None, seed::at(0)).await;
    let app = app_on(&db).await;

    let (_, body) = json_ok(app.get(&format!("/v1/users/{user_id}")).await).await;

    assert_eq!(body.get("bio"), Some(&Value::Null), "{body}");
    assert_eq!(body["post_count"], 0);
    db.drop_database().await;
}

#[tokio::test]
async fn a_post_reads_as_the_contract_shows_it() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let author_id = seed::user(&pool, "Ada", None, seed::at(0)).await;
    let created_at = seed::at(5);
    let post_id = seed::post(&pool, author_id, "Notes", created_at).await;
    seed::edit_post(&pool, post_id, "Notes, revised").await;
    let app = app_on(&db).await;

    let (headers, body) = json_ok(app.get(&format!("/v1/posts/{post_id}")).await).await;

    assert_eq!(
        keys(&body),
        [
            "author_id",
            "body",
            "created_at",
            "id",
            "title",
            "updated_at",
            "version"
        ]
    );
    assert_eq!(body["id"], post_id.to_string());
    assert_eq!(body["author_id"], author_id.to_string());
    assert_eq!(body["title"], "Notes, revised");
    assert_eq!(body["body"], "body of Notes");
    assert_eq!(body["version"], 2);
    assert_eq!(time(&body["created_at"]), created_at);
    assert!(time(&body["updated_at"]) > created_at);
    assert_eq!(
        headers.get("etag").map(|v| v.as_bytes()),
        Some(&b"\"2\""[..])
    );
    db.drop_database().await;
}

#[tokio::test]
async fn ids_are_accepted_in_upper_case() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let user_id = seed::user(&pool, "Ada", None, seed::at(0)).await;
    let app = app_on(&db).await;

    let upper = user_id.to_string().to_uppercase();
    let (_, body) = json_ok(app.get(&format!("/v1/users/{upper}")).await).await;

    assert_eq!(
        body["id"],
        user_id.to_string(),
        "answers with the canonical lower-case id"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn unknown_and_deleted_resources_are_not_found() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let live_author = seed::user(&pool, "Live", None, seed::at(0)).await;
    let deleted_post = seed::post(&pool, live_author, "gone", seed::at(1)).await;
    seed::delete_post(&pool, deleted_post).await;
    let deleted_author = seed::user(&pool, "Gone", None, seed::at(2)).await;
    let orphaned_post = seed::post(&pool, deleted_author, "orphan", seed::at(3)).await;
    seed::delete_user(&pool, deleted_author).await;
    let app = app_on(&db).await;
    let unknown = Uuid::now_v7();

    for path in [
        format!("/v1/users/{unknown}"),
        format!("/v1/users/{deleted_author}"),
        format!("/v1/users/{unknown}/posts"),
        format!("/v1/users/{deleted_author}/posts"),
        format!("/v1/posts/{unknown}"),
        format!("/v1/posts/{deleted_post}"),
        format!("/v1/posts/{orphaned_post}"),
        format!("/v1/commands/{unknown}"),
        format!("/v1/streams/{unknown}/events"),
        "/v1/no-such-route".to_owned(),
    ] {
        let kind = problem(app.get(&path).await, 404).await;
        assert_eq!(kind, "/problems/not-found", "{path}");
    }
    db.drop_database().await;
}

#[tokio::test]
async fn ids_that_are_not_hyphenated_uuids_are_bad_requests() {
    let db = TestDb::migrated().await;
    let app = app_on(&db).await;
    let id = Uuid::now_v7();

    for bad in [
        "not-a-uuid".to_owned(),
        id.simple().to_string(),
        id.braced().to_string(),
        format!("{id}0"),
        "%20".to_owned(),
    ] {
        for path in [
            format!("/v1/users/{bad}"),
            format!("/v1/users/{bad}/posts"),
            format!("/v1/posts/{bad}"),
            format!("/v1/commands/{bad}"),
            format!("/v1/streams/{bad}/events"),
        ] {
            let kind = problem(app.get(&path).await, 400).await;
            assert_eq!(kind, "/problems/invalid-id", "{path}");
        }
    }
    db.drop_database().await;
}

#[tokio::test]
async fn request_ids_are_propagated_and_common_endpoints_answer() {
    let db = TestDb::migrated().await;
    let app = app_on(&db).await;

    let response = app
        .get_with("/healthz", &[("x-request-id", "trace-me-42")])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("x-request-id").map(|v| v.as_bytes()),
        Some(&b"trace-me-42"[..])
    );
    assert_eq!(app.get("/readyz").await.status(), 200);
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .expect("text")
            .contains("http_requests_total")
    );
    let kind = problem(
        app.get_with(
            &format!("/v1/users/{}", Uuid::now_v7()),
            &[("x-request-id", "r-1")],
        )
        .await,
        404,
    )
    .await;
    assert_eq!(kind, "/problems/not-found");
    db.drop_database().await;
}

#[tokio::test]
async fn wrong_methods_are_problems_not_empty_answers() {
    let db = TestDb::migrated().await;
    let app = app_on(&db).await;

    let response = test_support::http()
        .delete(format!("{}/v1/posts/{}", app.address, Uuid::now_v7()))
        .send()
        .await
        .expect("request");

    assert!(response.headers().contains_key("x-request-id"));
    problem(response, 405).await;
    db.drop_database().await;
}

#[tokio::test]
async fn reads_before_the_schema_exists_are_unavailable() {
    let db = TestDb::create().await;
    let app = app_on(&db).await;

    for path in [
        format!("/v1/users/{}", Uuid::now_v7()),
        format!("/v1/posts/{}", Uuid::now_v7()),
        "/v1/posts".to_owned(),
        format!("/v1/commands/{}", Uuid::now_v7()),
        format!("/v1/streams/{}/events", Uuid::now_v7()),
    ] {
        let kind = problem(app.get(&path).await, 503).await;
        assert_eq!(kind, "/problems/unavailable", "{path}");
    }
    db.drop_database().await;
}
