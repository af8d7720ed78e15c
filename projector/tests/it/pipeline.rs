//! Write → decide → read through the three services, rule by rule.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::stack::{
    Stack, command_api, mint_token, projector, projector_config, query_api, write_to,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_user_is_visible_to_a_read_with_its_token() {
    let stack = Stack::start().await;
    let created = stack
        .write(
            Method::POST,
            "/v1/users",
            Some(json!({"display_name": " Ada ", "bio": "math"})),
            &[],
        )
        .await;
    let (status, user) = stack
        .read(
            &format!("/v1/users/{}", created.aggregate_id),
            Some(&created.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["id"], created.aggregate_id.as_str());
    assert_eq!(user["display_name"], " Ada ", "stored exactly as sent");
    assert_eq!(user["bio"], "math");
    assert_eq!(user["post_count"], 0);
    assert_eq!(user["version"], 1);
    let decision = stack.decision(&created).await;
    assert_eq!(decision["status"], "applied");
    assert_eq!(decision["version"], 1);
    assert_eq!(decision["aggregate_id"], created.aggregate_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_if_match_is_a_version_conflict_and_a_current_one_applies() {
    let stack = Stack::start().await;
    let user = stack.register("Ada").await;
    let path = format!("/v1/users/{}", user.aggregate_id);
    let renamed = stack
        .write(
            Method::PATCH,
            &path,
            Some(json!({"display_name": "Ada L."})),
            &[("If-Match", "\"1\"")],
        )
        .await;
    assert_eq!(stack.decision(&renamed).await["version"], 2);
    let stale = stack
        .write(
            Method::PATCH,
            &path,
            Some(json!({"bio": "late"})),
            &[("If-Match", "\"1\"")],
        )
        .await;
    let decision = stack.decision(&stale).await;
    assert_eq!(decision["status"], "rejected");
    assert_eq!(decision["reason"], "version_conflict");
    assert!(decision.get("version").is_none_or(|v| v.is_null()));
    let (_, current) = stack.read(&path, Some(&stale.token)).await;
    assert_eq!(current["display_name"], "Ada L.");
    assert_eq!(
        current["bio"],
        serde_json::Value::Null,
        "the rejected patch changed nothing"
    );
    assert_eq!(current["version"], 2);

    // Posts follow the same rule with their own versions.
    let post = stack.publish(&user.aggregate_id, "first").await;
    let post_path = format!(
        "/v1/users/{}/posts/{}",
        user.aggregate_id, post.aggregate_id
    );
    let stale_edit = stack
        .write(
            Method::PATCH,
            &post_path,
            Some(json!({"title": "x"})),
            &[("If-Match", "\"2\"")],
        )
        .await;
    assert_eq!(
        stack.decision(&stale_edit).await["reason"],
        "version_conflict"
    );
    let edit = stack
        .write(
            Method::PATCH,
            &post_path,
            Some(json!({"title": "edited"})),
            &[("If-Match", "\"1\"")],
        )
        .await;
    assert_eq!(stack.decision(&edit).await["version"], 2);
    let (_, read) = stack
        .read(
            &format!("/v1/posts/{}", post.aggregate_id),
            Some(&edit.token),
        )
        .await;
    assert_eq!(read["title"], "edited");
    assert_eq!(read["body"], "body of first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_under_an_unknown_or_deleted_user_are_not_found() {
    let stack = Stack::start().await;
    let unknown = uuid::Uuid::now_v7();
    // No sign-up made this user, so no client has its token; a valid one is minted.
    let token = format!("Bearer {}", mint_token(&unknown.to_string()));
    let auth = [("Authorization", token.as_str())];
    for accepted in [
        stack
            .write(
                Method::PATCH,
                &format!("/v1/users/{unknown}"),
                Some(json!({"bio": "x"})),
                &auth,
            )
            .await,
        stack
            .write(Method::DELETE, &format!("/v1/users/{unknown}"), None, &auth)
            .await,
        stack
            .write(
                Method::POST,
                &format!("/v1/users/{unknown}/posts"),
                Some(json!({"title": "ghost", "body": "b"})),
                &auth,
            )
            .await,
    ] {
        assert_eq!(
            stack.decision(&accepted).await["reason"],
            "not_found",
            "{accepted:?}"
        );
    }

    let user = stack.register("Bo").await;
    let post = stack.publish(&user.aggregate_id, "before").await;
    let deleted = stack
        .write(
            Method::DELETE,
            &format!("/v1/users/{}", user.aggregate_id),
            None,
            &[],
        )
        .await;
    assert_eq!(stack.decision(&deleted).await["status"], "applied");
    let post_path = format!(
        "/v1/users/{}/posts/{}",
        user.aggregate_id, post.aggregate_id
    );
    for accepted in [
        stack
            .write(
                Method::PATCH,
                &format!("/v1/users/{}", user.aggregate_id),
                Some(json!({"bio": "x"})),
                &[],
            )
            .await,
        stack.publish(&user.aggregate_id, "after").await,
        stack
            .write(Method::PATCH, &post_path, Some(json!({"title": "x"})), &[])
            .await,
        stack.write(Method::DELETE, &post_path, None, &[]).await,
        stack
            .write(
                Method::DELETE,
                &format!("/v1/users/{}", user.aggregate_id),
                None,
                &[],
            )
            .await,
    ] {
        assert_eq!(
            stack.decision(&accepted).await["reason"],
            "not_found",
            "{accepted:?}"
        );
    }

    // A post addressed under another user is not found either, and stays untouched.
    let owner = stack.register("Cy").await;
    let owned = stack.publish(&owner.aggregate_id, "mine").await;
    let other = stack.register("Di").await;
    let foreign = stack
        .write(
            Method::DELETE,
            &format!(
                "/v1/users/{}/posts/{}",
                other.aggregate_id, owned.aggregate_id
            ),
            None,
            &[],
        )
        .await;
    assert_eq!(stack.decision(&foreign).await["reason"], "not_found");
    // The post lives in its author's partition: a token covers only the partition of its write.
    let (status, post) = stack
        .read(
            &format!("/v1/posts/{}", owned.aggregate_id),
            Some(&owned.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(post["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_user_hides_its_posts_and_post_count_follows_creates_and_deletes() {
    let stack = Stack::start().await;
    let user = stack.register("Ed").await;
    let uid = &user.aggregate_id;
    let mut posts = Vec::new();
    for i in 0..3 {
        posts.push(stack.publish(uid, &format!("p{i}")).await);
    }
    let (_, read) = stack
        .read(&format!("/v1/users/{uid}"), Some(&posts[2].token))
        .await;
    assert_eq!(read["post_count"], 3);
    assert_eq!(read["version"], 1, "posts are their own aggregates");

    let gone = stack
        .write(
            Method::DELETE,
            &format!("/v1/users/{uid}/posts/{}", posts[0].aggregate_id),
            None,
            &[],
        )
        .await;
    assert_eq!(stack.decision(&gone).await["version"], 2);
    let again = stack
        .write(
            Method::DELETE,
            &format!("/v1/users/{uid}/posts/{}", posts[0].aggregate_id),
            None,
            &[],
        )
        .await;
    assert_eq!(stack.decision(&again).await["reason"], "not_found");
    let (_, read) = stack
        .read(&format!("/v1/users/{uid}"), Some(&again.token))
        .await;
    assert_eq!(
        read["post_count"], 2,
        "a second delete of the same post does not count twice"
    );
    let (status, _) = stack
        .read(&format!("/v1/posts/{}", posts[0].aggregate_id), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, page) = stack.read(&format!("/v1/users/{uid}/posts"), None).await;
    let titles: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(titles, ["p2", "p1"], "newest first, deleted post gone");

    let deleted = stack
        .write(Method::DELETE, &format!("/v1/users/{uid}"), None, &[])
        .await;
    assert_eq!(stack.decision(&deleted).await["status"], "applied");
    let (status, _) = stack
        .read(&format!("/v1/users/{uid}"), Some(&deleted.token))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for post in &posts[1..] {
        let (status, _) = stack
            .read(&format!("/v1/posts/{}", post.aggregate_id), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "a deleted user's post");
    }
    let (status, _) = stack.read(&format!("/v1/users/{uid}/posts"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, feed) = stack.read("/v1/posts?limit=100", None).await;
    assert_eq!(
        feed["items"].as_array().expect("items").len(),
        0,
        "the feed hides them too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_write_sent_twice_to_two_instances_has_one_effect() {
    let stack = Stack::start().await;
    let second = command_api(&stack.brokers, &stack.topic).await;
    let key = [("Idempotency-Key", "signup-42")];
    let body = json!({"display_name": "Flo"});
    let first = stack
        .write(Method::POST, "/v1/users", Some(body.clone()), &key)
        .await;
    let retry = write_to(
        &stack.client,
        &second.url,
        Method::POST,
        "/v1/users",
        Some(body),
        &key,
    )
    .await;
    assert_eq!(first.command_id, retry.command_id);
    assert_eq!(first.aggregate_id, retry.aggregate_id);

    let uid = first.aggregate_id.clone();
    let post_key = [("Idempotency-Key", "post-1")];
    let post_body = json!({"title": "once", "body": "only once"});
    let path = format!("/v1/users/{uid}/posts");
    let post = stack
        .write(Method::POST, &path, Some(post_body.clone()), &post_key)
        .await;
    let post_retry = write_to(
        &stack.client,
        &second.url,
        Method::POST,
        &path,
        Some(post_body),
        &post_key,
    )
    .await;
    assert_eq!(post.aggregate_id, post_retry.aggregate_id);
    assert_eq!(post.command_id, post_retry.command_id);

    // The same key with another body is a different command, rejected.
    let reused = stack
        .write(
            Method::POST,
            &path,
            Some(json!({"title": "other", "body": "b"})),
            &post_key,
        )
        .await;
    assert_eq!(reused.aggregate_id, post.aggregate_id);
    assert_ne!(reused.command_id, post.command_id);
    assert_eq!(
        stack.decision(&reused).await["reason"],
        "idempotency_key_reused"
    );

    assert_eq!(stack.decision(&first).await["status"], "applied");
    assert_eq!(stack.decision(&post_retry).await["version"], 1);
    let (_, user) = stack
        .read(&format!("/v1/users/{uid}"), Some(&reused.token))
        .await;
    assert_eq!(user["post_count"], 1, "one post, not two");
    let (_, page) = stack.read(&format!("/v1/users/{uid}/posts"), None).await;
    assert_eq!(page["items"].as_array().expect("items").len(), 1);
    let (_, read) = stack
        .read(&format!("/v1/posts/{}", post.aggregate_id), None)
        .await;
    assert_eq!(read["title"], "once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_started_before_the_topic_exists_picks_it_up() {
    let brokers = test_support::kafka_brokers();
    let topic = test_support::unique_topic("late-topic");
    let db = test_support::TestDb::create().await;
    let _projector = projector(projector_config(
        &brokers,
        &topic,
        &format!("{topic}-g"),
        &db.url,
        "early",
    ))
    .await;
    let command = command_api(&brokers, &topic).await;
    let query = query_api(&db.url, &topic).await;
    let client = test_support::http();
    let created = write_to(
        &client,
        &command.url,
        Method::POST,
        "/v1/users",
        Some(json!({"display_name": "Jo"})),
        &[],
    )
    .await;
    let response = client
        .get(format!("{}/v1/commands/{}", query.url, created.command_id))
        .header("Consistency-Token", &created.token)
        .send()
        .await
        .expect("read");
    assert_eq!(response.status(), StatusCode::OK);
}

/// The items of an aggregate's stream, read with `token`, after checking it is one full page.
async fn stream(stack: &Stack, aggregate_id: &str, token: &str) -> Vec<serde_json::Value> {
    let (status, page) = stack
        .read(
            &format!("/v1/streams/{aggregate_id}/events?limit=100"),
            Some(token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["next_cursor"], serde_json::Value::Null);
    page["items"].as_array().expect("items").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_hold_exactly_the_applied_events_with_their_data() {
    let stack = Stack::start().await;
    let user = stack
        .write(
            Method::POST,
            "/v1/users",
            Some(json!({"display_name": "Ada", "bio": "math"})),
            &[],
        )
        .await;
    let uid = user.aggregate_id.clone();
    let user_path = format!("/v1/users/{uid}");
    let renamed = stack
        .write(
            Method::PATCH,
            &user_path,
            Some(json!({"display_name": "Ada L."})),
            &[("If-Match", "\"1\"")],
        )
        .await;
    let stale = stack
        .write(
            Method::PATCH,
            &user_path,
            Some(json!({"bio": "late"})),
            &[("If-Match", "\"1\"")],
        )
        .await;
    let post = stack.publish(&uid, "first").await;
    let post_path = format!("/v1/users/{uid}/posts/{}", post.aggregate_id);
    let edited = stack
        .write(
            Method::PATCH,
            &post_path,
            Some(json!({"title": "edited"})),
            &[("If-Match", "\"1\"")],
        )
        .await;
    let stale_edit = stack
        .write(
            Method::PATCH,
            &post_path,
            Some(json!({"body": "late"})),
            &[("If-Match", "\"1\"")],
        )
        .await;
    let post_deleted = stack.write(Method::DELETE, &post_path, None, &[]).await;
    let user_deleted = stack.write(Method::DELETE, &user_path, None, &[]).await;
    for rejected in [&stale, &stale_edit] {
        assert_eq!(stack.decision(rejected).await["reason"], "version_conflict");
    }
    // A user's events and their posts' share one partition: the last write's token covers all.
    let token = &user_deleted.token;

    let events = stream(&stack, &uid, token).await;
    let shape: Vec<(&str, i64)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().expect("type"),
                e["version"].as_i64().expect("version"),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("user.registered", 1),
            ("user.profile_updated", 2),
            ("user.deleted", 3)
        ],
        "the rejected update is not history, and posts have streams of their own"
    );
    assert_eq!(
        events[0]["data"],
        json!({"display_name": "Ada", "bio": "math"})
    );
    assert_eq!(events[1]["data"], json!({"display_name": "Ada L."}));
    assert_eq!(events[2]["data"], json!({}));
    for (event, accepted) in events.iter().zip([&user, &renamed, &user_deleted]) {
        let decision = stack.decision(accepted).await;
        assert_eq!(decision["status"], "applied");
        assert_eq!(event["version"], decision["version"]);
    }

    let events = stream(&stack, &post.aggregate_id, token).await;
    let shape: Vec<(&str, i64)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().expect("type"),
                e["version"].as_i64().expect("version"),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("post.published", 1),
            ("post.edited", 2),
            ("post.deleted", 3)
        ]
    );
    assert_eq!(events[0]["data"]["title"], "first");
    assert_eq!(events[0]["data"]["body"], "body of first");
    assert_eq!(events[1]["data"], json!({"title": "edited"}));
    assert_eq!(events[2]["data"], json!({}));
    for (event, accepted) in events.iter().zip([&post, &edited, &post_deleted]) {
        assert_eq!(event["version"], stack.decision(accepted).await["version"]);
    }

    let mut event_ids: Vec<&str> = events
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    event_ids.sort_unstable();
    event_ids.dedup();
    assert_eq!(event_ids.len(), 3, "every event has an id of its own");
    for event in &events {
        let occurred_at = event["occurred_at"].as_str().expect("occurred_at");
        assert!(
            chrono::DateTime::parse_from_rfc3339(occurred_at).is_ok() && occurred_at.ends_with('Z'),
            "{occurred_at}"
        );
    }
    let (status, _) = stack
        .read(
            &format!("/v1/streams/{}/events", uuid::Uuid::now_v7()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
