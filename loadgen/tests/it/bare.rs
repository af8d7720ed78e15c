//! Runs against `loadgen bare-server`: the open and closed loops, the report files, errors that
//! are reported rather than fatal, stopping early.

use std::time::Duration;

use loadgen::client::{Connection, Endpoint};
use loadgen::{Operation, Report};

use crate::helpers::{bare_server, read_svg, run_config, scratch_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_run_against_the_bare_server_sends_the_schedule_and_reports_it() {
    let server = bare_server().await;
    let dir = scratch_dir("open");
    let (json, svg) = (dir.join("report.json"), dir.join("report.svg"));
    let config = run_config(&[
        "--mode",
        "open",
        "--rate",
        "500",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--connections",
        "16",
        "--reads-only",
        "--read-mix",
        "posts=100",
        "--no-seed",
        "--query-url",
        &server.url,
        "--json",
        json.to_str().expect("utf-8 path"),
        "--svg",
        svg.to_str().expect("utf-8 path"),
    ]);

    let report = loadgen::run_and_report(config, std::future::pending())
        .await
        .expect("the run completes");

    let reads = report
        .operation(Operation::ReadPost)
        .expect("read_post reported");
    // 1 s at 500 requests/s is 500 slots; all of them sent, none failed.
    assert!(
        (490..=510).contains(&reads.count),
        "{} requests",
        reads.count
    );
    assert_eq!(reads.errors, 0, "{:?}", reads.errors_by_status);
    assert_eq!(report.unsent, 0);
    assert!(
        (reads.throughput - 500.0).abs() < 15.0,
        "{}",
        reads.throughput
    );
    let latency = reads.latency_ms.expect("latencies");
    assert!(latency.p50 > 0.0 && latency.p50 <= latency.p99 && latency.p99 <= latency.max);
    assert_eq!(
        report.operations.len(),
        1,
        "only the one read kind was sent"
    );

    let parsed: Report =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON was written"))
            .expect("the JSON report parses");
    assert_eq!(parsed, report);
    assert_eq!(parsed.parameters.rate, Some(500.0));
    let per_second: u64 = parsed
        .time_series
        .iter()
        .map(|second| second.operations["read_post"].requests)
        .sum();
    assert_eq!(per_second, reads.count, "the seconds add up to the total");

    let plot = read_svg(&svg);
    assert!(plot.contains(r#"data-operation="read_post""#));
    assert!(plot.contains("<polyline") || plot.contains("<circle"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_run_keeps_every_connection_busy() {
    let server = bare_server().await;
    let config = run_config(&[
        "--mode",
        "closed",
        "--connections",
        "4",
        "--duration",
        "500ms",
        "--warmup",
        "200ms",
        "--reads-only",
        "--read-mix",
        "posts=100",
        "--no-seed",
        "--query-url",
        &server.url,
    ]);
    let report = loadgen::run_and_report(config, std::future::pending())
        .await
        .expect("the run completes");
    let reads = report.operation(Operation::ReadPost).expect("reads");
    // Even a debug build on a busy machine does far more than this.
    assert!(reads.count > 50, "{} requests", reads.count);
    assert_eq!(reads.errors, 0);
    assert!((report.measured_s - 0.5).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_requests_are_reported_not_fatal() {
    // The bare server has no write routes: every write is a 404 (or 405), and the run still
    // completes with a report that shows them.
    let server = bare_server().await;
    let config = run_config(&[
        "--mode",
        "open",
        "--rate",
        "100",
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "--writes-only",
        "--no-seed",
        "--command-url",
        &server.url,
        "--query-url",
        &server.url,
    ]);
    let report = loadgen::run_and_report(config, std::future::pending())
        .await
        .expect("the run completes");
    let writes = report
        .totals
        .iter()
        .find(|total| total.operation == "writes")
        .expect("a writes total");
    assert!(writes.count >= 45, "{} writes", writes.count);
    assert_eq!(writes.errors, writes.count);
    let lag = report
        .operation(Operation::VisibilityLag)
        .expect("lag listed");
    assert_eq!(lag.count, 0, "no write was accepted, so no lag was probed");
    assert!(report.table().contains("errors by status:"));
}

#[tokio::test]
async fn a_run_that_cannot_seed_fails() {
    // Nothing listens on port 1: seeding cannot create a single user.
    let config = run_config(&[
        "--command-url",
        "http://127.0.0.1:1",
        "--query-url",
        "http://127.0.0.1:1",
        "--users",
        "2",
        "--posts",
        "2",
        "--duration",
        "1s",
    ]);
    let error = loadgen::run_and_report(config, std::future::pending())
        .await
        .expect_err("cannot run");
    assert!(
        format!("{error:#}").contains("cannot reach the command API"),
        "{error:#}"
    );
}

#[tokio::test]
async fn an_early_stop_still_reports() {
    let server = bare_server().await;
    let config = run_config(&[
        "--duration",
        "60s",
        "--warmup",
        "0s",
        "--connections",
        "2",
        "--reads-only",
        "--no-seed",
        "--query-url",
        &server.url,
    ]);
    let started = std::time::Instant::now();
    let report = loadgen::run_and_report(config, tokio::time::sleep(Duration::from_millis(300)))
        .await
        .expect("the run completes");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(report.measured_s < 1.0, "{}", report.measured_s);
    assert!(report.totals[0].count > 0);
}

#[tokio::test]
async fn the_bare_server_answers_like_the_query_api() {
    let server = bare_server().await;
    let endpoint = Endpoint::resolve(&server.url).await.expect("endpoint");
    let mut connection = Connection::new(endpoint.clone());
    let timeout = Duration::from_secs(5);
    let id = uuid::Uuid::now_v7();
    let answer = connection
        .send(
            endpoint.request(hyper::Method::GET, &format!("/v1/posts/{id}")),
            timeout,
        )
        .await
        .expect("an answer");
    assert_eq!(answer.status, 200);
    let post: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
    assert_eq!(post["version"], 1);
    assert!((1200..=1400).contains(&answer.body.len()));
    // The same connection carries the next request (keep-alive).
    let bad = connection
        .send(
            endpoint.request(hyper::Method::GET, "/v1/posts/not-a-uuid"),
            timeout,
        )
        .await
        .expect("an answer");
    assert_eq!(bad.status, 400);
}
