//! The projector: the single, deterministic decider between the log and the read models.
//!
//! Each instance is a member of one Kafka consumer group. For the partitions it is given it
//! reads the events in log order and, one transaction per batch, decides each one (applied or
//! rejected), applies the applied ones to the read models, records every decision, and moves the
//! partition's stored offset, fenced so that an instance that lost the partition cannot. Because
//! the offset and the read model commit together, a crash at any point loses nothing and
//! applies nothing twice; because the decision reads only the partition's own state, a replay
//! of the log reproduces every decision.
//!
//! The modules, from the bottom up (each uses only modules listed before it):
//!
//! - [`config`]: flags and environment variables.
//! - [`decide`]: the pure decision, every rule of the contract, with given/when/then tests.
//! - [`record`]: a record of the log as the projector holds it, and a dead letter.
//! - [`ownership`]: this instance's claims on partitions, and the partitions it owns.
//! - [`error`]: how writing the read model fails (retry later, or isolate the record).
//! - [`outcome`]: what a committed batch did, overall and per partition.
//! - [`log_ends`]: each owned partition's log end, heard from the broker by a thread of its own,
//!   for the lag and the status page.
//! - [`generations`]: read-model generations and their catalogue; `projector generations` and
//!   `projector drop-generation`.
//! - [`batch`]: how a batch of records becomes rows: load, decide in memory, write in bulk.
//! - [`store`]: PostgreSQL: migrations, partition claims, the batch transaction; the live
//!   projector follows a switch through [`store::ActiveStore`].
//! - [`metrics`]: what `/metrics` shows, and the watcher of rebuilds in progress.
//! - [`stall`]: the watch on partitions nobody projects (a coordinator that lost an assignment),
//!   on a thread of its own, which makes the instance rejoin the group.
//! - [`consumer`]: the Kafka consumer loop on its own thread, and the rebalance callback that
//!   claims partitions and resumes from the stored offsets.
//! - `replay`: the log projected again into a store other than the live one, read by
//!   hand-assigned partitions, with progress bars or log lines; for verify, rebuild and switch.
//! - [`compare`]: a replayed read model caught up with the live one and compared with it at one
//!   point of the log; for verify and rebuild.
//! - [`verify`]: `projector verify`, which projects the log again into a scratch schema and
//!   compares it with the live read model at the same offsets.
//! - [`rebuild`]: `projector rebuild`, which projects the log into a new read-model generation
//!   (resumably) and verifies it the way `verify` does.
//! - [`switch`]: `projector switch`, which makes a ready generation the active one.
//!
//! Over HTTP it serves only `/healthz`, `/readyz` and `/metrics`.

pub mod batch;
pub mod compare;
pub mod config;
pub mod consumer;
pub mod decide;
pub mod error;
pub mod generations;
pub mod log_ends;
pub mod metrics;
pub mod outcome;
pub mod ownership;
pub mod rebuild;
pub mod record;
mod replay;
pub mod stall;
pub mod store;
pub mod switch;
pub mod verify;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use service_kit::Problem;
use service_kit::metrics::Metrics;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use anyhow::Context as _;
pub use config::Config;
use consumer::Projector;
use log_ends::{LogEndWatch, LogEnds};
use metrics::{ConsumerMetrics, RebuildProgress};
use ownership::Ownership;
pub use replay::{LogSource, RecordedLog};
use stall::StallGuard;
use store::{ActiveStore, Store};

/// Shared with the HTTP handlers.
#[derive(Clone)]
struct AppState {
    store: ActiveStore,
    consumer_alive: Arc<AtomicBool>,
    ownership: Ownership,
}

/// A projector instance, built and ready to [`run`](Application::run).
pub struct Application {
    listener: TcpListener,
    router: Router,
    projector: Projector,
    stopping: Arc<AtomicBool>,
    consumer_alive: Arc<AtomicBool>,
    /// Run beside the consumer loop, for `projector_partition_lag_offsets` and
    /// `projector_rebuild_progress_ratio`.
    log_end_watch: LogEndWatch,
    /// Run beside the consumer loop, which it asks to rejoin the group when partitions are
    /// left without an owner.
    stall_guard: StallGuard,
    watch_rebuilds: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Application {
    /// Applies the migrations (waiting for PostgreSQL), joins the consumer group and binds the
    /// HTTP listener.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let store = Store::connect_lazy(
            &config.database_url,
            &config.kafka_topic,
            config.db_pool_size,
        )?;
        migrate(&store).await?;
        // The live read model is the catalogue's active generation; a switch is followed later,
        // when a batch finds itself fenced.
        let active = generations::active_generation(store.pool())
            .await
            .context("cannot read the active read-model generation")?;
        let store = if active == store.schema() {
            store
        } else {
            let in_generation = Store::connect_lazy_in_schema(
                &config.database_url,
                &active,
                &config.kafka_topic,
                config.db_pool_size,
            )?;
            migrate(&in_generation).await?;
            store.pool().close().await;
            in_generation
        };
        tracing::info!(
            generation = store.schema(),
            "projecting into the active generation"
        );
        // Heard by the log-end watch below; for the lag gauge, and written with the offsets for
        // the query API's status page.
        let log_ends = LogEnds::default();
        let store = ActiveStore::new(
            store.with_log_ends(log_ends.clone()),
            &config.database_url,
            config.db_pool_size,
        );
        let stopping = Arc::new(AtomicBool::new(false));
        let metrics = Metrics::default();
        let consumer_metrics = Arc::new(ConsumerMetrics::new(&metrics));
        let rejoin = Arc::new(AtomicBool::new(false));
        let (projector, ownership) = Projector::new(
            &config,
            store.clone(),
            tokio::runtime::Handle::current(),
            stopping.clone(),
            consumer_metrics.clone(),
            rejoin.clone(),
        )?;
        let stall_guard = StallGuard::new(
            &config.kafka_brokers,
            &config.kafka_topic,
            &config.instance_id(),
            config.partition_stall_timeout(),
            store.clone(),
            ownership.clone(),
            rejoin,
        )?;
        let consumer_alive = Arc::new(AtomicBool::new(true));
        let rebuilds = RebuildProgress::default();
        metrics::register(
            &metrics,
            &consumer_metrics,
            &ownership,
            &log_ends,
            &rebuilds,
        );
        let log_end_watch = LogEndWatch::new(
            &config.kafka_brokers,
            &config.kafka_topic,
            &config.instance_id(),
            ownership.clone(),
            log_ends,
        )?;
        let watch_rebuilds =
            metrics::watch_rebuilds(store.clone(), config.kafka_topic.clone(), rebuilds);
        let state = AppState {
            store,
            consumer_alive: consumer_alive.clone(),
            ownership,
        };
        let router = service_kit::http::with_common_layers(router(state), metrics);
        let listener = TcpListener::bind(config.addr).await?;
        Ok(Application {
            listener,
            router,
            projector,
            stopping,
            consumer_alive,
            log_end_watch,
            stall_guard,
            watch_rebuilds: Box::pin(watch_rebuilds),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs until `shutdown` resolves, then finishes the batch in flight and leaves the group.
    /// Returns an error if the consumer loop stopped on its own: it panicked, or it found the
    /// database projected from another log.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            router,
            projector,
            stopping,
            consumer_alive,
            log_end_watch,
            stall_guard,
            watch_rebuilds,
        } = self;
        // Not joined: they end within a second of `stopping` (or of a look in progress), and
        // hold nothing to finish.
        let _log_end_watch = log_end_watch.spawn(stopping.clone())?;
        let _stall_guard = stall_guard.spawn(stopping.clone())?;
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("projector-consumer".into())
            .spawn(move || {
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| projector.run()))
                        .unwrap_or_else(|_| Err("the consumer loop panicked".to_owned()));
                consumer_alive.store(false, Ordering::Relaxed);
                let _ = done_tx.send(result);
            })?;
        let stop = stopping.clone();
        let http = tokio::spawn(service_kit::server::serve(listener, router, async move {
            shutdown.await;
            stop.store(true, Ordering::Relaxed);
        }));
        let watch_rebuilds = tokio::spawn(watch_rebuilds);
        let outcome = done_rx
            .await
            .unwrap_or_else(|_| Err("the consumer thread vanished".to_owned()));
        stopping.store(true, Ordering::Relaxed);
        http.abort();
        watch_rebuilds.abort();
        outcome.map_err(anyhow::Error::msg)
    }
}

/// Applies the migrations, waiting for PostgreSQL to be reachable.
async fn migrate(store: &Store) -> anyhow::Result<()> {
    let mut wait = Duration::from_millis(200);
    loop {
        match store.migrate().await {
            Ok(()) => return Ok(()),
            Err(sqlx::migrate::MigrateError::Execute(e)) if error::is_transient(&e) => {}
            Err(e) => return Err(anyhow::anyhow!("migrations failed: {e}")),
        }
        tracing::warn!("PostgreSQL unreachable; waiting to apply migrations");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/readyz", get(readyz))
        .route("/v1/partitions", get(partitions))
        .with_state(state)
}

/// Ready when PostgreSQL answers and the consumer loop is alive.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if !state.consumer_alive.load(Ordering::Relaxed) {
        return Err(Problem::unavailable("the consumer loop has stopped", 5));
    }
    let ping = tokio::time::timeout(
        Duration::from_secs(1),
        sqlx::query("SELECT 1").execute(state.store.get().pool()),
    )
    .await;
    match ping {
        Ok(Ok(_)) => Ok("ready"),
        _ => Err(Problem::unavailable("PostgreSQL is unreachable", 1)),
    }
}

/// The partitions this instance owns and its position in each: for operators and tests.
async fn partitions(State(state): State<AppState>) -> impl IntoResponse {
    let owned = state
        .ownership
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(p, c)| (p.to_string(), c.next_offset))
        .collect::<std::collections::BTreeMap<_, _>>();
    Json(owned)
}
