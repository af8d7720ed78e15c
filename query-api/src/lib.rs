//! The query API: contract v1's reads, served from the PostgreSQL read models the projector
//! maintains.
//!
//! It never writes to the read models and never migrates them (the projector owns the schema).
//! Its pool connects lazily, so it starts, and answers 503, while PostgreSQL is down. A read that
//! carries a `Consistency-Token` is held back until the projector's stored offset covers it.
//! Single users, posts and decisions and first pages are answered from an in-process cache
//! that the projector's progress notices invalidate. Reads may be spread over read replicas
//! (hot standbys), each read going to one that has replayed as far as the read needs.
//!
//! The modules, from the handlers down to the values they share:
//! - here: [`Application`] (what `main` builds and runs), [`router`] and [`openapi_document`].
//! - [`routes`]: the handlers, one per route, and `/readyz`.
//! - [`status`]: the status page, `/status` and `/status.json`: each partition's offset, lag,
//!   events per second, decisions and dead letters, the generation and rebuilds in progress.
//! - [`app_state`]: [`AppState`], what every handler shares, and a read's way through the token
//!   wait, the cache and the read models.
//! - [`extract`]: path id, page and consistency-token extractors with problem+json rejections.
//! - [`openapi`]: the OpenAPI document's parameters and title; each route's own part is its
//!   handler's `#[utoipa::path]`.
//! - [`replica_monitor`]: the poller that refreshes each replica's offsets, and the replicas'
//!   gauges.
//! - [`consistency`]: [`consistency::Watermarks`], the projector's progress as LISTENed for, and
//!   the token wait on it; its follower also invalidates the cache.
//! - [`cache`]: [`cache::Cache`], the read cache, and why it never serves what a token rules out.
//! - [`answer`]: [`answer::Answer`], a read's answer serialized once.
//! - [`etag`]: `ETag` and `If-None-Match` on single-resource reads.
//! - [`read_models`]: the SQL, and where a read runs it ([`read_models::Source`]).
//! - [`replicas`]: the read replicas, how far each has replayed, and what a read needs of them.
//! - [`error`]: [`error::ApiError`] and its problem+json answers.
//! - [`pagination`]: `limit`, `from_version` and the opaque keyset cursors; the page body.
//! - [`config`]: [`Config`], flags and environment variables.
//! - [`catalogue`]: which read-model generation the catalogue names active.
//! - [`offsets`]: [`offsets::Offsets`], the projector's next offset per partition, the measure of
//!   the watermarks, the cache's fills, the replicas and the status page.

pub mod answer;
pub mod app_state;
pub mod cache;
pub mod catalogue;
pub mod config;
pub mod consistency;
pub mod error;
pub mod etag;
pub mod extract;
pub mod offsets;
pub mod openapi;
pub mod pagination;
pub mod read_models;
pub mod replica_monitor;
pub mod replicas;
pub mod routes;
pub mod status;

use std::future::Future;

use anyhow::Context as _;
use axum::Router;
use service_kit::metrics::Metrics;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

pub use crate::app_state::{AppState, Loaded};
use crate::cache::Cache;
pub use crate::config::{Config, LogFormat};
use crate::consistency::{Follower, Watermarks};
use crate::read_models::ReadModels;
use crate::replica_monitor::Poller;
use crate::status::StatusBoard;

/// The complete service: the v1 read routes, `/readyz`, `/openapi.json`, and the common layers
/// and endpoints.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    let (api, document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(routes::routes())
        .with_state(state)
        .split_for_parts();
    let api = service_kit::openapi::serve(api, &openapi::document(document));
    service_kit::http::with_common_layers(api, metrics)
}

/// The service's OpenAPI document, as `GET /openapi.json` answers it, without a running service:
/// [`router`] builds its own the same way from the same routes.
pub fn openapi_document() -> serde_json::Value {
    let api = OpenApiRouter::<AppState>::with_openapi(openapi::ApiDoc::openapi())
        .merge(routes::routes())
        .into_openapi();
    openapi::document(api)
}

/// A built service, bound to its port, ready to [`run`](Application::run).
pub struct Application {
    listener: TcpListener,
    router: Router,
    follower: Follower,
    poller: Poller,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let connect_options = config
            .database_url
            .parse()
            .context("DATABASE_URL is not a PostgreSQL URL")?;
        let pool_of = |options, acquire_timeout| {
            read_models::read_pool(config.db_pool_size, acquire_timeout, options)
        };
        let pool = pool_of(connect_options, config.db_acquire_timeout());
        let replica_acquire_timeout = config
            .db_acquire_timeout()
            .min(replicas::REPLICA_ACQUIRE_TIMEOUT);
        let replica_pools = config
            .replica_urls()
            .enumerate()
            .map(|(index, url)| {
                // Not the URL itself: it may hold a password.
                let options = url.parse().with_context(|| {
                    format!("DATABASE_REPLICA_URLS: replica {index} is not a PostgreSQL URL")
                })?;
                Ok(pool_of(options, replica_acquire_timeout))
            })
            .collect::<anyhow::Result<Vec<PgPool>>>()?;
        // The listening connection lives as long as it can; it is only replaced when lost.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(config.db_acquire_timeout())
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(pool.connect_options().as_ref().clone());
        let metrics = Metrics::default();
        let read_models =
            ReadModels::new(pool.clone(), replica_pools, &config.kafka_topic, &metrics);
        // Reads go to the active generation from the first one on, not to a retired one until
        // the follower has looked. While PostgreSQL is down the follower finds it later.
        let active = tokio::time::timeout(
            config.db_acquire_timeout(),
            catalogue::active_generation(&pool),
        )
        .await;
        if let Ok(Ok(active)) = active
            && active != read_models.generation()
        {
            read_models.switch_to(&active)?;
        }
        let cache = Cache::new(config.cache_entries, config.cache_bytes, &metrics);
        let (watermarks, follower) = Watermarks::start(
            listen_pool,
            read_models.clone(),
            cache.clone(),
            config.kafka_topic.clone(),
            config.consistency_wait(),
            &metrics,
        );
        replica_monitor::register_gauges(&read_models, &watermarks);
        let poller = Poller::start(&read_models, config.replica_poll());
        let state = AppState {
            status: StatusBoard::new(read_models.clone()),
            read_models,
            watermarks,
            cache,
            metrics,
        };
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.addr))?;
        Ok(Application {
            listener,
            router: router(state),
            follower,
            poller,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|addr| addr.port())
            .unwrap_or(0)
    }

    /// Serves until `shutdown` resolves, then finishes the requests in flight.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            router,
            follower,
            poller,
        } = self;
        tracing::info!(addr = ?listener.local_addr().ok(), "query-api listening");
        service_kit::server::serve(listener, router, shutdown).await;
        drop(follower);
        drop(poller);
        Ok(())
    }
}
