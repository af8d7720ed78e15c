//! `projector rebuild` and the generations: a rebuild ends in a `ready` generation equal to the
//! live read model; an interrupted one resumes where it stopped and ends the same; the live
//! pipeline keeps deciding and answering token reads during a rebuild; drop-generation removes
//! a generation and refuses public or the active one; the binary's exit codes (switch too); the
//! live projector's `/metrics` shows a stopped rebuild's progress.

use clap::Parser;

use projector::config::{Command, Config, RebuildArgs};
use projector::generations::{self, DropRefused, Generation, GenerationState};
use projector::rebuild::{RebuildReport, rebuild};

use crate::metrics::wait_for_series;
use crate::stack::{ReadYourWritesLoad, Stack, end_offsets, schema_exists, snapshot, snapshot_in};
use crate::verify::mixed_history;

pub fn config(stack: &Stack, command: &[&str]) -> Config {
    let mut argv = vec![
        "projector".to_owned(),
        format!("--database-url={}", stack.db.url),
        format!("--kafka-brokers={}", stack.brokers),
        format!("--kafka-topic={}", stack.topic),
    ];
    argv.extend(command.iter().map(|f| (*f).to_owned()));
    Config::parse_from(argv)
}

/// Rebuild's configuration, with small batches unless `flags` say otherwise, so that a run
/// spans many of them.
fn rebuild_config(stack: &Stack, flags: &[&str]) -> (Config, RebuildArgs) {
    let mut command = vec!["rebuild"];
    command.extend_from_slice(flags);
    if !flags.iter().any(|f| f.starts_with("--batch-size")) {
        command.push("--batch-size=7");
    }
    let config = config(stack, &command);
    let Some(Command::Rebuild(args)) = config.command.clone() else {
        panic!("`rebuild` parses as the rebuild subcommand");
    };
    (config, args)
}

pub async fn run_rebuild(stack: &Stack, flags: &[&str]) -> RebuildReport {
    let (config, args) = rebuild_config(stack, flags);
    rebuild(&config, &args, std::future::pending())
        .await
        .expect("rebuild runs")
}

pub async fn catalogue(stack: &Stack) -> Vec<Generation> {
    let pool = stack.db.pool().await;
    let listed = generations::list(&pool).await.expect("list generations");
    pool.close().await;
    listed
}

fn log_total(stack: &Stack) -> i64 {
    end_offsets(&stack.brokers, &stack.topic).values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_is_ready_and_equals_the_live_read_model() {
    let stack = Stack::start().await;
    mixed_history(&stack).await;
    let log_end = end_offsets(&stack.brokers, &stack.topic);
    let total = log_end.values().sum::<i64>();

    let report = run_rebuild(&stack, &[]).await;
    println!("{report}");

    assert!(report.is_ready(), "{report}");
    assert_eq!(report.generation, "generation_1");
    assert!(!report.resumed);
    assert_eq!(report.events, total, "every record of the log");
    assert_eq!(report.events_projected, total as u64, "each one once");
    let comparison = report.comparison.as_ref().expect("verified");
    assert_eq!(
        comparison.offsets, log_end,
        "verified at the end of the log"
    );
    assert_eq!(comparison.tables.len(), 6);
    let users = report.table("users").expect("users compared");
    assert_eq!((users.live_rows, users.rebuilt_rows), (3, 3));
    assert_eq!(
        report.table("dead_letters").expect("compared").rebuilt_rows,
        1
    );
    assert_eq!(
        snapshot_in(&stack.db.url, "generation_1").await,
        snapshot(&stack.db.url).await,
        "the generation's tables equal the live ones"
    );

    let listed = catalogue(&stack).await;
    let states: Vec<_> = listed.iter().map(|g| (g.name.as_str(), g.state)).collect();
    assert_eq!(
        states,
        [
            ("public", GenerationState::Active),
            ("generation_1", GenerationState::Ready)
        ]
    );
    assert_eq!(listed[1].events, total);
    assert!(listed[1].completed_at.is_some());
    assert_eq!(listed[0].events, total, "the live read model's position");

    let next = run_rebuild(&stack, &["--batch-size=5000"]).await;
    assert!(next.is_ready(), "{next}");
    assert_eq!(
        next.generation, "generation_2",
        "a ready generation is not rebuilt again: the next one is new"
    );
    stack.db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rebuild_resumes_where_it_stopped_and_ends_the_same() {
    let stack = Stack::start().await;
    mixed_history(&stack).await;
    let total = log_total(&stack);
    assert!(total > 6);

    let stopped = run_rebuild(&stack, &["--batch-size=3", "--max-events=6"]).await;
    assert_eq!(stopped.state, GenerationState::Building, "{stopped}");
    assert_eq!((stopped.events, stopped.events_projected), (6, 6));
    assert!(stopped.comparison.is_none());
    assert!(stopped.to_string().contains("STOPPED"), "{stopped}");
    let listed = catalogue(&stack).await;
    assert_eq!(listed[1].name, "generation_1");
    assert_eq!(
        (listed[1].state, listed[1].events),
        (GenerationState::Building, 6)
    );
    // The live projector shows how far the generation is: 6 of the live read model's events.
    stack.wait_caught_up().await;
    let live_projector = &stack._projector.as_ref().expect("in-process projector").url;
    let progress = r#"projector_rebuild_progress_ratio{generation="generation_1"}"#;
    wait_for_series(live_projector, progress, Some(6.0 / total as f64)).await;

    // Ctrl-C at once: whatever committed stays, nothing is lost.
    let (config, args) = rebuild_config(&stack, &["--batch-size=3"]);
    let interrupted = rebuild(&config, &args, std::future::ready(()))
        .await
        .expect("an interrupted rebuild reports");
    assert_eq!(interrupted.generation, "generation_1");
    assert!(interrupted.resumed);
    assert_eq!(interrupted.state, GenerationState::Building);
    assert_eq!(interrupted.stopped.as_deref(), Some("interrupted"));
    assert!(interrupted.events >= 6);

    let resumed = run_rebuild(&stack, &["--batch-size=3"]).await;
    println!("{resumed}");
    assert!(resumed.is_ready(), "{resumed}");
    assert_eq!(resumed.generation, "generation_1", "the same generation");
    assert!(resumed.resumed);
    assert_eq!(resumed.events, total);
    assert_eq!(
        resumed.events_projected as i64,
        total - interrupted.events,
        "it went on from where it stopped, projecting nothing twice"
    );
    assert_eq!(
        snapshot_in(&stack.db.url, "generation_1").await,
        snapshot(&stack.db.url).await
    );
    let listed = catalogue(&stack).await;
    assert_eq!(
        (listed[1].state, listed[1].events),
        (GenerationState::Ready, total)
    );
    // Ready is no longer being rebuilt.
    wait_for_series(live_projector, progress, None).await;
    stack.db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_pipeline_keeps_deciding_and_answering_during_a_rebuild() {
    let stack = Stack::start().await;
    let mut load = ReadYourWritesLoad::start(&stack);
    load.wait_for(10).await;

    let report = run_rebuild(&stack, &["--batch-size=2"]).await;
    let during = load.so_far();
    let total = load.stop().await;

    assert!(report.is_ready(), "{report}");
    assert!(report.events >= 10, "{report}");
    assert!(total >= during);
    let after = stack.register("after rebuild").await;
    assert_eq!(stack.decision(&after).await["status"], "applied");
    let pool = stack.db.pool().await;
    let rebuild_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM public.projector_offsets WHERE owner = 'rebuild'")
            .fetch_one(&pool)
            .await
            .expect("offsets");
    assert_eq!(
        rebuild_rows, 0,
        "the live read model's offsets are not the rebuild's"
    );
    pool.close().await;
    stack.db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_generation_removes_it_and_refuses_public_and_the_active_one() {
    let stack = Stack::start().await;
    let ada = stack.register("Ada").await;
    stack.publish(&ada.aggregate_id, "hello").await;
    stack.wait_caught_up().await;
    assert!(run_rebuild(&stack, &[]).await.is_ready());
    assert!(run_rebuild(&stack, &[]).await.is_ready());
    let config = config(&stack, &["generations"]);

    let refused = generations::drop_generation(&config, "public")
        .await
        .expect("answers");
    assert!(
        matches!(refused, Err(DropRefused::NotAGeneration(_))),
        "{refused:?}"
    );
    let refused = generations::drop_generation(&config, "generation_9")
        .await
        .expect("answers");
    assert!(
        matches!(refused, Err(DropRefused::Unknown(_))),
        "{refused:?}"
    );
    let pool = stack.db.pool().await;
    projector::switch::switch(&config, "generation_2", std::future::pending())
        .await
        .expect("switch runs")
        .expect("generation_2 is ready");
    let refused = generations::drop_generation(&config, "public")
        .await
        .expect("answers");
    assert!(
        matches!(refused, Err(DropRefused::NotAGeneration(_))),
        "public, retired, is kept: {refused:?}"
    );
    let refused = generations::drop_generation(&config, "generation_2")
        .await
        .expect("answers");
    assert!(
        matches!(refused, Err(DropRefused::Active(_))),
        "{refused:?}"
    );
    assert!(schema_exists(&stack, "generation_2").await);

    generations::drop_generation(&config, "generation_1")
        .await
        .expect("answers")
        .expect("dropped");
    assert!(!schema_exists(&stack, "generation_1").await);
    let names: Vec<String> = catalogue(&stack)
        .await
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, ["public", "generation_2"]);
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM public.users")
        .fetch_one(&pool)
        .await
        .expect("live users");
    assert_eq!(users, 1, "the retired read model is untouched");
    pool.close().await;
    stack.db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_0_ready_1_different_2_cannot_3_stopped_and_switches() {
    let stack = Stack::start().await;
    let ada = stack.register("Ada").await;
    stack.publish(&ada.aggregate_id, "hello").await;
    stack.wait_caught_up().await;
    let run = |args: &[&str], topic: String| {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let database_url = stack.db.url.clone();
        let brokers = stack.brokers.clone();
        async move {
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_projector"))
                .args(&args)
                .env("DATABASE_URL", database_url)
                .env("KAFKA_BROKERS", brokers)
                .env("KAFKA_TOPIC", topic)
                .env("RUST_LOG", "warn")
                .kill_on_drop(true)
                .output()
                .await
                .expect("projector runs");
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
            )
        }
    };
    let topic = stack.topic.clone();

    let (code, stdout) = run(&["rebuild", "--max-events=1"], topic.clone()).await;
    assert_eq!(code, Some(3), "{stdout}");
    assert!(stdout.contains("STOPPED"), "{stdout}");

    let (code, stdout) = run(&["rebuild"], topic.clone()).await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("READY") && stdout.contains("generation_1"),
        "{stdout}"
    );
    assert!(stdout.contains("(resumed)"), "{stdout}");

    let pool = stack.db.pool().await;
    sqlx::query("UPDATE posts SET title = 'tampered'")
        .execute(&pool)
        .await
        .expect("tamper with the live read model");
    let (code, stdout) = run(&["rebuild"], topic.clone()).await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("DIFFERENT") && stdout.contains("tampered"),
        "{stdout}"
    );

    let (code, stdout) = run(&["generations"], topic.clone()).await;
    assert_eq!(code, Some(0), "{stdout}");
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().take(3).collect())
        .collect();
    assert_eq!(
        lines,
        [
            ["public", "active", "2"],
            ["generation_1", "ready", "2"],
            ["generation_2", "failed", "2"]
        ],
        "{stdout}"
    );

    let (code, stdout) = run(&["rebuild"], test_support::unique_topic("missing")).await;
    assert_eq!(code, Some(2), "{stdout}");
    assert!(stdout.contains("could not rebuild"), "{stdout}");

    let (code, stdout) = run(&["drop-generation", "public"], topic.clone()).await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("refused"), "{stdout}");
    let (code, stdout) = run(&["drop-generation", "generation_2"], topic.clone()).await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(!schema_exists(&stack, "generation_2").await);

    let (code, stdout) = run(&["switch", "generation_7"], topic.clone()).await;
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("refused"), "{stdout}");
    let (code, stdout) = run(
        &["switch", "generation_1"],
        test_support::unique_topic("missing"),
    )
    .await;
    assert_eq!(code, Some(2), "{stdout}");
    assert!(stdout.contains("could not switch"), "{stdout}");
    let (code, stdout) = run(&["switch", "generation_1"], topic.clone()).await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("SWITCHED: generation_1 is active"),
        "{stdout}"
    );
    pool.close().await;
    stack.db.drop_database().await;
}
