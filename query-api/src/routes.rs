//! The handlers: one per route of contract v1's reads, plus `/readyz`; the status page's are
//! in [`crate::status`].

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::answer::Answer;
use crate::app_state::{AppState, Loaded};
use crate::cache::Key;
use crate::error::ApiError;
use crate::extract::{IfNoneMatch, PathId, ReadAfter};
use crate::openapi::{MalformedIdOrToken, ReadUnavailable};
use crate::pagination::{Page, PageRequest, StreamPageRequest};
use crate::read_models::{Decision, Post, Source, StreamEvent, User};

/// How long `/readyz` gives PostgreSQL to answer `SELECT 1`.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// The routes, each with its documentation: `routes!` takes a route's method and path from its
/// handler's `#[utoipa::path]`.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_user))
        .routes(routes!(list_user_posts))
        .routes(routes!(list_posts))
        .routes(routes!(get_post))
        .routes(routes!(get_command))
        .routes(routes!(list_stream_events))
        .routes(routes!(readyz))
        .routes(routes!(crate::status::status_json))
        .routes(routes!(crate::status::status_page))
}

#[utoipa::path(
    get,
    path = "/v1/users/{user_id}",
    tag = "reads",
    params(("user_id" = Uuid, Path, description = "The user. A UUID in its hyphenated form; anything else is 400."), ReadAfter, IfNoneMatch),
    responses(
        (status = 200, description = "The user.", body = User),
        MalformedIdOrToken,
        (status = 404, description = "No such user, or deleted."),
        ReadUnavailable,
    )
)]
/// A user.
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

#[utoipa::path(
    get,
    path = "/v1/posts/{post_id}",
    tag = "reads",
    params(("post_id" = Uuid, Path, description = "The post. A UUID in its hyphenated form; anything else is 400."), ReadAfter, IfNoneMatch),
    responses(
        (status = 200, description = "The post.", body = Post),
        MalformedIdOrToken,
        (status = 404, description = "No such post, or it or its author is deleted."),
        ReadUnavailable,
    )
)]
/// A post.
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

#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/posts",
    tag = "reads",
    params(("user_id" = Uuid, Path, description = "The author. A UUID in its hyphenated form; anything else is 400."), PageRequest, ReadAfter),
    responses(
        (status = 200, description = "A page of the user's posts, newest first.", body = Page<Post>),
        (status = 400, description = "A path id that is not a UUID, a bad limit or cursor, or a malformed Consistency-Token."),
        (status = 404, description = "No such user, or deleted."),
        ReadUnavailable,
    )
)]
/// A page of a user's posts, newest first.
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

#[utoipa::path(
    get,
    path = "/v1/posts",
    tag = "reads",
    params(PageRequest, ReadAfter),
    responses(
        (status = 200, description = "A page of all posts, newest first.", body = Page<Post>),
        (status = 400, description = "A bad limit or cursor, or a malformed Consistency-Token."),
        ReadUnavailable,
    )
)]
/// A page of all posts, newest first.
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

#[utoipa::path(
    get,
    path = "/v1/commands/{command_id}",
    tag = "reads",
    params(("command_id" = Uuid, Path, description = "The command_id of a write's answer. A UUID in its hyphenated form; anything else is 400."), ReadAfter),
    responses(
        (status = 200, description = "The decision: applied or rejected.", body = Decision),
        MalformedIdOrToken,
        (status = 404, description = "Not decided yet (or never accepted)."),
        ReadUnavailable,
    )
)]
/// The projector's decision on a write.
///
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

#[utoipa::path(
    get,
    path = "/v1/streams/{aggregate_id}/events",
    tag = "reads",
    params(("aggregate_id" = Uuid, Path, description = "A user's or post's id. A UUID in its hyphenated form; anything else is 400."), StreamPageRequest, ReadAfter),
    responses(
        (status = 200, description = "A page of the aggregate's applied events, oldest first.", body = Page<StreamEvent>),
        (status = 400, description = "A path id that is not a UUID, a bad from_version, limit or cursor, or a malformed Consistency-Token."),
        (status = 404, description = "No applied event for this id."),
        ReadUnavailable,
    )
)]
/// The applied events of one user or post, in order.
///
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

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: PostgreSQL answers.", content_type = "text/plain", body = String),
        (status = 503, description = "The database is unreachable."),
    )
)]
/// Readiness: 200 when PostgreSQL answers.
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    match tokio::time::timeout(READY_TIMEOUT, state.read_models.ping()).await {
        Ok(Ok(())) => Ok("ready"),
        Ok(Err(error)) => Err(ApiError::DatabaseUnavailable(error)),
        Err(_elapsed) => Err(ApiError::DatabaseUnavailable(sqlx::Error::PoolTimedOut)),
    }
}
