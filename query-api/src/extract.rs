//! Request extractors whose rejections are our own problem+json answers.

use std::convert::Infallible;

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, header};
use events::ConsistencyToken;
use serde::Deserialize;
use uuid::Uuid;

use crate::error::ApiError;
use crate::pagination::{PageRequest, StreamPageRequest};

pub const CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("consistency-token");

/// The route's one path id: a hyphenated UUID, letters in either case.
#[derive(Debug, Clone, Copy)]
pub struct PathId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::InvalidId)?;
        parse_hyphenated(&raw)
            .map(PathId)
            .ok_or(ApiError::InvalidId)
    }
}

/// `Uuid::try_parse` also takes the simple, braced and URN forms; ids in our paths are only
/// ever the 36-character hyphenated one.
fn parse_hyphenated(raw: &str) -> Option<Uuid> {
    if raw.len() != 36 {
        return None;
    }
    Uuid::try_parse(raw).ok()
}

#[derive(Debug, Deserialize)]
struct RawPage {
    limit: Option<String>,
    cursor: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for PageRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(raw) = Query::<RawPage>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::InvalidQuery(rejection.body_text()))?;
        Ok(PageRequest::parse(
            raw.limit.as_deref(),
            raw.cursor.as_deref(),
        )?)
    }
}

#[derive(Debug, Deserialize)]
struct RawStreamPage {
    from_version: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for StreamPageRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(raw) = Query::<RawStreamPage>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::InvalidQuery(rejection.body_text()))?;
        Ok(StreamPageRequest::parse(
            raw.from_version.as_deref(),
            raw.limit.as_deref(),
            raw.cursor.as_deref(),
        )?)
    }
}

/// The `Consistency-Token` a read must wait for, if the client sent one.
#[derive(Debug, Clone, Copy)]
pub struct ReadAfter(pub Option<ConsistencyToken>);

impl<S: Send + Sync> FromRequestParts<S> for ReadAfter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(CONSISTENCY_TOKEN).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            // Absent is fine; more than one leaves it unclear which write to wait for.
            return if parts.headers.contains_key(CONSISTENCY_TOKEN) {
                Err(ApiError::InvalidConsistencyToken)
            } else {
                Ok(ReadAfter(None))
            };
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or(ApiError::InvalidConsistencyToken)?;
        Ok(ReadAfter(Some(token)))
    }
}

/// The request's `If-None-Match` values: only those, rather than a copy of every header.
#[derive(Debug, Clone, Default)]
pub struct IfNoneMatch(pub Vec<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let values = parts.headers.get_all(header::IF_NONE_MATCH).iter();
        Ok(IfNoneMatch(values.cloned().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_ids_are_hyphenated_uuids_in_any_case() {
        let id = Uuid::now_v7();
        let text = id.hyphenated().to_string();
        assert_eq!(parse_hyphenated(&text), Some(id));
        assert_eq!(parse_hyphenated(&text.to_uppercase()), Some(id));
        for bad in [
            id.simple().to_string(),
            id.braced().to_string(),
            id.urn().to_string(),
            "x".repeat(36),
            String::new(),
        ] {
            assert_eq!(parse_hyphenated(&bad), None, "{bad}");
        }
    }
}
