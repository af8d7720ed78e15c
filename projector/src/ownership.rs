//! Which partitions this instance owns: its [`Claim`] on each, made in PostgreSQL when Kafka
//! assigns the partition, and the [`Ownership`] the consumer loop keeps and its watchers read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// This instance's claim on a partition: the epoch it claimed it at, and the offset the stored
/// position must still be at for this instance's next batch to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub epoch: i64,
    pub next_offset: i64,
}

/// The partitions this instance owns right now, and its claim on each.
pub type Ownership = Arc<Mutex<BTreeMap<i32, Claim>>>;

/// The partitions `ownership` holds right now, in any collection (a snapshot: the lock is
/// released before the caller looks at them).
pub fn owned_partitions<C: FromIterator<i32>>(ownership: &Ownership) -> C {
    ownership
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .keys()
        .copied()
        .collect()
}
