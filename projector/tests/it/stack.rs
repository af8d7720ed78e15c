//! The whole stack for one test: a topic of its own on a broker, a database of its own, and the
//! three services on ephemeral ports.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use clap::Parser;
use command_api::auth::{Keys, Tokens};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use test_support::{TestDb, free_port, http};
use tokio::process::Child;
use tokio::sync::oneshot;

/// How long a read with a consistency token may wait in these tests: long enough for a
/// projector takeover after a crash (the group's session timeout) on a loaded machine.
pub const CONSISTENCY_WAIT_MS: u64 = 60_000;
/// The group session timeout of test projectors: the time before a killed instance's
/// partitions move to another one.
pub const SESSION_TIMEOUT_MS: u64 = 6_000;

/// A service running in-process; dropping it shuts the service down.
pub struct Running {
    pub url: String,
    _shutdown: oneshot::Sender<()>,
}

fn shutdown_pair() -> (
    oneshot::Sender<()>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

/// The signing keys of every command API of this test process: random, made once, shared (as
/// the instances of one deployment share theirs), so a token works on any of them.
fn auth_keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys::generate("test").expect("randomness"))
}

/// The access token of every user a sign-up through these helpers answered, by user id.
fn access_tokens() -> &'static Mutex<HashMap<String, String>> {
    static TOKENS: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    TOKENS.get_or_init(Mutex::default)
}

/// A valid token for `user`, minted with the test keys: for writes under a user that no sign-up
/// made (a user the projector has never seen), which no client could otherwise send.
pub fn mint_token(user: &str) -> String {
    let user = user.parse().expect("a user id");
    Tokens::new(auth_keys().clone(), None)
        .expect("keys")
        .issue(user, command_api::auth::unix_now())
}

/// The user id of a `/v1/users/{user_id}...` path, when there is one.
fn path_user(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/users/")?;
    Some(rest.split(['/', '?']).next().unwrap_or(rest)).filter(|id| !id.is_empty())
}

pub async fn command_api(brokers: &str, topic: &str) -> Running {
    let config = command_api::Config::parse_from([
        "command-api",
        "--addr=127.0.0.1:0",
        &format!("--kafka-brokers={brokers}"),
        &format!("--kafka-topic={topic}"),
        "--kafka-partitions=4",
        "--append-timeout-ms=5000",
        &format!("--auth-keys={}", auth_keys().to_setting()),
        // These tests write as fast as they can from one IP, as a workload, not as a client:
        // write rate limits are off (command-api's own tests cover them).
        "--write-rate-per-sec=0",
    ]);
    let app = command_api::Application::build(config)
        .await
        .expect("command-api builds");
    let url = format!("http://127.0.0.1:{}", app.port());
    let (tx, shutdown) = shutdown_pair();
    tokio::spawn(app.run(shutdown));
    Running { url, _shutdown: tx }
}

pub async fn query_api(database_url: &str, topic: &str) -> Running {
    let config = query_api::Config::parse_from([
        "query-api",
        "--addr=127.0.0.1:0",
        &format!("--database-url={database_url}"),
        &format!("--kafka-topic={topic}"),
        &format!("--consistency-wait-ms={CONSISTENCY_WAIT_MS}"),
    ]);
    let app = query_api::Application::build(config)
        .await
        .expect("query-api builds");
    let url = format!("http://127.0.0.1:{}", app.port());
    let (tx, shutdown) = shutdown_pair();
    tokio::spawn(app.run(shutdown));
    Running { url, _shutdown: tx }
}

pub fn projector_config(
    brokers: &str,
    topic: &str,
    group: &str,
    database_url: &str,
    instance: &str,
) -> projector::Config {
    projector::Config::parse_from([
        "projector",
        "--addr=127.0.0.1:0",
        &format!("--kafka-brokers={brokers}"),
        &format!("--kafka-topic={topic}"),
        &format!("--kafka-group-id={group}"),
        &format!("--kafka-session-timeout-ms={SESSION_TIMEOUT_MS}"),
        &format!("--database-url={database_url}"),
        &format!("--instance-id={instance}"),
        "--batch-size=50",
    ])
}

pub async fn projector(config: projector::Config) -> Running {
    let app = projector::Application::build(config)
        .await
        .expect("projector builds");
    let url = format!("http://{}", app.local_addr().expect("bound"));
    let (tx, shutdown) = shutdown_pair();
    tokio::spawn(app.run(shutdown));
    Running { url, _shutdown: tx }
}

/// A projector as a child process, for tests that kill it with SIGKILL.
pub struct ChildProjector {
    child: Child,
    /// Its /healthz, /readyz and /metrics.
    pub url: String,
}

impl ChildProjector {
    pub async fn spawn(
        brokers: &str,
        topic: &str,
        group: &str,
        database_url: &str,
        instance: &str,
    ) -> ChildProjector {
        Self::spawn_with(brokers, topic, group, database_url, instance, &[]).await
    }

    /// [`spawn`](ChildProjector::spawn) with more environment variables.
    pub async fn spawn_with(
        brokers: &str,
        topic: &str,
        group: &str,
        database_url: &str,
        instance: &str,
        env: &[(&str, &str)],
    ) -> ChildProjector {
        let port = free_port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_projector"))
            .env("PROJECTOR_ADDR", format!("127.0.0.1:{port}"))
            .env("KAFKA_BROKERS", brokers)
            .env("KAFKA_TOPIC", topic)
            .env("KAFKA_GROUP_ID", group)
            .env("KAFKA_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS.to_string())
            .env("DATABASE_URL", database_url)
            .env("INSTANCE_ID", instance)
            .env("BATCH_SIZE", "20")
            .env("RUST_LOG", "warn,projector=info")
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn projector binary");
        // A child process has no signal to wait on but its readiness endpoint.
        let url = format!("http://127.0.0.1:{port}");
        let ready = format!("{url}/readyz");
        let client = http();
        for _ in 0..600 {
            if client
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
            {
                return ChildProjector { child, url };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("projector child never became ready");
    }

    /// The value of an unlabelled series on its /metrics, if there.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = http()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// SIGKILL: no shutdown hook, no flush, no goodbye to the group.
    pub async fn kill_9(mut self) {
        self.child.kill().await.expect("kill projector");
    }
}

/// A stack of its own: topic, database, command-api, projector, query-api.
pub struct Stack {
    pub brokers: String,
    pub topic: String,
    pub db: TestDb,
    pub command: Running,
    pub query: Running,
    /// Kept for its lifetime: dropping it stops the in-process projector.
    pub _projector: Option<Running>,
    pub client: reqwest::Client,
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_on(test_support::kafka_brokers(), TestDb::create().await, true).await
    }

    /// A stack on the given broker and database, with or without an in-process projector.
    pub async fn start_on(brokers: String, db: TestDb, with_projector: bool) -> Stack {
        service_kit::telemetry::init(service_kit::telemetry::LogFormat::Text).expect("logging");
        let topic = test_support::unique_topic("pipeline");
        // The command API creates the topic; the projector migrates the database.
        let command = command_api(&brokers, &topic).await;
        let projector = if with_projector {
            Some(
                projector(projector_config(
                    &brokers,
                    &topic,
                    &format!("{topic}-projector"),
                    &db.url,
                    "in-process",
                ))
                .await,
            )
        } else {
            test_support::MIGRATOR
                .run(&db.pool().await)
                .await
                .expect("migrate");
            None
        };
        let query = query_api(&db.url, &topic).await;
        Stack {
            brokers,
            topic,
            db,
            command,
            query,
            _projector: projector,
            client: http(),
        }
    }

    /// Sends a write to the command API.
    pub async fn write(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Accepted {
        write_to(&self.client, &self.command.url, method, path, body, headers).await
    }

    /// A read, waiting for `token` when given.
    pub async fn read(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.client.get(format!("{}{path}", self.query.url));
        if let Some(token) = token {
            request = request.header("Consistency-Token", token);
        }
        let response = request.send().await.expect("read");
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// The decision on a write, once the projector has made it.
    pub async fn decision(&self, accepted: &Accepted) -> Value {
        let (status, body) = self
            .read(
                &format!("/v1/commands/{}", accepted.command_id),
                Some(&accepted.token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "decision of {accepted:?}: {body}");
        body
    }

    pub async fn register(&self, name: &str) -> Accepted {
        self.write(
            Method::POST,
            "/v1/users",
            Some(serde_json::json!({"display_name": name})),
            &[],
        )
        .await
    }

    pub async fn publish(&self, user: &str, title: &str) -> Accepted {
        let body = serde_json::json!({"title": title, "body": format!("body of {title}")});
        self.write(
            Method::POST,
            &format!("/v1/users/{user}/posts"),
            Some(body),
            &[],
        )
        .await
    }

    /// Waits until the projector has decided everything the topic holds now.
    /// On failure it also shows what the projectors stored, so that a failed run explains itself.
    pub async fn wait_caught_up(&self) {
        if let Err(missed) =
            try_wait_caught_up(&self.client, &self.query.url, &self.brokers, &self.topic).await
        {
            let pool = self.db.pool().await;
            let stored: Vec<(i32, i64, i64, String)> = sqlx::query_as(
                "SELECT partition, next_offset, epoch, owner FROM projector_offsets ORDER BY partition",
            )
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            panic!(
                "read model never reached {missed}; log ends {:?}; stored (partition, next, epoch, owner): {stored:?}",
                end_offsets(&self.brokers, &self.topic)
            );
        }
    }
}

/// A 202 answer.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub command_id: String,
    pub aggregate_id: String,
    pub token: String,
}

pub async fn write_to(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Accepted {
    let (status, answer) = send_write(client, base, method.clone(), path, body, headers).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{method} {path}: {answer}");
    Accepted::from_body(&answer)
}

/// Sends a write and returns whatever it answered. A write under a user's path carries the
/// token that user's sign-up answered (unless `headers` has an `Authorization` of its own), and
/// a sign-up's token is kept for the user's later writes: tests write as the path's user.
pub async fn send_write(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let sign_up = method == Method::POST && path == "/v1/users";
    let mut request = client.request(method, format!("{base}{path}"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let has_authorization = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
    if let Some(user) = path_user(path).filter(|_| !has_authorization) {
        let token = access_tokens()
            .lock()
            .expect("the token map")
            .get(user)
            .cloned();
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
    }
    let response = request.send().await.expect("an answer, not a hang");
    let status = response.status();
    let answer = response.json().await.unwrap_or(Value::Null);
    if sign_up && status == StatusCode::ACCEPTED {
        let user = answer["aggregate_id"].as_str().expect("aggregate_id");
        let token = answer["access_token"]
            .as_str()
            .expect("a sign-up's access_token");
        access_tokens()
            .lock()
            .expect("the token map")
            .insert(user.to_owned(), token.to_owned());
    }
    (status, answer)
}

impl Accepted {
    pub fn from_body(body: &Value) -> Accepted {
        Accepted {
            command_id: body["command_id"].as_str().expect("command_id").to_owned(),
            aggregate_id: body["aggregate_id"]
                .as_str()
                .expect("aggregate_id")
                .to_owned(),
            token: body["consistency_token"]
                .as_str()
                .expect("token")
                .to_owned(),
        }
    }
}

/// Waits, through the query API's consistency wait, until the read model covers the last record
/// of every partition of `topic` as it is now.
pub async fn wait_caught_up(client: &reqwest::Client, query_url: &str, brokers: &str, topic: &str) {
    if let Err(missed) = try_wait_caught_up(client, query_url, brokers, topic).await {
        panic!("read model never reached {missed}");
    }
}

/// [`wait_caught_up`], answering the first token the read model did not reach in time.
async fn try_wait_caught_up(
    client: &reqwest::Client,
    query_url: &str,
    brokers: &str,
    topic: &str,
) -> Result<(), String> {
    for (partition, high) in end_offsets(brokers, topic) {
        if high == 0 {
            continue;
        }
        let token = format!("v1.{partition}.{}", high - 1);
        let response = client
            .get(format!("{query_url}/v1/posts?limit=1"))
            .header("Consistency-Token", &token)
            .send()
            .await
            .expect("read");
        if response.status() != StatusCode::OK {
            return Err(token);
        }
    }
    Ok(())
}

/// Each partition's end offset.
pub fn end_offsets(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "end-offsets")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    partitions
        .into_iter()
        .map(|p| {
            (
                p,
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .expect("watermarks")
                    .1,
            )
        })
        .collect()
}

/// Every row of the read models, event history and decisions, as text, in a stable order: two
/// databases projected from the same log must give equal snapshots. Wall-clock columns are left out.
pub async fn snapshot(database_url: &str) -> BTreeMap<&'static str, Vec<String>> {
    snapshot_in(database_url, "public").await
}

/// [`snapshot`] of the read model in `schema` (a generation) of the database.
pub async fn snapshot_in(database_url: &str, schema: &str) -> BTreeMap<&'static str, Vec<String>> {
    let options = database_url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .expect("database url")
        .options([("search_path", schema)]);
    let pool = sqlx::PgPool::connect_with(options).await.expect("connect");
    let queries = [
        ("users", "SELECT row_to_json(t)::text FROM (SELECT * FROM users ORDER BY id) t"),
        ("posts", "SELECT row_to_json(t)::text FROM (SELECT * FROM posts ORDER BY id) t"),
        (
            "decisions",
            "SELECT row_to_json(t)::text FROM (SELECT command_id, status, reason, aggregate_id, version, event_id, event_type,
                    kafka_partition, kafka_offset FROM decisions ORDER BY command_id) t",
        ),
        ("idempotency_keys", "SELECT row_to_json(t)::text FROM (SELECT * FROM idempotency_keys ORDER BY scope, key) t"),
        (
            "aggregate_events",
            "SELECT row_to_json(t)::text FROM (SELECT * FROM aggregate_events ORDER BY aggregate_id, version) t",
        ),
        (
            "dead_letters",
            "SELECT row_to_json(t)::text FROM (SELECT topic, partition, kafka_offset, record_key, payload, error
                    FROM dead_letters ORDER BY partition, kafka_offset) t",
        ),
    ];
    let mut out = BTreeMap::new();
    for (name, sql) in queries {
        let rows: Vec<String> = sqlx::query_scalar(sql)
            .fetch_all(&pool)
            .await
            .expect("snapshot query");
        out.insert(name, rows);
    }
    pool.close().await;
    out
}

/// Projects the whole topic again, uninterrupted, into a fresh database, and returns its
/// snapshot: what the read model must be, according to the log.
pub async fn replay_snapshot(brokers: &str, topic: &str) -> BTreeMap<&'static str, Vec<String>> {
    let db = TestDb::create().await;
    let group = format!("{topic}-replay");
    let _projector = projector(projector_config(brokers, topic, &group, &db.url, "replay")).await;
    let query = query_api(&db.url, topic).await;
    wait_caught_up(&http(), &query.url, brokers, topic).await;
    let snap = snapshot(&db.url).await;
    db.drop_database().await;
    snap
}

/// Whether the stack's database has a schema of that name (a generation, a scratch copy).
pub async fn schema_exists(stack: &Stack, schema: &str) -> bool {
    let pool = stack.db.pool().await;
    let exists =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&pool)
            .await
            .expect("catalog query");
    pool.close().await;
    exists
}

/// A client that keeps registering users and reading each one back with its write's token,
/// asserting that every read answers 200 with that write: the load under which a rebuild or a
/// switch must cause no failed and no stale read.
pub struct ReadYourWritesLoad {
    written: tokio::sync::watch::Receiver<u64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl ReadYourWritesLoad {
    pub fn start(stack: &Stack) -> ReadYourWritesLoad {
        use std::sync::atomic::Ordering;
        let (written_tx, written) = tokio::sync::watch::channel(0_u64);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (client, command_url, query_url, stopping) = (
            stack.client.clone(),
            stack.command.url.clone(),
            stack.query.url.clone(),
            stop.clone(),
        );
        let task = tokio::spawn(async move {
            let mut count = 0_u64;
            while !stopping.load(Ordering::Relaxed) {
                let name = format!("writer {count}");
                let user = write_to(
                    &client,
                    &command_url,
                    Method::POST,
                    "/v1/users",
                    Some(serde_json::json!({"display_name": name})),
                    &[],
                )
                .await;
                let read = client
                    .get(format!("{query_url}/v1/users/{}", user.aggregate_id))
                    .header("Consistency-Token", &user.token)
                    .send()
                    .await
                    .expect("read");
                assert_eq!(read.status(), StatusCode::OK, "token read of {user:?}");
                let body: Value = read.json().await.expect("json");
                assert_eq!(body["display_name"], name.as_str(), "not stale");
                count += 1;
                written_tx.send_replace(count);
            }
            count
        });
        ReadYourWritesLoad {
            written,
            stop,
            task,
        }
    }

    /// Waits until at least `n` writes were read back.
    pub async fn wait_for(&mut self, n: u64) {
        self.written
            .wait_for(|done| *done >= n)
            .await
            .expect("the writer is writing");
    }

    /// Writes read back so far.
    pub fn so_far(&self) -> u64 {
        *self.written.borrow()
    }

    /// Stops the load and returns how many writes it read back; fails the test if any read
    /// failed or was stale.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("every token read succeeded")
    }
}
