//! What every service of this system does the same way over HTTP.
//!
//! The three services share their error body, request ids, request logging, health endpoints,
//! metrics text and shutdown. Keeping that here means a client sees one behaviour, whichever
//! service answers, and a fix lands once.
//!
//! - [`problem`]: [`Problem`], the `application/problem+json` error body (RFC 9457).
//! - [`http`]: [`http::with_common_layers`]: request ids, the request's span (continuing the
//!   caller's trace), latency histograms, panics as 500 problems, 404/405 as problems, heads
//!   over the limits as 414/431 problems, `/healthz` and `/metrics`.
//! - [`server`]: [`server::serve`], the accept loop: hyper's HTTP/1.1 with header and body read
//!   timeouts (which `axum::serve` cannot set), a bound on heads, and a graceful shutdown.
//! - [`limits`]: what a client may send: the request target's length, the headers' size and
//!   count, and the time a body may take.
//! - [`openapi`]: what every API's OpenAPI 3.1 document has in common, and `GET /openapi.json`.
//! - [`explorer`]: the API explorer on that document, `GET /docs` (Swagger UI, compiled in).
//! - [`metrics`]: a small Prometheus text registry: counters, gauges and histograms.
//! - [`telemetry`]: logs (human-readable or JSON) and, when the standard `OTEL_*` variables ask
//!   for them, OpenTelemetry traces over OTLP/HTTP; the W3C trace context across HTTP and Kafka.
//! - [`shutdown`]: the future that resolves on Ctrl-C or SIGTERM.

pub mod explorer;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod server;
pub mod shutdown;
pub mod telemetry;

pub use problem::{FieldError, Problem};
