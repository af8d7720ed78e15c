//! Events of an older schema version still project: the log keeps what earlier releases wrote,
//! and the projector upcasts it on decoding. Here a `post.published` of version 1 (before posts
//! had a `format`) is appended straight to the topic, as a release of that time wrote it.

use std::time::Duration;

use chrono::Utc;
use events::{Envelope, Event, PostFormat, PostPublished, headers};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::stack::{Accepted, Stack};

/// Appends `payload` to `partition`, keyed and labelled as the command API does, and returns
/// the consistency token of its position.
async fn append_raw(
    stack: &Stack,
    partition: i32,
    user_id: &str,
    schema_version: &str,
    payload: &[u8],
) -> String {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .create()
        .expect("producer");
    let record_headers = OwnedHeaders::new()
        .insert(Header {
            key: headers::EVENT_TYPE,
            value: Some("post.published"),
        })
        .insert(Header {
            key: headers::SCHEMA_VERSION,
            value: Some(schema_version),
        })
        .insert(Header {
            key: headers::CONTENT_TYPE,
            value: Some(headers::JSON),
        });
    let offset = producer
        .send(
            FutureRecord::to(&stack.topic)
                .partition(partition)
                .key(user_id)
                .payload(payload)
                .headers(record_headers),
            Duration::from_secs(10),
        )
        .await
        .expect("appended")
        .offset;
    format!("v1.{partition}.{offset}")
}

fn partition_of(token: &str) -> i32 {
    token
        .split('.')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("token names a partition")
}

async fn stored_format(stack: &Stack, post_id: Uuid) -> String {
    sqlx::query_scalar("SELECT format FROM posts WHERE id = $1")
        .bind(post_id)
        .fetch_one(&stack.db.pool().await)
        .await
        .expect("the post's row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_post_published_in_the_log_projects_as_a_plain_post() {
    let stack = Stack::start().await;
    let user = stack.register("Ada").await;
    let partition = partition_of(&user.token);

    // Behind the registration, in the user's partition, exactly as a version 1 writer put it.
    let post_id = Uuid::now_v7();
    let command_id = Uuid::now_v7();
    let accepted_at = "2026-11-27T09:17:55.120034Z";
    let v1 = json!({
        "event_id": Uuid::now_v7(),
        "type": "post.published",
        "schema_version": 1,
        "aggregate_type": "post",
        "aggregate_id": post_id,
        "partition_key": user.aggregate_id,
        "command_id": command_id,
        "accepted_at": accepted_at,
        "data": {"title": "Written by v1", "body": "Before posts had a format."}
    });
    let token = append_raw(
        &stack,
        partition,
        &user.aggregate_id,
        "1",
        &serde_json::to_vec(&v1).expect("json"),
    )
    .await;

    let decision = stack
        .decision(&Accepted {
            command_id: command_id.to_string(),
            aggregate_id: post_id.to_string(),
            token: token.clone(),
        })
        .await;
    assert_eq!(
        decision,
        json!({"command_id": command_id, "status": "applied", "aggregate_id": post_id, "version": 1})
    );

    // Exactly contract v1's fields: the format stays out of the answer.
    let (status, post) = stack
        .read(&format!("/v1/posts/{post_id}"), Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{post}");
    assert_eq!(
        post,
        json!({
            "id": post_id,
            "author_id": user.aggregate_id,
            "title": "Written by v1",
            "body": "Before posts had a format.",
            "version": 1,
            "created_at": accepted_at,
            "updated_at": accepted_at,
        })
    );
    let (_, author) = stack
        .read(&format!("/v1/users/{}", user.aggregate_id), Some(&token))
        .await;
    assert_eq!(author["post_count"], 1);
    let (_, feed) = stack
        .read(
            &format!("/v1/users/{}/posts", user.aggregate_id),
            Some(&token),
        )
        .await;
    assert_eq!(feed["items"], json!([post]));

    assert_eq!(
        stored_format(&stack, post_id).await,
        "plain",
        "a v1 post was plain text"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_post_keeps_its_format_in_the_read_model_and_out_of_the_answers() {
    let stack = Stack::start().await;
    let user = stack.register("Ada").await;
    let partition = partition_of(&user.token);
    let user_id: Uuid = user.aggregate_id.parse().expect("a uuid");

    // Nothing in contract v1 writes markdown yet, so this one goes straight to the topic.
    let markdown = Envelope {
        event_id: Uuid::now_v7(),
        aggregate_id: Uuid::now_v7(),
        partition_key: user_id,
        command_id: Uuid::now_v7(),
        idempotency: None,
        expected_version: None,
        accepted_at: Utc::now(),
        event: Event::PostPublished(PostPublished {
            title: "Notes".into(),
            body: "# Notes\n\n*emphasis*".into(),
            format: PostFormat::Markdown,
        }),
    };
    append_raw(
        &stack,
        partition,
        &user.aggregate_id,
        "2",
        &markdown.encode(),
    )
    .await;
    // Through the command API, behind it in the same partition.
    let plain = stack.publish(&user.aggregate_id, "Plain").await;
    assert_eq!(stack.decision(&plain).await["status"], "applied");

    let (status, page) = stack
        .read(
            &format!("/v1/users/{}/posts", user.aggregate_id),
            Some(&plain.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{page}");
    for item in items {
        let mut fields: Vec<&str> = item
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
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
    }
    let listed = items
        .iter()
        .find(|item| item["id"] == markdown.aggregate_id.to_string())
        .expect("the markdown post is listed");
    assert_eq!(listed["body"], "# Notes\n\n*emphasis*");

    assert_eq!(
        stored_format(&stack, markdown.aggregate_id).await,
        "markdown"
    );
    let plain_id: Uuid = plain.aggregate_id.parse().expect("a uuid");
    assert_eq!(stored_format(&stack, plain_id).await, "plain");
}
