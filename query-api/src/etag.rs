//! `ETag: "{version}"` on single-resource reads, and `If-None-Match` → 304.

use axum::http::HeaderValue;

use crate::error::ApiError;

/// The ETag of a resource at `version`: the version, quoted (a strong tag).
pub fn of_version(version: i64) -> Result<HeaderValue, ApiError> {
    HeaderValue::try_from(format!("\"{version}\"")).map_err(|e| ApiError::Encode(e.to_string()))
}

/// True when an entry of the `If-None-Match` values matches `etag` by weak comparison (RFC 9110
/// §13.1.2), or is `*`. Entries that do not parse simply match nothing.
pub fn none_match_hits(if_none_match: &[HeaderValue], etag: &HeaderValue) -> bool {
    let etag = etag.as_bytes();
    if_none_match
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&'static str]) -> Vec<HeaderValue> {
        values.iter().map(|v| HeaderValue::from_static(v)).collect()
    }

    fn three() -> HeaderValue {
        of_version(3).expect("a header value")
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
            assert!(none_match_hits(&with(hit), &three()), "{hit:?}");
        }
        for miss in [&[][..], &["\"2\""], &["3"], &["\"30\""], &["W/3"]] {
            assert!(!none_match_hits(&with(miss), &three()), "{miss:?}");
        }
    }
}
