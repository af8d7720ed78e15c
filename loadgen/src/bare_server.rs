//! [`BareServer`]: `GET /v1/posts/{id}` answered from memory with a fixed post of the query API's
//! shape and headers, and nothing else: no database, no cache, no middleware. What it sustains
//! on a machine is the ceiling a cached read of the real query API can be compared with.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::Serialize;
use tokio::net::TcpListener;
use uuid::Uuid;

/// The post every request gets, pre-encoded once.
#[derive(Debug, Clone)]
struct FixedPost {
    body: Bytes,
}

/// The query API's post, field for field (contract v1).
#[derive(Serialize)]
struct PostShape<'a> {
    id: Uuid,
    author_id: Uuid,
    title: &'a str,
    body: &'a str,
    version: i64,
    created_at: &'a str,
    updated_at: &'a str,
}

impl FixedPost {
    fn new() -> FixedPost {
        let text = crate::contract::post_text(1100);
        let post = PostShape {
            id: Uuid::from_u128(0x0190_a0e4_5b6c_7d8e_9fa0_b1c2_d3e4_f506),
            author_id: Uuid::from_u128(0x0190_a0e4_5b6c_7d8e_9fa0_b1c2_d3e4_f507),
            title: "A post served from memory by loadgen bare-server",
            body: &text,
            version: 1,
            created_at: "2025-01-01T00:00:00.000000Z",
            updated_at: "2025-01-01T00:00:00.000000Z",
        };
        // A struct of strings and numbers always encodes.
        let body = serde_json::to_vec(&post).unwrap_or_default();
        FixedPost {
            body: Bytes::from(body),
        }
    }
}

/// The fixed post's size in bytes (about 1.3 KB, like a 1 KB post with its fields).
pub fn body_len() -> usize {
    FixedPost::new().body.len()
}

/// The server, bound and ready to run.
#[derive(Debug)]
pub struct BareServer {
    listener: TcpListener,
    address: SocketAddr,
}

impl BareServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<BareServer> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let address = listener
            .local_addr()
            .context("the listener has no local address")?;
        Ok(BareServer { listener, address })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = Router::new()
            .route("/v1/posts/{post_id}", get(get_post))
            .route("/healthz", get(|| async { StatusCode::OK }))
            .with_state(FixedPost::new());
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("the HTTP server failed")
    }
}

/// Like the query API, the id must be a UUID; unlike it, any UUID is found.
async fn get_post(State(post): State<FixedPost>, Path(post_id): Path<String>) -> Response {
    if Uuid::parse_str(&post_id).is_err() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, HeaderValue::from_static("\"1\"")),
        ],
        post.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_post_is_about_1_3_kb_of_json_of_the_post_shape() {
        let post = FixedPost::new();
        assert!(
            (1200..=1400).contains(&post.body.len()),
            "{}",
            post.body.len()
        );
        let value: serde_json::Value = serde_json::from_slice(&post.body).expect("JSON");
        for field in [
            "id",
            "author_id",
            "title",
            "body",
            "version",
            "created_at",
            "updated_at",
        ] {
            assert!(value.get(field).is_some(), "{field}");
        }
    }
}
