//! Read-your-writes: holding a read back until the read model covers a consistency token.
//!
//! The projector advances `projector_offsets` in the same transaction as the read models and, in
//! that transaction, runs `pg_notify('projector_progress', {"topic", "offsets": [[partition,
//! next_offset], ...]})`. [`Watermarks`] keeps the latest next offset per partition of our topic
//! in a `watch` channel, fed by a background task (the [`Follower`]) that LISTENs on that
//! channel. A waiting request is woken by the notification, not by polling the table.
//!
//! Notifications are lost while the listening connection is down, so the follower reloads the
//! whole table after every (re)connect, on the listening connection and after its LISTEN: any
//! progress committed after the load is then notified. As a last resort for whatever may still
//! slip through, a request checks the table once more at its deadline before giving up with 503.
//! All of this is on the primary: a standby relays no NOTIFY. A released read then goes to a
//! replica only if that one has applied the token too ([`crate::replicas`]).
//!
//! Read-model generations: the follower also LISTENs on the channel `projector switch` notifies
//! when it makes another generation active. On that notice (and on every (re)connect) it asks
//! the catalogue for the active generation and, when it changed, first sends the reads to the
//! new generation's pool ([`ReadModels::switch_to`]), then loads and publishes the new
//! generation's offsets, and from then on takes only that generation's progress notices. A
//! waiter woken by the new offsets therefore reads the new generation. A token issued before
//! the switch stays covered: the switch leaves the new generation at or past the old one's
//! offsets.
//!
//! The follower also keeps the read cache ([`Cache`]) honest: for each progress notice of the
//! active generation it FIRST makes stale what the notice says changed, THEN publishes the new
//! offsets, so that no read released by a watermark, nor any read after it, is answered from
//! the cache from before that watermark's batch. Before it makes anything stale it has *heard*
//! the new offsets ([`Watermarks::heard`]): what a cache fill that follows the invalidation
//! asks of a replica. It clears the cache after every (re)connect (notices may have
//! been lost) and every switch, and suspends it whenever it is not listening. Why this order,
//! and why a cached answer never predates a token, is argued in [`crate::cache`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use events::ConsistencyToken;
use events::progress::{GENERATION_CHANNEL, ProgressNotice};
use service_kit::metrics::Metrics;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cache::Cache;
use crate::catalogue;
use crate::error::ApiError;
use crate::offsets::Offsets;
use crate::read_models::{InvalidGeneration, ReadModels};

const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// How far the read model has got, per partition, and the wait on it. Cheap to clone.
#[derive(Clone)]
pub struct Watermarks {
    /// The offsets published: what releases token waits.
    latest: watch::Receiver<Arc<Offsets>>,
    /// The offsets heard: set from each notice before its invalidations, while `latest` is set
    /// after them. Shared, not copied, by the cache entries filled under them.
    heard: watch::Receiver<Arc<Offsets>>,
    /// Set before the invalidations of the first notice of another topic in the active
    /// generation: from then on the offsets of ours do not tell what a replica has applied.
    heard_other_topics: Arc<AtomicBool>,
    topic: Arc<str>,
    max_wait: Duration,
    waiting: Arc<AtomicU64>,
    metrics: Metrics,
}

/// The follower's side of [`Watermarks`]: it sends the offsets heard and published.
struct WatermarkSender {
    heard: watch::Sender<Arc<Offsets>>,
    published: watch::Sender<Arc<Offsets>>,
    heard_other_topics: Arc<AtomicBool>,
}

impl WatermarkSender {
    /// Moves to `offsets`: heard at once, then `make_cache_agree`, then published. A fill that
    /// follows the cache's change has heard them; a read they release finds the cache agreeing.
    fn advance(&self, offsets: Offsets, make_cache_agree: impl FnOnce()) {
        let offsets = Arc::new(offsets);
        self.heard.send_replace(offsets.clone());
        make_cache_agree();
        self.published.send_replace(offsets);
    }
}

/// The background task that keeps [`Watermarks`] current; stops when dropped.
#[derive(Debug)]
pub struct Follower(JoinHandle<()>);

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Watermarks {
    /// Starts following the projector's progress on `topic`. `listen_pool` should hold a single
    /// connection: it becomes the listening connection, re-established from the pool when lost.
    /// `cache` is kept in step with the notices, and suspended while they cannot be heard.
    pub fn start(
        listen_pool: PgPool,
        read_models: ReadModels,
        cache: Cache,
        topic: String,
        max_wait: Duration,
        metrics: &Metrics,
    ) -> (Watermarks, Follower) {
        let topic: Arc<str> = topic.into();
        let (published, latest) = watch::channel(Arc::new(Offsets::new()));
        let (heard_sender, heard) = watch::channel(Arc::new(Offsets::new()));
        let heard_other_topics = Arc::new(AtomicBool::new(false));
        let waiting = Arc::new(AtomicU64::new(0));
        register_gauges(metrics, latest.clone(), waiting.clone());
        // Every outcome's series from the start, so that a rate over them is never missing one.
        for outcome in WAIT_OUTCOMES {
            count_wait(metrics, outcome, 0);
        }
        let sender = WatermarkSender {
            heard: heard_sender,
            published,
            heard_other_topics: heard_other_topics.clone(),
        };
        let follower = Follower(tokio::spawn(follow(
            listen_pool,
            read_models,
            cache,
            topic.clone(),
            sender,
        )));
        let watermarks = Watermarks {
            latest,
            heard,
            heard_other_topics,
            topic,
            max_wait,
            waiting,
            metrics: metrics.clone(),
        };
        (watermarks, follower)
    }

    /// The offsets published now: what token waits have been released up to.
    pub fn current(&self) -> Arc<Offsets> {
        self.latest.borrow().clone()
    }

    /// The offsets heard now, at or past the ones published: what a cache fill records, after
    /// reading the cache's sequence and before its database read (see [`crate::cache`]).
    pub fn heard(&self) -> Arc<Offsets> {
        self.heard.borrow().clone()
    }

    /// True once a notice of another topic was heard in the active generation: our offsets no
    /// longer say whether a replica has applied all that a fill must show. Read after the
    /// cache's sequence, as [`heard`](Watermarks::heard).
    pub fn heard_other_topics(&self) -> bool {
        self.heard_other_topics.load(Ordering::SeqCst)
    }

    /// Returns once the read model includes the write `token` names, or fails with
    /// [`ApiError::ConsistencyTimeout`] after the configured wait.
    pub async fn wait_until_covered(
        &self,
        token: ConsistencyToken,
        read_models: &ReadModels,
    ) -> Result<(), ApiError> {
        let covers = move |offsets: &Arc<Offsets>| {
            offsets
                .get(&token.partition)
                .is_some_and(|next| token.is_covered_by(*next))
        };
        let mut latest = self.latest.clone();
        if covers(&latest.borrow_and_update()) {
            self.count("immediate");
            return Ok(());
        }
        let _waiting = WaitingGuard::enter(&self.waiting);
        let woken = tokio::time::timeout(self.max_wait, latest.wait_for(covers))
            .await
            .map(|changed| changed.map(drop));
        match woken {
            Ok(Ok(())) => {
                self.count("woken");
                return Ok(());
            }
            Ok(Err(_)) => {
                tracing::error!("the watermark follower has stopped; checking the table directly")
            }
            Err(_elapsed) => {}
        }
        match read_models
            .next_offset(&self.topic, token.partition)
            .await?
        {
            Some(next) if token.is_covered_by(next) => {
                self.count("table");
                Ok(())
            }
            _ => {
                self.count("timeout");
                Err(ApiError::ConsistencyTimeout)
            }
        }
    }

    fn count(&self, outcome: &'static str) {
        count_wait(&self.metrics, outcome, 1);
    }
}

/// How a token read's wait ends: every value of `query_api_consistency_waits_total`'s
/// `outcome` label.
const WAIT_OUTCOMES: [&str; 4] = ["immediate", "woken", "table", "timeout"];

fn count_wait(metrics: &Metrics, outcome: &'static str, by: u64) {
    metrics.count(
        "query_api_consistency_waits_total",
        "Reads that carried a Consistency-Token, by how they were released: immediate (already covered), \
         woken (by the projector's notification), table (found covered at the deadline), timeout (503).",
        vec![("outcome", outcome.to_owned())],
        by,
    );
}

/// Counts a request as waiting for as long as it is held, also when the client goes away.
struct WaitingGuard<'a>(&'a AtomicU64);

impl<'a> WaitingGuard<'a> {
    fn enter(waiting: &'a AtomicU64) -> Self {
        waiting.fetch_add(1, Ordering::Relaxed);
        WaitingGuard(waiting)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn register_gauges(
    metrics: &Metrics,
    latest: watch::Receiver<Arc<Offsets>>,
    waiting: Arc<AtomicU64>,
) {
    metrics.gauge(
        "query_api_projector_next_offset",
        "The projector's next offset to apply, per partition, as this instance last heard.",
        move || {
            latest
                .borrow()
                .iter()
                .map(|(partition, next)| (vec![("partition", partition.to_string())], *next as f64))
                .collect()
        },
    );
    metrics.gauge(
        "query_api_consistency_waits_in_flight",
        "Reads currently waiting for the read model to reach their Consistency-Token.",
        move || vec![(Vec::new(), waiting.load(Ordering::Relaxed) as f64)],
    );
}

/// Runs until aborted: connect and LISTEN, load the table, apply notifications until the
/// connection is lost, and again; with a growing delay while PostgreSQL is unreachable.
async fn follow(
    listen_pool: PgPool,
    read_models: ReadModels,
    cache: Cache,
    topic: Arc<str>,
    sender: WatermarkSender,
) {
    // Also when the task is aborted: nothing would make the cache's entries stale any more.
    let _suspend = SuspendOnDrop(cache.clone());
    let mut retry_delay = FIRST_RETRY_DELAY;
    loop {
        match listen_and_load(&listen_pool, &read_models, &topic).await {
            Ok((mut listener, offsets)) => {
                // After the LISTEN and the generation check: whatever commits from here on is
                // notified, and reads already go to the active generation. Before the offsets:
                // a read they release finds nothing older in the cache. After they are heard:
                // a fill that follows the clear asks a replica for as much.
                sender.advance(offsets, || cache.resume());
                retry_delay = FIRST_RETRY_DELAY;
                tracing::info!(topic = %topic, generation = %read_models.generation(), "following projector progress");
                let why =
                    apply_notifications(&mut listener, &read_models, &cache, &topic, &sender).await;
                cache.suspend();
                tracing::warn!(reason = %why, "stopped following projector progress; reconnecting");
            }
            Err(error) => tracing::warn!(%error, "cannot follow projector progress; retrying"),
        }
        tokio::time::sleep(retry_delay).await;
        retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// Suspends the cache when the follower stops, however it stops.
struct SuspendOnDrop(Cache);

impl Drop for SuspendOnDrop {
    fn drop(&mut self) {
        self.0.suspend();
    }
}

/// Why the follower could not (re)start.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Generation(#[from] InvalidGeneration),
}

async fn listen_and_load(
    listen_pool: &PgPool,
    read_models: &ReadModels,
    topic: &str,
) -> Result<(PgListener, Offsets), FollowError> {
    let mut listener = PgListener::connect_with(listen_pool).await?;
    listener
        .listen_all([events::progress::CHANNEL, GENERATION_CHANNEL])
        .await?;
    // On the listening connection, after LISTEN: progress and switches committed from here on
    // are notified.
    let offsets = follow_active_generation(&mut listener, read_models, topic).await?;
    Ok((listener, offsets))
}

/// Sends the reads to the catalogue's active generation, if they do not go there yet, and
/// loads its offsets.
async fn follow_active_generation(
    listener: &mut PgListener,
    read_models: &ReadModels,
    topic: &str,
) -> Result<Offsets, FollowError> {
    let active = catalogue::active_generation(&mut *listener).await?;
    if active != read_models.generation() {
        // Before the offsets are published: whoever they release reads the new generation.
        read_models.switch_to(&active)?;
    }
    let rows: Vec<(i32, i64)> = sqlx::query_as(&format!(
        "SELECT partition, next_offset FROM {active}.projector_offsets WHERE topic = $1"
    ))
    .bind(topic)
    .fetch_all(&mut *listener)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Applies notifications until one cannot be trusted or the connection is lost; says why.
async fn apply_notifications(
    listener: &mut PgListener,
    read_models: &ReadModels,
    cache: &Cache,
    topic: &str,
    sender: &WatermarkSender,
) -> String {
    loop {
        let notification = match listener.try_recv().await {
            Ok(Some(notification)) => notification,
            // Notifications sent while disconnected are gone: only a reload can make up for them.
            Ok(None) => return "connection lost".to_owned(),
            Err(error) => return error.to_string(),
        };
        if notification.channel() == GENERATION_CHANNEL {
            match follow_active_generation(listener, read_models, topic).await {
                Ok(offsets) => {
                    // After the reads went to the new generation, before the offsets: a fill
                    // that began before this read the old one.
                    sender.advance(offsets, || cache.clear());
                    continue;
                }
                Err(error) => return format!("cannot follow the generation switch: {error}"),
            }
        }
        let notice: ProgressNotice = match serde_json::from_str(notification.payload()) {
            Ok(notice) => notice,
            Err(error) => return format!("unreadable notification: {error}"),
        };
        // Another generation's progress says nothing about the one reads go to.
        if notice.generation != read_models.generation() {
            continue;
        }
        if notice.topic != topic {
            // The tables are the generation's, not the topic's: what this batch changed is
            // stale all the same, and no offsets of ours say whether a replica has it.
            sender.heard_other_topics.store(true, Ordering::SeqCst);
            cache.invalidate(notice.changed.as_ref());
            continue;
        }
        // Latest wins rather than highest: notifications arrive in commit order, and a projector
        // that starts over from a lower offset must hold reads back, not release them early.
        let published = sender.published.borrow().clone();
        let changed = notice
            .offsets
            .iter()
            .any(|(partition, next_offset)| published.get(partition) != Some(next_offset));
        if !changed {
            cache.invalidate(notice.changed.as_ref());
            continue;
        }
        let mut offsets = (*published).clone();
        offsets.extend(notice.offsets.iter().copied());
        // Invalidate first, so that what the offsets release is not answered from before this
        // batch; hear them before that, so that a fill that follows the invalidation asks a
        // replica for this batch.
        sender.advance(offsets, || cache.invalidate(notice.changed.as_ref()));
    }
}
