//! Every way a read can fail, and the problem+json answer for each.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use service_kit::Problem;

use crate::pagination::PageError;

/// Seconds a client should wait before retrying a 503: the projector and PostgreSQL usually
/// recover within that, and a longer hint would only slow well-behaved clients down.
const RETRY_AFTER_SECS: u64 = 1;

/// SQLSTATE codes that mean "the database cannot serve us right now", not "our query is wrong".
const UNAVAILABLE_SQLSTATES: &[&str] = &[
    "57P01", // admin_shutdown
    "57P02", // crash_shutdown
    "57P03", // cannot_connect_now (starting up, recovering)
    "53300", // too_many_connections
    "3D000", // invalid_catalog_name: the database is not created yet
    "42P01", // undefined_table: the projector has not migrated the schema yet
    "42703", // undefined_column: nor to this release's columns (an upgrade under way)
];

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the path id is not a hyphenated UUID")]
    InvalidId,
    #[error("invalid query string: {0}")]
    InvalidQuery(String),
    #[error(transparent)]
    InvalidPage(#[from] PageError),
    #[error("malformed Consistency-Token header")]
    InvalidConsistencyToken,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("the read model did not reach the consistency token in time")]
    ConsistencyTimeout,
    #[error("the database is unreachable")]
    DatabaseUnavailable(#[source] sqlx::Error),
    #[error("database query failed")]
    Database(#[source] sqlx::Error),
    #[error("cannot encode the answer: {0}")]
    Encode(String),
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidId
            | ApiError::InvalidQuery(_)
            | ApiError::InvalidPage(_)
            | ApiError::InvalidConsistencyToken => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::ConsistencyTimeout | ApiError::DatabaseUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Database(_) | ApiError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn to_problem(&self) -> Problem {
        let detail = self.to_string();
        match self {
            ApiError::InvalidId => Problem::bad_request("invalid-id", detail),
            ApiError::InvalidQuery(_) => Problem::bad_request("invalid-query", detail),
            ApiError::InvalidPage(PageError::Limit) => {
                Problem::bad_request("invalid-limit", detail)
            }
            ApiError::InvalidPage(PageError::Cursor) => {
                Problem::bad_request("invalid-cursor", detail)
            }
            ApiError::InvalidPage(PageError::FromVersion) => {
                Problem::bad_request("invalid-from-version", detail)
            }
            ApiError::InvalidConsistencyToken => {
                Problem::bad_request("invalid-consistency-token", detail)
            }
            ApiError::NotFound(_) => Problem::not_found(detail),
            ApiError::ConsistencyTimeout => Problem {
                kind: "consistency-timeout",
                title: "Consistency wait timed out",
                ..Problem::unavailable(detail, RETRY_AFTER_SECS)
            },
            ApiError::DatabaseUnavailable(_) => Problem::unavailable(detail, RETRY_AFTER_SECS),
            ApiError::Database(_) | ApiError::Encode(_) => Problem::internal(),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            ApiError::DatabaseUnavailable(error)
        } else {
            ApiError::Database(error)
        }
    }
}

/// True for failures that go away once PostgreSQL is back (or migrated), so the client should
/// retry rather than report a bug.
fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exceptions.
            code.starts_with("08") || UNAVAILABLE_SQLSTATES.contains(&code.as_ref())
        }),
        _ => false,
    }
}

impl ApiError {
    /// The answer to send, after logging what is ours to know (the cause of a 5xx), which the
    /// answer never carries.
    pub fn into_problem(self) -> Problem {
        match &self {
            ApiError::Database(source) => tracing::error!(error = %source, "database query failed"),
            ApiError::Encode(why) => tracing::error!(error = %why, "cannot encode an answer"),
            ApiError::DatabaseUnavailable(source) => {
                tracing::warn!(error = %source, "database unavailable")
            }
            _ => {}
        }
        self.to_problem()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_problem().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_trouble_is_unavailable_and_the_rest_is_ours() {
        assert_eq!(
            ApiError::from(sqlx::Error::PoolTimedOut).status_code(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            ApiError::from(sqlx::Error::Io(refused)).status_code(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::from(sqlx::Error::RowNotFound).status_code(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn internal_errors_do_not_leak() {
        let problem =
            ApiError::Database(sqlx::Error::Protocol("secret detail".into())).to_problem();
        assert!(!problem.detail.contains("secret"));
    }
}
