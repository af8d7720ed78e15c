//! The layers and routes every service's router gets.
//!
//! Every request of every service passes through these layers, and a cached read does little
//! else, so they are kept cheap: one `Router::layer` call for all of them (axum boxes each
//! route again at every call, and each box costs a request a clone and a boxed future), and
//! one layer of our own for the request's span and its latency, whose future is not boxed and
//! whose metrics take no lock to write and allocate nothing once a series exists. The span
//! has two fields: the text formatter writes every field of every span into a string as the
//! span is created, logged or not. `query-api/examples/cached_read.rs` measures what a request
//! costs (see BENCHMARKS.md).

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, Method, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use tower::{Layer, Service};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::metrics::{self, Histogram, Labels, Metrics};
use crate::problem::Problem;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The latency histogram of every request, by route, method and status.
pub const REQUEST_DURATION: &str = "http_server_request_duration_seconds";
/// Requests answered, by route, method and status: the histogram's counts again, as a counter.
pub const REQUESTS_TOTAL: &str = "http_requests_total";

/// Adds `/healthz` and `/metrics`, problem+json answers for unknown routes, wrong methods and
/// panics, and request ids (the caller's `x-request-id`, else a new one) on every response and
/// log line. Call it last, on the service's complete router.
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
        .layer((
            SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid),
            PropagateRequestIdLayer::new(REQUEST_ID),
            ObserveLayer(requests),
            CatchPanicLayer::custom(panic_to_problem),
        ))
}

/// The span every log line of a request is in: the request id, and what was asked as
/// OpenTelemetry names an HTTP server span (`GET /v1/posts/{post_id}`), in one field.
fn request_span(method: &Method, route: &str, request: &Request) -> tracing::Span {
    let id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        route = %format_args!("{method} {route}"),
        request_id = %id
    )
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

/// The route label of requests no route matched (answered by the fallback): one series for
/// all their paths, which are the client's choice and unbounded.
const UNMATCHED: &str = "unmatched";

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
            route.as_ref().map_or(UNMATCHED, MatchedPath::as_str),
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
                .map_or(UNMATCHED, MatchedPath::as_str);
            pending
                .requests
                .observe(route, pending.method, status.as_u16(), elapsed);
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
