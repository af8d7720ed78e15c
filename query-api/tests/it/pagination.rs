//! Pages of posts: order, completeness, limits and cursors.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use service_kit::limits::{MAX_HEADER_BYTES, MAX_TARGET_BYTES};
use sqlx::PgPool;
use test_support::{TestDb, unique_topic};
use uuid::Uuid;

use crate::helpers::{TestApp, json_ok, problem, spawn_app};
use crate::seed;

async fn app_on(db: &TestDb) -> TestApp {
    spawn_app(&db.url, &unique_topic("query"), Duration::from_secs(5)).await
}

/// (created_at, id): the order pages come in, newest first.
type SortKey = (DateTime<Utc>, Uuid);

fn sort_key(item: &Value) -> SortKey {
    let created_at = DateTime::parse_from_rfc3339(item["created_at"].as_str().expect("created_at"))
        .expect("RFC 3339")
        .with_timezone(&Utc);
    (
        created_at,
        item["id"].as_str().expect("id").parse().expect("uuid"),
    )
}

async fn page(app: &TestApp, path: &str) -> (Vec<Value>, Option<String>) {
    let (_, body) = json_ok(app.get(path).await).await;
    let mut keys: Vec<&str> = body
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["items", "next_cursor"]);
    let items = body["items"].as_array().expect("items").clone();
    let next = match &body["next_cursor"] {
        Value::Null => None,
        Value::String(cursor) => Some(cursor.clone()),
        other => panic!("next_cursor is neither null nor a string: {other}"),
    };
    (items, next)
}

fn with_query(path: &str, limit: u32, cursor: Option<&str>) -> String {
    match cursor {
        Some(cursor) => format!("{path}?limit={limit}&cursor={cursor}"),
        None => format!("{path}?limit={limit}"),
    }
}

/// Follows next_cursor to the end; every page but the last is full.
async fn all_pages(app: &TestApp, path: &str, limit: u32) -> Vec<SortKey> {
    let mut visited = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let (items, next) = page(app, &with_query(path, limit, cursor.as_deref())).await;
        assert!(items.len() <= limit as usize);
        visited.extend(items.iter().map(sort_key));
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

/// Posts laid out with ties in created_at, by two authors, plus posts that must not show.
struct Layout {
    author: Uuid,
    author_posts: Vec<SortKey>,
    visible: Vec<SortKey>,
}

async fn layout(pool: &PgPool) -> Layout {
    let author = seed::user(pool, "Ada", None, seed::at(-1000)).await;
    let other = seed::user(pool, "Bo", None, seed::at(-1000)).await;
    let mut author_posts = Vec::new();
    let mut visible = Vec::new();
    for (n, seconds) in [10, 10, 10, 5, 5, 20, 1, 7, 7, 10].into_iter().enumerate() {
        let by = if n % 3 == 0 { other } else { author };
        let created_at = seed::at(seconds);
        let id = seed::post(pool, by, &format!("post {n}"), created_at).await;
        visible.push((created_at, id));
        if by == author {
            author_posts.push((created_at, id));
        }
    }
    let deleted = seed::post(pool, author, "deleted", seed::at(10)).await;
    seed::delete_post(pool, deleted).await;
    let gone = seed::user(pool, "Gone", None, seed::at(-1000)).await;
    seed::post(pool, gone, "of a deleted user", seed::at(10)).await;
    seed::delete_user(pool, gone).await;
    newest_first(&mut visible);
    newest_first(&mut author_posts);
    Layout {
        author,
        author_posts,
        visible,
    }
}

fn newest_first(keys: &mut [SortKey]) {
    keys.sort_unstable_by(|a, b| b.cmp(a));
}

#[tokio::test]
async fn paging_visits_every_post_once_newest_first_even_with_ties() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let layout = layout(&pool).await;
    let app = app_on(&db).await;

    for limit in [1, 2, 3, 4, 100] {
        assert_eq!(
            all_pages(&app, "/v1/posts", limit).await,
            layout.visible,
            "feed, limit {limit}"
        );
        let path = format!("/v1/users/{}/posts", layout.author);
        assert_eq!(
            all_pages(&app, &path, limit).await,
            layout.author_posts,
            "author, limit {limit}"
        );
    }
    db.drop_database().await;
}

#[tokio::test]
async fn page_items_are_post_objects() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let author = seed::user(&pool, "Ada", None, seed::at(0)).await;
    let post_id = seed::post(&pool, author, "only", seed::at(1)).await;
    let app = app_on(&db).await;

    let (items, next) = page(&app, &format!("/v1/users/{author}/posts")).await;

    assert_eq!(next, None);
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(item["id"], post_id.to_string());
    assert_eq!(item["author_id"], author.to_string());
    assert_eq!(item["title"], "only");
    assert_eq!(item["body"], "body of only");
    assert_eq!(item["version"], 1);
    assert_eq!(sort_key(item).0, seed::at(1));
    assert!(
        item["updated_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    db.drop_database().await;
}

#[tokio::test]
async fn limit_defaults_to_twenty_and_goes_up_to_a_hundred() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let author = seed::user(&pool, "Ada", None, seed::at(0)).await;
    for n in 0..25 {
        seed::post(&pool, author, &format!("post {n}"), seed::at(n)).await;
    }
    let app = app_on(&db).await;

    let (first, next) = page(&app, "/v1/posts").await;
    assert_eq!(first.len(), 20);
    let next = next.expect("a second page");
    let (second, last) = page(&app, &format!("/v1/posts?cursor={next}")).await;
    assert_eq!(second.len(), 5);
    assert_eq!(last, None);

    let (all, none) = page(&app, "/v1/posts?limit=100").await;
    assert_eq!(all.len(), 25);
    assert_eq!(none, None);
    let (exact, none) = page(&app, &format!("/v1/users/{author}/posts?limit=25")).await;
    assert_eq!(exact.len(), 25);
    assert_eq!(
        none, None,
        "no next cursor when the last page is exactly full"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn bad_limits_and_cursors_are_bad_requests() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let author = seed::user(&pool, "Ada", None, seed::at(0)).await;
    let app = app_on(&db).await;

    for path in ["/v1/posts".to_owned(), format!("/v1/users/{author}/posts")] {
        for query in [
            "limit=0",
            "limit=101",
            "limit=x",
            "limit=",
            "limit=-1",
            "limit=2.5",
        ] {
            let kind = problem(app.get(&format!("{path}?{query}")).await, 400).await;
            assert_eq!(kind, "/problems/invalid-limit", "{path}?{query}");
        }
        for query in [
            "cursor=garbage",
            "cursor=",
            "cursor=AQID",
            "cursor=%2F%2F%2F%2F",
        ] {
            let kind = problem(app.get(&format!("{path}?{query}")).await, 400).await;
            assert_eq!(kind, "/problems/invalid-cursor", "{path}?{query}");
        }
        problem(app.get(&format!("{path}?limit=5&limit=6")).await, 400).await;
    }
    db.drop_database().await;
}

#[tokio::test]
async fn absurd_query_strings_are_refused_before_the_read() {
    let db = TestDb::migrated().await;
    let app = app_on(&db).await;
    let room = MAX_TARGET_BYTES - "/v1/posts?cursor=".len();
    // As long as a target may be: the cursor is read, and refused as one.
    let longest = format!("/v1/posts?cursor={}", "A".repeat(room));
    let kind = problem(app.get(&longest).await, 400).await;
    assert_eq!(kind, "/problems/invalid-cursor");
    // One byte more, or any number of parameters nobody reads: the target is too long.
    let over = format!("/v1/posts?cursor={}", "A".repeat(room + 1));
    let kind = problem(app.get(&over).await, 414).await;
    assert_eq!(kind, "/problems/uri-too-long");
    let junk = format!("/v1/posts?limit=5{}", "&x=1".repeat(2_500));
    let kind = problem(app.get(&junk).await, 414).await;
    assert_eq!(kind, "/problems/uri-too-long");
    // And the other head limit is installed too.
    let large = "v".repeat(MAX_HEADER_BYTES);
    let kind = problem(app.get_with("/v1/posts", &[("x-large", &large)]).await, 431).await;
    assert_eq!(kind, "/problems/header-fields-too-large");
    db.drop_database().await;
}

#[tokio::test]
async fn paging_while_posts_are_added_visits_every_earlier_post_exactly_once() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let author = seed::user(&pool, "Ada", None, seed::at(-10_000)).await;
    let mut existing = Vec::new();
    for n in 0..12 {
        // Pairs of equal times, so page boundaries fall inside ties.
        let created_at = seed::at(n / 2);
        existing.push((
            created_at,
            seed::post(&pool, author, &format!("post {n}"), created_at).await,
        ));
    }
    let app = app_on(&db).await;

    for path in ["/v1/posts".to_owned(), format!("/v1/users/{author}/posts")] {
        let mut visited: Vec<SortKey> = Vec::new();
        let mut cursor: Option<String> = None;
        for round in 0.. {
            assert!(round < 100, "paging did not end");
            let (items, next) = page(&app, &with_query(&path, 3, cursor.as_deref())).await;
            visited.extend(items.iter().map(sort_key));
            let Some(next) = next else { break };
            cursor = Some(next);
            // Between pages: a newer post, an older one, and one tied with an existing post.
            let round = i64::from(round);
            seed::post(&pool, author, "newer", seed::at(1000 + round)).await;
            seed::post(&pool, author, "older", seed::at(-1000 - round)).await;
            seed::post(&pool, author, "tied", seed::at(round % 6)).await;
        }

        let distinct: HashSet<&SortKey> = visited.iter().collect();
        assert_eq!(distinct.len(), visited.len(), "{path}: an item repeated");
        for key in &existing {
            assert!(distinct.contains(key), "{path}: {key:?} was skipped");
        }
        assert!(
            visited.windows(2).all(|w| w[0] > w[1]),
            "{path}: not newest first"
        );
    }
    db.drop_database().await;
}
