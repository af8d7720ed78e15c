//! The Kafka side: a consumer-group member that reads batches and hands them to the [`Store`](crate::store::Store).
//!
//! The loop runs on a thread of its own: librdkafka's rebalance callback runs inside `poll`, and
//! on an assignment it must block until PostgreSQL has told it where to resume (the stored
//! offsets, not Kafka's). Kafka's committed offsets are written too, once a second, but only so
//! that standard tools can show the group's lag; nothing reads them back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::config::Config;
use crate::error::StoreError;
use crate::metrics::ConsumerMetrics;
use crate::outcome::BatchOutcome;
use crate::ownership::{Claim, Ownership, owned_partitions};
use crate::record::Record;
use crate::store::ActiveStore;

/// How often the stored offsets are also committed to Kafka, for tools that show group lag.
const KAFKA_COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Offsets stored since the last commit to Kafka, and when that was.
struct KafkaCommit {
    offsets: BTreeMap<i32, i64>,
    last: Instant,
}

/// Claims partitions in PostgreSQL when Kafka assigns them, and positions the consumer there.
struct Rebalancer {
    store: ActiveStore,
    runtime: Handle,
    topic: String,
    owner: String,
    ownership: Ownership,
    stopping: Arc<AtomicBool>,
    /// Why the projector must stop, when it must: set here, reported by [`Projector::run`].
    failure: Arc<Mutex<Option<String>>>,
}

impl ClientContext for Rebalancer {}

impl ConsumerContext for Rebalancer {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<i32> = tpl
                    .elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                let Some(claims) = self.claim(&partitions) else {
                    return;
                };
                if let Some(problem) = self.read_model_ahead_of_log(consumer, &claims) {
                    tracing::error!("{problem}");
                    *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(problem);
                    self.stopping.store(true, Ordering::Relaxed);
                    return;
                }
                let assignment = positioned(&self.topic, &claims);
                if let Err(e) = consumer.assign(&assignment) {
                    tracing::error!(error = %e, "cannot assign partitions");
                    return;
                }
                tracing::info!(?claims, "partitions assigned");
                *self
                    .ownership
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = claims;
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = std::mem::take(
                    &mut *self
                        .ownership
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner),
                );
                tracing::info!(partitions = ?revoked.keys().collect::<Vec<_>>(), "partitions revoked");
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "cannot unassign partitions");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed");
                self.ownership
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                let _ = consumer.unassign();
            }
        }
    }
}

impl Rebalancer {
    /// A stored offset past the end of its partition means the database was projected from
    /// another log (a topic deleted and created again, another broker): reading on would skip
    /// that many events of this log in silence. Says so, or `None` when every claim fits.
    fn read_model_ahead_of_log(
        &self,
        consumer: &BaseConsumer<Self>,
        claims: &BTreeMap<i32, Claim>,
    ) -> Option<String> {
        for (partition, claim) in claims {
            match consumer.fetch_watermarks(&self.topic, *partition, Duration::from_secs(10)) {
                Ok((_, end)) if claim.next_offset > end => {
                    return Some(format!(
                        "the read model is ahead of the log: partition {partition} of topic {:?} ends at offset {end}, \
                         but the database has already projected it up to offset {}. This database was built from \
                         another log; point the projector at that log, or at an empty database to project this one",
                        self.topic, claim.next_offset
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(partition, error = %e, "cannot check the partition's end offset")
                }
            }
        }
        None
    }

    /// Claims `partitions`, retrying while PostgreSQL is unavailable. `None` when stopping.
    fn claim(&self, partitions: &[i32]) -> Option<BTreeMap<i32, Claim>> {
        let mut backoff = Backoff::default();
        loop {
            match self
                .runtime
                .block_on(self.store.get().claim(partitions, &self.owner))
            {
                Ok(claims) => return Some(claims),
                Err(e) => tracing::warn!(error = %e, "cannot claim partitions; retrying"),
            }
            if self.stopping.load(Ordering::Relaxed) {
                return None;
            }
            std::thread::sleep(backoff.next());
        }
    }
}

/// An assignment that starts each partition at its claimed offset.
fn positioned(topic: &str, claims: &BTreeMap<i32, Claim>) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (partition, claim) in claims {
        // Adding a partition with an offset cannot fail for a valid offset.
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(claim.next_offset));
    }
    tpl
}

/// Exponential backoff for retries against a dependency that is down.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let current = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        current
    }
}

/// The consumer loop; [`Projector::run`] returns when `stopping` is set.
pub struct Projector {
    consumer: BaseConsumer<Rebalancer>,
    store: ActiveStore,
    runtime: Handle,
    topic: String,
    batch_size: usize,
    ownership: Ownership,
    stopping: Arc<AtomicBool>,
    metrics: Arc<ConsumerMetrics>,
    /// Set by the [`StallGuard`](crate::stall::StallGuard) when the group must be joined again.
    rejoin: Arc<AtomicBool>,
    kafka_commit: Mutex<KafkaCommit>,
}

impl Projector {
    pub fn new(
        config: &Config,
        store: ActiveStore,
        runtime: Handle,
        stopping: Arc<AtomicBool>,
        metrics: Arc<ConsumerMetrics>,
        rejoin: Arc<AtomicBool>,
    ) -> KafkaResult<(Projector, Ownership)> {
        let ownership = Ownership::default();
        let context = Rebalancer {
            store: store.clone(),
            runtime: runtime.clone(),
            topic: config.kafka_topic.clone(),
            owner: config.instance_id(),
            ownership: ownership.clone(),
            stopping: stopping.clone(),
            failure: Arc::default(),
        };
        let consumer: BaseConsumer<Rebalancer> = ClientConfig::new()
            .set("bootstrap.servers", &config.kafka_brokers)
            .set("group.id", &config.kafka_group_id)
            .set("client.id", config.instance_id())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                config.kafka_session_timeout_ms.to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (config.kafka_session_timeout_ms / 3).max(500).to_string(),
            )
            .set("fetch.wait.max.ms", config.kafka_fetch_wait_ms.to_string())
            // What a projector that is far behind holds in memory: librdkafka prefetches up to
            // this much (64 MiB by default) and we take a batch at a time from it, so catching
            // up on any backlog costs this plus one batch, not the backlog.
            .set("queued.max.messages.kbytes", "16384")
            .create_with_context(context)?;
        let projector = Projector {
            consumer,
            store,
            runtime,
            topic: config.kafka_topic.clone(),
            batch_size: config.batch_size as usize,
            ownership: ownership.clone(),
            stopping,
            metrics,
            rejoin,
            kafka_commit: Mutex::new(KafkaCommit {
                offsets: BTreeMap::new(),
                last: Instant::now(),
            }),
        };
        Ok((projector, ownership))
    }

    /// Reads, decides and commits until `stopping` is set. A batch in flight when it is set is
    /// finished; a batch that cannot commit is abandoned (rolled back) and re-read next time.
    /// Returns why it stopped when it was not asked to.
    pub fn run(self) -> Result<(), String> {
        if !self.wait_for_topic() {
            return Ok(());
        }
        self.consumer
            .subscribe(&[&self.topic])
            .map_err(|e| format!("cannot subscribe to topic {:?}: {e}", self.topic))?;
        while !self.stopping.load(Ordering::Relaxed) {
            let batch = self.next_batch();
            if !batch.is_empty() {
                self.commit(&batch);
            }
            if self.rejoin.swap(false, Ordering::Relaxed) {
                self.rejoin_group();
            }
            // What the last batches stored reaches Kafka within a second, traffic or not.
            self.commit_to_kafka(&BTreeMap::new());
        }
        tracing::info!("projector stopped");
        match self
            .consumer
            .context()
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    /// Waits until the topic exists: the command API creates it, and a group subscribed to a
    /// missing topic would only notice it at the next metadata refresh, minutes later.
    /// Returns false when stopping first.
    fn wait_for_topic(&self) -> bool {
        let mut backoff = Backoff::default();
        let mut logged = false;
        while !self.stopping.load(Ordering::Relaxed) {
            let found = self
                .consumer
                .fetch_metadata(Some(&self.topic), Duration::from_secs(5))
                .map(|m| {
                    m.topics().iter().any(|t| {
                        t.name() == self.topic && t.error().is_none() && !t.partitions().is_empty()
                    })
                });
            match found {
                Ok(true) => return true,
                Ok(false) if !logged => {
                    tracing::info!(topic = %self.topic, "waiting for the topic to be created");
                    logged = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot fetch topic metadata; retrying"),
            }
            std::thread::sleep(backoff.next());
        }
        false
    }

    /// Waits up to a short while for a first record, then takes whatever else is buffered, up
    /// to the batch size. Records of partitions we do not own, or before our claimed position,
    /// are left out.
    fn next_batch(&self) -> Vec<Record> {
        let mut batch = Vec::new();
        let mut wait = Duration::from_millis(250);
        while batch.len() < self.batch_size {
            let Some(result) = self.consumer.poll(wait) else {
                break;
            };
            wait = Duration::ZERO;
            match result {
                Ok(message) => batch.push(Record::from_message(&message)),
                Err(e) => tracing::warn!(error = %e, "consumer error"),
            }
        }
        let ownership = self
            .ownership
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        batch.retain(|r| {
            ownership
                .get(&r.partition)
                .is_some_and(|c| r.offset >= c.next_offset)
        });
        batch
    }

    /// Commits one batch, retrying the slow path for bad statements and waiting out an
    /// unavailable database.
    fn commit(&self, batch: &[Record]) {
        // The batch's lines, and its transaction in a trace, where each event's span links to it.
        let span = tracing::info_span!("batch", records = batch.len());
        let _entered = span.enter();
        let claims = self
            .ownership
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let store = self.store.get();
        let started = Instant::now();
        let mut result = self
            .runtime
            .block_on(store.commit_batch(batch, &claims, false));
        if let Err(StoreError::Statement(e)) = &result {
            tracing::warn!(error = %e, "batch failed; retrying event by event");
            result = self
                .runtime
                .block_on(store.commit_batch(batch, &claims, true));
        }
        if let Ok(outcome) = &result {
            self.observe(batch, outcome, started.elapsed());
        }
        match result {
            Ok(outcome) if !outcome.fenced.is_empty() && self.followed_a_switch() => {
                // Claimed again in the new generation, from its own offsets: what this batch
                // did not commit in the old one is read again.
                let partitions: Vec<i32> = claims.keys().copied().collect();
                self.advance(&claims, outcome);
                self.reclaim(partitions);
            }
            Ok(outcome) => self.advance(&claims, outcome),
            Err(e) => {
                tracing::error!(error = %e, "batch abandoned; will re-read it from the stored offsets");
                self.resync();
            }
        }
    }

    /// A committed batch's size and time, counting the records of the partitions it
    /// committed (a fenced partition's are read again by its new owner).
    fn observe(&self, batch: &[Record], outcome: &BatchOutcome, took: Duration) {
        if outcome.committed.is_empty() {
            return;
        }
        let events = batch
            .iter()
            .filter(|r| outcome.committed.contains_key(&r.partition))
            .count();
        self.metrics.batch_events.observe(events as f64);
        self.metrics.apply_duration.observe_duration(took);
    }

    fn advance(&self, claims: &BTreeMap<i32, Claim>, outcome: BatchOutcome) {
        {
            let mut ownership = self
                .ownership
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (partition, next_offset) in &outcome.committed {
                // Only if the claim we committed under is still the one we hold.
                if let Some(claim) = ownership.get_mut(partition)
                    && claims.get(partition).map(|c| c.epoch) == Some(claim.epoch)
                {
                    claim.next_offset = *next_offset;
                }
            }
            for partition in &outcome.fenced {
                tracing::warn!(partition, "partition fenced: another instance claimed it");
                ownership.remove(partition);
            }
        }
        self.commit_to_kafka(&outcome.committed);
        self.metrics
            .outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .absorb(outcome);
    }

    /// Hands the broker the stored offsets, at most once per [`KAFKA_COMMIT_EVERY`]: they are
    /// only for tools that show a group's lag (our own position lives in PostgreSQL), and one
    /// commit per batch would make the group coordinator write tens of times a second.
    fn commit_to_kafka(&self, committed: &BTreeMap<i32, i64>) {
        let mut pending = self
            .kafka_commit
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending.offsets.extend(committed);
        if pending.offsets.is_empty() || pending.last.elapsed() < KAFKA_COMMIT_EVERY {
            return;
        }
        // A partition handed over since is its new owner's to commit.
        let owned = self
            .ownership
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending
            .offsets
            .retain(|partition, _| owned.contains_key(partition));
        drop(owned);
        let mut offsets = TopicPartitionList::new();
        for (partition, next_offset) in &pending.offsets {
            let _ =
                offsets.add_partition_offset(&self.topic, *partition, Offset::Offset(*next_offset));
        }
        if let Err(e) = self.consumer.commit(&offsets, CommitMode::Async) {
            tracing::debug!(error = %e, "kafka offset commit failed (informational only)");
        }
        pending.offsets.clear();
        pending.last = Instant::now();
    }

    /// Leaves the group and joins it again, so that the coordinator assigns every partition
    /// afresh (asked for by the stall guard, [`crate::stall`]).
    fn rejoin_group(&self) {
        self.metrics.stall_rejoins.fetch_add(1, Ordering::Relaxed);
        // Unsubscribing revokes (through the rebalance callback) and leaves the group; the new
        // subscription joins it again as a new member.
        self.consumer.unsubscribe();
        if let Err(e) = self.consumer.subscribe(&[&self.topic]) {
            tracing::error!(error = %e, "cannot rejoin the group");
        }
    }

    /// Whether fenced partitions mean that `projector switch` made another generation active;
    /// if so, the store is now that generation's.
    fn followed_a_switch(&self) -> bool {
        match self.runtime.block_on(self.store.follow_active_generation()) {
            Ok(followed) => followed,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot read the active generation"
                );
                false
            }
        }
    }

    /// After an abandoned batch: wait for PostgreSQL, claim our partitions again and re-read
    /// from the stored offsets. Polling with everything paused keeps our group membership.
    fn resync(&self) {
        let partitions: Vec<i32> = owned_partitions(&self.ownership);
        self.reclaim(partitions);
    }

    /// Claims `partitions` again (as long as Kafka still assigns them to us) and re-reads them
    /// from the stored offsets, waiting for PostgreSQL.
    fn reclaim(&self, mut partitions: Vec<i32>) {
        let mut backoff = Backoff::default();
        loop {
            if let Ok(assignment) = self.consumer.assignment() {
                let _ = self.consumer.pause(&assignment);
            }
            // Serves rebalance callbacks while we wait; paused partitions deliver nothing we keep.
            let _ = self.consumer.poll(backoff.next());
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            // A rebalance served by the poll above may have taken some away.
            if let Ok(assigned) = self.consumer.assignment() {
                let assigned: Vec<i32> = assigned
                    .elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                partitions.retain(|p| assigned.contains(p));
            }
            if partitions.is_empty() {
                return;
            }
            match self.runtime.block_on(
                self.store
                    .get()
                    .claim(&partitions, &owner_of(&self.consumer)),
            ) {
                Ok(claims) => {
                    let assignment = positioned(&self.topic, &claims);
                    if let Err(e) = self
                        .consumer
                        .assign(&assignment)
                        .and_then(|()| self.consumer.resume(&assignment))
                    {
                        tracing::error!(error = %e, "cannot re-assign partitions");
                        continue;
                    }
                    tracing::info!(?claims, "database back; resumed from stored offsets");
                    *self
                        .ownership
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = claims;
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "database still unavailable"),
            }
        }
    }
}

fn owner_of(consumer: &BaseConsumer<Rebalancer>) -> String {
    consumer.context().owner.clone()
}
