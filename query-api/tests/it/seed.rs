//! Rows as the projector would leave them.

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// A fixed, microsecond-precise moment to lay test data out around.
pub fn base_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_764_000_000, 123_456_000).expect("valid time")
}

pub fn at(seconds_after_base: i64) -> DateTime<Utc> {
    base_time() + TimeDelta::seconds(seconds_after_base)
}

pub async fn user(
    pool: &PgPool,
    display_name: &str,
    bio: Option<&str>,
    created_at: DateTime<Utc>,
) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO users (id, display_name, bio, post_count, version, created_at, updated_at) \
         VALUES ($1, $2, $3, 0, 1, $4, $4)",
    )
    .bind(id)
    .bind(display_name)
    .bind(bio)
    .bind(created_at)
    .execute(pool)
    .await
    .expect("insert user");
    id
}

pub async fn post(pool: &PgPool, author_id: Uuid, title: &str, created_at: DateTime<Utc>) -> Uuid {
    let id = Uuid::now_v7();
    post_with_id(pool, id, author_id, title, created_at).await;
    id
}

pub async fn post_with_id(
    pool: &PgPool,
    id: Uuid,
    author_id: Uuid,
    title: &str,
    created_at: DateTime<Utc>,
) {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO posts (id, author_id, title, body, version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 1, $5, $5)",
    )
    .bind(id)
    .bind(author_id)
    .bind(title)
    .bind(format!("body of {title}"))
    .bind(created_at)
    .execute(&mut *tx)
    .await
    .expect("insert post");
    sqlx::query("UPDATE users SET post_count = post_count + 1 WHERE id = $1")
        .bind(author_id)
        .execute(&mut *tx)
        .await
        .expect("count post");
    tx.commit().await.expect("commit");
}

/// A profile update: version and updated_at move on.
pub async fn update_user(pool: &PgPool, id: Uuid, display_name: &str) {
    sqlx::query("UPDATE users SET display_name = $2, version = version + 1, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(display_name)
        .execute(pool)
        .await
        .expect("update user");
}

pub async fn edit_post(pool: &PgPool, id: Uuid, title: &str) {
    sqlx::query(
        "UPDATE posts SET title = $2, version = version + 1, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(title)
    .execute(pool)
    .await
    .expect("edit post");
}

/// The user's row stays with deleted_at set; their posts disappear with them.
pub async fn delete_user(pool: &PgPool, id: Uuid) {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("UPDATE users SET deleted_at = now(), version = version + 1 WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .expect("delete user");
    sqlx::query("UPDATE posts SET author_deleted = true WHERE author_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .expect("hide posts");
    tx.commit().await.expect("commit");
}

pub async fn delete_post(pool: &PgPool, id: Uuid) {
    let mut tx = pool.begin().await.expect("begin");
    let author_id: Uuid = sqlx::query_scalar(
        "UPDATE posts SET deleted_at = now(), version = version + 1 WHERE id = $1 RETURNING author_id",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await
    .expect("delete post");
    sqlx::query("UPDATE users SET post_count = post_count - 1 WHERE id = $1")
        .bind(author_id)
        .execute(&mut *tx)
        .await
        .expect("uncount post");
    tx.commit().await.expect("commit");
}

pub async fn applied(pool: &PgPool, command_id: Uuid, aggregate_id: Uuid, version: i64) {
    decision(
        pool,
        command_id,
        "applied",
        None,
        aggregate_id,
        Some(version),
    )
    .await;
}

pub async fn rejected(pool: &PgPool, command_id: Uuid, aggregate_id: Uuid, reason: &str) {
    decision(
        pool,
        command_id,
        "rejected",
        Some(reason),
        aggregate_id,
        None,
    )
    .await;
}

async fn decision(
    pool: &PgPool,
    command_id: Uuid,
    status: &str,
    reason: Option<&str>,
    aggregate_id: Uuid,
    version: Option<i64>,
) {
    sqlx::query(
        "INSERT INTO decisions (command_id, status, reason, aggregate_id, version, event_id, event_type, \
         kafka_partition, kafka_offset) VALUES ($1, $2, $3, $4, $5, $6, 'user.profile_updated', 0, 0)",
    )
    .bind(command_id)
    .bind(status)
    .bind(reason)
    .bind(aggregate_id)
    .bind(version)
    .bind(Uuid::now_v7())
    .execute(pool)
    .await
    .expect("insert decision");
}

const UPSERT_OFFSET: &str = "INSERT INTO projector_offsets (topic, partition, next_offset, epoch, owner) \
     VALUES ($1, $2, $3, 1, 'test') \
     ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()";

/// Moves the projector's position without telling anyone, as if the notification were lost.
pub async fn set_offset_silently(pool: &PgPool, topic: &str, partition: i32, next_offset: i64) {
    sqlx::query(UPSERT_OFFSET)
        .bind(topic)
        .bind(partition)
        .bind(next_offset)
        .execute(pool)
        .await
        .expect("set offset");
}

/// What the projector does at the end of a batch: the offset and the notification, in one
/// transaction. The notice does not say what changed (as an older projector's), which makes
/// the query API drop its whole cache.
pub async fn advance_and_notify(pool: &PgPool, topic: &str, partition: i32, next_offset: i64) {
    let payload =
        serde_json::json!({"topic": topic, "offsets": [[partition, next_offset]]}).to_string();
    advance_and_send(pool, topic, partition, next_offset, payload).await;
}

/// The end of a batch whose notice names what it changed: the owners (users) of its events and
/// the posts it wrote.
pub async fn advance_and_notify_changed(
    pool: &PgPool,
    topic: &str,
    partition: i32,
    next_offset: i64,
    owners: &[Uuid],
    posts: &[Uuid],
) {
    let payload = serde_json::json!({
        "topic": topic,
        "offsets": [[partition, next_offset]],
        "changed": {"owners": owners, "posts": posts},
    })
    .to_string();
    advance_and_send(pool, topic, partition, next_offset, payload).await;
}

async fn advance_and_send(
    pool: &PgPool,
    topic: &str,
    partition: i32,
    next_offset: i64,
    payload: String,
) {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(UPSERT_OFFSET)
        .bind(topic)
        .bind(partition)
        .bind(next_offset)
        .execute(&mut *tx)
        .await
        .expect("advance offset");
    sqlx::query("SELECT pg_notify('projector_progress', $1)")
        .bind(payload)
        .execute(&mut *tx)
        .await
        .expect("notify");
    tx.commit().await.expect("commit");
}

/// One applied event in an aggregate's stream, as the projector records it; returns its event id.
pub async fn event(
    pool: &PgPool,
    aggregate_id: Uuid,
    version: i64,
    event_type: &str,
    data: serde_json::Value,
    occurred_at: DateTime<Utc>,
) -> Uuid {
    let event_id = Uuid::now_v7();
    let aggregate_type = event_type.split('.').next().unwrap_or_default();
    sqlx::query(
        "INSERT INTO aggregate_events (aggregate_id, version, event_id, event_type, aggregate_type, \
         occurred_at, data, kafka_partition, kafka_offset) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, 0, $2)",
    )
    .bind(aggregate_id)
    .bind(version)
    .bind(event_id)
    .bind(event_type)
    .bind(aggregate_type)
    .bind(occurred_at)
    .bind(data.to_string())
    .execute(pool)
    .await
    .expect("insert event");
    event_id
}
