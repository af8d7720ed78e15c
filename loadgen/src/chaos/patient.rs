//! [`Patient`]: one request sent as a careful client sends it through an outage. A 503 is
//! retried after its `Retry-After`, a connection error or a timeout after a short backoff, with
//! the same request (so a write keeps its idempotency key and body) until a deadline. Every
//! attempt that failed is logged in the [`Journal`]; any other answer goes back to the caller,
//! which judges it.

use std::time::{Duration, Instant};

use hyper::StatusCode;
use hyper::header::RETRY_AFTER;

use crate::client::{Answer, Connection, RequestBuilder, TransportError};

use super::journal::{
    CONNECTION_ERROR, Journal, Phase, RETRIED_503, TIMEOUT, UNAVAILABLE_WITHOUT_RETRY_AFTER,
};

/// The first pause after a connection error or timeout; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What a 503 without a usable `Retry-After` waits (it is also logged as unexpected).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How a patient request ended.
#[derive(Debug)]
pub enum Sent {
    /// An answer that is not a 503: the caller judges it.
    Answer(Answer),
    /// Still failing at the deadline.
    GaveUp,
    /// Nothing listens at the address, and the caller asked to be told at once.
    Unreachable(TransportError),
}

/// Where and how long to retry.
#[derive(Debug, Clone, Copy)]
pub struct Patient<'a> {
    pub journal: &'a Journal,
    pub operation: &'static str,
    pub phase: Phase,
    pub timeout: Duration,
    pub deadline: Instant,
    /// Report a refused connection instead of retrying it: used before the load starts, where
    /// it means a wrong URL rather than an outage.
    pub refused_is_fatal: bool,
}

impl Patient<'_> {
    /// Sends until an answer that is not a 503, or the deadline. The first attempt is always
    /// made, even past the deadline.
    pub async fn send(&self, connection: &mut Connection, request: &RequestBuilder) -> Sent {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let pause = match connection.send(request.clone(), self.timeout).await {
                Ok(answer) if answer.status == StatusCode::SERVICE_UNAVAILABLE => {
                    match retry_after(&answer) {
                        Some(wait) => {
                            self.journal.failed(self.operation, RETRIED_503, self.phase);
                            wait
                        }
                        None => {
                            self.journal.failed(
                                self.operation,
                                UNAVAILABLE_WITHOUT_RETRY_AFTER,
                                self.phase,
                            );
                            DEFAULT_RETRY_AFTER
                        }
                    }
                }
                Ok(answer) => return Sent::Answer(answer),
                Err(TransportError::Connect(error)) if self.refused_is_fatal => {
                    return Sent::Unreachable(TransportError::Connect(error));
                }
                Err(error) => {
                    let kind = match error {
                        TransportError::Timeout => TIMEOUT,
                        TransportError::Connect(_) | TransportError::Http(_) => CONNECTION_ERROR,
                    };
                    self.journal.failed(self.operation, kind, self.phase);
                    let pause = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    pause
                }
            };
            if Instant::now() + pause > self.deadline {
                return Sent::GaveUp;
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// The wait a 503 asks for: `Retry-After` in seconds (what the services send). An HTTP date
/// is honoured as a present header with the default wait; anything else counts as missing.
fn retry_after(answer: &Answer) -> Option<Duration> {
    let value = answer.headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    // An IMF-fixdate such as `Sun, 06 Nov 1994 08:49:37 GMT`.
    (value.len() == 29 && value.ends_with(" GMT")).then_some(DEFAULT_RETRY_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use hyper::header::{HeaderMap, HeaderValue};

    fn unavailable(retry: Option<&'static str>) -> Answer {
        let mut headers = HeaderMap::new();
        if let Some(value) = retry {
            headers.insert(RETRY_AFTER, HeaderValue::from_static(value));
        }
        Answer {
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers,
            body: Bytes::new(),
        }
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_a_date() {
        assert_eq!(
            retry_after(&unavailable(Some("3"))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&unavailable(Some("Sun, 06 Nov 1994 08:49:37 GMT"))),
            Some(DEFAULT_RETRY_AFTER)
        );
        assert_eq!(retry_after(&unavailable(Some("soon"))), None);
        assert_eq!(retry_after(&unavailable(None)), None);
    }
}
