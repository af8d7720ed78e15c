//! The status page: `GET /status.json`, what the projection is doing now, and `GET /status`,
//! a page that shows it and updates itself every second.
//!
//! One look reads only small tables, whatever the size of the read model: the active
//! generation's `projector_offsets` (a row per partition, where the projector keeps each
//! partition's offset, the log end it last heard from the broker, and running counts of its
//! decisions and dead letters, all written in the statement that advances the offset), the
//! generations catalogue, and each rebuild's own `projector_offsets`. Looks are made on the
//! primary, at most one at a time and one a second ([`FRESH_FOR`]): however many pages are
//! open, they share the answer, and a failed look (PostgreSQL down) is shared the same way.
//!
//! Events per second are the difference between this look's offsets and those of a look a few
//! seconds older ([`RATE_WINDOW`]), kept here; the first look after a quiet time has none.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use events::progress::{FIRST_GENERATION, is_plain_identifier};
use serde::Serialize;
use service_kit::Problem;
use sqlx::PgConnection;
use tokio::sync::Mutex;

use crate::error::ApiError;
use crate::offsets::Offsets;
use crate::read_models::ReadModels;

/// How long one look answers every request.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// Events per second are measured against the oldest look at most this old.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);
/// ... and at least this old: two looks closer than that say little.
const RATE_SHORTEST: Duration = Duration::from_millis(500);

/// The page, compiled in: HTML with its CSS and script inline, nothing fetched but
/// `status.json` (it must work with no internet).
const PAGE: &str = include_str!("status.html");

/// What `GET /status.json` answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    /// The Kafka topic the read model is projected from.
    pub topic: String,
    /// The active read-model generation (schema): `public`, or `generation_<n>` after a switch.
    pub generation: String,
    /// When this look was made (the server's clock).
    pub sampled_at: DateTime<Utc>,
    pub totals: Totals,
    /// The partitions the projector has claimed, in order.
    pub partitions: Vec<PartitionStatus>,
    /// Generations being rebuilt (`building`), oldest first.
    pub rebuilds: Vec<RebuildStatus>,
}

/// The partitions' figures summed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    /// Events projected: the sum of the next offsets.
    #[schema(minimum = 0)]
    pub next_offset: i64,
    /// The sum of the known log ends; null when none is known.
    #[schema(required = true)]
    pub log_end_offset: Option<i64>,
    /// The sum of the known lags; null when none is known.
    #[schema(required = true)]
    pub lag: Option<i64>,
    /// Null until two looks far enough apart were made.
    #[schema(required = true)]
    pub events_per_second: Option<f64>,
    #[schema(minimum = 0)]
    pub applied: i64,
    /// Rejections, all reasons.
    #[schema(minimum = 0)]
    pub rejected: i64,
    #[schema(minimum = 0)]
    pub dead_letters: i64,
}

/// One partition of the active generation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartitionStatus {
    #[schema(minimum = 0)]
    pub partition: i32,
    /// The offset of the next record to project: every record below it is decided.
    #[schema(minimum = 0)]
    pub next_offset: i64,
    /// The log end (the offset the next record appended will get) as the projector heard it
    /// from the broker at its last commit; null until it has.
    #[schema(required = true)]
    pub log_end_offset: Option<i64>,
    /// Records appended and not yet projected: log end minus next offset, as of the last
    /// commit (it stands still while nothing commits: see `last_commit_at`).
    #[schema(required = true)]
    pub lag: Option<i64>,
    /// Records projected per second over the last few seconds.
    #[schema(required = true)]
    pub events_per_second: Option<f64>,
    /// The projector instance that claimed the partition last.
    pub owner: String,
    pub claimed_at: DateTime<Utc>,
    /// When a batch last committed on the partition (or it was claimed).
    pub last_commit_at: DateTime<Utc>,
    /// Commands applied.
    #[schema(minimum = 0)]
    pub applied: i64,
    pub rejected: Rejections,
    /// Records that could not be projected (in `dead_letters`).
    #[schema(minimum = 0)]
    pub dead_letters: i64,
}

/// Commands rejected, by reason.
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rejections {
    #[schema(minimum = 0)]
    pub version_conflict: i64,
    #[schema(minimum = 0)]
    pub not_found: i64,
    #[schema(minimum = 0)]
    pub already_exists: i64,
    #[schema(minimum = 0)]
    pub idempotency_key_reused: i64,
}

impl Rejections {
    fn total(&self) -> i64 {
        self.version_conflict + self.not_found + self.already_exists + self.idempotency_key_reused
    }
}

/// A generation being rebuilt (`projector rebuild`, running or interrupted).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebuildStatus {
    pub generation: String,
    pub created_at: DateTime<Utc>,
    /// Events projected into it so far (the sum of its offsets).
    #[schema(minimum = 0)]
    pub events: i64,
    /// Events in the log as the active generation last heard (its log ends, or its offsets).
    #[schema(minimum = 0)]
    pub target: i64,
    /// `events / target`, from 0 to 1.
    #[schema(minimum = 0, maximum = 1)]
    pub progress: f64,
}

/// Looks at the projection for the status routes: shared by every request. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StatusBoard {
    read_models: ReadModels,
    /// Held across a look, so that requests arriving meanwhile wait for it and share it.
    state: Arc<Mutex<BoardState>>,
}

#[derive(Debug, Default)]
struct BoardState {
    last: Option<(Instant, Look)>,
    /// Earlier looks' offsets, oldest first, for the rates.
    history: VecDeque<Sample>,
}

/// A look's answer, as every request within [`FRESH_FOR`] gets it.
#[derive(Debug, Clone)]
enum Look {
    Report(Bytes),
    Failed(Problem),
}

#[derive(Debug)]
struct Sample {
    at: Instant,
    generation: String,
    offsets: Offsets,
}

impl StatusBoard {
    pub fn new(read_models: ReadModels) -> StatusBoard {
        StatusBoard {
            read_models,
            state: Arc::default(),
        }
    }

    /// The last look if it is fresh, else a new one.
    async fn look(&self) -> Look {
        let mut state = self.state.lock().await;
        if let Some((at, look)) = &state.last
            && at.elapsed() < FRESH_FOR
        {
            return look.clone();
        }
        let now = Instant::now();
        let look = match self.report(&mut state.history, now).await {
            Ok(report) => match serde_json::to_vec(&report) {
                Ok(body) => Look::Report(Bytes::from(body)),
                Err(e) => Look::Failed(ApiError::Encode(e.to_string()).into_problem()),
            },
            Err(error) => Look::Failed(error.into_problem()),
        };
        state.last = Some((now, look.clone()));
        look
    }

    async fn report(
        &self,
        history: &mut VecDeque<Sample>,
        now: Instant,
    ) -> Result<StatusReport, ApiError> {
        let (generation, pool) = self.read_models.primary();
        let topic = self.read_models.topic();
        let mut conn = pool.acquire().await?;
        let rows: Vec<OffsetsRow> = sqlx::query_as(OFFSETS)
            .bind(topic)
            .fetch_all(&mut *conn)
            .await?;
        let building: Vec<(String, DateTime<Utc>)> =
            sqlx::query_as(BUILDING).fetch_all(&mut *conn).await?;
        let sampled_at = Utc::now();

        let offsets: Offsets = rows.iter().map(|r| (r.partition, r.next_offset)).collect();
        let rates = rates(history, now, &generation, &offsets);
        history.push_back(Sample {
            at: now,
            generation: generation.clone(),
            offsets,
        });

        let partitions: Vec<PartitionStatus> = rows
            .into_iter()
            .map(|row| {
                let rate = rates.get(&row.partition).copied();
                row.into_status(rate)
            })
            .collect();
        let totals = totals(&partitions, !rates.is_empty());
        let target = partitions
            .iter()
            .map(|p| p.log_end_offset.unwrap_or(p.next_offset))
            .sum::<i64>();
        let mut rebuilds = Vec::with_capacity(building.len());
        for (name, created_at) in building {
            let events = events_in(&mut conn, &name, topic).await?;
            rebuilds.push(RebuildStatus {
                progress: if target > 0 {
                    (events as f64 / target as f64).clamp(0.0, 1.0)
                } else {
                    0.0
                },
                generation: name,
                created_at,
                events,
                target,
            });
        }
        Ok(StatusReport {
            topic: topic.to_owned(),
            generation,
            sampled_at,
            totals,
            partitions,
            rebuilds,
        })
    }
}

const OFFSETS: &str = "SELECT partition, next_offset, log_end_offset, owner, claimed_at, updated_at, \
     applied, rejected_version_conflict, rejected_not_found, rejected_already_exists, \
     rejected_idempotency_key_reused, dead_letters \
     FROM projector_offsets WHERE topic = $1 ORDER BY partition";

// The catalogue is in `public` whichever generation is active.
const BUILDING: &str = "SELECT name, created_at FROM public.read_model_generations \
     WHERE state = 'building' ORDER BY created_at, name";

#[derive(sqlx::FromRow)]
struct OffsetsRow {
    partition: i32,
    next_offset: i64,
    log_end_offset: Option<i64>,
    owner: String,
    claimed_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    applied: i64,
    rejected_version_conflict: i64,
    rejected_not_found: i64,
    rejected_already_exists: i64,
    rejected_idempotency_key_reused: i64,
    dead_letters: i64,
}

impl OffsetsRow {
    fn into_status(self, events_per_second: Option<f64>) -> PartitionStatus {
        PartitionStatus {
            partition: self.partition,
            next_offset: self.next_offset,
            log_end_offset: self.log_end_offset,
            lag: self
                .log_end_offset
                .map(|end| end.saturating_sub(self.next_offset).max(0)),
            events_per_second,
            owner: self.owner,
            claimed_at: self.claimed_at,
            last_commit_at: self.updated_at,
            applied: self.applied,
            rejected: Rejections {
                version_conflict: self.rejected_version_conflict,
                not_found: self.rejected_not_found,
                already_exists: self.rejected_already_exists,
                idempotency_key_reused: self.rejected_idempotency_key_reused,
            },
            dead_letters: self.dead_letters,
        }
    }
}

/// Each partition's events per second since the oldest look of `generation` in the window
/// (forgetting older looks and other generations'); empty when there is none old enough.
fn rates(
    history: &mut VecDeque<Sample>,
    now: Instant,
    generation: &str,
    offsets: &Offsets,
) -> BTreeMap<i32, f64> {
    while history.front().is_some_and(|s| {
        now.saturating_duration_since(s.at) > RATE_WINDOW || s.generation != generation
    }) {
        history.pop_front();
    }
    let Some(base) = history.front() else {
        return BTreeMap::new();
    };
    let elapsed = now.saturating_duration_since(base.at);
    if elapsed < RATE_SHORTEST {
        return BTreeMap::new();
    }
    offsets
        .iter()
        .filter_map(|(partition, next)| {
            let before = base.offsets.get(partition)?;
            let projected = (next - before).max(0);
            Some((*partition, projected as f64 / elapsed.as_secs_f64()))
        })
        .collect()
}

fn totals(partitions: &[PartitionStatus], has_rates: bool) -> Totals {
    let known = |values: Vec<Option<i64>>| -> Option<i64> {
        values
            .iter()
            .any(Option::is_some)
            .then(|| values.into_iter().flatten().sum())
    };
    Totals {
        next_offset: partitions.iter().map(|p| p.next_offset).sum(),
        log_end_offset: known(partitions.iter().map(|p| p.log_end_offset).collect()),
        lag: known(partitions.iter().map(|p| p.lag).collect()),
        events_per_second: has_rates
            .then(|| partitions.iter().filter_map(|p| p.events_per_second).sum()),
        applied: partitions.iter().map(|p| p.applied).sum(),
        rejected: partitions.iter().map(|p| p.rejected.total()).sum(),
        dead_letters: partitions.iter().map(|p| p.dead_letters).sum(),
    }
}

/// Events a generation being rebuilt has projected of `topic`: the sum of its offsets; 0 until
/// the rebuild has made its tables.
async fn events_in(conn: &mut PgConnection, name: &str, topic: &str) -> Result<i64, ApiError> {
    // The catalogue's names are the projector's own, but they go into SQL text.
    if !is_plain_identifier(name) || name == FIRST_GENERATION {
        return Ok(0);
    }
    let table = format!("{name}.projector_offsets");
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&table)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(0);
    }
    let events = sqlx::query_scalar(&format!(
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM {table} WHERE topic = $1"
    ))
    .bind(topic)
    .fetch_one(&mut *conn)
    .await?;
    Ok(events)
}

#[utoipa::path(
    get,
    path = "/status.json",
    tag = "operations",
    responses(
        (status = 200, description = "The projection now: each partition's offset, lag, events per second, decisions and dead letters; the active generation; rebuilds in progress. One look a second is shared by every request.", body = StatusReport),
        (status = 503, description = "The database is unreachable (or not migrated yet)."),
    )
)]
/// What the projection is doing now (the status page's data).
pub async fn status_json(State(board): State<StatusBoard>) -> Response {
    match board.look().await {
        Look::Report(body) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            body,
        )
            .into_response(),
        Look::Failed(problem) => problem.into_response(),
    }
}

#[utoipa::path(
    get,
    path = "/status",
    tag = "operations",
    responses(
        (status = 200, description = "The status page: `/status.json`, shown and updated every second.", content_type = "text/html", body = String),
    )
)]
/// The status page, for people.
pub async fn status_page() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, generation: &str, offsets: &[(i32, i64)]) -> Sample {
        Sample {
            at,
            generation: generation.to_owned(),
            offsets: offsets.iter().copied().collect(),
        }
    }

    #[test]
    fn rates_are_measured_against_the_oldest_look_in_the_window_of_the_same_generation() {
        let start = Instant::now();
        let at = |secs: f64| start + Duration::from_secs_f64(secs);
        let mut history = VecDeque::from([
            sample(at(0.0), "public", &[(0, 0)]),
            sample(at(3.0), "public", &[(0, 100), (1, 7)]),
            sample(at(4.0), "public", &[(0, 150), (1, 9)]),
        ]);
        let now = at(7.0);
        let rates = rates(
            &mut history,
            now,
            "public",
            &[(0, 300), (1, 19), (2, 5)].into(),
        );
        assert_eq!(
            history.len(),
            2,
            "the look older than the window is forgotten"
        );
        assert_eq!(
            rates,
            [(0, 50.0), (1, 3.0)].into(),
            "partition 2 has no base"
        );

        // Another generation's looks say nothing about this one's offsets.
        let rates = rates_of(&mut history, at(7.5), "generation_1");
        assert!(rates.is_empty());
        assert!(history.is_empty());
    }

    fn rates_of(
        history: &mut VecDeque<Sample>,
        now: Instant,
        generation: &str,
    ) -> BTreeMap<i32, f64> {
        rates(history, now, generation, &[(0, 1)].into())
    }

    #[test]
    fn looks_too_close_together_give_no_rate() {
        let start = Instant::now();
        let mut history = VecDeque::from([sample(start, "public", &[(0, 0)])]);
        let rates = rates(
            &mut history,
            start + Duration::from_millis(100),
            "public",
            &[(0, 10)].into(),
        );
        assert!(rates.is_empty());
    }

    #[test]
    fn totals_sum_what_is_known() {
        let partition = |p, next, end: Option<i64>, rate| PartitionStatus {
            partition: p,
            next_offset: next,
            log_end_offset: end,
            lag: end.map(|e| e - next),
            events_per_second: rate,
            owner: "a".into(),
            claimed_at: Utc::now(),
            last_commit_at: Utc::now(),
            applied: 2,
            rejected: Rejections {
                not_found: 1,
                ..Rejections::default()
            },
            dead_letters: 1,
        };
        let totals = totals(
            &[
                partition(0, 10, Some(15), Some(1.5)),
                partition(1, 4, None, None),
            ],
            true,
        );
        assert_eq!(totals.next_offset, 14);
        assert_eq!(totals.log_end_offset, Some(15));
        assert_eq!(totals.lag, Some(5));
        assert_eq!(totals.events_per_second, Some(1.5));
        assert_eq!(
            (totals.applied, totals.rejected, totals.dead_letters),
            (4, 2, 2)
        );
        let unknown = super::totals(&[partition(0, 1, None, None)], false);
        assert_eq!((unknown.lag, unknown.events_per_second), (None, None));
    }
}
