//! The bound on writes in flight: appended to the producer and waiting for the broker's
//! acknowledgement.
//!
//! Without it, a slow broker turns every write into a task, a request and a record held in
//! memory until `message.timeout.ms` ends it: the memory grows with the arrival rate times the
//! timeout, and so does the latency every client sees. With it, a write that finds the bound
//! reached is answered at once with 503 `/problems/overloaded` and `Retry-After`, and nothing is
//! appended: it never waits for room, since a queue in front of a slow broker is the unbounded
//! wait this exists to prevent, only moved.
//!
//! A permit is taken with `try_acquire` before the append and held until the append resolves
//! (acknowledged, failed or timed out), also when the client goes away: its record is in the
//! producer's queue whether anyone waits for the answer or not, so it still counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use service_kit::metrics::Metrics;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Why a write was not admitted.
#[derive(Debug, thiserror::Error)]
#[error("{limit} writes are already waiting for the broker")]
pub struct Overloaded {
    pub limit: usize,
}

/// Admits writes up to the bound; see the module documentation.
#[derive(Debug)]
pub struct InFlightWrites {
    permits: Arc<Semaphore>,
    limit: usize,
    /// Writes refused for the bound since start; an atomic, so a refusal under load costs no
    /// lock on the metrics.
    shed: AtomicU64,
}

impl InFlightWrites {
    /// A bound of `limit` writes, with its gauge and shed counter registered in `metrics`.
    pub fn new(limit: usize, metrics: &Metrics) -> Arc<InFlightWrites> {
        let writes = Arc::new(InFlightWrites {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            shed: AtomicU64::new(0),
        });
        // The samplers hold weak references, so the metrics never keep a dropped bound alive.
        let weak = Arc::downgrade(&writes);
        metrics.gauge(
            "command_writes_in_flight",
            "Writes waiting for the broker's acknowledgement (at most MAX_IN_FLIGHT_WRITES).",
            move || {
                weak.upgrade()
                    .map(|w| vec![(Vec::new(), w.in_flight() as f64)])
                    .unwrap_or_default()
            },
        );
        let weak = Arc::downgrade(&writes);
        metrics.sampled_counter(
            "command_writes_shed_total",
            "Writes answered 503 overloaded because MAX_IN_FLIGHT_WRITES were in flight.",
            move || {
                weak.upgrade()
                    .map(|w| vec![(Vec::new(), w.shed() as f64)])
                    .unwrap_or_default()
            },
        );
        writes
    }

    /// A permit for one write, or [`Overloaded`] at once when the bound is reached. Drop the
    /// permit when the append has resolved.
    pub fn try_admit(&self) -> Result<OwnedSemaphorePermit, Overloaded> {
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => Ok(permit),
            // The semaphore is never closed; treat it as full all the same rather than panic.
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                self.shed.fetch_add(1, Ordering::Relaxed);
                Err(Overloaded { limit: self.limit })
            }
        }
    }

    /// Writes holding a permit now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    /// Writes refused since start.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_bound_then_sheds_until_a_permit_is_returned() {
        let metrics = Metrics::default();
        let writes = InFlightWrites::new(2, &metrics);
        let first = writes.try_admit().expect("room");
        let _second = writes.try_admit().expect("room");
        assert_eq!(writes.in_flight(), 2);
        assert_eq!(writes.try_admit().expect_err("full").limit, 2);
        assert_eq!(writes.shed(), 1);
        drop(first);
        assert_eq!(writes.in_flight(), 1);
        let _third = writes.try_admit().expect("room again");

        let text = metrics.render();
        assert!(text.contains("command_writes_in_flight 2"), "{text}");
        assert!(text.contains("command_writes_shed_total 1"), "{text}");
    }
}
