//! The handlers: each turns its request into a [`Write`] and an event, and [`accept`] does the
//! rest the same way for all six. [`require_path_user`] authenticates the five writes under a
//! user's path before their handlers run.

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use events::{ConsistencyToken, Event};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::AppState;
use crate::auth;
use crate::command::routes as paths;
use crate::command::{self, Write};
use crate::error::ApiError;
use crate::extract::{Caller, ExpectedVersion, IdempotencyKey, JsonBody, PostPath, UserPath};
use crate::openapi::{
    BodyRefusals, EditPost, NotAppended, OwnedWriteRefusals, PublishPost, RegisterUser, SignedUp,
    UpdateProfile, WriteAccepted,
};
use crate::ratelimit::Client;

pub const CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("consistency-token");

/// The route layer of every write under `/v1/users/{user_id}`: the bearer token must be valid
/// (else 401), the path's user id well-formed (else 400: there is nothing to compare with) and
/// the token's user (else 403), and the caller within its write rate limit (else 429: after
/// the 401 and 403, so that a stranger cannot spend a user's budget). Only then does the
/// handler run, and with it every other check
/// (the post id, `If-Match`, `Idempotency-Key`, then the body: 415, 413, 400, 422), so a client
/// that may not write here learns nothing about its input and costs no body read.
pub async fn require_path_user(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let outcome = match state.tokens.authenticate(&parts.headers, auth::unix_now()) {
        Err(failure) => Err(ApiError::Unauthenticated(failure)),
        Ok(caller) => match UserPath::from_request_parts(&mut parts, &state).await {
            Err(error) => Err(error),
            Ok(UserPath { user_id }) if user_id != caller => {
                Err(ApiError::Forbidden { path_user: user_id })
            }
            Ok(_) => state
                .write_limits
                .check(Client::User(caller), Instant::now())
                .map(|()| Caller(caller))
                .map_err(ApiError::RateLimited),
        },
    };
    let refused = match &outcome {
        Err(ApiError::Unauthenticated(failure)) => Some(failure.label()),
        Err(ApiError::Forbidden { .. }) => Some("forbidden"),
        _ => None,
    };
    if let Some(reason) = refused {
        state.metrics.count(
            "command_auth_refusals_total",
            "Writes refused for their bearer token: 401 by reason, or 403 (forbidden).",
            vec![("reason", reason.to_owned())],
            1,
        );
    }
    match outcome {
        Ok(caller) => {
            parts.extensions.insert(caller);
            next.run(Request::from_parts(parts, body)).await
        }
        Err(error) => error.into_response(),
    }
}

/// The route layer of sign-up: its write rate limit is by the client's IP, as it has no user
/// yet (429 past it), checked before the body is read. The client is the peer, or behind a
/// trusted proxy the address its `X-Forwarded-For` names ([`crate::client_ip`]).
pub async fn limit_sign_ups(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    // The server loop (`service_kit::server`) gives every request its peer address; without
    // it the service is wired wrong, which must not pass for a client's mistake.
    let Some(&ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() else {
        return ApiError::Internal("a sign-up without its peer address".to_owned()).into_response();
    };
    let client = state
        .trusted_proxies
        .client_ip(peer.ip(), request.headers());
    match state.write_limits.check(Client::Ip(client), Instant::now()) {
        Ok(()) => next.run(request).await,
        Err(limited) => ApiError::RateLimited(limited).into_response(),
    }
}

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
    let event = command::register_user(body).map_err(ApiError::Validation)?;
    let mut accepted = accept(&state, None, Write::RegisterUser, event, key, None).await?;
    // Issued only once the user's registration is in the log. A retry with the same
    // Idempotency-Key names the same user, so it gets a token for it too: for sign-ups the key
    // is as good as the token, which is why it must be unguessable (README, Authentication).
    accepted.access_token = Some(state.tokens.issue(accepted.aggregate_id, auth::unix_now()));
    Ok(accepted)
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
    let event = command::update_profile(body).map_err(ApiError::Validation)?;
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
    let event = command::publish_post(body).map_err(ApiError::Validation)?;
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
    let event = command::edit_post(body).map_err(ApiError::Validation)?;
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

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: the broker answers for the topic.", content_type = "text/plain", body = String),
        (status = 503, description = "The event log is unreachable."),
    )
)]
/// `GET /readyz`: 200 when the broker answers for the topic, else 503.
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.appender.check_ready().await?;
    Ok("ready")
}

/// Gives the write its ids, wraps it in an envelope and appends it; 202 once the broker has it.
///
/// `caller` is the authenticated user (none for a sign-up). An `Idempotency-Key` is scoped to
/// the caller: the write's scope is the path's user, which the auth layer made sure is the
/// caller; this checks it once more, so that a route wired without the layer cannot share
/// another user's keys.
async fn accept(
    state: &AppState,
    caller: Option<Caller>,
    write: Write,
    event: Event,
    idempotency_key: Option<String>,
    expected_version: Option<i64>,
) -> Result<Accepted, ApiError> {
    let scope = write.idempotency_scope();
    if caller.map_or(Uuid::nil(), |Caller(user)| user) != scope {
        return Err(ApiError::Internal(format!(
            "{} {}: the idempotency scope is not the caller",
            write.method(),
            write.route()
        )));
    }
    let ids = command::command_ids(write, &event, idempotency_key.as_deref(), expected_version);
    // On the request's span, so that every later line of this write names its command.
    tracing::Span::current().record("command_id", tracing::field::display(ids.command_id));
    let envelope = command::envelope(
        write,
        event,
        ids,
        idempotency_key,
        expected_version,
        Utc::now(),
    );
    // After every check of the request, so that a bad request gets its 4xx under load too;
    // before the append, so that a shed write appends nothing.
    let permit = state.in_flight.try_admit()?;
    // The append runs in a task of its own that holds the permit: if the client goes away,
    // axum drops this future, but the record is in the producer's queue all the same and
    // must count against the bound until its delivery report (bounded by the append timeout)
    // resolves it. The append's span is a child of the request's: its lines carry the
    // request's ids, and the record carries its trace context to the projector.
    let appending = {
        let (appender, metrics) = (Arc::clone(&state.appender), state.metrics.clone());
        let span = tracing::info_span!(service_kit::telemetry::APPEND_SPAN);
        tokio::spawn(async move {
            let appended = appender.append(&envelope).instrument(span).await;
            drop(permit);
            let outcome = match &appended {
                Ok(_) => "appended",
                Err(error) => error.outcome(),
            };
            metrics.count(
                "command_appends_total",
                "Events the command API tried to append, by event type and outcome.",
                vec![
                    ("type", envelope.type_name().to_owned()),
                    ("outcome", outcome.to_owned()),
                ],
                1,
            );
            (envelope, appended)
        })
    };
    let (envelope, appended) = appending.await.map_err(|join_error| {
        ApiError::Internal(format!("the append task failed: {join_error}"))
    })?;
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
        access_token: None,
    })
}

/// The 202 answer to an accepted write.
#[derive(Debug)]
pub struct Accepted {
    command_id: Uuid,
    aggregate_id: Uuid,
    resource: String,
    token: ConsistencyToken,
    /// A sign-up's token for the new user.
    access_token: Option<String>,
}

/// The body of a 202.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Accepted)]
// For the schema only (additionalProperties: false): this struct is never deserialized.
#[serde(deny_unknown_fields)]
pub struct AcceptedBody {
    command_id: Uuid,
    /// The user's or post's id; for a create, the new id.
    aggregate_id: Uuid,
    /// As the `Consistency-Token` header.
    consistency_token: String,
    /// Sign-ups only: the new user's bearer token for its other writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, value_type = String)]
    access_token: Option<String>,
    links: Links,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Links {
    /// Where the decision on this write will be (query API).
    status: String,
    /// Where to read the user or post (query API).
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
            access_token: self.access_token,
            links: Links {
                status: status_path,
                resource: self.resource,
            },
        };
        (StatusCode::ACCEPTED, headers, Json(body)).into_response()
    }
}
