//! What the load generator sends and reads of contract v1, shared by seeding, the workload and
//! the fault-injection run: the two headers, the `202 Accepted` body, a post's body, and the
//! text posts are filled with.

use bytes::Bytes;
use hyper::header::HeaderName;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The header a read sends to be answered no older than a write (the token of its `202`).
pub const CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("consistency-token");

/// The header that makes a write's retries safe: the same key, the same command.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The body of a `202 Accepted`; a sign-up's also carries the new user's access token.
#[derive(Debug, Clone, Deserialize)]
pub struct Accepted {
    pub command_id: Uuid,
    pub aggregate_id: Uuid,
    pub consistency_token: String,
    #[serde(default)]
    pub access_token: Option<String>,
}

/// A post's create or edit body.
#[derive(Debug, Serialize)]
pub struct PostBody<'a> {
    pub title: &'a str,
    pub body: &'a str,
}

impl PostBody<'_> {
    pub fn encode(&self) -> Bytes {
        // Two strings into a JSON object: serialising cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// `len` bytes of plain ASCII prose, the same every time: post bodies of the expected size
/// (1 KB per write), with nothing JSON has to escape.
pub fn post_text(len: usize) -> String {
    const PROSE: &str = "Traffic is not evenly distributed, so the hottest posts are read far \
        more often than the rest; every write becomes an event in the log before it is decided. ";
    PROSE.chars().cycle().take(len).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_text_has_the_asked_size_and_needs_no_escaping() {
        let text = post_text(1024);
        assert_eq!(text.len(), 1024);
        assert!(text.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
        assert!(!text.contains('"') && !text.contains('\\'));
        let encoded = PostBody {
            title: "t",
            body: &text,
        }
        .encode();
        assert!(encoded.len() > 1024);
    }
}
