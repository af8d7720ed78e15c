//! `/metrics` is what `docs/metrics.md` says it is, and the append latency counts each append.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Req, spawn_shared_app};

#[tokio::test]
async fn the_exposed_metrics_are_the_documented_ones_and_appends_are_timed() {
    let app = spawn_shared_app().await;
    let ada = app.register_user("Ada").await;
    // A refusal, for the refusals' family; nothing is appended for it.
    app.send(
        Req::new(
            Method::POST,
            format!("/v1/users/{}/posts", ada.aggregate_id),
        )
        .json(json!({"title": "t", "body": "b"})),
    )
    .await
    .problem(StatusCode::UNAUTHORIZED);
    app.send(
        Req::new(
            Method::POST,
            format!("/v1/users/{}/posts", ada.aggregate_id),
        )
        .json(json!({"title": "t", "body": "b"}))
        .bearer(ada.access_token()),
    )
    .await
    .accepted();

    let metrics = app.get("/metrics").await.text;
    test_support::metrics_docs::assert_documented(&metrics, &["Every service", "Command API"]);
    let series = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .to_owned()
    };
    assert_eq!(
        series(r#"command_append_duration_seconds_count{outcome="ok"}"#),
        "2"
    );
    assert_eq!(
        series(r#"command_append_duration_seconds_count{outcome="error"}"#),
        "0"
    );
    assert_eq!(
        series(r#"command_append_duration_seconds_bucket{outcome="ok",le="+Inf"}"#),
        "2"
    );
    assert_eq!(
        series(r#"command_auth_refusals_total{reason="missing"}"#),
        "1"
    );
    app.shut_down().await.expect("a clean shutdown");
}
