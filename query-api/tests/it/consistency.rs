//! Read-your-writes: the Consistency-Token wait.

use std::time::Duration;

use sqlx::PgPool;
use test_support::{TestDb, unique_topic};
use uuid::Uuid;

use crate::helpers::{TestApp, eventually, json_ok, problem, spawn_app};
use crate::seed;

const LONG_WAIT: Duration = Duration::from_secs(30);
const SHORT_WAIT: Duration = Duration::from_millis(300);

const WAITING: &str = "query_api_consistency_waits_in_flight";

fn outcome(name: &str) -> String {
    format!("query_api_consistency_waits_total{{outcome=\"{name}\"}}")
}

fn next_offset(partition: i32) -> String {
    format!("query_api_projector_next_offset{{partition=\"{partition}\"}}")
}

struct Fixture {
    db: TestDb,
    pool: PgPool,
    topic: String,
    user_path: String,
}

/// A user to read, and the projector at next offset 5 on partition 0.
async fn fixture() -> Fixture {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let topic = unique_topic("query");
    let user_id = seed::user(&pool, "Ada", None, seed::at(0)).await;
    seed::advance_and_notify(&pool, &topic, 0, 5).await;
    Fixture {
        db,
        pool,
        topic,
        user_path: format!("/v1/users/{user_id}"),
    }
}

/// The app, once its follower has loaded the projector's progress: from then on only
/// notifications (or the deadline) move what it knows.
async fn spawn_loaded(f: &Fixture, wait: Duration) -> TestApp {
    let app = spawn_app(&f.db.url, &f.topic, wait).await;
    eventually("the start-up load", || async {
        app.metric(&next_offset(0)).await == Some(5.0)
    })
    .await;
    app
}

async fn wait_until_waiting(app: &TestApp, count: f64) {
    eventually("the read to wait", || async {
        app.metric(WAITING).await == Some(count)
    })
    .await;
}

#[tokio::test]
async fn a_covered_token_is_served_at_once() {
    let f = fixture().await;
    // The offsets were there before the app started: it loads them rather than waiting.
    let app = spawn_loaded(&f, LONG_WAIT).await;

    for token in ["v1.0.0", "v1.0.4"] {
        let response = app
            .get_with(&f.user_path, &[("consistency-token", token)])
            .await;
        json_ok(response).await;
    }

    assert_eq!(app.metric(&outcome("immediate")).await, Some(2.0));
    f.db.drop_database().await;
}

#[tokio::test]
async fn a_waiting_read_is_released_by_the_projectors_notification() {
    let f = fixture().await;
    let app = spawn_loaded(&f, LONG_WAIT).await;
    let read = {
        let (client, url) = (
            test_support::http(),
            format!("{}{}", app.address, f.user_path),
        );
        tokio::spawn(async move {
            client
                .get(url)
                .header("consistency-token", "v1.0.7")
                .send()
                .await
        })
    };
    wait_until_waiting(&app, 1.0).await;

    // Progress in the table without a notification does not release the read (only the
    // deadline's last look at the table would) ...
    seed::set_offset_silently(&f.pool, &f.topic, 0, 8).await;
    // ... as shows once the follower has handled a later notification, about another partition.
    seed::advance_and_notify(&f.pool, &f.topic, 1, 3).await;
    eventually("the follower to see partition 1", || async {
        app.metric(&next_offset(1)).await == Some(3.0)
    })
    .await;
    assert!(
        !read.is_finished(),
        "the read was answered before any notification covered it"
    );
    assert_eq!(app.metric(WAITING).await, Some(1.0));

    seed::advance_and_notify(&f.pool, &f.topic, 0, 9).await;

    let response = read.await.expect("request task").expect("response");
    let (_, body) = json_ok(response).await;
    assert_eq!(body["display_name"], "Ada");
    assert_eq!(app.metric(&outcome("woken")).await, Some(1.0));
    assert_eq!(
        app.metric(&outcome("table")).await,
        Some(0.0),
        "released by the deadline, not the notification"
    );
    assert_eq!(app.metric(WAITING).await, Some(0.0));
    f.db.drop_database().await;
}

#[tokio::test]
async fn a_stream_read_with_a_token_waits_for_the_event_it_names() {
    let f = fixture().await;
    let app = spawn_loaded(&f, LONG_WAIT).await;
    let post_id = Uuid::now_v7();
    let read = {
        let (client, url) = (
            test_support::http(),
            format!("{}/v1/streams/{post_id}/events", app.address),
        );
        tokio::spawn(async move {
            client
                .get(url)
                .header("consistency-token", "v1.0.5")
                .send()
                .await
        })
    };
    wait_until_waiting(&app, 1.0).await;

    // What the projector's batch does: the event, then the offset past it and the notification.
    seed::event(
        &f.pool,
        post_id,
        1,
        "post.published",
        serde_json::json!({"title": "t", "body": "b"}),
        seed::at(1),
    )
    .await;
    seed::advance_and_notify(&f.pool, &f.topic, 0, 6).await;

    let response = read.await.expect("request task").expect("response");
    let (_, body) = json_ok(response).await;
    assert_eq!(body["items"][0]["type"], "post.published", "{body}");
    assert_eq!(body["items"][0]["version"], 1);
    assert_eq!(app.metric(&outcome("woken")).await, Some(1.0));
    f.db.drop_database().await;
}

#[tokio::test]
async fn a_token_for_a_partition_without_progress_waits_for_its_first_batch() {
    let f = fixture().await;
    let app = spawn_app(&f.db.url, &f.topic, LONG_WAIT).await;
    let read = {
        let (client, url) = (test_support::http(), format!("{}/v1/posts", app.address));
        tokio::spawn(async move {
            client
                .get(url)
                .header("consistency-token", "v1.3.0")
                .send()
                .await
        })
    };
    wait_until_waiting(&app, 1.0).await;

    seed::advance_and_notify(&f.pool, &f.topic, 3, 1).await;

    let response = read.await.expect("request task").expect("response");
    json_ok(response).await;
    assert_eq!(app.metric(&outcome("woken")).await, Some(1.0));
    f.db.drop_database().await;
}

#[tokio::test]
async fn notifications_about_another_topic_release_nothing() {
    let f = fixture().await;
    let app = spawn_loaded(&f, LONG_WAIT).await;
    let read = {
        let (client, url) = (
            test_support::http(),
            format!("{}{}", app.address, f.user_path),
        );
        tokio::spawn(async move {
            client
                .get(url)
                .header("consistency-token", "v1.0.50")
                .send()
                .await
        })
    };
    wait_until_waiting(&app, 1.0).await;

    seed::advance_and_notify(&f.pool, &unique_topic("other"), 0, 100).await;
    seed::advance_and_notify(&f.pool, &f.topic, 1, 1).await;
    eventually("the follower to see partition 1", || async {
        app.metric(&next_offset(1)).await == Some(1.0)
    })
    .await;
    assert_eq!(app.metric(&next_offset(0)).await, Some(5.0));
    assert!(!read.is_finished());

    seed::advance_and_notify(&f.pool, &f.topic, 0, 51).await;
    json_ok(read.await.expect("request task").expect("response")).await;
    f.db.drop_database().await;
}

#[tokio::test]
async fn a_token_never_covered_times_out_with_503() {
    let f = fixture().await;
    let app = spawn_app(&f.db.url, &f.topic, SHORT_WAIT).await;

    for path in [
        f.user_path.clone(),
        "/v1/posts".to_owned(),
        format!("/v1/commands/{}", Uuid::now_v7()),
        format!("/v1/streams/{}/events", Uuid::now_v7()),
    ] {
        let response = app
            .get_with(&path, &[("consistency-token", "v1.0.5")])
            .await;
        assert_eq!(
            problem(response, 503).await,
            "/problems/consistency-timeout",
            "{path}"
        );
    }
    assert_eq!(app.metric(&outcome("timeout")).await, Some(4.0));
    assert_eq!(app.metric(WAITING).await, Some(0.0));
    f.db.drop_database().await;
}

#[tokio::test]
async fn a_lost_notification_is_made_up_for_by_the_table_at_the_deadline() {
    let f = fixture().await;
    let app = spawn_loaded(&f, SHORT_WAIT).await;
    seed::set_offset_silently(&f.pool, &f.topic, 0, 10).await;

    let response = app
        .get_with(&f.user_path, &[("consistency-token", "v1.0.9")])
        .await;

    json_ok(response).await;
    assert_eq!(app.metric(&outcome("table")).await, Some(1.0));
    f.db.drop_database().await;
}

#[tokio::test]
async fn every_read_route_takes_a_token() {
    let f = fixture().await;
    let command_id = Uuid::now_v7();
    seed::applied(&f.pool, command_id, Uuid::now_v7(), 1).await;
    let app = spawn_app(&f.db.url, &f.topic, SHORT_WAIT).await;
    let user_id = f.user_path.trim_start_matches("/v1/users/").to_owned();
    let post_id = seed::post(&f.pool, user_id.parse().expect("uuid"), "p", seed::at(1)).await;
    seed::event(
        &f.pool,
        post_id,
        1,
        "post.published",
        serde_json::json!({"title": "p", "body": "b"}),
        seed::at(1),
    )
    .await;

    for path in [
        f.user_path.clone(),
        format!("/v1/users/{user_id}/posts"),
        "/v1/posts".to_owned(),
        format!("/v1/posts/{post_id}"),
        format!("/v1/commands/{command_id}"),
        format!("/v1/streams/{post_id}/events"),
    ] {
        json_ok(
            app.get_with(&path, &[("consistency-token", "v1.0.4")])
                .await,
        )
        .await;
        let response = app
            .get_with(&path, &[("consistency-token", "v1.0.5")])
            .await;
        assert_eq!(
            problem(response, 503).await,
            "/problems/consistency-timeout",
            "{path}"
        );
    }
    f.db.drop_database().await;
}

#[tokio::test]
async fn malformed_tokens_are_bad_requests() {
    let f = fixture().await;
    let app = spawn_app(&f.db.url, &f.topic, SHORT_WAIT).await;

    for token in ["", "v1.0", "v2.0.1", "v1.-1.5", "v1.0.x", "garbage"] {
        for path in [
            f.user_path.clone(),
            "/v1/posts".to_owned(),
            format!("/v1/commands/{}", Uuid::now_v7()),
            format!("/v1/streams/{}/events", Uuid::now_v7()),
        ] {
            let response = app.get_with(&path, &[("consistency-token", token)]).await;
            assert_eq!(
                problem(response, 400).await,
                "/problems/invalid-consistency-token",
                "{token:?} on {path}"
            );
        }
    }
    let two = test_support::http()
        .get(format!("{}{}", app.address, f.user_path))
        .header("consistency-token", "v1.0.1")
        .header("consistency-token", "v1.0.2")
        .send()
        .await
        .expect("request");
    assert_eq!(
        problem(two, 400).await,
        "/problems/invalid-consistency-token"
    );
    f.db.drop_database().await;
}
