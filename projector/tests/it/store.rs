//! The batch transaction on its own, against a real PostgreSQL: the fence, a record that
//! decodes but cannot be applied, and the progress notice.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use events::progress::{Changed, ProgressNotice};
use events::{Envelope, Event, PostEdited, PostFormat, PostPublished, UserRegistered};
use projector::ownership::Claim;
use projector::record::Record;
use projector::store::Store;
use sqlx::postgres::PgListener;
use test_support::TestDb;
use uuid::Uuid;

pub fn record(partition: i32, offset: i64, envelope: &Envelope) -> Record {
    Record {
        partition,
        offset,
        key: Some(envelope.partition_key.to_string().into_bytes()),
        payload: Some(envelope.encode()),
        headers: Vec::new(),
    }
}

fn envelope(user: Uuid, aggregate_id: Uuid, event: Event) -> Envelope {
    Envelope {
        event_id: Uuid::now_v7(),
        aggregate_id,
        partition_key: user,
        command_id: Uuid::now_v7(),
        idempotency: None,
        expected_version: None,
        accepted_at: Utc::now(),
        event,
    }
}

pub fn registered(user: Uuid) -> Envelope {
    envelope(
        user,
        user,
        Event::UserRegistered(UserRegistered {
            display_name: "u".into(),
            bio: None,
        }),
    )
}

fn published(user: Uuid, post: Uuid) -> Envelope {
    envelope(
        user,
        post,
        Event::PostPublished(PostPublished {
            title: "t".into(),
            body: "b".into(),
            format: PostFormat::Plain,
        }),
    )
}

async fn store(db: &TestDb) -> Store {
    let store = Store::connect_lazy(&db.url, "fence-topic", 2).expect("pool");
    store.migrate().await.expect("migrate");
    store
}

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_lost_its_partition_cannot_commit_or_move_the_offset() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    let old = store.claim(&[0], "old").await.expect("claim")[&0];
    let new = store.claim(&[0], "new").await.expect("claim")[&0];
    assert_eq!(
        new.epoch,
        old.epoch + 1,
        "a claim fences the previous owner"
    );

    let user = Uuid::now_v7();
    let batch = [record(0, 0, &registered(user))];
    let fenced = store
        .commit_batch(&batch, &BTreeMap::from([(0, old)]), false)
        .await
        .expect("commit");
    assert_eq!(fenced.fenced, [0]);
    assert!(fenced.committed.is_empty());
    assert_eq!(
        count(&store, "SELECT count(*) FROM users").await,
        0,
        "nothing applied"
    );
    assert_eq!(
        count(&store, "SELECT next_offset FROM projector_offsets").await,
        0,
        "offset not moved"
    );

    let done = store
        .commit_batch(&batch, &BTreeMap::from([(0, new)]), false)
        .await
        .expect("commit");
    assert_eq!(done.committed, BTreeMap::from([(0, 1)]));
    assert_eq!(done.applied, 1);
    assert_eq!(count(&store, "SELECT count(*) FROM users").await, 1);

    // The same owner with a stale position (a batch it already committed) is fenced too.
    let replayed = store
        .commit_batch(&batch, &BTreeMap::from([(0, new)]), false)
        .await
        .expect("commit");
    assert_eq!(replayed.fenced, [0]);
    assert_eq!(
        count(&store, "SELECT count(*) FROM decisions").await,
        1,
        "not decided twice"
    );
    let moved = Claim {
        next_offset: 1,
        ..new
    };
    let empty = store
        .commit_batch(&[], &BTreeMap::from([(0, moved)]), false)
        .await
        .expect("commit");
    assert!(
        empty.fenced.is_empty(),
        "the current owner at the current position is not fenced"
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_id_of_another_user_is_dead_lettered_and_the_rest_of_the_batch_commits() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    let claim = store.claim(&[0], "me").await.expect("claim")[&0];
    let (alice, bob, post) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    // Bob's post reuses the id of Alice's. Ids are chosen by the command API, so this only
    // happens to records written by something else.
    let batch = [
        record(0, 0, &registered(alice)),
        record(0, 1, &registered(bob)),
        record(0, 2, &published(alice, post)),
        record(0, 3, &published(bob, post)),
        record(0, 4, &published(bob, Uuid::now_v7())),
    ];
    let outcome = store
        .commit_batch(&batch, &BTreeMap::from([(0, claim)]), false)
        .await
        .expect("commit");
    assert_eq!(outcome.applied, 4);
    assert_eq!(outcome.dead_letters, 1);
    assert_eq!(outcome.committed, BTreeMap::from([(0, 5)]));
    let error: String = sqlx::query_scalar("SELECT error FROM dead_letters WHERE kafka_offset = 3")
        .fetch_one(store.pool())
        .await
        .expect("dead letter at offset 3");
    assert!(error.starts_with("apply failed"), "{error}");
    assert_eq!(
        count(&store, "SELECT count(*) FROM aggregate_events").await,
        4
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM aggregate_events WHERE kafka_offset = 3"
        )
        .await,
        0,
        "the dead-lettered event left no history"
    );
    assert_eq!(
        count(
            &store,
            &format!("SELECT post_count FROM users WHERE id = '{bob}'")
        )
        .await,
        1
    );
    let alices: String = sqlx::query_scalar(&format!(
        "SELECT author_id::text FROM posts WHERE id = '{post}'"
    ))
    .fetch_one(store.pool())
    .await
    .expect("post");
    assert_eq!(alices, alice.to_string(), "Alice's post is untouched");
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_that_fails_is_isolated_to_its_record_on_the_slow_path() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    let claim = store.claim(&[0], "me").await.expect("claim")[&0];
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    // A NUL character decodes as JSON but PostgreSQL text cannot hold it. The command API
    // refuses it; a record written by something else may still carry it.
    let poisoned = envelope(
        bob,
        bob,
        Event::UserRegistered(UserRegistered {
            display_name: "b\u{0}b".into(),
            bio: None,
        }),
    );
    let batch = [record(0, 0, &registered(alice)), record(0, 1, &poisoned)];
    let claims = BTreeMap::from([(0, claim)]);
    let first = store.commit_batch(&batch, &claims, false).await;
    assert!(first.is_err(), "the fast path fails as a whole");
    assert_eq!(
        count(&store, "SELECT count(*) FROM users").await,
        0,
        "and leaves nothing behind"
    );

    let outcome = store
        .commit_batch(&batch, &claims, true)
        .await
        .expect("isolated commit");
    assert_eq!(outcome.applied, 1, "counts only what committed");
    assert_eq!(outcome.dead_letters, 1);
    assert_eq!(outcome.committed, BTreeMap::from([(0, 2)]));
    assert_eq!(
        outcome.changed_owners,
        BTreeSet::from([alice]),
        "names only what committed"
    );
    let error: String = sqlx::query_scalar("SELECT error FROM dead_letters WHERE kafka_offset = 1")
        .fetch_one(store.pool())
        .await
        .expect("dead letter at offset 1");
    assert!(error.starts_with("apply failed"), "{error}");
    assert_eq!(count(&store, "SELECT count(*) FROM users").await, 1);
    assert_eq!(count(&store, "SELECT count(*) FROM decisions").await, 1);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_progress_notice_names_the_owners_and_posts_a_batch_changed() {
    let db = TestDb::create().await;
    let store = store(&db).await;
    let mut claim = store.claim(&[0], "me").await.expect("claim")[&0];
    let mut listener = PgListener::connect(&db.url).await.expect("listener");
    listener
        .listen(events::progress::CHANNEL)
        .await
        .expect("listen");
    let (alice, bob, nobody) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (first, second, orphan) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let mut batches = vec![
        // An applied event names its owner, a written post its id; a rejected event (a post of
        // a user who never registered) names nothing.
        vec![
            registered(alice),
            published(alice, first),
            published(alice, second),
            registered(bob),
            published(nobody, orphan),
        ],
        // An edit names the post and its owner.
        vec![envelope(
            alice,
            first,
            Event::PostEdited(PostEdited {
                title: Some("t2".into()),
                body: None,
            }),
        )],
        // A deletion hides every post of the user without naming them: the owner covers them.
        vec![envelope(alice, alice, Event::UserDeleted)],
        // Only rejections: nothing changed.
        vec![registered(bob)],
    ];
    // More than a NOTIFY payload can name.
    batches.push((0..300).map(|_| registered(Uuid::now_v7())).collect());
    let mut expected = vec![
        Some(Changed {
            owners: sorted([alice, bob]),
            posts: sorted([first, second]),
        }),
        Some(Changed {
            owners: vec![alice],
            posts: vec![first],
        }),
        Some(Changed {
            owners: vec![alice],
            posts: vec![],
        }),
        Some(Changed::default()),
        None,
    ]
    .into_iter();

    for batch in batches {
        let records: Vec<Record> = batch
            .iter()
            .enumerate()
            .map(|(n, e)| record(0, claim.next_offset + n as i64, e))
            .collect();
        let outcome = store
            .commit_batch(&records, &BTreeMap::from([(0, claim)]), false)
            .await
            .expect("commit");
        claim.next_offset = outcome.committed[&0];
        let notification = listener.recv().await.expect("a notice");
        let payload = notification.payload();
        assert!(payload.len() < 8000, "{}", payload.len());
        let notice: ProgressNotice = serde_json::from_str(payload).expect("a progress notice");
        assert_eq!(notice.offsets, [(0, claim.next_offset)]);
        assert_eq!(notice.changed, expected.next().expect("an expectation"));
    }
    db.drop_database().await;
}

fn sorted<const N: usize>(ids: [Uuid; N]) -> Vec<Uuid> {
    BTreeSet::from(ids).into_iter().collect()
}

/// The status page's figures of one partition: log end, applied, the four rejections by
/// reason, dead letters.
async fn partition_figures(store: &Store, partition: i32) -> (Option<i64>, i64, [i64; 4], i64) {
    let row: (Option<i64>, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT log_end_offset, applied, rejected_version_conflict, rejected_not_found,
                rejected_already_exists, rejected_idempotency_key_reused, dead_letters
         FROM projector_offsets WHERE partition = $1",
    )
    .bind(partition)
    .fetch_one(store.pool())
    .await
    .expect("offsets row");
    (row.0, row.1, [row.2, row.3, row.4, row.5], row.6)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_adds_its_decisions_and_dead_letters_to_its_partitions_counts_with_the_log_end() {
    let db = TestDb::create().await;
    let log_ends = projector::log_ends::LogEnds::default();
    let store = store(&db).await.with_log_ends(log_ends.clone());
    let claims = store.claim(&[0, 1], "me").await.expect("claim");
    let (ada, bo) = (Uuid::now_v7(), Uuid::now_v7());
    let ada_again = registered(ada);
    let garbage = Record {
        payload: Some(b"not an event".to_vec()),
        ..record(1, 1, &registered(bo))
    };
    // Partition 0: a sign-up, the same user signed up again (already_exists), and the first
    // command appended twice (a duplicate, which is no decision). Partition 1: a sign-up and
    // a record that is not an event.
    let first = registered(ada);
    let batch = [
        record(0, 0, &first),
        record(0, 1, &ada_again),
        record(0, 2, &first),
        record(1, 0, &registered(bo)),
        garbage,
    ];
    // The broker said partition 0 ends at 10; nothing about partition 1.
    log_ends.lock().expect("lock").insert(0, 10);
    let done = store
        .commit_batch(&batch, &claims, false)
        .await
        .expect("commit");
    assert_eq!(done.committed, BTreeMap::from([(0, 3), (1, 2)]));
    assert_eq!(
        partition_figures(&store, 0).await,
        (Some(10), 1, [0, 0, 1, 0], 0)
    );
    assert_eq!(
        partition_figures(&store, 1).await,
        (Some(2), 1, [0; 4], 1),
        "no log end heard: the next offset, never less"
    );

    // The counts are running sums; a log end heard before the batch's own records never
    // puts the partition behind its offset.
    let mut claims = claims;
    for (partition, next) in &done.committed {
        claims.get_mut(partition).expect("claimed").next_offset = *next;
    }
    let more: Vec<Record> = (3..13)
        .map(|o| record(0, o, &registered(Uuid::now_v7())))
        .collect();
    let done = store
        .commit_batch(&more, &claims, false)
        .await
        .expect("commit");
    assert_eq!(done.committed, BTreeMap::from([(0, 13)]));
    assert_eq!(
        partition_figures(&store, 0).await,
        (Some(13), 11, [0, 0, 1, 0], 0)
    );
    db.drop_database().await;
}

/// PostgreSQL switches a prepared statement to a generic plan after five runs and keeps it
/// until its tables are analyzed again; a batch's lookups by arrays of ids must be planned for
/// each batch instead (a generic plan made while `decisions` was small scanned the whole table
/// for every batch as it grew, 22 ms a batch at 100,000 decisions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_plans_its_statements_for_its_own_ids() {
    let db = TestDb::create().await;
    // One connection, so that every batch runs on the same prepared statements.
    let store = Store::connect_lazy(&db.url, "plans-topic", 1).expect("pool");
    store.migrate().await.expect("migrate");
    let mut claims = store.claim(&[0], "owner").await.expect("claim");
    for _ in 0..8 {
        let next = claims[&0].next_offset;
        let batch: Vec<Record> = (next..next + 3)
            .map(|offset| record(0, offset, &registered(Uuid::now_v7())))
            .collect();
        let done = store
            .commit_batch(&batch, &claims, false)
            .await
            .expect("commit");
        claims.get_mut(&0).expect("claimed").next_offset = done.committed[&0];
    }
    let plans: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements
         WHERE cardinality(parameter_types) > 0 AND statement NOT LIKE '%pg_prepared_statements%'",
    )
    .fetch_all(store.pool())
    .await
    .expect("prepared statements");
    assert!(
        plans.iter().any(|(_, _, custom)| *custom >= 8),
        "the batches' statements ran on this connection: {plans:#?}"
    );
    let generic: Vec<_> = plans
        .iter()
        .filter(|(_, generic, _)| *generic > 0)
        .collect();
    assert!(generic.is_empty(), "ran with a generic plan: {generic:#?}");
    db.drop_database().await;
}
