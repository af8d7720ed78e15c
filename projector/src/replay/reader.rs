//! A replay's reader of the log: [`Reader`] hands out batches up to given targets, from the
//! broker through a [`LogReader`] of its own, or from a log held in memory.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

use super::source::{LogSource, RecordedLog, throwaway_group};
use crate::record::Record;

/// How long reading the log may go without a record before a replay gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A replay's reader of the log.
pub(super) enum Reader {
    Kafka(LogReader),
    Recorded {
        log: Arc<RecordedLog>,
        /// Next offset to hand out, per partition.
        position: BTreeMap<i32, i64>,
    },
}

impl Reader {
    /// Reads each partition of `from` from its offset there.
    pub(super) fn open(
        source: &LogSource,
        topic: &str,
        from: &BTreeMap<i32, i64>,
    ) -> anyhow::Result<Reader> {
        Ok(match source {
            LogSource::Kafka { brokers } => Reader::Kafka(LogReader::assign(brokers, topic, from)?),
            LogSource::Recorded(log) => Reader::Recorded {
                log: log.clone(),
                position: from.clone(),
            },
        })
    }

    /// Up to `max` records, in log order within each partition, none at or past its
    /// partition's target. Empty once every partition has reached its target.
    pub(super) async fn next_batch(
        &mut self,
        targets: &BTreeMap<i32, i64>,
        max: usize,
    ) -> anyhow::Result<Vec<Record>> {
        match self {
            Reader::Kafka(reader) => reader.next_batch(targets, max).await,
            Reader::Recorded { log, position } => {
                let mut batch = Vec::with_capacity(max);
                for (partition, at) in position.iter_mut() {
                    let records = log.partitions.get(partition).map_or(&[][..], Vec::as_slice);
                    let target = targets.get(partition).copied().unwrap_or(0);
                    let take = usize::try_from(target - *at)
                        .unwrap_or(0)
                        .min(max - batch.len());
                    let from = usize::try_from(*at).unwrap_or(usize::MAX);
                    let Some(slice) = records.get(from..from + take) else {
                        bail!(
                            "the recorded log ends before offset {target} of partition {partition}"
                        );
                    };
                    batch.extend_from_slice(slice);
                    *at += take as i64;
                }
                Ok(batch)
            }
        }
    }
}

/// Reads the topic from given offsets on every partition, without a consumer group: partitions
/// are assigned by hand and nothing is committed. A partition is paused when it reaches its
/// target; what was read past it is held for the next target, so nothing is read twice or lost.
pub(super) struct LogReader {
    consumer: StreamConsumer,
    topic: String,
    /// Next offset to hand out, per partition.
    position: BTreeMap<i32, i64>,
    /// Records read but not handed out yet, in log order.
    held: BTreeMap<i32, VecDeque<Record>>,
    paused: BTreeSet<i32>,
}

impl LogReader {
    /// Starts each partition at its offset in `from`.
    fn assign(brokers: &str, topic: &str, from: &BTreeMap<i32, i64>) -> anyhow::Result<LogReader> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", throwaway_group())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A start out of range means the log lost records: say so, never skip.
            .set("auto.offset.reset", "error")
            // A partition resumed under the lock is fetched now, not after the broker's long
            // poll of the others (500 ms by default): the live projector is waiting.
            .set("fetch.wait.max.ms", "10")
            .create()
            .context("cannot create a Kafka consumer")?;
        let mut assignment = TopicPartitionList::new();
        for (partition, offset) in from {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        consumer
            .assign(&assignment)
            .context("cannot assign the topic's partitions")?;
        Ok(LogReader {
            consumer,
            topic: topic.to_owned(),
            position: from.clone(),
            held: BTreeMap::new(),
            paused: BTreeSet::new(),
        })
    }

    /// Up to `max` records, in log order within each partition, none at or past its
    /// partition's target. Empty once every partition has reached its target.
    async fn next_batch(
        &mut self,
        targets: &BTreeMap<i32, i64>,
        max: usize,
    ) -> anyhow::Result<Vec<Record>> {
        let mut batch = Vec::new();
        let mut deadline = Instant::now() + STALL_TIMEOUT;
        let mut last_error = None;
        loop {
            self.hand_out(targets, max, &mut batch);
            if batch.len() >= max || self.reached(targets) {
                return Ok(batch);
            }
            self.pause_or_resume(targets)?;
            let message = match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(message)) => message,
                // librdkafka reports a lost connection (all brokers down, a transport failure)
                // as an error of the stream, and reconnects by itself: as the live consumer
                // does, the reader carries on, within the same bound on a stalled log.
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the log; retrying");
                    last_error = Some(e);
                    continue;
                }
                Err(_) => {
                    let stalled = anyhow!(
                        "the broker delivered nothing for {} s; read up to {:?}, need {targets:?}",
                        STALL_TIMEOUT.as_secs(),
                        self.position
                    );
                    return Err(match last_error {
                        Some(e) => anyhow::Error::new(e)
                            .context("cannot read the log")
                            .context(stalled),
                        None => stalled,
                    });
                }
            };
            deadline = Instant::now() + STALL_TIMEOUT;
            let record = Record::from_message(&message);
            drop(message);
            let held = self.held.entry(record.partition).or_default();
            let last = held
                .back()
                .map(|r| r.offset + 1)
                .or_else(|| self.position.get(&record.partition).copied())
                .unwrap_or(0);
            // A record delivered again (the client may refetch after a pause) is skipped.
            if record.offset >= last {
                held.push_back(record);
            }
        }
    }

    /// Moves held records below their partition's target into `batch`.
    fn hand_out(&mut self, targets: &BTreeMap<i32, i64>, max: usize, batch: &mut Vec<Record>) {
        for (partition, held) in &mut self.held {
            let target = targets.get(partition).copied().unwrap_or(0);
            while batch.len() < max && held.front().is_some_and(|r| r.offset < target) {
                if let Some(record) = held.pop_front() {
                    self.position.insert(*partition, record.offset + 1);
                    batch.push(record);
                }
            }
        }
    }

    fn reached(&self, targets: &BTreeMap<i32, i64>) -> bool {
        targets
            .iter()
            .all(|(p, target)| self.position.get(p).copied().unwrap_or(0) >= *target)
    }

    /// Fetches only for partitions that still need records nobody holds: bounds what is held.
    fn pause_or_resume(&mut self, targets: &BTreeMap<i32, i64>) -> anyhow::Result<()> {
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        for (partition, position) in &self.position {
            let needed = *position < targets.get(partition).copied().unwrap_or(0)
                && self.held.get(partition).is_none_or(VecDeque::is_empty);
            match (needed, self.paused.contains(partition)) {
                (true, true) => {
                    resume.add_partition(&self.topic, *partition);
                    self.paused.remove(partition);
                }
                (false, false) => {
                    pause.add_partition(&self.topic, *partition);
                    self.paused.insert(*partition);
                }
                _ => {}
            }
        }
        if pause.count() > 0 {
            self.consumer.pause(&pause)?;
        }
        if resume.count() > 0 {
            self.consumer.resume(&resume)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use test_support::OwnBroker;
    use tokio::sync::mpsc;
    use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};

    use super::*;

    /// Tells the test each time the reader says it retries after an error of the log.
    struct RetrySignal(mpsc::UnboundedSender<()>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RetrySignal {
        fn on_event(&self, event: &tracing::Event<'_>, _: LayerContext<'_, S>) {
            struct Message(bool);
            impl tracing::field::Visit for Message {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    if field.name() == "message" {
                        self.0 |= format!("{value:?}").contains("cannot read the log; retrying");
                    }
                }
            }
            let mut message = Message(false);
            event.record(&mut message);
            if message.0 {
                let _ = self.0.send(());
            }
        }
    }

    async fn append(brokers: &str, topic: &str, payload: &str) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .expect("producer");
        producer
            .send(
                FutureRecord::to(topic)
                    .key("k")
                    .payload(payload)
                    .partition(0),
                Duration::from_secs(30),
            )
            .await
            .expect("append");
    }

    /// A broker that goes away in the middle of a read and comes back: the reader reports the
    /// lost connection, carries on, and hands out the record appended once it is back.
    #[tokio::test]
    async fn a_read_carries_on_through_a_broker_restart() {
        let mut broker = OwnBroker::start().await;
        let brokers = broker.brokers();
        let topic = test_support::unique_topic("reader");
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .expect("admin client");
        admin
            .create_topics(
                &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .expect("create topic");
        append(&brokers, &topic, "first").await;

        let mut reader =
            LogReader::assign(&brokers, &topic, &BTreeMap::from([(0, 0)])).expect("reader");
        let first = reader
            .next_batch(&BTreeMap::from([(0, 1)]), 10)
            .await
            .expect("first record");
        assert_eq!(first.len(), 1);

        let (retried, mut retries) = mpsc::unbounded_channel();
        let _subscriber = tracing::subscriber::set_default(
            tracing_subscriber::registry().with(RetrySignal(retried)),
        );
        broker.stop().await;
        let whole_log = BTreeMap::from([(0, 2)]);
        let second = reader.next_batch(&whole_log, 10);
        tokio::pin!(second);
        tokio::select! {
            read = &mut second => panic!("the read ended while the broker was down: {read:?}"),
            _ = retries.recv() => {}
        }
        broker.resume().await;
        let (second, ()) = tokio::join!(second, append(&brokers, &topic, "second"));
        let second = second.expect("the read carries on once the broker is back");
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].offset, 1);
    }
}
