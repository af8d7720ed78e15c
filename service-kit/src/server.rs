//! The HTTP server loop every service runs: axum's router on hyper's HTTP/1.1 connections, with
//! deadlines on a request's headers and body, a bound on its head, and a graceful shutdown.
//!
//! `axum::serve` gives hyper no timer, and without one hyper never enforces a header read
//! timeout: a client that opens connections and sends its headers a byte at a time (slowloris)
//! holds each connection, and its task and buffers, for as long as it likes. Here a request's
//! headers must be complete within [`Timeouts::header_read`] of its first byte (or of the
//! connection, for the first request), or hyper closes the connection; its body must then arrive
//! within [`Timeouts::body_read`] (see [`crate::limits`]), and hyper parses no head longer than
//! [`limits::HEAD_BUFFER_BYTES`].
//!
//! Every request carries its connection's peer address as
//! `axum::extract::ConnectInfo<SocketAddr>` in its extensions, as
//! `into_make_service_with_connect_info` would give it: the command API limits sign-ups by it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody as _};
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use axum::routing::future::RouteFuture;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::Service;

use crate::limits::{self, DeadlineBody};

/// How long a client may take to send a request's headers. Generous for any real client on any
/// network; short enough that idle half-requests cannot pile up.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send each part of a request. The services run with the
/// defaults; the tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From a request's first byte to the end of its headers ([`HEADER_READ_TIMEOUT`]).
    pub header_read: Duration,
    /// From the end of a request's headers to the end of its body
    /// ([`limits::BODY_READ_TIMEOUT`]).
    pub body_read: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            header_read: HEADER_READ_TIMEOUT,
            body_read: limits::BODY_READ_TIMEOUT,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and waits for
/// the requests in flight, as `axum::serve(..).with_graceful_shutdown(..)` does.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    serve_with(listener, router, shutdown, Timeouts::default()).await;
}

/// [`serve`] with other timeouts (the tests use short ones).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    timeouts: Timeouts,
) {
    let mut connections = http1::Builder::new();
    connections
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        // The buffer bounds what a connection holds; a single read may still fill it past
        // its size, and the header size bound makes the head's limit exact.
        .max_buf_size(limits::HEAD_BUFFER_BYTES)
        .max_header_size(limits::HEAD_BUFFER_BYTES);
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
        let service = TowerToHyperService::new(Connection {
            router: router.clone(),
            peer,
            body_read_timeout: timeouts.body_read,
        });
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

/// The router as one connection sees it: every request gets the connection's peer address in
/// its extensions (which box it: one small allocation, as `into_make_service_with_connect_info`
/// costs, in the map axum's and tower-http's own extensions need anyway), and a body that is
/// not empty gets its read deadline.
#[derive(Clone)]
struct Connection {
    router: Router,
    peer: SocketAddr,
    body_read_timeout: Duration,
}

impl Service<Request<Incoming>> for Connection {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RouteFuture<Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request<Body>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let (mut parts, incoming) = request.into_parts();
        parts.extensions.insert(ConnectInfo(self.peer));
        // A request without a body (every read) arms no timer and costs nothing more.
        let body = if incoming.is_end_stream() {
            Body::new(incoming)
        } else {
            Body::new(DeadlineBody::new(incoming, self.body_read_timeout))
        };
        self.router.call(Request::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use axum::body::Bytes;
    use axum::extract::rejection::BytesRejection;
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::limits::{
        HEAD_BUFFER_BYTES, MAX_HEADER_BYTES, MAX_HEADER_COUNT, MAX_TARGET_BYTES,
        find_body_read_timeout,
    };
    use crate::metrics::Metrics;

    /// A server on a port of its own, with the common layers; it stops when the sender is used
    /// or dropped. `POST /length` answers the length of the body it read, or 408 when the read
    /// timed out.
    async fn started(
        timeouts: Timeouts,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/length",
                post(|body: Result<Bytes, BytesRejection>| async move {
                    match body {
                        Ok(bytes) => (StatusCode::OK, bytes.len().to_string()),
                        Err(rejection) => match find_body_read_timeout(&rejection) {
                            Some(timeout) => (StatusCode::REQUEST_TIMEOUT, timeout.to_string()),
                            None => (StatusCode::BAD_REQUEST, rejection.body_text()),
                        },
                    }
                }),
            );
        let router = crate::http::with_common_layers(router, Metrics::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(
            listener,
            router,
            async move {
                let _ = stopped.await;
            },
            timeouts,
        ));
        (address, stop, server)
    }

    fn header_read_timeout(header_read: Duration) -> Timeouts {
        Timeouts {
            header_read,
            ..Timeouts::default()
        }
    }

    fn body_read_timeout(body_read: Duration) -> Timeouts {
        Timeouts {
            body_read,
            ..Timeouts::default()
        }
    }

    /// Everything the server sends on `client` until it closes the connection. The bound only
    /// keeps a server that never closes from hanging the test.
    async fn read_until_closed(client: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut answer))
            .await
            .expect("the server closes the connection")
            .expect("the answer is read");
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Sends `GET path` on `client` with `Connection: close` and `extra` header lines, and
    /// returns the whole answer.
    async fn fetch_with(client: &mut TcpStream, path: &str, extra: &str) -> String {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra}Connection: close\r\n\r\n");
        client.write_all(request.as_bytes()).await.expect("request");
        read_until_closed(client).await
    }

    async fn fetch(client: &mut TcpStream, path: &str) -> String {
        fetch_with(client, path, "").await
    }

    /// Asserts `answer` is a problem+json of this status and type, with a request id.
    fn assert_problem(answer: &str, status: StatusCode, kind: &str) {
        let head = format!("HTTP/1.1 {}", status.as_u16());
        assert!(answer.starts_with(&head), "{answer}");
        assert!(
            answer.contains("content-type: application/problem+json\r\n"),
            "{answer}"
        );
        assert!(answer.contains("x-request-id: "), "{answer}");
        let type_member = format!(r#""type":"/problems/{kind}""#);
        assert!(answer.contains(&type_member), "{answer}");
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_disconnected() {
        let (address, _stop, _server) =
            started(header_read_timeout(Duration::from_millis(200))).await;
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
        let (address, stop, server) =
            started(header_read_timeout(Duration::from_millis(200))).await;
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
        let (address, _stop, _server) = started(Timeouts::default()).await;
        let mut client = TcpStream::connect(address).await.expect("connect");
        let local = client.local_addr().expect("local address");
        let answer = fetch(&mut client, "/peer").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with(&local.to_string()), "{answer}");
    }

    const POST_100_BYTES: &[u8] =
        b"POST /length HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n";

    #[tokio::test]
    async fn a_body_that_stalls_fails_at_the_deadline_and_the_connection_is_closed() {
        let timeout = Duration::from_millis(300);
        let (address, _stop, _server) = started(body_read_timeout(timeout)).await;
        let mut client = TcpStream::connect(address).await.expect("connect");
        let started = Instant::now();
        client.write_all(POST_100_BYTES).await.expect("the head");
        client
            .write_all(&[b'x'; 10])
            .await
            .expect("10 bytes of 100");
        // No `Connection: close`: the server closes it on its own.
        let answer = read_until_closed(&mut client).await;
        let waited = started.elapsed();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.ends_with("within 300 ms"), "{answer}");
        assert!(waited >= timeout, "answered after {waited:?}");
    }

    #[tokio::test]
    async fn a_body_that_trickles_fails_at_the_deadline() {
        let timeout = Duration::from_millis(300);
        let (address, _stop, _server) = started(body_read_timeout(timeout)).await;
        let client = TcpStream::connect(address).await.expect("connect");
        let (mut reading, mut writing) = client.into_split();
        writing.write_all(POST_100_BYTES).await.expect("the head");
        // A byte every 20 ms would take 2 s for the 100: each arrives well within the deadline
        // of the one before, but not all of them within the body's.
        let trickle = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(20));
            for _ in 0..100 {
                every.tick().await;
                if writing.write_all(b"x").await.is_err() {
                    break;
                }
            }
        });
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), reading.read_to_end(&mut answer))
            .await
            .expect("the server closes the connection")
            .expect("the answer is read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        trickle.abort();
    }

    #[tokio::test]
    async fn a_body_sent_in_time_is_read_whole() {
        let (address, _stop, _server) = started(body_read_timeout(Duration::from_secs(10))).await;
        let mut client = TcpStream::connect(address).await.expect("connect");
        client
            .write_all(b"POST /length HTTP/1.1\r\nHost: test\r\nConnection: close\r\n")
            .await
            .expect("the head");
        client
            .write_all(b"Content-Length: 10\r\n\r\n0123456789")
            .await
            .expect("the body");
        let answer = read_until_closed(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n10"), "{answer}");
    }

    #[tokio::test]
    async fn a_request_target_over_the_limit_is_a_414_problem() {
        let (address, _stop, _server) = started(Timeouts::default()).await;
        let mut client = TcpStream::connect(address).await.expect("connect");
        let at_limit = format!("/?q={}", "a".repeat(MAX_TARGET_BYTES - 4));
        let answer = fetch(&mut client, &at_limit).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");

        let mut client = TcpStream::connect(address).await.expect("connect");
        let over = format!("/?q={}", "a".repeat(MAX_TARGET_BYTES - 3));
        let answer = fetch(&mut client, &over).await;
        assert_problem(&answer, StatusCode::URI_TOO_LONG, "uri-too-long");
    }

    #[tokio::test]
    async fn headers_over_the_size_or_count_limit_are_a_431_problem() {
        let (address, _stop, _server) = started(Timeouts::default()).await;
        let mut client = TcpStream::connect(address).await.expect("connect");
        let large = format!("x-large: {}\r\n", "v".repeat(MAX_HEADER_BYTES));
        let answer = fetch_with(&mut client, "/", &large).await;
        assert_problem(
            &answer,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header-fields-too-large",
        );
        assert!(answer.contains("bytes"), "{answer}");

        let mut client = TcpStream::connect(address).await.expect("connect");
        let many = "x-many: v\r\n".repeat(MAX_HEADER_COUNT);
        let answer = fetch_with(&mut client, "/", &many).await;
        assert_problem(
            &answer,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header-fields-too-large",
        );
        assert!(answer.contains("header lines"), "{answer}");
    }

    #[tokio::test]
    async fn a_head_larger_than_hypers_buffer_is_refused_by_hyper_without_a_body() {
        let (address, _stop, _server) = started(Timeouts::default()).await;
        let mut client = TcpStream::connect(address).await.expect("connect");
        // Exactly the buffer, and not yet a whole head: hyper reads every byte sent, so that
        // closing the connection resets nothing the answer is in.
        let mut head = b"GET / HTTP/1.1\r\nHost: test\r\nx-huge: ".to_vec();
        head.resize(HEAD_BUFFER_BYTES, b'v');
        client.write_all(&head).await.expect("the head");
        let answer = read_until_closed(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        assert!(!answer.contains("problem+json"), "{answer}");
    }
}
