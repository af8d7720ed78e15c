//! The writes of a user: `POST /v1/users` (sign-up: open, limited by IP in the route layer
//! `limit_sign_ups`), and `PATCH` and `DELETE /v1/users/{user_id}` (the user's own, behind the
//! route layer `require_path_user`). Each handler checks its request into a [`Write`] and an
//! event and hands them to [`accept`].

use axum::extract::State;
use events::Event;

use crate::accepted::Accepted;
use crate::auth;
use crate::command::field_rules;
use crate::command::paths;
use crate::command::write::Write;
use crate::error::ApiError;
use crate::extract::{Caller, ExpectedVersion, IdempotencyKey, JsonBody, UserPath};
use crate::openapi::{
    BodyRefusals, NotAppended, OwnedWriteRefusals, RegisterUser, SignedUp, UpdateProfile,
    WriteAccepted,
};
use crate::pipeline::accept;
use crate::state::AppState;

#[utoipa::path(
    post,
    path = paths::USERS,
    tag = "writes",
    params(IdempotencyKey),
    request_body(content = RegisterUser, content_type = "application/json"),
    responses(
        WriteAccepted<SignedUp>,
        (status = 400, description = "Malformed: JSON or Idempotency-Key."),
        BodyRefusals,
        (status = 429, description = "Over the caller's write rate limit (by IP, for sign-ups); nothing appended."),
        NotAppended,
    )
)]
/// `POST /v1/users`: open, and its answer carries the new user's access token.
pub async fn register_user(
    State(state): State<AppState>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Accepted, ApiError> {
    let event = field_rules::register_user(body).map_err(ApiError::Validation)?;
    let accepted = accept(&state, None, Write::RegisterUser, event, key, None).await?;
    // Issued only once the user's registration is in the log. A retry with the same
    // Idempotency-Key names the same user, so it gets a token for it too: for sign-ups the key
    // is as good as the token, which is why it must be unguessable (docs/api.md,
    // "Authentication and the client's session").
    let access_token = state
        .tokens
        .issue(accepted.aggregate_id(), auth::unix_now());
    Ok(accepted.with_access_token(access_token))
}

#[utoipa::path(
    patch,
    path = paths::USER,
    tag = "writes",
    params(UserPath, ExpectedVersion, IdempotencyKey),
    request_body(content = UpdateProfile, content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        WriteAccepted,
        (status = 400, description = "Malformed: JSON, a path id that is not a UUID, If-Match, or Idempotency-Key."),
        OwnedWriteRefusals,
        BodyRefusals,
        NotAppended,
    )
)]
/// `PATCH /v1/users/{user_id}`: edit the user's profile.
pub async fn update_profile(
    State(state): State<AppState>,
    caller: Caller,
    UserPath { user_id }: UserPath,
    ExpectedVersion(expected_version): ExpectedVersion,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Accepted, ApiError> {
    let event = field_rules::update_profile(body).map_err(ApiError::Validation)?;
    accept(
        &state,
        Some(caller),
        Write::UpdateProfile { user_id },
        event,
        key,
        expected_version,
    )
    .await
}

#[utoipa::path(
    delete,
    path = paths::USER,
    tag = "writes",
    params(UserPath, ExpectedVersion, IdempotencyKey),
    security(("bearer" = [])),
    responses(
        WriteAccepted,
        (status = 400, description = "Malformed: a path id that is not a UUID, If-Match, or Idempotency-Key."),
        OwnedWriteRefusals,
        NotAppended,
    )
)]
/// `DELETE /v1/users/{user_id}`: delete the user and, with it, the user's posts.
///
/// Any body is ignored.
pub async fn delete_user(
    State(state): State<AppState>,
    caller: Caller,
    UserPath { user_id }: UserPath,
    ExpectedVersion(expected_version): ExpectedVersion,
    IdempotencyKey(key): IdempotencyKey,
) -> Result<Accepted, ApiError> {
    accept(
        &state,
        Some(caller),
        Write::DeleteUser { user_id },
        Event::UserDeleted,
        key,
        expected_version,
    )
    .await
}
