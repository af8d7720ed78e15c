//! The write pipeline, the same for all six writes once a handler has checked its request into
//! a [`Write`] and an event: the write's ids, its envelope, admission under the bound on writes
//! in flight, the append, and the 202 once the broker has the event.

use std::sync::Arc;

use chrono::Utc;
use events::Event;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::accepted::Accepted;
use crate::command::envelope::{command_ids, envelope};
use crate::command::write::Write;
use crate::error::ApiError;
use crate::extract::Caller;
use crate::state::AppState;

/// Gives the write its ids, wraps it in an envelope and appends it; 202 once the broker has it.
///
/// `caller` is the authenticated user (none for a sign-up). An `Idempotency-Key` is scoped to
/// the caller: the write's scope is the path's user, which the auth layer made sure is the
/// caller; this checks it once more, so that a route wired without the layer cannot share
/// another user's keys.
pub async fn accept(
    state: &AppState,
    caller: Option<Caller>,
    write: Write,
    event: Event,
    idempotency_key: Option<String>,
    expected_version: Option<i64>,
) -> Result<Accepted, ApiError> {
    let scope = write.idempotency_scope();
    if caller.map_or(Uuid::nil(), |Caller(user)| user) != scope {
        return Err(ApiError::Internal(format!(
            "{} {}: the idempotency scope is not the caller",
            write.method(),
            write.route()
        )));
    }
    let ids = command_ids(write, &event, idempotency_key.as_deref(), expected_version);
    // On the request's span, so that every later line of this write names its command.
    tracing::Span::current().record("command_id", tracing::field::display(ids.command_id));
    let envelope = envelope(
        write,
        event,
        ids,
        idempotency_key,
        expected_version,
        Utc::now(),
    );
    // After every check of the request, so that a bad request gets its 4xx under load too;
    // before the append, so that a shed write appends nothing.
    let permit = state.in_flight.try_admit()?;
    // The append runs in a task of its own that holds the permit: if the client goes away,
    // axum drops this future, but the record is in the producer's queue all the same and
    // must count against the bound until its delivery report (bounded by the append timeout)
    // resolves it. The append's span is a child of the request's: its lines carry the
    // request's ids, and the record carries its trace context to the projector.
    let appending = {
        let (appender, metrics) = (Arc::clone(&state.appender), state.metrics.clone());
        let span = tracing::info_span!(service_kit::telemetry::APPEND_SPAN);
        tokio::spawn(async move {
            let appended = appender.append(&envelope).instrument(span).await;
            drop(permit);
            let outcome = match &appended {
                Ok(_) => "appended",
                Err(error) => error.outcome(),
            };
            metrics.count(
                "command_appends_total",
                "Events the command API tried to append, by event type and outcome.",
                vec![
                    ("type", envelope.type_name().to_owned()),
                    ("outcome", outcome.to_owned()),
                ],
                1,
            );
            (envelope, appended)
        })
    };
    let (envelope, appended) = appending.await.map_err(|join_error| {
        ApiError::Internal(format!("the append task failed: {join_error}"))
    })?;
    let token = appended?;
    tracing::info!(
        command_id = %envelope.command_id,
        aggregate_id = %envelope.aggregate_id,
        event_type = envelope.type_name(),
        %token,
        "command accepted"
    );
    Ok(Accepted::new(&envelope, token))
}
