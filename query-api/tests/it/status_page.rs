//! The status page and the API explorer in headless Chromium ([`crate::browser`]).
//!
//! The status page runs on a real projection: events appended to a topic of the test's own
//! on the broker, projected by a real projector (in-process) into a database of the test's
//! own. The page must show the partitions' real offsets and decisions, then, without being
//! reloaded, the new ones once more events are projected. A screenshot of it is saved (its
//! path is printed; `STATUS_PAGE_SCREENSHOT` names a copy, as made for the README).

use std::time::Duration;

use chrono::Utc;
use clap::Parser as _;
use events::{Envelope, Event, UserRegistered};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use test_support::{TestDb, free_port, unique_topic};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::browser::{Browser, is_png};
use crate::helpers::{TestApp, config, eventually, spawn_app, spawn_app_with};

/// The page's partition rows, as shown: each cell's text by its field.
const ROWS: &str = "return Array.from(document.querySelectorAll('#partitions tr[data-partition]'))
    .map((tr) => Object.fromEntries(Array.from(tr.querySelectorAll('td[data-field]'))
        .map((td) => [td.dataset.field, td.textContent])));";

/// A topic of `partitions` partitions.
async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create the topic");
    for result in results {
        result.expect("topic created");
    }
}

fn sign_up(user: Uuid) -> Envelope {
    Envelope {
        event_id: Uuid::now_v7(),
        aggregate_id: user,
        partition_key: user,
        command_id: Uuid::now_v7(),
        idempotency: None,
        expected_version: None,
        accepted_at: Utc::now(),
        event: Event::UserRegistered(UserRegistered {
            display_name: "Ada".into(),
            bio: None,
        }),
    }
}

struct Log {
    producer: FutureProducer,
    topic: String,
}

impl Log {
    async fn append(&self, partition: i32, payload: &[u8]) {
        self.producer
            .send(
                FutureRecord::<[u8], [u8]>::to(&self.topic)
                    .partition(partition)
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(error, _)| error)
            .expect("appended");
    }

    /// `n` sign-ups of new users on `partition`, sent together (the producer keeps their
    /// order in the partition).
    async fn sign_ups(&self, partition: i32, n: usize) {
        let payloads: Vec<Vec<u8>> = (0..n).map(|_| sign_up(Uuid::now_v7()).encode()).collect();
        futures::future::join_all(payloads.iter().map(|p| self.append(partition, p))).await;
    }
}

/// A projector in-process on `topic`, until the sender is dropped.
async fn projector(brokers: &str, topic: &str, database_url: &str) -> oneshot::Sender<()> {
    let config = projector::Config::parse_from([
        "projector",
        "--addr=127.0.0.1:0",
        &format!("--kafka-brokers={brokers}"),
        &format!("--kafka-topic={topic}"),
        &format!("--kafka-group-id={topic}"),
        &format!("--database-url={database_url}"),
        "--instance-id=projector-1",
    ]);
    let app = projector::Application::build(config)
        .await
        .expect("projector builds");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    stop
}

async fn status(app: &TestApp) -> Value {
    app.get("/status.json").await.json().await.expect("JSON")
}

fn shown(rows: &Value, partition: usize, field: &str) -> String {
    rows[partition][field]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_real_offsets_and_follows_them_live() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let brokers = test_support::kafka_brokers();
    let topic = unique_topic("status");
    create_topic(&brokers, &topic, 2).await;
    let db = TestDb::create().await;
    let log = Log {
        producer: ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("producer"),
        topic: topic.clone(),
    };
    // Partition 0: three sign-ups, and one of the same user again (rejected: already_exists).
    // Partition 1: two sign-ups and a record that is not an event (a dead letter).
    let ada = sign_up(Uuid::now_v7());
    log.append(0, &ada.encode()).await;
    log.sign_ups(0, 2).await;
    log.append(
        0,
        &Envelope {
            command_id: Uuid::now_v7(),
            event_id: Uuid::now_v7(),
            ..ada
        }
        .encode(),
    )
    .await;
    log.sign_ups(1, 2).await;
    log.append(1, b"not an event").await;

    let _projector = projector(&brokers, &topic, &db.url).await;
    let app = spawn_app(&db.url, &topic, Duration::from_secs(5)).await;
    eventually("the projector at 4 + 3", || async {
        status(&app).await["totals"]["next_offset"] == 7
    })
    .await;

    browser.open(&format!("{}/status", app.address)).await;
    browser.run("window.sameLoad = 'yes'; return true;").await;
    let rows = browser
        .wait_for("offsets 4 and 3", ROWS, |rows| {
            shown(rows, 0, "next_offset") == "4" && shown(rows, 1, "next_offset") == "3"
        })
        .await;
    for (partition, applied, rejected, dead) in
        [(0, "3", "1 (already exists 1)", "0"), (1, "2", "0", "1")]
    {
        assert_eq!(shown(&rows, partition, "partition"), partition.to_string());
        assert_eq!(shown(&rows, partition, "applied"), applied, "{rows}");
        assert_eq!(shown(&rows, partition, "rejected"), rejected, "{rows}");
        assert_eq!(shown(&rows, partition, "dead_letters"), dead, "{rows}");
        assert_eq!(shown(&rows, partition, "owner"), "projector-1", "{rows}");
        assert_eq!(shown(&rows, partition, "lag"), "0", "caught up: {rows}");
    }
    assert_eq!(
        browser
            .run("return document.getElementById('total-next-offset').textContent;")
            .await,
        "7"
    );

    // More events; the same page, never reloaded, follows.
    log.sign_ups(0, 1200).await;
    log.sign_ups(1, 2).await;
    let rows = browser
        .wait_for("offsets 1,204 and 5", ROWS, |rows| {
            shown(rows, 0, "next_offset") == "1,204" && shown(rows, 1, "next_offset") == "5"
        })
        .await;
    assert_eq!(shown(&rows, 0, "applied"), "1,203");
    assert_eq!(
        browser.run("return window.sameLoad;").await,
        "yes",
        "not reloaded"
    );
    let totals = browser
        .wait_for(
            "the totals and a rate",
            "return ['total-next-offset', 'total-rate', 'total-applied']
                .map((id) => document.getElementById(id).textContent);",
            |totals| totals[0] == "1,209" && totals[1] != "–",
        )
        .await;
    assert_eq!(totals[2], "1,207");
    assert!(
        totals[1]
            .as_str()
            .is_some_and(|rate| rate.replace(',', "").parse::<f64>().is_ok()),
        "{totals}"
    );

    let png = browser.screenshot().await;
    assert!(is_png(&png), "not a PNG: {} bytes", png.len());
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&path, &png).expect("save the screenshot");
    println!(
        "status page screenshot: {} ({} bytes)",
        path.display(),
        png.len()
    );
    if let Some(copy) = std::env::var_os("STATUS_PAGE_SCREENSHOT") {
        std::fs::write(&copy, &png).expect("save the screenshot's copy");
    }
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_postgresql_the_status_page_says_so_and_keeps_trying() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let unreachable = format!("postgres://postgres@127.0.0.1:{}/nowhere", free_port());
    let app = spawn_app_with(config(
        &unreachable,
        &unique_topic("status"),
        Duration::from_secs(1),
    ))
    .await;
    browser.open(&format!("{}/status", app.address)).await;
    let banner = browser
        .wait_for(
            "the error, twice",
            "return [document.getElementById('error').className,
                     document.getElementById('error').textContent,
                     document.getElementById('state').textContent,
                     Number(document.body.dataset.failures || 0)];",
            |shown| shown[3].as_u64().is_some_and(|failures| failures >= 2),
        )
        .await;
    assert_eq!(banner[0], "shown");
    assert!(
        banner[1]
            .as_str()
            .is_some_and(|text| text.contains("(503)") && text.contains("Still trying")),
        "{banner}"
    );
    assert_eq!(banner[2], "not updating");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_explorer_renders_every_operation_of_the_document() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let db = TestDb::migrated().await;
    let app = spawn_app(&db.url, &unique_topic("docs"), Duration::from_secs(1)).await;
    let document: Value = app
        .get("/openapi.json")
        .await
        .json()
        .await
        .expect("document");
    let operations = document["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| item.as_object().map_or(0, |methods| methods.len()))
        .sum::<usize>();
    browser.open(&format!("{}/docs", app.address)).await;
    let paths = browser
        .wait_for(
            "every operation",
            "return Array.from(document.querySelectorAll('.opblock .opblock-summary-path'))
                .map((e) => e.textContent.replace(/\\u200b/g, ''));",
            |paths| paths.as_array().is_some_and(|p| p.len() == operations),
        )
        .await;
    assert!(
        paths
            .as_array()
            .is_some_and(|p| p.iter().any(|path| path == "/v1/users/{user_id}")),
        "{paths}"
    );
    db.drop_database().await;
}
