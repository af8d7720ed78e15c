//! The handlers: one per route of contract v1's reads, plus `/readyz`.

use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};

use crate::answer::Answer;
use crate::cache::Key;
use crate::error::ApiError;
use crate::extract::{IfNoneMatch, PathId, ReadAfter};
use crate::pagination::{Page, PageRequest, StreamPageRequest};
use crate::read_models::{Post, Source, StreamEvent};
use crate::{AppState, Loaded};

/// How long `/readyz` gives PostgreSQL to answer `SELECT 1`.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/users/{user_id}", get(get_user))
        .route("/v1/users/{user_id}/posts", get(list_user_posts))
        .route("/v1/posts", get(list_posts))
        .route("/v1/posts/{post_id}", get(get_post))
        .route("/v1/commands/{command_id}", get(get_command))
        .route("/v1/streams/{aggregate_id}/events", get(list_stream_events))
        .route("/readyz", get(readyz))
}

async fn get_user(
    State(state): State<AppState>,
    PathId(user_id): PathId,
    ReadAfter(token): ReadAfter,
    IfNoneMatch(if_none_match): IfNoneMatch,
) -> Result<Response, ApiError> {
    let requirement = state.read_after(token).await?;
    let answer = state
        .cached(Key::User(user_id), requirement, |source| async move {
            let answer = match source.user(user_id).await? {
                Some(user) => Answer::versioned(user.version, &user)?,
                None => Answer::NotFound("user"),
            };
            Ok(Loaded {
                answer,
                owner: Some(user_id),
            })
        })
        .await?;
    Ok(answer.respond(&if_none_match))
}

async fn get_post(
    State(state): State<AppState>,
    PathId(post_id): PathId,
    ReadAfter(token): ReadAfter,
    IfNoneMatch(if_none_match): IfNoneMatch,
) -> Result<Response, ApiError> {
    let requirement = state.read_after(token).await?;
    let answer = state
        .cached(Key::Post(post_id), requirement, |source| async move {
            Ok(match source.post(post_id).await? {
                Some(post) => Loaded {
                    answer: Answer::versioned(post.version, &post)?,
                    owner: Some(post.author_id),
                },
                // Until a notice names the post: it cannot appear any other way.
                None => Loaded {
                    answer: Answer::NotFound("post"),
                    owner: None,
                },
            })
        })
        .await?;
    Ok(answer.respond(&if_none_match))
}

async fn list_user_posts(
    State(state): State<AppState>,
    PathId(user_id): PathId,
    page: PageRequest,
    ReadAfter(token): ReadAfter,
) -> Result<Response, ApiError> {
    let requirement = state.read_after(token).await?;
    let load = |source: Source| async move {
        let answer = if source.live_user_exists(user_id).await? {
            let rows = source.posts_by_author(user_id, &page).await?;
            page_answer(rows, page.limit)?
        } else {
            Answer::NotFound("user")
        };
        Ok(Loaded {
            answer,
            owner: Some(user_id),
        })
    };
    let answer = match page.after {
        None => {
            let key = Key::UserPosts {
                user: user_id,
                limit: page.limit,
            };
            state.cached(key, requirement, load).await?
        }
        Some(_) => load(state.source(&requirement).await).await?.answer,
    };
    Ok(answer.respond(&[]))
}

async fn list_posts(
    State(state): State<AppState>,
    page: PageRequest,
    ReadAfter(token): ReadAfter,
) -> Result<Response, ApiError> {
    let requirement = state.read_after(token).await?;
    let load = |source: Source| async move {
        let rows = source.feed(&page).await?;
        Ok(Loaded {
            answer: page_answer(rows, page.limit)?,
            owner: None,
        })
    };
    let answer = match page.after {
        None => {
            let key = Key::Feed { limit: page.limit };
            state.cached(key, requirement, load).await?
        }
        Some(_) => load(state.source(&requirement).await).await?.answer,
    };
    Ok(answer.respond(&[]))
}

fn page_answer(rows: Vec<Post>, limit: u32) -> Result<Answer, ApiError> {
    Answer::json(&Page::from_rows(rows, limit, |post| post.cursor().encode()))
}

/// A decision never changes once made, so it is cached; its absence is not (see `cache`).
async fn get_command(
    State(state): State<AppState>,
    PathId(command_id): PathId,
    ReadAfter(token): ReadAfter,
) -> Result<Response, ApiError> {
    let requirement = state.read_after(token).await?;
    let answer = state
        .cached(Key::Command(command_id), requirement, |source| async move {
            let answer = match source.decision(command_id).await? {
                Some(decision) => Answer::json(&decision)?,
                None => Answer::NotFound("command"),
            };
            Ok(Loaded {
                answer,
                owner: None,
            })
        })
        .await?;
    Ok(answer.respond(&[]))
}

/// A stream is history: a deleted user's or post's stream is still served, ending with the
/// deletion. Only an aggregate with no applied event at all is not found.
async fn list_stream_events(
    State(state): State<AppState>,
    PathId(aggregate_id): PathId,
    page: StreamPageRequest,
    ReadAfter(token): ReadAfter,
) -> Result<Json<Page<StreamEvent>>, ApiError> {
    let requirement = state.read_after(token).await?;
    let source = state.source(&requirement).await;
    let rows = source.stream(aggregate_id, &page).await?;
    // An empty page past the end of a stream that exists is a page, not a 404.
    if rows.is_empty() && !source.stream_exists(aggregate_id).await? {
        return Err(ApiError::NotFound("stream"));
    }
    Ok(Json(Page::from_rows(rows, page.limit, |event| {
        event.cursor().encode()
    })))
}

async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    match tokio::time::timeout(READY_TIMEOUT, state.read_models.ping()).await {
        Ok(Ok(())) => Ok("ready"),
        Ok(Err(error)) => Err(ApiError::DatabaseUnavailable(error)),
        Err(_elapsed) => Err(ApiError::DatabaseUnavailable(sqlx::Error::PoolTimedOut)),
    }
}
