//! The layers and routes every service's router gets.
//!
//! Every request of every service passes through these layers, and a cached read does little
//! else, so they are kept cheap: one `Router::layer` call for all of them (axum boxes each
//! route again at every call, and each box costs a request a clone and a boxed future), and
//! one layer of our own for the request's span and its latency, whose future is not boxed and
//! whose metrics take no lock to write and allocate nothing once a series exists. The span
//! has two fields at its start (a write records its command id later): the text formatter
//! writes every field of every span into a string as the span is created, logged or not. With
//! traces off, what they add to a request is a header lookup (`traceparent`) and a status
//! offered to a layer that is not there. `query-api/examples/cached_read.rs` measures what a request
//! costs (see BENCHMARKS.md).

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher as _, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use tower::{Layer, Service};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::limits::HeadLimitsLayer;
use crate::metrics::{self, Histogram, Labels, Metrics};
use crate::problem::Problem;
use crate::telemetry;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The latency histogram of every request, by route, method and status.
pub const REQUEST_DURATION: &str = "http_server_request_duration_seconds";
/// Requests answered, by route, method and status: the histogram's counts again, as a counter.
pub const REQUESTS_TOTAL: &str = "http_requests_total";

/// Adds `/healthz` and `/metrics`, problem+json answers for unknown routes, wrong methods,
/// panics and heads over the limits of [`crate::limits`] (414, 431), and request ids (the caller's `x-request-id`, else a new one) on every response and
/// log line. Call it last, on the service's complete router, and once per registry: `metrics`
/// gets the request series (`http_server_request_duration_seconds`, `http_requests_total`).
pub fn with_common_layers(router: Router, metrics: Metrics) -> Router {
    let requests = RequestMetrics::register(&metrics);
    router
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(render_metrics).with_state(metrics))
        .fallback(|| async { Problem::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "this route does not take that method",
            )
        })
        // Outermost first. The request id exists before the span that shows it; the panic
        // guard is inside the span, so that its 500 is measured and its log line has the id.
        // The head limits come before every route layer of the service (authentication reads
        // headers too), and their refusals are measured and carry the request id.
        .layer((
            SetRequestIdLayer::new(REQUEST_ID, MakeRequestIds),
            PropagateRequestIdLayer::new(REQUEST_ID),
            ObserveLayer(requests),
            CatchPanicLayer::custom(panic_to_problem),
            HeadLimitsLayer,
        ))
}

/// The span every log line of a request is in: the request id, and what was asked as
/// OpenTelemetry names an HTTP server span (`GET /v1/posts/{post_id}`), in one field. A write
/// records its command id on it once it is known (`command_id`, empty until then, so not
/// written). With traces on, a request that brings a W3C `traceparent` continues its trace.
fn request_span(method: &Method, route: &str, request: &Request) -> tracing::Span {
    let id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-");
    let span = tracing::info_span!(
        telemetry::REQUEST_SPAN,
        route = %format_args!("{method} {route}"),
        request_id = %id,
        command_id = tracing::field::Empty,
    );
    // One header lookup when there is none; extracting the context only when there is.
    if request.headers().contains_key(telemetry::TRACEPARENT) {
        let headers = request.headers();
        telemetry::continue_trace(&span, |name| headers.get(name)?.to_str().ok());
    }
    span
}

/// Request ids for requests that come without one, in the form of a random (v4) UUID, without
/// a system call: tower-http's `MakeRequestUuid` asks the kernel for 16 random bytes per
/// request (`getrandom`, about 0.45 µs here, more than the rest of the id's making), where
/// these are SipHash of a counter under keys the standard library drew from the kernel once.
/// Distinct counters give distinct-looking ids within a process, and other keys in every other
/// process; they need to be unique and not guessable in bulk, not secret.
#[derive(Clone, Copy, Debug, Default)]
pub struct MakeRequestIds;

impl MakeRequestId for MakeRequestIds {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        static KEYS: OnceLock<RandomState> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let keys = KEYS.get_or_init(RandomState::new);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Two inputs per id, so 128 bits of hash; plain u64s hash fastest. (Shifts, not
        // multiplications: they wrap after 2^63 ids instead of panicking in a debug build.)
        let bits = u128::from(keys.hash_one(n << 1)) << 64 | u128::from(keys.hash_one(n << 1 | 1));
        let id = format_uuid_v4(bits);
        HeaderValue::from_bytes(&id).ok().map(RequestId::new)
    }
}

/// `bits` as a version 4, variant 1 UUID, hyphenated in lower case.
fn format_uuid_v4(bits: u128) -> [u8; 36] {
    // Version 4 in bits 76..80, variant 0b10 in bits 62..64, as uuid's `new_v4` sets them.
    let bits = bits & 0xffff_ffff_ffff_0fff_3fff_ffff_ffff_ffff
        | 0x0000_0000_0000_4000_8000_0000_0000_0000;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0; 32];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = HEX[(bits >> (124 - 4 * i)) as usize & 0xf];
    }
    let mut out = [b'-'; 36];
    out[..8].copy_from_slice(&hex[..8]);
    out[9..13].copy_from_slice(&hex[8..12]);
    out[14..18].copy_from_slice(&hex[12..16]);
    out[19..23].copy_from_slice(&hex[16..20]);
    out[24..].copy_from_slice(&hex[20..]);
    out
}

async fn render_metrics(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

fn panic_to_problem(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("non-string panic");
    tracing::error!(panic = message, "handler panicked");
    Problem::internal().into_response()
}

/// Seconds a client should wait before retrying after `timeout`, rounded up, at least 1.
pub fn retry_after_secs(timeout: Duration) -> u64 {
    timeout.as_secs().max(1)
}

/// The request histograms, found per request under a read lock: by route, then by a short
/// scan of the route's (method, status) pairs. A series is created, and registered with the
/// registry, the first time its labels are seen.
struct RequestMetrics {
    registry: Metrics,
    routes: RwLock<HashMap<Box<str>, Vec<Series>>>,
}

struct Series {
    method: &'static str,
    status: u16,
    duration: Histogram,
}

impl RequestMetrics {
    fn register(registry: &Metrics) -> Arc<RequestMetrics> {
        let requests = Arc::new(RequestMetrics {
            registry: registry.clone(),
            routes: RwLock::default(),
        });
        // Weak: the registry outlives no router in practice, but a strong reference would be
        // a cycle (the registry holds this sampler, `requests` holds the registry).
        let sampled = Arc::downgrade(&requests);
        registry.sampled_counter(
            REQUESTS_TOTAL,
            "HTTP requests answered, by route, method and status (the same counts as \
             http_server_request_duration_seconds_count).",
            move || Weak::upgrade(&sampled).map_or_else(Vec::new, |r| r.totals()),
        );
        requests
    }

    fn observe(&self, route: &str, method: &'static str, status: u16, elapsed: Duration) {
        {
            let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(series) = routes.get(route).and_then(|all| {
                all.iter()
                    .find(|s| s.method == method && s.status == status)
            }) {
                series.duration.observe_duration(elapsed);
                return;
            }
        }
        self.create(route, method, status).observe_duration(elapsed);
    }

    /// The series for these labels, made under the write lock unless another request made it
    /// since this one looked.
    #[cold]
    fn create(&self, route: &str, method: &'static str, status: u16) -> Histogram {
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        let all = routes.entry(route.into()).or_default();
        if let Some(series) = all
            .iter()
            .find(|s| s.method == method && s.status == status)
        {
            return series.duration.clone();
        }
        let duration = self.registry.histogram(
            REQUEST_DURATION,
            "Time from routing an HTTP request to its response's head, by route, method and \
             status.",
            labels(route, method, status),
            metrics::LATENCY_SECONDS,
        );
        all.push(Series {
            method,
            status,
            duration: duration.clone(),
        });
        duration
    }

    /// `http_requests_total`'s series, in label order.
    fn totals(&self) -> Vec<(Labels, f64)> {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        let mut totals: Vec<(Labels, f64)> = routes
            .iter()
            .flat_map(|(route, all)| {
                all.iter()
                    .map(|s| (labels(route, s.method, s.status), s.duration.count() as f64))
            })
            .collect();
        totals.sort_by(|a, b| a.0.cmp(&b.0));
        totals
    }
}

fn labels(route: &str, method: &'static str, status: u16) -> Labels {
    vec![
        ("route", route.to_owned()),
        ("method", method.to_owned()),
        ("status", status.to_string()),
    ]
}

/// The method as a label: the standard methods by name, any other as `other`, so that a client
/// cannot add series by inventing methods.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}

/// Per request: the span of its log lines, its latency in [`RequestMetrics`], and the log
/// lines tower-http's `TraceLayer` wrote (`DEBUG` for every response, `ERROR` for a 5xx), at a
/// fraction of its cost: the span covers the handler, not the sending of a body that is
/// already in memory, so the body is not wrapped (nor boxed again by axum).
#[derive(Clone)]
struct ObserveLayer(Arc<RequestMetrics>);

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            requests: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct Observe<S> {
    inner: S,
    requests: Arc<RequestMetrics>,
}

impl<S, ResponseBody> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response<ResponseBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        // The route template, not the path, keeps the label set bounded.
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = method_label(request.method());
        let span = request_span(
            request.method(),
            route
                .as_ref()
                .map_or(telemetry::UNMATCHED, MatchedPath::as_str),
            &request,
        );
        let inner = {
            let _entered = span.enter();
            tracing::debug!("started processing request");
            self.inner.call(request)
        };
        Observed {
            inner,
            span,
            pending: Some(Pending {
                requests: self.requests.clone(),
                route,
                method,
                started,
            }),
        }
    }
}

struct Pending {
    requests: Arc<RequestMetrics>,
    route: Option<MatchedPath>,
    method: &'static str,
    started: Instant,
}

pin_project_lite::pin_project! {
    /// The inner future in the request's span, and what to record when it answers. A request
    /// whose client left before the answer (its future dropped) is not recorded: it has no
    /// status.
    struct Observed<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
        pending: Option<Pending>,
    }
}

impl<F, ResponseBody, E> Future for Observed<F>
where
    F: Future<Output = Result<Response<ResponseBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(pending)) = (&result, this.pending.take()) {
            let status = response.status();
            let elapsed = pending.started.elapsed();
            let route = pending
                .route
                .as_ref()
                .map_or(telemetry::UNMATCHED, MatchedPath::as_str);
            pending
                .requests
                .observe(route, pending.method, status.as_u16(), elapsed);
            telemetry::record_response_status(this.span, status.as_u16());
            if status.is_server_error() {
                tracing::error!(status = status.as_u16(), latency = ?elapsed, "response failed");
            } else {
                tracing::debug!(
                    status = status.as_u16(),
                    latency = ?elapsed,
                    "finished processing request"
                );
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use tower::ServiceExt as _;

    use super::*;

    /// A service with one route of each kind the layers tell apart.
    fn app(metrics: &Metrics) -> Router {
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
        with_common_layers(router, metrics.clone())
    }

    async fn send(router: &Router, method: &str, path: &str) -> Response<Body> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(REQUEST_ID, "req-7")
            .body(Body::empty())
            .expect("a request");
        router.clone().oneshot(request).await.expect("infallible")
    }

    /// The value of the series that starts with `prefix` (name and labels), if there is one.
    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(prefix)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn requests_are_measured_by_route_template_method_and_status() {
        let metrics = Metrics::default();
        let app = app(&metrics);
        for path in ["/things/1", "/things/2"] {
            assert_eq!(send(&app, "GET", path).await.status(), StatusCode::OK);
        }
        assert_eq!(
            send(&app, "POST", "/things/3").await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            send(&app, "GET", "/nowhere/4").await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            send(&app, "FROB", "/things/5").await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let text = metrics.render();
        let count = |labels: &str| {
            sample(
                &text,
                &format!("http_server_request_duration_seconds_count{{{labels}}}"),
            )
        };
        assert_eq!(
            count(r#"route="/things/{id}",method="GET",status="200""#),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            count(r#"route="/things/{id}",method="POST",status="405""#),
            Some(1.0),
            "{text}"
        );
        // Paths no route matched share one series: their labels cannot grow without bound.
        assert_eq!(
            count(r#"route="unmatched",method="GET",status="404""#),
            Some(1.0),
            "{text}"
        );
        // Nor can invented methods.
        assert_eq!(
            count(r#"route="/things/{id}",method="other",status="405""#),
            Some(1.0),
            "{text}"
        );
        assert!(!text.contains("FROB"), "{text}");
        assert!(!text.contains("/things/1"), "{text}");
        // The counter is the same counts.
        assert_eq!(
            sample(
                &text,
                r#"http_requests_total{route="/things/{id}",method="GET",status="200"}"#
            ),
            Some(2.0),
            "{text}"
        );
        assert!(
            text.contains("# TYPE http_requests_total counter"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_request_is_one_observation_in_seconds() {
        let metrics = Metrics::default();
        let app = app(&metrics);
        send(&app, "GET", "/things/1").await;
        let text = metrics.render();
        let series = r#"route="/things/{id}",method="GET",status="200""#;
        let bucket = |le: &str| {
            sample(
                &text,
                &format!("http_server_request_duration_seconds_bucket{{{series},le=\"{le}\"}}"),
            )
        };
        // A request through an in-memory router takes far less than 10 s (the last bound).
        assert_eq!(bucket("10"), Some(1.0), "{text}");
        assert_eq!(bucket("+Inf"), Some(1.0), "{text}");
        assert_eq!(bucket("0.0001").map(|n| n <= 1.0), Some(true), "{text}");
        let sum = sample(
            &text,
            &format!("http_server_request_duration_seconds_sum{{{series}}}"),
        )
        .expect("a sum");
        assert!((0.0..10.0).contains(&sum), "{text}");
        assert!(
            text.contains("# TYPE http_server_request_duration_seconds histogram"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_request_without_an_id_gets_a_new_uuid_each_time() {
        let app = app(&Metrics::default());
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let request = Request::get("/healthz")
                .body(Body::empty())
                .expect("a request");
            let response = app.clone().oneshot(request).await.expect("infallible");
            let id = response
                .headers()
                .get(REQUEST_ID)
                .and_then(|id| id.to_str().ok())
                .expect("a request id")
                .to_owned();
            assert_eq!(id.len(), 36, "{id}");
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(
                id.chars()
                    .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)),
                "{id}"
            );
            // Version 4, variant 1 (8, 9, a or b).
            assert!(groups[2].starts_with('4'), "{id}");
            assert!(matches!(&groups[3][..1], "8" | "9" | "a" | "b"), "{id}");
            assert!(seen.insert(id.clone()), "{id} twice");
        }
    }

    #[test]
    fn uuid_bits_are_laid_out_as_uuid_does() {
        // All ones and all zeros: only the version and variant bits are forced.
        assert_eq!(
            &format_uuid_v4(u128::MAX),
            b"ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
        assert_eq!(&format_uuid_v4(0), b"00000000-0000-4000-8000-000000000000");
        assert_eq!(
            &format_uuid_v4(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            b"01234567-89ab-4def-8123-456789abcdef"
        );
    }

    /// With traces on, the handler's span is in the trace the request's `traceparent` names,
    /// and passes that trace on. (Unsampled, so that nothing waits to be exported to the
    /// endpoint nobody listens on.)
    #[tokio::test]
    async fn a_request_continues_the_trace_of_its_traceparent() {
        let traces = telemetry::TraceExport {
            service_name: "test".into(),
            encoding: telemetry::OtlpEncoding::Json,
            endpoint: Some("http://127.0.0.1:9/v1/traces".into()),
            timeout: Duration::from_secs(1),
            schedule_delay: None,
        };
        let (dispatch, telemetry) = telemetry::subscriber(
            telemetry::LogFormat::Text,
            tracing_subscriber::EnvFilter::new("info"),
            Some(&traces),
        )
        .expect("a subscriber");
        let default = tracing::dispatcher::set_default(&dispatch);
        let passed_on = || async {
            let mut traceparent = String::new();
            telemetry::trace_context_headers(|_, value| traceparent = value.to_owned());
            traceparent
        };
        let app = with_common_layers(
            Router::new().route("/onwards", get(passed_on)),
            Metrics::default(),
        );
        let request = Request::get("/onwards")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            )
            .body(Body::empty())
            .expect("a request");
        let response = app.oneshot(request).await.expect("infallible");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("a body");
        let traceparent = String::from_utf8_lossy(&body);
        assert!(
            traceparent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{traceparent}"
        );
        // The request's span is the parent now, not the caller's.
        assert!(!traceparent.contains("b7ad6b7169203331"), "{traceparent}");
        drop(default);
        telemetry.shutdown().await;
    }

    #[tokio::test]
    async fn a_panic_is_a_measured_500_problem() {
        let metrics = Metrics::default();
        let app = app(&metrics);
        let response = send(&app, "GET", "/broken").await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers().get(REQUEST_ID),
            Some(&HeaderValue::from_static("req-7"))
        );
        assert_eq!(
            sample(
                &metrics.render(),
                r#"http_requests_total{route="/broken",method="GET",status="500"}"#
            ),
            Some(1.0)
        );
    }
}
