//! The log-end watch asks the broker for each owned partition's end, the lag's other half.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use projector::log_ends::{LogEndWatch, LogEnds};
use projector::ownership::Claim;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use test_support::TestDb;

use crate::stack::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_hears_the_owned_partitions_log_ends_and_follows_appends() {
    // No projector: the log grows and nothing consumes it.
    let stack = Stack::start_on(test_support::kafka_brokers(), TestDb::create().await, false).await;
    for n in 0..5 {
        stack.register(&format!("user {n}")).await;
    }
    let claim = Claim {
        epoch: 1,
        next_offset: 0,
    };
    // The command API's topic has 4 partitions; this instance owns all but partition 3.
    let ownership = Arc::new(Mutex::new(BTreeMap::from([
        (0, claim),
        (1, claim),
        (2, claim),
    ])));
    let log_ends = LogEnds::default();
    let stopping = Arc::new(AtomicBool::new(false));
    let watch = LogEndWatch::new(
        &stack.brokers,
        &stack.topic,
        "test",
        ownership,
        log_ends.clone(),
    )
    .expect("client");
    let thread = watch.spawn(stopping.clone()).expect("thread");
    let ends = || log_ends.lock().expect("lock").clone();
    let expected = |ends: &BTreeMap<i32, i64>| -> bool {
        let real: Vec<i64> = (0..3)
            .map(|p| partition_end(&stack.brokers, &stack.topic, p))
            .collect();
        ends.keys().copied().collect::<Vec<_>>() == [0, 1, 2]
            && real
                .iter()
                .enumerate()
                .all(|(p, end)| ends.get(&(p as i32)) == Some(end))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !expected(&ends()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "log ends: {:?}",
            ends()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before: i64 = ends().values().sum();
    for n in 0..8 {
        stack.register(&format!("later {n}")).await;
    }
    while !(expected(&ends()) && ends().values().sum::<i64>() > before) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "log ends: {:?}",
            ends()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    thread.thread().unpark();
    thread.join().expect("the watch ends when told");
}

/// The partition's log end, asked here with a client of the test's own.
fn partition_end(brokers: &str, topic: &str, partition: i32) -> i64 {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("client");
    client
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .expect("watermarks")
        .1
}
