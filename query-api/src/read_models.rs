//! The SQL: reads of the users, posts, decisions, aggregate_events and projector_offsets tables,
//! on the primary or a replica ([`crate::replicas`]).
//!
//! The rows are shaped like the contract's JSON, so a row serializes straight into an answer.
//! Nothing here writes: the projector owns every table.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use events::progress::{FIRST_GENERATION, is_plain_identifier};
use serde::Serialize;
use service_kit::metrics::Metrics;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::offsets::Offsets;
use crate::pagination::{Cursor, PageRequest, StreamCursor, StreamPageRequest};
use crate::replicas::{self, Failure, Replica, ReplicaPool, Requirement};

/// A user, as `GET /v1/users/{user_id}` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
// For the schema only (additionalProperties: false): the rows are never deserialized.
#[serde(deny_unknown_fields)]
pub struct User {
    pub id: Uuid,
    pub display_name: String,
    /// Null when the user never set one.
    #[schema(required = true)]
    pub bio: Option<String>,
    /// The user's live posts.
    #[schema(minimum = 0)]
    pub post_count: i64,
    /// 1 on creation, one more for every applied event; the ETag.
    #[schema(minimum = 1)]
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A post, as `GET /v1/posts/{post_id}` and the pages answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Post {
    pub id: Uuid,
    pub author_id: Uuid,
    pub title: String,
    pub body: String,
    /// 1 on creation, one more for every applied event; the ETag.
    #[schema(minimum = 1)]
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Post {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

/// The projector's decision on a command, as `GET /v1/commands/{command_id}` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub command_id: Uuid,
    #[schema(schema_with = decision_status)]
    pub status: String,
    /// Why it was rejected (rejections only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = rejection_reason)]
    pub reason: Option<String>,
    pub aggregate_id: Uuid,
    /// The aggregate's version after the command (applied commands only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, nullable = false)]
    pub version: Option<i64>,
}

fn decision_status() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["applied", "rejected"]))
        .build()
}

/// The projector's reasons (projector/src/decide.rs), which contract v1 lists; the query API
/// does not depend on the projector, so they are repeated here.
fn rejection_reason() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some([
            "version_conflict",
            "not_found",
            "already_exists",
            "idempotency_key_reused",
        ]))
        .build()
}

/// One applied event of a stream, as `GET /v1/streams/{id}/events` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamEvent {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    #[schema(schema_with = event_type)]
    pub event_type: String,
    /// The aggregate's version this event made.
    #[schema(minimum = 1)]
    pub version: i64,
    pub occurred_at: DateTime<Utc>,
    /// The event's payload, as its type's current schema version has it.
    #[sqlx(try_from = "String")]
    #[schema(value_type = Object)]
    pub data: EventData,
}

fn event_type() -> utoipa::openapi::schema::Object {
    use events::event_type::types::*;
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some([
            USER_REGISTERED,
            USER_PROFILE_UPDATED,
            USER_DELETED,
            POST_PUBLISHED,
            POST_EDITED,
            POST_DELETED,
        ]))
        .build()
}

impl StreamEvent {
    pub fn cursor(&self) -> StreamCursor {
        StreamCursor {
            version: self.version,
        }
    }
}

/// An event's payload. Stored as jsonb, read as its text (sqlx's json support is not compiled
/// in) and answered as the JSON it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct EventData(pub serde_json::Value);

impl TryFrom<String> for EventData {
    type Error = serde_json::Error;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        serde_json::from_str(&text).map(EventData)
    }
}

const USER: &str = "SELECT id, display_name, bio, post_count, version, created_at, updated_at \
     FROM users WHERE id = $1 AND deleted_at IS NULL";

const LIVE_USER_EXISTS: &str =
    "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND deleted_at IS NULL)";

const POST: &str = "SELECT id, author_id, title, body, version, created_at, updated_at \
     FROM posts WHERE id = $1 AND deleted_at IS NULL AND NOT author_deleted";

// The page queries come in pairs (first page, later page) rather than one query with an
// optional bound, so each matches its partial index (posts_feed, posts_by_author) directly.
const FEED_FIRST: &str = "SELECT id, author_id, title, body, version, created_at, updated_at \
     FROM posts WHERE deleted_at IS NULL AND NOT author_deleted \
     ORDER BY created_at DESC, id DESC LIMIT $1";

const FEED_AFTER: &str = "SELECT id, author_id, title, body, version, created_at, updated_at \
     FROM posts WHERE deleted_at IS NULL AND NOT author_deleted AND (created_at, id) < ($2, $3) \
     ORDER BY created_at DESC, id DESC LIMIT $1";

const BY_AUTHOR_FIRST: &str = "SELECT id, author_id, title, body, version, created_at, updated_at \
     FROM posts WHERE author_id = $1 AND deleted_at IS NULL AND NOT author_deleted \
     ORDER BY created_at DESC, id DESC LIMIT $2";

const BY_AUTHOR_AFTER: &str = "SELECT id, author_id, title, body, version, created_at, updated_at \
     FROM posts WHERE author_id = $1 AND deleted_at IS NULL AND NOT author_deleted \
     AND (created_at, id) < ($3, $4) \
     ORDER BY created_at DESC, id DESC LIMIT $2";

const STREAM: &str = "SELECT event_id, event_type, version, occurred_at, data::text AS data \
     FROM aggregate_events WHERE aggregate_id = $1 AND version >= $2 \
     ORDER BY version LIMIT $3";

const STREAM_EXISTS: &str =
    "SELECT EXISTS (SELECT 1 FROM aggregate_events WHERE aggregate_id = $1)";

const DECISION: &str =
    "SELECT command_id, status, reason, aggregate_id, version FROM decisions WHERE command_id = $1";

const NEXT_OFFSET: &str =
    "SELECT next_offset FROM projector_offsets WHERE topic = $1 AND partition = $2";

/// Read access to the read models of the active generation, on the primary and its replicas.
/// Cheap to clone (a shared handle).
///
/// A read asks for a [`Source`] ([`source`](ReadModels::source)) and runs its queries there:
/// the pools of the generation active at that moment, and the primary or a replica as its
/// [`Requirement`] allows. A switch ([`switch_to`](ReadModels::switch_to)) replaces the
/// generation for the reads that follow, while reads in flight finish on the old one.
#[derive(Debug, Clone)]
pub struct ReadModels {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    current: RwLock<Arc<Generation>>,
    /// The connection settings of the first generation's pool; the others add a search_path.
    primary: PgConnectOptions,
    replicas: Box<[Replica]>,
    /// Where the next read's round over the replicas starts.
    next_replica: AtomicUsize,
    max_connections: u32,
    acquire_timeout: Duration,
    /// The topic whose offsets the replicas are seen at.
    topic: String,
    metrics: Metrics,
    /// Queries the primary answered (each replica counts its own): counted where a query runs,
    /// without the metrics' lock, and sampled at scrape time.
    primary_reads: AtomicU64,
}

/// One generation's pools: the primary's and one per replica, in configuration order. Closed
/// once no read holds it any more.
#[derive(Debug)]
struct Generation {
    name: String,
    pool: PgPool,
    replicas: Box<[ReplicaPool]>,
}

impl Drop for Generation {
    fn drop(&mut self) {
        // Closing says goodbye to the server rather than dropping the connections; no read can
        // be using them now. Outside a runtime (the process ending) dropping is all there is.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pools: Vec<PgPool> = std::iter::once(self.pool.clone())
                .chain(self.replicas.iter().map(|replica| replica.pool.clone()))
                .collect();
            runtime.spawn(async move {
                for pool in pools {
                    pool.close().await;
                }
            });
        }
    }
}

impl ReadModels {
    /// Reads through `primary` and `replicas` (pools of the first generation, `public`) until a
    /// switch; counts the reads by source in `metrics`. `topic` selects the replicas' offsets.
    pub fn new(
        primary: PgPool,
        replicas: Vec<PgPool>,
        topic: &str,
        metrics: &Metrics,
    ) -> ReadModels {
        let generation = Generation {
            name: FIRST_GENERATION.to_owned(),
            replicas: replicas.iter().cloned().map(ReplicaPool::new).collect(),
            pool: primary.clone(),
        };
        let read_models = ReadModels {
            shared: Arc::new(Shared {
                primary: (*primary.connect_options()).clone(),
                replicas: replicas
                    .iter()
                    .enumerate()
                    .map(|(index, pool)| Replica::new(index, pool))
                    .collect(),
                next_replica: AtomicUsize::new(0),
                max_connections: primary.options().get_max_connections(),
                acquire_timeout: primary.options().get_acquire_timeout(),
                topic: topic.to_owned(),
                metrics: metrics.clone(),
                current: RwLock::new(Arc::new(generation)),
                primary_reads: AtomicU64::new(0),
            }),
        };
        // Weak: the registry must not keep the pools alive after the app is gone.
        let shared = Arc::downgrade(&read_models.shared);
        metrics.sampled_counter(
            "query_api_reads_total",
            "Database queries of reads, by where they were answered: the primary or replica_N.",
            move || {
                let Some(shared) = shared.upgrade() else {
                    return Vec::new();
                };
                std::iter::once(("primary".to_owned(), &shared.primary_reads))
                    .chain(shared.replicas.iter().map(|r| (r.label.clone(), &r.reads)))
                    .map(|(source, reads)| {
                        (
                            vec![("source", source)],
                            reads.load(Ordering::Relaxed) as f64,
                        )
                    })
                    .collect()
            },
        );
        // Every replica's fallback series from the start, so that a rate over them has it.
        for replica in &read_models.shared.replicas {
            count_fallback(metrics, &replica.label, 0);
        }
        read_models
    }

    /// The generation (schema) reads go to now.
    pub fn generation(&self) -> String {
        self.current().name.clone()
    }

    fn current(&self) -> Arc<Generation> {
        self.shared
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The active generation's name and its pool on the primary, for reads that must see the
    /// primary's state now (the status page).
    pub fn primary(&self) -> (String, PgPool) {
        let generation = self.current();
        (generation.name.clone(), generation.pool.clone())
    }

    /// The topic the read models are projected from.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    pub fn replica_count(&self) -> usize {
        self.shared.replicas.len()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Sends every read from now on to generation `name`: new lazy pools, on the primary and on
    /// each replica, whose connections have that schema alone on their search_path. The old
    /// pools close once their reads in flight are done.
    pub fn switch_to(&self, name: &str) -> Result<(), InvalidGeneration> {
        if !is_plain_identifier(name) {
            return Err(InvalidGeneration(name.to_owned()));
        }
        let shared = &self.shared;
        let pool_of = |base: &PgConnectOptions, acquire_timeout| {
            let options = if name == FIRST_GENERATION {
                base.clone()
            } else {
                base.clone().options([("search_path", name)])
            };
            read_pool(shared.max_connections, acquire_timeout, options)
        };
        let generation = Generation {
            name: name.to_owned(),
            pool: pool_of(&shared.primary, shared.acquire_timeout),
            replicas: shared
                .replicas
                .iter()
                .map(|replica| ReplicaPool::new(pool_of(&replica.options, replica.acquire_timeout)))
                .collect(),
        };
        let old = std::mem::replace(
            &mut *shared
                .current
                .write()
                .unwrap_or_else(PoisonError::into_inner),
            Arc::new(generation),
        );
        tracing::info!(from = %old.name, to = name, "reading from another read-model generation");
        Ok(())
    }

    /// Where a read that needs `requirement` runs its queries: round robin over the healthy
    /// replicas whose offsets, as last seen, meet it; else the first healthy one of the round,
    /// if asking it once more shows that it does; else the primary. Without replicas, at once
    /// the primary.
    pub async fn source(&self, requirement: &Requirement) -> Source {
        let generation = self.current();
        let replicas = &generation.replicas;
        if replicas.is_empty() || requirement.is_primary_only() {
            return self.source_at(generation, None);
        }
        let shared = &self.shared;
        let start = shared.next_replica.fetch_add(1, Ordering::Relaxed);
        let mut candidate = None;
        for step in 0..replicas.len() {
            let index = (start + step) % replicas.len();
            if !shared.replicas[index].is_healthy() {
                continue;
            }
            if replicas[index].meets(requirement) {
                return self.source_at(generation, Some(index));
            }
            candidate.get_or_insert(index);
        }
        if let Some(index) = candidate
            && replicas[index]
                .meets_after_refresh(
                    requirement,
                    &shared.replicas[index],
                    &generation.name,
                    &shared.topic,
                )
                .await
        {
            return self.source_at(generation, Some(index));
        }
        self.source_at(generation, None)
    }

    fn source_at(&self, generation: Arc<Generation>, replica: Option<usize>) -> Source {
        Source {
            generation,
            replica: replica.map(|index| (index, AtomicBool::new(false))),
            read_models: self.clone(),
        }
    }

    /// Reads replica `index`'s offsets in the active generation now.
    pub async fn refresh_replica(&self, index: usize) {
        let generation = self.current();
        let shared = &self.shared;
        if let (Some(pool), Some(replica)) =
            (generation.replicas.get(index), shared.replicas.get(index))
        {
            pool.refresh(replica, &generation.name, &shared.topic).await;
        }
    }

    /// Each replica's label and the offsets it was last seen at in the active generation.
    pub fn replicas_seen(&self) -> Vec<(String, Option<Arc<Offsets>>)> {
        let generation = self.current();
        self.shared
            .replicas
            .iter()
            .zip(generation.replicas.iter())
            .map(|(replica, pool)| (replica.label.clone(), pool.seen()))
            .collect()
    }

    /// Each replica's label and whether it is read from.
    pub fn replica_health(&self) -> Vec<(String, bool)> {
        self.shared
            .replicas
            .iter()
            .map(|replica| (replica.label.clone(), replica.is_healthy()))
            .collect()
    }

    /// The projector's next offset to apply on one partition of `topic`, if it has started
    /// there, on the primary: what the token wait's last look at its deadline reads.
    pub async fn next_offset(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar(NEXT_OFFSET)
            .bind(topic)
            .bind(partition)
            .fetch_optional(&self.current().pool)
            .await
    }

    /// `SELECT 1` on the primary: the service is ready when it answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.current().pool)
            .await
            .map(drop)
    }
}

/// Where one read runs its queries: a generation's primary pool, or one of its replicas until
/// that fails to answer. Every query of a read goes to the same place, so that they see one
/// database moving forward, as on the primary alone.
#[derive(Debug)]
pub struct Source {
    generation: Arc<Generation>,
    /// The replica chosen, and whether it failed (the rest of the read goes to the primary).
    replica: Option<(usize, AtomicBool)>,
    read_models: ReadModels,
}

impl Source {
    /// Runs `query` on the replica chosen, or on the primary if none was or it fails to answer;
    /// counts where it was answered.
    async fn run<T, Query, Answer>(&self, query: Query) -> Result<T, sqlx::Error>
    where
        Query: Fn(PgPool) -> Answer,
        Answer: Future<Output = Result<T, sqlx::Error>>,
    {
        let shared = &self.read_models.shared;
        if let Some((index, failed)) = &self.replica
            && !failed.load(Ordering::Relaxed)
        {
            let replica = &shared.replicas[*index];
            match query(self.generation.replicas[*index].pool.clone()).await {
                Ok(rows) => {
                    replica.reads.fetch_add(1, Ordering::Relaxed);
                    return Ok(rows);
                }
                Err(error) => match replicas::classify(&error) {
                    Failure::Query => return Err(error),
                    Failure::Outage => replica.mark_unhealthy(&error),
                    Failure::Behind => {
                        tracing::debug!(replica = %replica.label, %error, "replica cannot answer this read yet")
                    }
                },
            }
            failed.store(true, Ordering::Relaxed);
            count_fallback(&shared.metrics, &replica.label, 1);
        }
        let mut answer = query(self.generation.pool.clone()).await;
        // Connections are not pinged before use (see `read_pool`): one that died while idle (a
        // restart, a terminated backend) fails at once, and the read, idempotent, tries again.
        // Each try drops a dead connection; past as many as the pool holds, PostgreSQL is down.
        let mut tries = 1;
        while answer.as_ref().is_err_and(replicas::is_dead_connection)
            && tries <= self.generation.pool.options().get_max_connections()
        {
            answer = query(self.generation.pool.clone()).await;
            tries += 1;
        }
        if answer.is_ok() {
            shared.primary_reads.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    /// A live user.
    pub async fn user(&self, id: Uuid) -> Result<Option<User>, sqlx::Error> {
        self.run(|pool| async move { sqlx::query_as(USER).bind(id).fetch_optional(&pool).await })
            .await
    }

    pub async fn live_user_exists(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        self.run(|pool| async move {
            sqlx::query_scalar(LIVE_USER_EXISTS)
                .bind(id)
                .fetch_one(&pool)
                .await
        })
        .await
    }

    /// A visible post: neither it nor its author deleted.
    pub async fn post(&self, id: Uuid) -> Result<Option<Post>, sqlx::Error> {
        self.run(|pool| async move { sqlx::query_as(POST).bind(id).fetch_optional(&pool).await })
            .await
    }

    /// Visible posts of everyone, newest first: up to `page.rows_to_fetch()` rows.
    pub async fn feed(&self, page: &PageRequest) -> Result<Vec<Post>, sqlx::Error> {
        let rows = page.rows_to_fetch();
        let after = page.after;
        self.run(|pool| async move {
            match after {
                None => sqlx::query_as(FEED_FIRST).bind(rows).fetch_all(&pool).await,
                Some(after) => {
                    sqlx::query_as(FEED_AFTER)
                        .bind(rows)
                        .bind(after.created_at)
                        .bind(after.id)
                        .fetch_all(&pool)
                        .await
                }
            }
        })
        .await
    }

    /// Visible posts of one author, newest first: up to `page.rows_to_fetch()` rows.
    pub async fn posts_by_author(
        &self,
        author_id: Uuid,
        page: &PageRequest,
    ) -> Result<Vec<Post>, sqlx::Error> {
        let rows = page.rows_to_fetch();
        let after = page.after;
        self.run(|pool| async move {
            match after {
                None => {
                    sqlx::query_as(BY_AUTHOR_FIRST)
                        .bind(author_id)
                        .bind(rows)
                        .fetch_all(&pool)
                        .await
                }
                Some(after) => {
                    sqlx::query_as(BY_AUTHOR_AFTER)
                        .bind(author_id)
                        .bind(rows)
                        .bind(after.created_at)
                        .bind(after.id)
                        .fetch_all(&pool)
                        .await
                }
            }
        })
        .await
    }

    /// Applied events of one aggregate from `page.start_version` on, in version order: up to
    /// `page.rows_to_fetch()` rows.
    pub async fn stream(
        &self,
        aggregate_id: Uuid,
        page: &StreamPageRequest,
    ) -> Result<Vec<StreamEvent>, sqlx::Error> {
        let (start_version, rows) = (page.start_version, page.rows_to_fetch());
        self.run(|pool| async move {
            sqlx::query_as(STREAM)
                .bind(aggregate_id)
                .bind(start_version)
                .bind(rows)
                .fetch_all(&pool)
                .await
        })
        .await
    }

    /// True once any event of the aggregate was applied, deleted or not.
    pub async fn stream_exists(&self, aggregate_id: Uuid) -> Result<bool, sqlx::Error> {
        self.run(|pool| async move {
            sqlx::query_scalar(STREAM_EXISTS)
                .bind(aggregate_id)
                .fetch_one(&pool)
                .await
        })
        .await
    }

    pub async fn decision(&self, command_id: Uuid) -> Result<Option<Decision>, sqlx::Error> {
        self.run(|pool| async move {
            sqlx::query_as(DECISION)
                .bind(command_id)
                .fetch_optional(&pool)
                .await
        })
        .await
    }
}

fn count_fallback(metrics: &Metrics, replica: &str, by: u64) {
    metrics.count(
        "query_api_replica_fallbacks_total",
        "Reads sent to a replica that could not answer them, and were answered by the primary.",
        vec![("replica", replica.to_owned())],
        by,
    );
}

/// A lazy pool for reads. It does not ping a connection before handing it out (sqlx's default
/// does: a round trip per query, without which cache-miss reads in `./dev bench reads` more
/// than doubled, 5,256/s to 12,021/s): a connection that broke while idle fails its query,
/// which [`Source`] then tries again on another.
pub fn read_pool(
    max_connections: u32,
    acquire_timeout: Duration,
    options: PgConnectOptions,
) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .connect_lazy_with(options)
}

/// A generation name that is no plain schema name: never put into a search_path.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a read-model generation name")]
pub struct InvalidGeneration(pub String);
