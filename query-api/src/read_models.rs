//! The SQL: reads of the users, posts, decisions, aggregate_events and projector_offsets tables.
//!
//! The rows are shaped like the contract's JSON, so a row serializes straight into an answer.
//! Nothing here writes: the projector owns every table.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use events::progress::FIRST_GENERATION;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use crate::pagination::{Cursor, PageRequest, StreamCursor, StreamPageRequest};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct User {
    pub id: Uuid,
    pub display_name: String,
    pub bio: Option<String>,
    pub post_count: i64,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Post {
    pub id: Uuid,
    pub author_id: Uuid,
    pub title: String,
    pub body: String,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Decision {
    pub command_id: Uuid,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub aggregate_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

/// One applied event of a stream, as `GET /v1/streams/{id}/events` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct StreamEvent {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub version: i64,
    pub occurred_at: DateTime<Utc>,
    #[sqlx(try_from = "String")]
    pub data: EventData,
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

/// Read access to the read models of the active generation. Cheap to clone (shared handles).
///
/// Each read takes the pool of the generation active at that moment; a switch
/// ([`switch_to`](ReadModels::switch_to)) replaces it for the reads that follow, while reads in
/// flight finish on the old one.
#[derive(Debug, Clone)]
pub struct ReadModels {
    current: Arc<RwLock<Generation>>,
    /// The connection settings of the first generation's pool; the others add a search_path.
    /// Shared: every request clones the handle.
    base: Arc<PgConnectOptions>,
    max_connections: u32,
    acquire_timeout: Duration,
}

#[derive(Debug)]
struct Generation {
    name: String,
    pool: PgPool,
}

impl ReadModels {
    /// Reads through `pool`, the first generation's (`public`), until a switch.
    pub fn new(pool: PgPool) -> ReadModels {
        ReadModels {
            base: pool.connect_options(),
            max_connections: pool.options().get_max_connections(),
            acquire_timeout: pool.options().get_acquire_timeout(),
            current: Arc::new(RwLock::new(Generation {
                name: FIRST_GENERATION.to_owned(),
                pool,
            })),
        }
    }

    /// The generation (schema) reads go to now.
    pub fn generation(&self) -> String {
        self.read_current().name.clone()
    }

    fn pool(&self) -> PgPool {
        self.read_current().pool.clone()
    }

    fn read_current(&self) -> std::sync::RwLockReadGuard<'_, Generation> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends every read from now on to generation `name`: a new lazy pool whose connections
    /// have that schema alone on their search_path. The old pool closes once its reads in
    /// flight are done.
    pub fn switch_to(&self, name: &str) -> Result<(), InvalidGeneration> {
        if !is_plain_identifier(name) {
            return Err(InvalidGeneration(name.to_owned()));
        }
        let options = if name == FIRST_GENERATION {
            self.base.as_ref().clone()
        } else {
            self.base.as_ref().clone().options([("search_path", name)])
        };
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_lazy_with(options);
        let old = std::mem::replace(
            &mut *self
                .current
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            Generation {
                name: name.to_owned(),
                pool,
            },
        );
        tracing::info!(from = %old.name, to = name, "reading from another read-model generation");
        tokio::spawn(async move { old.pool.close().await });
        Ok(())
    }

    /// A live user.
    pub async fn user(&self, id: Uuid) -> Result<Option<User>, sqlx::Error> {
        sqlx::query_as(USER)
            .bind(id)
            .fetch_optional(&self.pool())
            .await
    }

    pub async fn live_user_exists(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(LIVE_USER_EXISTS)
            .bind(id)
            .fetch_one(&self.pool())
            .await
    }

    /// A visible post: neither it nor its author deleted.
    pub async fn post(&self, id: Uuid) -> Result<Option<Post>, sqlx::Error> {
        sqlx::query_as(POST)
            .bind(id)
            .fetch_optional(&self.pool())
            .await
    }

    /// Visible posts of everyone, newest first: up to `page.rows_to_fetch()` rows.
    pub async fn feed(&self, page: &PageRequest) -> Result<Vec<Post>, sqlx::Error> {
        let rows = page.rows_to_fetch();
        match page.after {
            None => {
                sqlx::query_as(FEED_FIRST)
                    .bind(rows)
                    .fetch_all(&self.pool())
                    .await
            }
            Some(after) => {
                sqlx::query_as(FEED_AFTER)
                    .bind(rows)
                    .bind(after.created_at)
                    .bind(after.id)
                    .fetch_all(&self.pool())
                    .await
            }
        }
    }

    /// Visible posts of one author, newest first: up to `page.rows_to_fetch()` rows.
    pub async fn posts_by_author(
        &self,
        author_id: Uuid,
        page: &PageRequest,
    ) -> Result<Vec<Post>, sqlx::Error> {
        let rows = page.rows_to_fetch();
        match page.after {
            None => {
                sqlx::query_as(BY_AUTHOR_FIRST)
                    .bind(author_id)
                    .bind(rows)
                    .fetch_all(&self.pool())
                    .await
            }
            Some(after) => {
                sqlx::query_as(BY_AUTHOR_AFTER)
                    .bind(author_id)
                    .bind(rows)
                    .bind(after.created_at)
                    .bind(after.id)
                    .fetch_all(&self.pool())
                    .await
            }
        }
    }

    /// Applied events of one aggregate from `page.start_version` on, in version order: up to
    /// `page.rows_to_fetch()` rows.
    pub async fn stream(
        &self,
        aggregate_id: Uuid,
        page: &StreamPageRequest,
    ) -> Result<Vec<StreamEvent>, sqlx::Error> {
        sqlx::query_as(STREAM)
            .bind(aggregate_id)
            .bind(page.start_version)
            .bind(page.rows_to_fetch())
            .fetch_all(&self.pool())
            .await
    }

    /// True once any event of the aggregate was applied, deleted or not.
    pub async fn stream_exists(&self, aggregate_id: Uuid) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(STREAM_EXISTS)
            .bind(aggregate_id)
            .fetch_one(&self.pool())
            .await
    }

    pub async fn decision(&self, command_id: Uuid) -> Result<Option<Decision>, sqlx::Error> {
        sqlx::query_as(DECISION)
            .bind(command_id)
            .fetch_optional(&self.pool())
            .await
    }

    /// The projector's next offset to apply on one partition of `topic`, if it has started there.
    pub async fn next_offset(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar(NEXT_OFFSET)
            .bind(topic)
            .bind(partition)
            .fetch_optional(&self.pool())
            .await
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool())
            .await
            .map(drop)
    }
}

/// The active read-model generation as the catalogue says; the first one (`public`) when the
/// database has no catalogue (yet) or no active row.
pub async fn active_generation<'c, E>(executor: E) -> Result<String, sqlx::Error>
where
    E: sqlx::PgExecutor<'c>,
{
    let active: Result<Option<String>, sqlx::Error> =
        sqlx::query_scalar("SELECT name FROM public.read_model_generations WHERE state = 'active'")
            .fetch_optional(executor)
            .await;
    match active {
        Ok(active) => Ok(active.unwrap_or_else(|| FIRST_GENERATION.to_owned())),
        // undefined_table: a database the projector has not migrated that far.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
            Ok(FIRST_GENERATION.to_owned())
        }
        Err(e) => Err(e),
    }
}

/// A generation name that is no plain schema name: never put into a search_path.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a read-model generation name")]
pub struct InvalidGeneration(pub String);

/// Lower-case letters, digits and underscores, not starting with a digit: needs no quoting.
pub fn is_plain_identifier(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
