//! [`run`]: one `loadgen run` from start to report. Gets a population, then drives the workload
//! from `--connections` tasks (open or closed loop) while the visibility-lag probes and the
//! once-a-second progress line run beside them, and builds the [`Report`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::Method;
use hyper::StatusCode;
use tokio::sync::{Mutex as AsyncMutex, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::sleep_until;

use crate::client::{Connection, Endpoint};
use crate::config::{Mode, RunConfig};
use crate::contract::CONSISTENCY_TOKEN;
use crate::operation::Operation;
use crate::population::{self, Population, SeedPlan};
use crate::recorder::{Failure, Outcome, Recorder, Snapshot};
use crate::report::{Parameters, Report};
use crate::sampling::Rng;
use crate::schedule::{Schedule, TIMER_SLACK, latency_origin};
use crate::status_line::StatusLine;
use crate::workload::{Connections, LagProbe, Workload, transport_failure};

/// Sampled writes waiting for a probe; past this many, samples are dropped (and counted).
const LAG_QUEUE: usize = 4096;

/// How long a closed-loop task pauses after a request got no answer at all, so that a server
/// that is down is not hammered with connection attempts in a tight loop.
const TRANSPORT_BACKOFF: Duration = Duration::from_millis(50);

/// What every task of a run shares.
#[derive(Debug)]
struct Run {
    workload: Workload,
    recorder: Recorder,
    command: Endpoint,
    query: Endpoint,
    measure_start: Instant,
    end: Instant,
    timeout: Duration,
    /// Open loop: the schedule, the next slot to claim, and the measured slots sent.
    schedule: Schedule,
    next_slot: AtomicU64,
    sent_measured: AtomicU64,
}

/// Seeds or loads the population, runs the workload until `--duration` has been measured or
/// `stop` resolves, and reports. Errors only when the run cannot happen at all (an unusable URL,
/// seeding that cannot reach the API); failing requests during the run are in the report.
pub async fn run(
    config: RunConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Report> {
    let command = Endpoint::resolve(&config.command_url).await?;
    let query = Endpoint::resolve(&config.query_url).await?;
    let (population, source) = obtain_population(&config, &command, &query).await?;
    let parameters = Parameters::new(
        &config,
        population.users.len(),
        population.posts.len(),
        source,
    );
    let operations = Workload::operations(&config);

    let start = Instant::now();
    let measure_start = start + config.warmup;
    let end = measure_start + config.duration;
    let run = Arc::new(Run {
        workload: Workload::new(&config, population),
        recorder: Recorder::new(measure_start),
        command,
        query,
        measure_start,
        end,
        timeout: config.timeout,
        schedule: Schedule::new(start, config.rate),
        next_slot: AtomicU64::new(0),
        sent_measured: AtomicU64::new(0),
    });

    let (stop_sender, stop_receiver) = watch::channel(false);
    let (lag_sender, lag_receiver) = mpsc::channel::<LagProbe>(LAG_QUEUE);
    let lag_sender = (config.sends_writes() && config.lag_sample > 0.0).then_some(lag_sender);
    let mut probes = JoinSet::new();
    if lag_sender.is_some() {
        let receiver = Arc::new(AsyncMutex::new(lag_receiver));
        // Enough probes for the lag of a few hundred sampled writes a second.
        for _ in 0..(config.connections / 2).clamp(2, 32) {
            probes.spawn(probe_lag(Arc::clone(&run), Arc::clone(&receiver)));
        }
    }

    let mut tasks = JoinSet::new();
    for index in 0..config.connections {
        let rng = Rng::stream(config.seed, u64::from(index));
        let sampler = lag_sender.clone();
        let stop = stop_receiver.clone();
        match config.mode {
            Mode::Open => tasks.spawn(open_loop(Arc::clone(&run), rng, sampler, stop)),
            Mode::Closed => tasks.spawn(closed_loop(Arc::clone(&run), rng, sampler, stop)),
        };
    }
    // The probes end when every sender is gone: the tasks' copies go with the tasks.
    drop(lag_sender);

    let mut line = StatusLine::new();
    let stopped_at =
        watch_progress(&run, &mut tasks, stop, &stop_sender, &operations, &mut line).await;

    // The load has ended: its last second closes now, with the answers that were in flight
    // at the end.
    let last = run.recorder.close_series(Instant::now());
    if stopped_at.is_none() {
        let label = format!("{:>5.0}s", config.duration.as_secs_f64().ceil());
        line.show(&progress_text(&label, &last, &operations));
    }
    line.finish();

    // What is still queued for a probe gets measured; a probe is bounded by the timeout.
    let probes_deadline = Instant::now() + config.timeout + Duration::from_secs(1);
    while tokio::time::timeout_at(probes_deadline.into(), probes.join_next())
        .await
        .is_ok_and(|joined| joined.is_some())
    {}
    probes.abort_all();

    let window_end = stopped_at.map_or(end, |at| at.min(end)).max(measure_start);
    let measured = window_end - measure_start;
    let (totals, series) = run.recorder.finish();
    let mut report = Report::new(parameters, measured, &operations, &totals, &series);
    report.lag_samples_dropped = run.workload.lag_samples_dropped();
    if config.mode == Mode::Open {
        let scheduled =
            run.schedule.slots_before(window_end) - run.schedule.slots_before(measure_start);
        report.unsent = scheduled.saturating_sub(run.sent_measured.load(Ordering::Relaxed));
    }
    Ok(report)
}

/// The population to run against, and where it came from (for the report).
async fn obtain_population(
    config: &RunConfig,
    command: &Endpoint,
    query: &Endpoint,
) -> anyhow::Result<(Population, &'static str)> {
    if config.no_seed {
        let mut rng = Rng::stream(config.seed, u64::MAX);
        let population =
            Population::made_up(config.users as usize, config.posts as usize, &mut rng);
        return Ok((population, "made_up"));
    }
    if let Some(path) = &config.population_file
        && path.exists()
    {
        let population = Population::load(path)?;
        let tokenless = population.users.iter().any(|u| u.access_token.is_none());
        if tokenless && config.read_share() < 1.0 {
            // Every write needs its user's token; a file whose users have none (or tokens signed
            // with keys the command API no longer has) cannot write.
            eprintln!(
                "the population of {} has users without access tokens, which writes need; \
                 seeding a new one",
                path.display()
            );
        } else if population::still_exists(&population, query, config.timeout).await? {
            eprintln!(
                "using the population of {} ({} users, {} posts)",
                path.display(),
                population.users.len(),
                population.posts.len()
            );
            return Ok((population, "file"));
        } else {
            eprintln!(
                "the population of {} is not in this deployment's read model; seeding a new one",
                path.display()
            );
        }
    }
    let plan = SeedPlan {
        users: config.users as usize,
        posts: config.posts as usize,
        post_bytes: config.post_bytes as usize,
        connections: config.seed_connections as usize,
        timeout: config.timeout,
        visibility_wait: config.seed_wait,
    };
    let population = population::seed(&plan, command, query).await?;
    if let Some(path) = &config.population_file {
        population.save(path, command.url())?;
        eprintln!("population written to {}", path.display());
    }
    Ok((population, "seeded"))
}

/// Open loop: claim the next slot of the schedule, wait for its due time (unless it is already
/// past: then every task was busy and the wait counts), send, record from the due time.
async fn open_loop(
    run: Arc<Run>,
    mut rng: Rng,
    lag: Option<mpsc::Sender<LagProbe>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = Connections::new(&run.command, &run.query);
    loop {
        if *stop.borrow() {
            break;
        }
        let slot = run.next_slot.fetch_add(1, Ordering::Relaxed);
        let due = run.schedule.due(slot);
        if due >= run.end {
            break;
        }
        let now = Instant::now();
        // A backlog still there a timeout after the end will not drain; the report counts
        // what was never sent.
        if now >= run.end + run.timeout {
            break;
        }
        if due > now + TIMER_SLACK {
            tokio::select! {
                () = sleep_until((due - TIMER_SLACK).into()) => {}
                _ = stop.changed() => break,
            }
        }
        let origin = latency_origin(due, Instant::now());
        let op = run.workload.next_operation(&mut rng);
        let (op, outcome) = run
            .workload
            .execute(op, &mut rng, &mut connections, lag.as_ref(), due)
            .await;
        run.recorder.record(op, due, origin.elapsed(), outcome);
        if due >= run.measure_start {
            run.sent_measured.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Closed loop: send, wait for the answer, send the next.
async fn closed_loop(
    run: Arc<Run>,
    mut rng: Rng,
    lag: Option<mpsc::Sender<LagProbe>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = Connections::new(&run.command, &run.query);
    while !*stop.borrow() && Instant::now() < run.end {
        let sent = Instant::now();
        let op = run.workload.next_operation(&mut rng);
        let (op, outcome) = run
            .workload
            .execute(op, &mut rng, &mut connections, lag.as_ref(), sent)
            .await;
        run.recorder.record(op, sent, sent.elapsed(), outcome);
        if outcome == Outcome::Failed(Failure::Transport) {
            tokio::select! {
                () = tokio::time::sleep(TRANSPORT_BACKOFF) => {}
                _ = stop.changed() => break,
            }
        }
    }
}

/// A lag probe: for each sampled write, read its decision with its consistency token; the
/// query API answers once its read model holds the write.
async fn probe_lag(run: Arc<Run>, queue: Arc<AsyncMutex<mpsc::Receiver<LagProbe>>>) {
    let mut connection = Connection::new(run.query.clone());
    loop {
        let probe = {
            let mut queue = queue.lock().await;
            queue.recv().await
        };
        let Some(probe) = probe else { break };
        let request = run
            .query
            .request(Method::GET, &format!("/v1/commands/{}", probe.command_id))
            .header(CONSISTENCY_TOKEN, probe.token);
        let outcome = match connection.send(request, run.timeout).await {
            Ok(answer) if answer.status == StatusCode::OK => Outcome::Success,
            Ok(answer) => Outcome::Failed(Failure::Status(answer.status.as_u16())),
            Err(error) => Outcome::Failed(transport_failure(&error)),
        };
        run.recorder.record(
            Operation::VisibilityLag,
            probe.write_started,
            probe.accepted_at.elapsed(),
            outcome,
        );
    }
}

/// Shows progress on `line` once a second (closing the recorder's seconds) until every task has
/// ended. Returns when `stop` resolved, if it did.
async fn watch_progress(
    run: &Run,
    tasks: &mut JoinSet<()>,
    stop: impl Future<Output = ()>,
    stop_sender: &watch::Sender<bool>,
    operations: &[Operation],
    line: &mut StatusLine,
) -> Option<Instant> {
    let start = run.schedule.due(0);
    let mut measuring = run.measure_start <= start;
    let mut tick = if measuring {
        run.measure_start + Duration::from_secs(1)
    } else {
        (start + Duration::from_secs(1)).min(run.measure_start)
    };
    let mut stopped_at = None;
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            // The last measured second is closed once the tasks are done.
            () = sleep_until(tick.into()), if tick < run.end && stopped_at.is_none() => {
                if !measuring && tick >= run.measure_start {
                    run.recorder.begin_measuring();
                    measuring = true;
                    tick = run.measure_start + Duration::from_secs(1);
                    continue;
                }
                let snapshot = run.recorder.close_interval(tick);
                let label = if measuring {
                    format!("{:>5.0}s", (tick - run.measure_start).as_secs_f64())
                } else {
                    format!("warm-up {:>3.0}s", (tick - start).as_secs_f64())
                };
                line.show(&progress_text(&label, &snapshot, operations));
                tick = if measuring {
                    tick + Duration::from_secs(1)
                } else {
                    (tick + Duration::from_secs(1)).min(run.measure_start)
                };
            }
            () = &mut stop, if stopped_at.is_none() => {
                stopped_at = Some(Instant::now());
                let _ = stop_sender.send(true);
                line.show("stopping: waiting for the requests in flight");
            }
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(())) => {}
                // A task that panicked loses only its own share of the load; say so.
                Some(Err(error)) => eprintln!("\na load task failed: {error}"),
            },
        }
    }
    stopped_at
}

/// `[   12s] post 7012/s user 2001/s … | errors 0 | p99 reads 3.1 ms, writes 40 ms, lag 55 ms`
fn progress_text(label: &str, snapshot: &Snapshot, operations: &[Operation]) -> String {
    let mut text = format!("[{label}]");
    for op in operations {
        let requests = snapshot.second[op.index()].requests;
        text.push_str(&format!(" {} {requests}/s", op.short_name()));
    }
    text.push_str(&format!(" | errors {}", snapshot.errors));
    let parts: Vec<String> = [
        ("reads", snapshot.p99_reads_us),
        ("writes", snapshot.p99_writes_us),
        ("lag", snapshot.p99_lag_us),
    ]
    .into_iter()
    .filter_map(|(name, us)| us.map(|us| format!("{name} {:.1} ms", us as f64 / 1000.0)))
    .collect();
    if !parts.is_empty() {
        text.push_str(&format!(" | p99 {}", parts.join(", ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::IntervalSample;

    #[test]
    fn the_progress_line_shows_rates_errors_and_p99s() {
        let mut second = [IntervalSample::default(); Operation::COUNT];
        second[Operation::ReadPost.index()].requests = 7012;
        let snapshot = Snapshot {
            second,
            errors: 3,
            p99_reads_us: Some(3100),
            p99_writes_us: None,
            p99_lag_us: Some(55_000),
        };
        let text = progress_text(
            "   12s",
            &snapshot,
            &[Operation::ReadPost, Operation::CreatePost],
        );
        assert_eq!(
            text,
            "[   12s] post 7012/s create 0/s | errors 3 | p99 reads 3.1 ms, lag 55.0 ms"
        );
    }
}
