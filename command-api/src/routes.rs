//! The handlers: each turns its request into a [`Write`] and an event, and [`accept`] does the
//! rest the same way for all six.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use events::{ConsistencyToken, Event};
use serde::Serialize;
use uuid::Uuid;

use crate::AppState;
use crate::command::{self, Write};
use crate::error::ApiError;
use crate::extract::{ExpectedVersion, IdempotencyKey, JsonBody, PostPath, UserPath};

pub const CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("consistency-token");

/// `POST /v1/users`
pub async fn register_user(
    State(state): State<AppState>,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Accepted, ApiError> {
    let event = command::register_user(body).map_err(ApiError::Validation)?;
    accept(&state, Write::RegisterUser, event, key, None).await
}

/// `PATCH /v1/users/{user_id}`
pub async fn update_profile(
    State(state): State<AppState>,
    UserPath { user_id }: UserPath,
    ExpectedVersion(expected_version): ExpectedVersion,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Accepted, ApiError> {
    let event = command::update_profile(body).map_err(ApiError::Validation)?;
    accept(
        &state,
        Write::UpdateProfile { user_id },
        event,
        key,
        expected_version,
    )
    .await
}

/// `DELETE /v1/users/{user_id}`; any body is ignored.
pub async fn delete_user(
    State(state): State<AppState>,
    UserPath { user_id }: UserPath,
    ExpectedVersion(expected_version): ExpectedVersion,
    IdempotencyKey(key): IdempotencyKey,
) -> Result<Accepted, ApiError> {
    accept(
        &state,
        Write::DeleteUser { user_id },
        Event::UserDeleted,
        key,
        expected_version,
    )
    .await
}

/// `POST /v1/users/{user_id}/posts`
pub async fn publish_post(
    State(state): State<AppState>,
    UserPath { user_id }: UserPath,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Accepted, ApiError> {
    let event = command::publish_post(body).map_err(ApiError::Validation)?;
    accept(&state, Write::PublishPost { user_id }, event, key, None).await
}

/// `PATCH /v1/users/{user_id}/posts/{post_id}`
pub async fn edit_post(
    State(state): State<AppState>,
    PostPath { user_id, post_id }: PostPath,
    ExpectedVersion(expected_version): ExpectedVersion,
    IdempotencyKey(key): IdempotencyKey,
    JsonBody(body): JsonBody,
) -> Result<Accepted, ApiError> {
    let event = command::edit_post(body).map_err(ApiError::Validation)?;
    accept(
        &state,
        Write::EditPost { user_id, post_id },
        event,
        key,
        expected_version,
    )
    .await
}

/// `DELETE /v1/users/{user_id}/posts/{post_id}`; any body is ignored.
pub async fn delete_post(
    State(state): State<AppState>,
    PostPath { user_id, post_id }: PostPath,
    ExpectedVersion(expected_version): ExpectedVersion,
    IdempotencyKey(key): IdempotencyKey,
) -> Result<Accepted, ApiError> {
    let write = Write::DeletePost { user_id, post_id };
    accept(&state, write, Event::PostDeleted, key, expected_version).await
}

/// `GET /readyz`: 200 when the broker answers for the topic, else 503.
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.appender.check_ready().await?;
    Ok("ready")
}

/// Gives the write its ids, wraps it in an envelope and appends it; 202 once the broker has it.
async fn accept(
    state: &AppState,
    write: Write,
    event: Event,
    idempotency_key: Option<String>,
    expected_version: Option<i64>,
) -> Result<Accepted, ApiError> {
    let ids = command::command_ids(write, &event, idempotency_key.as_deref(), expected_version);
    let envelope = command::envelope(
        write,
        event,
        ids,
        idempotency_key,
        expected_version,
        Utc::now(),
    );
    let appended = state.appender.append(&envelope).await;
    let outcome = match &appended {
        Ok(_) => "appended",
        Err(error) => error.outcome(),
    };
    state.metrics.count(
        "command_appends_total",
        "Events the command API tried to append, by event type and outcome.",
        vec![
            ("type", envelope.type_name().to_owned()),
            ("outcome", outcome.to_owned()),
        ],
        1,
    );
    let token = appended?;
    tracing::info!(
        command_id = %envelope.command_id,
        aggregate_id = %envelope.aggregate_id,
        event_type = envelope.type_name(),
        %token,
        "command accepted"
    );
    Ok(Accepted {
        command_id: envelope.command_id,
        aggregate_id: envelope.aggregate_id,
        resource: command::resource_path(envelope.aggregate_type(), envelope.aggregate_id),
        token,
    })
}

/// The 202 answer to an accepted write.
#[derive(Debug)]
pub struct Accepted {
    command_id: Uuid,
    aggregate_id: Uuid,
    resource: String,
    token: ConsistencyToken,
}

#[derive(Serialize)]
struct AcceptedBody {
    command_id: Uuid,
    aggregate_id: Uuid,
    consistency_token: String,
    links: Links,
}

#[derive(Serialize)]
struct Links {
    status: String,
    resource: String,
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let status_path = format!("/v1/commands/{}", self.command_id);
        let token = self.token.to_string();
        let headers = [
            (header::LOCATION, status_path.clone()),
            (CONSISTENCY_TOKEN, token.clone()),
        ];
        let body = AcceptedBody {
            command_id: self.command_id,
            aggregate_id: self.aggregate_id,
            consistency_token: token,
            links: Links {
                status: status_path,
                resource: self.resource,
            },
        };
        (StatusCode::ACCEPTED, headers, Json(body)).into_response()
    }
}
