//! A read's answer, serialized once: what the read cache keeps and every hit replays.
//!
//! The body is JSON bytes ([`Bytes`]), so a cached answer is sent by sharing its buffer, not by
//! serializing or copying it again. A single resource's answer carries its ETag, so a hit also
//! answers `If-None-Match` (304) without a database read.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;

use crate::error::ApiError;
use crate::etag;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// What a read answers, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200 with a JSON body, and the resource's ETag when it has one.
    Json {
        body: Bytes,
        etag: Option<HeaderValue>,
    },
    /// 404: no such user, post or command (the name says which).
    NotFound(&'static str),
}

impl Answer {
    /// `value` as JSON, without an ETag (pages, decisions).
    pub fn json<T: Serialize>(value: &T) -> Result<Answer, ApiError> {
        Ok(Answer::Json {
            body: encode(value)?,
            etag: None,
        })
    }

    /// `value` as JSON, with its `version` as ETag (users, posts).
    pub fn versioned<T: Serialize>(version: i64, value: &T) -> Result<Answer, ApiError> {
        Ok(Answer::Json {
            body: encode(value)?,
            etag: Some(etag::of_version(version)?),
        })
    }

    /// Bytes the answer holds on the heap, roughly: what a cache entry of it weighs.
    pub fn weight(&self) -> usize {
        match self {
            Answer::Json { body, etag } => body.len() + etag.as_ref().map_or(0, |e| e.len()),
            Answer::NotFound(_) => 0,
        }
    }

    /// The response to a request with these `If-None-Match` values: 304 when they already have
    /// this ETag.
    pub fn respond(self, if_none_match: &[HeaderValue]) -> Response {
        match self {
            Answer::Json {
                body,
                etag: Some(etag),
            } => {
                if etag::none_match_hits(if_none_match, &etag) {
                    return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
                }
                (
                    [(header::CONTENT_TYPE, JSON), (header::ETAG, etag)],
                    Body::from(body),
                )
                    .into_response()
            }
            Answer::Json { body, etag: None } => {
                ([(header::CONTENT_TYPE, JSON)], Body::from(body)).into_response()
            }
            Answer::NotFound(what) => ApiError::NotFound(what).into_response(),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, ApiError> {
    let mut body = serde_json::to_vec(value).map_err(|e| ApiError::Encode(e.to_string()))?;
    // A cached answer holds its buffer for long: not the slack of its growth too.
    body.shrink_to_fit();
    Ok(Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_versioned_answer_is_its_json_and_etag() {
        let answer = Answer::versioned(3, &serde_json::json!({"a": 1})).expect("encodes");
        assert_eq!(
            answer,
            Answer::Json {
                body: Bytes::from_static(br#"{"a":1}"#),
                etag: Some(HeaderValue::from_static("\"3\"")),
            }
        );
        let response = answer.clone().respond(&[]);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(response.headers()[header::ETAG], "\"3\"");

        let response = answer.respond(&[HeaderValue::from_static("\"3\"")]);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers()[header::ETAG], "\"3\"");
    }

    #[test]
    fn not_found_is_the_problem_answer() {
        let response = Answer::NotFound("user").respond(&[]);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
