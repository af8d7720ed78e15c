//! Read replicas against a real streaming standby: a cluster of the test's own and a hot standby
//! of it (`pg_basebackup`), whose replay the test pauses to make it lag. A row changed on the
//! primary while replay is paused shows which database answered: the old value can only have
//! come from the standby.

use std::time::Duration;

use query_api::{Application, Config};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use test_support::{MIGRATOR, OwnPostgres, TestDb, unique_topic};
use uuid::Uuid;

use crate::generations::{GENERATION, switch};
use crate::helpers::{TestApp, config, eventually, json_ok, problem, spawn_app_with};
use crate::seed;

const REPLICA_READS: &str = r#"query_api_reads_total{source="replica_0"}"#;
const PRIMARY_READS: &str = r#"query_api_reads_total{source="primary"}"#;
const FALLBACKS: &str = r#"query_api_replica_fallbacks_total{replica="replica_0"}"#;
const HEALTHY: &str = r#"query_api_replica_healthy{replica="replica_0"}"#;
const SEEN: &str = r#"query_api_replica_next_offset{replica="replica_0",partition="0"}"#;
const LAG: &str = r#"query_api_replica_lag_offsets{replica="replica_0"}"#;

struct Fixture {
    // Dropped last: the clusters stop when dropped.
    app: TestApp,
    pool: PgPool,
    db_url: String,
    topic: String,
    ada: Uuid,
    standby: OwnPostgres,
    primary: OwnPostgres,
}

/// Ada (offset 5 on partition 0) on a cluster and its standby, caught up, and an app that reads
/// from both and has seen the standby at offset 5.
async fn fixture(settings: impl FnOnce(Config) -> Config) -> Fixture {
    let primary = OwnPostgres::start().await;
    let db = TestDb::create_on(&primary.admin_url()).await;
    let pool = db.pool().await;
    MIGRATOR.run(&pool).await.expect("migrate");
    let topic = unique_topic("replicas");
    let ada = seed::user(&pool, "Ada", None, seed::at(0)).await;
    seed::advance_and_notify(&pool, &topic, 0, 5).await;
    let standby = primary.start_standby().await;
    standby.wait_for_replay_of(&primary).await;
    let app = spawn_app_with(settings(Config {
        database_replica_urls: vec![standby.url_of(&db.name)],
        ..config(&db.url, &topic, Duration::from_secs(30))
    }))
    .await;
    app.wait_for_offset(0, 5).await;
    wait_for_metric(&app, SEEN, 5.0).await;
    Fixture {
        app,
        pool,
        db_url: db.url,
        topic,
        ada,
        standby,
        primary,
    }
}

fn without_cache(config: Config) -> Config {
    Config {
        cache_entries: 0,
        ..config
    }
}

async fn wait_for_metric(app: &TestApp, series: &str, value: f64) {
    eventually(&format!("{series} at {value}"), || async {
        app.metric(series).await == Some(value)
    })
    .await;
}

impl Fixture {
    fn user_path(&self) -> String {
        format!("/v1/users/{}", self.ada)
    }

    async fn display_name(&self, token: Option<&str>) -> String {
        let headers: Vec<(&str, &str)> = token
            .map(|t| ("consistency-token", t))
            .into_iter()
            .collect();
        let (_, body) = json_ok(self.app.get_with(&self.user_path(), &headers).await).await;
        body["display_name"].as_str().expect("a name").to_owned()
    }

    /// Renames Ada on the primary as the projector would apply offset 5: the row, the offset
    /// (next 6) and the notice naming her, in one transaction each; returns once the app has
    /// heard the notice.
    async fn rename_ada(&self) {
        seed::update_user(&self.pool, self.ada, "Ada L.").await;
        seed::advance_and_notify_changed(&self.pool, &self.topic, 0, 6, &[self.ada], &[]).await;
        self.app.wait_for_offset(0, 6).await;
    }

    async fn count(&self, series: &str) -> f64 {
        self.app.metric(series).await.unwrap_or(0.0)
    }
}

#[tokio::test]
async fn reads_are_served_by_the_replica() {
    let f = fixture(without_cache).await;
    f.standby.pause_replay().await;
    f.rename_ada().await;

    let replica_reads = f.count(REPLICA_READS).await;
    assert_eq!(f.display_name(None).await, "Ada", "the standby's (old) row");
    assert_eq!(f.count(REPLICA_READS).await, replica_reads + 1.0);
    // The lag is the primary's watermark as heard less the standby's as seen.
    assert_eq!(f.app.metric(LAG).await, Some(1.0));
    // Pages and streams too.
    let page = json_ok(f.app.get(&format!("/v1/users/{}/posts", f.ada)).await)
        .await
        .1;
    assert_eq!(page["items"], serde_json::json!([]));
    assert_eq!(
        f.count(REPLICA_READS).await,
        replica_reads + 3.0,
        "two queries"
    );
    let metrics = f
        .app
        .get("/metrics")
        .await
        .text()
        .await
        .expect("metrics text");
    test_support::metrics_docs::assert_documented(
        &metrics,
        &["Every service", "Query API", "Query API with read replicas"],
    );
}

#[tokio::test]
async fn a_token_read_never_answers_older_than_its_token() {
    let f = fixture(without_cache).await;
    f.standby.pause_replay().await;
    f.rename_ada().await;
    assert_eq!(f.display_name(None).await, "Ada", "the standby lags");

    // Answered by the primary: the standby that lags is not waited for (it never catches up
    // here), nor asked.
    let (primary_reads, replica_reads) =
        (f.count(PRIMARY_READS).await, f.count(REPLICA_READS).await);
    assert_eq!(f.display_name(Some("v1.0.5")).await, "Ada L.");
    assert_eq!(f.count(PRIMARY_READS).await, primary_reads + 1.0);
    assert_eq!(f.count(REPLICA_READS).await, replica_reads);
    // A token the standby has applied is answered there.
    let replica_reads = f.count(REPLICA_READS).await;
    assert_eq!(f.display_name(Some("v1.0.4")).await, "Ada");
    assert_eq!(f.count(REPLICA_READS).await, replica_reads + 1.0);
}

#[tokio::test]
async fn the_cache_is_never_filled_from_a_replica_behind_the_primary() {
    let f = fixture(|config| config).await;
    f.app.wait_for_cache_following(true).await;
    assert_eq!(f.display_name(None).await, "Ada");
    f.standby.pause_replay().await;
    f.rename_ada().await;

    // A miss that fills the cache: it may answer either name, but keeps only the new one.
    f.display_name(None).await;
    f.standby.resume_replay().await;
    f.standby.wait_for_replay_of(&f.primary).await;
    // No notice comes: an entry filled from the lagging standby would still be served.
    assert_eq!(f.display_name(None).await, "Ada L.");
    assert_eq!(f.display_name(None).await, "Ada L.");

    // Once the standby is seen at the primary's watermarks, it fills the cache too.
    wait_for_metric(&f.app, SEEN, 6.0).await;
    let replica_reads = f.count(REPLICA_READS).await;
    json_ok(f.app.get("/v1/posts").await).await;
    assert_eq!(f.count(REPLICA_READS).await, replica_reads + 1.0);
}

#[tokio::test]
async fn a_stopped_replica_leaves_the_reads_to_the_primary() {
    // No polls after the first: the read that finds the standby gone is the one to fall back.
    let f = fixture(|config| Config {
        replica_poll_ms: 3_600_000,
        ..without_cache(config)
    })
    .await;
    assert_eq!(f.display_name(None).await, "Ada");
    assert_eq!(f.count(FALLBACKS).await, 0.0);
    f.standby.stop().await;

    let primary_reads = f.count(PRIMARY_READS).await;
    assert_eq!(f.display_name(None).await, "Ada");
    assert_eq!(f.count(FALLBACKS).await, 1.0);
    assert_eq!(f.app.metric(HEALTHY).await, Some(0.0));
    // Passed over from then on, for every kind of read.
    assert_eq!(f.display_name(Some("v1.0.4")).await, "Ada");
    // Ada has no events: the primary's answer, not the 503 of a database gone.
    problem(
        f.app.get(&format!("/v1/streams/{}/events", f.ada)).await,
        404,
    )
    .await;
    json_ok(f.app.get("/v1/posts").await).await;
    assert_eq!(f.app.get("/readyz").await.status(), 200);
    assert_eq!(f.count(FALLBACKS).await, 1.0);
    assert!(f.count(PRIMARY_READS).await >= primary_reads + 5.0);

    // Back, it is read again once its time out is over.
    f.standby.resume().await;
    let replica_reads = f.count(REPLICA_READS).await;
    eventually("a read answered by the standby again", || async {
        assert_eq!(f.display_name(None).await, "Ada");
        f.count(REPLICA_READS).await > replica_reads
    })
    .await;
    assert_eq!(f.app.metric(HEALTHY).await, Some(1.0));
}

#[tokio::test]
async fn a_replica_is_read_for_a_new_generation_only_once_it_has_replayed_the_switch() {
    let f = fixture(without_cache).await;
    // A rebuild under way, half done on the primary and so on the standby.
    sqlx::query(&format!("CREATE SCHEMA {GENERATION}"))
        .execute(&f.pool)
        .await
        .expect("create the generation's schema");
    let options = f
        .db_url
        .parse::<PgConnectOptions>()
        .expect("url")
        .options([("search_path", GENERATION)]);
    let rebuilt = PgPool::connect_with(options).await.expect("connect");
    MIGRATOR
        .run(&rebuilt)
        .await
        .expect("migrate the generation");
    sqlx::query(
        "INSERT INTO users (id, display_name, bio, post_count, version, created_at, updated_at) \
         VALUES ($1, 'Ada (half built)', NULL, 0, 1, $2, $2)",
    )
    .bind(f.ada)
    .bind(seed::at(0))
    .execute(&rebuilt)
    .await
    .expect("insert user");
    seed::set_offset_silently(&rebuilt, &f.topic, 0, 7).await;
    f.standby.wait_for_replay_of(&f.primary).await;
    f.standby.pause_replay().await;

    // The rebuild ends and is switched to; the standby replays neither.
    sqlx::query("UPDATE users SET display_name = 'Ada (rebuilt)' WHERE id = $1")
        .bind(f.ada)
        .execute(&rebuilt)
        .await
        .expect("finish the rebuild");
    switch(&f.pool).await;
    f.app.wait_for_offset(0, 7).await;
    // The standby's copy of the generation is half built, and its catalogue still names
    // public: the primary answers.
    assert_eq!(f.display_name(None).await, "Ada (rebuilt)");
    assert_eq!(f.app.metric(SEEN).await, None, "not seen on the generation");

    f.standby.resume_replay().await;
    f.standby.wait_for_replay_of(&f.primary).await;
    wait_for_metric(&f.app, SEEN, 7.0).await;
    let replica_reads = f.count(REPLICA_READS).await;
    assert_eq!(f.display_name(None).await, "Ada (rebuilt)");
    assert_eq!(f.count(REPLICA_READS).await, replica_reads + 1.0);
    rebuilt.close().await;
}

#[tokio::test]
async fn a_replica_url_that_is_no_url_fails_the_start_naming_the_variable() {
    let config = Config {
        database_replica_urls: vec!["postgres://reader:secret@[::1/userdata".to_owned()],
        ..config(
            "postgres://postgres@127.0.0.1:1/userdata",
            "topic",
            Duration::from_secs(1),
        )
    };
    match Application::build(config).await {
        Ok(_) => panic!("started with a replica URL that is no URL"),
        Err(error) => {
            let message = format!("{error:#}");
            assert!(message.contains("DATABASE_REPLICA_URLS"), "{message}");
            assert!(!message.contains("secret"), "{message}");
        }
    }
}
