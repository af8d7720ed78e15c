//! Each owned partition's log end, as last heard from the broker: for the lag gauge
//! (`projector_partition_lag_offsets`) and, written beside the stored offsets, for the query
//! API's status page.
//!
//! [`LogEndWatch`] is a thread with a Kafka client of its own that asks the broker for the high
//! watermark of each partition this instance owns once a second: one small ListOffsets request
//! per owned partition. Not librdkafka's statistics callback nor the fetched batches, because
//! both reach us only through the consumer loop's `poll`, which does not run while a batch waits
//! for PostgreSQL: the lag would stand still exactly when it grows. Nor the consumer's own
//! `fetch_watermarks`, which would put broker round trips on that loop's thread.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;

use crate::ownership::{Ownership, owned_partitions};

/// How often the broker is asked for the owned partitions' log ends.
const LOG_END_LOOK_EVERY: Duration = Duration::from_secs(1);
/// The bound on one partition's watermark request.
const LOG_END_TIMEOUT: Duration = Duration::from_secs(2);

/// Each owned partition's log end (the offset its next record will get), as last heard.
pub type LogEnds = Arc<Mutex<BTreeMap<i32, i64>>>;

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

    /// Looks once a second on a thread of its own (the client's calls block) until `stopping`
    /// is set. A partition whose end the broker does not give keeps its last one.
    pub fn spawn(self, stopping: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("projector-log-ends".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    self.look();
                    std::thread::sleep(LOG_END_LOOK_EVERY);
                }
            })
    }

    fn look(&self) {
        let owned: Vec<i32> = owned_partitions(&self.ownership);
        let previous = self
            .log_ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut ends = BTreeMap::new();
        for p in owned {
            match self
                .client
                .fetch_watermarks(&self.topic, p, LOG_END_TIMEOUT)
            {
                Ok((_, end)) => {
                    ends.insert(p, end);
                }
                Err(e) => {
                    tracing::debug!(partition = p, error = %e, "cannot fetch a log end for the lag");
                    if let Some(end) = previous.get(&p) {
                        ends.insert(p, *end);
                    }
                }
            }
        }
        *self.log_ends.lock().unwrap_or_else(PoisonError::into_inner) = ends;
    }
}
