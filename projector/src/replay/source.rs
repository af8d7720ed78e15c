//! Where a replay reads the log from ([`LogSource`]: the broker, or a log held in memory), and how
//! far the log goes: each partition's bounds, and the check that a read model is not ahead of
//! them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use uuid::Uuid;

use crate::record::Record;

/// Bound on broker metadata requests.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a replay reads the log from.
#[derive(Debug, Clone)]
pub enum LogSource {
    /// The topic on these Kafka bootstrap servers: what every command uses.
    Kafka { brokers: String },
    /// Records already in memory, partition by partition from offset 0: for the rebuild
    /// benchmark, which measures the projection apart from a broker's fetch speed.
    Recorded(Arc<RecordedLog>),
}

/// A log held in memory: `partitions[p][o]` is the record at offset `o` of partition `p`.
#[derive(Debug, Default)]
pub struct RecordedLog {
    pub partitions: BTreeMap<i32, Vec<Record>>,
}

impl LogSource {
    /// Each partition's (start, end) offsets.
    pub(crate) async fn bounds(&self, topic: &str) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
        match self {
            LogSource::Kafka { brokers } => log_bounds(brokers, topic).await,
            LogSource::Recorded(log) => Ok(log
                .partitions
                .iter()
                .map(|(p, records)| (*p, (0, records.len() as i64)))
                .collect()),
        }
    }
}

/// Each partition's (start, end) offsets in the log.
async fn log_bounds(brokers: &str, topic: &str) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    // librdkafka's metadata calls block.
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", throwaway_group())
            .create()
            .context("cannot create a Kafka client")?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), KAFKA_TIMEOUT)
            .context("cannot fetch the topic's metadata")?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .with_context(|| format!("topic {topic:?} not found"))?;
        if let Some(error) = found.error() {
            bail!("topic {topic:?} is not available: {error:?}");
        }
        ensure!(
            !found.partitions().is_empty(),
            "topic {topic:?} has no partitions"
        );
        let mut bounds = BTreeMap::new();
        for partition in found.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition.id(), KAFKA_TIMEOUT)
                .with_context(|| {
                    format!("cannot fetch the offsets of partition {}", partition.id())
                })?;
            ensure!(
                low == 0,
                "partition {} of topic {topic:?} starts at offset {low}: the log no longer holds \
                 every event, so it cannot be projected again",
                partition.id()
            );
            bounds.insert(partition.id(), (low, high));
        }
        Ok(bounds)
    })
    .await?
}

/// Fails when `targets` lie past the end of the log (looking again first, as the log grows).
pub(crate) async fn check_within_log(
    bounds: &mut BTreeMap<i32, (i64, i64)>,
    source: &LogSource,
    topic: &str,
    targets: &BTreeMap<i32, i64>,
) -> anyhow::Result<()> {
    let beyond = |bounds: &BTreeMap<i32, (i64, i64)>| {
        targets
            .iter()
            .find(|(p, target)| bounds.get(p).is_none_or(|(_, end)| end < target))
            .map(|(p, t)| (*p, *t))
    };
    if beyond(bounds).is_none() {
        return Ok(());
    }
    *bounds = source.bounds(topic).await?;
    if let Some((partition, target)) = beyond(bounds) {
        bail!(
            "the read model is ahead of the log: it has projected partition {partition} of topic \
             {topic:?} up to offset {target}, but the log ends at {:?}; it was built from another log",
            bounds.get(&partition).map(|(_, end)| end)
        );
    }
    Ok(())
}

/// A group id nothing else uses: this client never joins nor commits, but librdkafka wants one.
pub(super) fn throwaway_group() -> String {
    format!("projector-replay-{}", Uuid::new_v4().simple())
}
