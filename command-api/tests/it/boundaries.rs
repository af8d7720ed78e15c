//! The exact edges of the size rules: characters for names and titles, bytes for post bodies
//! and for the whole request.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Req, read_record, spawn_shared_app};
use crate::rejected::padded_body;

#[tokio::test]
async fn display_names_count_characters_not_bytes() {
    let app = spawn_shared_app().await;
    // 100 characters of 4 bytes each: 400 bytes, still 100 characters.
    let hundred = "🦀".repeat(100);
    let accepted = app
        .send(Req::new(Method::POST, "/v1/users").json(json!({"display_name": hundred})))
        .await
        .accepted();
    let record = read_record(&app.brokers, &app.topic, accepted.token).await;
    assert_eq!(
        record.raw["data"]["display_name"], hundred,
        "stored exactly as sent"
    );

    let answer = app
        .send(Req::new(Method::POST, "/v1/users").json(json!({"display_name": "🦀".repeat(101)})))
        .await;
    assert_eq!(answer.error_fields(), ["display_name"]);

    // Combining marks are characters of their own.
    let answer = app
        .send(
            Req::new(Method::POST, "/v1/users")
                .json(json!({"display_name": "e\u{301}".repeat(51)})),
        )
        .await;
    assert_eq!(answer.error_fields(), ["display_name"]);
}

#[tokio::test]
async fn post_bodies_count_bytes() {
    let app = spawn_shared_app().await;
    let user = app.register_user("Author").await;
    let path = format!("/v1/users/{}/posts", user.aggregate_id);
    let post = |body: serde_json::Value| {
        Req::new(Method::POST, &path)
            .json(body)
            .bearer(user.access_token())
    };

    // 8192 two-byte characters: exactly 16384 bytes.
    let exact = "é".repeat(8192);
    let accepted = app
        .send(post(json!({"title": "t", "body": exact})))
        .await
        .accepted();
    let record = read_record(&app.brokers, &app.topic, accepted.token).await;
    assert_eq!(
        record.raw["data"]["body"].as_str().map(str::len),
        Some(16384)
    );

    let answer = app
        .send(post(json!({"title": "t", "body": format!("{exact}x")})))
        .await;
    assert_eq!(answer.error_fields(), ["body"]);

    let title = "ü".repeat(200);
    app.send(post(json!({"title": title, "body": "b"})))
        .await
        .accepted();
    let answer = app
        .send(post(json!({"title": "ü".repeat(201), "body": "b"})))
        .await;
    assert_eq!(answer.error_fields(), ["title"]);
}

#[tokio::test]
async fn a_body_of_64_kib_is_read_and_one_byte_more_is_too_large() {
    let app = spawn_shared_app().await;
    let send = |len| {
        app.send(
            Req::new(Method::POST, "/v1/users")
                .raw_body(padded_body("display_name", len), Some("application/json")),
        )
    };
    // Read in full, then refused for its field: the size itself was fine.
    assert_eq!(send(65536).await.error_fields(), ["display_name"]);
    send(65537).await.problem(StatusCode::PAYLOAD_TOO_LARGE);
    send(1024 * 1024)
        .await
        .problem(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.end_offset_sum().await, 0);
}
