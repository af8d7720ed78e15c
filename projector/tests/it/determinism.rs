//! Property: projecting the same log twice gives the same read model, versions and decisions,
//! however the live run was cut into batches, interleaved across partitions, or re-claimed.
//!
//! Random command sequences over a few users and posts (registrations, profile updates, posts,
//! edits and deletes, with right, wrong and absent `If-Match`, verbatim retries and reused
//! idempotency keys) become a log. The live run feeds it to the real [`Store`] in random batches,
//! bumping its claim now and then as a takeover would and taking the record-by-record slow path
//! for those batches; the rebuild projects it in one pass into
//! a fresh database. Both run on a real PostgreSQL.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use events::{
    Envelope, Event, Idempotency, PostEdited, PostFormat, PostPublished, UserProfileUpdated,
    UserRegistered,
};
use projector::ownership::Claim;
use projector::record::Record;
use projector::store::Store;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use test_support::TestDb;
use uuid::Uuid;

use crate::stack::snapshot;

const USERS: u8 = 3;
const POSTS_PER_USER: u8 = 3;
const TOPIC: &str = "determinism";

/// One command of the random sequence. `u` and `p` pick among a few users and posts, so that
/// commands collide: conflicts, missing targets and deleted parents are the point.
#[derive(Debug, Clone)]
enum Op {
    Register {
        u: u8,
    },
    UpdateProfile {
        u: u8,
        if_match: Option<i64>,
    },
    DeleteUser {
        u: u8,
        if_match: Option<i64>,
    },
    Publish {
        u: u8,
        p: u8,
    },
    EditPost {
        u: u8,
        p: u8,
        if_match: Option<i64>,
    },
    DeletePost {
        u: u8,
        p: u8,
        if_match: Option<i64>,
    },
    /// The record of an earlier command appended again (a client retry with its key).
    Retry {
        earlier: usize,
    },
    /// An earlier command's idempotency key with another request.
    ReuseKey {
        earlier: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let u = 0..USERS;
    let p = 0..POSTS_PER_USER;
    let if_match = proptest::option::of(1..4i64);
    prop_oneof![
        3 => u.clone().prop_map(|u| Op::Register { u }),
        3 => (u.clone(), if_match.clone()).prop_map(|(u, if_match)| Op::UpdateProfile { u, if_match }),
        1 => (u.clone(), if_match.clone()).prop_map(|(u, if_match)| Op::DeleteUser { u, if_match }),
        4 => (u.clone(), p.clone()).prop_map(|(u, p)| Op::Publish { u, p }),
        3 => (u.clone(), p.clone(), if_match.clone()).prop_map(|(u, p, if_match)| Op::EditPost { u, p, if_match }),
        2 => (u, p, if_match).prop_map(|(u, p, if_match)| Op::DeletePost { u, p, if_match }),
        1 => any::<usize>().prop_map(|earlier| Op::Retry { earlier }),
        1 => any::<usize>().prop_map(|earlier| Op::ReuseKey { earlier }),
    ]
}

fn user_id(u: u8) -> Uuid {
    Uuid::from_u128(0x1000 + u128::from(u))
}

fn post_id(u: u8, p: u8) -> Uuid {
    Uuid::from_u128(0x2000 + u128::from(u) * 16 + u128::from(p))
}

/// The log the commands become: per op one record, keyed (and partitioned) by user.
fn log_of(ops: &[Op]) -> Vec<Record> {
    let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().expect("time");
    let mut envelopes: Vec<Envelope> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let command_id = Uuid::from_u128(0x3000 + i as u128);
        let base = |user: Uuid, aggregate_id: Uuid, expected_version: Option<i64>, event: Event| {
            Envelope {
                event_id: Uuid::from_u128(0x4000 + i as u128),
                aggregate_id,
                partition_key: user,
                command_id,
                idempotency: Some(Idempotency {
                    scope: if event.is_creation() && aggregate_id == user {
                        Uuid::nil()
                    } else {
                        user
                    },
                    key: format!("k{i}"),
                }),
                expected_version,
                accepted_at: start + Duration::milliseconds(i as i64),
                event,
            }
        };
        let envelope = match op.clone() {
            Op::Register { u } => base(
                user_id(u),
                user_id(u),
                None,
                Event::UserRegistered(UserRegistered {
                    display_name: format!("user {u}"),
                    bio: None,
                }),
            ),
            Op::UpdateProfile { u, if_match } => base(
                user_id(u),
                user_id(u),
                if_match,
                Event::UserProfileUpdated(UserProfileUpdated {
                    display_name: None,
                    bio: Some(format!("bio {i}")),
                }),
            ),
            Op::DeleteUser { u, if_match } => {
                base(user_id(u), user_id(u), if_match, Event::UserDeleted)
            }
            Op::Publish { u, p } => base(
                user_id(u),
                post_id(u, p),
                None,
                Event::PostPublished(PostPublished {
                    title: format!("post {i}"),
                    body: "body".into(),
                    format: PostFormat::Plain,
                }),
            ),
            Op::EditPost { u, p, if_match } => base(
                user_id(u),
                post_id(u, p),
                if_match,
                Event::PostEdited(PostEdited {
                    title: Some(format!("edit {i}")),
                    body: None,
                }),
            ),
            Op::DeletePost { u, p, if_match } => {
                base(user_id(u), post_id(u, p), if_match, Event::PostDeleted)
            }
            Op::Retry { earlier } if i > 0 => envelopes[earlier % i].clone(),
            Op::ReuseKey { earlier } if i > 0 => {
                let mut reused = envelopes[earlier % i].clone();
                reused.command_id = command_id;
                reused.event_id = Uuid::from_u128(0x4000 + i as u128);
                reused.accepted_at = start + Duration::milliseconds(i as i64);
                reused
            }
            Op::Retry { .. } | Op::ReuseKey { .. } => {
                base(user_id(0), user_id(0), None, Event::UserDeleted)
            }
        };
        envelopes.push(envelope);
    }
    let mut next_offset = BTreeMap::<i32, i64>::new();
    envelopes
        .iter()
        .map(|e| {
            let partition = (e.partition_key.as_u128() - 0x1000) as i32;
            let offset = next_offset.entry(partition).or_default();
            let record = Record {
                partition,
                offset: *offset,
                key: Some(e.partition_key.to_string().into_bytes()),
                payload: Some(e.encode()),
                headers: Vec::new(),
            };
            *offset += 1;
            record
        })
        .collect()
}

async fn store_on(db: &TestDb) -> Store {
    let store = Store::connect_lazy(&db.url, TOPIC, 2).expect("pool");
    store.migrate().await.expect("migrate");
    store
}

/// The live run: batches cut at `cuts`, every `takeover`-th batch projected on the slow path
/// (record by record, in savepoints) and preceded by a fresh claim
/// (as when another instance takes the partitions over and resumes from the stored offsets).
async fn live_run(
    store: &Store,
    log: &[Record],
    cuts: &[usize],
    takeover: usize,
) -> Result<(), TestCaseError> {
    let partitions: Vec<i32> = (0..i32::from(USERS)).collect();
    let mut claims = store.claim(&partitions, "live").await.expect("claim");
    let mut rest = log;
    let mut batch_number = 0;
    while !rest.is_empty() {
        let size = cuts
            .get(batch_number % cuts.len().max(1))
            .copied()
            .unwrap_or(1)
            .clamp(1, rest.len());
        let (batch, after) = rest.split_at(size);
        if batch_number % takeover == takeover - 1 {
            claims = store.claim(&partitions, "live").await.expect("re-claim");
        }
        let outcome = store
            .commit_batch(batch, &claims, batch_number % takeover == takeover - 1)
            .await
            .expect("commit");
        prop_assert!(outcome.fenced.is_empty(), "the only owner was fenced");
        prop_assert_eq!(outcome.dead_letters, 0);
        for (partition, next_offset) in outcome.committed {
            if let Some(claim) = claims.get_mut(&partition) {
                *claim = Claim {
                    next_offset,
                    ..*claim
                };
            }
        }
        rest = after;
        batch_number += 1;
    }
    Ok(())
}

async fn rebuild(store: &Store, log: &[Record]) {
    let partitions: Vec<i32> = (0..i32::from(USERS)).collect();
    let claims = store.claim(&partitions, "rebuild").await.expect("claim");
    store
        .commit_batch(log, &claims, false)
        .await
        .expect("one-pass commit");
}

async fn check(ops: Vec<Op>, cuts: Vec<usize>, takeover: usize) -> Result<(), TestCaseError> {
    let log = log_of(&ops);
    let (live_db, rebuilt_db) = (TestDb::create().await, TestDb::create().await);
    let live = store_on(&live_db).await;
    live_run(&live, &log, &cuts, takeover).await?;
    let rebuilt = store_on(&rebuilt_db).await;
    rebuild(&rebuilt, &log).await;
    let (live_rows, rebuilt_rows) = (
        snapshot(&live_db.url).await,
        snapshot(&rebuilt_db.url).await,
    );
    live.pool().close().await;
    rebuilt.pool().close().await;
    live_db.drop_database().await;
    rebuilt_db.drop_database().await;
    let commands: std::collections::BTreeSet<Uuid> = log
        .iter()
        .filter_map(|r| Envelope::decode(r.payload.as_deref()?).ok())
        .map(|e| e.command_id)
        .collect();
    prop_assert_eq!(
        live_rows["decisions"].len(),
        commands.len(),
        "every command decided once"
    );
    prop_assert_eq!(live_rows, rebuilt_rows);
    Ok(())
}

#[test]
fn a_rebuild_from_the_log_reproduces_the_live_run_exactly() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        proptest::collection::vec(op(), 1..60),
        proptest::collection::vec(1..12usize, 1..8),
        1..5usize,
    );
    let result = runner.run(&strategy, |(ops, cuts, takeover)| {
        runtime.block_on(check(ops, cuts, takeover))
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
