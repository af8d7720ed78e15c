//! `loadgen broker` against the tests' real broker: what it appends is what its tail receives
//! and what its read-back finds, and an open loop keeps to its schedule.

use std::time::Duration;

use loadgen::BrokerConfig;
use loadgen::broker;
use test_support::{kafka_brokers, unique_topic};

fn config(rate: f64) -> BrokerConfig {
    BrokerConfig {
        brokers: kafka_brokers(),
        topic: unique_topic("loadgen-broker"),
        partitions: 2,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(500),
        in_flight: 8,
        rate,
        value_bytes: 256,
        fetch_wait_ms: 10,
        no_read_back: false,
        json: None,
    }
}

#[tokio::test]
async fn every_measured_append_is_delivered_to_the_tail_and_read_back() {
    let report = broker::run_and_report(config(0.0)).await.expect("run");
    assert!(report.appended > 0, "nothing appended: {report:?}");
    assert!(
        report.append_errors.is_empty(),
        "{:?}",
        report.append_errors
    );
    assert_eq!(report.delivered, report.appended, "the tail missed records");
    let read_back = report.read_back.expect("read back");
    // The read-back also finds the warm-up's records.
    assert!(
        read_back.records >= report.appended,
        "{read_back:?} for {} appended",
        report.appended
    );
    assert_eq!(
        report.seconds.iter().map(|s| s.appended).sum::<u64>(),
        report.appended
    );
}

#[tokio::test]
async fn an_open_loop_sends_no_more_than_its_schedule() {
    let mut config = config(50.0);
    config.no_read_back = true;
    let report = broker::run_and_report(config).await.expect("run");
    // 2.5 s of schedule at 50/s, of which 2 s are measured.
    assert!(
        (1..=100).contains(&report.appended),
        "{} appended in 2 s at 50/s",
        report.appended
    );
    assert_eq!(report.delivered, report.appended);
    assert_eq!(report.rate, Some(50.0));
}
