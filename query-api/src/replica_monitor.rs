//! Keeping watch on the read replicas while the service runs: the [`Poller`] that refreshes
//! each one's offsets every `REPLICA_POLL_MS`, and the gauges of how far each has replayed,
//! how far it lags the projector's progress, and whether it is read.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::consistency::Watermarks;
use crate::read_models::ReadModels;

/// The background tasks that refresh each replica's offsets; stop when dropped.
#[derive(Debug)]
pub struct Poller(Vec<JoinHandle<()>>);

impl Drop for Poller {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Poller {
    /// Refreshes every replica of the active generation every `every`, each on a task of its
    /// own, so that one that hangs does not hold the others back. Without replicas, nothing.
    pub fn start(read_models: &ReadModels, every: Duration) -> Poller {
        let tasks = (0..read_models.replica_count())
            .map(|index| {
                let read_models = read_models.clone();
                tokio::spawn(async move {
                    let mut ticks = tokio::time::interval(every);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        ticks.tick().await;
                        read_models.refresh_replica(index).await;
                    }
                })
            })
            .collect();
        Poller(tasks)
    }
}

/// Gauges of each replica: the offsets it was seen at, its lag behind the primary's watermarks
/// as this instance heard them, and whether it is read.
pub fn register_gauges(read_models: &ReadModels, watermarks: &Watermarks) {
    if read_models.replica_count() == 0 {
        return;
    }
    let metrics = read_models.metrics().clone();
    let sampled = read_models.clone();
    metrics.gauge(
        "query_api_replica_next_offset",
        "The projector's next offset per partition as each replica was last seen at (a floor \
         for its reads); no series while a replica was not found on the active generation.",
        move || {
            sampled
                .replicas_seen()
                .into_iter()
                .flat_map(|(label, seen)| {
                    seen.into_iter().flat_map(move |seen| {
                        let label = label.clone();
                        seen.iter()
                            .map(move |(partition, next)| {
                                (
                                    vec![
                                        ("replica", label.clone()),
                                        ("partition", partition.to_string()),
                                    ],
                                    *next as f64,
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect()
        },
    );
    let sampled = read_models.clone();
    let watermarks = watermarks.clone();
    metrics.gauge(
        "query_api_replica_lag_offsets",
        "Offsets each replica was last seen behind the projector's progress as this instance \
         heard it, summed over partitions; no series while a replica was not found on the \
         active generation.",
        move || {
            let primary = watermarks.current();
            sampled
                .replicas_seen()
                .into_iter()
                .filter_map(|(label, seen)| {
                    let seen = seen?;
                    let lag: i64 = primary
                        .iter()
                        .map(|(partition, next)| {
                            (next - seen.get(partition).copied().unwrap_or(0)).max(0)
                        })
                        .sum();
                    Some((vec![("replica", label)], lag as f64))
                })
                .collect()
        },
    );
    let sampled = read_models.clone();
    metrics.gauge(
        "query_api_replica_healthy",
        "1 while a replica is read from, 0 while it is passed over after failing to answer.",
        move || {
            sampled
                .replica_health()
                .into_iter()
                .map(|(label, healthy)| (vec![("replica", label)], if healthy { 1.0 } else { 0.0 }))
                .collect()
        },
    );
}
