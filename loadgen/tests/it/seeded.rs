//! Runs against the fake of contract v1: seeding, writes with the users' bearer tokens, the
//! visibility-lag probe, and reusing a population file.

use loadgen::population::Population;
use loadgen::sampling::Rng;
use loadgen::{Operation, Report};

use crate::fake_api;
use crate::helpers::{run_config, scratch_dir};

/// A short closed-loop run with many writes, every write's lag probed.
async fn write_heavy_run(url: &str, population_file: &str) -> Report {
    let config = run_config(&[
        "--mode",
        "closed",
        "--connections",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--users",
        "20",
        "--posts",
        "100",
        "--read-ratio",
        "2",
        "--lag-sample",
        "1",
        "--seed-connections",
        "4",
        "--command-url",
        url,
        "--query-url",
        url,
        "--population-file",
        population_file,
    ]);
    loadgen::run_and_report(config, std::future::pending())
        .await
        .expect("the run completes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_run_writes_as_its_users_and_measures_the_lag() {
    let api = fake_api::start().await;
    let dir = scratch_dir("seeded");
    let file = dir.join("population.json");
    let file_arg = file.to_str().expect("utf-8 path");

    let report = write_heavy_run(&api.url, file_arg).await;

    assert_eq!(report.parameters.population, "seeded");
    for op in &report.operations {
        assert_eq!(op.errors, 0, "{}: {:?}", op.operation, op.errors_by_status);
    }
    for op in [
        Operation::ReadPost,
        Operation::CreatePost,
        Operation::EditPost,
        Operation::VisibilityLag,
    ] {
        let count = report.operation(op).map_or(0, |r| r.count);
        assert!(count > 0, "no {} in {:#?}", op.name(), report.operations);
    }
    {
        let ledger = api.ledger.lock().expect("ledger");
        assert_eq!(ledger.registrations, 20);
        assert_eq!(
            ledger.unauthorized, 0,
            "every write carried its user's token"
        );
        assert_eq!(ledger.untokened_command_reads, 0);
        assert!(ledger.edits > 0);
    }

    // The population file holds the seeded ids, tokens included, and a second run reuses it
    // without registering anyone.
    let population = Population::load(&file).expect("the population file");
    assert_eq!(population.users.len(), 20);
    assert_eq!(population.posts.len(), 100);
    assert!(
        population
            .users
            .iter()
            .all(|user| user.access_token.is_some())
    );
    let again = write_heavy_run(&api.url, file_arg).await;
    assert_eq!(again.parameters.population, "file");
    assert_eq!(api.ledger.lock().expect("ledger").registrations, 20);
    assert!(again.operations.iter().all(|op| op.errors == 0));

    // Without its tokens the same population cannot write: a writing run seeds a new one rather
    // than send writes bound to fail.
    let mut tokenless = population;
    for user in &mut tokenless.users {
        user.access_token = None;
    }
    tokenless.save(&file, &api.url).expect("save");
    let third = write_heavy_run(&api.url, file_arg).await;
    assert_eq!(third.parameters.population, "seeded");
    let ledger = api.ledger.lock().expect("ledger");
    assert_eq!(ledger.registrations, 40);
    assert_eq!(ledger.unauthorized, 0);
    drop(ledger);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_population_file_of_another_deployment_is_seeded_anew() {
    let api = fake_api::start().await;
    let dir = scratch_dir("stale");
    let file = dir.join("population.json");
    Population::made_up(5, 5, &mut Rng::new(1))
        .save(&file, "http://elsewhere:8080")
        .expect("save");

    let report = write_heavy_run(&api.url, file.to_str().expect("utf-8 path")).await;

    assert_eq!(report.parameters.population, "seeded");
    assert_eq!(report.parameters.users, 20);
    assert_eq!(api.ledger.lock().expect("ledger").registrations, 20);
    assert_eq!(
        Population::load(&file).expect("rewritten").users.len(),
        20,
        "the file now holds the new population"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
