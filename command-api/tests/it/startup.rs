//! Start-up: the topic is created as configured, and an unreachable broker is a clear error.

use std::time::Duration;

use command_api::{Application, Config};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

#[tokio::test]
async fn build_creates_the_topic_with_the_configured_partitions_and_tolerates_an_existing_one() {
    let brokers = test_support::kafka_brokers();
    let topic = test_support::unique_topic("command-api-topic");
    let mut config = Config::for_tests(&brokers, &topic);
    config.kafka_partitions = 3;
    let first = Application::build(config.clone())
        .await
        .expect("creates the topic");
    let second = Application::build(config)
        .await
        .expect("the topic exists: fine");
    assert_ne!(first.port(), second.port());

    let partitions = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("a client");
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("metadata");
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().len())
    })
    .await
    .expect("the metadata task ends");
    assert_eq!(partitions, Some(3));
}

#[tokio::test]
async fn build_fails_with_the_broker_address_when_no_broker_answers() {
    let brokers = format!("127.0.0.1:{}", test_support::free_port());
    let mut config =
        Config::for_tests(&brokers, test_support::unique_topic("command-api-nobroker"));
    config.kafka_startup_timeout_ms = 1500;
    let error = Application::build(config)
        .await
        .expect_err("no broker, no service");
    let message = format!("{error:#}");
    assert!(message.contains(&brokers), "{message}");
}
