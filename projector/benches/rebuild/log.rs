//! Step 1, the log: the workload's events produced into a new topic in large batches (and
//! checked to be all there), or the same records kept in memory, partitioned by their key as the
//! command API's producer would.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use projector::RecordedLog;
use projector::record::Record;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use uuid::Uuid;

use crate::args::Args;
use crate::workload::Workload;

/// The log kept in memory, and the order in which a command API would have appended it.
pub struct MemoryLog {
    pub log: RecordedLog,
    /// (partition, index in that partition) of every record, in append order.
    pub in_order: Vec<(i32, usize)>,
}

/// Generates the workload's events into records in memory.
pub fn generate(args: &Args) -> MemoryLog {
    let mut workload = Workload::new(args.seed, args.events);
    let mut log = RecordedLog::default();
    let mut in_order = Vec::with_capacity(usize::try_from(args.events).unwrap_or(0));
    let partitions = u128::try_from(args.partitions.max(1)).unwrap_or(1);
    for _ in 0..args.events {
        let envelope = workload.next_event();
        let partition = (envelope.partition_key.as_u128() % partitions) as i32;
        let records = log.partitions.entry(partition).or_default();
        records.push(Record {
            partition,
            offset: records.len() as i64,
            key: Some(envelope.partition_key.to_string().into_bytes()),
            payload: Some(envelope.encode()),
            headers: Vec::new(),
        });
        in_order.push((partition, records.len() - 1));
    }
    MemoryLog { log, in_order }
}

pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&new_topic], &AdminOptions::new())
        .await
        .with_context(|| format!("cannot create the benchmark's topic on {brokers}"))?;
    for result in results {
        if let Err((name, code)) = result {
            bail!("cannot create topic {name}: {code}");
        }
    }
    Ok(())
}

/// Deletes the benchmark's topic; best effort, the figures are already taken.
pub async fn delete_topic(brokers: &str, topic: &str) {
    let admin: Result<AdminClient<DefaultClientContext>, _> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create();
    if let Ok(admin) = admin {
        let _ = admin.delete_topics(&[topic], &AdminOptions::new()).await;
    }
}

/// Produces the workload into `topic` and checks that the log holds all of it.
pub async fn fill(args: &Args, topic: &str) -> anyhow::Result<u64> {
    let (brokers, topic_name, events, seed) = (
        args.kafka_brokers.clone(),
        topic.to_owned(),
        args.events,
        args.seed,
    );
    tokio::task::spawn_blocking(move || produce(&brokers, &topic_name, events, seed)).await??;
    let logged = log_end(&args.kafka_brokers, topic, args.partitions).await?;
    ensure!(
        logged == events,
        "produced {events} events but the log holds {logged}"
    );
    Ok(logged)
}

fn produce(brokers: &str, topic: &str, events: u64, seed: u64) -> anyhow::Result<()> {
    // Throughput settings, unlike the command API's: large batches, a long linger.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // The command API's partitioner: a user's events land where they would live.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "50")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "600000")
        .create()
        .context("cannot create a Kafka producer")?;
    let mut workload = Workload::new(seed, events);
    let mut last_said = Instant::now();
    for sent in 0..events {
        let envelope = workload.next_event();
        let key = envelope.partition_key.to_string();
        let payload = envelope.encode();
        let mut record = BaseRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .headers(command_api::appender::record_headers(&envelope));
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => {
                    return Err(e).with_context(|| format!("cannot produce to {brokers}"));
                }
            }
        }
        producer.poll(Duration::ZERO);
        if last_said.elapsed() > Duration::from_secs(5) {
            last_said = Instant::now();
            eprintln!("    {sent}/{events} produced");
        }
    }
    producer
        .flush(Duration::from_secs(600))
        .context("the broker did not acknowledge every event within 600 s")?;
    Ok(())
}

/// Records in the log, all partitions together.
async fn log_end(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<u64> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("rebuild-bench-{}", Uuid::new_v4()))
            .create()?;
        let mut total = 0;
        for partition in 0..partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, Duration::from_secs(30))
                .with_context(|| format!("cannot read the end of {topic}/{partition}"))?;
            total += high - low;
        }
        Ok(u64::try_from(total)?)
    })
    .await?
}
