//! What a committed batch did: [`BatchOutcome`], its decisions and positions, and
//! [`PartitionCounts`], the same decisions for one partition.
//!
//! A batch fills it in, the store adds where each partition now stands, and the consumer loop
//! sums the outcomes for `/metrics`.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use crate::decide::Reason;

/// What a batch decided on one partition, added to the partition's running counts in
/// `projector_offsets` (which the status page reads instead of counting the decisions).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PartitionCounts {
    pub applied: i64,
    /// Rejections, by reason in [`Reason::ALL`]'s order.
    pub rejected: [i64; Reason::ALL.len()],
    pub dead_letters: i64,
}

impl PartitionCounts {
    pub fn reject(&mut self, reason: Reason) {
        if let Some(index) = Reason::ALL.iter().position(|r| *r == reason) {
            self.rejected[index] += 1;
        }
    }

    fn add(&mut self, other: &PartitionCounts) {
        self.applied += other.applied;
        self.dead_letters += other.dead_letters;
        for (sum, n) in self.rejected.iter_mut().zip(other.rejected) {
            *sum += n;
        }
    }
}

/// What a committed batch did.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// The new stored position of every partition that committed.
    pub committed: BTreeMap<i32, i64>,
    /// Partitions whose stored position or epoch moved under us: another instance owns them now.
    pub fenced: Vec<i32>,
    pub applied: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    pub duplicates: u64,
    pub dead_letters: u64,
    /// The same decisions and dead letters, by partition.
    pub by_partition: BTreeMap<i32, PartitionCounts>,
    /// The owners (partition keys) of the events this batch applied, for the progress notice.
    pub changed_owners: BTreeSet<Uuid>,
    /// The posts this batch wrote, for the progress notice.
    pub changed_posts: BTreeSet<Uuid>,
}

impl BatchOutcome {
    /// Adds another outcome's counts and positions to this one (not its fenced partitions,
    /// which say something about one moment only, nor its changed ids, which only its own
    /// batch's notice names: a running total of them would grow without bound).
    pub fn absorb(&mut self, other: BatchOutcome) {
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.dead_letters += other.dead_letters;
        for (reason, n) in other.rejected {
            *self.rejected.entry(reason).or_default() += n;
        }
        for (partition, counts) in &other.by_partition {
            self.by_partition.entry(*partition).or_default().add(counts);
        }
        self.committed.extend(other.committed);
    }
}
