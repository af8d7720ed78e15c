//! The handlers: one per route of contract v1's reads, plus `/readyz`.

use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};

use crate::AppState;
use crate::error::ApiError;
use crate::etag::versioned;
use crate::extract::{PathId, ReadAfter};
use crate::pagination::{Page, PageRequest, StreamPageRequest};
use crate::read_models::{Decision, Post, StreamEvent};

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
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.read_after(token).await?;
    let user = state
        .read_models
        .user(user_id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok(versioned(&headers, user.version, &user))
}

async fn get_post(
    State(state): State<AppState>,
    PathId(post_id): PathId,
    ReadAfter(token): ReadAfter,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.read_after(token).await?;
    let post = state
        .read_models
        .post(post_id)
        .await?
        .ok_or(ApiError::NotFound("post"))?;
    Ok(versioned(&headers, post.version, &post))
}

async fn list_user_posts(
    State(state): State<AppState>,
    PathId(user_id): PathId,
    page: PageRequest,
    ReadAfter(token): ReadAfter,
) -> Result<Json<Page<Post>>, ApiError> {
    state.read_after(token).await?;
    if !state.read_models.live_user_exists(user_id).await? {
        return Err(ApiError::NotFound("user"));
    }
    let rows = state.read_models.posts_by_author(user_id, &page).await?;
    Ok(Json(Page::from_rows(rows, page.limit, |post| {
        post.cursor().encode()
    })))
}

async fn list_posts(
    State(state): State<AppState>,
    page: PageRequest,
    ReadAfter(token): ReadAfter,
) -> Result<Json<Page<Post>>, ApiError> {
    state.read_after(token).await?;
    let rows = state.read_models.feed(&page).await?;
    Ok(Json(Page::from_rows(rows, page.limit, |post| {
        post.cursor().encode()
    })))
}

async fn get_command(
    State(state): State<AppState>,
    PathId(command_id): PathId,
    ReadAfter(token): ReadAfter,
) -> Result<Json<Decision>, ApiError> {
    state.read_after(token).await?;
    let decision = state
        .read_models
        .decision(command_id)
        .await?
        .ok_or(ApiError::NotFound("command"))?;
    Ok(Json(decision))
}

/// A stream is history: a deleted user's or post's stream is still served, ending with the
/// deletion. Only an aggregate with no applied event at all is not found.
async fn list_stream_events(
    State(state): State<AppState>,
    PathId(aggregate_id): PathId,
    page: StreamPageRequest,
    ReadAfter(token): ReadAfter,
) -> Result<Json<Page<StreamEvent>>, ApiError> {
    state.read_after(token).await?;
    let rows = state.read_models.stream(aggregate_id, &page).await?;
    // An empty page past the end of a stream that exists is a page, not a 404.
    if rows.is_empty() && !state.read_models.stream_exists(aggregate_id).await? {
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
