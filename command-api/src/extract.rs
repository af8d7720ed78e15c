//! Extractors for what a write carries besides its route: path ids, `If-Match`,
//! `Idempotency-Key`, the JSON body, and the caller the authentication layer found. Each rejects
//! with an [`ApiError`], so bad input always gets this service's problem+json answer, never
//! axum's plain-text one.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use serde_json::Value;
use service_kit::limits::find_body_read_timeout;
use uuid::Uuid;

use crate::error::ApiError;
use crate::hyphenated_uuid::parse_hyphenated_uuid;

/// The largest request body accepted: 64 KiB.
pub const BODY_LIMIT: usize = 64 * 1024;

pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub const IDEMPOTENCY_KEY_MAX_LEN: usize = 200;

/// How deeply a body's arrays and objects may nest. Every body of ours is one flat object
/// (depth 1); serde_json's own bound is 128, and its error for it only says "recursion limit
/// exceeded".
pub const MAX_JSON_DEPTH: usize = 32;

/// A write's JSON body, parsed but not yet checked against any field rule. Needs a JSON
/// `Content-Type` (415 otherwise), at most [`BODY_LIMIT`] bytes (413), sent within the server's
/// body read timeout (408), nested at most [`MAX_JSON_DEPTH`] deep (400) and valid JSON (400).
#[derive(Debug)]
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_json_content_type(request.headers())?;
        // The limit itself is the router's `DefaultBodyLimit`, which `Bytes` honours.
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::BodyTooLarge { limit: BODY_LIMIT }
                } else if let Some(timeout) = find_body_read_timeout(&rejection) {
                    ApiError::BodyReadTimeout(timeout)
                } else {
                    ApiError::UnreadableBody(rejection.body_text())
                }
            })?;
        if nests_deeper_than(&bytes, MAX_JSON_DEPTH) {
            return Err(ApiError::JsonTooDeep {
                limit: MAX_JSON_DEPTH,
            });
        }
        // serde_json also refuses invalid UTF-8 and lone surrogate escapes.
        let value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        Ok(JsonBody(value))
    }
}

/// Whether `bytes` open more than `limit` arrays and objects inside each other (brackets in
/// strings do not count). One pass without allocating, before the parser recurses; on text that
/// is not JSON the answer means nothing, and the parser refuses that text anyway.
fn nests_deeper_than(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in bytes {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// `application/json` or any `application/<x>+json`, with any parameters (such as charset).
fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType {
            found: "no Content-Type".into(),
        });
    };
    let found = || ApiError::UnsupportedMediaType {
        found: String::from_utf8_lossy(value.as_bytes())
            .chars()
            .take(100)
            .collect(),
    };
    let text = value.to_str().map_err(|_| found())?;
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let is_json = match essence.split_once('/') {
        Some(("application", subtype)) => subtype == "json" || subtype.ends_with("+json"),
        _ => false,
    };
    if is_json { Ok(()) } else { Err(found()) }
}

/// The ids of a `/v1/users/{user_id}` path.
#[derive(Debug, Clone, Copy)]
pub struct UserPath {
    pub user_id: Uuid,
}

/// The ids of a `/v1/users/{user_id}/posts/{post_id}` path.
#[derive(Debug, Clone, Copy)]
pub struct PostPath {
    pub user_id: Uuid,
    pub post_id: Uuid,
}

impl<S: Send + Sync> FromRequestParts<S> for UserPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = path_params(parts, state).await?;
        Ok(UserPath {
            user_id: path_id(&params, "user_id")?,
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PostPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = path_params(parts, state).await?;
        Ok(PostPath {
            user_id: path_id(&params, "user_id")?,
            post_id: path_id(&params, "post_id")?,
        })
    }
}

async fn path_params<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
) -> Result<Vec<(String, String)>, ApiError> {
    let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state)
        .await
        .map_err(|rejection| ApiError::InvalidPath(rejection.body_text()))?;
    Ok(params)
}

fn path_id(params: &[(String, String)], name: &'static str) -> Result<Uuid, ApiError> {
    let (_, value) = params
        .iter()
        .find(|(key, _)| key == name)
        .ok_or_else(|| ApiError::Internal(format!("route has no {name} parameter")))?;
    parse_hyphenated_uuid(value).ok_or_else(|| ApiError::InvalidPathId {
        name,
        value: value.chars().take(100).collect(),
    })
}

/// The user a write's bearer token authenticated, put there by the route layer
/// `require_path_user` once it checked that the path is that user's. A handler that takes it
/// cannot run unauthenticated: without the layer, the extractor fails with a 500 (our bug)
/// instead of letting the write through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .copied()
            .ok_or_else(|| ApiError::Internal("a protected route without the auth layer".into()))
    }
}

/// The version a `PATCH` or `DELETE` expects, from `If-Match: "N"`. `*` and no header both
/// mean "whatever the current version is".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedVersion(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for ExpectedVersion {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(header::IF_MATCH).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return if parts.headers.contains_key(header::IF_MATCH) {
                Err(ApiError::MalformedIfMatch)
            } else {
                Ok(ExpectedVersion(None))
            };
        };
        let text = value.to_str().map_err(|_| ApiError::MalformedIfMatch)?;
        parse_if_match(text)
            .map(ExpectedVersion)
            .ok_or(ApiError::MalformedIfMatch)
    }
}

/// `*` → `Some(None)`; `"N"` with N a positive decimal without leading zeros → `Some(Some(N))`;
/// anything else, weak tags and lists included, → `None`.
pub fn parse_if_match(text: &str) -> Option<Option<i64>> {
    let text = text.trim_matches([' ', '\t']);
    if text == "*" {
        return Some(None);
    }
    let digits = text.strip_prefix('"')?.strip_suffix('"')?;
    let canonical = !digits.is_empty()
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit());
    if !canonical {
        return None;
    }
    digits.parse::<i64>().ok().map(Some)
}

/// The `Idempotency-Key` of a write, if it sent one: 1 to 200 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(IdempotencyKey(None));
        };
        if values.next().is_some() {
            return Err(ApiError::MalformedIdempotencyKey);
        }
        parse_idempotency_key(value.as_bytes())
            .map(|key| IdempotencyKey(Some(key)))
            .ok_or(ApiError::MalformedIdempotencyKey)
    }
}

pub fn parse_idempotency_key(bytes: &[u8]) -> Option<String> {
    let valid = (1..=IDEMPOTENCY_KEY_MAX_LEN).contains(&bytes.len())
        && bytes.iter().all(|b| (0x20..=0x7e).contains(b));
    // Printable ASCII is valid UTF-8.
    valid.then(|| String::from_utf8_lossy(bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn if_match_takes_one_strong_positive_version_or_a_star() {
        assert_eq!(parse_if_match("\"1\""), Some(Some(1)));
        assert_eq!(parse_if_match(" \"42\" "), Some(Some(42)));
        assert_eq!(
            parse_if_match("\"9223372036854775807\""),
            Some(Some(i64::MAX))
        );
        assert_eq!(parse_if_match("*"), Some(None));
        for bad in [
            "",
            "1",
            "\"\"",
            "\"0\"",
            "\"-1\"",
            "\"+1\"",
            "\"01\"",
            "W/\"1\"",
            "\"1\", \"2\"",
            "\"1\",\"2\"",
            "\"1.0\"",
            "\"a\"",
            "\"1",
            "1\"",
            "\"9223372036854775808\"",
            "**",
            "\" 1\"",
        ] {
            assert_eq!(parse_if_match(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn idempotency_keys_are_short_printable_ascii() {
        assert_eq!(parse_idempotency_key(b"a"), Some("a".into()));
        assert_eq!(parse_idempotency_key(b" ~!x y"), Some(" ~!x y".into()));
        assert!(parse_idempotency_key(&[b'k'; 200]).is_some());
        assert_eq!(parse_idempotency_key(&[b'k'; 201]), None);
        assert_eq!(parse_idempotency_key(b""), None);
        assert_eq!(parse_idempotency_key(b"tab\there"), None);
        assert_eq!(parse_idempotency_key("clé".as_bytes()), None);
        assert_eq!(parse_idempotency_key(b"del\x7f"), None);
    }

    #[test]
    fn nesting_is_counted_outside_strings_up_to_the_limit() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(!nests_deeper_than(nested(32).as_bytes(), 32));
        assert!(nests_deeper_than(nested(33).as_bytes(), 32));
        // Unclosed, as an attacker sends it: found without reading to the end.
        assert!(nests_deeper_than("[".repeat(60_000).as_bytes(), 32));
        assert!(nests_deeper_than(br#"{"a":{"b":[{"c":[]}]}}"#, 3));
        assert!(!nests_deeper_than(br#"{"a":{"b":[{"c":[]}]}}"#, 5));
        // Siblings do not add up.
        assert!(!nests_deeper_than(br#"[[],[],{},[[]]]"#, 3));
        // Brackets and escaped quotes inside strings are text.
        assert!(!nests_deeper_than(br#"{"title": "[[[[{{{{"}"#, 1));
        assert!(!nests_deeper_than(br#"{"t": "a\"[[[[", "u": "\\"}"#, 1));
        assert!(nests_deeper_than(br#"{"t": "\\", "u": [[]]}"#, 2));
    }

    #[test]
    fn json_content_types_are_recognised() {
        let check = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            check_json_content_type(&headers).is_ok()
        };
        for good in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
            "application/merge-patch+json",
            "application/vnd.api+json ; x=y",
        ] {
            assert!(check(good), "{good}");
        }
        for bad in [
            "text/plain",
            "text/json",
            "application/jsonx",
            "application/xml",
            "json",
            "",
            "application/+jsonx",
        ] {
            assert!(!check(bad), "{bad}");
        }
        assert!(check_json_content_type(&HeaderMap::new()).is_err());
    }
}
