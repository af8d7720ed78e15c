//! The 202 answers of the six writes, and the events they put in the topic.

use events::{
    Event, Idempotency, PostEdited, PostFormat, PostPublished, UserProfileUpdated, UserRegistered,
    headers,
};
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{Accepted, Answer, Req, TestApp, read_record, spawn_shared_app};

/// Sends a write, checks its 202 and that exactly one record was appended, and returns the
/// record's checks to the caller.
async fn write_and_check(app: &TestApp, req: Req) -> (Answer, Accepted, crate::helpers::Record) {
    let before = app.end_offset_sum().await;
    let answer = app.send(req).await;
    let accepted = answer.accepted();
    assert_eq!(
        app.end_offset_sum().await,
        before + 1,
        "exactly one record appended"
    );
    let record = read_record(&app.brokers, &app.topic, accepted.token).await;
    assert_eq!(record.envelope.command_id, accepted.command_id);
    assert_eq!(record.envelope.aggregate_id, accepted.aggregate_id);
    assert_eq!(
        record.headers.get(headers::EVENT_TYPE).map(String::as_str),
        Some(record.envelope.type_name())
    );
    assert_eq!(
        record.headers.get(headers::SCHEMA_VERSION),
        Some(&record.raw["schema_version"].to_string()),
        "the header repeats the payload's schema version"
    );
    assert_eq!(
        record
            .headers
            .get(headers::CONTENT_TYPE)
            .map(String::as_str),
        Some(headers::JSON)
    );
    assert_eq!(
        record.key,
        record.envelope.partition_key.to_string(),
        "keyed by the owning user"
    );
    (answer, accepted, record)
}

#[tokio::test]
async fn each_of_the_six_writes_appends_its_event_and_answers_202() {
    let app = spawn_shared_app().await;

    // POST /v1/users, with a request id and an idempotency key.
    let (answer, user, record) = write_and_check(
        &app,
        Req::new(Method::POST, "/v1/users")
            .json(json!({"display_name": " Ada ", "bio": "héllo"}))
            .header("x-request-id", "req-sign-up-1")
            .header("idempotency-key", "sign-up-1")
            .header("if-match", "\"7\""), // meaningless on a create: ignored
    )
    .await;
    assert_eq!(answer.header("x-request-id"), Some("req-sign-up-1"));
    assert_eq!(user.resource, format!("/v1/users/{}", user.aggregate_id));
    assert_eq!(
        record.envelope.event,
        Event::UserRegistered(UserRegistered {
            display_name: " Ada ".into(),
            bio: Some("héllo".into())
        })
    );
    assert_eq!(record.envelope.partition_key, user.aggregate_id);
    assert_eq!(
        record.envelope.idempotency,
        Some(Idempotency {
            scope: Uuid::nil(),
            key: "sign-up-1".into()
        })
    );
    assert_eq!(record.envelope.expected_version, None);
    assert_eq!(record.raw["type"], "user.registered");
    let user_id = user.aggregate_id;
    let bearer = user.access_token().to_owned();

    // PATCH /v1/users/{user_id}, without a request id: one is made up.
    let (answer, patched, record) = write_and_check(
        &app,
        Req::new(Method::PATCH, format!("/v1/users/{user_id}"))
            .json(json!({"bio": ""}))
            .header("if-match", "\"1\"")
            .bearer(&bearer),
    )
    .await;
    assert!(
        answer
            .header("x-request-id")
            .is_some_and(|id| !id.is_empty())
    );
    assert_eq!(patched.aggregate_id, user_id);
    assert_eq!(patched.resource, format!("/v1/users/{user_id}"));
    assert_ne!(patched.command_id, user.command_id);
    assert_eq!(
        record.envelope.event,
        Event::UserProfileUpdated(UserProfileUpdated {
            display_name: None,
            bio: Some(String::new())
        })
    );
    assert_eq!(record.envelope.expected_version, Some(1));
    assert_eq!(record.envelope.idempotency, None);

    // POST /v1/users/{user_id}/posts
    let (_, post, record) = write_and_check(
        &app,
        Req::new(Method::POST, format!("/v1/users/{user_id}/posts"))
            .json(json!({"title": "Hello", "body": "First post 🦀"}))
            .header("idempotency-key", "post-1")
            .bearer(&bearer),
    )
    .await;
    let post_id = post.aggregate_id;
    assert_ne!(post_id, user_id);
    assert_eq!(post.resource, format!("/v1/posts/{post_id}"));
    assert_eq!(record.envelope.partition_key, user_id);
    assert_eq!(
        record.envelope.event,
        Event::PostPublished(PostPublished {
            title: "Hello".into(),
            body: "First post 🦀".into(),
            format: PostFormat::Plain,
        })
    );
    assert_eq!(
        (&record.raw["schema_version"], &record.raw["data"]["format"]),
        (&json!(2), &json!("plain")),
        "posts are written as post.published v2, plain: contract v1 has no format field"
    );
    assert_eq!(
        record.envelope.idempotency,
        Some(Idempotency {
            scope: user_id,
            key: "post-1".into()
        })
    );
    assert_eq!(
        post.token.partition, user.token.partition,
        "a user's events share one partition"
    );

    // PATCH /v1/users/{user_id}/posts/{post_id}, `*` is "any version".
    let (_, edited, record) = write_and_check(
        &app,
        Req::new(
            Method::PATCH,
            format!("/v1/users/{user_id}/posts/{post_id}"),
        )
        .json(json!({"title": "Hello again"}))
        .header("if-match", "*")
        .bearer(&bearer),
    )
    .await;
    assert_eq!(edited.aggregate_id, post_id);
    assert_eq!(edited.resource, format!("/v1/posts/{post_id}"));
    assert_eq!(
        record.envelope.event,
        Event::PostEdited(PostEdited {
            title: Some("Hello again".into()),
            body: None
        })
    );
    assert_eq!(record.envelope.expected_version, None);
    assert_eq!(edited.token.partition, user.token.partition);

    // DELETE /v1/users/{user_id}/posts/{post_id}, with a body that is ignored.
    let (_, deleted_post, record) = write_and_check(
        &app,
        Req::new(
            Method::DELETE,
            format!("/v1/users/{user_id}/posts/{post_id}"),
        )
        .raw_body("not json at all", Some("text/plain"))
        .header("if-match", "\"2\"")
        .bearer(&bearer),
    )
    .await;
    assert_eq!(deleted_post.aggregate_id, post_id);
    assert_eq!(record.envelope.event, Event::PostDeleted);
    assert_eq!(record.envelope.expected_version, Some(2));
    assert_eq!(record.raw["data"], json!({}));

    // DELETE /v1/users/{user_id}
    let (_, deleted_user, record) = write_and_check(
        &app,
        Req::new(Method::DELETE, format!("/v1/users/{user_id}")).bearer(&bearer),
    )
    .await;
    assert_eq!(deleted_user.aggregate_id, user_id);
    assert_eq!(deleted_user.resource, format!("/v1/users/{user_id}"));
    assert_eq!(record.envelope.event, Event::UserDeleted);
    assert_eq!(record.envelope.partition_key, user_id);

    // Tokens name log positions: later writes of one user sit later in its partition.
    let offsets = [user, patched, post, edited, deleted_post, deleted_user].map(|a| a.token.offset);
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");

    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics
            .text
            .contains(r#"command_appends_total{type="user.registered",outcome="appended"} 1"#),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn path_ids_in_upper_case_are_normalised_and_json_media_types_with_parameters_are_accepted() {
    let app = spawn_shared_app().await;
    let user = app.register_user("Grace").await;
    let user_id = user.aggregate_id;
    let upper = user_id.to_string().to_uppercase();

    let (_, accepted, record) = write_and_check(
        &app,
        Req::new(Method::PATCH, format!("/v1/users/{upper}"))
            .raw_body(
                r#"{"display_name": "G"}"#,
                Some("application/json; charset=UTF-8"),
            )
            .bearer(user.access_token()),
    )
    .await;
    assert_eq!(accepted.aggregate_id, user_id);
    assert_eq!(record.key, user_id.to_string());

    let (_, accepted, record) = write_and_check(
        &app,
        Req::new(Method::POST, format!("/v1/users/{upper}/posts"))
            .raw_body(
                r#"{"title": "t", "body": "b"}"#,
                Some("application/vnd.example+json"),
            )
            .bearer(user.access_token()),
    )
    .await;
    assert_eq!(record.envelope.partition_key, user_id);
    assert_eq!(accepted.token.partition, user.token.partition);
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_shared_app().await;
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.text.contains("http_requests_total"),
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn run_returns_after_a_graceful_shutdown() {
    let app = spawn_shared_app().await;
    app.register_user("Shut").await;
    let address = app.address.clone();
    app.shut_down().await.expect("run ends without error");
    let refused = test_support::http()
        .get(format!("{address}/healthz"))
        .send()
        .await;
    assert!(refused.is_err(), "still answering after shutdown");
}
