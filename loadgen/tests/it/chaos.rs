//! `loadgen chaos` against the fake of [`chaos_fake`]: a healthy fake passes with every count
//! zero, and each broken promise is caught by its check, with the exit status a run would give.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use loadgen::chaos::report::ChaosReport;
use loadgen::{ChaosConfig, Cli, Command};

use crate::chaos_fake::{self, Faults};
use crate::helpers::scratch_dir;

/// `loadgen chaos` with short bounds against `url`, and these extra flags.
fn chaos_config(url: &str, extra: &[&str]) -> ChaosConfig {
    let mut args = vec![
        "loadgen",
        "chaos",
        "--command-url",
        url,
        "--query-url",
        url,
        "--writers",
        "3",
        "--write-rate",
        "30",
        "--settle-timeout",
        "1s",
        "--retry-for",
        "10s",
        "--timeout",
        "2s",
        "--recovery-tail",
        "300ms",
    ];
    args.extend_from_slice(extra);
    if !extra.contains(&"--duration") {
        args.extend_from_slice(&["--duration", "1500ms"]);
    }
    match Cli::try_parse_from(args).expect("flags parse").command {
        Command::Chaos(config) => *config,
        other => panic!("not a chaos run: {other:?}"),
    }
}

async fn run(faults: Faults, extra: &[&str]) -> ChaosReport {
    let fake = chaos_fake::start(faults).await;
    let report =
        loadgen::chaos::run_and_report(chaos_config(&fake.url, extra), std::future::pending())
            .await
            .expect("the run happens");
    assert_eq!(
        fake.ledger.lock().expect("ledger").refused,
        0,
        "every write carried its user's token and a key"
    );
    report
}

/// A timeline whose one fault was killed before the run and ready at its start.
fn timeline_before_now(dir: &Path) -> String {
    let now = loadgen::chaos::journal::now_ms();
    let path = dir.join("timeline.jsonl");
    let lines = [
        format!(
            r#"{{"at_ms": {}, "fault": "command-api", "phase": "kill", "note": "x"}}"#,
            now - 1000
        ),
        format!(
            r#"{{"at_ms": {}, "fault": "command-api", "phase": "restart"}}"#,
            now - 800
        ),
        format!(
            r#"{{"at_ms": {}, "fault": "command-api", "phase": "ready"}}"#,
            now - 500
        ),
    ];
    std::fs::write(&path, lines.join("\n") + "\n").expect("timeline");
    path.to_str().expect("utf-8 path").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_api_passes_with_every_count_zero() {
    let dir = scratch_dir("chaos-healthy");
    let out = dir.join("report.json");
    let missing = dir.join("no-timeline.jsonl");
    let report = run(
        Faults::default(),
        &[
            "--out",
            out.to_str().expect("utf-8 path"),
            "--timeline",
            missing.to_str().expect("utf-8 path"),
        ],
    )
    .await;

    assert!(report.passed, "{}", report.table());
    assert_eq!(report.exit_code(), 0);
    assert_eq!(
        report.users, 4,
        "writers 0 and 2 register one user each, writer 1 two"
    );
    // 1.5 s at 30 writes/s, after four sign-ups.
    assert!(report.findings.acknowledged >= 30, "{}", report.table());
    assert_eq!(report.findings.applied, report.findings.acknowledged);
    assert_eq!(report.findings.acknowledged, report.writes_attempted);
    for kind in ["register", "update_profile", "publish_post", "edit_post"] {
        assert!(
            report
                .findings
                .acknowledged_by_kind
                .get(kind)
                .is_some_and(|n| *n > 0),
            "no {kind}"
        );
    }
    assert!(
        report.reads_checked >= 3 * report.findings.acknowledged,
        "{}",
        report.reads_checked
    );
    assert_eq!(
        (
            report.findings.lost,
            report.findings.duplicated,
            report.findings.effects_missing,
            report.findings.unverified
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(
        (report.stale_reads, report.gave_up, report.failed_requests),
        (0, 0, 0)
    );
    assert!(report.unexpected_errors.is_empty());
    assert!(report.findings.rejected_by_reason.is_empty());
    assert!(
        report.windows.is_empty(),
        "a missing timeline has no windows"
    );
    assert!(report.examples.is_empty(), "{:?}", report.examples);

    let written: ChaosReport =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("the report was written"))
            .expect("the report parses");
    assert_eq!(written, report);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_write_never_decided_is_lost() {
    let report = run(
        Faults {
            lose_first_publish: true,
            ..Faults::default()
        },
        // Reads would also catch it (a token read of a command must not be 404): leave them out
        // to see the settle check alone.
        &["--reads-per-write", "0"],
    )
    .await;
    assert_eq!(report.findings.lost, 1, "{}", report.table());
    assert_eq!(
        (
            report.findings.duplicated,
            report.findings.effects_missing,
            report.stale_reads
        ),
        (0, 0, 0)
    );
    assert!(!report.passed);
    assert_eq!(report.exit_code(), 1);
    assert!(
        report
            .failed_checks
            .iter()
            .any(|check| check.contains("lost"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_effect_twice_in_the_stream_is_duplicated() {
    let report = run(
        Faults {
            duplicate_first_publish: true,
            ..Faults::default()
        },
        &[],
    )
    .await;
    assert_eq!(report.findings.duplicated, 1, "{}", report.table());
    assert_eq!(
        (
            report.findings.lost,
            report.findings.effects_missing,
            report.stale_reads
        ),
        (0, 0, 0)
    );
    assert_eq!(report.exit_code(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_data_under_the_token_of_an_applied_write_is_a_stale_read() {
    let report = run(
        Faults {
            stale_profile_read: true,
            ..Faults::default()
        },
        &[],
    )
    .await;
    assert_eq!(report.stale_reads, 1, "{}", report.table());
    assert_eq!(
        (
            report.findings.lost,
            report.findings.duplicated,
            report.findings.effects_missing
        ),
        (0, 0, 0)
    );
    assert!(report.examples.iter().any(|e| e.starts_with("stale read")));
    assert_eq!(report.exit_code(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_an_unexpected_error() {
    let report = run(
        Faults {
            fail_first_write: true,
            ..Faults::default()
        },
        &[],
    )
    .await;
    assert_eq!(
        report.unexpected_errors.get("500"),
        Some(&1),
        "{}",
        report.table()
    );
    assert_eq!(report.unexpected_errors.len(), 1);
    assert_eq!(report.writes_unacknowledged, 1);
    assert_eq!(
        (
            report.findings.lost,
            report.findings.duplicated,
            report.stale_reads
        ),
        (0, 0, 0)
    );
    assert_eq!(report.exit_code(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_with_retry_after_is_retried_and_counted_in_its_window() {
    let dir = scratch_dir("chaos-503");
    let timeline = timeline_before_now(&dir);
    let report = run(
        Faults {
            unavailable_first_write: true,
            ..Faults::default()
        },
        &["--timeline", &timeline, "--duration", "2s"],
    )
    .await;
    assert!(report.passed, "{}", report.table());
    assert_eq!(report.exit_code(), 0);
    assert_eq!(report.windows.len(), 1);
    let window = &report.windows[0];
    assert_eq!(window.fault, "command-api");
    assert_eq!(window.down_ms, Some(500));
    assert_eq!(window.failed_requests, 1);
    assert_eq!(window.failed_by_status.get("503"), Some(&1));
    assert!(window.recovered);
    assert!(window.recovery_ms >= 1000, "{}", window.recovery_ms);
    assert_eq!(report.before_faults.failed_requests, 0);
    assert!(report.unexpected_errors.is_empty());
    assert_eq!(
        report.writes_unacknowledged, 0,
        "the retry was acknowledged"
    );
    assert_eq!(report.findings.applied, report.findings.acknowledged);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_stops_on_sigterm_and_exits_by_the_verdict() {
    let fake = chaos_fake::start(Faults::default()).await;
    let dir = scratch_dir("chaos-binary");
    let out = dir.join("report.json");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "chaos",
            "--command-url",
            &fake.url,
            "--query-url",
            &fake.url,
        ])
        .args([
            "--writers",
            "2",
            "--write-rate",
            "20",
            "--settle-timeout",
            "1s",
        ])
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("loadgen starts");

    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.writes() < 10 {
        assert!(Instant::now() < deadline, "no writes from the binary");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("it stops after SIGTERM")
        .expect("exit status");
    assert_eq!(exit.code(), Some(0));
    let report: ChaosReport =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("report")).expect("JSON");
    assert!(report.passed && report.findings.acknowledged >= 10);

    // Nothing listens on port 1: the run cannot happen at all.
    let exit = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "chaos",
            "--command-url",
            "http://127.0.0.1:1",
            "--query-url",
            "http://127.0.0.1:1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("loadgen runs");
    assert_eq!(exit.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}
