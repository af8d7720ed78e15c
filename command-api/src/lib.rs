//! The command API: the write side of the system.
//!
//! It takes contract v1's six writes, checks everything that needs no state (shape, sizes, ids,
//! headers), turns each into an [`events::Envelope`], appends it to the Kafka topic and answers
//! `202 Accepted` only once the broker has acknowledged it (`acks=all`, idempotent producer).
//! It has no database: deciding whether a write applies is the projector's job, in log order.
//!
//! Layout:
//! - [`config`]: [`Config`], the settings from flags or environment.
//! - [`command`]: pure rules: the six writes, their field validation into domain events, and the
//!   envelope each becomes.
//! - [`ids`]: command, event and new aggregate ids; derived from `Idempotency-Key` when sent.
//! - [`extract`]: axum extractors for path ids, `If-Match`, `Idempotency-Key` and the JSON body.
//! - [`routes`]: the handlers and the 202 answer.
//! - [`appender`]: the Kafka producer, topic creation and the readiness probe.
//! - [`error`]: [`error::ApiError`], every failure and its problem+json answer.
//! - here: [`Application`] (bind, run, graceful shutdown) and [`router`].

pub mod appender;
pub mod command;
pub mod config;
pub mod error;
pub mod extract;
pub mod ids;
pub mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post};
use service_kit::metrics::Metrics;
use tokio::net::TcpListener;

pub use config::{Config, LogFormat};

use crate::appender::Appender;
use crate::command::routes as paths;
use crate::extract::BODY_LIMIT;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub appender: Arc<Appender>,
    pub metrics: Metrics,
}

/// The service's routes, with the layers every service of the system has.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    let writes = Router::new()
        .route(paths::USERS, post(routes::register_user))
        .route(
            paths::USER,
            patch(routes::update_profile).delete(routes::delete_user),
        )
        .route(paths::USER_POSTS, post(routes::publish_post))
        .route(
            paths::USER_POST,
            patch(routes::edit_post).delete(routes::delete_post),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    // Authentication (401/403) and rate limiting (429) belong here, as `route_layer`s on
    // `writes`: route layers run before the handlers' extractors, so an unauthenticated or
    // throttled client is answered before its input is even looked at.
    let api = writes
        .route("/readyz", get(routes::readyz))
        .with_state(state);
    service_kit::http::with_common_layers(api, metrics)
}

/// The service, bound to its address and ready to run.
pub struct Application {
    listener: TcpListener,
    router: Router,
    appender: Arc<Appender>,
    address: SocketAddr,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Creates the topic if needed (waiting for the broker up to the start-up timeout), the
    /// producer, and binds the listener (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        appender::ensure_topic(&config).await?;
        let appender = Arc::new(Appender::new(&config)?);
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.addr))?;
        let address = listener
            .local_addr()
            .context("the listener has no local address")?;
        let state = AppState {
            appender: Arc::clone(&appender),
            metrics: Metrics::default(),
        };
        Ok(Application {
            listener,
            router: router(state),
            appender,
            address,
        })
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Serves until `shutdown` resolves, lets requests in progress finish, then waits (bounded)
    /// for the producer to deliver what it still holds.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(address = %self.address, topic = self.appender.topic(), "command API listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("the HTTP server failed")?;
        self.appender.flush().await;
        tracing::info!("command API stopped");
        Ok(())
    }
}
