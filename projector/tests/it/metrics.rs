//! The projector's `/metrics`: lag per partition grows while a batch cannot commit and is 0
//! once it has; decisions count by outcome and reason, dead letters and batches as they
//! commit; and the families exposed are those `docs/metrics.md` lists (rebuild progress is
//! checked in [`crate::rebuild`]).

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::Method;
use serde_json::json;

use test_support::http;

use crate::stack::Stack;
use crate::verify::partition_of;

/// A projector's `/metrics` text.
pub async fn scrape(url: &str) -> String {
    http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("the projector answers /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// One series' value, `series` being the name with its labels as rendered.
pub fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls the projector at `url` until `series` has `expected` (`None`: is absent). The
/// metrics announce nothing, so this polls, with a deadline.
pub async fn wait_for_series(url: &str, series: &str, expected: Option<f64>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = scrape(url).await;
        let now = value(&metrics, series);
        if now == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} stayed at {now:?}, not {expected:?}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lag(partition: i32) -> String {
    format!("projector_partition_lag_offsets{{partition=\"{partition}\"}}")
}

fn decisions(outcome: &str) -> String {
    format!("projector_decisions_total{{outcome=\"{outcome}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_decisions_and_batches_are_measured_and_every_family_is_documented() {
    let stack = Stack::start().await;
    let url = stack
        ._projector
        .as_ref()
        .expect("in-process projector")
        .url
        .clone();
    let ada = stack.register("Ada").await;
    let partition = partition_of(&ada);
    stack.decision(&ada).await;
    wait_for_series(&url, &lag(partition), Some(0.0)).await;

    // Hold the rows the projector's batch must lock: the next batch waits, uncommitted,
    // while the log grows.
    let pool = stack.db.pool().await;
    let mut hold = pool.begin().await.expect("a transaction");
    sqlx::query("SELECT 1 FROM projector_offsets FOR UPDATE")
        .fetch_all(&mut *hold)
        .await
        .expect("the offsets locked");
    let mut posts = Vec::new();
    for n in 0..5 {
        posts.push(stack.publish(&ada.aggregate_id, &format!("post {n}")).await);
    }
    assert!(
        posts.iter().all(|p| partition_of(p) == partition),
        "one user, one partition"
    );
    wait_for_series(&url, &lag(partition), Some(5.0)).await;
    let held = scrape(&url).await;
    assert_eq!(value(&held, &decisions("applied")), Some(1.0), "{held}");

    hold.rollback().await.expect("released");
    wait_for_series(&url, &decisions("applied"), Some(6.0)).await;
    wait_for_series(&url, &lag(partition), Some(0.0)).await;

    // A rejection, a duplicate and a dead letter.
    let ada_path = format!("/v1/users/{}", ada.aggregate_id);
    let conflict = stack
        .write(
            Method::PATCH,
            &ada_path,
            Some(json!({"bio": "late"})),
            &[("if-match", "\"99\"")],
        )
        .await;
    let signup = Some(json!({"display_name": "Cy"}));
    let cy = stack
        .write(
            Method::POST,
            "/v1/users",
            signup.clone(),
            &[("idempotency-key", "cy")],
        )
        .await;
    let retry = stack
        .write(
            Method::POST,
            "/v1/users",
            signup,
            &[("idempotency-key", "cy")],
        )
        .await;
    assert_eq!(cy.command_id, retry.command_id);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(&stack.topic)
                .partition(partition)
                .key(ada.aggregate_id.as_bytes())
                .payload(&b"not an event"[..]),
            Duration::from_secs(10),
        )
        .await
        .expect("poison appended");
    assert_eq!(
        stack.decision(&conflict).await["reason"],
        "version_conflict"
    );
    stack.decision(&retry).await;
    stack.wait_caught_up().await;
    wait_for_series(&url, "projector_dead_letters_total", Some(1.0)).await;

    let metrics = scrape(&url).await;
    let v = |series: &str| value(&metrics, series);
    assert_eq!(v(&decisions("applied")), Some(7.0), "{metrics}");
    assert_eq!(v(&decisions("duplicate")), Some(1.0), "{metrics}");
    let rejected = |reason: &str| {
        v(&format!(
            "projector_decisions_total{{outcome=\"rejected\",reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(rejected("version_conflict"), Some(1.0), "{metrics}");
    assert_eq!(rejected("not_found"), Some(0.0), "{metrics}");
    // Every record went through exactly one committed batch: 7 applied, 1 rejected, 1
    // duplicate, 1 dead letter.
    assert_eq!(v("projector_batch_events_sum"), Some(10.0), "{metrics}");
    let batches = v("projector_batch_events_count").expect("batches counted");
    assert!((1.0..=10.0).contains(&batches), "{metrics}");
    assert_eq!(v("projector_apply_duration_seconds_count"), Some(batches));
    assert!(
        v("projector_apply_duration_seconds_sum").is_some_and(|s| s > 0.0),
        "{metrics}"
    );
    assert_eq!(v(&lag(partition)), Some(0.0), "{metrics}");
    test_support::metrics_docs::assert_documented(&metrics, &["Every service", "Projector"]);
    stack.db.drop_database().await;
}
