//! A broker that goes away and comes back: writes fail fast with 503 and recover without a
//! restart of the service.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::OwnBroker;

use crate::helpers::{Accepted, Req, TestApp, config, spawn_app_with};

fn sign_up() -> Req {
    Req::new(Method::POST, "/v1/users").json(json!({"display_name": "Ada"}))
}

/// Sends the write until it is accepted; every other answer must be a 503 problem. The
/// producer's (re)connection has no signal to wait on, so this polls, with a bound.
async fn write_until_accepted(app: &TestApp, key: &str) -> Accepted {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = app.send(sign_up().header("idempotency-key", key)).await;
        if answer.status == StatusCode::ACCEPTED {
            return answer.accepted();
        }
        answer.problem(StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            Instant::now() < deadline,
            "writes never got through: {}",
            answer.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn writes_answer_503_while_the_broker_is_down_and_recover_when_it_is_back() {
    let mut broker = OwnBroker::start().await;
    let mut config = config(
        &broker.brokers(),
        &test_support::unique_topic("command-api-down"),
    );
    config.append_timeout_ms = 1000;
    let app = spawn_app_with(config).await;

    // A fresh idempotent producer needs about a second to get its producer id (librdkafka
    // retries on a fixed 500 ms timer), which a 1 s append timeout may not cover: the same
    // key keeps the retries to one command.
    let before = write_until_accepted(&app, "before-outage").await;
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);

    broker.stop().await;
    // The client's own timeout (30 s) is far above the service's bound (about 2.5 s), so this
    // answer comes from the service, not from a client giving up.
    let answer = app
        .send(sign_up().header("idempotency-key", "during-outage"))
        .await;
    let body = answer.problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("Idempotency-Key"),
        "{body}"
    );
    let retry_after: u64 = answer
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    let not_ready = app.get("/readyz").await;
    not_ready.problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(not_ready.header("retry-after").is_some());
    let metrics = app.get("/metrics").await.text;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("command_appends_total") && !l.contains("\"appended\"")),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l
            .starts_with("command_append_duration_seconds_count{outcome=\"error\"}")
            && !l.ends_with(" 0")),
        "the failed append's latency is observed: {metrics}"
    );

    broker.resume().await;
    let after = write_until_accepted(&app, "after-outage").await;
    assert_ne!(after.aggregate_id, before.aggregate_id);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    // And it keeps working, on the data the broker kept.
    app.send(sign_up()).await.accepted();
    assert!(app.end_offset_sum().await >= 3);
    broker.stop().await;
}
