//! Keyset pagination: `limit` and opaque cursors.
//!
//! Two keysets: posts go newest first by (created_at DESC, id DESC), and a stream's events go by
//! version, ascending. A cursor names the last item of a page by its sort key, which never
//! changes, so the next page starts strictly after it however many items were inserted or
//! deleted in between: every item that existed when paging began is visited exactly once.
//!
//! A post cursor packs a format version byte, created_at in microseconds (PostgreSQL's
//! precision, so it round-trips exactly) and the id; a stream cursor packs a format version byte
//! and the event's version. Both are base64url-encoded without padding so they can sit in a query
//! string as is, and their lengths differ, so neither is mistaken for the other.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use uuid::Uuid;

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

const CURSOR_VERSION: u8 = 1;
const CURSOR_LEN: usize = 1 + 8 + 16;

const STREAM_CURSOR_VERSION: u8 = 1;
const STREAM_CURSOR_LEN: usize = 1 + 8;

/// The first version of a stream, where a stream read starts by default.
pub const FIRST_VERSION: i64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("limit must be an integer from 1 to 100")]
    Limit,
    #[error("cursor is not one this API issued")]
    Cursor,
    #[error("from_version must be an integer from 1 up")]
    FromVersion,
}

/// Where a page starts: strictly after this sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let mut payload = Vec::with_capacity(CURSOR_LEN - 1);
        payload.extend_from_slice(&self.created_at.timestamp_micros().to_be_bytes());
        payload.extend_from_slice(self.id.as_bytes());
        frame(CURSOR_VERSION, &payload)
    }

    pub fn decode(text: &str) -> Result<Cursor, PageError> {
        let payload = unframe(text, CURSOR_VERSION, CURSOR_LEN)?;
        let (micros, id) = payload.split_at(8);
        let micros = i64::from_be_bytes(micros.try_into().map_err(|_| PageError::Cursor)?);
        let id = Uuid::from_slice(id).map_err(|_| PageError::Cursor)?;
        let created_at = DateTime::from_timestamp_micros(micros).ok_or(PageError::Cursor)?;
        // A forged cursor outside years 1..=9999 could reach PostgreSQL's range limits and fail
        // there; no post of ours has such a time.
        if !(earliest()..=latest()).contains(&created_at) {
            return Err(PageError::Cursor);
        }
        Ok(Cursor { created_at, id })
    }
}

/// A cursor's text: its format byte, then its payload, base64url without padding.
fn frame(format: u8, payload: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(1 + payload.len());
    bytes.push(format);
    bytes.extend_from_slice(payload);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The payload of a cursor `frame` made with `format`, `len` bytes in all; anything else is a
/// cursor we never issued.
fn unframe(text: &str, format: u8, len: usize) -> Result<Vec<u8>, PageError> {
    let mut bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| PageError::Cursor)?;
    if bytes.len() != len || bytes.first() != Some(&format) {
        return Err(PageError::Cursor);
    }
    bytes.remove(0);
    Ok(bytes)
}

fn earliest() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(1, 1, 1)
        .unwrap_or(NaiveDate::MIN)
        .and_time(Default::default())
        .and_utc()
}

fn latest() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(10_000, 1, 1)
        .unwrap_or(NaiveDate::MAX)
        .and_time(Default::default())
        .and_utc()
}

/// Where a page of a stream starts: just after this version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCursor {
    pub version: i64,
}

impl StreamCursor {
    pub fn encode(&self) -> String {
        frame(STREAM_CURSOR_VERSION, &self.version.to_be_bytes())
    }

    pub fn decode(text: &str) -> Result<StreamCursor, PageError> {
        let payload = unframe(text, STREAM_CURSOR_VERSION, STREAM_CURSOR_LEN)?;
        let version = i64::from_be_bytes(payload.try_into().map_err(|_| PageError::Cursor)?);
        // Versions start at 1; and a page after i64::MAX could not say where it starts.
        if !(FIRST_VERSION..i64::MAX).contains(&version) {
            return Err(PageError::Cursor);
        }
        Ok(StreamCursor { version })
    }
}

/// Parses `limit`: 1 to 100, 20 when absent.
pub fn parse_limit(limit: Option<&str>) -> Result<u32, PageError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or(PageError::Limit),
    }
}

/// A validated `?limit=&cursor=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<Cursor>,
}

impl PageRequest {
    pub fn parse(limit: Option<&str>, cursor: Option<&str>) -> Result<PageRequest, PageError> {
        let limit = parse_limit(limit)?;
        let after = cursor.map(Cursor::decode).transpose()?;
        Ok(PageRequest { limit, after })
    }

    /// One row more than the page holds: its presence says there is a next page.
    pub fn rows_to_fetch(&self) -> i64 {
        i64::from(self.limit) + 1
    }
}

/// A validated `?from_version=&limit=&cursor=` of a stream read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPageRequest {
    pub limit: u32,
    /// The lowest version the page may hold.
    pub start_version: i64,
}

impl StreamPageRequest {
    /// A page starts at `from_version` or just after the cursor, whichever is later, so a client
    /// may keep its `from_version` in the query string while it follows the cursors.
    pub fn parse(
        from_version: Option<&str>,
        limit: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<StreamPageRequest, PageError> {
        let from_version = match from_version {
            None => FIRST_VERSION,
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|v| *v >= FIRST_VERSION)
                .ok_or(PageError::FromVersion)?,
        };
        let limit = parse_limit(limit)?;
        let after = cursor.map(StreamCursor::decode).transpose()?;
        // StreamCursor::decode keeps version below i64::MAX, so the + 1 cannot overflow.
        let start_version = after.map_or(from_version, |after| from_version.max(after.version + 1));
        Ok(StreamPageRequest {
            limit,
            start_version,
        })
    }

    /// One row more than the page holds: its presence says there is a next page.
    pub fn rows_to_fetch(&self) -> i64 {
        i64::from(self.limit) + 1
    }
}

/// `{"items": [...], "next_cursor": string | null}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The `cursor` of the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page of `limit` items from up to `limit + 1` rows in sort order; `cursor_after`
    /// gives the encoded cursor that continues after a row.
    pub fn from_rows(mut rows: Vec<T>, limit: u32, cursor_after: impl Fn(&T) -> String) -> Page<T> {
        let limit = limit as usize;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if has_more {
            rows.last().map(cursor_after)
        } else {
            None
        };
        Page {
            items: rows,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        let created_at =
            DateTime::from_timestamp_micros(1_764_000_000_123_456).expect("valid time");
        Cursor {
            created_at,
            id: Uuid::now_v7(),
        }
    }

    #[test]
    fn cursor_round_trips_url_safely() {
        let c = cursor();
        let text = c.encode();
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{text}"
        );
        assert_eq!(Cursor::decode(&text), Ok(c));
    }

    #[test]
    fn rejects_cursors_it_never_issued() {
        let good = cursor().encode();
        let mut wrong_version = URL_SAFE_NO_PAD.decode(&good).expect("decodes");
        wrong_version[0] = 2;
        let mut far_past = URL_SAFE_NO_PAD.decode(&good).expect("decodes");
        far_past[1..9].copy_from_slice(&i64::MIN.to_be_bytes());
        for bad in [
            String::new(),
            "not a cursor".to_owned(),
            format!("{good}="),
            good[..good.len() - 1].to_owned(),
            format!("{good}AA"),
            URL_SAFE_NO_PAD.encode(wrong_version),
            URL_SAFE_NO_PAD.encode(far_past),
        ] {
            assert_eq!(Cursor::decode(&bad), Err(PageError::Cursor), "{bad:?}");
        }
    }

    #[test]
    fn limit_is_one_to_a_hundred_defaulting_to_twenty() {
        assert_eq!(PageRequest::parse(None, None).map(|p| p.limit), Ok(20));
        assert_eq!(PageRequest::parse(Some("1"), None).map(|p| p.limit), Ok(1));
        assert_eq!(
            PageRequest::parse(Some("100"), None).map(|p| p.limit),
            Ok(100)
        );
        for bad in ["0", "101", "x", "", "-1", "1.5", " 5"] {
            assert_eq!(
                PageRequest::parse(Some(bad), None),
                Err(PageError::Limit),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn next_cursor_only_when_more_rows_came_back() {
        let key = |n: &i64| Cursor {
            created_at: DateTime::from_timestamp_micros(*n).expect("time"),
            id: Uuid::nil(),
        };
        let full = Page::from_rows(vec![3, 2, 1], 2, |n| key(n).encode());
        assert_eq!(full.items, vec![3, 2]);
        assert_eq!(
            full.next_cursor.as_deref().map(Cursor::decode),
            Some(Ok(key(&2)))
        );
        let last = Page::from_rows(vec![3, 2], 2, |n| key(n).encode());
        assert_eq!(last.next_cursor, None);
    }

    #[test]
    fn stream_cursor_round_trips_url_safely() {
        for version in [1, 2, 255, 256, i64::MAX - 1] {
            let cursor = StreamCursor { version };
            let text = cursor.encode();
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{text}"
            );
            assert_eq!(StreamCursor::decode(&text), Ok(cursor));
        }
    }

    #[test]
    fn stream_cursors_it_never_issued_are_rejected() {
        let good = StreamCursor { version: 7 }.encode();
        let mut wrong_version = URL_SAFE_NO_PAD.decode(&good).expect("decodes");
        wrong_version[0] = 2;
        let mut bad = vec![
            String::new(),
            "not a cursor".to_owned(),
            format!("{good}="),
            good[..good.len() - 1].to_owned(),
            format!("{good}AA"),
            URL_SAFE_NO_PAD.encode(wrong_version),
            // A post cursor is not a stream cursor, nor the other way round.
            cursor().encode(),
        ];
        for version in [0, -1, i64::MIN, i64::MAX] {
            let mut bytes = vec![STREAM_CURSOR_VERSION];
            bytes.extend_from_slice(&i64::to_be_bytes(version));
            bad.push(URL_SAFE_NO_PAD.encode(bytes));
        }
        for text in bad {
            assert_eq!(
                StreamCursor::decode(&text),
                Err(PageError::Cursor),
                "{text:?}"
            );
        }
        assert_eq!(Cursor::decode(&good), Err(PageError::Cursor));
    }

    #[test]
    fn a_stream_page_starts_at_from_version_or_after_the_cursor_whichever_is_later() {
        let start = |from: Option<&str>, after: Option<i64>| {
            let cursor = after.map(|version| StreamCursor { version }.encode());
            StreamPageRequest::parse(from, None, cursor.as_deref()).map(|p| p.start_version)
        };
        assert_eq!(start(None, None), Ok(1));
        assert_eq!(start(Some("1"), None), Ok(1));
        assert_eq!(start(Some("5"), None), Ok(5));
        assert_eq!(start(None, Some(5)), Ok(6));
        assert_eq!(start(Some("3"), Some(5)), Ok(6));
        assert_eq!(start(Some("9"), Some(5)), Ok(9));
        let max = i64::MAX.to_string();
        assert_eq!(start(Some(&max), None), Ok(i64::MAX));
        for bad in ["0", "-1", "x", "", "1.5", " 1", "9223372036854775808"] {
            assert_eq!(
                StreamPageRequest::parse(Some(bad), None, None),
                Err(PageError::FromVersion),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_stream_page_takes_the_same_limits() {
        let limit = |text| StreamPageRequest::parse(None, text, None).map(|p| p.limit);
        assert_eq!(limit(None), Ok(20));
        assert_eq!(limit(Some("100")), Ok(100));
        assert_eq!(limit(Some("101")), Err(PageError::Limit));
    }
}
