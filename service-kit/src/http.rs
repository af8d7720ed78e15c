//! The layers and routes every service's router gets.

use std::any::Any;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, Response, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::metrics::Metrics;
use crate::problem::Problem;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Adds `/healthz` and `/metrics`, problem+json answers for unknown routes, wrong methods and
/// panics, and request ids (the caller's `x-request-id`, else a new one) on every response and
/// log line. Call it last, on the service's complete router.
pub fn with_common_layers(router: Router, metrics: Metrics) -> Router {
    router
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(render_metrics).with_state(metrics.clone()))
        .fallback(|| async { Problem::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed", "this route does not take that method")
        })
        .layer(middleware::from_fn_with_state(metrics, count_requests))
        .layer(CatchPanicLayer::custom(panic_to_problem))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let id = request
                    .extensions()
                    .get::<RequestId>()
                    .and_then(|id| id.header_value().to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %request.method(), uri = %loggable_uri(request.uri()), request_id = %id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

async fn render_metrics(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

async fn count_requests(
    State(metrics): State<Metrics>,
    request: Request,
    next: Next,
) -> Response<Body> {
    // The route template, not the path, keeps the label set bounded.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let response = next.run(request).await;
    metrics.count(
        "http_requests_total",
        "HTTP requests answered, by route, method and status.",
        vec![
            ("route", route),
            ("method", method),
            ("status", response.status().as_u16().to_string()),
        ],
        1,
    );
    response
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

/// The request target as the request span logs it: as sent, except the value of an
/// `access_token` query parameter (RFC 6750 §2.3's way to send a bearer token, which no service
/// here takes, but a client may try), so that a token never reaches a log. Headers, where tokens
/// belong, are never logged at all. A `Display` wrapper, so the common case costs no allocation.
pub fn loggable_uri(uri: &Uri) -> LoggableUri<'_> {
    LoggableUri(uri)
}

#[derive(Debug, Clone, Copy)]
pub struct LoggableUri<'a>(&'a Uri);

impl std::fmt::Display for LoggableUri<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uri = self.0;
        let is_token = |pair: &str| {
            pair.split('=')
                .next()
                .is_some_and(|name| name.eq_ignore_ascii_case("access_token"))
        };
        match uri.query() {
            Some(query) if query.split('&').any(is_token) => {
                write!(f, "{}?", uri.path())?;
                for (i, pair) in query.split('&').enumerate() {
                    let sep = if i == 0 { "" } else { "&" };
                    let pair = if is_token(pair) {
                        "access_token=<redacted>"
                    } else {
                        pair
                    };
                    write!(f, "{sep}{pair}")?;
                }
                Ok(())
            }
            _ => write!(f, "{uri}"),
        }
    }
}

/// Seconds a client should wait before retrying after `timeout`, rounded up, at least 1.
pub fn retry_after_secs(timeout: Duration) -> u64 {
    timeout.as_secs().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_token_in_the_query_is_never_logged() {
        let uri: Uri = "/v1/users/1?limit=2&access_token=eyJ.secret.sig&Access_Token=x"
            .parse()
            .expect("a URI");
        let logged = loggable_uri(&uri).to_string();
        assert_eq!(
            logged,
            "/v1/users/1?limit=2&access_token=<redacted>&access_token=<redacted>"
        );
        assert!(!logged.contains("secret"));
        let plain: Uri = "/v1/posts?limit=5&cursor=abc".parse().expect("a URI");
        assert_eq!(
            loggable_uri(&plain).to_string(),
            "/v1/posts?limit=5&cursor=abc"
        );
        let bare: Uri = "/healthz".parse().expect("a URI");
        assert_eq!(loggable_uri(&bare).to_string(), "/healthz");
    }
}
