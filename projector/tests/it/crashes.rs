//! Crashes and outages: whatever dies, the read model ends up exactly as the log says.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use reqwest::{Method, StatusCode};
use serde_json::json;
use test_support::{OwnBroker, OwnPostgres, TestDb, http};
use tokio::sync::Notify;

use crate::stack::{
    Accepted, ChildProjector, SESSION_TIMEOUT_MS, Stack, replay_snapshot, send_write, snapshot,
    write_to,
};

/// A stream of writes over a few users: posts, edits and deletes, with `If-Match` values that
/// are sometimes stale, so that applies and rejections interleave. `halfway` is notified once
/// half of them were accepted.
async fn write_stream(
    client: reqwest::Client,
    command_url: String,
    steps: usize,
    halfway: Arc<Notify>,
) -> Vec<Accepted> {
    let mut accepted = Vec::new();
    let mut users = Vec::new();
    for i in 0..4 {
        let a = write_to(
            &client,
            &command_url,
            Method::POST,
            "/v1/users",
            Some(json!({"display_name": format!("u{i}")})),
            &[],
        )
        .await;
        users.push(a.aggregate_id.clone());
        accepted.push(a);
    }
    let mut posts: Vec<Vec<String>> = vec![Vec::new(); users.len()];
    for step in 0..steps {
        let u = step % users.len();
        let user = &users[u];
        let guess = format!("\"{}\"", 1 + step % 3);
        let a = match (step / users.len()) % 5 {
            0 | 4 => {
                let body = json!({"title": format!("s{step}"), "body": "x".repeat(200)});
                let a = write_to(
                    &client,
                    &command_url,
                    Method::POST,
                    &format!("/v1/users/{user}/posts"),
                    Some(body),
                    &[],
                )
                .await;
                posts[u].push(a.aggregate_id.clone());
                a
            }
            1 => {
                let body = json!({"bio": format!("step {step}")});
                write_to(
                    &client,
                    &command_url,
                    Method::PATCH,
                    &format!("/v1/users/{user}"),
                    Some(body),
                    &[("If-Match", &guess)],
                )
                .await
            }
            2 => {
                let post = posts[u].last().cloned().unwrap_or_default();
                let body = json!({"title": format!("edit {step}")});
                let path = format!("/v1/users/{user}/posts/{post}");
                write_to(
                    &client,
                    &command_url,
                    Method::PATCH,
                    &path,
                    Some(body),
                    &[("If-Match", &guess)],
                )
                .await
            }
            _ => {
                let post = posts[u].first().cloned().unwrap_or_default();
                write_to(
                    &client,
                    &command_url,
                    Method::DELETE,
                    &format!("/v1/users/{user}/posts/{post}"),
                    None,
                    &[],
                )
                .await
            }
        };
        accepted.push(a);
        if step == steps / 2 {
            halfway.notify_one();
        }
    }
    accepted
}

/// The read model equals a fresh, uninterrupted projection of the same log, and every
/// accepted command was decided.
async fn assert_matches_the_log(stack: &Stack, accepted: &[Accepted]) {
    stack.wait_caught_up().await;
    let live = snapshot(&stack.db.url).await;
    assert_eq!(
        live["decisions"].len(),
        accepted.len(),
        "every accepted command decided exactly once"
    );
    let applied = live["decisions"]
        .iter()
        .filter(|d| d.contains(r#""status":"applied""#))
        .count();
    assert_eq!(
        live["aggregate_events"].len(),
        applied,
        "one history row per applied command, none for rejections"
    );
    let replayed = replay_snapshot(&stack.brokers, &stack.topic).await;
    for (table, rows) in &replayed {
        assert_eq!(
            &live[table], rows,
            "table {table} differs from an uninterrupted projection of the log"
        );
    }
    assert!(
        live["decisions"]
            .iter()
            .any(|d| d.contains("version_conflict")),
        "the stream exercised rejections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_mid_stream_resumes_without_loss_or_double_apply() {
    let stack = Stack::start_on(test_support::kafka_brokers(), TestDb::create().await, false).await;
    let group = format!("{}-g", stack.topic);
    let first =
        ChildProjector::spawn(&stack.brokers, &stack.topic, &group, &stack.db.url, "first").await;
    let halfway = Arc::new(Notify::new());
    let writer = tokio::spawn(write_stream(
        http(),
        stack.command.url.clone(),
        200,
        halfway.clone(),
    ));
    halfway.notified().await;
    first.kill_9().await;
    let _second = ChildProjector::spawn(
        &stack.brokers,
        &stack.topic,
        &group,
        &stack.db.url,
        "second",
    )
    .await;
    let accepted = writer.await.expect("writer");
    assert_matches_the_log(&stack, &accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_projectors_share_the_partitions_and_one_takes_over_when_the_other_is_killed() {
    let stack = Stack::start_on(test_support::kafka_brokers(), TestDb::create().await, false).await;
    let group = format!("{}-g", stack.topic);
    let a = ChildProjector::spawn(&stack.brokers, &stack.topic, &group, &stack.db.url, "a").await;
    let _b = ChildProjector::spawn(&stack.brokers, &stack.topic, &group, &stack.db.url, "b").await;
    let halfway = Arc::new(Notify::new());
    let writer = tokio::spawn(write_stream(
        http(),
        stack.command.url.clone(),
        200,
        halfway.clone(),
    ));
    halfway.notified().await;
    a.kill_9().await;
    let accepted = writer.await.expect("writer");
    assert_matches_the_log(&stack, &accepted).await;

    let pool = stack.db.pool().await;
    let owners: Vec<String> = sqlx::query_scalar("SELECT DISTINCT owner FROM projector_offsets")
        .fetch_all(&pool)
        .await
        .expect("owners");
    assert_eq!(owners, ["b"], "the survivor owns every partition");
}

/// A member of the projectors' group that takes partitions and never projects them: from the
/// outside, what a group looks like whose coordinator gave a dead member's share to nobody.
/// It leaves the group when dropped.
struct IdleMember {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl IdleMember {
    /// Joins and returns once the group has given it partitions.
    async fn join(brokers: &str, topic: &str, group: &str) -> IdleMember {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("client.id", "idle-member")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
            .set(
                "heartbeat.interval.ms",
                (SESSION_TIMEOUT_MS / 3).to_string(),
            )
            .create()
            .expect("idle consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let stop = Arc::new(AtomicBool::new(false));
        let (assigned, on_assigned) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut assigned = Some(assigned);
                // Polling serves the group's rebalances; what it fetches is dropped unprojected.
                while !stop.load(Ordering::Relaxed) {
                    let _ = consumer.poll(Duration::from_millis(100));
                    if assigned.is_some()
                        && consumer.assignment().is_ok_and(|a| a.count() > 0)
                        && let Some(tell) = assigned.take()
                    {
                        let _ = tell.send(());
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), on_assigned)
            .await
            .expect("the idle member got partitions within 60 s")
            .expect("the idle member's thread is running");
        IdleMember {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for IdleMember {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_that_nobody_projects_make_a_projector_rejoin_and_are_projected_once_their_holder_is_gone()
 {
    let stack = Stack::start_on(test_support::kafka_brokers(), TestDb::create().await, false).await;
    let group = format!("{}-g", stack.topic);
    let idle = IdleMember::join(&stack.brokers, &stack.topic, &group).await;
    let survivor = ChildProjector::spawn_with(
        &stack.brokers,
        &stack.topic,
        &group,
        &stack.db.url,
        "survivor",
        &[("PARTITION_STALL_TIMEOUT_MS", "2000")],
    )
    .await;
    // Events on every partition, so that whatever share the idle member holds has work waiting.
    let mut accepted = Vec::new();
    let mut partitions = std::collections::BTreeSet::new();
    while partitions.len() < 4 {
        assert!(
            accepted.len() < 200,
            "4 partitions, yet 200 users went to {partitions:?}"
        );
        let user = stack.register(&format!("u{}", accepted.len())).await;
        let partition = user
            .token
            .split('.')
            .nth(1)
            .expect("v1.<partition>.<offset>")
            .to_owned();
        partitions.insert(partition);
        accepted.push(user);
    }

    // Whatever the group gave the survivor, the idle member's share does not move.
    let deadline = Instant::now() + Duration::from_secs(60);
    while survivor
        .metric("projector_stall_rejoins_total")
        .await
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the survivor never rejoined the group"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    drop(idle);
    stack.wait_caught_up().await;
    let live = snapshot(&stack.db.url).await;
    assert_eq!(
        live["decisions"].len(),
        accepted.len(),
        "every registration decided"
    );
    let pool = stack.db.pool().await;
    let owners: Vec<String> = sqlx::query_scalar("SELECT DISTINCT owner FROM projector_offsets")
        .fetch_all(&pool)
        .await
        .expect("owners");
    assert_eq!(owners, ["survivor"], "the survivor owns every partition");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_accepted_while_postgres_is_down_and_projected_when_it_returns() {
    let pg = OwnPostgres::start().await;
    let stack = Stack::start_on(
        test_support::kafka_brokers(),
        TestDb::create_on(&pg.admin_url()).await,
        true,
    )
    .await;
    let user = stack.register("Hal").await;
    assert_eq!(stack.decision(&user).await["status"], "applied");

    pg.stop().await;
    let mut during = Vec::new();
    for i in 0..5 {
        during.push(
            stack
                .publish(&user.aggregate_id, &format!("offline {i}"))
                .await,
        );
    }
    let (status, _) = stack
        .read(&format!("/v1/users/{}", user.aggregate_id), None)
        .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "reads need the database"
    );

    pg.resume().await;
    for accepted in &during {
        assert_eq!(stack.decision(accepted).await["status"], "applied");
    }
    let (_, read) = stack
        .read(
            &format!("/v1/users/{}", user.aggregate_id),
            Some(&during[4].token),
        )
        .await;
    assert_eq!(read["post_count"], 5);
    let mut all = vec![user];
    all.extend(during);
    let live = snapshot(&stack.db.url).await;
    assert_eq!(live["decisions"].len(), all.len());
    let replayed = replay_snapshot(&stack.brokers, &stack.topic).await;
    assert_eq!(live, replayed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_broker_is_down_writes_fail_fast_and_reads_go_on_and_both_recover() {
    let mut broker = OwnBroker::start().await;
    let stack = Stack::start_on(broker.brokers(), TestDb::create().await, true).await;
    let user = stack.register("Ida").await;
    assert_eq!(stack.decision(&user).await["status"], "applied");

    broker.stop().await;
    let post = json!({"title": "t", "body": "b"});
    let path = format!("/v1/users/{}/posts", user.aggregate_id);
    let (status, _) = send_write(
        &stack.client,
        &stack.command.url,
        Method::POST,
        &path,
        Some(post.clone()),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, read) = stack
        .read(
            &format!("/v1/users/{}", user.aggregate_id),
            Some(&user.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "reads do not need the broker");
    assert_eq!(read["display_name"], "Ida");

    broker.resume().await;
    // The clients reconnect on their own, with no signal to wait on: until they have, a write
    // may still answer 503, so poll with a bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let accepted = loop {
        let (status, answer) = send_write(
            &stack.client,
            &stack.command.url,
            Method::POST,
            &path,
            Some(post.clone()),
            &[],
        )
        .await;
        if status == StatusCode::ACCEPTED {
            break Accepted::from_body(&answer);
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
        assert!(
            std::time::Instant::now() < deadline,
            "writes never worked again without a restart"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(
        stack.decision(&accepted).await["status"],
        "applied",
        "the projector resumed too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_projected_from_another_log_stops_the_projector_instead_of_skipping_events() {
    let brokers = test_support::kafka_brokers();
    let topic = test_support::unique_topic("other-log");
    let db = TestDb::migrated().await;
    let _command = crate::stack::command_api(&brokers, &topic).await;
    // As if this database had projected 100 events per partition of an earlier topic of this name.
    let pool = db.pool().await;
    sqlx::query(
        "INSERT INTO projector_offsets (topic, partition, next_offset, epoch, owner)
         SELECT $1, p, 100, 1, 'earlier' FROM generate_series(0, 3) AS p",
    )
    .bind(&topic)
    .execute(&pool)
    .await
    .expect("offsets");

    let config =
        crate::stack::projector_config(&brokers, &topic, &format!("{topic}-g"), &db.url, "p");
    let app = projector::Application::build(config).await.expect("builds");
    let stopped = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        app.run(std::future::pending()),
    )
    .await
    .expect("the projector stops on its own");
    let error = stopped.expect_err("and says why").to_string();
    assert!(error.contains("ahead of the log"), "{error}");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM decisions")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(applied, 0);
}
