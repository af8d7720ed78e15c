//! Projecting the log again into a read model other than the live one: what `verify` (into a
//! scratch schema) and `rebuild` (into a new generation) share.
//!
//! - [`Replay`]: a [`Store`] of its own (its schema's tables, no progress notices) fed by a
//!   [`LogReader`], projected up to given offsets in large batches through the unchanged batch
//!   transaction, so the same code decides as in the live run. It starts where that store's own
//!   `projector_offsets` say: 0 for a new schema, further on for one being resumed.
//! - [`LogReader`]: the log, read by a consumer of its own: no group membership (partitions are
//!   assigned by hand) and no commits, so the live projector's group never notices it.
//! - [`Progress`]: events done, events/s and ETA, per partition and overall; bars when stderr is
//!   a terminal, log lines every few seconds otherwise.
//! - Log and offset helpers: the log's bounds, a read model's stored offsets.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;

use crate::store::{Claim, Record, Store, StoreError};

/// How long reading the log may go without a record before a replay gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on broker metadata requests.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// How often progress is logged without a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

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

/// Next offset per partition stored in `schema`'s `projector_offsets`, 0 for a partition with
/// no row. A row for a partition the topic does not have is an error.
pub(crate) async fn offsets_of<'c, E>(
    executor: E,
    schema: &str,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<BTreeMap<i32, i64>>
where
    E: sqlx::PgExecutor<'c>,
{
    let rows: Vec<(i32, i64)> = sqlx::query_as(&format!(
        "SELECT partition, next_offset FROM {schema}.projector_offsets WHERE topic = $1"
    ))
    .bind(topic)
    .fetch_all(executor)
    .await?;
    let mut offsets: BTreeMap<i32, i64> = partitions.iter().map(|p| (*p, 0)).collect();
    for (partition, next_offset) in rows {
        let Some(slot) = offsets.get_mut(&partition) else {
            bail!(
                "{schema}.projector_offsets has partition {partition}, which topic {topic:?} does not have"
            );
        };
        *slot = next_offset;
    }
    Ok(offsets)
}

/// The run was told to stop after a number of events (`rebuild --max-events`): what it
/// committed stays, and the next run resumes from there.
#[derive(Debug, thiserror::Error)]
#[error("stopped after {0} events, as asked")]
pub(crate) struct EventLimitReached(pub u64);

/// A read model other than the live one, being projected from the log.
///
/// The partitions are split into lanes, one per core at most: each lane reads its partitions
/// with a reader of its own and commits them on a connection of its own, so that decoding and
/// deciding one lane's batch overlaps with PostgreSQL writing another's. Decisions are per
/// partition, so lanes never need each other's state.
pub(crate) struct Replay {
    lanes: Vec<Lane>,
    store: Store,
    batch_size: usize,
    /// Stop with [`EventLimitReached`] once this run has committed this many.
    max_events: Option<u64>,
    shared: Mutex<Shared>,
}

/// What the lanes of a replay share while they run.
struct Shared {
    /// Records committed by this run.
    projected: u64,
    /// Records the lanes may still take under `max_events` (reserved before each read).
    remaining: Option<u64>,
    /// Next offset per partition, as committed.
    positions: BTreeMap<i32, i64>,
    progress: Progress,
}

/// Some partitions of a replay, read and committed on their own.
struct Lane {
    reader: Reader,
    claims: BTreeMap<i32, Claim>,
}

impl Replay {
    /// Claims every partition of `store` for `owner` and reads the log from where `store`'s
    /// offsets stand. `store` must be migrated and must not be the live read model.
    pub(crate) async fn start(
        source: &LogSource,
        topic: &str,
        store: Store,
        owner: &str,
        partitions: &[i32],
        batch_size: u32,
        label: &'static str,
    ) -> anyhow::Result<Replay> {
        let claims = store.claim(partitions, owner).await?;
        let from: BTreeMap<i32, i64> = claims.iter().map(|(p, c)| (*p, c.next_offset)).collect();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let connections = store.pool().options().get_max_connections() as usize;
        let lanes = cores.min(connections).min(claims.len()).max(1);
        let mut split: Vec<BTreeMap<i32, Claim>> = vec![BTreeMap::new(); lanes];
        for (i, (partition, claim)) in claims.iter().enumerate() {
            split[i % lanes].insert(*partition, *claim);
        }
        let lanes = split
            .into_iter()
            .map(|claims| {
                let from: BTreeMap<i32, i64> =
                    claims.iter().map(|(p, c)| (*p, c.next_offset)).collect();
                Ok(Lane {
                    reader: Reader::open(source, topic, &from)?,
                    claims,
                })
            })
            .collect::<anyhow::Result<Vec<Lane>>>()?;
        Ok(Replay {
            lanes,
            store,
            batch_size: batch_size as usize,
            max_events: None,
            shared: Mutex::new(Shared {
                projected: 0,
                remaining: None,
                progress: Progress::new(label, &from),
                positions: from,
            }),
        })
    }

    /// Stops after `max_events` committed events (see [`EventLimitReached`]).
    pub(crate) fn stop_after(&mut self, max_events: Option<u64>) {
        self.max_events = max_events;
    }

    /// Next offset per partition, as committed.
    pub(crate) fn positions(&self) -> BTreeMap<i32, i64> {
        lock(&self.shared).positions.clone()
    }

    /// Records committed by this run.
    pub(crate) fn projected(&self) -> u64 {
        lock(&self.shared).projected
    }

    /// Projects every partition up to (not including) its target offset.
    pub(crate) async fn project_up_to(
        &mut self,
        targets: &BTreeMap<i32, i64>,
    ) -> anyhow::Result<()> {
        {
            let shared = &mut *lock(&self.shared);
            for (partition, target) in targets {
                let at = shared.positions.get(partition).copied().unwrap_or(0);
                ensure!(
                    at <= *target,
                    "partition {partition} is already projected up to {at}, past the target {target}"
                );
            }
            shared.remaining = self
                .max_events
                .map(|limit| limit.saturating_sub(shared.projected));
            shared.progress.aim(&shared.positions, targets);
        }
        let (store, shared, batch_size) = (&self.store, &self.shared, self.batch_size);
        let lanes = self
            .lanes
            .iter_mut()
            .map(|lane| lane.project_up_to(store, shared, targets, batch_size));
        if let Some(limit) = self.max_events {
            // One lane after another, so that the run stops at exactly the limit: bounded
            // steps are for control, not speed.
            for lane in lanes {
                lane.await?;
            }
            let positions = self.positions();
            let reached = targets
                .iter()
                .all(|(p, target)| positions.get(p).copied().unwrap_or(0) >= *target);
            if !reached {
                return Err(EventLimitReached(limit).into());
            }
        } else {
            futures::future::try_join_all(lanes).await?;
        }
        let positions = self.positions();
        for (partition, target) in targets {
            let at = positions.get(partition).copied().unwrap_or(0);
            ensure!(
                at == *target,
                "partition {partition} projected up to {at}, not {target}"
            );
        }
        Ok(())
    }

    /// Clears the progress display (bars), leaving the last line.
    pub(crate) fn finish(&self) {
        lock(&self.shared).progress.finish();
    }
}

impl Lane {
    /// Projects this lane's partitions up to their targets, or until the lanes together have
    /// taken `max_events`.
    async fn project_up_to(
        &mut self,
        store: &Store,
        shared: &Mutex<Shared>,
        targets: &BTreeMap<i32, i64>,
        batch_size: usize,
    ) -> anyhow::Result<()> {
        let targets: BTreeMap<i32, i64> = targets
            .iter()
            .filter(|(p, _)| self.claims.contains_key(p))
            .map(|(p, t)| (*p, *t))
            .collect();
        loop {
            // Reserved before reading, so that the lanes together stop at exactly the limit.
            let max = {
                let shared = &mut *lock(shared);
                match shared.remaining {
                    Some(0) => return Ok(()),
                    Some(remaining) => {
                        let max = batch_size.min(usize::try_from(remaining).unwrap_or(usize::MAX));
                        shared.remaining = Some(remaining - max as u64);
                        max
                    }
                    None => batch_size,
                }
            };
            let batch = self.reader.next_batch(&targets, max).await?;
            if let Some(remaining) = &mut lock(shared).remaining {
                *remaining += (max - batch.len()) as u64;
            }
            if batch.is_empty() {
                return Ok(());
            }
            self.commit(store, &batch).await?;
            let shared = &mut *lock(shared);
            shared.projected += batch.len() as u64;
            for (partition, claim) in &self.claims {
                shared.positions.insert(*partition, claim.next_offset);
            }
            let Shared {
                positions,
                progress,
                ..
            } = shared;
            progress.advanced(positions);
        }
    }

    /// Commits one batch the way the live projector does: the fast path, then event by event if
    /// a statement failed.
    async fn commit(&mut self, store: &Store, batch: &[Record]) -> anyhow::Result<()> {
        let mut result = store.commit_batch(batch, &self.claims, false).await;
        if let Err(StoreError::Statement(e)) = &result {
            tracing::warn!(error = %e, "replay batch failed; retrying event by event");
            result = store.commit_batch(batch, &self.claims, true).await;
        }
        let outcome = result.context("cannot commit the replayed batch")?;
        ensure!(
            outcome.fenced.is_empty(),
            "the replayed read model's offsets moved under this run (partitions {:?}): is \
             another one projecting into it?",
            outcome.fenced
        );
        for (partition, next_offset) in outcome.committed {
            if let Some(claim) = self.claims.get_mut(&partition) {
                claim.next_offset = next_offset;
            }
        }
        Ok(())
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panic while holding it leaves counters, never a broken invariant: keep going.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A replay's reader of the log.
enum Reader {
    Kafka(LogReader),
    Recorded {
        log: Arc<RecordedLog>,
        /// Next offset to hand out, per partition.
        position: BTreeMap<i32, i64>,
    },
}

impl Reader {
    /// Reads each partition of `from` from its offset there.
    fn open(source: &LogSource, topic: &str, from: &BTreeMap<i32, i64>) -> anyhow::Result<Reader> {
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
    async fn next_batch(
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
struct LogReader {
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
        loop {
            self.hand_out(targets, max, &mut batch);
            if batch.len() >= max || self.reached(targets) {
                return Ok(batch);
            }
            self.pause_or_resume(targets)?;
            let message = tokio::time::timeout(STALL_TIMEOUT, self.consumer.recv())
                .await
                .map_err(|_| {
                    anyhow!(
                        "the broker delivered nothing for {} s; read up to {:?}, need {targets:?}",
                        STALL_TIMEOUT.as_secs(),
                        self.position
                    )
                })?
                .context("cannot read the log")?;
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

/// A group id nothing else uses: this client never joins nor commits, but librdkafka wants one.
fn throwaway_group() -> String {
    format!("projector-replay-{}", Uuid::new_v4().simple())
}

/// Progress of a replay: events done (the committed offsets, so a resumed run starts where it
/// stopped), events/s and ETA over this run, per partition and overall.
struct Progress {
    label: &'static str,
    started: Instant,
    /// Offsets when this run started: the rate counts only what this run did.
    from: BTreeMap<i32, i64>,
    targets: BTreeMap<i32, i64>,
    display: Display,
}

enum Display {
    /// No terminal: a log line every [`PROGRESS_EVERY`].
    Log { logged: Instant },
    /// A terminal on stderr: one bar overall, one per partition.
    Bars {
        bars: MultiProgress,
        overall: ProgressBar,
        partitions: BTreeMap<i32, ProgressBar>,
    },
}

impl Progress {
    fn new(label: &'static str, from: &BTreeMap<i32, i64>) -> Progress {
        let display = if std::io::stderr().is_terminal() {
            Self::bars(label, from)
        } else {
            Display::Log {
                logged: Instant::now(),
            }
        };
        Progress {
            label,
            started: Instant::now(),
            from: from.clone(),
            targets: from.clone(),
            display,
        }
    }

    fn bars(label: &str, from: &BTreeMap<i32, i64>) -> Display {
        let style = ProgressStyle::with_template(
            "{prefix:>14} [{bar:32}] {pos:>9}/{len:<9} {rate:>10} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        )
        .progress_chars("=> ");
        let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let bar = |prefix: String, position: i64| {
            let bar = bars.add(ProgressBar::new(0).with_style(style.clone()));
            bar.set_prefix(prefix);
            bar.set_position(u64::try_from(position).unwrap_or(0));
            // The rate and ETA are this run's: a resumed position is not speed.
            bar.reset_eta();
            bar
        };
        let overall = bar(label.to_owned(), from.values().sum());
        let partitions = from
            .iter()
            .map(|(p, offset)| (*p, bar(format!("partition {p}"), *offset)))
            .collect();
        Display::Bars {
            bars,
            overall,
            partitions,
        }
    }

    /// A new target (the live read model moved on): bars get their new lengths.
    fn aim(&mut self, positions: &BTreeMap<i32, i64>, targets: &BTreeMap<i32, i64>) {
        self.targets = targets.clone();
        if let Display::Bars {
            overall,
            partitions,
            ..
        } = &self.display
        {
            overall.set_length(count(targets.values().sum()));
            for (p, bar) in partitions {
                bar.set_length(count(targets.get(p).copied().unwrap_or(0)));
            }
        }
        self.advanced(positions);
    }

    fn advanced(&mut self, positions: &BTreeMap<i32, i64>) {
        match &mut self.display {
            Display::Bars {
                overall,
                partitions,
                ..
            } => {
                overall.set_position(count(positions.values().sum()));
                for (p, bar) in partitions.iter() {
                    bar.set_position(count(positions.get(p).copied().unwrap_or(0)));
                }
            }
            Display::Log { logged } => {
                if logged.elapsed() < PROGRESS_EVERY {
                    return;
                }
                *logged = Instant::now();
                let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
                let line = |done: i64, from: i64, target: i64| {
                    let rate = (done - from) as f64 / elapsed;
                    let eta = if done >= target {
                        "0s".to_owned()
                    } else if rate > 0.0 {
                        format!("{:.0}s", (target - done) as f64 / rate)
                    } else {
                        "?".to_owned()
                    };
                    (format!("{done}/{target} {rate:.0}/s ETA {eta}"), rate)
                };
                let per_partition = positions
                    .iter()
                    .map(|(p, done)| {
                        let from = self.from.get(p).copied().unwrap_or(0);
                        let target = self.targets.get(p).copied().unwrap_or(0);
                        format!("p{p} {}", line(*done, from, target).0)
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let done: i64 = positions.values().sum();
                let target: i64 = self.targets.values().sum();
                let (overall, rate) = line(done, self.from.values().sum(), target);
                tracing::info!(
                    done,
                    total = target,
                    events_per_sec = rate.round() as u64,
                    overall = %overall,
                    partitions = %per_partition,
                    "{}",
                    self.label
                );
            }
        }
    }

    fn finish(&self) {
        if let Display::Bars {
            bars,
            overall,
            partitions,
        } = &self.display
        {
            for bar in partitions.values() {
                bar.finish();
            }
            overall.finish();
            let _ = bars.clear();
        }
    }
}

fn count(offset: i64) -> u64 {
    u64::try_from(offset).unwrap_or(0)
}
