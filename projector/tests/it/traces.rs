//! Traces: one write's trace from its HTTP request through its Kafka record into the
//! projector's decision, exported over OTLP/HTTP (JSON) to a receiver of the test's own.
//!
//! The projector is a child process that the standard variables alone turn traces on for, as
//! an operator would. The command API runs in this process (the projector's tests cannot start
//! its binary) under a subscriber with traces installed for this thread alone: the test runs on
//! a current-thread runtime, so every task of the in-process services is polled under it. The
//! query API, in-process too, shares that subscriber (and so its service name).

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use service_kit::telemetry::{self, LogFormat, OtlpEncoding, TraceExport};
use test_support::{TestDb, http};
use tokio::sync::watch;
use uuid::Uuid;

use crate::stack::{ChildProjector, Stack};

/// How long spans may take to arrive: a batch delay of 100 ms, and a projector that may still
/// be joining its group when the write is appended.
const SPANS_DEADLINE: Duration = Duration::from_secs(60);

/// A span as the receiver got it, with what the assertions look at.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: i64,
    /// String and integer attributes, as text.
    attributes: HashMap<String, String>,
    /// The span ids this span links to.
    links: Vec<String>,
}

/// OTLP's span kinds as JSON numbers them.
const SERVER: i64 = 2;
const PRODUCER: i64 = 4;
const CONSUMER: i64 = 5;

/// An OTLP/HTTP receiver on an ephemeral port: every span posted to `/v1/traces`, as a watch
/// that the test waits on.
struct Receiver {
    url: String,
    spans: watch::Receiver<Vec<ReceivedSpan>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let (sender, spans) = watch::channel(Vec::new());
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(sender);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("bound"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, spans }
    }

    /// Waits until the spans received satisfy `done`, then returns them all.
    async fn wait_for(
        &mut self,
        what: &str,
        done: impl FnMut(&Vec<ReceivedSpan>) -> bool,
    ) -> Vec<ReceivedSpan> {
        let waited = tokio::time::timeout(SPANS_DEADLINE, self.spans.wait_for(done))
            .await
            .map(|spans| spans.map(|spans| spans.clone()));
        match waited {
            Ok(Ok(spans)) => spans,
            Ok(Err(_)) => panic!("the receiver stopped before {what}"),
            Err(_) => panic!(
                "no {what} within {SPANS_DEADLINE:?}; received: {:#?}",
                *self.spans.borrow()
            ),
        }
    }
}

async fn receive(
    State(spans): State<watch::Sender<Vec<ReceivedSpan>>>,
    body: String,
) -> (StatusCode, [(&'static str, &'static str); 1], &'static str) {
    let Ok(message) = serde_json::from_str::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            [("content-type", "text/plain")],
            "not JSON",
        );
    };
    let received = spans_of(&message);
    spans.send_modify(|spans| spans.extend(received));
    (StatusCode::OK, [("content-type", "application/json")], "{}")
}

/// The spans of an `ExportTraceServiceRequest` in OTLP's JSON encoding.
fn spans_of(message: &Value) -> Vec<ReceivedSpan> {
    let text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let attributes = |list: &Value| -> HashMap<String, String> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|attribute| {
                let value = &attribute["value"];
                let value = value.get("stringValue").or_else(|| value.get("intValue"))?;
                Some((text(&attribute["key"]), text(value)))
            })
            .collect()
    };
    let mut spans = Vec::new();
    for resource in message["resourceSpans"].as_array().into_iter().flatten() {
        let service = attributes(&resource["resource"]["attributes"])
            .remove("service.name")
            .unwrap_or_default();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: text(&span["traceId"]),
                    span_id: text(&span["spanId"]),
                    parent_span_id: span["parentSpanId"].as_str().unwrap_or("").to_owned(),
                    name: text(&span["name"]),
                    kind: span["kind"].as_i64().unwrap_or(0),
                    attributes: attributes(&span["attributes"]),
                    links: span["links"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|link| text(&link["spanId"]))
                        .collect(),
                });
            }
        }
    }
    spans
}

/// A W3C `traceparent` of a new trace, sampled, and its trace and parent span ids.
fn new_traceparent() -> (String, String, String) {
    let trace_id = Uuid::new_v4().simple().to_string();
    let parent_id = Uuid::new_v4().simple().to_string()[..16].to_owned();
    (format!("00-{trace_id}-{parent_id}-01"), trace_id, parent_id)
}

/// `span` and its ancestors among `spans`, nearest first.
fn ancestry<'a>(spans: &'a [ReceivedSpan], span: &'a ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let mut chain = vec![span];
    while let Some(parent) = chain.last().and_then(|child| {
        spans
            .iter()
            .find(|s| s.trace_id == child.trace_id && s.span_id == child.parent_span_id)
    }) {
        chain.push(parent);
    }
    chain
}

#[tokio::test]
async fn one_trace_shows_a_write_from_its_request_to_its_decision() {
    let mut receiver = Receiver::start().await;
    let traces = TraceExport {
        service_name: "command-api".into(),
        encoding: OtlpEncoding::Json,
        endpoint: Some(format!("{}/v1/traces", receiver.url)),
        timeout: Duration::from_secs(5),
        schedule_delay: Some(Duration::from_millis(100)),
    };
    let (dispatch, telemetry) = telemetry::subscriber(
        LogFormat::Text,
        telemetry::EnvFilter::new("info"),
        Some(&traces),
    )
    .expect("a subscriber with traces");
    let in_process = tracing::dispatcher::set_default(&dispatch);

    let stack = Stack::start_on(test_support::kafka_brokers(), TestDb::create().await, false).await;
    let _projector = ChildProjector::spawn_with(
        &stack.brokers,
        &stack.topic,
        &format!("{}-g", stack.topic),
        &stack.db.url,
        "traced",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;

    let (traceparent, trace_id, caller_span) = new_traceparent();
    let accepted = stack
        .write(
            Method::POST,
            "/v1/users",
            Some(serde_json::json!({"display_name": "Ada"})),
            &[("traceparent", &traceparent)],
        )
        .await;

    // The projector's span of the event, once its ancestors up to the caller's span are in
    // too (each service exports on its own schedule).
    let is_decision = |s: &ReceivedSpan| s.trace_id == trace_id && s.service == "projector";
    let reaches_the_caller = |spans: &[ReceivedSpan], span: &ReceivedSpan| {
        ancestry(spans, span)
            .last()
            .is_some_and(|root| root.parent_span_id == caller_span)
    };
    let spans = receiver
        .wait_for("projector span whose parents lead to the caller", |spans| {
            spans
                .iter()
                .any(|s| is_decision(s) && reaches_the_caller(spans, s))
        })
        .await;
    let decision = spans.iter().find(|s| is_decision(s)).expect("found");
    assert_eq!(decision.name, "project", "{decision:#?}");
    assert_eq!(decision.kind, CONSUMER, "{decision:#?}");
    assert_eq!(
        decision.attributes.get("command_id"),
        Some(&accepted.command_id),
        "{decision:#?}"
    );
    assert_eq!(
        decision.attributes.get("decision").map(String::as_str),
        Some("applied"),
        "{decision:#?}"
    );

    // Its parents lead through the command API's spans to the caller's.
    let chain = ancestry(&spans, decision);
    let names: Vec<(&str, &str, i64)> = chain
        .iter()
        .map(|s| (s.service.as_str(), s.name.as_str(), s.kind))
        .collect();
    assert_eq!(
        names,
        [
            ("projector", "project", CONSUMER),
            ("command-api", "append", PRODUCER),
            ("command-api", "POST /v1/users", SERVER),
        ],
        "{chain:#?}"
    );
    let request = chain[2];
    assert_eq!(request.parent_span_id, caller_span, "{request:#?}");
    assert_eq!(
        request.attributes.get("command_id"),
        Some(&accepted.command_id)
    );
    assert_eq!(
        request
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("202"),
        "{request:#?}"
    );

    let batch = decision.links.first().expect("a link to the batch").clone();
    let spans = receiver
        .wait_for("batch span the decision links to", |spans| {
            spans.iter().any(|s| s.span_id == batch)
        })
        .await;
    let batch = spans.iter().find(|s| s.span_id == batch).expect("found");
    assert_eq!(
        (batch.service.as_str(), batch.name.as_str()),
        ("projector", "batch"),
        "{batch:#?}"
    );

    // A read continues its caller's trace too.
    let (traceparent, read_trace, read_caller) = new_traceparent();
    let read = http()
        .get(format!(
            "{}/v1/users/{}",
            stack.query.url, accepted.aggregate_id
        ))
        .header("traceparent", &traceparent)
        .header("Consistency-Token", &accepted.token)
        .send()
        .await
        .expect("a read");
    assert_eq!(read.status(), StatusCode::OK);
    let spans = receiver
        .wait_for("the read's span", |spans| {
            spans.iter().any(|s| s.trace_id == read_trace)
        })
        .await;
    let read = spans
        .iter()
        .find(|s| s.trace_id == read_trace)
        .expect("found");
    assert_eq!(
        (read.name.as_str(), read.kind, read.parent_span_id.as_str()),
        ("GET /v1/users/{user_id}", SERVER, read_caller.as_str()),
        "{read:#?}"
    );

    drop(in_process);
    telemetry.shutdown().await;
}
