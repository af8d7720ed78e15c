//! Read replicas: hot standbys of the primary that reads are spread over, and how far each has
//! replayed.
//!
//! A standby replays the primary's WAL in commit order and only ever moves forward. So the
//! projector's offsets a standby shows at time t (its own `projector_offsets` rows for our topic,
//! in the active generation's schema) are a floor for every read on that standby after t: each
//! event below them is in what such a read sees. Each replica keeps the last offsets it was seen
//! at ([`ReplicaPool`]); a background task ([`crate::replica_monitor::Poller`]) refreshes them
//! every `REPLICA_POLL_MS`, and a read that needs more than was seen refreshes them once more on
//! the spot.
//!
//! Every read states what it needs ([`Requirement`]): the write a consistency token names, the
//! watermarks a cache fill is kept under (see [`crate::cache`]), or nothing. It goes, round robin,
//! to a healthy replica whose seen offsets meet that, or else to the primary
//! ([`crate::read_models::ReadModels::source`]).
//!
//! A replica is used for a generation only once its own catalogue names that generation active:
//! a standby that has not replayed the switch may hold the new schema half built. A replica that
//! cannot be reached is skipped for [`UNHEALTHY_FOR`] (or until a poll reaches it again), and the
//! read that found out is answered by the primary: a replica's outage is never the client's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use events::ConsistencyToken;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

use crate::catalogue;
use crate::offsets::Offsets;

/// How long a replica that failed to answer is passed over, unless a poll reaches it sooner.
pub const UNHEALTHY_FOR: Duration = Duration::from_secs(1);

/// The longest a read waits for a replica's connection (or a refresh for its answer) before
/// the primary answers instead, if `DB_ACQUIRE_TIMEOUT_MS` is not shorter: a replica that went
/// down costs the reads that find out this much, not the primary's whole wait.
pub const REPLICA_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(250);

/// What a read needs of the database that answers it: which of the projector's progress it must
/// already include. The default needs nothing, and any replica will do.
#[derive(Debug, Clone, Default)]
pub struct Requirement {
    token: Option<ConsistencyToken>,
    watermarks: Option<Arc<Offsets>>,
    primary_only: bool,
}

impl Requirement {
    /// A read that must include the write `token` names, if any.
    pub fn after(token: Option<ConsistencyToken>) -> Requirement {
        Requirement {
            token,
            ..Requirement::default()
        }
    }

    /// Also needs every partition at or past `watermarks` (next offsets).
    pub fn and_watermarks(self, watermarks: Arc<Offsets>) -> Requirement {
        Requirement {
            watermarks: Some(watermarks),
            ..self
        }
    }

    /// Needs what no replica's offsets can vouch for: only the primary will do.
    pub fn and_primary_only(self) -> Requirement {
        Requirement {
            primary_only: true,
            ..self
        }
    }

    pub fn token(&self) -> Option<ConsistencyToken> {
        self.token
    }

    pub fn is_primary_only(&self) -> bool {
        self.primary_only
    }

    /// True when a database that has applied `seen` (next offsets) includes all that is needed.
    pub fn is_met_by(&self, seen: &Offsets) -> bool {
        !self.primary_only
            && self.token.is_none_or(|token| {
                seen.get(&token.partition)
                    .is_some_and(|next| token.is_covered_by(*next))
            })
            && self.watermarks.as_deref().is_none_or(|needed| {
                needed
                    .iter()
                    .all(|(partition, next)| seen.get(partition).is_some_and(|seen| seen >= next))
            })
    }
}

/// One replica server, whatever the generation: its name in the metrics and its health.
#[derive(Debug)]
pub struct Replica {
    /// `replica_N`, N its place in `DATABASE_REPLICA_URLS`: a bounded label.
    pub label: String,
    /// Its connection settings; each generation adds its search_path.
    pub options: PgConnectOptions,
    /// Its pools' acquire timeout, also the bound on a refresh.
    pub acquire_timeout: Duration,
    /// Until when it is passed over, as nanoseconds since `epoch`; 0 when healthy.
    unhealthy_until: AtomicU64,
    /// Queries it answered, for `query_api_reads_total`.
    pub reads: AtomicU64,
    epoch: Instant,
}

impl Replica {
    /// Replica `index` (its place in the configuration), connected as `pool`.
    pub fn new(index: usize, pool: &PgPool) -> Replica {
        Replica {
            label: format!("replica_{index}"),
            options: (*pool.connect_options()).clone(),
            acquire_timeout: pool.options().get_acquire_timeout(),
            unhealthy_until: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub fn is_healthy(&self) -> bool {
        let until = self.unhealthy_until.load(Ordering::Relaxed);
        until == 0 || self.nanos_now() >= until
    }

    /// Passes the replica over for [`UNHEALTHY_FOR`]; says so in the log when it was healthy.
    pub fn mark_unhealthy(&self, error: &dyn std::fmt::Display) {
        let until = self.nanos_now() + UNHEALTHY_FOR.as_nanos() as u64;
        let was = self.unhealthy_until.swap(until.max(1), Ordering::Relaxed);
        if was == 0 {
            tracing::warn!(replica = %self.label, %error, "replica unreachable; reading from the primary");
        }
    }

    fn mark_healthy(&self) {
        if self.unhealthy_until.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!(replica = %self.label, "replica reachable again");
        }
    }

    fn nanos_now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One replica's pool for one generation, and the offsets it was last seen at there.
#[derive(Debug)]
pub struct ReplicaPool {
    pub pool: PgPool,
    seen: RwLock<Seen>,
    /// One refresh at a time: reads that all need more share one query.
    refreshing: tokio::sync::Mutex<()>,
    /// Refreshes begun, so that a read can tell whether one began after it asked.
    refreshes_begun: AtomicU64,
}

#[derive(Debug, Default)]
struct Seen {
    /// None until a refresh found the replica on this generation.
    offsets: Option<Arc<Offsets>>,
    /// The number of the refresh that found them.
    by_refresh: u64,
}

impl ReplicaPool {
    pub fn new(pool: PgPool) -> ReplicaPool {
        ReplicaPool {
            pool,
            seen: RwLock::new(Seen::default()),
            refreshing: tokio::sync::Mutex::new(()),
            refreshes_begun: AtomicU64::new(0),
        }
    }

    /// The offsets last seen, if the replica was found on this generation.
    pub fn seen(&self) -> Option<Arc<Offsets>> {
        self.read_seen().offsets.clone()
    }

    /// True when what was last seen meets `requirement`.
    pub fn meets(&self, requirement: &Requirement) -> bool {
        self.read_seen()
            .offsets
            .as_deref()
            .is_some_and(|seen| requirement.is_met_by(seen))
    }

    /// Meets `requirement` now, or after one refresh that began after this call: a read that
    /// needs more than was seen asks the replica once, sharing a refresh with the reads that
    /// asked at the same time.
    pub async fn meets_after_refresh(
        &self,
        requirement: &Requirement,
        replica: &Replica,
        generation: &str,
        topic: &str,
    ) -> bool {
        let asked_after = self.refreshes_begun.load(Ordering::SeqCst);
        let _one_at_a_time = self.refreshing.lock().await;
        if self.read_seen().by_refresh <= asked_after {
            self.refresh_locked(replica, generation, topic).await;
        }
        self.meets(requirement)
    }

    /// Reads the replica's offsets now (after any refresh under way).
    pub async fn refresh(&self, replica: &Replica, generation: &str, topic: &str) {
        let _one_at_a_time = self.refreshing.lock().await;
        self.refresh_locked(replica, generation, topic).await;
    }

    async fn refresh_locked(&self, replica: &Replica, generation: &str, topic: &str) {
        let number = self.refreshes_begun.fetch_add(1, Ordering::SeqCst) + 1;
        let found = tokio::time::timeout(
            replica.acquire_timeout,
            load_offsets(&self.pool, generation, topic),
        )
        .await;
        let offsets = match found {
            Ok(Ok(offsets)) => {
                replica.mark_healthy();
                offsets.map(Arc::new)
            }
            Ok(Err(error)) => {
                if let Failure::Outage = classify(&error) {
                    replica.mark_unhealthy(&error);
                } else {
                    tracing::debug!(replica = %replica.label, %error, "cannot read the replica's offsets");
                }
                // Still a floor: the replica only moves forward.
                return;
            }
            Err(_elapsed) => {
                replica.mark_unhealthy(&"no answer in time");
                return;
            }
        };
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        *seen = Seen {
            offsets,
            by_refresh: number,
        };
    }

    fn read_seen(&self) -> std::sync::RwLockReadGuard<'_, Seen> {
        self.seen.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The replica's offsets for `topic` in `generation`, if its catalogue names that generation
/// active; None if it names another (it has not replayed the switch yet, or is past it).
async fn load_offsets(
    pool: &PgPool,
    generation: &str,
    topic: &str,
) -> Result<Option<Offsets>, sqlx::Error> {
    let mut connection = pool.acquire().await?;
    if catalogue::active_generation(&mut *connection).await? != generation {
        return Ok(None);
    }
    // The pool's search_path is the generation's schema.
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT partition, next_offset FROM projector_offsets WHERE topic = $1")
            .bind(topic)
            .fetch_all(&mut *connection)
            .await?;
    Ok(Some(rows.into_iter().collect()))
}

/// What a replica's failed query means for the read that ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The replica cannot serve now: pass it over for a while, answer from the primary.
    Outage,
    /// The replica cannot serve this query (it lags behind a migration or a switch, or replay
    /// cancelled the query): answer from the primary.
    Behind,
    /// The query itself failed: the primary would fail the same way.
    Query,
}

/// SQLSTATE codes of a replica that is up but cannot answer this read.
const BEHIND_SQLSTATES: &[&str] = &[
    "40001", // serialization_failure: cancelled by a conflict with recovery
    "40P01", // deadlock_detected: the same, for a buffer pin
    "42P01", // undefined_table: not replayed that far
    "3F000", // invalid_schema_name: the generation not replayed yet
];

/// SQLSTATE codes of a replica that cannot serve at all right now, besides those of a dead
/// connection ([`is_dead_connection`]).
const OUTAGE_SQLSTATES: &[&str] = &[
    "57P03", // cannot_connect_now
    "53300", // too_many_connections
    "3D000", // invalid_catalog_name: no such database there
];

/// Whether `error` says the connection it came from is dead (a restart, a terminated
/// backend), not that the server refused the query: another connection may well answer.
pub fn is_dead_connection(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // admin_shutdown, crash_shutdown, and class 08: connection exceptions.
            code == "57P01" || code == "57P02" || code.starts_with("08")
        }),
        _ => false,
    }
}

pub fn classify(error: &sqlx::Error) -> Failure {
    if is_dead_connection(error) {
        return Failure::Outage;
    }
    match error {
        sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            Failure::Outage
        }
        sqlx::Error::Database(db) => match db.code() {
            Some(code) if OUTAGE_SQLSTATES.contains(&code.as_ref()) => Failure::Outage,
            Some(code) if BEHIND_SQLSTATES.contains(&code.as_ref()) => Failure::Behind,
            _ => Failure::Query,
        },
        _ => Failure::Query,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(pairs: &[(i32, i64)]) -> Offsets {
        pairs.iter().copied().collect()
    }

    fn token(partition: i32, offset: i64) -> Option<ConsistencyToken> {
        Some(ConsistencyToken { partition, offset })
    }

    #[test]
    fn nothing_needed_is_met_by_anything() {
        assert!(Requirement::default().is_met_by(&Offsets::new()));
        assert!(
            !Requirement::default()
                .and_primary_only()
                .is_met_by(&offsets(&[(0, 9)]))
        );
    }

    #[test]
    fn a_token_is_met_once_its_offset_was_applied() {
        let read = Requirement::after(token(1, 5));
        assert!(!read.is_met_by(&offsets(&[(0, 9)])), "another partition");
        assert!(
            !read.is_met_by(&offsets(&[(1, 5)])),
            "5 is the next to apply"
        );
        assert!(read.is_met_by(&offsets(&[(0, 0), (1, 6)])));
    }

    #[test]
    fn watermarks_are_met_when_every_partition_is_at_or_past_them() {
        let fill = Requirement::after(None).and_watermarks(Arc::new(offsets(&[(0, 5), (1, 7)])));
        assert!(fill.is_met_by(&offsets(&[(0, 5), (1, 7)])));
        assert!(fill.is_met_by(&offsets(&[(0, 6), (1, 9), (2, 1)])));
        assert!(!fill.is_met_by(&offsets(&[(0, 5), (1, 6)])));
        assert!(
            !fill.is_met_by(&offsets(&[(0, 5)])),
            "partition 1 never seen"
        );
        let with_token =
            Requirement::after(token(0, 5)).and_watermarks(Arc::new(offsets(&[(0, 5)])));
        assert!(
            !with_token.is_met_by(&offsets(&[(0, 5)])),
            "and the token still counts"
        );
    }

    #[test]
    fn connection_trouble_is_an_outage_and_a_bad_query_is_ours() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&sqlx::Error::Io(refused)), Failure::Outage);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Failure::Outage);
        assert_eq!(classify(&sqlx::Error::RowNotFound), Failure::Query);
    }

    #[tokio::test]
    async fn an_unhealthy_replica_is_passed_over_for_a_while() {
        let options: PgConnectOptions = "postgres://replica/db".parse().expect("url");
        let replica = Replica::new(0, &PgPool::connect_lazy_with(options));
        assert!(replica.is_healthy());
        replica.mark_unhealthy(&"refused");
        assert!(!replica.is_healthy());
        replica.mark_healthy();
        assert!(replica.is_healthy());
    }
}
