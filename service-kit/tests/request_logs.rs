//! The request id in every log line of a request, through the common layers.
//!
//! A test binary of its own: tracing caches per call site whether anyone listens, and a test
//! that hits a call site with no subscriber installed, on another thread of the same binary,
//! can make this test's scoped subscriber miss the line.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use service_kit::http::{REQUEST_ID, with_common_layers};
use service_kit::metrics::Metrics;
use tower::ServiceExt as _;

/// Log lines written while the guard lives, as text without colours.
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn start() -> (Captured, tracing::subscriber::DefaultGuard) {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || CapturedWriter(writer.clone()))
            .finish();
        (
            Captured(buffer),
            tracing::subscriber::set_default(subscriber),
        )
    }

    fn line_with(&self, needle: &str) -> String {
        let text = String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8");
        text.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
            .to_owned()
    }
}

struct CapturedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn send(router: &Router, path: &str) {
    let request = Request::get(path)
        .header(REQUEST_ID, "req-7")
        .body(Body::empty())
        .expect("a request");
    router.clone().oneshot(request).await.expect("infallible");
}

#[tokio::test]
async fn every_line_of_a_request_carries_its_request_id() {
    let (logs, _guard) = Captured::start();
    let router = Router::new()
        .route(
            "/things/{id}",
            get(|| async {
                tracing::info!("looking the thing up");
                "a thing"
            }),
        )
        .route(
            "/broken",
            get(|| async {
                if true {
                    panic!("the handler broke");
                }
                "unreachable"
            }),
        );
    let app = with_common_layers(router, Metrics::default());
    send(&app, "/things/1").await;
    send(&app, "/broken").await;

    let line = logs.line_with("looking the thing up");
    assert!(line.contains("request_id=req-7"), "{line}");
    // The route template and method, not the path.
    assert!(line.contains("route=GET /things/{id}"), "{line}");
    let panicked = logs.line_with("handler panicked");
    assert!(panicked.contains("request_id=req-7"), "{panicked}");
    // What tower-http's TraceLayer logged for a 5xx, still in the request's span.
    let failed = logs.line_with("response failed");
    assert!(failed.contains("status=500"), "{failed}");
    assert!(failed.contains("request_id=req-7"), "{failed}");
}
