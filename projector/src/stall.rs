//! Partitions that nobody projects: a guard against a group coordinator that loses an assignment.
//!
//! Kafka's group coordinator hands a dead instance's partitions to the living ones once its
//! session times out. tansu 0.6, the broker the stack runs here, sometimes does not: when an
//! instance dies right after a rebalance that counted it, the group can settle with the dead
//! member's share assigned to nobody, and those partitions' events would never be projected.
//! The takeover test can end that way: the survivor holds partitions 2 and 3, while 0 and 1,
//! with events to go, stay with the dead instance for as long as the test waits.
//!
//! So every instance keeps an eye on the partitions it does not own: one whose log has events
//! past its stored offset, and whose stored offset has not moved for the stall timeout, has no
//! live owner. The instance then leaves the group and joins again, which makes the coordinator
//! assign every partition afresh. The claim's epoch keeps projection exact whatever the group
//! does; the rejoin only restores progress.
//!
//! [`StallWatch`] is the decision, with no IO. [`StallGuard`] feeds it from a thread of its own,
//! with a Kafka client of its own, and asks the consumer loop to rejoin through a flag: the looks
//! (a query for the stored offsets, a metadata request and one watermark request per partition)
//! take tens of milliseconds on a busy broker, and on the consumer loop's thread they would hold
//! up every event behind them for that long, a few times a minute.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use tokio::runtime::Handle;

use crate::ownership::{Ownership, owned_partitions};
use crate::store::ActiveStore;

/// Which partitions not owned here have been stuck behind their log for the stall timeout.
#[derive(Debug)]
pub struct StallWatch {
    timeout: Duration,
    /// Per partition being watched: its stored next offset when last seen, and since when it
    /// has been that.
    watched: BTreeMap<i32, (i64, Instant)>,
}

impl StallWatch {
    pub fn new(timeout: Duration) -> StallWatch {
        StallWatch {
            timeout,
            watched: BTreeMap::new(),
        }
    }

    /// Takes in one look at the group's progress at `now`: the partitions this instance owns,
    /// each partition's stored next offset (none before its first claim) and each partition's
    /// log end. Answers the partitions stalled for at least the timeout.
    pub fn observe(
        &mut self,
        now: Instant,
        owned: &BTreeSet<i32>,
        stored: &BTreeMap<i32, i64>,
        log_ends: &BTreeMap<i32, i64>,
    ) -> Vec<i32> {
        let mut watched = BTreeMap::new();
        let mut stalled = Vec::new();
        for (&partition, &end) in log_ends {
            let next = stored.get(&partition).copied().unwrap_or(0);
            // Ours, or nothing to project: nobody needs to move it.
            if owned.contains(&partition) || end <= next {
                continue;
            }
            let since = match self.watched.get(&partition) {
                Some(&(seen, since)) if seen == next => since,
                _ => now,
            };
            if now.duration_since(since) >= self.timeout {
                stalled.push(partition);
            }
            watched.insert(partition, (next, since));
        }
        self.watched = watched;
        stalled
    }

    /// Starts over, after a rejoin: the new assignment deserves a full timeout.
    pub fn reset(&mut self) {
        self.watched.clear();
    }
}

/// The bound on each broker request of a look.
const LOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// Looks at the group's progress a few times per stall timeout and, when partitions have sat
/// unowned behind their log for it, sets the consumer loop's `rejoin` flag.
pub struct StallGuard {
    client: BaseConsumer,
    store: ActiveStore,
    runtime: Handle,
    topic: String,
    ownership: Ownership,
    watch: StallWatch,
    look_every: Duration,
    rejoin: Arc<AtomicBool>,
}

impl StallGuard {
    /// Creates its Kafka client (which connects lazily; no group: it only asks for metadata
    /// and watermarks).
    pub fn new(
        brokers: &str,
        topic: &str,
        client_id: &str,
        timeout: Duration,
        store: ActiveStore,
        ownership: Ownership,
        rejoin: Arc<AtomicBool>,
    ) -> KafkaResult<StallGuard> {
        let client = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", format!("{client_id}-stall-guard"))
            .create()?;
        Ok(StallGuard {
            client,
            store,
            runtime: Handle::current(),
            topic: topic.to_owned(),
            ownership,
            watch: StallWatch::new(timeout),
            // A few looks per timeout, so that a stall is seen soon after it is one.
            look_every: (timeout / 4).max(Duration::from_millis(500)),
            rejoin,
        })
    }

    /// Looks on a thread of its own (its calls block) until `stopping` is set.
    pub fn spawn(mut self, stopping: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("projector-stall-guard".into())
            .spawn(move || {
                let mut next_look = Instant::now() + self.look_every;
                while !stopping.load(Ordering::Relaxed) {
                    // Short sleeps, so that a stopping projector is not kept waiting.
                    std::thread::sleep(Duration::from_millis(200));
                    if Instant::now() >= next_look {
                        self.look();
                        next_look = Instant::now() + self.look_every;
                    }
                }
            })
    }

    /// One look. Skipped when PostgreSQL or the broker cannot answer: a stall is only ever
    /// concluded from two real looks.
    fn look(&mut self) {
        let stored = match self.runtime.block_on(self.store.get().stored_offsets()) {
            Ok(stored) => stored,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the stored offsets for the stall watch");
                return;
            }
        };
        let Some(log_ends) = self.log_ends() else {
            return;
        };
        let owned: BTreeSet<i32> = owned_partitions(&self.ownership);
        let stalled = self
            .watch
            .observe(Instant::now(), &owned, &stored, &log_ends);
        if stalled.is_empty() {
            return;
        }
        tracing::warn!(
            ?stalled,
            timeout_ms = self.watch.timeout.as_millis(),
            "partitions with events to project have not moved for the stall timeout and are not ours: \
             the group has assigned them to nobody alive; leaving and rejoining the group so that they are assigned again"
        );
        self.rejoin.store(true, Ordering::Relaxed);
        self.watch.reset();
    }

    /// Each partition's log end (the offset its next record will get), or `None` when the
    /// broker cannot say.
    fn log_ends(&self) -> Option<BTreeMap<i32, i64>> {
        let metadata = self
            .client
            .fetch_metadata(Some(&self.topic), LOOK_TIMEOUT)
            .map_err(|e| tracing::debug!(error = %e, "cannot fetch metadata for the stall watch"))
            .ok()?;
        let topic = metadata.topics().iter().find(|t| t.name() == self.topic)?;
        topic
            .partitions()
            .iter()
            .map(|p| {
                self.client
                    .fetch_watermarks(&self.topic, p.id(), LOOK_TIMEOUT)
                    .map(|(_, end)| (p.id(), end))
                    .map_err(|e| tracing::debug!(error = %e, "cannot fetch a log end for the stall watch"))
                    .ok()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn offsets(pairs: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        pairs.iter().copied().collect()
    }

    fn owned(partitions: &[i32]) -> BTreeSet<i32> {
        partitions.iter().copied().collect()
    }

    #[test]
    fn a_partition_behind_its_log_that_does_not_move_for_the_timeout_is_stalled() {
        let mut watch = StallWatch::new(TIMEOUT);
        let start = Instant::now();
        let stored = offsets(&[(0, 51), (1, 0)]);
        let ends = offsets(&[(0, 102), (1, 0)]);
        assert!(watch.observe(start, &owned(&[]), &stored, &ends).is_empty());
        let almost = start + TIMEOUT - Duration::from_millis(1);
        assert!(
            watch
                .observe(almost, &owned(&[]), &stored, &ends)
                .is_empty()
        );
        assert_eq!(
            watch.observe(start + TIMEOUT, &owned(&[]), &stored, &ends),
            [0],
            "partition 1 has nothing to project"
        );
    }

    #[test]
    fn progress_restarts_the_clock() {
        let mut watch = StallWatch::new(TIMEOUT);
        let start = Instant::now();
        let ends = offsets(&[(0, 500)]);
        watch.observe(start, &owned(&[]), &offsets(&[(0, 10)]), &ends);
        let later = start + TIMEOUT;
        assert!(
            watch
                .observe(later, &owned(&[]), &offsets(&[(0, 20)]), &ends)
                .is_empty()
        );
        assert_eq!(
            watch.observe(later + TIMEOUT, &owned(&[]), &offsets(&[(0, 20)]), &ends),
            [0]
        );
    }

    #[test]
    fn partitions_owned_here_or_caught_up_are_never_stalled() {
        let mut watch = StallWatch::new(TIMEOUT);
        let start = Instant::now();
        let stored = offsets(&[(0, 5), (1, 7)]);
        let ends = offsets(&[(0, 9), (1, 7)]);
        for step in 0..3 {
            let now = start + TIMEOUT * step;
            assert!(watch.observe(now, &owned(&[0]), &stored, &ends).is_empty());
        }
    }

    #[test]
    fn a_partition_never_claimed_with_events_in_its_log_is_watched_from_offset_zero() {
        let mut watch = StallWatch::new(TIMEOUT);
        let start = Instant::now();
        let ends = offsets(&[(3, 4)]);
        watch.observe(start, &owned(&[]), &BTreeMap::new(), &ends);
        assert_eq!(
            watch.observe(start + TIMEOUT, &owned(&[]), &BTreeMap::new(), &ends),
            [3]
        );
    }

    #[test]
    fn a_partition_that_was_ours_gets_a_full_timeout_once_it_is_not() {
        let mut watch = StallWatch::new(TIMEOUT);
        let start = Instant::now();
        let stored = offsets(&[(0, 5)]);
        let ends = offsets(&[(0, 9)]);
        watch.observe(start, &owned(&[0]), &stored, &ends);
        let handed_over = start + TIMEOUT;
        assert!(
            watch
                .observe(handed_over, &owned(&[]), &stored, &ends)
                .is_empty()
        );
        assert_eq!(
            watch.observe(handed_over + TIMEOUT, &owned(&[]), &stored, &ends),
            [0]
        );
    }

    #[test]
    fn after_a_reset_a_stalled_partition_waits_a_full_timeout_again() {
        let mut watch = StallWatch::new(TIMEOUT);
        let start = Instant::now();
        let stored = offsets(&[(0, 5)]);
        let ends = offsets(&[(0, 9)]);
        watch.observe(start, &owned(&[]), &stored, &ends);
        assert_eq!(
            watch.observe(start + TIMEOUT, &owned(&[]), &stored, &ends),
            [0]
        );
        watch.reset();
        let rejoined = start + TIMEOUT;
        assert!(
            watch
                .observe(rejoined, &owned(&[]), &stored, &ends)
                .is_empty()
        );
    }
}
