//! The route layers in front of the writes, which run before a handler reads anything: who may
//! write under a user's path ([`require_path_user`]: bearer token, path user, the user's write
//! rate limit) and how often a client may sign up ([`limit_sign_ups`]: by IP).

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth;
use crate::error::ApiError;
use crate::extract::{Caller, UserPath};
use crate::ratelimit::Client;
use crate::state::AppState;

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
