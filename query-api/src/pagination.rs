//! Keyset pagination: `limit` and an opaque cursor over (created_at DESC, id DESC).
//!
//! A cursor names the last item of a page by its sort key, which never changes, so the next page
//! starts strictly after it however many posts were inserted or deleted in between: every item
//! that existed when paging began is visited exactly once. The key is packed as a version byte,
//! created_at in microseconds (PostgreSQL's precision, so it round-trips exactly) and the id, then
//! base64url-encoded without padding so it can sit in a query string as is.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use uuid::Uuid;

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

const CURSOR_VERSION: u8 = 1;
const CURSOR_LEN: usize = 1 + 8 + 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("limit must be an integer from 1 to 100")]
    Limit,
    #[error("cursor is not one this API issued")]
    Cursor,
}

/// Where a page starts: strictly after this sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(CURSOR_LEN);
        bytes.push(CURSOR_VERSION);
        bytes.extend_from_slice(&self.created_at.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(self.id.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Cursor, PageError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| PageError::Cursor)?;
        let [version, rest @ ..] = bytes.as_slice() else {
            return Err(PageError::Cursor);
        };
        if *version != CURSOR_VERSION || bytes.len() != CURSOR_LEN {
            return Err(PageError::Cursor);
        }
        let (micros, id) = rest.split_at(8);
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

/// A validated `?limit=&cursor=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<Cursor>,
}

impl PageRequest {
    pub fn parse(limit: Option<&str>, cursor: Option<&str>) -> Result<PageRequest, PageError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or(PageError::Limit)?,
        };
        let after = cursor.map(Cursor::decode).transpose()?;
        Ok(PageRequest { limit, after })
    }

    /// One row more than the page holds: its presence says there is a next page.
    pub fn rows_to_fetch(&self) -> i64 {
        i64::from(self.limit) + 1
    }
}

/// `{"items": [...], "next_cursor": string | null}`.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds the page from up to `rows_to_fetch()` rows in sort order; `key` gives a row's cursor.
    pub fn from_rows(
        mut rows: Vec<T>,
        request: &PageRequest,
        key: impl Fn(&T) -> Cursor,
    ) -> Page<T> {
        let limit = request.limit as usize;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if has_more {
            rows.last().map(|last| key(last).encode())
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
        let request = PageRequest {
            limit: 2,
            after: None,
        };
        let key = |n: &i64| Cursor {
            created_at: DateTime::from_timestamp_micros(*n).expect("time"),
            id: Uuid::nil(),
        };
        let full = Page::from_rows(vec![3, 2, 1], &request, key);
        assert_eq!(full.items, vec![3, 2]);
        assert_eq!(
            full.next_cursor.as_deref().map(Cursor::decode),
            Some(Ok(key(&2)))
        );
        let last = Page::from_rows(vec![3, 2], &request, key);
        assert_eq!(last.next_cursor, None);
    }
}
