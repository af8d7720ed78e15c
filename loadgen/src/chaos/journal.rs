//! [`Journal`]: what the run saw go wrong, shared by every task. Each request that did not
//! succeed is one [`FailedRequest`] (retried attempts included, one entry per attempt), and
//! each violation the checks find is counted, with the first few described for people.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Failure kinds a client must expect while a dependency is down: it retries them. Every other
/// kind (500, 502, 429, a 503 without `Retry-After`, a malformed 202...) is unexpected.
pub const RETRIED_503: &str = "503";
pub const CONNECTION_ERROR: &str = "connection_error";
pub const TIMEOUT: &str = "timeout";
pub const UNAVAILABLE_WITHOUT_RETRY_AFTER: &str = "503_without_retry_after";
pub const BAD_ANSWER: &str = "bad_answer";

/// Violations described in the report, at most this many.
const EXAMPLES: usize = 50;

/// When a request happened relative to the load: fault windows count the load's requests only;
/// the checker's own reads afterwards are reported apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Load,
    Verify,
}

/// One request that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRequest {
    /// When its attempt ended (the answer, the error or the timeout), unix epoch ms.
    pub ended_at_ms: u64,
    pub operation: &'static str,
    /// A status code, or one of the kinds above.
    pub kind: String,
    pub phase: Phase,
}

impl FailedRequest {
    pub fn expected(&self) -> bool {
        [RETRIED_503, CONNECTION_ERROR, TIMEOUT].contains(&self.kind.as_str())
    }

    pub fn no_answer(&self) -> bool {
        self.kind == CONNECTION_ERROR || self.kind == TIMEOUT
    }
}

/// Counters and logs of one chaos run.
#[derive(Debug, Default)]
pub struct Journal {
    failed: Mutex<Vec<FailedRequest>>,
    examples: Mutex<Vec<String>>,
    pub writes_attempted: AtomicU64,
    pub writes_acknowledged: AtomicU64,
    /// Writes that got no 202: given up after retrying, or answered with an unexpected status.
    pub writes_unacknowledged: AtomicU64,
    /// Operations (writes or reads) that retried for the whole budget without an answer.
    pub gave_up: AtomicU64,
    pub reads_checked: AtomicU64,
    pub stale_reads: AtomicU64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

impl Journal {
    pub fn failed(&self, operation: &'static str, kind: impl Into<String>, phase: Phase) {
        let entry = FailedRequest {
            ended_at_ms: now_ms(),
            operation,
            kind: kind.into(),
            phase,
        };
        if !entry.expected() {
            self.example(format!(
                "{operation}: unexpected answer {} ({phase:?})",
                entry.kind
            ));
        }
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    }

    /// Describes a violation, if fewer than [`EXAMPLES`] were described yet.
    pub fn example(&self, text: String) {
        let mut examples = self.examples.lock().unwrap_or_else(PoisonError::into_inner);
        if examples.len() < EXAMPLES {
            examples.push(text);
        }
    }

    pub fn stale(&self, text: String) {
        self.stale_reads.fetch_add(1, Ordering::Relaxed);
        self.example(format!("stale read: {text}"));
    }

    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed_requests(&self) -> Vec<FailedRequest> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn failed_so_far(&self) -> usize {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn examples(&self) -> Vec<String> {
        self.examples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
