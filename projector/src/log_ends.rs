//! Each owned partition's log end, asked of the broker once a second, for the lag the query
//! API's status page shows (the store writes it with the offsets: [`crate::store::LogEnds`]).
//!
//! A Kafka client of its own, on a thread of its own, sends one small ListOffsets request per
//! owned partition. Not librdkafka's statistics nor the fetched batches: both reach us only
//! through the consumer loop's `poll`, which does not run while a batch waits for PostgreSQL,
//! so the log end would stand still exactly when the lag grows. Nor the consumer's own
//! `fetch_watermarks`, which would put broker round trips on that loop's thread.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;

use crate::consumer::{Ownership, lock};
use crate::store::LogEnds;

/// How often the broker is asked.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// The bound on one partition's request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What keeps [`LogEnds`] to the owned partitions' log ends, once [`spawn`](Self::spawn)ed.
pub struct LogEndWatch {
    client: BaseConsumer,
    topic: String,
    ownership: Ownership,
    log_ends: LogEnds,
}

impl LogEndWatch {
    /// Creates its Kafka client (which connects lazily).
    pub fn new(
        brokers: &str,
        topic: &str,
        client_id: &str,
        ownership: Ownership,
        log_ends: LogEnds,
    ) -> KafkaResult<LogEndWatch> {
        // No group: this client only asks for watermarks.
        let client = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", format!("{client_id}-log-ends"))
            .create()?;
        Ok(LogEndWatch {
            client,
            topic: topic.to_owned(),
            ownership,
            log_ends,
        })
    }

    /// Looks once a second until `stopping` is set. A partition whose end the broker does not
    /// give keeps its last one; a partition no longer owned is forgotten.
    pub fn spawn(self, stopping: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("projector-log-ends".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    self.look();
                    std::thread::park_timeout(LOOK_EVERY);
                }
            })
    }

    fn look(&self) {
        let owned: Vec<i32> = lock(&self.ownership).keys().copied().collect();
        let previous = lock(&self.log_ends).clone();
        let mut ends = BTreeMap::new();
        for partition in owned {
            match self
                .client
                .fetch_watermarks(&self.topic, partition, REQUEST_TIMEOUT)
            {
                Ok((_, end)) => {
                    ends.insert(partition, end);
                }
                Err(e) => {
                    tracing::debug!(partition, error = %e, "cannot fetch a log end for the lag");
                    if let Some(end) = previous.get(&partition) {
                        ends.insert(partition, *end);
                    }
                }
            }
        }
        *lock(&self.log_ends) = ends;
    }
}
