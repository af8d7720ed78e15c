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

/// Each partition's (start, end) offsets in the log.
pub(crate) async fn log_bounds(
    brokers: &str,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
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
    brokers: &str,
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
    *bounds = log_bounds(brokers, topic).await?;
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
pub(crate) struct Replay {
    reader: LogReader,
    store: Store,
    claims: BTreeMap<i32, Claim>,
    batch_size: usize,
    /// Records committed by this run.
    projected: u64,
    /// Stop with [`EventLimitReached`] once this run has committed this many.
    max_events: Option<u64>,
    progress: Progress,
}

impl Replay {
    /// Claims every partition of `store` for `owner` and reads the log from where `store`'s
    /// offsets stand. `store` must be migrated and must not be the live read model.
    pub(crate) async fn start(
        brokers: &str,
        topic: &str,
        store: Store,
        owner: &str,
        partitions: &[i32],
        batch_size: u32,
        label: &'static str,
    ) -> anyhow::Result<Replay> {
        let claims = store.claim(partitions, owner).await?;
        let from: BTreeMap<i32, i64> = claims.iter().map(|(p, c)| (*p, c.next_offset)).collect();
        Ok(Replay {
            reader: LogReader::assign(brokers, topic, &from)?,
            progress: Progress::new(label, &from),
            store,
            claims,
            batch_size: batch_size as usize,
            projected: 0,
            max_events: None,
        })
    }

    /// Stops after `max_events` committed events (see [`EventLimitReached`]).
    pub(crate) fn stop_after(&mut self, max_events: Option<u64>) {
        self.max_events = max_events;
    }

    /// Next offset per partition, as committed.
    pub(crate) fn positions(&self) -> BTreeMap<i32, i64> {
        self.claims
            .iter()
            .map(|(p, c)| (*p, c.next_offset))
            .collect()
    }

    /// Records committed by this run.
    pub(crate) fn projected(&self) -> u64 {
        self.projected
    }

    /// Projects every partition up to (not including) its target offset.
    pub(crate) async fn project_up_to(
        &mut self,
        targets: &BTreeMap<i32, i64>,
    ) -> anyhow::Result<()> {
        for (partition, target) in targets {
            let at = self.claims.get(partition).map_or(0, |c| c.next_offset);
            ensure!(
                at <= *target,
                "partition {partition} is already projected up to {at}, past the target {target}"
            );
        }
        self.progress.aim(&self.positions(), targets);
        loop {
            let mut max = self.batch_size;
            if let Some(limit) = self.max_events {
                if self.projected >= limit {
                    return Err(EventLimitReached(limit).into());
                }
                max = max.min(usize::try_from(limit - self.projected).unwrap_or(usize::MAX));
            }
            let batch = self.reader.next_batch(targets, max).await?;
            if batch.is_empty() {
                break;
            }
            self.commit(&batch).await?;
            self.progress.advanced(&self.positions());
        }
        for (partition, target) in targets {
            let at = self.claims.get(partition).map_or(0, |c| c.next_offset);
            ensure!(
                at == *target,
                "partition {partition} projected up to {at}, not {target}"
            );
        }
        Ok(())
    }

    /// Clears the progress display (bars), leaving the last line.
    pub(crate) fn finish(&self) {
        self.progress.finish();
    }

    /// Commits one batch the way the live projector does: the fast path, then event by event if
    /// a statement failed.
    async fn commit(&mut self, batch: &[Record]) -> anyhow::Result<()> {
        let mut result = self.store.commit_batch(batch, &self.claims, false).await;
        if let Err(StoreError::Statement(e)) = &result {
            tracing::warn!(error = %e, "replay batch failed; retrying event by event");
            result = self.store.commit_batch(batch, &self.claims, true).await;
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
        self.projected += batch.len() as u64;
        Ok(())
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
