//! What a cached `GET /v1/posts/{id}` costs the query API in CPU instructions, without sockets.
//!
//! The loadgen ratio (cached read against a bare handler) moves by ±20 % on the shared 2-core
//! machine; an instruction count under callgrind does not, so it is how changes to the request
//! path are compared. This builds the query API's router as `Application::build` does, against a
//! scratch database with one 1 KB post, fills the cache with one read, then sends `--requests`
//! more reads through the router with `tower::ServiceExt::oneshot`, on a current-thread runtime,
//! every instruction of them inside the function `measured`:
//!
//! ```text
//! cargo build --release -p query-api --example cached_read
//! valgrind --tool=callgrind --toggle-collect='cached_read::measured' \
//!     target/release/examples/cached_read --requests 10000
//! ```
//!
//! The `Collected` total divided by `--requests` is the cost of one read. `--bare` sends the
//! reads to the v1 routes without `service_kit::http::with_common_layers` (no request id, span,
//! metrics or panic guard): the difference is what the common layers cost. Logging is set up as
//! the binary sets it up (`RUST_LOG`, default `info`). `DATABASE_URL` names an administrative
//! connection (default `postgres://postgres@127.0.0.1:5432/postgres`); the scratch database is
//! created beside it and dropped at the end.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::Utc;
use query_api::AppState;
use query_api::cache::{Cache, Key};
use query_api::consistency::{Follower, Watermarks};
use query_api::read_models::ReadModels;
use service_kit::metrics::Metrics;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, Executor as _, PgConnection};
use tower::ServiceExt as _;
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

fn main() -> anyhow::Result<()> {
    let mut requests = 10_000_u64;
    let mut bare = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--requests" => {
                requests = args
                    .next()
                    .context("--requests needs a number")?
                    .parse()
                    .context("--requests needs a number")?;
            }
            "--bare" => bare = true,
            other => bail!("unknown argument {other}; takes --requests N and --bare"),
        }
    }
    service_kit::telemetry::init(service_kit::telemetry::LogFormat::Text)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!("cached_read_{}", std::process::id());
    let url = runtime.block_on(create_database(&admin_url, &name))?;
    let outcome = runtime
        .block_on(Server::start(&url, bare))
        .and_then(|server| {
            let started = Instant::now();
            let body_bytes = measured(&runtime, &server.router, &server.path, requests);
            let elapsed = started.elapsed();
            runtime.block_on(server.stop());
            println!(
                "{requests} cached reads of {} bytes through the {} router: {:.2} µs each \
             (wall clock; use callgrind for a repeatable count)",
                body_bytes?,
                if bare { "bare" } else { "full" },
                elapsed.as_secs_f64() * 1e6 / requests.max(1) as f64
            );
            Ok(())
        });
    runtime.block_on(drop_database(&admin_url, &name))?;
    outcome
}

/// The measured loop: callgrind collects inside this function only (`--toggle-collect`). Its
/// own `block_on` runs nothing but the reads: a hit never waits, so the runtime never turns to
/// its other tasks or its drivers in between.
#[inline(never)]
fn measured(
    runtime: &tokio::runtime::Runtime,
    router: &Router,
    path: &str,
    requests: u64,
) -> anyhow::Result<usize> {
    runtime.block_on(async {
        let mut body_bytes = 0;
        for _ in 0..requests {
            body_bytes = read(router, path).await?;
        }
        Ok(body_bytes)
    })
}

async fn create_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .context("DATABASE_URL: cannot connect")?;
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    match admin_url.rsplit_once('/') {
        Some((server, _)) => Ok(format!("{server}/{name}")),
        None => bail!("DATABASE_URL has no database name"),
    }
}

async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(admin_url).await?;
    admin
        .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
        .await?;
    Ok(())
}

/// The query API's router over a database with one post, its cache holding that post.
struct Server {
    router: Router,
    path: String,
    pools: [PgPool; 2],
    follower: Follower,
}

impl Server {
    async fn start(url: &str, bare: bool) -> anyhow::Result<Server> {
        let pool = PgPoolOptions::new().max_connections(2).connect(url).await?;
        MIGRATOR.run(&pool).await?;
        let (user_id, post_id) = (Uuid::now_v7(), Uuid::now_v7());
        let now = Utc::now();
        sqlx::query(
            "INSERT INTO users (id, display_name, post_count, version, created_at, updated_at) \
             VALUES ($1, 'reader', 1, 1, $2, $2)",
        )
        .bind(user_id)
        .bind(now)
        .execute(&pool)
        .await?;
        // The load generator's post: a short title and a 1 KB body.
        sqlx::query(
            "INSERT INTO posts (id, author_id, title, body, version, created_at, updated_at) \
             VALUES ($1, $2, 'loadgen post 12345', $3, 1, $4, $4)",
        )
        .bind(post_id)
        .bind(user_id)
        .bind("x".repeat(1024))
        .bind(now)
        .execute(&pool)
        .await?;

        // As `Application::build` assembles it.
        let listen_pool = PgPoolOptions::new().max_connections(1).connect(url).await?;
        let metrics = Metrics::default();
        let read_models = ReadModels::new(pool.clone(), Vec::new(), "posts", &metrics);
        let cache = Cache::new(10_000, 64 << 20, &metrics);
        let (watermarks, follower) = Watermarks::start(
            listen_pool.clone(),
            read_models.clone(),
            cache.clone(),
            "posts".to_owned(),
            Duration::from_secs(1),
            &metrics,
        );
        let state = AppState {
            status: query_api::status::StatusBoard::new(read_models.clone()),
            read_models,
            watermarks,
            cache: cache.clone(),
            metrics,
        };
        let router = if bare {
            axum::Router::from(query_api::routes::routes().with_state(state))
        } else {
            query_api::router(state)
        };

        // The cache keeps answers only while it follows the projector's progress: read until
        // one is kept (the follower connects meanwhile, on this same thread).
        let path = format!("/v1/posts/{post_id}");
        let key = Key::Post(post_id);
        let deadline = Instant::now() + Duration::from_secs(120);
        while cache.get(&key, None).is_none() {
            if Instant::now() > deadline {
                bail!("the cache did not start following within 120 s");
            }
            read(&router, &path).await?;
            tokio::task::yield_now().await;
        }
        Ok(Server {
            router,
            path,
            pools: [pool, listen_pool],
            follower,
        })
    }

    /// Closes the connections before their database is dropped under them (they would log).
    async fn stop(self) {
        drop(self.follower);
        for pool in self.pools {
            pool.close().await;
        }
    }
}

async fn read(router: &Router, path: &str) -> anyhow::Result<usize> {
    let request = Request::get(path).body(Body::empty())?;
    let response = router.clone().oneshot(request).await?;
    if response.status() != StatusCode::OK {
        bail!("GET {path} answered {}", response.status());
    }
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
    Ok(body.len())
}
