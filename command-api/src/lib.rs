//! The command API: the write side of the system.
//!
//! It takes contract v1's six writes, checks everything that needs no state (shape, sizes, ids,
//! headers), turns each into an [`events::Envelope`], appends it to the Kafka topic and answers
//! `202 Accepted` only once the broker has acknowledged it (`acks=all`, idempotent producer).
//! It has no database: deciding whether a write applies is the projector's job, in log order.
//!
//! Layout, from the bottom layer up (each module uses only modules listed before it):
//! - [`hyphenated_uuid`]: the one text form of a UUID taken in paths and tokens.
//! - [`ids`]: command, event and new aggregate ids; derived from `Idempotency-Key` when sent.
//! - [`auth`]: access tokens (HS256 JWTs): the keys, issuing at sign-up, verifying.
//! - [`client_ip`]: who a sign-up comes from behind trusted proxies (`X-Forwarded-For`).
//! - [`backpressure`]: the bound on writes waiting for the broker, and the 503 past it.
//! - [`ratelimit`]: per-client write rate limits (token buckets), and the 429 past them.
//! - [`config`]: [`Config`], the settings from flags or environment.
//! - [`appender`]: the Kafka producer, topic creation and the readiness probe.
//! - [`command`]: pure rules: the six writes, their field validation into domain events, the
//!   request body schemas, and the envelope each write becomes.
//! - [`error`]: [`error::ApiError`], every failure and its problem+json answer.
//! - [`extract`]: axum extractors for path ids, `If-Match`, `Idempotency-Key`, the JSON body and
//!   the authenticated caller.
//! - [`accepted`]: the 202 answer to a write the broker acknowledged.
//! - [`state`]: [`state::AppState`], what every handler shares.
//! - [`openapi`]: the OpenAPI document's parameters, bodies, shared answers and security scheme;
//!   each route's own part is its handler's `#[utoipa::path]`.
//! - [`pipeline`]: [`pipeline::accept`], the same path for every write from its checked event
//!   to the 202: ids, envelope, admission, append.
//! - [`routes`]: one module per resource with its handlers, the route layers that authenticate
//!   and rate-limit writes, and the [`router`] with the OpenAPI document it serves
//!   ([`openapi_document`]).
//! - here: [`Application`] (bind, run, graceful shutdown).

pub mod accepted;
pub mod appender;
pub mod auth;
pub mod backpressure;
pub mod client_ip;
pub mod command;
pub mod config;
pub mod error;
pub mod extract;
pub mod hyphenated_uuid;
pub mod ids;
pub mod openapi;
pub mod pipeline;
pub mod ratelimit;
pub mod routes;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use service_kit::metrics::Metrics;
use service_kit::server::Timeouts;
use tokio::net::TcpListener;

pub use config::{Config, LogFormat};
pub use routes::{openapi_document, router};

use crate::appender::Appender;
use crate::auth::{Keys, Tokens};
use crate::backpressure::InFlightWrites;
use crate::ratelimit::WriteLimits;
use crate::state::AppState;

/// The service, bound to its address and ready to run.
pub struct Application {
    listener: TcpListener,
    router: Router,
    appender: Arc<Appender>,
    address: SocketAddr,
    client_timeouts: Timeouts,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// The keys and lifetime of access tokens, from the configuration; without keys, a random one
/// for this process alone.
///
/// Why a random key rather than refusing to start: every way of running the stack starts with
/// one command (`./dev up` gives a key of its own, kept in `.stack/`; docker compose passes
/// `AUTH_KEYS` from the environment when set), the key is as strong as a configured one and
/// never leaves the process, and what it costs is loud and harmless: tokens stop working when
/// the process ends and on every other instance (401, sign up again), never a write by the
/// wrong user. A deployment with more than one instance, or that must keep its users' tokens
/// across restarts, sets `AUTH_KEYS`; the warning says so on every start.
fn token_settings(config: &Config) -> anyhow::Result<Tokens> {
    let keys = config.auth_keys()?;
    let ttl = config.auth_token_ttl();
    let keys = if keys.is_empty() {
        let keys = Keys::generate("ephemeral")?;
        tracing::warn!(
            "AUTH_KEYS is not set: access tokens are signed with a random key of this process \
             only. They stop working when it stops and are refused by every other instance. Set \
             AUTH_KEYS (kid:secret, 32+ random bytes in hex or base64) to keep them."
        );
        keys
    } else {
        keys
    };
    let tokens = Tokens::new(keys, ttl)?;
    tracing::info!(
        kids = ?tokens.kids(),
        ttl_secs = ttl.map(|t| t.as_secs()),
        "access tokens: signed with the first key, verified with any"
    );
    Ok(tokens)
}

impl Application {
    /// Checks the token settings, creates the topic if needed (waiting for the broker up to the
    /// start-up timeout), the producer, and binds the listener (port 0 picks a free port).
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let tokens = Arc::new(token_settings(&config)?);
        appender::ensure_topic(&config).await?;
        let metrics = Metrics::default();
        let appender = Arc::new(Appender::new(&config, &metrics)?);
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.addr))?;
        let address = listener
            .local_addr()
            .context("the listener has no local address")?;
        let in_flight = InFlightWrites::new(config.max_in_flight_writes as usize, &metrics);
        let write_limits =
            WriteLimits::new(config.write_rate_per_sec, config.write_burst, &metrics);
        if config.write_rate_per_sec == 0 || config.write_burst == 0 {
            tracing::info!("write rate limits are off (WRITE_RATE_PER_SEC or WRITE_BURST is 0)");
        }
        if !config.trusted_proxies.is_empty() {
            tracing::info!(
                trusted_proxies = %config.trusted_proxies,
                "sign-ups from these proxies are limited by their X-Forwarded-For client"
            );
        }
        let state = AppState {
            appender: Arc::clone(&appender),
            in_flight,
            write_limits,
            trusted_proxies: Arc::new(config.trusted_proxies),
            tokens,
            metrics,
        };
        Ok(Application {
            listener,
            router: router(state),
            appender,
            address,
            client_timeouts: config.client_timeouts,
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
        service_kit::server::serve_with(self.listener, self.router, shutdown, self.client_timeouts)
            .await;
        self.appender.flush().await;
        tracing::info!("command API stopped");
        Ok(())
    }
}
