//! `ETag: "{version}"` on single-resource reads, and `If-None-Match` → 304.

use axum::Json;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The resource as JSON with its version as ETag, or 304 when the client already has it.
pub fn versioned<T: Serialize>(request_headers: &HeaderMap, version: i64, body: T) -> Response {
    let etag = format!("\"{version}\"");
    if none_match_hits(request_headers, &etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    ([(header::ETAG, etag)], Json(body)).into_response()
}

/// True when an `If-None-Match` entry matches `etag` by weak comparison (RFC 9110 §13.1.2), or
/// is `*`. Entries that do not parse simply match nothing.
fn none_match_hits(request_headers: &HeaderMap, etag: &str) -> bool {
    request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::IF_NONE_MATCH, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn weak_comparison_over_lists_and_star() {
        for hit in [
            &["\"3\""][..],
            &["W/\"3\""],
            &["\"1\", \"3\""],
            &["\"1\"", "\"3\""],
            &["*"],
        ] {
            assert!(none_match_hits(&with(hit), "\"3\""), "{hit:?}");
        }
        for miss in [&[][..], &["\"2\""], &["3"], &["\"30\""], &["W/3"]] {
            assert!(!none_match_hits(&with(miss), "\"3\""), "{miss:?}");
        }
    }
}
