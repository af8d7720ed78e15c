//! Logs and traces: the subscriber every binary installs, and the trace context's way across
//! HTTP and Kafka.
//!
//! Logs go to stderr, as text or JSON ([`LogFormat`]). Traces are off unless the standard
//! OpenTelemetry variables ask for them ([`TraceExport::from_env`]): then every span also goes,
//! in batches, to an OTLP/HTTP endpoint (a collector, Jaeger, ...). Off, nothing of
//! OpenTelemetry is installed: the spans cost what they cost before.
//!
//! The trace context travels as W3C `traceparent`/`tracestate`: [`continue_trace`] makes a span
//! the child of a context that came in (an HTTP request's headers, a Kafka record's), and
//! [`trace_context_headers`] gives the current span's context for a record going out. Both do
//! nothing when traces are off (no OpenTelemetry layer in the subscriber).
//!
//! The spans keep the names their log lines show (`request`, `append`, `project`, ...); the
//! trace gets OpenTelemetry's names and kinds for them from a span processor
//! ([`SpanNames`]) when they end, so that neither costs a log line a field.

use std::borrow::Cow;
use std::future::Future;
use std::io::IsTerminal as _;
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanProcessor,
};
use tracing::Dispatch;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt as _};
/// What [`subscriber`] takes as its filter, for callers without a dependency of their own on
/// `tracing-subscriber`.
pub use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log lines are written; every binary takes it as `--log-format` / `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The span of an HTTP request (`service_kit::http`); exported as a server span named after
/// its route, `POST /v1/users`.
pub const REQUEST_SPAN: &str = "request";

/// The route of requests no route matched (answered by the fallback), in their span and their
/// metrics' label: one name for all their paths, which are the client's choice and unbounded.
pub(crate) const UNMATCHED: &str = "unmatched";
/// The span of a write's append to Kafka (the command API); exported as a producer span. The
/// record carries its context.
pub const APPEND_SPAN: &str = "append";
/// The span of one event's decision in the projector; exported as a consumer span, the child
/// of the append that wrote the event.
pub const PROJECT_SPAN: &str = "project";

/// The header of W3C Trace Context that carries the parent span.
pub const TRACEPARENT: &str = "traceparent";

/// A bad `OTEL_*` setting, named with its value; the binaries stop at start-up with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryError(String);

impl std::fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TelemetryError {}

/// How OTLP messages are encoded: the two that OTLP/HTTP has (gRPC is not built in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpEncoding {
    /// `http/protobuf`, the specification's default.
    Protobuf,
    /// `http/json`.
    Json,
}

/// Where and how traces are exported: what the standard variables ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceExport {
    /// `service.name` of every span: `OTEL_SERVICE_NAME`, else the binary's name.
    pub service_name: String,
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub encoding: OtlpEncoding,
    /// The full URL spans are posted to. `None`: the exporter reads
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (as it is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (plus
    /// `/v1/traces`) itself.
    pub endpoint: Option<String>,
    /// The bound on one export request: `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), else 10 s.
    pub timeout: Duration,
    /// The time between two batches. `None`: `OTEL_BSP_SCHEDULE_DELAY`, else 5 s (read by the
    /// SDK, as are the other `OTEL_BSP_*`).
    pub schedule_delay: Option<Duration>,
}

const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

impl TraceExport {
    /// What the process's environment asks for; `None` when traces are off. See
    /// [`TraceExport::from_vars`].
    pub fn from_env(default_service_name: &str) -> Result<Option<TraceExport>, TelemetryError> {
        Self::from_vars(|name| std::env::var(name).ok(), default_service_name)
    }

    /// What the variables `var` looks up ask for. Traces are on when an endpoint is set
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`), unless
    /// `OTEL_TRACES_EXPORTER` is `none` or `OTEL_SDK_DISABLED` is `true`. A value this build
    /// cannot honour (gRPC, another exporter, an `https` endpoint, compression, a timeout that
    /// is not a number) is an error rather than a silent fallback. An empty variable counts as unset.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        default_service_name: &str,
    ) -> Result<Option<TraceExport>, TelemetryError> {
        let set = |name: &'static str| {
            var(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
                .map(|value| (name, value))
        };
        if set("OTEL_SDK_DISABLED").is_some_and(|(_, v)| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match set("OTEL_TRACES_EXPORTER") {
            None => {}
            Some((_, exporter)) if exporter == "otlp" => {}
            Some((_, exporter)) if exporter == "none" => return Ok(None),
            Some((name, other)) => {
                return Err(TelemetryError(format!(
                    "{name}={other}: traces are exported with otlp (or not at all: none)"
                )));
            }
        }
        let Some((endpoint_var, endpoint)) = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else {
            return Ok(None);
        };
        if !endpoint.starts_with("http://") {
            return Err(TelemetryError(format!(
                "{endpoint_var}={endpoint}: traces go over plain http:// (TLS is not built in); \
                 send them to a collector next to the service"
            )));
        }
        let encoding = match set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            None => OtlpEncoding::Protobuf,
            Some((_, protocol)) if protocol == "http/protobuf" => OtlpEncoding::Protobuf,
            Some((_, protocol)) if protocol == "http/json" => OtlpEncoding::Json,
            Some((name, other)) => {
                return Err(TelemetryError(format!(
                    "{name}={other}: traces go over OTLP/HTTP, http/protobuf or http/json \
                     (gRPC is not built in)"
                )));
            }
        };
        if let Some((name, compression)) = set("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
            .or_else(|| set("OTEL_EXPORTER_OTLP_COMPRESSION"))
            .filter(|(_, compression)| compression != "none")
        {
            return Err(TelemetryError(format!(
                "{name}={compression}: traces are sent uncompressed (none); compression is not \
                 built in"
            )));
        }
        let timeout = match set("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_TIMEOUT"))
        {
            None => DEFAULT_EXPORT_TIMEOUT,
            Some((name, millis)) => millis
                .parse()
                .ok()
                .filter(|&millis| millis > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| {
                    TelemetryError(format!(
                        "{name}={millis}: a timeout in milliseconds, more than 0"
                    ))
                })?,
        };
        let service_name = set("OTEL_SERVICE_NAME")
            .map_or_else(|| default_service_name.to_owned(), |(_, name)| name);
        Ok(Some(TraceExport {
            service_name,
            encoding,
            endpoint: None,
            timeout,
            schedule_delay: None,
        }))
    }
}

/// What [`init`] or [`subscriber`] set up that must be flushed at the end: the spans not yet
/// exported. Call [`Telemetry::shutdown`] when the service has stopped.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exports_traces(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still waiting (bounded: 5 s), and stops the exporter. The wait is on
    /// a blocking thread, so that the export, which runs on this runtime, is not starved.
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "the last spans may not have been exported"),
            Err(error) => tracing::warn!(%error, "the trace exporter's shutdown failed"),
        }
    }
}

/// Installs the global subscriber: logs as [`subscriber`] writes them, and traces when the
/// standard variables ask for them ([`TraceExport::from_env`], with the binary's file name as
/// the default service name). Call it inside the tokio runtime (the exporter runs on it), and
/// [`Telemetry::shutdown`] at the end.
///
/// Safe to call more than once (later calls install nothing and export nothing), which tests
/// rely on.
pub fn init(format: LogFormat) -> Result<Telemetry, TelemetryError> {
    let traces = TraceExport::from_env(&binary_name())?;
    let (dispatch, telemetry) = subscriber(format, default_filter(), traces.as_ref())?;
    if dispatch.try_init().is_err() {
        // Another subscriber was first; these spans would go nowhere.
        return Ok(Telemetry::default());
    }
    if let Some(traces) = &traces {
        tracing::info!(
            service_name = traces.service_name,
            encoding = ?traces.encoding,
            "exporting traces over OTLP/HTTP"
        );
    }
    Ok(telemetry)
}

/// `RUST_LOG`, or `info`. It filters the spans that traces get as well as the log lines.
pub fn default_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The subscriber, not installed: log lines to stderr through `filter`, and the spans to
/// `traces` when given. The tests install it for their thread alone
/// (`tracing::dispatcher::set_default`).
///
/// Text has colour codes only when stderr is a terminal and `NO_COLOR` is not set: a log file
/// or a collector gets plain text. It also costs less: the formatter writes every request
/// span's fields, escape codes and all, as the span is made, logged or not (see
/// `service_kit::http`).
pub fn subscriber(
    format: LogFormat,
    filter: EnvFilter,
    traces: Option<&TraceExport>,
) -> Result<(Dispatch, Telemetry), TelemetryError> {
    let provider = traces.map(tracer_provider).transpose()?;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    let dispatch = match format {
        LogFormat::Json => Dispatch::new(
            registry
                .with(lines.json())
                .with(provider.as_ref().map(spans_layer)),
        ),
        LogFormat::Text => Dispatch::new(
            registry
                .with(lines)
                .with(provider.as_ref().map(spans_layer)),
        ),
    };
    Ok((dispatch, Telemetry { provider }))
}

/// The layer that gives the spans to OpenTelemetry.
fn spans_layer<S>(provider: &SdkTracerProvider) -> OpenTelemetryLayer<S, SdkTracer>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(env!("CARGO_PKG_NAME")))
        // Busy and idle times would time every entry into every span.
        .with_tracked_inactivity(false)
        .with_threads(false)
}

/// The file name the binary was started as: `command-api`, `projector`, `query-api`.
fn binary_name() -> String {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|path| Some(path.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown_service".to_owned())
}

fn tracer_provider(traces: &TraceExport) -> Result<SdkTracerProvider, TelemetryError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        TelemetryError("traces are exported on the tokio runtime, and there is none".into())
    })?;
    let client = RuntimeHttp {
        runtime,
        timeout: traces.timeout,
    };
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(match traces.encoding {
            OtlpEncoding::Protobuf => Protocol::HttpBinary,
            OtlpEncoding::Json => Protocol::HttpJson,
        })
        .with_timeout(traces.timeout)
        .with_http_client(client);
    if let Some(endpoint) = &traces.endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    // Its errors name the variable (an endpoint that is no URL, an unknown compression).
    let exporter = exporter
        .build()
        .map_err(|error| TelemetryError(format!("cannot export traces: {error}")))?;
    let mut batches = BatchConfigBuilder::default();
    if let Some(delay) = traces.schedule_delay {
        batches = batches.with_scheduled_delay(delay);
    }
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batches.build())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(SpanNames(batches))
        .with_resource(
            Resource::builder()
                .with_service_name(traces.service_name.clone())
                .build(),
        )
        .build())
}

/// Makes `span` the child of the trace context that `header` finds (`traceparent`, and
/// `tracestate`), when it finds a valid one, with a link to the current span, which would
/// have been its parent (the projector's batch, for an event). Call it before the span is
/// first entered. Nothing happens without traces: the span has no OpenTelemetry side to set.
pub fn continue_trace<'a>(span: &tracing::Span, header: impl Fn(&str) -> Option<&'a str>) {
    let parent = TraceContextPropagator::new().extract(&HeaderLookup(header, PhantomData));
    if !parent.span().span_context().is_valid() {
        return;
    }
    // Fails only when there is no OpenTelemetry layer: then there is nothing to continue.
    if span.set_parent(parent).is_ok() {
        let here = tracing::Span::current()
            .context()
            .span()
            .span_context()
            .clone();
        if here.is_valid() {
            span.add_link(here);
        }
    }
}

/// Gives `put` the current span's trace context as W3C headers (`traceparent`, and `tracestate`
/// when there is one), to send along with what this span produces; nothing without traces.
pub fn trace_context_headers(put: impl FnMut(&str, &str)) {
    let context = tracing::Span::current().context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut HeaderSink(put));
    }
}

/// Records the status of a request's answer on its span, for the trace: the code, and an error
/// status for a 5xx. Nothing without traces.
pub fn record_response_status(span: &tracing::Span, status: u16) {
    span.set_attribute("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.set_status(Status::error(""));
    }
}

/// The headers' lifetime is in the type, so that a borrow of the lookup is a borrow of them.
struct HeaderLookup<'a, F>(F, PhantomData<&'a str>);

impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for HeaderLookup<'a, F> {
    fn get(&self, key: &str) -> Option<&str> {
        (self.0)(key)
    }

    /// Only propagators that copy every header need this (baggage's); trace context asks for
    /// its two by name.
    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

struct HeaderSink<F>(F);

impl<F: FnMut(&str, &str)> Injector for HeaderSink<F> {
    /// An empty `tracestate` says nothing; it is not sent.
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            (self.0)(key, &value)
        }
    }
}

/// Gives the spans OpenTelemetry's names and kinds as they end (see the module documentation),
/// then hands them to the batch processor.
#[derive(Debug)]
struct SpanNames<P>(P);

impl<P: SpanProcessor> SpanProcessor for SpanNames<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, context: &Context) {
        self.0.on_start(span, context);
    }

    fn on_end(&self, mut span: SpanData) {
        name_span(&mut span);
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// A request span is named after its route, as OpenTelemetry's HTTP conventions name server
/// spans (`GET /v1/posts/{post_id}`; the method alone when no route matched), with the method
/// and route as their attributes; the append and project spans are the producer and consumer
/// of a message.
fn name_span(span: &mut SpanData) {
    match span.name.as_ref() {
        REQUEST_SPAN => {
            span.span_kind = SpanKind::Server;
            let route = span
                .attributes
                .iter()
                .find(|attribute| attribute.key.as_str() == "route")
                .map(|attribute| attribute.value.as_str().into_owned());
            if let Some((method, template)) = route.as_deref().and_then(|r| r.split_once(' ')) {
                span.attributes
                    .push(KeyValue::new("http.request.method", method.to_owned()));
                if template == UNMATCHED {
                    span.name = Cow::Owned(method.to_owned());
                } else {
                    span.attributes
                        .push(KeyValue::new("http.route", template.to_owned()));
                    span.name = Cow::Owned(format!("{method} {template}"));
                }
            }
        }
        APPEND_SPAN => {
            span.span_kind = SpanKind::Producer;
            span.attributes
                .push(KeyValue::new("messaging.system", Value::from("kafka")));
        }
        PROJECT_SPAN => {
            span.span_kind = SpanKind::Consumer;
            span.attributes
                .push(KeyValue::new("messaging.system", Value::from("kafka")));
        }
        _ => {}
    }
}

/// The exporter's HTTP client: one HTTP/1.1 exchange per batch on hyper's own client
/// connection, run on the service's tokio runtime. The SDK's batch processor exports from a
/// thread of its own, where hyper, which needs tokio's reactor and timer, cannot run; the
/// runtime's task can, and its join handle can be awaited anywhere.
#[derive(Debug, Clone)]
struct RuntimeHttp {
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

/// A collector's answer is a small message; more is not read.
const ANSWER_LIMIT: usize = 64 * 1024;

impl HttpClient for RuntimeHttp {
    // What `#[async_trait]` would write, without the macro.
    fn send_bytes<'client, 'exchange>(
        &'client self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'exchange>>
    where
        'client: 'exchange,
        Self: 'exchange,
    {
        let timeout = self.timeout;
        let exchange = self
            .runtime
            .spawn(async move { tokio::time::timeout(timeout, exchange(request)).await });
        Box::pin(async move {
            match exchange.await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_elapsed)) => Err(format!("no answer within {timeout:?}").into()),
                Err(join_error) => Err(join_error.into()),
            }
        })
    }
}

async fn exchange(request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let (mut parts, body) = request.into_parts();
    let authority = parts
        .uri
        .authority()
        .filter(|_| parts.uri.scheme_str() == Some("http"))
        .ok_or_else(|| format!("not an http:// URL: {}", parts.uri))?
        .clone();
    let stream =
        tokio::net::TcpStream::connect((authority.host(), authority.port_u16().unwrap_or(80)))
            .await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection does the I/O; it ends when the exchange below drops its sender.
    tokio::spawn(connection);
    // HTTP/1.1's usual form: the path in the request line, the authority in `Host`.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .parse()?;
    parts
        .headers
        .insert(hyper::header::HOST, authority.as_str().parse()?);
    let answer = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (parts, body) = answer.into_parts();
    let body = Limited::new(body, ANSWER_LIMIT).collect().await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn export(pairs: &[(&str, &str)]) -> Result<Option<TraceExport>, TelemetryError> {
        TraceExport::from_vars(vars(pairs), "the-binary")
    }

    #[test]
    fn traces_are_off_without_an_endpoint() {
        assert_eq!(export(&[]), Ok(None));
        assert_eq!(
            export(&[
                ("OTEL_SERVICE_NAME", "svc"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "  "),
            ]),
            Ok(None)
        );
    }

    #[test]
    fn an_endpoint_turns_traces_on_with_the_binary_name_and_protobuf() {
        let on = export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]);
        assert_eq!(
            on,
            Ok(Some(TraceExport {
                service_name: "the-binary".into(),
                encoding: OtlpEncoding::Protobuf,
                endpoint: None,
                timeout: DEFAULT_EXPORT_TIMEOUT,
                schedule_delay: None,
            }))
        );
        let on = export(&[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://jaeger:4318/v1/traces",
            ),
            ("OTEL_SERVICE_NAME", "writes-eu"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ])
        .expect("valid")
        .expect("on");
        assert_eq!(on.service_name, "writes-eu");
        // The signal's own variable wins over the general one.
        assert_eq!(on.encoding, OtlpEncoding::Json);
        assert_eq!(on.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn the_exporter_none_or_a_disabled_sdk_turns_traces_off() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert_eq!(
            export(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]),
            Ok(None)
        );
        assert_eq!(export(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]), Ok(None));
        assert!(matches!(
            export(&[endpoint, ("OTEL_TRACES_EXPORTER", "otlp")]),
            Ok(Some(_))
        ));
    }

    #[test]
    fn what_this_build_cannot_do_is_an_error_naming_the_variable() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        for (setting, named) in [
            (
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
            ),
            (
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/xml"),
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/xml",
            ),
            (
                ("OTEL_TRACES_EXPORTER", "zipkin"),
                "OTEL_TRACES_EXPORTER=zipkin",
            ),
            (
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
                "OTEL_EXPORTER_OTLP_TIMEOUT=soon",
            ),
            (
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
                "OTEL_EXPORTER_OTLP_TIMEOUT=0",
            ),
            (
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
                "OTEL_EXPORTER_OTLP_COMPRESSION=gzip",
            ),
        ] {
            let error = export(&[endpoint, setting]).expect_err("refused");
            assert!(error.to_string().starts_with(named), "{error}");
        }
        let error = export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")])
            .expect_err("refused");
        assert!(
            error
                .to_string()
                .starts_with("OTEL_EXPORTER_OTLP_ENDPOINT=https://collector:4318"),
            "{error}"
        );
    }

    /// The trace id of `span`'s OpenTelemetry side, when it has one.
    fn trace_id(span: &tracing::Span) -> Option<String> {
        let context = span.context();
        let span_context = context.span().span_context().clone();
        span_context
            .is_valid()
            .then(|| span_context.trace_id().to_string())
    }

    #[test]
    fn without_traces_no_span_has_an_opentelemetry_side() {
        let (dispatch, telemetry) =
            subscriber(LogFormat::Text, EnvFilter::new("info"), None).expect("a subscriber");
        assert!(!telemetry.exports_traces());
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("request");
            continue_trace(&span, |name| {
                (name == TRACEPARENT)
                    .then_some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            });
            let _entered = span.enter();
            assert_eq!(trace_id(&span), None);
            let mut headers = Vec::new();
            trace_context_headers(|name, value| headers.push(format!("{name}: {value}")));
            assert_eq!(headers, Vec::<String>::new());
        });
    }

    /// Traces on, to an endpoint nobody listens on; the incoming context is unsampled, so
    /// nothing is recorded and nothing waits to be exported.
    #[tokio::test]
    async fn with_traces_a_span_continues_the_incoming_context_and_passes_it_on() {
        let traces = TraceExport {
            service_name: "test".into(),
            encoding: OtlpEncoding::Json,
            endpoint: Some("http://127.0.0.1:9/v1/traces".into()),
            timeout: Duration::from_secs(1),
            schedule_delay: None,
        };
        let (dispatch, telemetry) =
            subscriber(LogFormat::Json, EnvFilter::new("info"), Some(&traces))
                .expect("a subscriber");
        assert!(telemetry.exports_traces());
        let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("request");
            continue_trace(&span, |name| (name == TRACEPARENT).then_some(incoming));
            let _entered = span.enter();
            assert_eq!(
                trace_id(&span).as_deref(),
                Some("0af7651916cd43dd8448eb211c80319c")
            );
            let mut headers = Vec::new();
            trace_context_headers(|name, value| headers.push((name.to_owned(), value.to_owned())));
            assert_eq!(headers.len(), 1, "{headers:?}");
            let (name, value) = &headers[0];
            assert_eq!(name, TRACEPARENT);
            // Same trace, this span as the parent, still unsampled.
            assert!(
                value.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
                "{value}"
            );
            assert!(!value.contains("b7ad6b7169203331"), "{value}");
            assert!(value.ends_with("-00"), "{value}");
        });
        telemetry.shutdown().await;
    }

    #[test]
    fn server_spans_are_named_after_their_route() {
        let mut span = SpanData {
            span_context: opentelemetry::trace::SpanContext::empty_context(),
            parent_span_id: opentelemetry::trace::SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: REQUEST_SPAN.into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            end_time: std::time::SystemTime::UNIX_EPOCH,
            attributes: vec![KeyValue::new("route", "GET /v1/posts/{post_id}")],
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        };
        let mut unmatched = span.clone();
        name_span(&mut span);
        assert_eq!(span.name, "GET /v1/posts/{post_id}");
        assert_eq!(span.span_kind, SpanKind::Server);
        assert!(
            span.attributes
                .contains(&KeyValue::new("http.route", "/v1/posts/{post_id}"))
        );
        assert!(
            span.attributes
                .contains(&KeyValue::new("http.request.method", "GET"))
        );
        unmatched.attributes = vec![KeyValue::new("route", "GET unmatched")];
        name_span(&mut unmatched);
        assert_eq!(unmatched.name, "GET");
    }
}
