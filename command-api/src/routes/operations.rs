//! The routes for operators rather than clients, besides those every service has: `GET /readyz`.

use axum::extract::State;

use crate::error::ApiError;
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: the broker answers for the topic.", content_type = "text/plain", body = String),
        (status = 503, description = "The event log is unreachable."),
    )
)]
/// `GET /readyz`: 200 when the broker answers for the topic, else 503.
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    state.appender.check_ready().await?;
    Ok("ready")
}
