//! The read models in PostgreSQL, and the projector's position in the log beside them.
//!
//! [`Store::commit_batch`] is the heart of the projector: in ONE transaction it checks that this
//! instance still owns each partition of the batch (the fence), decides and applies every event,
//! appends each applied one to its aggregate's history, records every decision, dead-letters what
//! cannot be decoded, advances the stored offsets and notifies waiting readers. Either all of that
//! commits or none of it does.

use std::collections::BTreeMap;
use std::time::Duration;

use events::progress::ProgressNotice;
use events::{Envelope, Event};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::decide::{Aggregate, Decision, Given, Reason, decide};

/// The schema, applied at start-up. sqlx takes an advisory lock, so several instances may race.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// One record as read from Kafka, owned so it can outlive the consumer's buffer.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// This instance's claim on a partition: the epoch it claimed it at, and the offset the stored
/// position must still be at for this instance's next batch to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub epoch: i64,
    pub next_offset: i64,
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
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL is unreachable or went away; retrying later may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// A statement failed for a reason that will not go away on retry (a constraint, bad data).
    #[error("statement failed: {0}")]
    Statement(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_transient(&e) {
            StoreError::Unavailable(e)
        } else {
            StoreError::Statement(e)
        }
    }
}

/// True for errors that say PostgreSQL is unreachable or busy, not that a statement is wrong.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        // Connection exceptions, resource shortage, operator intervention, rollbacks.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["08", "53", "57", "40"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    topic: String,
    /// Whether a committed batch tells the query API (see [`events::progress`]). Only the live
    /// read model may: a reader would take any other store's progress for the live one's.
    notify_progress: bool,
}

impl Store {
    /// A lazy pool: the projector starts while PostgreSQL is down and connects when it returns.
    pub fn connect_lazy(url: &str, topic: &str, pool_size: u32) -> anyhow::Result<Store> {
        Ok(Self::connect_lazy_with(url.parse()?, topic, pool_size))
    }

    /// A store whose tables live in `schema` of the database at `url` instead of `public`: the
    /// connections' `search_path` is that schema alone, so the migrations and every statement
    /// here, which name tables unqualified, create and use that schema's tables unchanged. The
    /// schema must exist. For a generation other than the live one (such as `verify`'s scratch
    /// copy), which should also be built [`without_progress_notices`](Store::without_progress_notices).
    pub fn connect_lazy_in_schema(
        url: &str,
        schema: &str,
        topic: &str,
        pool_size: u32,
    ) -> anyhow::Result<Store> {
        anyhow::ensure!(
            is_plain_identifier(schema),
            "schema name {schema:?} must be lower-case letters, digits and underscores"
        );
        let options = url
            .parse::<PgConnectOptions>()?
            .options([("search_path", schema)]);
        Ok(Self::connect_lazy_with(options, topic, pool_size))
    }

    fn connect_lazy_with(options: PgConnectOptions, topic: &str, pool_size: u32) -> Store {
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Store {
            pool,
            topic: topic.to_owned(),
            notify_progress: true,
        }
    }

    /// The same store, but its batches send no progress notice: for read models the query API
    /// does not serve.
    pub fn without_progress_notices(mut self) -> Store {
        self.notify_progress = false;
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// Claims partitions for `owner`: bumps each one's epoch (fencing out any previous owner) and
    /// returns where to resume reading.
    pub async fn claim(
        &self,
        partitions: &[i32],
        owner: &str,
    ) -> Result<BTreeMap<i32, Claim>, StoreError> {
        let rows = sqlx::query(
            "INSERT INTO projector_offsets (topic, partition, next_offset, epoch, owner)
             SELECT $1, p, 0, 1, $3 FROM unnest($2::int[]) AS p
             ON CONFLICT (topic, partition) DO UPDATE
                SET epoch = projector_offsets.epoch + 1, owner = EXCLUDED.owner, claimed_at = now()
             RETURNING partition, next_offset, epoch",
        )
        .bind(&self.topic)
        .bind(partitions)
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("partition")?,
                    Claim {
                        next_offset: r.try_get("next_offset")?,
                        epoch: r.try_get("epoch")?,
                    },
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Decides and applies `records` in one transaction, if this instance still holds its
    /// `claims`. With `isolate`, each record runs in its own savepoint so that a record whose
    /// statements fail is dead-lettered instead of failing the batch (the slow path, taken
    /// after a [`StoreError::Statement`]).
    pub async fn commit_batch(
        &self,
        records: &[Record],
        claims: &BTreeMap<i32, Claim>,
        isolate: bool,
    ) -> Result<BatchOutcome, StoreError> {
        let mut outcome = BatchOutcome::default();
        let partitions: Vec<i32> = claims.keys().copied().collect();
        let mut tx = self.pool.begin().await?;

        // The fence: lock our partitions' rows and check nobody moved them since our claim.
        let rows = sqlx::query(
            "SELECT partition, next_offset, epoch FROM projector_offsets
             WHERE topic = $1 AND partition = ANY($2) FOR UPDATE",
        )
        .bind(&self.topic)
        .bind(&partitions)
        .fetch_all(&mut *tx)
        .await?;
        let mut stored = BTreeMap::new();
        for r in rows {
            stored.insert(
                r.try_get::<i32, _>("partition")?,
                Claim {
                    next_offset: r.try_get("next_offset")?,
                    epoch: r.try_get("epoch")?,
                },
            );
        }
        for (partition, claim) in claims {
            if stored.get(partition) != Some(claim) {
                outcome.fenced.push(*partition);
            }
        }

        for record in records {
            let Some(claim) = claims.get(&record.partition) else {
                continue;
            };
            if outcome.fenced.contains(&record.partition) || record.offset < claim.next_offset {
                continue;
            }
            if isolate {
                let mut savepoint = sqlx::Connection::begin(&mut *tx).await?;
                match self.project(&mut savepoint, record, &mut outcome).await {
                    Ok(()) => savepoint.commit().await?,
                    Err(StoreError::Statement(e)) => {
                        savepoint.rollback().await?;
                        tracing::error!(partition = record.partition, offset = record.offset, error = %e, "event failed to apply; dead-lettered");
                        self.dead_letter(&mut tx, record, &format!("apply failed: {e}"))
                            .await?;
                        outcome.dead_letters += 1;
                    }
                    Err(e) => return Err(e),
                }
            } else {
                self.project(&mut tx, record, &mut outcome).await?;
            }
            outcome
                .committed
                .insert(record.partition, record.offset + 1);
        }

        for (partition, next_offset) in &outcome.committed {
            sqlx::query(
                "UPDATE projector_offsets SET next_offset = $3, updated_at = now()
                 WHERE topic = $1 AND partition = $2",
            )
            .bind(&self.topic)
            .bind(partition)
            .bind(next_offset)
            .execute(&mut *tx)
            .await?;
        }
        if self.notify_progress && !outcome.committed.is_empty() {
            // Delivered on commit, never for a rolled-back batch.
            let notice = ProgressNotice {
                topic: self.topic.clone(),
                offsets: outcome.committed.iter().map(|(p, o)| (*p, *o)).collect(),
            };
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(events::progress::CHANNEL)
                .bind(serde_json::to_string(&notice).unwrap_or_default())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    /// Decodes, decides and applies one record.
    async fn project(
        &self,
        conn: &mut PgConnection,
        record: &Record,
        outcome: &mut BatchOutcome,
    ) -> Result<(), StoreError> {
        let envelope = match record.payload.as_deref().map(Envelope::decode) {
            Some(Ok(envelope)) => envelope,
            Some(Err(e)) => {
                tracing::warn!(partition = record.partition, offset = record.offset, error = %e, "undecodable record; dead-lettered");
                self.dead_letter(conn, record, &e.to_string()).await?;
                outcome.dead_letters += 1;
                return Ok(());
            }
            None => {
                self.dead_letter(conn, record, "record has no value")
                    .await?;
                outcome.dead_letters += 1;
                return Ok(());
            }
        };
        let given = load_given(conn, &envelope).await?;
        let decision = decide(&given, &envelope);
        match decision {
            Decision::Duplicate => {
                outcome.duplicates += 1;
                return Ok(());
            }
            Decision::Applied { version } => {
                apply(conn, &envelope, version).await?;
                record_history(conn, &envelope, version, record).await?;
                outcome.applied += 1;
            }
            Decision::Rejected(reason) => {
                *outcome.rejected.entry(reason.as_str()).or_default() += 1;
            }
        }
        record_decision(conn, &envelope, decision, record).await?;
        if let Some(idempotency) = &envelope.idempotency
            && decision != Decision::Rejected(Reason::IdempotencyKeyReused)
        {
            sqlx::query(
                "INSERT INTO idempotency_keys (scope, key, command_id) VALUES ($1, $2, $3)",
            )
            .bind(idempotency.scope)
            .bind(&idempotency.key)
            .bind(envelope.command_id)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        conn: &mut PgConnection,
        record: &Record,
        error: &str,
    ) -> Result<(), StoreError> {
        let headers: serde_json::Map<String, serde_json::Value> = record
            .headers
            .iter()
            .map(|(k, v)| {
                let value = v.as_deref().map_or(serde_json::Value::Null, |b| {
                    String::from_utf8_lossy(b).into_owned().into()
                });
                (k.clone(), value)
            })
            .collect();
        sqlx::query(
            "INSERT INTO dead_letters (topic, partition, kafka_offset, record_key, payload, headers, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (topic, partition, kafka_offset) DO NOTHING",
        )
        .bind(&self.topic)
        .bind(record.partition)
        .bind(record.offset)
        .bind(record.key.as_deref())
        .bind(record.payload.as_deref())
        .bind(serde_json::Value::Object(headers))
        .bind(error)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// A name that needs no quoting in SQL, so it can go into `search_path` and statements as is.
pub fn is_plain_identifier(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Reads what [`decide`] needs, in one round trip. All of it belongs to the event's partition.
async fn load_given(conn: &mut PgConnection, event: &Envelope) -> Result<Given, StoreError> {
    let post_id =
        (event.aggregate_type() == events::AggregateType::Post).then_some(event.aggregate_id);
    let row = sqlx::query(
        "SELECT
            EXISTS (SELECT 1 FROM decisions WHERE command_id = $1) AS already_decided,
            (SELECT command_id FROM idempotency_keys WHERE scope = $2 AND key = $3) AS key_holder,
            u.version AS user_version, u.deleted_at IS NOT NULL AS user_deleted,
            p.version AS post_version, p.deleted_at IS NOT NULL AS post_deleted
         FROM (SELECT 1) AS one
         LEFT JOIN users u ON u.id = $4
         LEFT JOIN posts p ON p.id = $5 AND p.author_id = $4",
    )
    .bind(event.command_id)
    .bind(event.idempotency.as_ref().map(|i| i.scope))
    .bind(event.idempotency.as_ref().map(|i| i.key.as_str()))
    .bind(event.partition_key)
    .bind(post_id)
    .fetch_one(&mut *conn)
    .await?;
    let aggregate =
        |version: Option<i64>, deleted: bool| version.map(|version| Aggregate { version, deleted });
    Ok(Given {
        already_decided: row.try_get("already_decided")?,
        key_holder: row.try_get("key_holder")?,
        user: aggregate(
            row.try_get("user_version")?,
            row.try_get::<Option<bool>, _>("user_deleted")?
                .unwrap_or(false),
        ),
        post: aggregate(
            row.try_get("post_version")?,
            row.try_get::<Option<bool>, _>("post_deleted")?
                .unwrap_or(false),
        ),
    })
}

/// Changes the read model for an applied event; `version` is the aggregate's version after it.
async fn apply(conn: &mut PgConnection, e: &Envelope, version: i64) -> Result<(), StoreError> {
    let at = e.accepted_at;
    match &e.event {
        Event::UserRegistered(u) => {
            sqlx::query(
                "INSERT INTO users (id, display_name, bio, version, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $5)",
            )
            .bind(e.aggregate_id)
            .bind(&u.display_name)
            .bind(&u.bio)
            .bind(version)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        Event::UserProfileUpdated(u) => {
            sqlx::query(
                "UPDATE users SET display_name = COALESCE($2, display_name), bio = COALESCE($3, bio),
                        version = $4, updated_at = $5
                 WHERE id = $1",
            )
            .bind(e.aggregate_id)
            .bind(&u.display_name)
            .bind(&u.bio)
            .bind(version)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        Event::UserDeleted => {
            sqlx::query(
                "UPDATE users SET deleted_at = $2, version = $3, updated_at = $2 WHERE id = $1",
            )
            .bind(e.aggregate_id)
            .bind(at)
            .bind(version)
            .execute(&mut *conn)
            .await?;
            sqlx::query("UPDATE posts SET author_deleted = true WHERE author_id = $1")
                .bind(e.aggregate_id)
                .execute(&mut *conn)
                .await?;
        }
        Event::PostPublished(p) => {
            sqlx::query(
                "INSERT INTO posts (id, author_id, title, body, format, version, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            )
            .bind(e.aggregate_id)
            .bind(e.partition_key)
            .bind(&p.title)
            .bind(&p.body)
            .bind(p.format.as_str())
            .bind(version)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            adjust_post_count(conn, e.partition_key, 1).await?;
        }
        Event::PostEdited(p) => {
            sqlx::query(
                "UPDATE posts SET title = COALESCE($2, title), body = COALESCE($3, body), version = $4, updated_at = $5
                 WHERE id = $1",
            )
            .bind(e.aggregate_id)
            .bind(&p.title)
            .bind(&p.body)
            .bind(version)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        Event::PostDeleted => {
            sqlx::query(
                "UPDATE posts SET deleted_at = $2, version = $3, updated_at = $2 WHERE id = $1",
            )
            .bind(e.aggregate_id)
            .bind(at)
            .bind(version)
            .execute(&mut *conn)
            .await?;
            adjust_post_count(conn, e.partition_key, -1).await?;
        }
    }
    Ok(())
}

/// Appends an applied event to its aggregate's stream (`aggregate_events`), at the version it
/// gave the aggregate.
async fn record_history(
    conn: &mut PgConnection,
    e: &Envelope,
    version: i64,
    record: &Record,
) -> Result<(), StoreError> {
    // Bound as text and cast: the payload is JSON already, and sqlx's json support is not
    // compiled in.
    sqlx::query(
        "INSERT INTO aggregate_events (aggregate_id, version, event_id, event_type, aggregate_type, occurred_at, data, kafka_partition, kafka_offset)
         VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9)",
    )
    .bind(e.aggregate_id)
    .bind(version)
    .bind(e.event_id)
    .bind(e.type_name())
    .bind(e.aggregate_type().as_str())
    .bind(e.accepted_at)
    .bind(e.event.data().to_string())
    .bind(record.partition)
    .bind(record.offset)
    .execute(conn)
    .await?;
    Ok(())
}

async fn adjust_post_count(conn: &mut PgConnection, user: Uuid, by: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE users SET post_count = post_count + $2 WHERE id = $1")
        .bind(user)
        .bind(by)
        .execute(conn)
        .await?;
    Ok(())
}

async fn record_decision(
    conn: &mut PgConnection,
    e: &Envelope,
    decision: Decision,
    record: &Record,
) -> Result<(), StoreError> {
    let (status, reason, version) = match decision {
        Decision::Applied { version } => ("applied", None, Some(version)),
        Decision::Rejected(reason) => ("rejected", Some(reason.as_str()), None),
        Decision::Duplicate => return Ok(()),
    };
    sqlx::query(
        "INSERT INTO decisions (command_id, status, reason, aggregate_id, version, event_id, event_type, kafka_partition, kafka_offset)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(e.command_id)
    .bind(status)
    .bind(reason)
    .bind(e.aggregate_id)
    .bind(version)
    .bind(e.event_id)
    .bind(e.type_name())
    .bind(record.partition)
    .bind(record.offset)
    .execute(conn)
    .await?;
    Ok(())
}
