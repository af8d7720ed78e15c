//! The live projector's metrics on `/metrics`, and the watcher of rebuilds that feeds the one
//! series the consumer loop cannot.
//!
//! Counted by the consumer loop ([`ConsumerMetrics`]): decisions by outcome and reason, dead
//! letters, events per committed batch and the time a batch takes to decide, write and commit.
//!
//! - Lag per owned partition (`projector_partition_lag_offsets`) is the log end minus the
//!   stored next offset. The log ends come from [`LogEndWatch`](crate::log_ends::LogEndWatch),
//!   off the consumer loop.
//! - Rebuild progress (`projector_rebuild_progress_ratio{generation}`) is read by
//!   [`watch_rebuilds`] from the generations catalogue every two seconds: a rebuild's committed
//!   offsets are in its generation's `projector_offsets`, and it aims at where the active
//!   generation stands. Shown by every live projector, which is always scraped, rather than by
//!   the `projector rebuild` run itself, which is a command nobody scrapes; and an interrupted
//!   rebuild, left `building` with nothing running, still shows how far it got.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use service_kit::metrics::{Histogram, LATENCY_SECONDS, Labels, Metrics};

use crate::decide::Reason;
use crate::generations::{self, CATALOGUE, GenerationState, generation_number};
use crate::log_ends::LogEnds;
use crate::outcome::BatchOutcome;
use crate::ownership::Ownership;
use crate::store::ActiveStore;

/// How often the generations catalogue is read for rebuilds in progress.
const REBUILD_LOOK_EVERY: Duration = Duration::from_secs(2);

/// Bounds of `projector_batch_events`: one event (a quiet stream) to the largest batch
/// `BATCH_SIZE` is likely to be set to.
pub const BATCH_EVENTS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

/// Each `building` generation's progress, as last read.
pub type RebuildProgress = Arc<Mutex<Vec<(String, f64)>>>;

/// What the consumer loop counts.
#[derive(Debug)]
pub struct ConsumerMetrics {
    /// Decisions, dead letters and positions since start, summed over batches.
    pub outcome: Mutex<BatchOutcome>,
    /// Times this instance left and rejoined the group over a partition nobody projected.
    pub stall_rejoins: std::sync::atomic::AtomicU64,
    /// Events per committed batch.
    pub batch_events: Histogram,
    /// Deciding, writing and committing one batch, in seconds.
    pub apply_duration: Histogram,
}

impl ConsumerMetrics {
    /// Registers the batch histograms in `metrics`; [`register`] adds the rest.
    pub fn new(metrics: &Metrics) -> ConsumerMetrics {
        ConsumerMetrics {
            outcome: Mutex::default(),
            stall_rejoins: Default::default(),
            batch_events: metrics.histogram(
                "projector_batch_events",
                "Events (records) per committed batch.",
                Vec::new(),
                BATCH_EVENTS,
            ),
            apply_duration: metrics.histogram(
                "projector_apply_duration_seconds",
                "Time to decide, write and commit one batch (the slow path's retry included).",
                Vec::new(),
                LATENCY_SECONDS,
            ),
        }
    }
}

/// Registers the series sampled at scrape time.
pub fn register(
    metrics: &Metrics,
    consumer: &Arc<ConsumerMetrics>,
    ownership: &Ownership,
    log_ends: &LogEnds,
    rebuilds: &RebuildProgress,
) {
    let p = consumer.clone();
    metrics.sampled_counter(
        "projector_decisions_total",
        "Events decided since start, by outcome (applied, rejected, duplicate) and, for \
         rejections, reason.",
        move || decisions(&p.outcome.lock().unwrap_or_else(PoisonError::into_inner)),
    );
    let p = consumer.clone();
    metrics.sampled_counter(
        "projector_dead_letters_total",
        "Records that are not events, kept in dead_letters, since start.",
        move || {
            vec![(
                Vec::new(),
                p.outcome
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .dead_letters as f64,
            )]
        },
    );
    let p = consumer.clone();
    metrics.sampled_counter(
        "projector_stall_rejoins_total",
        "Times this instance rejoined the group because partitions with events to project had no live owner.",
        move || vec![(Vec::new(), p.stall_rejoins.load(Ordering::Relaxed) as f64)],
    );
    let own = ownership.clone();
    metrics.gauge(
        "projector_partition_next_offset",
        "Next offset to decide, per owned partition.",
        move || {
            own.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(p, c)| (partition(*p), c.next_offset as f64))
                .collect()
        },
    );
    let (own, ends) = (ownership.clone(), log_ends.clone());
    metrics.gauge(
        "projector_partition_lag_offsets",
        "Records behind the log end, per owned partition: the log end (as heard at most a \
         second ago) minus the next offset to decide.",
        move || {
            let ends = ends.lock().unwrap_or_else(PoisonError::into_inner);
            own.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter_map(|(p, claim)| {
                    let end = ends.get(p)?;
                    Some((partition(*p), (end - claim.next_offset).max(0) as f64))
                })
                .collect()
        },
    );
    let rebuilds = rebuilds.clone();
    metrics.gauge(
        "projector_rebuild_progress_ratio",
        "Per generation being rebuilt: events it has projected over those the active \
         generation has (0 to 1), as read at most two seconds ago.",
        move || {
            rebuilds
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(generation, ratio)| (vec![("generation", generation.clone())], *ratio))
                .collect()
        },
    );
}

fn partition(p: i32) -> Labels {
    vec![("partition", p.to_string())]
}

/// `projector_decisions_total`'s series: every outcome and reason, 0 until it happens, so that
/// a rate over them is never missing one.
fn decisions(outcome: &BatchOutcome) -> Vec<(Labels, f64)> {
    let of = |name: &str| vec![("outcome", name.to_owned())];
    let mut series = vec![
        (of("applied"), outcome.applied as f64),
        (of("duplicate"), outcome.duplicates as f64),
    ];
    for reason in Reason::ALL.map(Reason::as_str) {
        let mut labels = of("rejected");
        labels.push(("reason", reason.to_owned()));
        let n = outcome.rejected.get(reason).copied().unwrap_or(0);
        series.push((labels, n as f64));
    }
    series
}

/// Keeps `progress` to the progress of each `building` generation, until aborted. Errors (a
/// database away) leave the last values.
pub async fn watch_rebuilds(store: ActiveStore, topic: String, progress: RebuildProgress) {
    let mut every = tokio::time::interval(REBUILD_LOOK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match rebuilds_in_progress(&store, &topic).await {
            Ok(now) => *progress.lock().unwrap_or_else(PoisonError::into_inner) = now,
            Err(e) => tracing::debug!(
                error = format!("{e:#}"),
                "cannot read the rebuilds' progress"
            ),
        }
    }
}

async fn rebuilds_in_progress(
    store: &ActiveStore,
    topic: &str,
) -> anyhow::Result<Vec<(String, f64)>> {
    let live = store.get();
    let building: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT name FROM {CATALOGUE} WHERE state = $1 ORDER BY name"
    ))
    .bind(GenerationState::Building.as_str())
    .fetch_all(live.pool())
    .await?;
    // Only names a rebuild makes go into SQL as schema names.
    let building: Vec<String> = building
        .into_iter()
        .filter(|name| generation_number(name).is_some())
        .collect();
    if building.is_empty() {
        return Ok(Vec::new());
    }
    let target = generations::events_in(live.pool(), live.schema(), topic).await?;
    let mut progress = Vec::with_capacity(building.len());
    for name in building {
        let reached = generations::events_in(live.pool(), &name, topic).await?;
        progress.push((name, ratio(reached, target)));
    }
    Ok(progress)
}

/// `reached` over `target`, within 0 and 1: a rebuild may pass the active generation's
/// position (it reads the log up to where that stood when it looked, which may have moved
/// since the last look here); an empty log is all rebuilt.
fn ratio(reached: i64, target: i64) -> f64 {
    if target <= 0 {
        return 1.0;
    }
    (reached as f64 / target as f64).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rebuild_ratio_stays_within_0_and_1() {
        assert_eq!(ratio(0, 10), 0.0);
        assert_eq!(ratio(5, 10), 0.5);
        assert_eq!(ratio(12, 10), 1.0);
        assert_eq!(ratio(0, 0), 1.0);
    }

    #[test]
    fn every_outcome_and_reason_has_a_series_from_the_start() {
        let mut outcome = BatchOutcome::default();
        let empty = decisions(&outcome);
        assert_eq!(empty.len(), 2 + Reason::ALL.len());
        assert!(empty.iter().all(|(_, n)| *n == 0.0));
        outcome.applied = 3;
        outcome.rejected.insert("not_found", 2);
        let counted = decisions(&outcome);
        let value = |labels: &[(&str, &str)]| {
            counted
                .iter()
                .find(|(l, _)| {
                    l.len() == labels.len()
                        && l.iter()
                            .zip(labels)
                            .all(|((k, v), (lk, lv))| k == lk && v == lv)
                })
                .map(|(_, n)| *n)
        };
        assert_eq!(value(&[("outcome", "applied")]), Some(3.0));
        assert_eq!(
            value(&[("outcome", "rejected"), ("reason", "not_found")]),
            Some(2.0)
        );
        assert_eq!(
            value(&[("outcome", "rejected"), ("reason", "version_conflict")]),
            Some(0.0)
        );
    }
}
