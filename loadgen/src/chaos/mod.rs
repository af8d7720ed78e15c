//! `loadgen chaos`: the client and checker of a fault-injection run. It writes and reads at a
//! steady rate while an orchestrator (`./dev chaos`) kills and restarts the services, the broker
//! and PostgreSQL; when stopped (SIGINT, SIGTERM or `--duration`) it lets the operations under
//! way finish, then checks, from its own record of every `202` it received, that each
//! acknowledged write was decided exactly once and its effect is visible, that no read with a
//! consistency token showed older data, that failures during outages were only 503s with
//! `Retry-After` (or, inside fault windows, connection errors and timeouts), and that every
//! fault window ended healthy.
//!
//! ```text
//! loadgen chaos --command-url http://127.0.0.1:8080 --query-url http://127.0.0.1:8081 \
//!     --writers 8 --write-rate 40 --reads-per-write 3 \
//!     --timeline .stack/chaos/timeline.jsonl --out chaos.json --settle-timeout 180s
//! ```
//!
//! Exit status: 0 when every check passed, 1 when one failed, 2 when the run could not happen
//! (an unusable URL, sign-ups that got no `202`, an unreadable timeline or report path).
//!
//! The load: `--writers` tasks ([`writer`]), each registering one or two users and writing as
//! them (display-name updates, post publications, post edits, each setting a unique marker)
//! one operation at a time at its share of `--write-rate`, each write with a fresh
//! `Idempotency-Key` and retried with the same key and body on 503 (after its `Retry-After`),
//! connection errors and timeouts for up to `--retry-for` ([`patient`]). After each `202`,
//! `--reads-per-write` reads with its token check freshness. Then [`verify`] waits up to
//! `--settle-timeout` for every decision and reads back every effect, and [`timeline`] cuts the
//! failed requests into fault windows.
//!
//! Connection errors and timeouts: the client talks to a load balancer that stays up, but a
//! request in flight through a killed instance may still lose its connection. They are
//! retried, reported (`connection_errors`), and fail the run only outside every fault window
//! (before the first kill, or in a run without a timeline); a window that still fails in its
//! last `--recovery-tail` has not recovered, whatever the kind of failure.
//!
//! The JSON report (`--out`), field by field:
//! - `passed`, `failed_checks`: the verdict and, for a failed run, each check that failed.
//! - `parameters`: the flags; `started_at_ms`, `load_ended_at_ms` (unix epoch ms, the end is
//!   after the operations under way at the stop finished); `duration_s`: the load's length.
//! - `users`; `writes_attempted` (sign-ups included); `writes_unacknowledged`: writes that got
//!   no `202` (given up, or answered with an unexpected status: their fate is unknown);
//! - `acknowledged`: distinct command ids answered `202`, with `acknowledged_by_kind`
//!   (`register`, `update_profile`, `publish_post`, `edit_post`);
//! - `applied`, `rejected_by_reason` (contract reasons only; any other is an unexpected
//!   `bad_answer`); `lost`: acknowledged and still undecided after `--settle-timeout`;
//! - `duplicated`: commands whose effect is in a stream more than once (or a rejected one's at
//!   all), or users whose `post_count` is above their applied publications; `effects_missing`:
//!   applied effects not in the stream, or not the final state of their resource;
//!   `unverified`: resources the checks could not read;
//! - `reads_checked`, `stale_reads`: token reads judged, and those that showed older data than
//!   an applied write (or a 404 for a command under its own token);
//! - `gave_up`: operations still failing after `--retry-for`;
//! - `unexpected_errors`: by kind (`500`, `502`, `429`, `503_without_retry_after`,
//!   `bad_answer`...), from the load and the checks;
//! - `connection_errors` (connection errors and timeouts of the load),
//!   `connection_errors_outside_windows`; `failed_requests`: every failed attempt of the load;
//! - `before_faults` and `windows[]`: `{fault, killed_at_ms, ended_at_ms, down_ms,
//!   failed_requests, failed_by_status, recovery_ms, recovered}` (see [`report`]);
//! - `verification_failed_requests`: failed attempts of the checks' own reads;
//! - `timeline_lines_ignored`; `examples`: the first problems seen, described.

pub mod journal;
pub mod patient;
pub mod report;
pub mod timeline;
pub mod verify;
pub mod writer;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::client::Endpoint;
use crate::config::ChaosConfig;
use crate::status_line::StatusLine;

use journal::{Journal, Phase, now_ms};
use report::{ChaosParameters, ChaosReport, FailureCounts, windows_report};
use timeline::Timeline;
use writer::{Shared, UserRecord, Writer};

/// How often the progress line is refreshed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Runs the load until `stop` resolves (or `--duration`), checks, prints the table and writes
/// `--out`. Errors only when the run could not happen.
pub async fn run_and_report(
    config: ChaosConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<ChaosReport> {
    let out = config.out.clone();
    let report = run(config, stop).await?;
    print!("{}", report.table());
    if let Some(path) = out {
        let text = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
        std::fs::write(&path, text)
            .with_context(|| format!("cannot write the report {}", path.display()))?;
    }
    Ok(report)
}

/// The run itself: load, then checks; see the module's documentation.
pub async fn run(
    config: ChaosConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<ChaosReport> {
    let shared = Arc::new(Shared {
        command: Endpoint::resolve(&config.command_url).await?,
        query: Endpoint::resolve(&config.query_url).await?,
        journal: Journal::default(),
        timeout: config.timeout,
        retry_for: config.retry_for,
        reads_per_write: config.reads_per_write,
        nonce: Uuid::now_v7().simple().to_string()[24..].to_owned(),
        post_body: crate::contract::post_text(writer::POST_BODY_BYTES),
    });
    // Polled from now on, so that a signal during the sign-ups already stops the run (its
    // handler is installed on the first poll) instead of killing the process.
    let stop = tokio::spawn(stop);
    let started_at_ms = now_ms();
    let started = Instant::now();
    let stop_at = config.duration.map(|duration| started + duration);

    let mut registering = JoinSet::new();
    for index in 0..config.writers as usize {
        registering.spawn(Writer::register(index, Arc::clone(&shared)));
    }
    let mut writers = Vec::new();
    while let Some(joined) = registering.join_next().await {
        match joined {
            Ok(Ok(writer)) => writers.push(writer),
            Ok(Err(error)) => {
                registering.abort_all();
                stop.abort();
                return Err(error.context("cannot register the run's users"));
            }
            Err(error) => {
                stop.abort();
                anyhow::bail!("a registering task failed: {error}");
            }
        }
    }

    let (stop_sender, stop_receiver) = watch::channel(false);
    let interval = Duration::from_secs_f64(f64::from(config.writers) / config.write_rate);
    let now = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, writer) in writers.into_iter().enumerate() {
        // Spread over the first interval, so the writes arrive evenly rather than in waves.
        let first_due = now + interval.mul_f64(i as f64 / f64::from(config.writers));
        tasks.spawn(writer.run(first_due, interval, stop_receiver.clone()));
    }

    show_progress(
        &shared.journal,
        started,
        async {
            // A stop task that failed cannot stop the run any more: the duration still can.
            if stop.await.is_err() {
                std::future::pending::<()>().await;
            }
        },
        stop_at,
    )
    .await;
    let _ = stop_sender.send(true);
    let mut line = StatusLine::new();
    line.show("stopping: finishing the operations under way");
    let mut users: Vec<UserRecord> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        users.extend(joined.context("a writer task failed")?);
    }
    let load_ended_at_ms = now_ms();
    let duration_s = started.elapsed().as_secs_f64();

    let timeline = match &config.timeline {
        Some(path) => Timeline::read(path)?,
        None => Timeline::default(),
    };

    line.show(&format!(
        "waiting up to {:?} for every acknowledged command to be decided",
        config.settle_timeout
    ));
    let users = Arc::new(users);
    let (decisions, mut findings) = verify::settle(&shared, &users, config.settle_timeout).await;
    line.show("reading back every effect");
    verify::check_effects(&shared, &users, Arc::new(decisions), &mut findings).await;
    line.finish();

    let journal = &shared.journal;
    let failures = journal.failed_requests();
    let (load, checks): (Vec<_>, Vec<_>) = failures
        .into_iter()
        .partition(|failure| failure.phase == Phase::Load);
    let windows = timeline.windows(load_ended_at_ms);
    let (before_faults, window_reports) =
        windows_report(&windows, &load, config.recovery_tail.as_millis() as u64);
    let mut unexpected_errors = std::collections::BTreeMap::new();
    for failure in load.iter().chain(&checks).filter(|f| !f.expected()) {
        *unexpected_errors.entry(failure.kind.clone()).or_default() += 1;
    }
    let mut verification_failed_requests = FailureCounts::default();
    for failure in &checks {
        verification_failed_requests.failed_requests += 1;
        *verification_failed_requests
            .failed_by_status
            .entry(failure.kind.clone())
            .or_default() += 1;
    }
    let count = |counter: &AtomicU64| Journal::count(counter);
    let mut report = ChaosReport {
        passed: false,
        failed_checks: Vec::new(),
        parameters: ChaosParameters::new(&config),
        started_at_ms,
        load_ended_at_ms,
        duration_s,
        users: users.len() as u64,
        writes_attempted: count(&journal.writes_attempted),
        writes_unacknowledged: count(&journal.writes_unacknowledged),
        findings,
        reads_checked: count(&journal.reads_checked),
        stale_reads: count(&journal.stale_reads),
        gave_up: count(&journal.gave_up),
        unexpected_errors,
        connection_errors: load.iter().filter(|f| f.no_answer()).count() as u64,
        connection_errors_outside_windows: before_faults
            .failed_by_status
            .iter()
            .filter(|(kind, _)| {
                [journal::CONNECTION_ERROR, journal::TIMEOUT].contains(&kind.as_str())
            })
            .map(|(_, n)| n)
            .sum(),
        failed_requests: load.len() as u64,
        before_faults,
        windows: window_reports,
        verification_failed_requests,
        timeline_lines_ignored: timeline.ignored_lines,
        examples: journal.examples(),
    };
    report.judge();
    Ok(report)
}

/// Shows progress every few seconds until `stop` resolves or `stop_at` passes.
async fn show_progress(
    journal: &Journal,
    started: Instant,
    stop: impl Future<Output = ()>,
    stop_at: Option<Instant>,
) {
    let deadline = async {
        match stop_at {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop, deadline);
    let mut line = StatusLine::new();
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = &mut stop => break,
            () = &mut deadline => break,
            _ = ticker.tick() => line.show(&format!(
                "chaos [{:>5}s] writes {}, acknowledged {}, failed requests {}, stale reads {}",
                started.elapsed().as_secs(),
                Journal::count(&journal.writes_attempted),
                Journal::count(&journal.writes_acknowledged),
                journal.failed_so_far(),
                Journal::count(&journal.stale_reads),
            )),
        }
    }
    line.finish();
}
