//! The read cache against real PostgreSQL: rows changed behind its back (without a notice) show
//! that an answer came from the cache, and the notice that names them that it was dropped.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use test_support::{TestDb, unique_topic};
use uuid::Uuid;

use crate::helpers::{TestApp, config, eventually, json_ok, problem, spawn_app_with};
use crate::seed;

const HITS: &str = "query_api_cache_hits_total";
const CLEARS: &str = "query_api_cache_clears_total";

struct Fixture {
    db: TestDb,
    pool: PgPool,
    topic: String,
    ada: Uuid,
    post: Uuid,
    app: TestApp,
}

/// Ada with one post, the projector at next offset 5 on partition 0, and an app whose cache
/// serves (so that every read from here on may fill it).
async fn fixture(cache_entries: usize) -> Fixture {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let topic = unique_topic("cache");
    let ada = seed::user(&pool, "Ada", None, seed::at(0)).await;
    let post = seed::post(&pool, ada, "Notes", seed::at(1)).await;
    seed::advance_and_notify(&pool, &topic, 0, 5).await;
    let app = spawn_app_with(query_api::Config {
        cache_entries,
        ..config(&db.url, &topic, Duration::from_secs(30))
    })
    .await;
    app.wait_for_offset(0, 5).await;
    if cache_entries > 0 {
        app.wait_for_cache_following(true).await;
    }
    Fixture {
        db,
        pool,
        topic,
        ada,
        post,
        app,
    }
}

impl Fixture {
    async fn body(&self, path: &str) -> Value {
        json_ok(self.app.get(path).await).await.1
    }

    async fn with_token(&self, path: &str, token: &str) -> Value {
        json_ok(
            self.app
                .get_with(path, &[("consistency-token", token)])
                .await,
        )
        .await
        .1
    }

    /// A batch that committed up to `next_offset` and whose notice names these owners and posts;
    /// returns once the app has applied the notice.
    async fn notice(&self, next_offset: i64, owners: &[Uuid], posts: &[Uuid]) {
        seed::advance_and_notify_changed(&self.pool, &self.topic, 0, next_offset, owners, posts)
            .await;
        self.app.wait_for_offset(0, next_offset).await;
    }

    async fn hits(&self) -> f64 {
        self.app.metric(HITS).await.unwrap_or(0.0)
    }

    async fn done(self) {
        drop(self.app);
        self.pool.close().await;
        self.db.drop_database().await;
    }
}

fn titles(page: &Value) -> Vec<&str> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["title"].as_str().expect("a title"))
        .collect()
}

#[tokio::test]
async fn reads_come_from_the_cache_until_a_notice_names_what_they_show() {
    let f = fixture(10_000).await;
    let user = format!("/v1/users/{}", f.ada);
    let post = format!("/v1/posts/{}", f.post);
    let her_posts = format!("/v1/users/{}/posts", f.ada);
    let feed = "/v1/posts?limit=10".to_owned();
    assert_eq!(f.body(&user).await["display_name"], "Ada");
    assert_eq!(f.body(&post).await["title"], "Notes");
    assert_eq!(titles(&f.body(&her_posts).await), ["Notes"]);
    assert_eq!(titles(&f.body(&feed).await), ["Notes"]);
    let hits = f.hits().await;

    // Behind the cache's back: no notice.
    seed::update_user(&f.pool, f.ada, "Ada L.").await;
    seed::edit_post(&f.pool, f.post, "Notes, revised").await;
    let newer = seed::post(&f.pool, f.ada, "More notes", seed::at(2)).await;
    assert_eq!(f.body(&user).await["display_name"], "Ada");
    assert_eq!(f.body(&post).await["title"], "Notes");
    assert_eq!(titles(&f.body(&her_posts).await), ["Notes"]);
    assert_eq!(titles(&f.body(&feed).await), ["Notes"]);
    assert_eq!(f.hits().await, hits + 4.0);

    // A notice about someone else changes nothing of hers, except the feed, which any change
    // may touch.
    let bo = seed::user(&f.pool, "Bo", None, seed::at(3)).await;
    f.notice(6, &[bo], &[]).await;
    assert_eq!(f.body(&user).await["display_name"], "Ada");
    assert_eq!(f.body(&post).await["title"], "Notes");
    assert_eq!(titles(&f.body(&her_posts).await), ["Notes"]);
    assert_eq!(
        titles(&f.body(&feed).await),
        ["More notes", "Notes, revised"]
    );

    // Her batch: the notice names her and the posts it wrote.
    f.notice(7, &[f.ada], &[f.post, newer]).await;
    let body = f.body(&user).await;
    assert_eq!(body["display_name"], "Ada L.");
    assert_eq!(body["post_count"], 2);
    assert_eq!(f.body(&post).await["title"], "Notes, revised");
    assert_eq!(
        titles(&f.body(&her_posts).await),
        ["More notes", "Notes, revised"]
    );
    f.done().await;
}

#[tokio::test]
async fn naming_a_deleted_user_hides_their_cached_posts_too() {
    let f = fixture(10_000).await;
    let post = format!("/v1/posts/{}", f.post);
    for path in [
        format!("/v1/users/{}", f.ada),
        post.clone(),
        format!("/v1/users/{}/posts", f.ada),
    ] {
        json_ok(f.app.get(&path).await).await;
    }
    assert_eq!(titles(&f.body("/v1/posts").await), ["Notes"]);

    seed::delete_user(&f.pool, f.ada).await;
    json_ok(f.app.get(&post).await).await;

    // `user.deleted` names no post: its owner covers them.
    f.notice(6, &[f.ada], &[]).await;
    for path in [
        format!("/v1/users/{}", f.ada),
        post,
        format!("/v1/users/{}/posts", f.ada),
    ] {
        problem(f.app.get(&path).await, 404).await;
    }
    assert_eq!(titles(&f.body("/v1/posts").await), Vec::<&str>::new());
    f.done().await;
}

#[tokio::test]
async fn a_missing_post_is_cached_until_a_notice_names_the_post() {
    let f = fixture(10_000).await;
    let id = Uuid::now_v7();
    let path = format!("/v1/posts/{id}");
    problem(f.app.get(&path).await, 404).await;

    seed::post_with_id(&f.pool, id, f.ada, "Late", seed::at(5)).await;
    problem(f.app.get(&path).await, 404).await;
    f.notice(6, &[], &[id]).await;

    assert_eq!(f.body(&path).await["title"], "Late");
    f.done().await;
}

#[tokio::test]
async fn a_token_read_never_gets_an_entry_filled_before_its_write() {
    let f = fixture(10_000).await;
    let user = format!("/v1/users/{}", f.ada);
    // Filled under next offset 5: the writes up to offset 4.
    assert_eq!(f.body(&user).await["display_name"], "Ada");

    // The write at offset 5. Its notice names someone else, so nothing makes the entry stale:
    // only what it was filled under keeps it from the token's read.
    seed::update_user(&f.pool, f.ada, "Ada L.").await;
    f.notice(6, &[Uuid::now_v7()], &[]).await;
    assert_eq!(f.body(&user).await["display_name"], "Ada", "still cached");
    let hits = f.hits().await;
    assert_eq!(f.with_token(&user, "v1.0.4").await["display_name"], "Ada");
    assert_eq!(
        f.hits().await,
        hits + 1.0,
        "an earlier token is served the entry"
    );

    assert_eq!(
        f.with_token(&user, "v1.0.5").await["display_name"],
        "Ada L."
    );
    assert_eq!(f.hits().await, hits + 1.0, "not from the cache");
    // The token's read refilled the entry.
    assert_eq!(f.body(&user).await["display_name"], "Ada L.");
    assert_eq!(f.hits().await, hits + 2.0);
    f.done().await;
}

#[tokio::test]
async fn if_none_match_is_answered_from_the_cache() {
    let f = fixture(10_000).await;
    let user = format!("/v1/users/{}", f.ada);
    json_ok(f.app.get(&user).await).await;
    // PostgreSQL has version 2 now; the cache still has 1.
    seed::update_user(&f.pool, f.ada, "Ada L.").await;
    let hits = f.hits().await;

    let response = f.app.get_with(&user, &[("if-none-match", "\"1\"")]).await;
    assert_eq!(response.status(), 304);
    assert_eq!(
        response.headers().get("etag").map(|v| v.as_bytes()),
        Some(&b"\"1\""[..])
    );
    assert_eq!(f.hits().await, hits + 1.0);

    f.notice(6, &[f.ada], &[]).await;
    let (headers, body) = json_ok(f.app.get_with(&user, &[("if-none-match", "\"1\"")]).await).await;
    assert_eq!(
        headers.get("etag").map(|v| v.as_bytes()),
        Some(&b"\"2\""[..])
    );
    assert_eq!(body["display_name"], "Ada L.");
    f.done().await;
}

#[tokio::test]
async fn a_reconnect_of_the_listener_clears_the_cache() {
    let f = fixture(10_000).await;
    let user = format!("/v1/users/{}", f.ada);
    json_ok(f.app.get(&user).await).await;
    seed::update_user(&f.pool, f.ada, "Ada L.").await;
    assert_eq!(f.body(&user).await["display_name"], "Ada");
    let clears = f.app.metric(CLEARS).await.expect("clears");

    // Every connection of the app, the listening one among them. Notices sent meanwhile would
    // be lost: the follower cannot know what changed while it was away.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&f.pool)
    .await
    .expect("terminate the app's connections");
    // Suspended when the connection went, cleared again when it is back.
    eventually("the follower to reconnect", || async {
        f.app.metric(CLEARS).await >= Some(clears + 2.0)
            && f.app.metric("query_api_cache_following").await == Some(1.0)
    })
    .await;

    assert_eq!(f.body(&user).await["display_name"], "Ada L.");
    f.done().await;
}

#[tokio::test]
async fn a_decision_is_cached_once_made_and_its_absence_never() {
    let f = fixture(10_000).await;
    let command = Uuid::now_v7();
    let path = format!("/v1/commands/{command}");
    problem(f.app.get(&path).await, 404).await;

    seed::applied(&f.pool, command, f.ada, 2).await;
    assert_eq!(f.body(&path).await["version"], 2, "the 404 was not kept");

    sqlx::query("UPDATE decisions SET version = 99 WHERE command_id = $1")
        .bind(command)
        .execute(&f.pool)
        .await
        .expect("tamper with the decision");
    assert_eq!(f.body(&path).await["version"], 2, "cached");
    // A decision never changes: any later token may be served the entry.
    let hits = f.hits().await;
    f.notice(6, &[f.ada], &[]).await;
    assert_eq!(f.with_token(&path, "v1.0.5").await["version"], 2);
    assert_eq!(f.hits().await, hits + 1.0);
    f.done().await;
}

#[tokio::test]
async fn a_cache_of_no_entries_reads_postgresql_every_time() {
    let f = fixture(0).await;
    let user = format!("/v1/users/{}", f.ada);
    assert_eq!(f.body(&user).await["display_name"], "Ada");
    seed::update_user(&f.pool, f.ada, "Ada L.").await;
    assert_eq!(f.body(&user).await["display_name"], "Ada L.");
    assert_eq!(f.app.metric(HITS).await, None);
    f.done().await;
}
