//! A record that is not an event goes to the dead-letter table, and the partition moves on.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::Method;
use serde_json::json;
use sqlx::Row;

use crate::stack::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_and_the_events_behind_it_still_apply() {
    let stack = Stack::start().await;
    let user = stack.register("Gus").await;
    let partition: i32 = user
        .token
        .split('.')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("token names a partition");

    // Written straight to the user's partition, behind the registration.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .create()
        .expect("producer");
    let poison: &[u8] = b"{\"this is\": not an event";
    let poison_offset = producer
        .send(
            FutureRecord::to(&stack.topic)
                .partition(partition)
                .key(user.aggregate_id.as_bytes())
                .payload(poison)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "event-type",
                    value: Some("garbage"),
                })),
            Duration::from_secs(10),
        )
        .await
        .expect("poison appended")
        .offset;

    let after = stack
        .write(
            Method::PATCH,
            &format!("/v1/users/{}", user.aggregate_id),
            Some(json!({"bio": "after"})),
            &[],
        )
        .await;
    assert_eq!(
        stack.decision(&after).await["status"],
        "applied",
        "the event behind the poison is decided"
    );
    let (_, read) = stack
        .read(
            &format!("/v1/users/{}", user.aggregate_id),
            Some(&after.token),
        )
        .await;
    assert_eq!(read["bio"], "after");

    let pool = stack.db.pool().await;
    let row = sqlx::query(
        "SELECT partition, kafka_offset, payload, record_key, headers, error FROM dead_letters",
    )
    .fetch_one(&pool)
    .await
    .expect("exactly one dead letter");
    assert_eq!(row.get::<i32, _>("partition"), partition);
    assert_eq!(row.get::<i64, _>("kafka_offset"), poison_offset);
    assert_eq!(
        row.get::<Vec<u8>, _>("payload"),
        poison,
        "the raw bytes are kept"
    );
    assert_eq!(
        row.get::<Vec<u8>, _>("record_key"),
        user.aggregate_id.as_bytes()
    );
    assert_eq!(
        row.get::<serde_json::Value, _>("headers")["event-type"],
        "garbage"
    );
    assert!(
        row.get::<String, _>("error")
            .contains("not an event envelope"),
        "{}",
        row.get::<String, _>("error")
    );
}
