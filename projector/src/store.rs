//! The read models in PostgreSQL, and the projector's position in the log beside them.
//!
//! [`Store::commit_batch`] is the heart of the projector: in ONE transaction it checks that this
//! instance still owns each partition of the batch (the fence), decides and applies every event,
//! appends each applied one to its aggregate's history, records every decision, dead-letters what
//! cannot be decoded, advances the stored offsets and notifies waiting readers, naming what the
//! batch changed for their caches. Either all of that commits or none of it does. How the events
//! become rows, in a few bulk statements per batch, is [`crate::batch`].

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use events::Envelope;
use events::progress::{FIRST_GENERATION, ProgressNotice, is_plain_identifier};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::batch::{insert_dead_letters, project};
use crate::decide::Reason;
use crate::error::StoreError;
use crate::generations::{self, CATALOGUE};
use crate::log_ends::LogEnds;
use crate::outcome::BatchOutcome;
use crate::ownership::Claim;
use crate::record::{DeadLetter, Record};

/// The schema, applied at start-up. sqlx takes an advisory lock, so several instances may race.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Refuses a live database without the read model, or at another schema version than this
/// binary's migrations: the comparison would show the migration, not the projection.
pub(crate) async fn check_live_schema(live: &PgPool) -> anyhow::Result<()> {
    let row = sqlx::query(&format!(
        "SELECT to_regclass('{FIRST_GENERATION}.projector_offsets') IS NOT NULL AS has_offsets,
                to_regclass('{FIRST_GENERATION}._sqlx_migrations') IS NOT NULL AS has_migrations"
    ))
    .fetch_one(live)
    .await?;
    anyhow::ensure!(
        row.try_get::<bool, _>("has_offsets")? && row.try_get::<bool, _>("has_migrations")?,
        "the database has no read model to verify (no {FIRST_GENERATION}.projector_offsets): run the projector first"
    );
    let applied: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT max(version) FROM {FIRST_GENERATION}._sqlx_migrations WHERE success"
    ))
    .fetch_one(live)
    .await?;
    let ours = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .max();
    anyhow::ensure!(
        applied == ours,
        "the live read model's schema is at migration {applied:?}, this projector's at {ours:?}: \
         use the projector version that runs against this database"
    );
    Ok(())
}

/// One generation's read model and stored offsets, written a batch transaction at a time.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    topic: String,
    /// The read-model generation: the schema the tables are in.
    schema: String,
    /// The live read model (the active generation), or one being projected again beside it.
    live: bool,
    /// Where the partitions' log ends are heard, if anywhere.
    log_ends: Option<LogEnds>,
}

impl Store {
    /// A lazy pool: the projector starts while PostgreSQL is down and connects when it returns.
    pub fn connect_lazy(url: &str, topic: &str, pool_size: u32) -> anyhow::Result<Store> {
        Ok(Self::connect_lazy_with(
            url.parse()?,
            FIRST_GENERATION,
            topic,
            pool_size,
        ))
    }

    /// A store whose tables live in `schema` of the database at `url` instead of `public`: the
    /// connections' `search_path` is that schema alone, so the migrations and every statement
    /// here, which name tables unqualified, create and use that schema's tables unchanged. The
    /// schema must exist. For a generation other than the live one (such as `verify`'s scratch
    /// copy), which should also be made a [`replay`](Store::replay) store.
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
        Ok(Self::connect_lazy_with(options, schema, topic, pool_size))
    }

    fn connect_lazy_with(
        options: PgConnectOptions,
        schema: &str,
        topic: &str,
        pool_size: u32,
    ) -> Store {
        // A batch looks rows up by arrays of one to `--batch-size` ids. PostgreSQL caches a
        // prepared statement's generic plan after five runs and keeps it until the next ANALYZE
        // of its tables: a plan made while a table was small (a seq scan) then scans the whole
        // table for every batch as it grows, and one made for large arrays is wrong for small
        // ones. Planning each run costs microseconds; a scan of `decisions` costs milliseconds.
        let options = options.options([("plan_cache_mode", "force_custom_plan")]);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Store {
            pool,
            topic: topic.to_owned(),
            schema: schema.to_owned(),
            live: true,
            log_ends: None,
        }
    }

    /// The same store, for a generation projected again beside the live one (verify's scratch
    /// schema, a rebuild, a switch's catch-up). Its batches
    /// - send no progress notice: the query API would take it for the live read model's;
    /// - do not check the catalogue for a switch: it is not the active generation;
    /// - commit with `synchronous_commit = off`, a bulk load's setting: a crash can lose the last
    ///   few batches, but each one whole with its offsets, so the next run resumes before them.
    ///   Whatever later commits synchronously (a switch) makes them durable too.
    pub fn replay(mut self) -> Store {
        self.live = false;
        self
    }

    /// The same store, writing each partition's log end from `log_ends` with its offset.
    pub fn with_log_ends(mut self, log_ends: LogEnds) -> Store {
        self.log_ends = Some(log_ends);
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The read-model generation (schema) this store writes.
    pub fn schema(&self) -> &str {
        &self.schema
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

    /// Every partition's stored next offset, whoever owns it.
    pub async fn stored_offsets(&self) -> Result<BTreeMap<i32, i64>, sqlx::Error> {
        let rows: Vec<(i32, i64)> =
            sqlx::query_as("SELECT partition, next_offset FROM projector_offsets WHERE topic = $1")
                .bind(&self.topic)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
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
        if !self.live {
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }

        // A live store whose generation is no longer the active one (`projector switch` made
        // another one active) commits nothing: every partition counts as fenced, and the
        // projector follows the switch. The row lock orders this batch against the switch,
        // which takes the catalogue row FOR UPDATE before anything else.
        if self.live {
            let state: Option<String> = sqlx::query_scalar(&format!(
                "SELECT state FROM {CATALOGUE} WHERE name = $1 FOR KEY SHARE"
            ))
            .bind(&self.schema)
            .fetch_optional(&mut *tx)
            .await?;
            if state.is_some_and(|s| s != "active") {
                outcome.fenced = claims.keys().copied().collect();
                tx.rollback().await?;
                return Ok(outcome);
            }
        }

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

        let fresh: Vec<&Record> = records
            .iter()
            .filter(|r| {
                claims
                    .get(&r.partition)
                    .is_some_and(|c| r.offset >= c.next_offset)
                    && !outcome.fenced.contains(&r.partition)
            })
            .collect();
        if isolate {
            // The slow path: one record at a time, each in a savepoint, so that the record whose
            // statements fail is dead-lettered alone.
            for record in &fresh {
                let mut savepoint = sqlx::Connection::begin(&mut *tx).await?;
                let mut one = BatchOutcome::default();
                match project(
                    &mut savepoint,
                    &self.topic,
                    std::slice::from_ref(record),
                    &mut one,
                    self.live,
                )
                .await
                {
                    Ok(()) => {
                        savepoint.commit().await?;
                        outcome.changed_owners.append(&mut one.changed_owners);
                        outcome.changed_posts.append(&mut one.changed_posts);
                        outcome.absorb(one);
                    }
                    Err(StoreError::Statement(e)) => {
                        savepoint.rollback().await?;
                        let command_id = record
                            .payload
                            .as_deref()
                            .and_then(|payload| Envelope::decode(payload).ok())
                            .map(|envelope| envelope.command_id);
                        tracing::error!(command_id = command_id.map(tracing::field::display), partition = record.partition, offset = record.offset, error = %e, "event failed to apply; dead-lettered");
                        let failed = DeadLetter {
                            record,
                            error: format!("apply failed: {e}"),
                        };
                        insert_dead_letters(&mut tx, &self.topic, &[failed]).await?;
                        outcome.dead_letters += 1;
                        outcome
                            .by_partition
                            .entry(record.partition)
                            .or_default()
                            .dead_letters += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        } else {
            project(&mut tx, &self.topic, &fresh, &mut outcome, self.live).await?;
        }
        for record in &fresh {
            outcome
                .committed
                .insert(record.partition, record.offset + 1);
        }

        if !outcome.committed.is_empty() {
            self.advance_offsets(&mut tx, &outcome).await?;
        }
        if self.live && !outcome.committed.is_empty() {
            // Delivered on commit, never for a rolled-back batch.
            let notice = ProgressNotice::new(
                self.topic.clone(),
                outcome.committed.iter().map(|(p, o)| (*p, *o)).collect(),
                self.schema.clone(),
                outcome.changed_owners.iter().copied().collect(),
                outcome.changed_posts.iter().copied().collect(),
            );
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(events::progress::CHANNEL)
                .bind(serde_json::to_string(&notice).unwrap_or_default())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }
}

impl Store {
    /// Moves the committed partitions' offsets on, with their log ends and running counts:
    /// one statement, whatever the number of partitions.
    async fn advance_offsets(
        &self,
        tx: &mut sqlx::PgConnection,
        outcome: &BatchOutcome,
    ) -> Result<(), sqlx::Error> {
        let log_ends = self
            .log_ends
            .as_ref()
            .map(|ends| ends.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .unwrap_or_default();
        let mut columns = OffsetColumns::default();
        for (partition, next_offset) in &outcome.committed {
            let counts = outcome
                .by_partition
                .get(partition)
                .copied()
                .unwrap_or_default();
            columns.partition.push(*partition);
            columns.next_offset.push(*next_offset);
            columns.log_end.push(log_ends.get(partition).copied());
            columns.applied.push(counts.applied);
            for (column, n) in columns.rejected.iter_mut().zip(counts.rejected) {
                column.push(n);
            }
            columns.dead_letters.push(counts.dead_letters);
        }
        let [version_conflict, not_found, already_exists, key_reused] = &columns.rejected;
        // GREATEST skips NULLs: a log end heard before the batch's own records were appended
        // (or none heard) never shows the partition ahead of its log.
        sqlx::query(
            "UPDATE projector_offsets AS o SET next_offset = n.next_offset, updated_at = now(),
                log_end_offset = GREATEST(o.log_end_offset, n.log_end, n.next_offset),
                applied = o.applied + n.applied,
                rejected_version_conflict = o.rejected_version_conflict + n.version_conflict,
                rejected_not_found = o.rejected_not_found + n.not_found,
                rejected_already_exists = o.rejected_already_exists + n.already_exists,
                rejected_idempotency_key_reused =
                    o.rejected_idempotency_key_reused + n.idempotency_key_reused,
                dead_letters = o.dead_letters + n.dead_letters
             FROM unnest($2::int[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
                         $8::int8[], $9::int8[], $10::int8[])
                AS n (partition, next_offset, log_end, applied, version_conflict, not_found,
                      already_exists, idempotency_key_reused, dead_letters)
             WHERE o.topic = $1 AND o.partition = n.partition",
        )
        .bind(&self.topic)
        .bind(&columns.partition)
        .bind(&columns.next_offset)
        .bind(&columns.log_end)
        .bind(&columns.applied)
        .bind(version_conflict)
        .bind(not_found)
        .bind(already_exists)
        .bind(key_reused)
        .bind(&columns.dead_letters)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// [`Store::advance_offsets`]'s parameters, a column each.
#[derive(Default)]
struct OffsetColumns {
    partition: Vec<i32>,
    next_offset: Vec<i64>,
    log_end: Vec<Option<i64>>,
    applied: Vec<i64>,
    rejected: [Vec<i64>; Reason::ALL.len()],
    dead_letters: Vec<i64>,
}

/// The store of the active generation, handed to everything that writes the live read model;
/// replaced when the projector follows a switch. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ActiveStore {
    current: Arc<RwLock<Store>>,
    url: String,
    pool_size: u32,
}

impl ActiveStore {
    pub fn new(store: Store, url: &str, pool_size: u32) -> ActiveStore {
        ActiveStore {
            current: Arc::new(RwLock::new(store)),
            url: url.to_owned(),
            pool_size,
        }
    }

    /// The store to use now.
    pub fn get(&self) -> Store {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Moves to the catalogue's active generation if it is not this store's any more. True when
    /// it moved: every claim made in the old generation is void.
    pub async fn follow_active_generation(&self) -> anyhow::Result<bool> {
        let store = self.get();
        let active = generations::active_generation(store.pool()).await?;
        if active == store.schema() {
            return Ok(false);
        }
        let next = if active == FIRST_GENERATION {
            Store::connect_lazy(&self.url, &store.topic, self.pool_size)?
        } else {
            Store::connect_lazy_in_schema(&self.url, &active, &store.topic, self.pool_size)?
        };
        let next = match &store.log_ends {
            Some(log_ends) => next.with_log_ends(log_ends.clone()),
            None => next,
        };
        tracing::info!(from = store.schema(), to = %active, "following the switch to another read-model generation");
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        store.pool().close().await;
        Ok(true)
    }
}
