//! GET /v1/streams/{aggregate_id}/events: one aggregate's applied events, in version order.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use test_support::{TestDb, unique_topic};
use uuid::Uuid;

use crate::helpers::{TestApp, json_ok, problem, spawn_app};
use crate::seed;

async fn app_on(db: &TestDb) -> TestApp {
    spawn_app(&db.url, &unique_topic("query"), Duration::from_secs(5)).await
}

fn stream_path(aggregate_id: Uuid) -> String {
    format!("/v1/streams/{aggregate_id}/events")
}

fn time(value: &Value) -> DateTime<Utc> {
    let text = value.as_str().expect("a time string");
    assert!(text.ends_with('Z'), "not UTC with Z: {text}");
    DateTime::parse_from_rfc3339(text)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

/// One page: its items and next cursor, after checking the page's shape.
async fn page(app: &TestApp, path: &str) -> (Vec<Value>, Option<String>) {
    let (_, body) = json_ok(app.get(path).await).await;
    let mut keys: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["items", "next_cursor"], "{body}");
    let items = body["items"].as_array().expect("items").clone();
    let next = match &body["next_cursor"] {
        Value::Null => None,
        Value::String(cursor) => Some(cursor.clone()),
        other => panic!("next_cursor is neither null nor a string: {other}"),
    };
    (items, next)
}

fn versions(items: &[Value]) -> Vec<i64> {
    items
        .iter()
        .map(|item| item["version"].as_i64().expect("version"))
        .collect()
}

/// Follows next_cursor from `query` to the end; every page but the last is full.
async fn all_versions(app: &TestApp, aggregate_id: Uuid, query: &str, limit: u32) -> Vec<i64> {
    let base = format!("{}?{query}limit={limit}", stream_path(aggregate_id));
    let mut visited = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let path = match &cursor {
            Some(cursor) => format!("{base}&cursor={cursor}"),
            None => base.clone(),
        };
        let (items, next) = page(app, &path).await;
        visited.extend(versions(&items));
        match next {
            Some(next) => {
                assert_eq!(
                    items.len(),
                    limit as usize,
                    "a page with a next cursor is full"
                );
                cursor = Some(next);
            }
            None => return visited,
        }
    }
    panic!("paging did not end");
}

/// `count` profile updates after a registration: versions 1..=count+1.
async fn long_stream(pool: &PgPool, user: Uuid, count: i64) {
    seed::event(
        pool,
        user,
        1,
        "user.registered",
        json!({"display_name": "Ada"}),
        seed::at(0),
    )
    .await;
    for version in 2..=count + 1 {
        seed::event(
            pool,
            user,
            version,
            "user.profile_updated",
            json!({"bio": format!("bio {version}")}),
            seed::at(version),
        )
        .await;
    }
}

#[tokio::test]
async fn a_stream_lists_its_applied_events_in_version_order_with_their_data() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let (user, post) = (Uuid::now_v7(), Uuid::now_v7());
    // Inserted out of order: the answer's order is the versions', not the rows'.
    let renamed = seed::event(
        &pool,
        user,
        2,
        "user.profile_updated",
        json!({"display_name": "Ada L."}),
        seed::at(10),
    )
    .await;
    let registered = seed::event(
        &pool,
        user,
        1,
        "user.registered",
        json!({"display_name": "Ada", "bio": "math"}),
        seed::at(0),
    )
    .await;
    let published = seed::event(
        &pool,
        post,
        1,
        "post.published",
        json!({"title": "Hello", "body": "first"}),
        seed::at(5),
    )
    .await;
    let edited = seed::event(
        &pool,
        post,
        2,
        "post.edited",
        json!({"body": "second"}),
        seed::at(6),
    )
    .await;
    let app = app_on(&db).await;

    let (items, next) = page(&app, &stream_path(user)).await;

    assert_eq!(next, None);
    assert_eq!(items.len(), 2, "only the user's own events: {items:?}");
    for item in &items {
        let mut keys: Vec<&str> = item
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["data", "event_id", "occurred_at", "type", "version"]);
    }
    assert_eq!(items[0]["event_id"], registered.to_string());
    assert_eq!(items[0]["type"], "user.registered");
    assert_eq!(items[0]["version"], 1);
    assert_eq!(time(&items[0]["occurred_at"]), seed::at(0));
    assert_eq!(
        items[0]["data"],
        json!({"display_name": "Ada", "bio": "math"})
    );
    assert_eq!(items[1]["event_id"], renamed.to_string());
    assert_eq!(items[1]["type"], "user.profile_updated");
    assert_eq!(items[1]["version"], 2);
    assert_eq!(time(&items[1]["occurred_at"]), seed::at(10));
    assert_eq!(items[1]["data"], json!({"display_name": "Ada L."}));

    let (items, _) = page(&app, &stream_path(post)).await;
    let ids: Vec<&str> = items
        .iter()
        .filter_map(|i| i["event_id"].as_str())
        .collect();
    assert_eq!(ids, [published.to_string(), edited.to_string()]);
    assert_eq!(items[0]["data"], json!({"title": "Hello", "body": "first"}));
    assert_eq!(items[1]["type"], "post.edited");
    assert_eq!(items[1]["data"], json!({"body": "second"}));

    let upper = user.to_string().to_uppercase();
    let (items, _) = page(&app, &format!("/v1/streams/{upper}/events")).await;
    assert_eq!(versions(&items), [1, 2], "ids in either letter case");
    db.drop_database().await;
}

#[tokio::test]
async fn a_deleted_aggregates_stream_is_still_its_history() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let user = seed::user(&pool, "Bo", None, seed::at(0)).await;
    seed::event(
        &pool,
        user,
        1,
        "user.registered",
        json!({"display_name": "Bo"}),
        seed::at(0),
    )
    .await;
    seed::delete_user(&pool, user).await;
    seed::event(&pool, user, 2, "user.deleted", json!({}), seed::at(1)).await;
    let app = app_on(&db).await;

    problem(app.get(&format!("/v1/users/{user}")).await, 404).await;
    let (items, next) = page(&app, &stream_path(user)).await;

    assert_eq!(next, None);
    let types: Vec<&str> = items.iter().filter_map(|i| i["type"].as_str()).collect();
    assert_eq!(types, ["user.registered", "user.deleted"]);
    assert_eq!(items[1]["version"], 2);
    assert_eq!(items[1]["data"], json!({}));
    db.drop_database().await;
}

#[tokio::test]
async fn from_version_starts_the_stream_there() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let user = Uuid::now_v7();
    long_stream(&pool, user, 4).await;
    let app = app_on(&db).await;
    let path = stream_path(user);

    for (from, expected) in [
        (1, &[1, 2, 3, 4, 5][..]),
        (3, &[3, 4, 5]),
        (5, &[5]),
        (6, &[]),
        (1000, &[]),
    ] {
        let (items, next) = page(&app, &format!("{path}?from_version={from}")).await;
        assert_eq!(versions(&items), expected, "from_version={from}");
        assert_eq!(next, None, "from_version={from}");
    }
    let (items, _) = page(&app, &format!("{path}?from_version=3")).await;
    assert_eq!(items[0]["data"], json!({"bio": "bio 3"}));
    db.drop_database().await;
}

#[tokio::test]
async fn paging_with_cursors_visits_every_event_once_in_version_order() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let user = Uuid::now_v7();
    long_stream(&pool, user, 24).await;
    let app = app_on(&db).await;
    let all: Vec<i64> = (1..=25).collect();

    for limit in [1, 2, 3, 7, 24, 25, 100] {
        assert_eq!(
            all_versions(&app, user, "", limit).await,
            all,
            "limit {limit}"
        );
    }
    // from_version may stay in the query string while the cursors are followed.
    assert_eq!(
        all_versions(&app, user, "from_version=4&", 5).await,
        (4..=25).collect::<Vec<i64>>()
    );

    let (first, next) = page(&app, &stream_path(user)).await;
    assert_eq!(
        versions(&first),
        (1..=20).collect::<Vec<i64>>(),
        "20 by default"
    );
    let next = next.expect("a second page");
    let (second, last) = page(&app, &format!("{}?cursor={next}", stream_path(user))).await;
    assert_eq!(versions(&second), (21..=25).collect::<Vec<i64>>());
    assert_eq!(last, None);
    let (exact, none) = page(&app, &format!("{}?limit=25", stream_path(user))).await;
    assert_eq!(exact.len(), 25);
    assert_eq!(
        none, None,
        "no next cursor when the last page is exactly full"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn paging_while_the_stream_grows_visits_every_event_once() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let user = Uuid::now_v7();
    long_stream(&pool, user, 6).await;
    let app = app_on(&db).await;

    let mut visited = Vec::new();
    let mut cursor: Option<String> = None;
    let mut last_version = 7;
    for round in 0.. {
        assert!(round < 100, "paging did not end");
        let path = match &cursor {
            Some(cursor) => format!("{}?limit=3&cursor={cursor}", stream_path(user)),
            None => format!("{}?limit=3", stream_path(user)),
        };
        let (items, next) = page(&app, &path).await;
        visited.extend(versions(&items));
        let Some(next) = next else { break };
        cursor = Some(next);
        if last_version < 12 {
            last_version += 1;
            seed::event(
                &pool,
                user,
                last_version,
                "user.profile_updated",
                json!({"bio": "later"}),
                seed::at(last_version),
            )
            .await;
        }
    }

    assert_eq!(visited, (1..=last_version).collect::<Vec<i64>>());
    db.drop_database().await;
}

#[tokio::test]
async fn an_aggregate_without_applied_events_is_not_found() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let rejected_only = Uuid::now_v7();
    // A rejected command names its aggregate but is not part of any stream.
    seed::rejected(&pool, Uuid::now_v7(), rejected_only, "not_found").await;
    let user = Uuid::now_v7();
    long_stream(&pool, user, 3).await;
    let app = app_on(&db).await;
    let (_, next) = page(&app, &format!("{}?limit=1", stream_path(user))).await;
    let cursor = next.expect("a cursor");

    for path in [
        stream_path(Uuid::now_v7()),
        stream_path(rejected_only),
        format!("{}?from_version=2", stream_path(Uuid::now_v7())),
        format!("{}?cursor={cursor}", stream_path(Uuid::now_v7())),
    ] {
        let kind = problem(app.get(&path).await, 404).await;
        assert_eq!(kind, "/problems/not-found", "{path}");
    }
    db.drop_database().await;
}

#[tokio::test]
async fn bad_ids_from_versions_limits_and_cursors_are_bad_requests() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let user = seed::user(&pool, "Ada", None, seed::at(0)).await;
    long_stream(&pool, user, 1).await;
    seed::post(&pool, user, "one", seed::at(1)).await;
    seed::post(&pool, user, "two", seed::at(2)).await;
    let app = app_on(&db).await;
    let (_, post_cursor) = page(&app, "/v1/posts?limit=1").await;
    let post_cursor = post_cursor.expect("a post cursor");
    let path = stream_path(user);

    for query in [
        "from_version=0",
        "from_version=-1",
        "from_version=x",
        "from_version=",
        "from_version=1.5",
        "from_version=9223372036854775808",
    ] {
        let kind = problem(app.get(&format!("{path}?{query}")).await, 400).await;
        assert_eq!(kind, "/problems/invalid-from-version", "{query}");
    }
    for query in ["limit=0", "limit=101", "limit=x", "limit="] {
        let kind = problem(app.get(&format!("{path}?{query}")).await, 400).await;
        assert_eq!(kind, "/problems/invalid-limit", "{query}");
    }
    for query in [
        "cursor=garbage".to_owned(),
        "cursor=".to_owned(),
        "cursor=AQID".to_owned(),
        // A cursor of another list is not one of a stream.
        format!("cursor={post_cursor}"),
    ] {
        let kind = problem(app.get(&format!("{path}?{query}")).await, 400).await;
        assert_eq!(kind, "/problems/invalid-cursor", "{query}");
    }
    let kind = problem(
        app.get(&format!("{path}?from_version=1&from_version=2"))
            .await,
        400,
    )
    .await;
    assert_eq!(kind, "/problems/invalid-query");
    for bad in ["not-a-uuid".to_owned(), user.simple().to_string()] {
        let kind = problem(app.get(&format!("/v1/streams/{bad}/events")).await, 400).await;
        assert_eq!(kind, "/problems/invalid-id", "{bad}");
    }
    db.drop_database().await;
}
