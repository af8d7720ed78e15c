//! Per-client write rate limits: past its burst a client is answered 429 with `Retry-After`
//! and nothing is appended, while other clients write on. The writes of a burst are sent at
//! once, so they all reach the limiter well within the one second a token takes to refill.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{Answer, Req, TestApp, config, spawn_app_with};

const BURST: usize = 5;

/// An app whose clients may write `BURST` at once, then one a second.
async fn limited_app() -> Arc<TestApp> {
    let mut config = config(
        &test_support::kafka_brokers(),
        &test_support::unique_topic("command-api-ratelimit"),
    );
    config.write_rate_per_sec = 1;
    config.write_burst = BURST as u32;
    Arc::new(spawn_app_with(config).await)
}

fn publish(user: Uuid, token: &str) -> Req {
    Req::new(Method::POST, format!("/v1/users/{user}/posts"))
        .json(json!({"title": "t", "body": "b"}))
        .bearer(token)
}

fn sign_up() -> Req {
    Req::new(Method::POST, "/v1/users").json(json!({"display_name": "Ada"}))
}

/// Sends `count` copies of `req` at once and returns the answers.
async fn burst(app: &Arc<TestApp>, req: Req, count: usize) -> Vec<Answer> {
    send_at_once(app, vec![req; count]).await
}

/// Sends `reqs` at once and returns the answers.
async fn send_at_once(app: &Arc<TestApp>, reqs: Vec<Req>) -> Vec<Answer> {
    let sends: Vec<_> = reqs
        .into_iter()
        .map(|req| {
            let app = Arc::clone(app);
            tokio::spawn(async move { app.send(req).await })
        })
        .collect();
    let mut answers = Vec::new();
    for send in sends {
        answers.push(send.await.expect("the request task ends"));
    }
    answers
}

/// Asserts `BURST` answers are 202 and one is a 429 rate-limited with `Retry-After`.
fn assert_one_over_the_burst(answers: &[Answer]) {
    let accepted = answers
        .iter()
        .filter(|a| a.status == StatusCode::ACCEPTED)
        .count();
    let limited: Vec<_> = answers
        .iter()
        .filter(|a| a.status != StatusCode::ACCEPTED)
        .collect();
    assert_eq!(accepted, BURST, "{answers:#?}");
    assert_eq!(limited.len(), 1, "{answers:#?}");
    let body = limited[0].problem(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["type"], "/problems/rate-limited", "{body}");
    let retry_after: u64 = limited[0]
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!(retry_after >= 1, "{retry_after}");
}

async fn metric(app: &TestApp, series: &str) -> Option<f64> {
    let text = app.get("/metrics").await.text;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn a_user_past_the_burst_gets_429_while_another_user_writes_on_and_strangers_spend_nothing() {
    let app = limited_app().await;
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let (ada_token, bob_token) = (app.token_for(ada), app.token_for(bob));
    let before = app.end_offset_sum().await;

    // Refused writes on Ada's path, more than her burst: they must not spend her budget.
    for _ in 0..2 * BURST {
        let stranger = app.send(publish(ada, &bob_token)).await;
        stranger.problem(StatusCode::FORBIDDEN);
        let anonymous = app
            .send(Req::new(Method::DELETE, format!("/v1/users/{ada}")))
            .await;
        anonymous.problem(StatusCode::UNAUTHORIZED);
    }

    let answers = burst(&app, publish(ada, &ada_token), BURST + 1).await;
    assert_one_over_the_burst(&answers);

    app.send(publish(bob, &bob_token)).await.accepted();
    assert_eq!(
        app.end_offset_sum().await - before,
        BURST as i64 + 1,
        "Ada's burst and Bob's write are appended, the refused write is not"
    );
    assert_eq!(
        metric(&app, r#"command_writes_rate_limited_total{client="user"}"#).await,
        Some(1.0)
    );
}

#[tokio::test]
async fn sign_ups_from_one_ip_past_the_burst_get_429_and_users_write_on() {
    let app = limited_app().await;
    let before = app.end_offset_sum().await;

    let answers = burst(&app, sign_up(), BURST + 1).await;
    assert_one_over_the_burst(&answers);

    // The same IP's authenticated writes count against their user, not the IP.
    let user = Uuid::new_v4();
    app.send(publish(user, &app.token_for(user)))
        .await
        .accepted();
    assert_eq!(app.end_offset_sum().await - before, BURST as i64 + 1);
    assert_eq!(
        metric(&app, r#"command_writes_rate_limited_total{client="ip"}"#).await,
        Some(1.0)
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_sign_ups_are_limited_by_their_forwarded_client() {
    // The test's connections come from 127.0.0.1: it plays the proxy.
    let mut config = config(
        &test_support::kafka_brokers(),
        &test_support::unique_topic("command-api-proxies"),
    );
    config.write_rate_per_sec = 1;
    config.write_burst = BURST as u32;
    config.trusted_proxies = "127.0.0.1".parse().expect("an address");
    let app = Arc::new(spawn_app_with(config).await);
    let from = |forwarded_for: &str| sign_up().header("x-forwarded-for", forwarded_for);

    // All at once (a second later a token is back): one client's burst and one more that
    // invents a hop left of the address our proxy appended, which is not read, so it cannot
    // escape the limit; then another client behind the same proxy, and the proxy itself, each
    // with a budget of their own.
    let mut sign_ups = vec![from("198.51.100.1"); BURST];
    sign_ups.push(from("203.0.113.9, 198.51.100.1"));
    sign_ups.push(from("198.51.100.2"));
    sign_ups.push(sign_up());
    let answers = send_at_once(&app, sign_ups).await;
    assert_one_over_the_burst(&answers[..=BURST]);
    for other in &answers[BURST + 1..] {
        other.accepted();
    }
    // A header the proxy would not write counts against the proxy, not against anyone named.
    app.send(from("198.51.100.1, not-an-address"))
        .await
        .accepted();
}
