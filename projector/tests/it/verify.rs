//! `projector verify`: a read model projected from the log verifies identical, also while writes
//! flow and the live projector runs; a tampered one shows exactly the tampered rows; the scratch
//! schema is gone afterwards; the scratch store never sends a progress notice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::Method;
use serde_json::json;
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use projector::config::{Command, Config, VerifyArgs};
use projector::store::Store;
use projector::verify::{VerifyReport, verify};
use test_support::TestDb;

use crate::stack::{Accepted, Stack, end_offsets, schema_exists, write_to};
use crate::store::{record, registered};

/// Verify's configuration for the stack, as `projector verify` would parse it from flags.
fn verify_config(stack: &Stack, flags: &[&str]) -> (Config, VerifyArgs) {
    let mut argv = vec![
        "projector".to_owned(),
        format!("--database-url={}", stack.db.url),
        format!("--kafka-brokers={}", stack.brokers),
        format!("--kafka-topic={}", stack.topic),
        "verify".to_owned(),
    ];
    argv.extend(flags.iter().map(|f| (*f).to_owned()));
    let config = Config::parse_from(argv);
    let Some(Command::Verify(args)) = config.command.clone() else {
        panic!("`verify` parses as the verify subcommand");
    };
    (config, args)
}

/// Runs verify to completion, with small batches unless `flags` say otherwise, so that a run
/// spans many of them.
async fn run_verify(stack: &Stack, flags: &[&str]) -> VerifyReport {
    let mut all = flags.to_vec();
    if !flags.iter().any(|f| f.starts_with("--batch-size")) {
        all.push("--batch-size=7");
    }
    let (config, args) = verify_config(stack, &all);
    verify(&config, &args, std::future::pending())
        .await
        .expect("verify runs to the end")
}

pub fn partition_of(accepted: &Accepted) -> i32 {
    accepted
        .token
        .split('.')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("token names a partition")
}

/// Writes that end applied, rejected, as duplicates, and a record that is not an event.
pub async fn mixed_history(stack: &Stack) -> Accepted {
    let ada = stack.register("Ada").await;
    let bo = stack.register("Bo").await;
    let post = stack.publish(&ada.aggregate_id, "first").await;
    stack.publish(&bo.aggregate_id, "second").await;
    let ada_path = format!("/v1/users/{}", ada.aggregate_id);
    let update = json!({"bio": "updated"});
    let applied = stack
        .write(
            Method::PATCH,
            &ada_path,
            Some(update.clone()),
            &[("if-match", "\"1\"")],
        )
        .await;
    let conflict = stack
        .write(
            Method::PATCH,
            &ada_path,
            Some(update),
            &[("if-match", "\"1\"")],
        )
        .await;
    let signup = Some(json!({"display_name": "Cy"}));
    let first = stack
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
    assert_eq!(
        first.command_id, retry.command_id,
        "a retry is the same command"
    );
    let reused = stack
        .write(
            Method::POST,
            "/v1/users",
            Some(json!({"display_name": "Dee"})),
            &[("idempotency-key", "cy")],
        )
        .await;
    stack
        .write(
            Method::DELETE,
            &format!("{ada_path}/posts/{}", post.aggregate_id),
            None,
            &[],
        )
        .await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.brokers)
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(&stack.topic)
                .partition(partition_of(&ada))
                .key(ada.aggregate_id.as_bytes())
                .payload(&b"not an event"[..]),
            Duration::from_secs(10),
        )
        .await
        .expect("poison appended");
    let after_poison = stack
        .write(
            Method::PATCH,
            &ada_path,
            Some(json!({"display_name": "Ada L."})),
            &[],
        )
        .await;

    assert_eq!(stack.decision(&applied).await["status"], "applied");
    assert_eq!(
        stack.decision(&conflict).await["reason"],
        "version_conflict"
    );
    assert_eq!(
        stack.decision(&reused).await["reason"],
        "idempotency_key_reused"
    );
    assert_eq!(stack.decision(&after_poison).await["status"], "applied");
    stack.wait_caught_up().await;
    ada
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_projected_from_the_log_verifies_identical() {
    let stack = Stack::start().await;
    mixed_history(&stack).await;
    let log_end = end_offsets(&stack.brokers, &stack.topic);

    let report = run_verify(&stack, &[]).await;
    println!("{report}");

    assert!(report.is_identical(), "{report}");
    assert_eq!(report.offsets, log_end, "compared at the end of the log");
    assert_eq!(
        report.events_projected,
        log_end.values().sum::<i64>() as u64,
        "every record projected once"
    );
    let rows = |table: &str| {
        let t = report.table(table).expect("table compared");
        assert_eq!(t.live_rows, t.rebuilt_rows, "{table}");
        t.live_rows
    };
    assert_eq!(rows("users"), 3, "Ada, Bo, Cy; Dee reused a key");
    assert_eq!(rows("posts"), 2);
    assert_eq!(
        rows("decisions"),
        10,
        "every command but the verbatim retry"
    );
    assert_eq!(rows("idempotency_keys"), 1);
    assert_eq!(rows("dead_letters"), 1, "the poison record");
    assert_eq!(
        rows("aggregate_events"),
        8,
        "Ada 3, Bo 1, Cy 1, the posts 2 + 1"
    );
    assert!(report.scratch_dropped);
    assert!(!schema_exists(&stack, &report.scratch_schema).await);
    stack.db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_read_model_shows_exactly_the_tampered_rows() {
    let stack = Stack::start().await;
    let ada = mixed_history(&stack).await;
    let bo_signup = stack.register("Bo").await;
    stack.wait_caught_up().await;
    let pool = stack.db.pool().await;
    sqlx::query("UPDATE users SET display_name = 'tampered' WHERE id = $1::uuid")
        .bind(&ada.aggregate_id)
        .execute(&pool)
        .await
        .expect("tamper with a user");
    sqlx::query("DELETE FROM decisions WHERE command_id = $1::uuid")
        .bind(&bo_signup.command_id)
        .execute(&pool)
        .await
        .expect("lose a decision");
    pool.close().await;

    let report = run_verify(&stack, &["--max-diff-rows=5"]).await;

    assert!(!report.is_identical(), "{report}");
    let users = report.table("users").expect("users compared");
    assert_eq!(
        (users.only_in_live, users.only_in_rebuild),
        (1, 1),
        "{report}"
    );
    let live_row: serde_json::Value =
        serde_json::from_str(&users.only_in_live_sample[0]).expect("json row");
    let rebuilt_row: serde_json::Value =
        serde_json::from_str(&users.only_in_rebuild_sample[0]).expect("json row");
    assert_eq!(live_row["id"], ada.aggregate_id.as_str());
    assert_eq!(live_row["display_name"], "tampered");
    assert_eq!(rebuilt_row["id"], ada.aggregate_id.as_str());
    assert_eq!(rebuilt_row["display_name"], "Ada L.", "what the log says");

    let decisions = report.table("decisions").expect("decisions compared");
    assert_eq!(decisions.only_in_live, 0, "{report}");
    assert_eq!(decisions.only_in_rebuild, 1, "{report}");
    let lost: serde_json::Value =
        serde_json::from_str(&decisions.only_in_rebuild_sample[0]).expect("json row");
    assert_eq!(lost["command_id"], bo_signup.command_id.as_str());
    assert_eq!(decisions.live_rows + 1, decisions.rebuilt_rows);

    let others: Vec<_> = report
        .tables
        .iter()
        .filter(|t| !["users", "decisions"].contains(&t.table))
        .collect();
    assert_eq!(others.len(), 4);
    assert!(others.iter().all(|t| t.is_identical()), "{report}");
    let printed = report.to_string();
    assert!(
        printed.contains("DIFFERENT") && printed.contains("tampered"),
        "{printed}"
    );
    assert!(
        !schema_exists(&stack, &report.scratch_schema).await,
        "scratch dropped"
    );
    stack.db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_while_writes_flow_compares_one_consistent_point_and_the_projector_goes_on() {
    let stack = Stack::start().await;
    let (written_tx, mut written) = watch::channel(0_u64);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, url, stop) = (
            stack.client.clone(),
            stack.command.url.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut count = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                let user = write_to(
                    &client,
                    &url,
                    Method::POST,
                    "/v1/users",
                    Some(json!({"display_name": format!("writer {count}")})),
                    &[],
                )
                .await;
                write_to(
                    &client,
                    &url,
                    Method::POST,
                    &format!("/v1/users/{}/posts", user.aggregate_id),
                    Some(json!({"title": "t", "body": "b"})),
                    &[],
                )
                .await;
                count += 2;
                written_tx.send_replace(count);
            }
            count
        })
    };
    written
        .wait_for(|n| *n >= 20)
        .await
        .expect("the writer is writing");
    // Those 20 are in the live read model; the writes behind them keep coming.
    stack.wait_caught_up().await;

    let report = run_verify(&stack, &["--batch-size=5"]).await;
    let during = *written.borrow();
    stop.store(true, Ordering::Relaxed);
    let total = writer.await.expect("writer finished");

    assert!(report.is_identical(), "{report}");
    assert!(
        report.events_projected >= 20,
        "verified at least what the live read model held when it started: {report}"
    );
    assert!(total >= during);
    let users = report.table("users").expect("users compared");
    assert!(users.live_rows >= 10, "{report}");

    let after = stack.register("after verify").await;
    assert_eq!(
        stack.decision(&after).await["status"],
        "applied",
        "the live projector goes on after verify"
    );
    stack.db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_0_when_identical_1_on_differences_and_2_when_it_cannot_verify() {
    let stack = Stack::start().await;
    let ada = stack.register("Ada").await;
    stack.publish(&ada.aggregate_id, "hello").await;
    stack.wait_caught_up().await;
    let run = |topic: String| {
        let database_url = stack.db.url.clone();
        let brokers = stack.brokers.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_projector"))
                .arg("verify")
                .env("DATABASE_URL", database_url)
                .env("KAFKA_BROKERS", brokers)
                .env("KAFKA_TOPIC", topic)
                .env("RUST_LOG", "warn")
                .kill_on_drop(true)
                .output()
                .await
                .expect("projector verify runs")
        }
    };

    let identical = run(stack.topic.clone()).await;
    let stdout = String::from_utf8_lossy(&identical.stdout);
    assert_eq!(identical.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("IDENTICAL"), "{stdout}");
    assert!(stdout.starts_with("topic"), "logs go to stderr: {stdout}");

    let pool = stack.db.pool().await;
    sqlx::query("UPDATE posts SET title = 'tampered'")
        .execute(&pool)
        .await
        .expect("tamper");
    pool.close().await;
    let different = run(stack.topic.clone()).await;
    let stdout = String::from_utf8_lossy(&different.stdout);
    assert_eq!(different.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("tampered"),
        "the differing row is printed: {stdout}"
    );

    let no_topic = run(test_support::unique_topic("missing")).await;
    let stdout = String::from_utf8_lossy(&no_topic.stdout);
    assert_eq!(no_topic.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("could not verify"), "{stdout}");

    let leftover: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'verify\\_%'")
            .fetch_one(&stack.db.pool().await)
            .await
            .expect("catalog query");
    assert_eq!(leftover, 0, "every run dropped its scratch schema");
    stack.db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scratch_store_builds_its_own_schema_and_never_notifies_progress() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    sqlx::query("CREATE SCHEMA verify_test")
        .execute(&pool)
        .await
        .expect("schema");
    let scratch = Store::connect_lazy_in_schema(&db.url, "verify_test", "scratch-topic", 2)
        .expect("pool")
        .replay();
    scratch.migrate().await.expect("migrate the scratch schema");
    let (in_public, in_scratch): (bool, bool) = sqlx::query_as(
        "SELECT to_regclass('public.users') IS NOT NULL, to_regclass('verify_test.users') IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .expect("catalog query");
    assert!(
        !in_public && in_scratch,
        "the tables are in the scratch schema only"
    );

    let mut listener = PgListener::connect(&db.url).await.expect("listener");
    listener
        .listen(events::progress::CHANNEL)
        .await
        .expect("listen");
    let claims = scratch.claim(&[0], "verify").await.expect("claim");
    let user = uuid::Uuid::now_v7();
    let outcome = scratch
        .commit_batch(&[record(0, 0, &registered(user))], &claims, false)
        .await
        .expect("commit");
    assert_eq!(
        outcome.committed,
        BTreeMap::from([(0, 1)]),
        "the batch committed"
    );
    // Notices arrive in commit order: had the scratch commit sent one, it would come first.
    sqlx::query("SELECT pg_notify($1, 'marker')")
        .bind(events::progress::CHANNEL)
        .execute(&pool)
        .await
        .expect("marker");
    let first = listener.recv().await.expect("a notification");
    assert_eq!(
        first.payload(),
        "marker",
        "the scratch store sent no notice"
    );

    // The live store, on the same database, does notify: the switch is what made the difference.
    let live = Store::connect_lazy(&db.url, "live-topic", 2).expect("pool");
    live.migrate().await.expect("migrate public");
    let claims = live.claim(&[0], "live").await.expect("claim");
    live.commit_batch(&[record(0, 0, &registered(user))], &claims, false)
        .await
        .expect("commit");
    let notice = listener.recv().await.expect("a notification");
    assert!(
        notice.payload().contains("live-topic"),
        "{}",
        notice.payload()
    );
    pool.close().await;
    db.drop_database().await;
}
