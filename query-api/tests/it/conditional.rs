//! ETag and If-None-Match on single-resource reads.

use std::time::Duration;

use reqwest::Response;
use test_support::{TestDb, unique_topic};

use crate::helpers::{TestApp, json_ok, spawn_app};
use crate::seed;

async fn not_modified(response: Response, etag: &str) {
    assert_eq!(response.status(), 304);
    assert_eq!(
        response.headers().get("etag").map(|v| v.as_bytes()),
        Some(etag.as_bytes())
    );
    assert!(response.bytes().await.expect("body").is_empty());
}

async fn conditional_reads(app: &TestApp, path: &str, current: &str, older: &str) {
    for matching in [
        current.to_owned(),
        format!("W/{current}"),
        format!("{older}, {current}"),
        "*".to_owned(),
    ] {
        not_modified(
            app.get_with(path, &[("if-none-match", &matching)]).await,
            current,
        )
        .await;
    }
    for stale in [
        older.to_owned(),
        format!("W/{older}"),
        "\"999\"".to_owned(),
        "garbage".to_owned(),
    ] {
        let (headers, _) = json_ok(app.get_with(path, &[("if-none-match", &stale)]).await).await;
        assert_eq!(
            headers.get("etag").map(|v| v.as_bytes()),
            Some(current.as_bytes()),
            "{stale}"
        );
    }
}

#[tokio::test]
async fn users_and_posts_answer_304_to_their_current_etag_only() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let user_id = seed::user(&pool, "Ada", None, seed::at(0)).await;
    seed::update_user(&pool, user_id, "Ada L.").await;
    let post_id = seed::post(&pool, user_id, "Notes", seed::at(1)).await;
    seed::edit_post(&pool, post_id, "Notes 2").await;
    seed::edit_post(&pool, post_id, "Notes 3").await;
    let topic = unique_topic("query");
    let app = spawn_app(&db.url, &topic, Duration::from_secs(5)).await;

    conditional_reads(&app, &format!("/v1/users/{user_id}"), "\"2\"", "\"1\"").await;
    conditional_reads(&app, &format!("/v1/posts/{post_id}"), "\"3\"", "\"2\"").await;

    // A new version makes the old ETag stale, once the projector's notice says so.
    seed::update_user(&pool, user_id, "Ada Lovelace").await;
    seed::advance_and_notify_changed(&pool, &topic, 0, 1, &[user_id], &[]).await;
    app.wait_for_offset(0, 1).await;
    let (headers, body) = json_ok(
        app.get_with(
            &format!("/v1/users/{user_id}"),
            &[("if-none-match", "\"2\"")],
        )
        .await,
    )
    .await;
    assert_eq!(
        headers.get("etag").map(|v| v.as_bytes()),
        Some(&b"\"3\""[..])
    );
    assert_eq!(body["display_name"], "Ada Lovelace");
    db.drop_database().await;
}
