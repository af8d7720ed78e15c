//! The read cache: the serialized answers of single users, posts and decisions and of first
//! pages, kept in memory, made stale by the projector's progress notices (not by age), and never
//! served older than a consistency token the client presents.
//!
//! # What is kept, and what makes it stale
//!
//! | key | 200 | 404 | stale once a notice names |
//! |---|---|---|---|
//! | `GET /v1/users/{id}` | yes | yes | the user |
//! | `GET /v1/users/{id}/posts?limit=N`, first page | yes | yes | the user |
//! | `GET /v1/posts/{id}` | yes | yes | the post, or its author (a 200's) |
//! | `GET /v1/posts?limit=N`, first page | yes | | anything at all |
//! | `GET /v1/commands/{id}` | yes | **never** | nothing: a decision never changes |
//!
//! A notice names the owner (the user, the partition key) of every event its batch applied and
//! every post it wrote ([`Changed`]). Naming the owner covers the user's own row, their pages,
//! and every post of theirs, also the ones a `user.deleted` hides without naming them, which is
//! also why any notice that names anything makes the feed pages stale. A notice that names
//! nothing particular (too much changed to name, or a projector older than the field) clears
//! everything, as do a (re)connect of the follower and a generation switch.
//!
//! # Sequence numbers instead of searches
//!
//! A counter, the *sequence*, goes up by one with every invalidation and clear. A fill reads it
//! before its database read and its entry keeps it (the entry's sequence). Invalidating an id
//! stores the new sequence in the id's *stripe*, one of [`STRIPES`] atomics the id hashes to; a
//! clear stores it as the clear sequence. An entry is live while its sequence is at least the
//! clear sequence, its owner's stripe, and its post's stripe (for a feed page: the feed's
//! sequence). So an invalidation is a few atomic stores whatever the cache holds: nothing is
//! searched, an owner's posts are found stale at their next lookup through their author's
//! stripe, and stale entries are the first to be evicted. Ids that share a stripe make each
//! other's entries stale now and then: a needless miss, never a stale hit.
//!
//! # The fill race
//!
//! A miss reads PostgreSQL, then stores what it read. A batch may commit, and its notice be
//! applied, in between: what was read may then predate the batch and must not be kept. Its
//! sequence was read before the database read, hence before that invalidation, so it is below
//! the stripe the invalidation wrote: the fill is refused (and if the invalidation lands between
//! that check and the insert, every lookup finds the entry stale). A fill whose sequence already
//! includes the invalidation started its read after the notice had arrived, so after the batch
//! had committed (PostgreSQL delivers a notice only once its transaction is visible): what it
//! read includes the batch, if it read the primary (for a replica, see "Replicas" below).
//!
//! # Order in the follower
//!
//! The follower ([`crate::consistency`]) applies each notice of the active generation by FIRST
//! hearing its offsets (see "Replicas"), THEN invalidating, THEN publishing the new watermarks.
//! Once any read has seen a watermark that covers a write (its token wait was released), no
//! entry older than that write is live, so no read answered from the cache, with a token or
//! without, is answered from before it: a client does not see its write vanish on the read
//! after the one that showed it. On a (re)connect the follower clears after its LISTEN (every
//! later commit will be notified) and after following the active generation, and before it
//! publishes the offsets it loaded (having heard them before the clear); a switch clears after
//! the reads were sent to the new generation's pools, so a fill whose sequence includes the
//! clear reads the new generation. While the follower is not listening (start-up, connection
//! lost, follower gone) the cache is *suspended*: no notice could make anything stale, so
//! nothing is served or kept, and a fill begun then is never kept, even if the cache resumes
//! before it ends.
//!
//! # Consistency tokens
//!
//! A read with a token `(p, o)` first waits, as without the cache, until the watermark of `p`
//! covers `o`. Each entry keeps the watermarks heard when its fill began (after its sequence,
//! before its database read), and serves a token only if they covered it: filled-under next
//! offset of `p` > `o`. Why such an entry cannot be older than the write: the follower heard a
//! watermark covering `o` only after the notice of the batch holding `o` arrived, so after that
//! batch had committed; the fill read that watermark, then read PostgreSQL (the primary, or a
//! replica that had replayed at least that far), so its read includes the write; and as the
//! entry is live, nothing it shows has changed since. An entry filled under older watermarks is
//! passed over: the read goes to PostgreSQL and refills it. A decision is the same once made,
//! so a decision's entry serves any token.
//!
//! # Replicas
//!
//! A miss may read a replica ([`crate::replicas`]), which shows the primary as it was a moment
//! ago. The fill race's last step ("its read includes the batch") then holds only if the replica
//! had replayed that batch. So a fill reads the sequence FIRST, THEN the watermarks the follower
//! has heard, and its read goes only to a replica whose replayed offsets are at or past those on
//! every partition (else to the primary). As the follower hears a batch's offsets before it
//! invalidates what the batch changed, a fill whose sequence includes that invalidation has
//! heard those offsets or later ones, and reads a replica that has replayed the batch: its read
//! includes the batch, as on the primary. The other orders are unsound: watermarks read before
//! the sequence, or watermarks that are published only after the invalidation, let a fill slip
//! in between, read a lagging replica from before the batch, and keep that live until the next
//! notice that names it. The offsets are our topic's: once a notice of another topic was heard
//! in the active generation, they say nothing of that topic's batches, and fills read the
//! primary. A fill begun with the cache off or suspended is never kept, so it needs nothing of a
//! replica. Reads that fill nothing (later pages, streams, every read with the cache off) need
//! nothing of a replica without a token: they may show a replica's older state, also after a
//! read that showed a newer one. A token is the way to read one's own writes.
//!
//! # Size
//!
//! Bounded by entries and by bytes (answers plus a fixed overhead each), split evenly over up to
//! [`MAX_SHARDS`] shards, each behind its own `RwLock`: a hit takes a read lock of one shard.
//! Eviction is CLOCK per shard: a hit marks its entry; the hand passes over marked live entries
//! once, clearing the mark, and evicts the first unmarked or stale one.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use events::ConsistencyToken;
use events::progress::Changed;
use service_kit::metrics::Metrics;
use uuid::Uuid;

use crate::answer::Answer;
use crate::offsets::Offsets;

/// Invalidation stripes: 512 KiB of atomics; a needless miss for 1 in 65,536 of the entries per
/// invalidated id.
pub const STRIPES: usize = 1 << 16;
/// Enough shards that two cores rarely wait for each other's lock.
pub const MAX_SHARDS: usize = 32;
/// What an entry weighs besides its answer: slot, key, index entry, watermarks and allocator
/// slack, roughly.
pub const ENTRY_OVERHEAD: usize = 192;

/// What a cached answer answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// `GET /v1/users/{id}`.
    User(Uuid),
    /// `GET /v1/posts/{id}`.
    Post(Uuid),
    /// `GET /v1/commands/{id}`.
    Command(Uuid),
    /// `GET /v1/users/{id}/posts?limit=N`, without a cursor.
    UserPosts { user: Uuid, limit: u32 },
    /// `GET /v1/posts?limit=N`, without a cursor.
    Feed { limit: u32 },
}

/// The read cache. Cheap to clone (a shared handle); one of no entries keeps nothing.
#[derive(Clone)]
pub struct Cache {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Some(inner) => f
                .debug_struct("Cache")
                .field("shards", &inner.shards.len())
                .field("entries_per_shard", &inner.entries_per_shard)
                .field("bytes_per_shard", &inner.bytes_per_shard)
                .finish_non_exhaustive(),
            None => f.write_str("Cache(off)"),
        }
    }
}

/// Where a fill began: the sequence, then the watermarks heard, both read before its database
/// read. No watermarks when the cache was off or suspended: such a fill is never kept.
#[derive(Debug)]
pub struct Fill {
    sequence: u64,
    filled_under: Option<Arc<Offsets>>,
}

impl Fill {
    /// The watermarks the fill's entry will serve tokens under, if it may be kept at all: what
    /// its database read must include (see "Replicas" above).
    pub fn filled_under(&self) -> Option<&Arc<Offsets>> {
        self.filled_under.as_ref()
    }
}

struct Inner {
    shards: Box<[RwLock<Shard>]>,
    hasher: RandomState,
    entries_per_shard: usize,
    bytes_per_shard: usize,
    sequence: AtomicU64,
    cleared_at: AtomicU64,
    feed_changed_at: AtomicU64,
    stripes: Box<[AtomicU64]>,
    following: AtomicBool,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    refused: AtomicU64,
    invalidated: AtomicU64,
    clears: AtomicU64,
    evictions: AtomicU64,
}

struct Entry {
    answer: Answer,
    /// The user whose notices make it stale: the user read, the pages' author, a post's author.
    owner: Option<Uuid>,
    /// The sequence when its fill began.
    sequence: u64,
    /// The watermarks when its fill began.
    filled_under: Arc<Offsets>,
    weight: usize,
}

struct Slot {
    key: Key,
    entry: Entry,
    /// Set by a hit, cleared by the passing clock hand.
    referenced: AtomicBool,
}

#[derive(Default)]
struct Shard {
    slots: Vec<Slot>,
    index: HashMap<Key, usize>,
    hand: usize,
    bytes: usize,
}

impl Cache {
    /// A cache of at most `max_entries` entries and `max_bytes` bytes, suspended until
    /// [`resume`](Cache::resume)d; 0 of either keeps nothing. Registers its metrics.
    pub fn new(max_entries: usize, max_bytes: usize, metrics: &Metrics) -> Cache {
        Self::with_shards(max_entries, max_bytes, MAX_SHARDS, metrics)
    }

    /// As [`new`](Cache::new), with at most `max_shards` shards (a power of two).
    pub fn with_shards(
        max_entries: usize,
        max_bytes: usize,
        max_shards: usize,
        metrics: &Metrics,
    ) -> Cache {
        if max_entries == 0 || max_bytes == 0 {
            return Cache { inner: None };
        }
        // A power of two no larger than the entries, so that the shards' bounds add up to no
        // more than the whole's.
        let fewest = max_shards.clamp(1, max_entries);
        let shards = 1usize << (usize::BITS - 1 - fewest.leading_zeros());
        let inner = Arc::new(Inner {
            shards: (0..shards).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            entries_per_shard: max_entries / shards,
            bytes_per_shard: max_bytes / shards,
            sequence: AtomicU64::new(0),
            cleared_at: AtomicU64::new(0),
            feed_changed_at: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            following: AtomicBool::new(false),
            counters: Counters::default(),
        });
        register_metrics(metrics, &inner);
        Cache { inner: Some(inner) }
    }

    /// The answer kept for `key`, if it is live and, for a read with `token`, was filled under
    /// watermarks that covered it.
    pub fn get(&self, key: &Key, token: Option<ConsistencyToken>) -> Option<Answer> {
        let inner = self.inner.as_deref()?;
        let answer = inner.get(key, token);
        let counter = if answer.is_some() {
            &inner.counters.hits
        } else {
            &inner.counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }

    /// Starts a fill: call BEFORE the database read. Reads the sequence, THEN calls `heard` for
    /// the watermarks heard now (the order matters for replicas: see "Replicas" above).
    pub fn begin_fill(&self, heard: impl FnOnce() -> Arc<Offsets>) -> Fill {
        let Some(inner) = self.inner.as_deref() else {
            return Fill {
                sequence: 0,
                filled_under: None,
            };
        };
        let sequence = inner.sequence.load(Ordering::SeqCst);
        let filled_under = inner.following.load(Ordering::SeqCst).then(heard);
        Fill {
            sequence,
            filled_under,
        }
    }

    /// Keeps what a fill read, unless something it shows was invalidated since the fill began,
    /// the cache is suspended, or it is a decision's 404 (a decision may be made any moment).
    /// `owner` is the user whose changes make it stale. True when kept.
    pub fn store(&self, fill: Fill, key: Key, answer: Answer, owner: Option<Uuid>) -> bool {
        match self.inner.as_deref() {
            Some(inner) => inner.store(fill, key, answer, owner),
            None => false,
        }
    }

    /// Makes stale every entry `changed` names, or, for `None` (a notice that does not say),
    /// everything.
    pub fn invalidate(&self, changed: Option<&Changed>) {
        let Some(inner) = self.inner.as_deref() else {
            return;
        };
        match changed {
            Some(changed) => inner.invalidate(changed),
            None => inner.clear(),
        }
    }

    /// Makes every entry stale, and frees them.
    pub fn clear(&self) {
        if let Some(inner) = self.inner.as_deref() {
            inner.clear();
        }
    }

    /// Stops serving and keeping anything, and clears: no notice can invalidate anything now.
    pub fn suspend(&self) {
        if let Some(inner) = self.inner.as_deref() {
            inner.following.store(false, Ordering::SeqCst);
            inner.clear();
        }
    }

    /// Clears, then serves and keeps again: call once notices are listened for.
    pub fn resume(&self) {
        if let Some(inner) = self.inner.as_deref() {
            inner.clear();
            inner.following.store(true, Ordering::SeqCst);
        }
    }

    /// Entries held, live or stale.
    pub fn len(&self) -> usize {
        self.inner.as_deref().map_or(0, Inner::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the entries weigh, by [`ENTRY_OVERHEAD`] and their answers.
    pub fn weight(&self) -> usize {
        self.inner.as_deref().map_or(0, Inner::weight)
    }
}

impl Inner {
    fn shard(&self, key: &Key) -> &RwLock<Shard> {
        // The shard count is a power of two.
        let at = self.hasher.hash_one(key) as usize & (self.shards.len() - 1);
        &self.shards[at]
    }

    fn stripe(&self, id: Uuid) -> &AtomicU64 {
        let (high, low) = id.as_u64_pair();
        let mixed = (high ^ low).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.stripes[(mixed >> (u64::BITS - STRIPES.trailing_zeros())) as usize]
    }

    /// Nothing the entry shows was invalidated after its fill began.
    fn is_live(&self, key: &Key, entry: &Entry) -> bool {
        let since = entry.sequence;
        let unchanged = |stripe: &AtomicU64| stripe.load(Ordering::SeqCst) <= since;
        unchanged(&self.cleared_at)
            && entry
                .owner
                .is_none_or(|owner| unchanged(self.stripe(owner)))
            && match key {
                Key::Post(id) => unchanged(self.stripe(*id)),
                Key::Feed { .. } => unchanged(&self.feed_changed_at),
                Key::User(_) | Key::Command(_) | Key::UserPosts { .. } => true,
            }
    }

    fn get(&self, key: &Key, token: Option<ConsistencyToken>) -> Option<Answer> {
        if !self.following.load(Ordering::SeqCst) {
            return None;
        }
        let shard = read(self.shard(key));
        let slot = &shard.slots[*shard.index.get(key)?];
        if !self.is_live(key, &slot.entry) || !serves(key, &slot.entry, token) {
            return None;
        }
        // Only written when it changes: a hot entry's cache line stays shared between cores.
        if !slot.referenced.load(Ordering::Relaxed) {
            slot.referenced.store(true, Ordering::Relaxed);
        }
        Some(slot.entry.answer.clone())
    }

    fn store(&self, fill: Fill, key: Key, answer: Answer, owner: Option<Uuid>) -> bool {
        if matches!((key, &answer), (Key::Command(_), Answer::NotFound(_))) {
            return false;
        }
        // Begun while suspended: its read was held to nothing, and may predate lost notices.
        let Some(filled_under) = fill.filled_under else {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let weight = answer.weight() + ENTRY_OVERHEAD;
        if weight > self.bytes_per_shard {
            return false;
        }
        let entry = Entry {
            answer,
            owner,
            sequence: fill.sequence,
            filled_under,
            weight,
        };
        // An invalidation landing after this check makes the entry stale at every lookup.
        if !self.following.load(Ordering::SeqCst) || !self.is_live(&key, &entry) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut shard = write(self.shard(&key));
        let limits = (self.entries_per_shard, self.bytes_per_shard);
        let (kept, evicted) =
            shard.insert(key, entry, limits, &|key, entry| self.is_live(key, entry));
        self.counters
            .evictions
            .fetch_add(evicted, Ordering::Relaxed);
        kept
    }

    fn invalidate(&self, changed: &Changed) {
        let ids = changed.owners.len() + changed.posts.len();
        if ids == 0 {
            return;
        }
        let sequence = self.sequence.fetch_add(1, Ordering::SeqCst) + 1;
        for id in changed.owners.iter().chain(&changed.posts) {
            self.stripe(*id).fetch_max(sequence, Ordering::SeqCst);
        }
        self.feed_changed_at.fetch_max(sequence, Ordering::SeqCst);
        self.counters
            .invalidated
            .fetch_add(ids as u64, Ordering::Relaxed);
    }

    fn clear(&self) {
        let sequence = self.sequence.fetch_add(1, Ordering::SeqCst) + 1;
        self.cleared_at.fetch_max(sequence, Ordering::SeqCst);
        for shard in &self.shards {
            *write(shard) = Shard::default();
        }
        self.counters.clears.fetch_add(1, Ordering::Relaxed);
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).slots.len()).sum()
    }

    fn weight(&self) -> usize {
        self.shards.iter().map(|s| read(s).bytes).sum()
    }
}

/// A live entry serves a read without a token; with one, only if it was filled under
/// watermarks that covered the token. A decision never changes: it serves any token.
fn serves(key: &Key, entry: &Entry, token: Option<ConsistencyToken>) -> bool {
    match (key, token) {
        (Key::Command(_), _) | (_, None) => true,
        (_, Some(token)) => entry
            .filled_under
            .get(&token.partition)
            .is_some_and(|next| token.is_covered_by(*next)),
    }
}

type Liveness<'a> = &'a dyn Fn(&Key, &Entry) -> bool;

impl Shard {
    /// Inserts or replaces `key`'s entry, evicting to stay within `(entries, bytes)`. Keeps a
    /// live entry that a later fill made rather than this one. Returns whether it was kept and
    /// how many entries were evicted.
    fn insert(
        &mut self,
        key: Key,
        entry: Entry,
        (max_entries, max_bytes): (usize, usize),
        live: Liveness<'_>,
    ) -> (bool, u64) {
        let mut evicted = 0;
        if let Some(&at) = self.index.get(&key) {
            let slot = &mut self.slots[at];
            if slot.entry.sequence > entry.sequence && live(&slot.key, &slot.entry) {
                return (false, 0);
            }
            self.bytes = self.bytes - slot.entry.weight + entry.weight;
            slot.entry = entry;
        } else {
            while !self.slots.is_empty()
                && (self.slots.len() >= max_entries || self.bytes + entry.weight > max_bytes)
            {
                self.evict_one(live);
                evicted += 1;
            }
            self.bytes += entry.weight;
            self.index.insert(key, self.slots.len());
            self.slots.push(Slot {
                key,
                entry,
                referenced: AtomicBool::new(false),
            });
        }
        // A replacement may weigh more than what it replaced.
        while self.bytes > max_bytes && !self.slots.is_empty() {
            self.evict_one(live);
            evicted += 1;
        }
        (self.index.contains_key(&key), evicted)
    }

    /// CLOCK: passes over marked live entries once, clearing their mark, and evicts the first
    /// unmarked or stale one. Ends within two turns of the hand.
    fn evict_one(&mut self, live: Liveness<'_>) {
        loop {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let Some(slot) = self.slots.get(self.hand) else {
                return;
            };
            if slot.referenced.swap(false, Ordering::Relaxed) && live(&slot.key, &slot.entry) {
                self.hand += 1;
                continue;
            }
            self.remove_at(self.hand);
            return;
        }
    }

    fn remove_at(&mut self, at: usize) {
        let removed = self.slots.swap_remove(at);
        self.index.remove(&removed.key);
        if let Some(moved) = self.slots.get(at) {
            self.index.insert(moved.key, at);
        }
        self.bytes -= removed.entry.weight;
    }
}

fn read(shard: &RwLock<Shard>) -> RwLockReadGuard<'_, Shard> {
    shard.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(shard: &RwLock<Shard>) -> RwLockWriteGuard<'_, Shard> {
    shard.write().unwrap_or_else(PoisonError::into_inner)
}

/// Which of the [`Counters`] a counter series shows.
type CounterOf = fn(&Counters) -> &AtomicU64;

/// The cache's counters (kept in atomics, read at scrape time) and its gauges.
fn register_metrics(metrics: &Metrics, inner: &Arc<Inner>) {
    let counters: [(&'static str, &'static str, CounterOf); 6] = [
        (
            "query_api_cache_hits_total",
            "Reads answered from the read cache, since start.",
            |c| &c.hits,
        ),
        (
            "query_api_cache_misses_total",
            "Cacheable reads that went to PostgreSQL (absent, stale, filled under watermarks \
             older than the read's token, or the cache suspended), since start.",
            |c| &c.misses,
        ),
        (
            "query_api_cache_refused_fills_total",
            "Answers read from PostgreSQL but not kept: invalidated while they were read, or \
             the cache suspended, since start.",
            |c| &c.refused,
        ),
        (
            "query_api_cache_invalidations_total",
            "Ids (owners and posts) progress notices named, since start.",
            |c| &c.invalidated,
        ),
        (
            "query_api_cache_clears_total",
            "Times the whole cache was made stale: notices that did not say what changed, \
             (re)connects and suspensions of the follower, generation switches.",
            |c| &c.clears,
        ),
        (
            "query_api_cache_evictions_total",
            "Entries evicted to stay within the bounds, since start.",
            |c| &c.evictions,
        ),
    ];
    for (name, help, counter) in counters {
        let inner = inner.clone();
        metrics.sampled_counter(name, help, move || {
            vec![(
                Vec::new(),
                counter(&inner.counters).load(Ordering::Relaxed) as f64,
            )]
        });
    }
    let sampled = inner.clone();
    metrics.gauge(
        "query_api_cache_entries",
        "Entries the read cache holds, live or stale.",
        move || vec![(Vec::new(), sampled.len() as f64)],
    );
    let sampled = inner.clone();
    metrics.gauge(
        "query_api_cache_bytes",
        "Bytes the read cache's entries weigh (answers and a fixed overhead each).",
        move || vec![(Vec::new(), sampled.weight() as f64)],
    );
    let sampled = inner.clone();
    metrics.gauge(
        "query_api_cache_following",
        "1 while the read cache serves (its invalidations are listened for), else 0.",
        move || {
            let following = sampled.following.load(Ordering::Relaxed);
            vec![(Vec::new(), if following { 1.0 } else { 0.0 })]
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn cache(max_entries: usize) -> Cache {
        let cache = Cache::new(max_entries, usize::MAX, &Metrics::default());
        cache.resume();
        cache
    }

    fn offsets(pairs: &[(i32, i64)]) -> Arc<Offsets> {
        Arc::new(pairs.iter().copied().collect())
    }

    fn body(text: &'static str) -> Answer {
        Answer::Json {
            body: Bytes::from_static(text.as_bytes()),
            etag: None,
        }
    }

    /// Fills `key` at once, under watermarks {0: 5}.
    fn fill(cache: &Cache, key: Key, answer: Answer, owner: Option<Uuid>) -> bool {
        let fill = cache.begin_fill(|| offsets(&[(0, 5)]));
        cache.store(fill, key, answer, owner)
    }

    fn owners(ids: &[Uuid]) -> Changed {
        Changed {
            owners: ids.to_vec(),
            posts: Vec::new(),
        }
    }

    fn posts(ids: &[Uuid]) -> Changed {
        Changed {
            owners: Vec::new(),
            posts: ids.to_vec(),
        }
    }

    /// Ids in stripes of their own, so that no invalidation in these tests hits another's.
    fn ids<const N: usize>(cache: &Cache) -> [Uuid; N] {
        let inner = cache.inner.as_deref().expect("a cache");
        let mut seen = std::collections::HashSet::new();
        let mut next = 1u128;
        std::array::from_fn(|_| {
            loop {
                let id = Uuid::from_u128(next);
                next += 1;
                if seen.insert(inner.stripe(id) as *const AtomicU64) {
                    break id;
                }
            }
        })
    }

    #[test]
    fn a_fill_is_served_until_its_owner_is_named() {
        let cache = cache(100);
        let [ada, bo] = ids(&cache);
        let key = Key::User(ada);
        assert_eq!(cache.get(&key, None), None);

        assert!(fill(&cache, key, body("ada"), Some(ada)));
        assert_eq!(cache.get(&key, None), Some(body("ada")));

        cache.invalidate(Some(&owners(&[bo])));
        assert_eq!(cache.get(&key, None), Some(body("ada")), "another owner");
        cache.invalidate(Some(&Changed::default()));
        assert_eq!(cache.get(&key, None), Some(body("ada")), "nothing named");
        cache.invalidate(Some(&owners(&[ada])));
        assert_eq!(cache.get(&key, None), None);

        assert!(fill(&cache, key, body("ada 2"), Some(ada)));
        assert_eq!(cache.get(&key, None), Some(body("ada 2")));
    }

    #[test]
    fn naming_an_owner_makes_their_user_pages_posts_and_the_feed_stale() {
        let cache = cache(100);
        let [ada, bo, her_post, his_post, command] = ids(&cache);
        let hers = [
            (Key::User(ada), Some(ada)),
            (
                Key::UserPosts {
                    user: ada,
                    limit: 20,
                },
                Some(ada),
            ),
            (
                Key::UserPosts {
                    user: ada,
                    limit: 5,
                },
                Some(ada),
            ),
            (Key::Post(her_post), Some(ada)),
            (Key::Feed { limit: 20 }, None),
        ];
        let others = [
            (Key::User(bo), Some(bo)),
            (
                Key::UserPosts {
                    user: bo,
                    limit: 20,
                },
                Some(bo),
            ),
            (Key::Post(his_post), Some(bo)),
            (Key::Command(command), None),
        ];
        for (key, owner) in hers.iter().chain(&others) {
            assert!(fill(&cache, *key, body("x"), *owner), "{key:?}");
        }

        cache.invalidate(Some(&owners(&[ada])));

        for (key, _) in hers {
            assert_eq!(cache.get(&key, None), None, "{key:?} is stale");
        }
        for (key, _) in others {
            assert_eq!(cache.get(&key, None), Some(body("x")), "{key:?} is live");
        }
    }

    #[test]
    fn naming_a_post_makes_it_and_its_404_and_the_feed_stale() {
        let cache = cache(100);
        let [ada, post, unknown, other] = ids(&cache);
        fill(&cache, Key::Post(post), body("post"), Some(ada));
        fill(&cache, Key::Post(unknown), Answer::NotFound("post"), None);
        fill(&cache, Key::Post(other), body("other"), Some(ada));
        fill(&cache, Key::User(ada), body("ada"), Some(ada));
        fill(&cache, Key::Feed { limit: 20 }, body("feed"), None);
        assert_eq!(
            cache.get(&Key::Post(unknown), None),
            Some(Answer::NotFound("post"))
        );

        cache.invalidate(Some(&posts(&[post, unknown])));

        assert_eq!(cache.get(&Key::Post(post), None), None);
        assert_eq!(cache.get(&Key::Post(unknown), None), None);
        assert_eq!(cache.get(&Key::Feed { limit: 20 }, None), None);
        assert_eq!(cache.get(&Key::Post(other), None), Some(body("other")));
        assert_eq!(cache.get(&Key::User(ada), None), Some(body("ada")));
    }

    #[test]
    fn a_fill_that_an_invalidation_overtook_is_refused() {
        let cache = cache(100);
        let [ada, post] = ids(&cache);
        let key = Key::User(ada);

        // Fill begins (sequence read), a batch commits and its notice is applied, then the fill
        // ends with what it read before the commit.
        let stale = cache.begin_fill(|| offsets(&[(0, 5)]));
        cache.invalidate(Some(&owners(&[ada])));
        assert!(!cache.store(stale, key, body("before"), Some(ada)));
        assert_eq!(cache.get(&key, None), None);

        // The same for a post found missing: the notice names the post it published.
        let stale = cache.begin_fill(|| offsets(&[(0, 5)]));
        cache.invalidate(Some(&posts(&[post])));
        assert!(!cache.store(stale, Key::Post(post), Answer::NotFound("post"), None));
        assert_eq!(cache.get(&Key::Post(post), None), None);

        // And for a clear.
        let stale = cache.begin_fill(|| offsets(&[(0, 5)]));
        cache.invalidate(None);
        assert!(!cache.store(stale, key, body("before"), Some(ada)));

        // A fill that begins after the invalidation read after it: kept.
        let fresh = cache.begin_fill(|| offsets(&[(0, 6)]));
        assert!(cache.store(fresh, key, body("after"), Some(ada)));
        assert_eq!(cache.get(&key, None), Some(body("after")));
        assert_eq!(
            cache
                .inner
                .as_deref()
                .map(|i| i.counters.refused.load(Ordering::Relaxed)),
            Some(3)
        );
    }

    #[test]
    fn a_stale_fill_that_slips_past_the_check_is_never_served() {
        let cache = cache(100);
        let [ada] = ids(&cache);
        let inner = cache.inner.as_deref().expect("a cache");
        let key = Key::User(ada);
        let stale = cache.begin_fill(|| offsets(&[(0, 5)]));
        // The invalidation lands between the store's check and its insert: the insert goes in
        // regardless, as it would.
        cache.invalidate(Some(&owners(&[ada])));
        let entry = Entry {
            answer: body("before"),
            owner: Some(ada),
            sequence: stale.sequence,
            filled_under: stale.filled_under.expect("following"),
            weight: ENTRY_OVERHEAD,
        };
        let (kept, _) = write(inner.shard(&key))
            .insert(key, entry, (10, usize::MAX), &|k, e| inner.is_live(k, e));
        assert!(kept);
        assert_eq!(cache.get(&key, None), None);
    }

    #[test]
    fn a_later_fill_is_not_replaced_by_an_earlier_one() {
        let cache = cache(100);
        let [ada] = ids(&cache);
        let key = Key::User(ada);
        let earlier = cache.begin_fill(|| offsets(&[(0, 5)]));
        cache.invalidate(Some(&owners(&[ada])));
        let later = cache.begin_fill(|| offsets(&[(0, 6)]));
        assert!(cache.store(later, key, body("later"), Some(ada)));
        assert!(!cache.store(earlier, key, body("earlier"), Some(ada)));
        assert_eq!(cache.get(&key, None), Some(body("later")));
    }

    #[test]
    fn a_notice_that_does_not_say_what_changed_clears_everything() {
        let cache = cache(100);
        let [ada, post, command] = ids(&cache);
        for key in [Key::User(ada), Key::Post(post), Key::Command(command)] {
            fill(&cache, key, body("x"), None);
        }
        assert_eq!(cache.len(), 3);

        cache.invalidate(None);

        assert_eq!(cache.len(), 0);
        for key in [Key::User(ada), Key::Post(post), Key::Command(command)] {
            assert_eq!(cache.get(&key, None), None);
        }
    }

    #[test]
    fn a_token_is_served_only_by_an_entry_filled_under_watermarks_that_covered_it() {
        let cache = cache(100);
        let [ada, command] = ids(&cache);
        let token = |partition, offset| Some(ConsistencyToken { partition, offset });
        fill(&cache, Key::User(ada), body("ada"), Some(ada));
        fill(&cache, Key::Command(command), body("applied"), None);

        // Filled under next offset 5 on partition 0: offsets up to 4 are in it.
        assert_eq!(cache.get(&Key::User(ada), token(0, 4)), Some(body("ada")));
        assert_eq!(cache.get(&Key::User(ada), token(0, 5)), None);
        assert_eq!(cache.get(&Key::User(ada), token(1, 0)), None);
        assert_eq!(cache.get(&Key::User(ada), None), Some(body("ada")));
        // A decision, once made, is the same at any later offset.
        assert_eq!(
            cache.get(&Key::Command(command), token(1, 1000)),
            Some(body("applied"))
        );
    }

    #[test]
    fn a_decisions_404_is_never_kept() {
        let cache = cache(100);
        let [command] = ids(&cache);
        assert!(!fill(
            &cache,
            Key::Command(command),
            Answer::NotFound("command"),
            None
        ));
        assert_eq!(cache.get(&Key::Command(command), None), None);
    }

    #[test]
    fn a_suspended_cache_serves_and_keeps_nothing() {
        let cache = cache(100);
        let [ada] = ids(&cache);
        fill(&cache, Key::User(ada), body("ada"), Some(ada));
        let before = cache.begin_fill(|| offsets(&[(0, 5)]));

        cache.suspend();
        assert_eq!(cache.get(&Key::User(ada), None), None);
        assert!(!fill(&cache, Key::User(ada), body("ada"), Some(ada)));

        // A fill that began before the suspension is refused after the resumption too: its
        // read may predate notices that were lost.
        cache.resume();
        assert!(!cache.store(before, Key::User(ada), body("ada"), Some(ada)));
        assert_eq!(cache.get(&Key::User(ada), None), None);
        assert!(fill(&cache, Key::User(ada), body("ada"), Some(ada)));
        assert_eq!(cache.get(&Key::User(ada), None), Some(body("ada")));
    }

    #[test]
    fn a_fill_begun_while_suspended_needs_nothing_and_is_never_kept() {
        let cache = cache(100);
        let [ada] = ids(&cache);
        cache.suspend();
        let during = cache.begin_fill(|| panic!("no watermarks are needed"));
        assert!(during.filled_under().is_none());
        // Resumed while its read ran: still refused, as its read was held to nothing.
        cache.resume();
        assert!(!cache.store(during, Key::User(ada), body("ada"), Some(ada)));
        assert_eq!(cache.get(&Key::User(ada), None), None);
        let off = Cache::new(0, 0, &Metrics::default());
        assert!(
            off.begin_fill(|| offsets(&[(0, 5)]))
                .filled_under()
                .is_none()
        );
    }

    #[test]
    fn a_fill_hears_the_watermarks_after_its_sequence() {
        // The follower hears a batch's offsets, then invalidates. A fill whose sequence includes
        // that invalidation must have heard the offsets (and so asks a replica for the batch);
        // one whose sequence does not is refused. Here the invalidation lands while the fill
        // hears: were the watermarks read before the sequence, the fill would be kept under
        // watermarks from before the batch.
        let cache = cache(100);
        let [ada] = ids(&cache);
        let fill = cache.begin_fill(|| {
            cache.invalidate(Some(&owners(&[ada])));
            offsets(&[(0, 5)])
        });
        assert!(!cache.store(fill, Key::User(ada), body("before"), Some(ada)));
        assert_eq!(cache.get(&Key::User(ada), None), None);
    }

    #[test]
    fn a_cache_of_no_entries_keeps_nothing() {
        let cache = Cache::new(0, 1 << 20, &Metrics::default());
        cache.resume();
        let key = Key::User(Uuid::from_u128(1));
        assert!(!fill(&cache, key, body("x"), None));
        assert_eq!(cache.get(&key, None), None);
    }

    #[test]
    fn the_entry_bound_holds() {
        for max_entries in [1, 7, 8, 100] {
            let cache = cache(max_entries);
            for n in 0..1000 {
                fill(&cache, Key::User(Uuid::from_u128(n)), body("x"), None);
                assert!(
                    cache.len() <= max_entries,
                    "{} > {max_entries}",
                    cache.len()
                );
            }
            assert!(cache.len() >= max_entries / 2, "{} kept", cache.len());
        }
    }

    #[test]
    fn the_byte_bound_holds() {
        let max_bytes = 40 * (ENTRY_OVERHEAD + 100);
        let cache = Cache::new(1000, max_bytes, &Metrics::default());
        cache.resume();
        let hundred = Answer::Json {
            body: Bytes::from(vec![b'x'; 100]),
            etag: None,
        };
        for n in 0..1000 {
            let key = Key::Post(Uuid::from_u128(n));
            fill(&cache, key, hundred.clone(), None);
            assert!(
                cache.weight() <= max_bytes,
                "{} > {max_bytes}",
                cache.weight()
            );
        }
        assert!(cache.len() >= 8, "{} kept", cache.len());
        let huge = Answer::Json {
            body: Bytes::from(vec![b'x'; max_bytes]),
            etag: None,
        };
        assert!(!fill(&cache, Key::Feed { limit: 100 }, huge, None));
    }

    #[test]
    fn eviction_passes_over_recently_read_entries_and_takes_stale_ones_first() {
        let cache = Cache::with_shards(3, usize::MAX, 1, &Metrics::default());
        cache.resume();
        let [a, b, c, d, e] = ids(&cache);
        for id in [a, b, c] {
            fill(&cache, Key::User(id), body("x"), Some(id));
        }
        cache.get(&Key::User(a), None);

        fill(&cache, Key::User(d), body("x"), Some(d));
        let held = |id| cache.get(&Key::User(id), None).is_some();
        assert!(held(a) && !held(b) && held(c) && held(d));

        // a, c and d are all marked now; c is stale: it goes first.
        cache.invalidate(Some(&owners(&[c])));
        fill(&cache, Key::User(e), body("x"), Some(e));
        assert!(held(a) && held(d) && held(e));
        assert_eq!(cache.len(), 3);
    }
}
