//! The writes of a user's posts: `POST /v1/users/{user_id}/posts`, and `PATCH` and `DELETE
//! /v1/users/{user_id}/posts/{post_id}`, all behind the route layer `require_path_user`. Each
//! handler checks its request into a [`Write`] and an event and hands them to [`accept`].

use axum::extract::State;
use events::Event;

use crate::accepted::Accepted;
use crate::command::field_rules;
use crate::command::paths;
use crate::command::write::Write;
use crate::error::ApiError;
use crate::extract::{Caller, ExpectedVersion, IdempotencyKey, JsonBody, PostPath, UserPath};
use crate::openapi::{
    BodyRefusals, EditPost, NotAppended, OwnedWriteRefusals, PublishPost, WriteAccepted,
};
use crate::pipeline::accept;
use crate::state::AppState;

#[utoipa::path(
    post,
    path = paths::USER_POSTS,
    tag = "writes",
    params(UserPath, IdempotencyKey),
    request_body(content = PublishPost, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        WriteAccepted,
        (status = 400, description = "Malformed: JSON, a path id that is not a UUID, or Idempotency-Key."),
        OwnedWriteRefusals,
        BodyRefusals,
        NotAppended,
    )
)]
/// `POST /v1/users/{user_id}/posts`: publish a post.
pub async fn publish_post(
    State(state): State<AppState>,
    caller: Caller,
    UserPath { user_id }: UserPath,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Accepted, ApiError> {
    let event = field_rules::publish_post(body).map_err(ApiError::Validation)?;
    let write = Write::PublishPost { user_id };
    accept(&state, Some(caller), write, event, key, None).await
}

#[utoipa::path(
    patch,
    path = paths::USER_POST,
    tag = "writes",
    params(PostPath, ExpectedVersion, IdempotencyKey),
    request_body(content = EditPost, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        WriteAccepted,
        (status = 400, description = "Malformed: JSON, a path id that is not a UUID, If-Match, or Idempotency-Key."),
        OwnedWriteRefusals,
        BodyRefusals,
        NotAppended,
    )
)]
/// `PATCH /v1/users/{user_id}/posts/{post_id}`: edit a post.
pub async fn edit_post(
    State(state): State<AppState>,
    caller: Caller,
    PostPath { user_id, post_id }: PostPath,
    ExpectedVersion(expected_version): ExpectedVersion,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Accepted, ApiError> {
    let event = field_rules::edit_post(body).map_err(ApiError::Validation)?;
    accept(
        &state,
        Some(caller),
        Write::EditPost { user_id, post_id },
        event,
        key,
        expected_version,
    )
    .await
}

#[utoipa::path(
    delete,
    path = paths::USER_POST,
    tag = "writes",
    params(PostPath, ExpectedVersion, IdempotencyKey),
    security(("bearer" = [])),
    responses(
        WriteAccepted,
        (status = 400, description = "Malformed: a path id that is not a UUID, If-Match, or Idempotency-Key."),
        OwnedWriteRefusals,
        NotAppended,
    )
)]
/// `DELETE /v1/users/{user_id}/posts/{post_id}`: delete a post.
///
/// Any body is ignored.
pub async fn delete_post(
    State(state): State<AppState>,
    caller: Caller,
    PostPath { user_id, post_id }: PostPath,
    ExpectedVersion(expected_version): ExpectedVersion,
    IdempotencyKey(key): IdempotencyKey,
) -> Result<Accepted, ApiError> {
    let write = Write::DeletePost { user_id, post_id };
    accept(
        &state,
        Some(caller),
        write,
        Event::PostDeleted,
        key,
        expected_version,
    )
    .await
}
