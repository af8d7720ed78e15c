//! How a batch of records becomes read-model rows: a handful of statements, whatever its size.
//!
//! 1. **Decode** every record; what is not an event becomes a dead letter.
//! 2. **Load**, in one statement per table, every row the batch's events can read: the decisions
//!    of their command ids, the holders of their idempotency keys, their users and their posts.
//! 3. **Decide** each event in log order with [`decide`], against a `WorkingSet` of those rows
//!    that each applied event updates in memory, so that later events of the batch see earlier
//!    ones exactly as they would after a commit.
//! 4. **Write** the final state of every changed row and every new decision, key, history entry
//!    and dead letter, one `UNNEST` statement per table.
//!
//! The store calls this for a whole batch, or for one record at a time in savepoints when a
//! statement failed and the culprit must be isolated; the property test in
//! `tests/it/determinism.rs` checks that both ways, cut anywhere, give the same read model.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use events::{AggregateType, Envelope, Event};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::decide::{Aggregate, Decision, Given, Reason, decide};
use crate::error::StoreError;
use crate::outcome::BatchOutcome;
use crate::record::{DeadLetter, Record};

/// A user row as the read model holds it.
#[derive(Debug, Clone)]
struct UserRow {
    display_name: String,
    bio: Option<String>,
    post_count: i64,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

/// A post row as the read model holds it.
#[derive(Debug, Clone)]
struct PostRow {
    author_id: Uuid,
    title: String,
    body: String,
    format: String,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    author_deleted: bool,
}

/// The rows a batch reads, as its events change them, and what it will write.
#[derive(Default)]
struct WorkingSet {
    decided: HashSet<Uuid>,
    key_holders: HashMap<(Uuid, String), Uuid>,
    users: HashMap<Uuid, UserRow>,
    posts: HashMap<Uuid, PostRow>,
    changed_users: BTreeSet<Uuid>,
    changed_posts: BTreeSet<Uuid>,
    deleted_authors: Vec<Uuid>,
    decisions: Vec<(Uuid, Decision, usize)>,
    new_keys: Vec<(Uuid, String, Uuid)>,
    history: Vec<(i64, usize)>,
}

/// Decides and applies `records` (all fresh, in log order per partition) on `conn`. The `live`
/// projector decides each event in a span of its own (`event_span`); a replay does not (a
/// rebuild would add a million spans to old traces, or make a million new ones).
pub async fn project(
    conn: &mut PgConnection,
    topic: &str,
    records: &[&Record],
    outcome: &mut BatchOutcome,
    live: bool,
) -> Result<(), StoreError> {
    let mut dead = Vec::new();
    let mut envelopes = Vec::with_capacity(records.len());
    for record in records {
        match record.payload.as_deref().map(Envelope::decode) {
            Some(Ok(envelope)) => envelopes.push((envelope, *record)),
            Some(Err(e)) => {
                tracing::warn!(partition = record.partition, offset = record.offset, error = %e, "undecodable record; dead-lettered");
                dead.push(DeadLetter {
                    record,
                    error: e.to_string(),
                });
            }
            None => dead.push(DeadLetter {
                record,
                error: "record has no value".into(),
            }),
        }
    }
    let mut set = load(conn, &envelopes).await?;
    for (index, (envelope, record)) in envelopes.iter().enumerate() {
        let span = if live {
            event_span(envelope, record)
        } else {
            tracing::Span::none()
        };
        // Held over no await: deciding and applying in memory are synchronous.
        let _entered = span.enter();
        let given = set.given(envelope);
        let decision = decide(&given, envelope);
        match decision {
            Decision::Applied { .. } => span.record("decision", "applied"),
            Decision::Duplicate => span.record("decision", "duplicate"),
            Decision::Rejected(reason) => span
                .record("decision", "rejected")
                .record("reason", reason.as_str()),
        };
        if let Decision::Applied { version } = decision {
            if let Err(error) = set.apply(envelope, version) {
                tracing::error!(
                    command_id = %envelope.command_id,
                    partition = record.partition,
                    offset = record.offset,
                    error,
                    "event cannot be applied; dead-lettered"
                );
                dead.push(DeadLetter {
                    record,
                    error: format!("apply failed: {error}"),
                });
                continue;
            }
            set.history.push((version, index));
            outcome.changed_owners.insert(envelope.partition_key);
        }
        let counts = outcome.by_partition.entry(record.partition).or_default();
        match decision {
            Decision::Duplicate => {
                outcome.duplicates += 1;
                continue;
            }
            Decision::Applied { .. } => {
                outcome.applied += 1;
                counts.applied += 1;
            }
            Decision::Rejected(reason) => {
                *outcome.rejected.entry(reason.as_str()).or_default() += 1;
                counts.reject(reason);
            }
        }
        set.decided.insert(envelope.command_id);
        set.decisions.push((envelope.command_id, decision, index));
        if let Some(key) = &envelope.idempotency
            && decision != Decision::Rejected(Reason::IdempotencyKeyReused)
        {
            set.key_holders
                .insert((key.scope, key.key.clone()), envelope.command_id);
            set.new_keys
                .push((key.scope, key.key.clone(), envelope.command_id));
        }
    }
    outcome.dead_letters += dead.len() as u64;
    for letter in &dead {
        outcome
            .by_partition
            .entry(letter.record.partition)
            .or_default()
            .dead_letters += 1;
    }
    outcome.changed_posts.extend(&set.changed_posts);
    set.write(conn, &envelopes).await?;
    insert_dead_letters(conn, topic, &dead).await
}

/// The span of one event's decision, in which every line about the event is logged (command
/// id, partition, offset; the decision once made). When traces are on it continues the trace
/// of the write that appended the event (the record's `traceparent`), so that one trace shows
/// the write from its request to its decision, and links to the batch span whose transaction
/// puts it in the read model. The headers are read for that alone, never to decide.
fn event_span(envelope: &Envelope, record: &Record) -> tracing::Span {
    let span = tracing::info_span!(
        service_kit::telemetry::PROJECT_SPAN,
        command_id = %envelope.command_id,
        partition = record.partition,
        offset = record.offset,
        decision = tracing::field::Empty,
        reason = tracing::field::Empty,
    );
    service_kit::telemetry::continue_trace(&span, |name| {
        let (_, value) = record.headers.iter().find(|(key, _)| key == name)?;
        std::str::from_utf8(value.as_deref()?).ok()
    });
    span
}

/// Reads every row the events can look at, one statement per table.
async fn load(
    conn: &mut PgConnection,
    envelopes: &[(Envelope, &Record)],
) -> Result<WorkingSet, StoreError> {
    let mut set = WorkingSet::default();
    let commands: Vec<Uuid> = envelopes.iter().map(|(e, _)| e.command_id).collect();
    let users: Vec<Uuid> = envelopes.iter().map(|(e, _)| e.partition_key).collect();
    let posts: Vec<Uuid> = envelopes
        .iter()
        .filter(|(e, _)| e.aggregate_type() == AggregateType::Post)
        .map(|(e, _)| e.aggregate_id)
        .collect();
    let (scopes, keys): (Vec<Uuid>, Vec<String>) = envelopes
        .iter()
        .filter_map(|(e, _)| e.idempotency.as_ref())
        .map(|i| (i.scope, i.key.clone()))
        .unzip();

    let decided: Vec<Uuid> =
        sqlx::query_scalar("SELECT command_id FROM decisions WHERE command_id = ANY($1)")
            .bind(&commands)
            .fetch_all(&mut *conn)
            .await?;
    set.decided.extend(decided);
    let holders = sqlx::query(
        "SELECT k.scope, k.key, k.command_id FROM idempotency_keys k
         JOIN unnest($1::uuid[], $2::text[]) AS wanted (scope, key) USING (scope, key)",
    )
    .bind(&scopes)
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?;
    for row in holders {
        set.key_holders.insert(
            (row.try_get("scope")?, row.try_get("key")?),
            row.try_get("command_id")?,
        );
    }
    let rows = sqlx::query(
        "SELECT id, display_name, bio, post_count, version, created_at, updated_at, deleted_at
         FROM users WHERE id = ANY($1)",
    )
    .bind(&users)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        set.users.insert(
            row.try_get("id")?,
            UserRow {
                display_name: row.try_get("display_name")?,
                bio: row.try_get("bio")?,
                post_count: row.try_get("post_count")?,
                version: row.try_get("version")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                deleted_at: row.try_get("deleted_at")?,
            },
        );
    }
    let rows = sqlx::query(
        "SELECT id, author_id, title, body, format, version, created_at, updated_at, deleted_at, author_deleted
         FROM posts WHERE id = ANY($1)",
    )
    .bind(&posts)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        set.posts.insert(
            row.try_get("id")?,
            PostRow {
                author_id: row.try_get("author_id")?,
                title: row.try_get("title")?,
                body: row.try_get("body")?,
                format: row.try_get("format")?,
                version: row.try_get("version")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                deleted_at: row.try_get("deleted_at")?,
                author_deleted: row.try_get("author_deleted")?,
            },
        );
    }
    Ok(set)
}

impl WorkingSet {
    /// What [`decide`] sees for `event`: only state of the event's own partition (its user, and
    /// the post only if it is that user's), so that a replay decides the same.
    fn given(&self, event: &Envelope) -> Given {
        let user = self.users.get(&event.partition_key);
        let post = (event.aggregate_type() == AggregateType::Post)
            .then(|| self.posts.get(&event.aggregate_id))
            .flatten()
            .filter(|p| p.author_id == event.partition_key);
        Given {
            already_decided: self.decided.contains(&event.command_id),
            key_holder: event
                .idempotency
                .as_ref()
                .and_then(|i| self.key_holders.get(&(i.scope, i.key.clone())).copied()),
            user: user.map(|u| Aggregate {
                version: u.version,
                deleted: u.deleted_at.is_some(),
            }),
            post: post.map(|p| Aggregate {
                version: p.version,
                deleted: p.deleted_at.is_some(),
            }),
        }
    }

    /// Applies an event [`decide`] applied; `version` is its aggregate's version afterwards.
    /// Fails only for a post id that already belongs to another user, which the command API
    /// never issues: such a record was written by something else.
    fn apply(&mut self, e: &Envelope, version: i64) -> Result<(), String> {
        let at = e.accepted_at;
        let user_id = e.partition_key;
        match &e.event {
            Event::UserRegistered(u) => {
                self.changed_users.insert(user_id);
                self.users.insert(
                    user_id,
                    UserRow {
                        display_name: u.display_name.clone(),
                        bio: u.bio.clone(),
                        post_count: 0,
                        version,
                        created_at: at,
                        updated_at: at,
                        deleted_at: None,
                    },
                );
            }
            Event::UserProfileUpdated(u) => {
                let user = self.user(user_id)?;
                if let Some(name) = &u.display_name {
                    user.display_name.clone_from(name);
                }
                if let Some(bio) = &u.bio {
                    user.bio = Some(bio.clone());
                }
                (user.version, user.updated_at) = (version, at);
            }
            Event::UserDeleted => {
                let user = self.user(user_id)?;
                (user.version, user.updated_at, user.deleted_at) = (version, at, Some(at));
                for post in self.posts.values_mut().filter(|p| p.author_id == user_id) {
                    post.author_deleted = true;
                }
                self.deleted_authors.push(user_id);
            }
            Event::PostPublished(p) => {
                if self.posts.contains_key(&e.aggregate_id) {
                    return Err(format!(
                        "post {} already belongs to another user",
                        e.aggregate_id
                    ));
                }
                self.posts.insert(
                    e.aggregate_id,
                    PostRow {
                        author_id: user_id,
                        title: p.title.clone(),
                        body: p.body.clone(),
                        format: p.format.as_str().to_owned(),
                        version,
                        created_at: at,
                        updated_at: at,
                        deleted_at: None,
                        author_deleted: false,
                    },
                );
                self.changed_posts.insert(e.aggregate_id);
                self.user(user_id)?.post_count += 1;
            }
            Event::PostEdited(p) => {
                let post = self.post(e.aggregate_id)?;
                if let Some(title) = &p.title {
                    post.title.clone_from(title);
                }
                if let Some(body) = &p.body {
                    post.body.clone_from(body);
                }
                (post.version, post.updated_at) = (version, at);
            }
            Event::PostDeleted => {
                let post = self.post(e.aggregate_id)?;
                (post.version, post.updated_at, post.deleted_at) = (version, at, Some(at));
                self.user(user_id)?.post_count -= 1;
            }
        }
        Ok(())
    }

    fn user(&mut self, id: Uuid) -> Result<&mut UserRow, String> {
        self.changed_users.insert(id);
        self.users
            .get_mut(&id)
            .ok_or_else(|| format!("user {id} is not in the read model"))
    }

    fn post(&mut self, id: Uuid) -> Result<&mut PostRow, String> {
        self.changed_posts.insert(id);
        self.posts
            .get_mut(&id)
            .ok_or_else(|| format!("post {id} is not in the read model"))
    }

    /// Writes every change, one statement per table. Users first: posts reference them.
    async fn write(
        &self,
        conn: &mut PgConnection,
        envelopes: &[(Envelope, &Record)],
    ) -> Result<(), StoreError> {
        self.write_users(conn).await?;
        self.write_posts(conn).await?;
        if !self.deleted_authors.is_empty() {
            // Also the author's posts this batch did not load.
            sqlx::query("UPDATE posts SET author_deleted = true WHERE author_id = ANY($1) AND NOT author_deleted")
                .bind(&self.deleted_authors)
                .execute(&mut *conn)
                .await?;
        }
        self.write_decisions(conn, envelopes).await?;
        self.write_history(conn, envelopes).await?;
        if !self.new_keys.is_empty() {
            let mut columns = (Vec::new(), Vec::new(), Vec::new());
            for (scope, key, command) in &self.new_keys {
                columns.0.push(*scope);
                columns.1.push(key.as_str());
                columns.2.push(*command);
            }
            sqlx::query(
                "INSERT INTO idempotency_keys (scope, key, command_id)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[])",
            )
            .bind(&columns.0)
            .bind(&columns.1)
            .bind(&columns.2)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }

    async fn write_users(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        if self.changed_users.is_empty() {
            return Ok(());
        }
        let rows: Vec<(&Uuid, &UserRow)> = self
            .changed_users
            .iter()
            .filter_map(|id| Some((id, self.users.get(id)?)))
            .collect();
        sqlx::query(
            "INSERT INTO users (id, display_name, bio, post_count, version, created_at, updated_at, deleted_at)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::int8[],
                                  $6::timestamptz[], $7::timestamptz[], $8::timestamptz[])
             ON CONFLICT (id) DO UPDATE SET
                display_name = EXCLUDED.display_name, bio = EXCLUDED.bio, post_count = EXCLUDED.post_count,
                version = EXCLUDED.version, updated_at = EXCLUDED.updated_at, deleted_at = EXCLUDED.deleted_at",
        )
        .bind(rows.iter().map(|(id, _)| **id).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, u)| u.display_name.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, u)| u.bio.as_deref()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, u)| u.post_count).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, u)| u.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, u)| u.created_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, u)| u.updated_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, u)| u.deleted_at).collect::<Vec<_>>())
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn write_posts(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        if self.changed_posts.is_empty() {
            return Ok(());
        }
        let rows: Vec<(&Uuid, &PostRow)> = self
            .changed_posts
            .iter()
            .filter_map(|id| Some((id, self.posts.get(id)?)))
            .collect();
        sqlx::query(
            "INSERT INTO posts (id, author_id, title, body, format, version, created_at, updated_at, deleted_at, author_deleted)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int8[],
                                  $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::bool[])
             ON CONFLICT (id) DO UPDATE SET
                title = EXCLUDED.title, body = EXCLUDED.body, version = EXCLUDED.version,
                updated_at = EXCLUDED.updated_at, deleted_at = EXCLUDED.deleted_at,
                author_deleted = EXCLUDED.author_deleted",
        )
        .bind(rows.iter().map(|(id, _)| **id).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, p)| p.author_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, p)| p.title.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, p)| p.body.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, p)| p.format.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, p)| p.version).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, p)| p.created_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, p)| p.updated_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, p)| p.deleted_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, p)| p.author_deleted).collect::<Vec<_>>())
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn write_decisions(
        &self,
        conn: &mut PgConnection,
        envelopes: &[(Envelope, &Record)],
    ) -> Result<(), StoreError> {
        if self.decisions.is_empty() {
            return Ok(());
        }
        let rows: Vec<(&Envelope, &Record, Decision)> = self
            .decisions
            .iter()
            .map(|(_, decision, i)| (&envelopes[*i].0, envelopes[*i].1, *decision))
            .collect();
        let status = |d: Decision| {
            if matches!(d, Decision::Applied { .. }) {
                "applied"
            } else {
                "rejected"
            }
        };
        let reason = |d: Decision| match d {
            Decision::Rejected(reason) => Some(reason.as_str()),
            _ => None,
        };
        let version = |d: Decision| match d {
            Decision::Applied { version } => Some(version),
            _ => None,
        };
        sqlx::query(
            "INSERT INTO decisions (command_id, status, reason, aggregate_id, version, event_id, event_type, kafka_partition, kafka_offset)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::int8[], $6::uuid[], $7::text[], $8::int[], $9::int8[])",
        )
        .bind(rows.iter().map(|(e, _, _)| e.command_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, d)| status(*d)).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, d)| reason(*d)).collect::<Vec<_>>())
        .bind(rows.iter().map(|(e, _, _)| e.aggregate_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, d)| version(*d)).collect::<Vec<_>>())
        .bind(rows.iter().map(|(e, _, _)| e.event_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|(e, _, _)| e.type_name()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, r, _)| r.partition).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, r, _)| r.offset).collect::<Vec<_>>())
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Appends every applied event to its aggregate's stream, at the version it gave it.
    async fn write_history(
        &self,
        conn: &mut PgConnection,
        envelopes: &[(Envelope, &Record)],
    ) -> Result<(), StoreError> {
        if self.history.is_empty() {
            return Ok(());
        }
        let rows: Vec<(i64, &Envelope, &Record)> = self
            .history
            .iter()
            .map(|(version, i)| (*version, &envelopes[*i].0, envelopes[*i].1))
            .collect();
        // The payload goes in as text and is cast: sqlx's json support is not compiled in.
        sqlx::query(
            "INSERT INTO aggregate_events (aggregate_id, version, event_id, event_type, aggregate_type, occurred_at, data, kafka_partition, kafka_offset)
             SELECT a, v, id, t, at, o, d::jsonb, p, k
             FROM unnest($1::uuid[], $2::int8[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[], $7::text[], $8::int[], $9::int8[])
                  AS n (a, v, id, t, at, o, d, p, k)",
        )
        .bind(rows.iter().map(|(_, e, _)| e.aggregate_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|(v, _, _)| *v).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, e, _)| e.event_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, e, _)| e.type_name()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, e, _)| e.aggregate_type().as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, e, _)| e.accepted_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, e, _)| e.event.data().to_string()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, r)| r.partition).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, _, r)| r.offset).collect::<Vec<_>>())
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Keeps records that cannot be projected, raw, with where they were and why.
pub async fn insert_dead_letters(
    conn: &mut PgConnection,
    topic: &str,
    dead: &[DeadLetter<'_>],
) -> Result<(), StoreError> {
    if dead.is_empty() {
        return Ok(());
    }
    let headers = |record: &Record| {
        let map: serde_json::Map<String, serde_json::Value> = record
            .headers
            .iter()
            .map(|(k, v)| {
                let value = v.as_deref().map_or(serde_json::Value::Null, |b| {
                    String::from_utf8_lossy(b).into_owned().into()
                });
                (k.clone(), value)
            })
            .collect();
        serde_json::Value::Object(map).to_string()
    };
    sqlx::query(
        "INSERT INTO dead_letters (topic, partition, kafka_offset, record_key, payload, headers, error)
         SELECT $1, p, o, k, v, h::jsonb, e
         FROM unnest($2::int[], $3::int8[], $4::bytea[], $5::bytea[], $6::text[], $7::text[]) AS n (p, o, k, v, h, e)
         ON CONFLICT (topic, partition, kafka_offset) DO NOTHING",
    )
    .bind(topic)
    .bind(dead.iter().map(|d| d.record.partition).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.record.offset).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.record.key.as_deref()).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.record.payload.as_deref()).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| headers(d.record)).collect::<Vec<_>>())
    .bind(dead.iter().map(|d| d.error.as_str()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}
