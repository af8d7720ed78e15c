//! Every way a request can fail, and the problem+json answer for each.
//!
//! Client mistakes are 4xx with a detail that helps fix the request. A broker that is down or
//! slow is a 503 with `Retry-After`; its cause is logged, not sent. Nothing a client sends can
//! make a 500.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use service_kit::limits::BodyReadTimeout;
use service_kit::{FieldError, Problem};
use uuid::Uuid;

use crate::appender::{AppendError, NotReady, READINESS_TIMEOUT};
use crate::auth::AuthFailure;
use crate::backpressure::Overloaded;
use crate::ratelimit::RateLimited;

/// The protection space of `WWW-Authenticate` (RFC 9110 §11.5): one for all writes.
pub const REALM: &str = "user-data";

/// How long a client should wait before retrying a write the broker did not take.
const APPEND_RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the request body could not be read: {0}")]
    UnreadableBody(String),
    #[error("the request body nests arrays and objects more than {limit} deep")]
    JsonTooDeep { limit: usize },
    /// The client did not send its whole body in time: 408, and the connection is closed.
    #[error("{0}; the connection is closed")]
    BodyReadTimeout(BodyReadTimeout),
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the request body must be JSON (Content-Type: application/json), not {found}")]
    UnsupportedMediaType { found: String },
    #[error("invalid fields")]
    Validation(Vec<FieldError>),
    #[error("path segment {name} must be a UUID (8-4-4-4-12 hex digits), got {value:?}")]
    InvalidPathId { name: &'static str, value: String },
    #[error("the path is malformed: {0}")]
    InvalidPath(String),
    #[error(r#"If-Match must be one quoted positive version, like "3", or *"#)]
    MalformedIfMatch,
    #[error("Idempotency-Key must be one value of 1 to 200 printable ASCII characters")]
    MalformedIdempotencyKey,
    /// No valid bearer token: 401.
    #[error("{0}")]
    Unauthenticated(AuthFailure),
    /// A valid token of another user than the path's: 403.
    #[error("the access token is for another user than {path_user}, the user in the path")]
    Forbidden { path_user: Uuid },
    #[error("append failed: {0}")]
    Append(#[from] AppendError),
    #[error("not ready: {0}")]
    NotReady(#[from] NotReady),
    /// The bound on writes in flight is reached: shed at once, nothing appended.
    #[error("overloaded: {0}")]
    Overloaded(#[from] Overloaded),
    /// The client is over its write rate limit: 429, nothing appended.
    #[error("{0}")]
    RateLimited(#[from] RateLimited),
    /// A bug of ours, such as a route without the parameter its handler reads.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::UnreadableBody(_)
            | ApiError::JsonTooDeep { .. }
            | ApiError::InvalidPathId { .. }
            | ApiError::InvalidPath(_)
            | ApiError::MalformedIfMatch
            | ApiError::MalformedIdempotencyKey => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BodyReadTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Append(_) | ApiError::NotReady(_) | ApiError::Overloaded(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn to_problem(&self) -> Problem {
        let status = self.status_code();
        let client_error = |kind, title| Problem::new(status, kind, title, self.to_string());
        match self {
            ApiError::MalformedJson(_) => client_error("malformed-json", "Malformed JSON"),
            ApiError::UnreadableBody(_) => client_error("unreadable-body", "Unreadable body"),
            ApiError::JsonTooDeep { .. } => client_error("json-too-deep", "JSON nested too deeply"),
            ApiError::BodyReadTimeout(_) => client_error("request-timeout", "Request timeout"),
            ApiError::BodyTooLarge { .. } => client_error("payload-too-large", "Payload too large"),
            ApiError::UnsupportedMediaType { .. } => {
                client_error("unsupported-media-type", "Unsupported media type")
            }
            ApiError::Validation(errors) => Problem::validation(errors.clone()),
            ApiError::InvalidPathId { .. } | ApiError::InvalidPath(_) => {
                client_error("invalid-path", "Invalid path")
            }
            ApiError::Unauthenticated(_) => client_error("unauthenticated", "Unauthenticated"),
            ApiError::Forbidden { .. } => client_error("forbidden", "Forbidden"),
            ApiError::RateLimited(limited) => Problem {
                retry_after: Some(limited.retry_after_secs),
                ..client_error("rate-limited", "Too many requests")
            },
            ApiError::MalformedIfMatch => client_error("malformed-if-match", "Malformed If-Match"),
            ApiError::MalformedIdempotencyKey => {
                client_error("malformed-idempotency-key", "Malformed Idempotency-Key")
            }
            ApiError::Append(AppendError::QueueFull) => Problem::unavailable(
                "the write was not appended: too many writes are waiting for the broker; retry \
                 later (with the same Idempotency-Key, if you sent one)",
                APPEND_RETRY_AFTER_SECS,
            ),
            ApiError::Append(_) => Problem::unavailable(
                "the event log did not acknowledge the write, which may or may not have been \
                 recorded; retry with the same Idempotency-Key, which is always safe",
                APPEND_RETRY_AFTER_SECS,
            ),
            // A type of its own, unlike the other 503s: this write was certainly not recorded,
            // so a client may retry it with or without its Idempotency-Key, and a load
            // balancer may tell an instance that sheds load from one whose broker is down.
            ApiError::Overloaded(_) => Problem {
                kind: "overloaded",
                title: "Overloaded",
                ..Problem::unavailable(
                    "the write was not appended: too many writes are waiting for the event log; \
                     retry later",
                    APPEND_RETRY_AFTER_SECS,
                )
            },
            ApiError::NotReady(_) => Problem::unavailable(
                "the event log is unreachable",
                service_kit::http::retry_after_secs(READINESS_TIMEOUT),
            ),
            ApiError::Internal(_) => Problem::internal(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(_) => tracing::error!(error = %self, "request failed"),
            ApiError::Append(_) | ApiError::NotReady(_) => {
                tracing::warn!(error = %self, "dependency unavailable")
            }
            // Under overload every shed write would log a line, adding to the load; the
            // counter `command_writes_shed_total` says it instead.
            ApiError::Overloaded(_) => tracing::debug!(error = %self, "write shed"),
            // Likewise: `command_writes_rate_limited_total` counts them.
            ApiError::RateLimited(_) => tracing::debug!(error = %self, "write rate-limited"),
            _ => tracing::debug!(error = %self, "request rejected"),
        }
        let mut response = self.to_problem().into_response();
        match &self {
            ApiError::Unauthenticated(failure) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, www_authenticate(*failure));
            }
            // The rest of the body may still come, and nothing would read it: the connection
            // cannot carry another request (RFC 9110 §15.5.9).
            ApiError::BodyReadTimeout(_) => {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// The challenge of a 401 (RFC 6750 §3): the realm alone when no bearer token was sent, so a
/// client that did not know it needs one is not told it sent a bad one; `invalid_token` with
/// the reason when one was sent.
fn www_authenticate(failure: AuthFailure) -> HeaderValue {
    let value = match failure {
        AuthFailure::Missing => format!(r#"Bearer realm="{REALM}""#),
        AuthFailure::Invalid(error) => {
            format!(r#"Bearer realm="{REALM}", error="invalid_token", error_description="{error}""#)
        }
    };
    // The reasons are fixed ASCII text without quotes (see `TokenError`).
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_of_unavailability_are_not_leaked() {
        let error = ApiError::Append(AppendError::NotAcknowledged(
            rdkafka::error::KafkaError::Canceled,
        ));
        let problem = error.to_problem();
        assert_eq!(problem.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(problem.retry_after.is_some_and(|s| s >= 1));
        assert!(
            problem.detail.contains("Idempotency-Key"),
            "{}",
            problem.detail
        );
        assert!(!problem.detail.contains("Canceled"), "{}", problem.detail);
    }

    #[test]
    fn a_shed_write_is_a_503_overloaded_with_retry_after() {
        let response = ApiError::Overloaded(Overloaded { limit: 3 }).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let problem = ApiError::Overloaded(Overloaded { limit: 3 }).to_problem();
        assert_eq!(problem.kind, "overloaded");
        assert!(!problem.detail.contains('3'), "{}", problem.detail);
    }

    #[test]
    fn a_rate_limited_write_is_a_429_rate_limited_with_retry_after() {
        let limited = RateLimited {
            retry_after_secs: 3,
        };
        let response = ApiError::RateLimited(limited).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            service_kit::problem::CONTENT_TYPE
        );
        assert_eq!(
            ApiError::RateLimited(limited).to_problem().kind,
            "rate-limited"
        );
    }

    #[test]
    fn client_mistakes_are_never_server_errors() {
        let mistakes = [
            ApiError::MalformedJson("x".into()),
            ApiError::UnreadableBody("x".into()),
            ApiError::JsonTooDeep { limit: 32 },
            ApiError::BodyReadTimeout(BodyReadTimeout {
                timeout: std::time::Duration::from_secs(10),
            }),
            ApiError::BodyTooLarge { limit: 1 },
            ApiError::UnsupportedMediaType {
                found: "text/plain".into(),
            },
            ApiError::Validation(vec![FieldError::new("a", "b")]),
            ApiError::InvalidPathId {
                name: "user_id",
                value: "x".into(),
            },
            ApiError::InvalidPath("x".into()),
            ApiError::MalformedIfMatch,
            ApiError::MalformedIdempotencyKey,
            ApiError::Unauthenticated(AuthFailure::Missing),
            ApiError::Forbidden {
                path_user: Uuid::nil(),
            },
            ApiError::RateLimited(RateLimited {
                retry_after_secs: 1,
            }),
        ];
        for mistake in mistakes {
            assert!(mistake.status_code().is_client_error(), "{mistake:?}");
            assert_eq!(mistake.to_problem().status, mistake.status_code());
        }
    }

    #[test]
    fn a_401_challenges_with_the_realm_and_says_invalid_token_only_when_one_was_sent() {
        use crate::auth::TokenError;

        let missing = ApiError::Unauthenticated(AuthFailure::Missing).into_response();
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            missing.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="user-data""#
        );
        for error in [
            TokenError::Malformed,
            TokenError::Algorithm,
            TokenError::Critical,
            TokenError::UnknownKey,
            TokenError::Signature,
            TokenError::Claims,
            TokenError::Expired,
            TokenError::NotYetValid,
        ] {
            let response = ApiError::Unauthenticated(AuthFailure::Invalid(error)).into_response();
            let challenge = response.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .expect("ASCII");
            assert_eq!(
                challenge,
                format!(
                    r#"Bearer realm="user-data", error="invalid_token", error_description="{error}""#
                )
            );
        }
        let forbidden = ApiError::Forbidden {
            path_user: Uuid::nil(),
        }
        .into_response();
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    }
}
