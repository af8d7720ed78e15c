//! The HTTP server loop every service runs: axum's router on hyper's HTTP/1.1 connections, with
//! a deadline on a request's headers and a graceful shutdown.
//!
//! `axum::serve` gives hyper no timer, and without one hyper never enforces a header read
//! timeout: a client that opens connections and sends its headers a byte at a time (slowloris)
//! holds each connection, and its task and buffers, for as long as it likes. Here a request's
//! headers must be complete within [`HEADER_READ_TIMEOUT`] of its first byte (or of the
//! connection, for the first request), or hyper closes the connection.
//!
//! Every request carries its connection's peer address as
//! `axum::extract::ConnectInfo<SocketAddr>` in its extensions, as
//! `into_make_service_with_connect_info` would give it: the command API limits sign-ups by it.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::Layer;

/// How long a client may take to send a request's headers. Generous for any real client on any
/// network; short enough that idle half-requests cannot pile up.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and waits for
/// the requests in flight, as `axum::serve(..).with_graceful_shutdown(..)` does.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_with(listener, router, shutdown, HEADER_READ_TIMEOUT).await;
}

/// [`serve`] with another header read timeout (the tests use a short one).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    header_read_timeout: Duration,
) {
    let mut connections = http1::Builder::new();
    connections
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: give connections time to close
                    // rather than spin (axum::serve does the same).
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are written whole; nothing gains from waiting to coalesce them.
        let _ = stream.set_nodelay(true);
        // The layer is made once per connection, around the router clone each connection
        // already had; a request gets a copy of the `SocketAddr` in its extensions, which box
        // it (one small allocation, as `into_make_service_with_connect_info` costs, in the map
        // axum's and tower-http's own extensions need anyway).
        let service = TowerToHyperService::new(
            Extension(ConnectInfo::<SocketAddr>(peer)).layer(router.clone()),
        );
        let connection =
            graceful.watch(connections.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // A client that went away or timed out: theirs, not ours.
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A server on a port of its own; it stops when the sender is used or dropped.
    async fn started(
        header_read_timeout: Duration,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let router = Router::new().route("/", get(|| async { "ok" })).route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(
            listener,
            router,
            async move {
                let _ = stopped.await;
            },
            header_read_timeout,
        ));
        (address, stop, server)
    }

    /// Sends `GET path` on `client` with `Connection: close` and returns the whole answer.
    async fn fetch(client: &mut TcpStream, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        client.write_all(request.as_bytes()).await.expect("request");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("answer");
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_disconnected() {
        let (address, _stop, _server) = started(Duration::from_millis(200)).await;
        let mut slow = TcpStream::connect(address).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n")
            .await
            .expect("half a request");
        let mut rest = Vec::new();
        // Waits for the server to close the connection; the bound only keeps a broken server
        // from hanging the test.
        // (A reset instead of an orderly close is as good.)
        let _closed_or_reset =
            tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut rest))
                .await
                .expect(
                    "the server closes the connection of a client that never finishes its headers",
                );
        assert!(
            !String::from_utf8_lossy(&rest).contains("200 OK"),
            "no answer to half a request"
        );
    }

    #[tokio::test]
    async fn a_complete_request_is_answered_and_the_server_stops_when_told() {
        let (address, stop, server) = started(Duration::from_millis(200)).await;
        let mut client = TcpStream::connect(address).await.expect("connect");
        let answer = fetch(&mut client, "/").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");

        stop.send(()).expect("the server is running");
        // The bound only keeps a server that never stops from hanging the test.
        tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("the server stops when told")
            .expect("the server loop did not panic");
        assert!(
            TcpStream::connect(address).await.is_err(),
            "a stopped server accepts no connections"
        );
    }

    #[tokio::test]
    async fn handlers_see_the_peer_address_of_the_connection() {
        let (address, _stop, _server) = started(Duration::from_secs(10)).await;
        let mut client = TcpStream::connect(address).await.expect("connect");
        let local = client.local_addr().expect("local address");
        let answer = fetch(&mut client, "/peer").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with(&local.to_string()), "{answer}");
    }
}
