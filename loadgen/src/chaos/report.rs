//! [`ChaosReport`]: the verdict of a chaos run, as JSON (field names documented in
//! [`crate::chaos`]) and as a table for people ([`ChaosReport::table`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::config::ChaosConfig;

use super::journal::FailedRequest;
use super::timeline::{Window, window_of};
use super::verify::Findings;

/// The run's settings, as the report repeats them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChaosParameters {
    pub command_url: String,
    pub query_url: String,
    pub writers: u32,
    pub write_rate: f64,
    pub reads_per_write: u32,
    pub settle_timeout_s: f64,
    pub retry_for_s: f64,
    pub timeout_s: f64,
    pub recovery_tail_s: f64,
    pub timeline: Option<String>,
}

impl ChaosParameters {
    pub fn new(config: &ChaosConfig) -> ChaosParameters {
        ChaosParameters {
            command_url: config.command_url.clone(),
            query_url: config.query_url.clone(),
            writers: config.writers,
            write_rate: config.write_rate,
            reads_per_write: config.reads_per_write,
            settle_timeout_s: config.settle_timeout.as_secs_f64(),
            retry_for_s: config.retry_for.as_secs_f64(),
            timeout_s: config.timeout.as_secs_f64(),
            recovery_tail_s: config.recovery_tail.as_secs_f64(),
            timeline: config
                .timeline
                .as_ref()
                .map(|path| path.display().to_string()),
        }
    }
}

/// Failed requests of a span, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCounts {
    pub failed_requests: u64,
    pub failed_by_status: BTreeMap<String, u64>,
}

impl FailureCounts {
    fn add(&mut self, failure: &FailedRequest) {
        self.failed_requests += 1;
        *self
            .failed_by_status
            .entry(failure.kind.clone())
            .or_default() += 1;
    }
}

/// One fault window: from the fault's kill to the next kill (the last to the end of the load).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowReport {
    pub fault: String,
    pub killed_at_ms: u64,
    pub ended_at_ms: u64,
    /// Kill to `ready` in the timeline; `None` when the timeline has no `ready` in the window.
    pub down_ms: Option<u64>,
    pub failed_requests: u64,
    pub failed_by_status: BTreeMap<String, u64>,
    /// Kill to the end of the window's last failed request; 0 when none failed.
    pub recovery_ms: u64,
    /// No request failed in the window's last `recovery_tail`.
    pub recovered: bool,
}

/// Everything a chaos run reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChaosReport {
    pub passed: bool,
    pub failed_checks: Vec<String>,
    pub parameters: ChaosParameters,
    pub started_at_ms: u64,
    pub load_ended_at_ms: u64,
    pub duration_s: f64,
    pub users: u64,
    pub writes_attempted: u64,
    pub writes_unacknowledged: u64,
    /// The checks' counts, as fields of the report itself (`acknowledged`, `lost`, ...).
    #[serde(flatten)]
    pub findings: Findings,
    pub reads_checked: u64,
    pub stale_reads: u64,
    pub gave_up: u64,
    pub unexpected_errors: BTreeMap<String, u64>,
    pub connection_errors: u64,
    pub connection_errors_outside_windows: u64,
    pub failed_requests: u64,
    pub before_faults: FailureCounts,
    pub windows: Vec<WindowReport>,
    pub verification_failed_requests: FailureCounts,
    pub timeline_lines_ignored: u64,
    pub examples: Vec<String>,
}

/// Cuts the load's failed requests into the fault windows.
pub fn windows_report(
    windows: &[Window],
    failures: &[FailedRequest],
    recovery_tail_ms: u64,
) -> (FailureCounts, Vec<WindowReport>) {
    let mut before = FailureCounts::default();
    let mut reports: Vec<WindowReport> = windows
        .iter()
        .map(|window| WindowReport {
            fault: window.fault.clone(),
            killed_at_ms: window.start_ms,
            ended_at_ms: window.end_ms,
            down_ms: window.ready_ms.map(|ready| ready - window.start_ms),
            failed_requests: 0,
            failed_by_status: BTreeMap::new(),
            recovery_ms: 0,
            recovered: true,
        })
        .collect();
    for failure in failures {
        let Some(i) = window_of(windows, failure.ended_at_ms) else {
            before.add(failure);
            continue;
        };
        let report = &mut reports[i];
        report.failed_requests += 1;
        *report
            .failed_by_status
            .entry(failure.kind.clone())
            .or_default() += 1;
        report.recovery_ms = report
            .recovery_ms
            .max(failure.ended_at_ms - report.killed_at_ms);
        // The last window also holds what failed while the load drained, past its end.
        let end = report.ended_at_ms.max(failure.ended_at_ms + 1);
        if failure.ended_at_ms + recovery_tail_ms >= end {
            report.recovered = false;
        }
    }
    (before, reports)
}

impl ChaosReport {
    /// Fills `passed` and `failed_checks` from the counts.
    pub fn judge(&mut self) {
        let mut failed = Vec::new();
        let mut check = |bad: bool, text: String| {
            if bad {
                failed.push(text);
            }
        };
        check(
            self.findings.acknowledged == 0,
            "no write was acknowledged".to_owned(),
        );
        check(
            self.findings.lost > 0,
            format!(
                "{} acknowledged commands were never decided (lost)",
                self.findings.lost
            ),
        );
        check(
            self.findings.duplicated > 0,
            format!(
                "{} commands have their effect more than once",
                self.findings.duplicated
            ),
        );
        check(
            self.findings.effects_missing > 0,
            format!(
                "{} applied effects are not visible",
                self.findings.effects_missing
            ),
        );
        check(
            self.findings.unverified > 0,
            format!(
                "{} resources could not be read to verify",
                self.findings.unverified
            ),
        );
        check(
            self.stale_reads > 0,
            format!("{} token reads showed older data", self.stale_reads),
        );
        check(
            self.gave_up > 0,
            format!("{} operations gave up after retrying", self.gave_up),
        );
        check(
            !self.unexpected_errors.is_empty(),
            format!("unexpected errors: {}", kinds(&self.unexpected_errors)),
        );
        check(
            self.connection_errors_outside_windows > 0,
            format!(
                "{} connection errors or timeouts outside every fault window",
                self.connection_errors_outside_windows
            ),
        );
        for window in self.windows.iter().filter(|w| !w.recovered) {
            check(
                true,
                format!(
                    "the {} window (killed at {}) still failed in its last {} s",
                    window.fault, window.killed_at_ms, self.parameters.recovery_tail_s
                ),
            );
        }
        self.passed = failed.is_empty();
        self.failed_checks = failed;
    }

    /// 0 when every check passed, 1 when one failed.
    pub fn exit_code(&self) -> u8 {
        if self.passed { 0 } else { 1 }
    }

    /// The report for people.
    pub fn table(&self) -> String {
        let p = &self.parameters;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "chaos run: {} writers at {} writes/s, {} reads per write, {:.1} s of load, {} users: {}",
            p.writers,
            p.write_rate,
            p.reads_per_write,
            self.duration_s,
            self.users,
            if self.passed { "PASSED" } else { "FAILED" }
        );
        let _ = writeln!(
            out,
            "writes attempted {}, acknowledged {} ({}), not acknowledged {}",
            self.writes_attempted,
            self.findings.acknowledged,
            kinds(&self.findings.acknowledged_by_kind),
            self.writes_unacknowledged
        );
        let _ = writeln!(
            out,
            "decisions: applied {}, rejected {} ({})",
            self.findings.applied,
            self.findings.rejected_by_reason.values().sum::<u64>(),
            kinds(&self.findings.rejected_by_reason)
        );
        let _ = writeln!(
            out,
            "lost {}, duplicated {}, effects missing {}, unverified {}",
            self.findings.lost,
            self.findings.duplicated,
            self.findings.effects_missing,
            self.findings.unverified
        );
        let _ = writeln!(
            out,
            "token reads checked {}, stale {}; operations that gave up {}",
            self.reads_checked, self.stale_reads, self.gave_up
        );
        let _ = writeln!(
            out,
            "failed requests {}: connection errors and timeouts {} ({} outside fault windows), unexpected {}",
            self.failed_requests,
            self.connection_errors,
            self.connection_errors_outside_windows,
            kinds(&self.unexpected_errors)
        );
        let _ = writeln!(
            out,
            "{:<14} {:>9} {:>7} {:>12} {:>10}  failed by status",
            "fault", "down ms", "failed", "recovery ms", "recovered"
        );
        let _ = writeln!(
            out,
            "{:<14} {:>9} {:>7} {:>12} {:>10}  {}",
            "(before)",
            "-",
            self.before_faults.failed_requests,
            "-",
            "-",
            kinds(&self.before_faults.failed_by_status)
        );
        for w in &self.windows {
            let _ = writeln!(
                out,
                "{:<14} {:>9} {:>7} {:>12} {:>10}  {}",
                w.fault,
                w.down_ms
                    .map_or_else(|| "-".to_owned(), |ms| ms.to_string()),
                w.failed_requests,
                w.recovery_ms,
                if w.recovered { "yes" } else { "NO" },
                kinds(&w.failed_by_status)
            );
        }
        if self.verification_failed_requests.failed_requests > 0 {
            let _ = writeln!(
                out,
                "the checks' own requests failed {} times: {}",
                self.verification_failed_requests.failed_requests,
                kinds(&self.verification_failed_requests.failed_by_status)
            );
        }
        if self.timeline_lines_ignored > 0 {
            let _ = writeln!(
                out,
                "{} lines of the timeline were not events and were ignored",
                self.timeline_lines_ignored
            );
        }
        for failed in &self.failed_checks {
            let _ = writeln!(out, "FAILED: {failed}");
        }
        if !self.examples.is_empty() {
            out.push_str("first problems seen:\n");
            for example in &self.examples {
                let _ = writeln!(out, "  {example}");
            }
        }
        out
    }
}

/// `a × 2, b × 1`, or `none`.
fn kinds(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts
        .iter()
        .map(|(kind, n)| format!("{kind} × {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::journal::Phase;

    fn failure(at: u64, kind: &str) -> FailedRequest {
        FailedRequest {
            ended_at_ms: at,
            operation: "publish_post",
            kind: kind.to_owned(),
            phase: Phase::Load,
        }
    }

    fn clean_report() -> ChaosReport {
        let parameters = ChaosParameters {
            command_url: "http://c".to_owned(),
            query_url: "http://q".to_owned(),
            writers: 1,
            write_rate: 1.0,
            reads_per_write: 0,
            settle_timeout_s: 1.0,
            retry_for_s: 1.0,
            timeout_s: 1.0,
            recovery_tail_s: 5.0,
            timeline: None,
        };
        ChaosReport {
            passed: false,
            failed_checks: Vec::new(),
            parameters,
            started_at_ms: 0,
            load_ended_at_ms: 0,
            duration_s: 0.0,
            users: 1,
            writes_attempted: 1,
            writes_unacknowledged: 0,
            findings: Findings {
                acknowledged: 1,
                applied: 1,
                ..Findings::default()
            },
            reads_checked: 0,
            stale_reads: 0,
            gave_up: 0,
            unexpected_errors: BTreeMap::new(),
            connection_errors: 0,
            connection_errors_outside_windows: 0,
            failed_requests: 0,
            before_faults: FailureCounts::default(),
            windows: Vec::new(),
            verification_failed_requests: FailureCounts::default(),
            timeline_lines_ignored: 0,
            examples: Vec::new(),
        }
    }

    #[test]
    fn each_broken_promise_fails_the_run_on_its_own() {
        let mut report = clean_report();
        report.judge();
        assert!(report.passed, "{:?}", report.failed_checks);
        assert_eq!(report.exit_code(), 0);
        let breaks: [fn(&mut ChaosReport); 11] = [
            |r| r.findings.acknowledged = 0,
            |r| r.findings.lost = 1,
            |r| r.findings.duplicated = 1,
            |r| r.findings.effects_missing = 1,
            |r| r.findings.unverified = 1,
            |r| r.stale_reads = 1,
            |r| r.gave_up = 1,
            |r| {
                r.unexpected_errors.insert("502".to_owned(), 1);
            },
            |r| r.connection_errors_outside_windows = 1,
            |r| {
                r.windows.push(WindowReport {
                    fault: "broker".to_owned(),
                    killed_at_ms: 1,
                    ended_at_ms: 2,
                    down_ms: None,
                    failed_requests: 1,
                    failed_by_status: BTreeMap::new(),
                    recovery_ms: 1,
                    recovered: false,
                });
            },
            // Connection errors inside a window and retried 503s are what outages look like.
            |r| {
                r.connection_errors = 3;
                r.failed_requests = 10;
                r.passed = true;
            },
        ];
        for (i, break_it) in breaks.iter().enumerate() {
            let mut report = clean_report();
            break_it(&mut report);
            report.judge();
            let tolerated = i == breaks.len() - 1;
            assert_eq!(
                report.passed, tolerated,
                "case {i}: {:?}",
                report.failed_checks
            );
            assert_eq!(report.failed_checks.is_empty(), tolerated, "case {i}");
            assert_eq!(report.exit_code(), u8::from(!tolerated));
        }
    }

    #[test]
    fn failures_land_in_their_window_and_a_failing_tail_is_not_recovered() {
        let windows = [
            Window {
                fault: "broker".to_owned(),
                start_ms: 10_000,
                end_ms: 30_000,
                ready_ms: Some(14_000),
            },
            Window {
                fault: "postgres".to_owned(),
                start_ms: 30_000,
                end_ms: 50_000,
                ready_ms: None,
            },
        ];
        let failures = [
            failure(5_000, "timeout"),
            failure(11_000, "503"),
            failure(15_500, "503"),
            failure(47_000, "connection_error"),
        ];
        let (before, reports) = windows_report(&windows, &failures, 5_000);
        assert_eq!(before.failed_requests, 1);
        assert_eq!(before.failed_by_status.get("timeout"), Some(&1));
        assert_eq!(reports[0].failed_requests, 2);
        assert_eq!(reports[0].failed_by_status.get("503"), Some(&2));
        assert_eq!(reports[0].recovery_ms, 5_500);
        assert_eq!(reports[0].down_ms, Some(4_000));
        assert!(reports[0].recovered);
        assert_eq!(reports[1].recovery_ms, 17_000);
        assert_eq!(reports[1].down_ms, None);
        assert!(!reports[1].recovered, "a failure 3 s before the end");

        // What fails while the load drains belongs to the last window, and is in its tail.
        let (_, reports) = windows_report(&windows[..1], &[failure(31_000, "503")], 5_000);
        assert_eq!(reports[0].failed_requests, 1);
        assert!(!reports[0].recovered);
    }
}
