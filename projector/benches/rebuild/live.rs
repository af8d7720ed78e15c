//! Step 2, the live read model (`public`), which the rebuild is verified against: projected from
//! the broker by the projector as it runs in production, or from the log in memory by the same
//! batch transaction, batch after batch.

use std::time::{Duration, Instant};

use anyhow::ensure;
use projector::record::Record;
use projector::store::Store;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::oneshot;

use crate::log::MemoryLog;

/// How long the live projector may make no progress before the benchmark gives up on it.
const STALL_LIMIT: Duration = Duration::from_secs(120);

/// The projector as it runs in production, in this process, until it has caught up.
pub struct LiveProjector {
    stop: oneshot::Sender<()>,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl LiveProjector {
    pub async fn start(config: projector::Config) -> anyhow::Result<LiveProjector> {
        let app = projector::Application::build(config).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Ok(LiveProjector { stop, running })
    }

    /// Waits until the live read model has projected `events` records of `topic`.
    pub async fn wait_for(
        &self,
        events: i64,
        database_url: &str,
        topic: &str,
    ) -> anyhow::Result<()> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(database_url)
            .await?;
        let (mut last, mut moved_at, mut said) = (0, Instant::now(), Instant::now());
        loop {
            ensure!(
                !self.running.is_finished(),
                "the live projector stopped; its log says why"
            );
            let done = projected(&pool, topic).await?;
            if done >= events {
                break;
            }
            if done > last {
                (last, moved_at) = (done, Instant::now());
            }
            ensure!(
                moved_at.elapsed() < STALL_LIMIT,
                "the live projector has not moved for {} s, at {done}/{events}",
                STALL_LIMIT.as_secs()
            );
            if said.elapsed() > Duration::from_secs(5) {
                said = Instant::now();
                eprintln!("    {done}/{events} projected");
            }
            // A benchmark's progress poll, not a test's synchronisation.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        pool.close().await;
        Ok(())
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.running.await?
    }
}

/// Events of `topic` the live read model has projected, all partitions together.
async fn projected(pool: &PgPool, topic: &str) -> anyhow::Result<i64> {
    let done: Option<i64> = sqlx::query_scalar(
        "SELECT sum(next_offset)::bigint FROM public.projector_offsets WHERE topic = $1",
    )
    .bind(topic)
    .fetch_one(pool)
    .await?;
    Ok(done.unwrap_or(0))
}

/// Projects the log in memory into the live read model with the projector's batch transaction,
/// `batch_size` records at a time in append order.
pub async fn project_in_memory(
    config: &projector::Config,
    memory: &MemoryLog,
    batch_size: u32,
) -> anyhow::Result<()> {
    let store = Store::connect_lazy(&config.database_url, &config.kafka_topic, 2)?;
    store.migrate().await?;
    let partitions: Vec<i32> = memory.log.partitions.keys().copied().collect();
    let mut claims = store.claim(&partitions, "rebuild-bench").await?;
    for chunk in memory.in_order.chunks(batch_size.max(1) as usize) {
        let batch: Vec<Record> = chunk
            .iter()
            .map(|(p, i)| memory.log.partitions[p][*i].clone())
            .collect();
        let outcome = store.commit_batch(&batch, &claims, false).await?;
        ensure!(outcome.fenced.is_empty(), "the live batch was fenced");
        for (partition, next_offset) in outcome.committed {
            if let Some(claim) = claims.get_mut(&partition) {
                claim.next_offset = next_offset;
            }
        }
    }
    store.pool().close().await;
    Ok(())
}
