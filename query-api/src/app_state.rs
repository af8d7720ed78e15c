//! [`AppState`], what every handler shares, and the path every cached read takes through it:
//! the token wait, then the cache, or else a read model on the primary or a replica.

use std::future::Future;

use axum::extract::FromRef;
use events::ConsistencyToken;
use service_kit::metrics::Metrics;
use uuid::Uuid;

use crate::answer::Answer;
use crate::cache::{Cache, Key};
use crate::consistency::Watermarks;
use crate::error::ApiError;
use crate::read_models::{ReadModels, Source};
use crate::replicas::Requirement;
use crate::status::StatusBoard;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub read_models: ReadModels,
    pub watermarks: Watermarks,
    pub cache: Cache,
    pub metrics: Metrics,
    pub status: StatusBoard,
}

/// What a read found: its answer, and the user whose changes make it stale (if any).
#[derive(Debug)]
pub struct Loaded {
    pub answer: Answer,
    pub owner: Option<Uuid>,
}

impl AppState {
    /// Waits, if the client sent a token, until the read model includes that write; returns
    /// what the read then needs of the database that answers it.
    pub async fn read_after(
        &self,
        token: Option<ConsistencyToken>,
    ) -> Result<Requirement, ApiError> {
        if let Some(token) = token {
            self.watermarks
                .wait_until_covered(token, &self.read_models)
                .await?;
        }
        Ok(Requirement::after(token))
    }

    /// Where a read that needs `requirement` and fills no cache entry runs its queries.
    pub async fn source(&self, requirement: &Requirement) -> Source {
        self.read_models.source(requirement).await
    }

    /// `key`'s answer from the cache, or else from `load` (PostgreSQL, on the source it is
    /// given), kept for next time. Call with what [`read_after`](AppState::read_after) returned.
    pub async fn cached<Load>(
        &self,
        key: Key,
        requirement: Requirement,
        load: impl FnOnce(Source) -> Load,
    ) -> Result<Answer, ApiError>
    where
        Load: Future<Output = Result<Loaded, ApiError>>,
    {
        if let Some(answer) = self.cache.get(&key, requirement.token()) {
            return Ok(answer);
        }
        // Before the database read: see the fill race, and replicas, in `cache`.
        let fill = self.cache.begin_fill(|| self.watermarks.heard());
        let requirement = match fill.filled_under() {
            // After the sequence, as the watermarks.
            Some(_) if self.watermarks.heard_other_topics() => requirement.and_primary_only(),
            Some(filled_under) => requirement.and_watermarks(filled_under.clone()),
            None => requirement,
        };
        let source = self.read_models.source(&requirement).await;
        let Loaded { answer, owner } = load(source).await?;
        self.cache.store(fill, key, answer.clone(), owner);
        Ok(answer)
    }
}

/// The status routes take only the board.
impl FromRef<AppState> for StatusBoard {
    fn from_ref(state: &AppState) -> StatusBoard {
        state.status.clone()
    }
}
