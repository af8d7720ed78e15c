//! Hostile input: a body that stalls (408), JSON nested too deeply (400), and the head limits
//! every service shares (414, 431), each answered as a problem+json and never a 500.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use service_kit::limits::{MAX_HEADER_BYTES, MAX_TARGET_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Req, config, spawn_app_with, spawn_shared_app};

#[tokio::test]
async fn a_body_that_stalls_is_a_408_problem_and_the_connection_is_closed() {
    let timeout = Duration::from_millis(300);
    let mut config = config(
        &test_support::kafka_brokers(),
        &test_support::unique_topic("command-api-limits"),
    );
    config.client_timeouts.body_read = timeout;
    let app = spawn_app_with(config).await;
    let address = app.address.trim_start_matches("http://");
    let mut client = TcpStream::connect(address).await.expect("connects");
    let started = Instant::now();
    client
        .write_all(
            b"POST /v1/users HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"display\"",
        )
        .await
        .expect("the head and 10 bytes of the body");
    // Nothing more is sent. The bound only keeps a server that never answers from hanging the
    // test; reading to the end means the server closed the connection.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes the connection")
        .expect("the answer is read");
    let waited = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("content-type: application/problem+json\r\n"),
        "{answer}"
    );
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(
        answer.contains(r#""type":"/problems/request-timeout""#),
        "{answer}"
    );
    assert!(answer.contains("within 300 ms"), "{answer}");
    assert!(waited >= timeout, "answered after {waited:?}");
}

#[tokio::test]
async fn json_nested_deeper_than_32_is_a_400_that_says_so() {
    let app = spawn_shared_app().await;
    // 60,000 brackets: within the 64 KiB body limit, and 470 times serde_json's own bound.
    let brackets = "[".repeat(60_000);
    let answer = app
        .send(Req::new(Method::POST, "/v1/users").raw_body(brackets, Some("application/json")))
        .await;
    let body = answer.problem(StatusCode::BAD_REQUEST);
    assert_eq!(body["type"], "/problems/json-too-deep", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("32 deep")),
        "{body}"
    );

    // 32 deep is parsed, and then broken by its field rule.
    let nested = (1..32).fold(json!("Ada"), |inner, _| json!([inner]));
    let answer = app
        .send(Req::new(Method::POST, "/v1/users").json(json!({"display_name": nested})))
        .await;
    assert_eq!(answer.error_fields(), ["display_name"]);
}

#[tokio::test]
async fn the_head_limits_of_every_service_are_installed() {
    let app = spawn_shared_app().await;
    let long_path = format!("/v1/users?q={}", "a".repeat(MAX_TARGET_BYTES));
    let answer = app
        .send(Req::new(Method::POST, long_path).json(json!({"display_name": "Ada"})))
        .await;
    let body = answer.problem(StatusCode::URI_TOO_LONG);
    assert_eq!(body["type"], "/problems/uri-too-long", "{body}");

    let answer = app
        .send(
            Req::new(Method::POST, "/v1/users")
                .header("x-large", "v".repeat(MAX_HEADER_BYTES))
                .json(json!({"display_name": "Ada"})),
        )
        .await;
    let body = answer.problem(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(body["type"], "/problems/header-fields-too-large", "{body}");
}
