//! The harness: the real service on an ephemeral port, a real broker, HTTP over real sockets.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use command_api::auth::{Keys, Tokens};
use command_api::config::Secret;
use command_api::{Application, Config};
use events::{ConsistencyToken, Envelope};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// A running command API.
pub struct TestApp {
    pub address: String,
    pub brokers: String,
    pub topic: String,
    pub client: reqwest::Client,
    /// The keys and lifetime the app was started with, to mint tokens as it would.
    pub tokens: Tokens,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The command API on the shared broker, with a topic of its own.
pub async fn spawn_shared_app() -> TestApp {
    spawn_app(
        &test_support::kafka_brokers(),
        &test_support::unique_topic("command-api"),
    )
    .await
}

pub async fn spawn_app(brokers: &str, topic: &str) -> TestApp {
    spawn_app_with(config(brokers, topic)).await
}

/// The keys of this test process: random, made once, shared by every app it starts (as the
/// instances of one deployment share theirs).
pub fn test_keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys::generate("test").expect("randomness"))
}

/// Settings for an app on `brokers` and `topic` with [`test_keys`].
pub fn config(brokers: &str, topic: &str) -> Config {
    let mut config = Config::for_tests(brokers, topic);
    config.auth_keys = Some(Secret(test_keys().to_setting()));
    config
}

pub async fn spawn_app_with(config: Config) -> TestApp {
    service_kit::telemetry::init(service_kit::telemetry::LogFormat::Text).expect("logging");
    let keys = config.auth_keys().expect("valid test keys");
    assert!(!keys.is_empty(), "tests configure their keys");
    let tokens = Tokens::new(keys, config.auth_token_ttl()).expect("keys");
    let brokers = config.kafka_brokers.clone();
    let topic = config.kafka_topic.clone();
    let application = Application::build(config)
        .await
        .expect("the application builds");
    let address = format!("http://127.0.0.1:{}", application.port());
    let (shutdown, stop) = oneshot::channel::<()>();
    let server = tokio::spawn(application.run(async move {
        let _ = stop.await;
    }));
    TestApp {
        address,
        brokers,
        topic,
        client: test_support::http(),
        tokens,
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

/// An answer, read in full.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    /// Asserts a 202 answer is complete and consistent, and returns its parts.
    pub fn accepted(&self) -> Accepted {
        assert_eq!(self.status, StatusCode::ACCEPTED, "{}", self.text);
        let command_id: Uuid = self.body["command_id"]
            .as_str()
            .expect("command_id")
            .parse()
            .expect("uuid");
        let aggregate_id: Uuid = self.body["aggregate_id"]
            .as_str()
            .expect("aggregate_id")
            .parse()
            .expect("uuid");
        let token_text = self.body["consistency_token"]
            .as_str()
            .expect("consistency_token");
        let token: ConsistencyToken = token_text.parse().expect("the token parses");
        assert_eq!(self.header("consistency-token"), Some(token_text));
        let status_link = format!("/v1/commands/{command_id}");
        assert_eq!(self.header("location"), Some(status_link.as_str()));
        assert_eq!(self.body["links"]["status"], status_link);
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json"))
        );
        // Canonical lower-case ids.
        assert_eq!(self.body["command_id"], command_id.to_string());
        assert_eq!(self.body["aggregate_id"], aggregate_id.to_string());
        Accepted {
            command_id,
            aggregate_id,
            token,
            resource: self.body["links"]["resource"]
                .as_str()
                .expect("resource link")
                .to_owned(),
            access_token: self.body["access_token"].as_str().map(str::to_owned),
        }
    }

    /// Asserts a problem+json answer with this status, and returns its body.
    pub fn problem(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.text
        );
        for member in ["type", "title", "detail"] {
            assert!(
                self.body[member].as_str().is_some_and(|s| !s.is_empty()),
                "{member}: {}",
                self.text
            );
        }
        assert_eq!(self.body["status"], status.as_u16(), "{}", self.text);
        &self.body
    }

    /// The fields a 422 answer names, in order.
    pub fn error_fields(&self) -> Vec<String> {
        let body = self.problem(StatusCode::UNPROCESSABLE_ENTITY);
        body["errors"]
            .as_array()
            .expect("errors list")
            .iter()
            .map(|e| {
                assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
                e["field"].as_str().expect("field").to_owned()
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct Accepted {
    pub command_id: Uuid,
    pub aggregate_id: Uuid,
    pub token: ConsistencyToken,
    pub resource: String,
    /// A sign-up's token for the new user.
    pub access_token: Option<String>,
}

impl Accepted {
    /// The access token of a sign-up's answer.
    pub fn access_token(&self) -> &str {
        self.access_token
            .as_deref()
            .expect("a sign-up answers with an access token")
    }
}

/// One request to send; `body` goes with `Content-Type: application/json` unless the headers
/// say otherwise.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Option<Vec<u8>>,
    pub content_type: Option<String>,
}

impl Req {
    pub fn new(method: Method, path: impl Into<String>) -> Req {
        Req {
            method,
            path: path.into(),
            headers: Vec::new(),
            body: None,
            content_type: None,
        }
    }

    pub fn json(self, body: Value) -> Req {
        self.raw_body(
            serde_json::to_vec(&body).expect("json"),
            Some("application/json"),
        )
    }

    pub fn raw_body(mut self, body: impl Into<Vec<u8>>, content_type: Option<&str>) -> Req {
        self.body = Some(body.into());
        self.content_type = content_type.map(str::to_owned);
        self
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Req {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// `Authorization: Bearer {token}`.
    pub fn bearer(self, token: &str) -> Req {
        self.header("authorization", format!("Bearer {token}"))
    }
}

impl TestApp {
    pub async fn send(&self, req: Req) -> Answer {
        let mut builder = self
            .client
            .request(req.method, format!("{}{}", self.address, req.path));
        for (name, value) in req.headers {
            let value =
                reqwest::header::HeaderValue::from_bytes(&value).expect("a sendable header value");
            builder = builder.header(name, value);
        }
        if let Some(content_type) = req.content_type {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        if let Some(body) = req.body {
            builder = builder.body(body);
        }
        let response = builder.send().await.expect("the request is answered");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("the body is read");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(Req::new(Method::GET, path)).await
    }

    /// A token for `user` as this app would issue it now (for users the test did not sign up).
    pub fn token_for(&self, user: Uuid) -> String {
        self.tokens.issue(user, command_api::auth::unix_now())
    }

    /// Signs up a user and returns the 202's parts.
    pub async fn register_user(&self, display_name: &str) -> Accepted {
        let req = Req::new(Method::POST, "/v1/users")
            .json(serde_json::json!({"display_name": display_name}));
        self.send(req).await.accepted()
    }

    /// How many records the topic holds.
    pub async fn end_offset_sum(&self) -> i64 {
        let (brokers, topic) = (self.brokers.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || test_support::topic_end_offset_sum(&brokers, &topic))
            .await
            .expect("the watermark task ends")
            .expect("the broker reports watermarks")
    }

    /// Stops the server gracefully and waits for `run` to return.
    pub async fn shut_down(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.server.take() {
            Some(server) => server.await.expect("the server task ends"),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A record read back from the topic.
#[derive(Debug)]
pub struct Record {
    pub key: String,
    pub headers: BTreeMap<String, String>,
    pub envelope: Envelope,
    pub raw: Value,
}

/// Reads the record a consistency token points at, straight from the broker.
pub async fn read_record(brokers: &str, topic: &str, token: ConsistencyToken) -> Record {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("command-api-test-{}", Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, token.partition, Offset::Offset(token.offset))
        .expect("an assignment");
    consumer.assign(&assignment).expect("assigned");
    // A bound so a broken broker fails the test instead of hanging it; not a timing assertion.
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("the record arrives")
        .expect("the record is read");
    assert_eq!(
        (message.partition(), message.offset()),
        (token.partition, token.offset)
    );
    let key = String::from_utf8(message.key().expect("a key").to_vec()).expect("a UTF-8 key");
    let headers = message
        .headers()
        .expect("headers")
        .iter()
        .map(|h| {
            let value =
                String::from_utf8(h.value.expect("a header value").to_vec()).expect("UTF-8");
            (h.key.to_owned(), value)
        })
        .collect();
    let payload = message.payload().expect("a payload");
    let envelope = Envelope::decode(payload).expect("the record decodes");
    let raw = serde_json::from_slice(payload).expect("json");
    Record {
        key,
        headers,
        envelope,
        raw,
    }
}
