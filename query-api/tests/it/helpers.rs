//! Starting the app and checking its answers.

use std::future::Future;
use std::time::Duration;

use query_api::{Application, Config, LogFormat};
use reqwest::Response;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde_json::Value;
use tokio::sync::oneshot;

/// A running query API; shuts down when dropped.
pub struct TestApp {
    pub address: String,
    client: reqwest::Client,
    _shutdown: oneshot::Sender<()>,
}

pub fn config(database_url: &str, topic: &str, consistency_wait: Duration) -> Config {
    Config {
        addr: "127.0.0.1:0".parse().expect("socket address"),
        database_url: database_url.to_owned(),
        database_replica_urls: Vec::new(),
        replica_poll_ms: 20,
        kafka_topic: topic.to_owned(),
        consistency_wait_ms: u64::try_from(consistency_wait.as_millis()).expect("wait fits u64"),
        db_pool_size: 4,
        db_acquire_timeout_ms: 2000,
        cache_entries: 10_000,
        cache_bytes: 16 << 20,
        log_format: LogFormat::Text,
    }
}

pub async fn spawn_app(database_url: &str, topic: &str, consistency_wait: Duration) -> TestApp {
    spawn_app_with(config(database_url, topic, consistency_wait)).await
}

pub async fn spawn_app_with(config: Config) -> TestApp {
    service_kit::telemetry::init(service_kit::telemetry::LogFormat::Text).expect("logging");
    let app = Application::build(config).await.expect("build the app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (shutdown, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run(async move {
        // Resolves when the TestApp (the sender) is dropped.
        let _ = stopped.await;
    }));
    TestApp {
        address,
        client: test_support::http(),
        _shutdown: shutdown,
    }
}

impl TestApp {
    pub async fn get(&self, path: &str) -> Response {
        self.get_with(path, &[]).await
    }

    /// GET with extra request headers. Every answer must carry x-request-id.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = self.client.get(format!("{}{path}", self.address));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request reaches the app");
        assert!(
            response.headers().contains_key("x-request-id"),
            "no x-request-id on {} {path}",
            response.status()
        );
        response
    }

    /// Returns once the follower has published `next_offset` for `partition`: it has applied
    /// every notice sent before the one that said so, cache invalidations first.
    pub async fn wait_for_offset(&self, partition: i32, next_offset: i64) {
        let series = format!("query_api_projector_next_offset{{partition=\"{partition}\"}}");
        eventually(&format!("{series} at {next_offset}"), || async {
            self.metric(&series).await == Some(next_offset as f64)
        })
        .await;
    }

    /// Returns once the cache serves (the follower listens) or, with `false`, once it does not.
    pub async fn wait_for_cache_following(&self, following: bool) {
        let expected = if following { 1.0 } else { 0.0 };
        eventually(&format!("the cache following: {following}"), || async {
            self.metric("query_api_cache_following").await == Some(expected)
        })
        .await;
    }

    /// The value of one metric series, if the app has it: `series` is the name with its labels
    /// as rendered, e.g. `foo{outcome="woken"}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self
            .get("/metrics")
            .await
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }
}

/// Polls `condition` until it holds; for states that announce themselves no other way.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts a JSON 200 and returns the body.
pub async fn json_ok(response: Response) -> (HeaderMap, Value) {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.expect("body");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        headers.get(CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    (headers, serde_json::from_str(&body).expect("JSON body"))
}

/// Asserts a problem+json answer with this status and returns its `type`.
pub async fn problem(response: Response, status: u16) -> String {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"application/problem+json"[..])
    );
    if status == 503 {
        assert_eq!(
            response.headers().get(RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
    }
    let body: Value = response.json().await.expect("problem body");
    assert_eq!(body["status"], status, "{body}");
    for field in ["type", "title", "detail"] {
        assert!(
            body[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field} missing in {body}"
        );
    }
    body["type"].as_str().unwrap_or_default().to_owned()
}
