//! `projector switch`: a ready generation becomes the active one, and the live projector and
//! the query API follow it: writes are decided into the new generation, reads and token reads
//! are answered from it, a token issued before the switch is honoured after it, and under a
//! steady stream of writes and token reads no read fails or is stale. A second rebuild is verified
//! against the active generation and switched to the same way. Switching to a generation
//! that is not ready is refused.

use reqwest::StatusCode;

use projector::generations::{self, GenerationState};
use projector::switch::{SwitchRefused, switch};

use crate::rebuild::{catalogue, config, run_rebuild};
use crate::stack::{ReadYourWritesLoad, Stack, end_offsets};
use crate::verify::mixed_history;

async fn users_in(stack: &Stack, schema: &str) -> i64 {
    let pool = stack.db.pool().await;
    let count = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.users"))
        .fetch_one(&pool)
        .await
        .expect("count users");
    pool.close().await;
    count
}

async fn run_switch(stack: &Stack, name: &str) -> projector::switch::SwitchReport {
    let config = config(stack, &["switch", name]);
    switch(&config, name, std::future::pending())
        .await
        .expect("switch runs")
        .expect("switch is not refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_switch_writes_and_reads_go_to_the_new_generation() {
    let stack = Stack::start().await;
    mixed_history(&stack).await;
    stack.wait_caught_up().await;
    assert!(run_rebuild(&stack, &[]).await.is_ready());

    // Decided after the rebuild, so the switch has to catch the generation up.
    let before = stack.register("before the switch").await;
    stack.decision(&before).await;
    let decided = end_offsets(&stack.brokers, &stack.topic);
    // Maybe not decided yet when the switch happens.
    let racing = stack.register("just before the switch").await;
    let report = run_switch(&stack, "generation_1").await;
    println!("{report}");
    assert_eq!(
        (report.from.as_str(), report.to.as_str()),
        ("public", "generation_1")
    );
    assert!(report.events_projected >= 1, "{report}");
    assert!(
        decided
            .iter()
            .all(|(p, o)| report.offsets.get(p).copied().unwrap_or(0) >= *o),
        "switched at the live position ({:?}), which covers every decided write ({decided:?})",
        report.offsets
    );

    // Tokens issued before the switch, read right after it.
    for (accepted, name) in [
        (&before, "before the switch"),
        (&racing, "just before the switch"),
    ] {
        let (status, body) = stack
            .read(
                &format!("/v1/users/{}", accepted.aggregate_id),
                Some(&accepted.token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["display_name"], name);
    }

    let listed = catalogue(&stack).await;
    let states: Vec<(&str, GenerationState)> =
        listed.iter().map(|g| (g.name.as_str(), g.state)).collect();
    assert_eq!(
        states,
        [
            ("public", GenerationState::Retired),
            ("generation_1", GenerationState::Active)
        ]
    );

    let public_users = users_in(&stack, "public").await;
    let new_users = users_in(&stack, "generation_1").await;
    assert!(
        public_users <= new_users,
        "the new generation has whatever the retired one has, and what came after the switch"
    );
    let after = stack.register("after the switch").await;
    assert_eq!(stack.decision(&after).await["status"], "applied");
    let (status, body) = stack
        .read(
            &format!("/v1/users/{}", after.aggregate_id),
            Some(&after.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["display_name"], "after the switch");
    assert_eq!(
        users_in(&stack, "generation_1").await,
        new_users + 1,
        "decided into the new generation"
    );
    assert_eq!(
        users_in(&stack, "public").await,
        public_users,
        "the retired generation no longer changes"
    );

    // The active generation is never dropped; the retired one is kept until asked.
    let config = config(&stack, &["generations"]);
    let refused = generations::drop_generation(&config, "generation_1")
        .await
        .expect("answers");
    assert!(refused.is_err(), "the active generation is not dropped");
    stack.db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_fails_or_is_stale_while_the_services_switch() {
    let stack = Stack::start().await;
    let mut load = ReadYourWritesLoad::start(&stack);
    load.wait_for(10).await;
    assert!(run_rebuild(&stack, &["--batch-size=2"]).await.is_ready());
    let at_switch = load.so_far();
    let report = run_switch(&stack, "generation_1").await;
    println!("{report}");
    load.wait_for(at_switch + 10).await;
    let total = load.stop().await;

    assert!(total >= at_switch + 10);
    stack.wait_caught_up().await;
    assert_eq!(
        users_in(&stack, "generation_1").await,
        total as i64,
        "every write, in the new generation"
    );
    assert!(
        users_in(&stack, "public").await < total as i64,
        "the writes after the switch are not in the retired generation"
    );
    stack.db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_ready_generation_can_be_switched_to() {
    let stack = Stack::start().await;
    let ada = stack.register("Ada").await;
    stack.publish(&ada.aggregate_id, "hello").await;
    stack.wait_caught_up().await;
    let config = config(&stack, &["generations"]);
    let refusal = |name: &'static str| {
        let config = config.clone();
        async move {
            switch(&config, name, std::future::pending())
                .await
                .expect("answers")
                .expect_err("refused")
        }
    };

    assert!(matches!(
        refusal("public").await,
        SwitchRefused::NotAGeneration(_)
    ));
    assert!(matches!(
        refusal("generation_7").await,
        SwitchRefused::Unknown(_)
    ));
    let stopped = run_rebuild(&stack, &["--batch-size=1", "--max-events=1"]).await;
    assert_eq!(stopped.state, GenerationState::Building);
    let refused = refusal("generation_1").await;
    assert!(
        matches!(
            refused,
            SwitchRefused::NotReady {
                state: GenerationState::Building,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(run_rebuild(&stack, &[]).await.is_ready());
    run_switch(&stack, "generation_1").await;
    let refused = refusal("generation_1").await;
    assert!(
        matches!(
            refused,
            SwitchRefused::NotReady {
                state: GenerationState::Active,
                ..
            }
        ),
        "{refused:?}"
    );

    let listed = catalogue(&stack).await;
    let states: Vec<(&str, GenerationState)> =
        listed.iter().map(|g| (g.name.as_str(), g.state)).collect();
    assert_eq!(
        states,
        [
            ("public", GenerationState::Retired),
            ("generation_1", GenerationState::Active)
        ]
    );
    stack.db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_rebuild_is_verified_against_the_active_generation_and_switched_to() {
    let stack = Stack::start().await;
    mixed_history(&stack).await;
    stack.wait_caught_up().await;
    assert!(run_rebuild(&stack, &[]).await.is_ready());
    run_switch(&stack, "generation_1").await;
    let between = stack.register("between the switches").await;
    assert_eq!(stack.decision(&between).await["status"], "applied");

    // Verified against generation_1, which has the write public never saw.
    let second = run_rebuild(&stack, &[]).await;
    assert!(second.is_ready(), "{second}");
    assert_eq!(second.generation, "generation_2");
    let report = run_switch(&stack, "generation_2").await;
    assert_eq!(
        (report.from.as_str(), report.to.as_str()),
        ("generation_1", "generation_2")
    );
    assert!(report.to_string().contains("drop-generation generation_1"));

    let at_switch = users_in(&stack, "generation_1").await;
    let after = stack.register("after the second switch").await;
    let (status, body) = stack
        .read(
            &format!("/v1/users/{}", after.aggregate_id),
            Some(&after.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["display_name"], "after the second switch");
    assert_eq!(users_in(&stack, "generation_2").await, at_switch + 1);
    assert_eq!(users_in(&stack, "generation_1").await, at_switch);

    let states: Vec<(String, GenerationState)> = catalogue(&stack)
        .await
        .into_iter()
        .map(|g| (g.name, g.state))
        .collect();
    assert_eq!(
        states,
        [
            ("public".to_owned(), GenerationState::Retired),
            ("generation_1".to_owned(), GenerationState::Retired),
            ("generation_2".to_owned(), GenerationState::Active)
        ]
    );
    let config = config(&stack, &["generations"]);
    generations::drop_generation(&config, "generation_1")
        .await
        .expect("answers")
        .expect("a retired generation is dropped");
    stack.db.drop_database().await;
}
