//! [`Recorder`]: where every finished request lands — per operation, a latency histogram, success
//! and failure counts for the whole measured run, the same for the current second, and the
//! closed seconds as a time series.
//!
//! One mutex around all of it: a record is a few additions under an uncontended lock, far cheaper
//! than the request it describes, and it keeps the per-second cut exact (a request is in exactly
//! one second).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::operation::Operation;

/// Latencies are kept in microseconds, up to an hour, with three significant digits.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("constant bounds are valid")
}

/// A latency as the histograms keep it: whole microseconds, at least 1.
pub fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Why a request counts as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// An answer with a status that is not a success for its operation.
    Status(u16),
    /// A success status whose body is not what the contract promises (a 202 without its ids).
    BadAnswer,
    /// No answer: cannot connect, connection reset, malformed HTTP.
    Transport,
    /// No answer within `--timeout`.
    Timeout,
}

impl Failure {
    /// The key in the report: the status code, `transport` or `timeout`.
    pub fn key(self) -> String {
        match self {
            Failure::Status(status) => status.to_string(),
            Failure::BadAnswer => "bad_answer".to_owned(),
            Failure::Transport => "transport".to_owned(),
            Failure::Timeout => "timeout".to_owned(),
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failed(Failure),
}

impl Outcome {
    /// Answers have a latency; requests that got none do not.
    fn answered(self) -> bool {
        !matches!(self, Outcome::Failed(Failure::Transport | Failure::Timeout))
    }
}

/// One operation over the whole measured run.
#[derive(Debug, Clone)]
pub struct OperationTotals {
    pub successes: u64,
    pub failures: BTreeMap<Failure, u64>,
    /// Latency of every answered request, errors included (a 503 after a 5 s wait is a latency
    /// a client lives through).
    pub latency: Histogram<u64>,
}

impl OperationTotals {
    fn new() -> OperationTotals {
        OperationTotals {
            successes: 0,
            failures: BTreeMap::new(),
            latency: new_histogram(),
        }
    }

    pub fn errors(&self) -> u64 {
        self.failures.values().sum()
    }

    pub fn count(&self) -> u64 {
        self.successes + self.errors()
    }

    /// Adds another's counts into this one (the report's read and write totals).
    pub fn absorb(&mut self, other: &OperationTotals) {
        self.successes += other.successes;
        for (failure, count) in &other.failures {
            *self.failures.entry(*failure).or_default() += count;
        }
        // Both use the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }

    pub fn empty() -> OperationTotals {
        OperationTotals::new()
    }
}

/// One operation within one second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IntervalSample {
    pub requests: u64,
    pub errors: u64,
    /// p99 of the answered requests, in microseconds; `None` when nothing was answered.
    pub p99_us: Option<u64>,
}

/// One closed second (or the shorter last interval) of the measured run.
#[derive(Debug, Clone)]
pub struct Second {
    /// End of the interval, in seconds since measuring started.
    pub end_s: f64,
    /// Its length in seconds (1 but for the last).
    pub length_s: f64,
    pub operations: [IntervalSample; Operation::COUNT],
}

/// What the progress line shows after each second.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub second: [IntervalSample; Operation::COUNT],
    /// Errors since measuring started (or within the second, while warming up).
    pub errors: u64,
    /// p99 so far of reads, writes and visibility lag, in microseconds.
    pub p99_reads_us: Option<u64>,
    pub p99_writes_us: Option<u64>,
    pub p99_lag_us: Option<u64>,
}

struct Interval {
    requests: u64,
    errors: u64,
    latency: Histogram<u64>,
}

impl Interval {
    fn new() -> Interval {
        Interval {
            requests: 0,
            errors: 0,
            latency: new_histogram(),
        }
    }

    fn sample(&self) -> IntervalSample {
        IntervalSample {
            requests: self.requests,
            errors: self.errors,
            p99_us: (!self.latency.is_empty()).then(|| self.latency.value_at_quantile(0.99)),
        }
    }

    fn reset(&mut self) {
        self.requests = 0;
        self.errors = 0;
        self.latency.reset();
    }
}

struct State {
    totals: Vec<OperationTotals>,
    interval: Vec<Interval>,
    interval_start: Instant,
    series: Vec<Second>,
    /// Set once the load has ended: later answers (lag probes still waiting) count in the
    /// totals only, so that a last, stretched interval does not show as a drop in throughput.
    series_closed: bool,
}

/// Shared by every task of a run. Requests that started before `measure_start` (the warm-up) go
/// into the progress line only.
pub struct Recorder {
    measure_start: Instant,
    state: Mutex<State>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("measure_start", &self.measure_start)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    pub fn new(measure_start: Instant) -> Recorder {
        let now = Instant::now();
        Recorder {
            measure_start,
            state: Mutex::new(State {
                totals: Vec::from(Operation::ALL.map(|_| OperationTotals::new())),
                interval: Vec::from(Operation::ALL.map(|_| Interval::new())),
                // With no warm-up, the first second starts exactly when measuring does.
                interval_start: if now >= measure_start {
                    measure_start
                } else {
                    now
                },
                series: Vec::new(),
                series_closed: false,
            }),
        }
    }

    pub fn measure_start(&self) -> Instant {
        self.measure_start
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only counters behind: still worth reporting.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a finished request. `started` decides whether it is measured (the intended send
    /// time in an open loop, the send time in a closed one); `latency` is what the report shows.
    pub fn record(&self, op: Operation, started: Instant, latency: Duration, outcome: Outcome) {
        let measured = started >= self.measure_start;
        let latency_us = micros(latency);
        // During the warm-up the current second holds everything, for the progress line; after
        // it, exactly the measured requests, so the seconds add up to the totals.
        let now = Instant::now();
        let warming_up = now < self.measure_start;
        let mut state = self.lock();
        if !warming_up {
            self.roll_into_measuring(&mut state);
        }
        if measured || warming_up {
            let interval = &mut state.interval[op.index()];
            interval.requests += 1;
            if let Outcome::Failed(_) = outcome {
                interval.errors += 1;
            }
            if outcome.answered() {
                interval.latency.saturating_record(latency_us);
            }
        }
        if measured {
            let totals = &mut state.totals[op.index()];
            match outcome {
                Outcome::Success => totals.successes += 1,
                Outcome::Failed(failure) => *totals.failures.entry(failure).or_default() += 1,
            }
            if outcome.answered() {
                totals.latency.saturating_record(latency_us);
            }
        }
    }

    /// Closes the current interval at `now`: returns what the progress line shows and, once
    /// measuring, appends the interval to the time series. An empty interval is appended too,
    /// so the series has no holes.
    pub fn close_interval(&self, now: Instant) -> Snapshot {
        let mut state = self.lock();
        let second: [IntervalSample; Operation::COUNT] =
            std::array::from_fn(|i| state.interval[i].sample());
        let measuring = state.interval_start >= self.measure_start;
        if measuring && !state.series_closed {
            let end_s = now
                .saturating_duration_since(self.measure_start)
                .as_secs_f64();
            let length_s = now
                .saturating_duration_since(state.interval_start)
                .as_secs_f64();
            state.series.push(Second {
                end_s,
                length_s,
                operations: second,
            });
        }
        for interval in &mut state.interval {
            interval.reset();
        }
        state.interval_start = now;

        let p99_of = |side| {
            let mut merged = new_histogram();
            for op in Operation::ALL.into_iter().filter(|op| op.side() == side) {
                let _ = merged.add(&state.totals[op.index()].latency);
            }
            (!merged.is_empty()).then(|| merged.value_at_quantile(0.99))
        };
        let errors = if measuring {
            state.totals.iter().map(OperationTotals::errors).sum()
        } else {
            second.iter().map(|s| s.errors).sum()
        };
        Snapshot {
            second,
            errors,
            p99_reads_us: p99_of(crate::operation::Side::Read),
            p99_writes_us: p99_of(crate::operation::Side::Write),
            p99_lag_us: p99_of(crate::operation::Side::Lag),
        }
    }

    /// Ends the warm-up's last interval, whichever comes first after it: this call (the
    /// progress ticker's, at the end of the warm-up) or the first record.
    pub fn begin_measuring(&self) {
        let mut state = self.lock();
        self.roll_into_measuring(&mut state);
    }

    fn roll_into_measuring(&self, state: &mut State) {
        if state.interval_start < self.measure_start {
            for interval in &mut state.interval {
                interval.reset();
            }
            state.interval_start = self.measure_start;
        }
    }

    /// Closes the last interval at `now`, like [`Recorder::close_interval`], and the time series
    /// with it.
    pub fn close_series(&self, now: Instant) -> Snapshot {
        let snapshot = self.close_interval(now);
        self.lock().series_closed = true;
        snapshot
    }

    /// The measured totals and the time series, once every task has stopped.
    pub fn finish(&self) -> (Vec<OperationTotals>, Vec<Second>) {
        let state = self.lock();
        (state.totals.clone(), state.series.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_requests_are_not_measured() {
        let start = Instant::now();
        let measure_start = start + Duration::from_millis(50);
        let recorder = Recorder::new(measure_start);
        recorder.record(
            Operation::ReadPost,
            start,
            Duration::from_millis(1),
            Outcome::Success,
        );
        recorder.record(
            Operation::ReadPost,
            measure_start + Duration::from_millis(1),
            Duration::from_millis(2),
            Outcome::Success,
        );
        recorder.record(
            Operation::CreatePost,
            measure_start,
            Duration::from_millis(3),
            Outcome::Failed(Failure::Status(503)),
        );
        recorder.record(
            Operation::CreatePost,
            measure_start,
            Duration::from_secs(10),
            Outcome::Failed(Failure::Timeout),
        );
        let (totals, _) = recorder.finish();
        let reads = &totals[Operation::ReadPost.index()];
        assert_eq!(reads.count(), 1);
        assert_eq!(reads.latency.len(), 1);
        let creates = &totals[Operation::CreatePost.index()];
        assert_eq!(creates.count(), 2);
        assert_eq!(creates.errors(), 2);
        // The timeout has no answer, so no latency.
        assert_eq!(creates.latency.len(), 1);
        assert_eq!(
            creates.failures.keys().map(|f| f.key()).collect::<Vec<_>>(),
            ["503", "timeout"]
        );
    }

    #[test]
    fn closed_intervals_form_the_series_once_measuring() {
        let measure_start = Instant::now();
        let recorder = Recorder::new(measure_start);
        for _ in 0..3 {
            recorder.record(
                Operation::ReadUser,
                measure_start,
                Duration::from_micros(700),
                Outcome::Success,
            );
        }
        let snapshot = recorder.close_interval(measure_start + Duration::from_secs(1));
        assert_eq!(snapshot.second[Operation::ReadUser.index()].requests, 3);
        assert!(
            snapshot
                .p99_reads_us
                .is_some_and(|p| (699..=701).contains(&p))
        );
        assert_eq!(snapshot.p99_writes_us, None);
        recorder.close_series(measure_start + Duration::from_secs(2));
        // A lag probe answering after the load ended counts in the totals only.
        recorder.record(
            Operation::VisibilityLag,
            measure_start,
            Duration::from_millis(300),
            Outcome::Success,
        );
        recorder.close_interval(measure_start + Duration::from_secs(3));
        let (totals, series) = recorder.finish();
        assert_eq!(totals[Operation::VisibilityLag.index()].count(), 1);
        assert_eq!(series.len(), 2);
        assert_eq!(
            series[0].operations[Operation::ReadUser.index()].requests,
            3
        );
        assert_eq!(
            series[1].operations[Operation::ReadUser.index()].requests,
            0
        );
        assert!((series[1].end_s - 2.0).abs() < 1e-9);
        assert!((series[1].length_s - 1.0).abs() < 1e-9);
    }
}
