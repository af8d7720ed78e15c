//! Projecting the log again into a read model other than the live one: what `verify` (into a
//! scratch schema), `rebuild` (into a new generation) and `switch` (catching a generation up)
//! share.
//!
//! - [`Replay`] (here): a [`Store`] of its own (its schema's tables, no progress notices) fed by
//!   a [`Reader`] per lane, projected up to given offsets in large batches through the unchanged
//!   batch transaction, so the same code decides as in the live run. It starts where that
//!   store's own `projector_offsets` say: 0 for a new schema, further on for one being resumed.
//! - [`source`]: where the log is read from, and its bounds.
//! - [`reader`]: the log, read by a consumer of its own: no group membership (partitions are
//!   assigned by hand) and no commits, so the live projector's group never notices it.
//! - [`progress`]: what the operator sees while it runs.

mod progress;
mod reader;
mod source;

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, ensure};

use crate::error::StoreError;
use crate::ownership::Claim;
use crate::record::Record;
use crate::store::Store;
use progress::ProgressDisplay;
use reader::Reader;
pub(crate) use source::check_within_log;
pub use source::{LogSource, RecordedLog};

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

/// What the lanes of a replay share while they run: counters and positions only, so a lane
/// that panics while holding it breaks no invariant, and the others take it over poisoned.
struct Shared {
    /// Records committed by this run.
    projected: u64,
    /// Records the lanes may still take under `max_events` (reserved before each read).
    remaining: Option<u64>,
    /// Next offset per partition, as committed.
    positions: BTreeMap<i32, i64>,
    progress: ProgressDisplay,
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
                progress: ProgressDisplay::new(label, &from),
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
        self.shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .positions
            .clone()
    }

    /// Records committed by this run.
    pub(crate) fn projected(&self) -> u64 {
        self.shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .projected
    }

    /// Projects every partition up to (not including) its target offset.
    pub(crate) async fn project_up_to(
        &mut self,
        targets: &BTreeMap<i32, i64>,
    ) -> anyhow::Result<()> {
        {
            let shared = &mut *self.shared.lock().unwrap_or_else(PoisonError::into_inner);
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
        self.shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .progress
            .finish();
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
                let shared = &mut *shared.lock().unwrap_or_else(PoisonError::into_inner);
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
            if let Some(remaining) = &mut shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remaining
            {
                *remaining += (max - batch.len()) as u64;
            }
            if batch.is_empty() {
                return Ok(());
            }
            self.commit(store, &batch).await?;
            let shared = &mut *shared.lock().unwrap_or_else(PoisonError::into_inner);
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
