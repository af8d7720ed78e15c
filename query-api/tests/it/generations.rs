//! Read-model generations: after `projector switch` (its catalogue update and notice, played
//! here by hand) reads go to the new generation's schema, its offsets are the watermarks, and
//! progress notices of the retired generation are ignored. An app that starts after a switch
//! reads the active generation from its first request.

use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use test_support::{TestDb, unique_topic};
use uuid::Uuid;

use crate::helpers::{TestApp, eventually, json_ok, spawn_app};
use crate::seed;

pub const GENERATION: &str = "generation_1";

fn next_offset(partition: i32) -> String {
    format!("query_api_projector_next_offset{{partition=\"{partition}\"}}")
}

struct Fixture {
    db: TestDb,
    live: PgPool,
    rebuilt: PgPool,
    topic: String,
    user_path: String,
}

/// The same user in `public` (at offset 5) and in generation_1 (at offset 7, under another
/// name, so that a read shows which generation answered).
async fn fixture() -> Fixture {
    let db = TestDb::migrated().await;
    let live = db.pool().await;
    let topic = unique_topic("generations");
    let id = Uuid::now_v7();
    sqlx::query(&format!("CREATE SCHEMA {GENERATION}"))
        .execute(&live)
        .await
        .expect("create the generation's schema");
    let options = db
        .url
        .parse::<PgConnectOptions>()
        .expect("url")
        .options([("search_path", GENERATION)]);
    let rebuilt = PgPool::connect_with(options).await.expect("connect");
    test_support::MIGRATOR
        .run(&rebuilt)
        .await
        .expect("migrate the generation");
    for (pool, name) in [(&live, "Ada"), (&rebuilt, "Ada (rebuilt)")] {
        sqlx::query(
            "INSERT INTO users (id, display_name, bio, post_count, version, created_at, updated_at) \
             VALUES ($1, $2, NULL, 0, 1, $3, $3)",
        )
        .bind(id)
        .bind(name)
        .bind(seed::at(0))
        .execute(pool)
        .await
        .expect("insert user");
    }
    seed::advance_and_notify(&live, &topic, 0, 5).await;
    seed::set_offset_silently(&rebuilt, &topic, 0, 7).await;
    Fixture {
        db,
        live,
        rebuilt,
        topic,
        user_path: format!("/v1/users/{id}"),
    }
}

/// What `projector switch` commits: the catalogue and the notice, together.
pub async fn switch(live: &PgPool) {
    let mut tx = live.begin().await.expect("begin");
    sqlx::query("UPDATE read_model_generations SET state = 'retired' WHERE name = 'public'")
        .execute(&mut *tx)
        .await
        .expect("retire public");
    sqlx::query("INSERT INTO read_model_generations (name, state) VALUES ($1, 'active')")
        .bind(GENERATION)
        .execute(&mut *tx)
        .await
        .expect("activate the generation");
    sqlx::query("SELECT pg_notify('read_model_generation', $1)")
        .bind(GENERATION)
        .execute(&mut *tx)
        .await
        .expect("notify");
    tx.commit().await.expect("commit");
}

async fn notify(live: &PgPool, topic: &str, generation: &str, partition: i32, next_offset: i64) {
    let payload = serde_json::json!({
        "topic": topic,
        "offsets": [[partition, next_offset]],
        "generation": generation,
    })
    .to_string();
    sqlx::query("SELECT pg_notify('projector_progress', $1)")
        .bind(payload)
        .execute(live)
        .await
        .expect("notify");
}

async fn display_name(app: &TestApp, path: &str) -> String {
    let (_, body) = json_ok(app.get(path).await).await;
    body["display_name"].as_str().expect("a name").to_owned()
}

#[tokio::test]
async fn reads_follow_a_switch_and_only_the_new_generations_progress_counts() {
    let f = fixture().await;
    let app = spawn_app(&f.db.url, &f.topic, std::time::Duration::from_secs(30)).await;
    eventually("the start-up load", || async {
        app.metric(&next_offset(0)).await == Some(5.0)
    })
    .await;
    assert_eq!(display_name(&app, &f.user_path).await, "Ada");

    switch(&f.live).await;
    eventually("the new generation's offsets", || async {
        app.metric(&next_offset(0)).await == Some(7.0)
    })
    .await;
    // The pool was swapped before the offsets were published.
    assert_eq!(display_name(&app, &f.user_path).await, "Ada (rebuilt)");
    let (_, body) = json_ok(
        app.get_with(&f.user_path, &[("consistency-token", "v1.0.6")])
            .await,
    )
    .await;
    assert_eq!(body["display_name"], "Ada (rebuilt)");

    // The retired generation's progress is ignored; the active one's counts. Notices arrive in
    // order, so once partition 1 shows the second one, the first was seen and passed over.
    notify(&f.live, &f.topic, "public", 0, 50).await;
    notify(&f.live, &f.topic, GENERATION, 1, 3).await;
    eventually("the active generation's notice", || async {
        app.metric(&next_offset(1)).await == Some(3.0)
    })
    .await;
    assert_eq!(app.metric(&next_offset(0)).await, Some(7.0));

    f.rebuilt.close().await;
    f.live.close().await;
    f.db.drop_database().await;
}

#[tokio::test]
async fn an_app_started_after_a_switch_reads_the_active_generation_at_once() {
    let f = fixture().await;
    switch(&f.live).await;
    let app = spawn_app(&f.db.url, &f.topic, std::time::Duration::from_secs(30)).await;
    assert_eq!(display_name(&app, &f.user_path).await, "Ada (rebuilt)");
    f.rebuilt.close().await;
    f.live.close().await;
    f.db.drop_database().await;
}
