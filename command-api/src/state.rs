//! [`AppState`]: what every handler and route layer shares.

use std::sync::Arc;

use service_kit::metrics::Metrics;

use crate::appender::Appender;
use crate::auth::Tokens;
use crate::backpressure::InFlightWrites;
use crate::client_ip::TrustedProxies;
use crate::ratelimit::WriteLimits;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub appender: Arc<Appender>,
    pub in_flight: Arc<InFlightWrites>,
    pub write_limits: Arc<WriteLimits>,
    /// Whose `X-Forwarded-For` names a sign-up's client.
    pub trusted_proxies: Arc<TrustedProxies>,
    pub tokens: Arc<Tokens>,
    pub metrics: Metrics,
}
