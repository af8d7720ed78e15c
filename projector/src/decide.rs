//! The decision: a pure function of the read model's state and one event.
//!
//! Every rule of contract v1 lives here and nowhere else. The projector loads a [`Given`] for the
//! event from the read model, asks [`decide`], and applies the answer. Because `decide` does no
//! IO and reads only state that the event's own partition wrote, replaying the log in order
//! reproduces every decision exactly.

use events::{Envelope, Event};
use uuid::Uuid;

/// The read model's state that an event is decided against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given {
    /// The event's command was decided before: this record is a retry of it.
    pub already_decided: bool,
    /// The command that first used this event's idempotency key in its scope, if any.
    pub key_holder: Option<Uuid>,
    /// The user that owns the event's partition key.
    pub user: Option<Aggregate>,
    /// For post events: the post with the event's aggregate id, if it belongs to that user.
    /// A post of another user is `None`: it is not this user's, whatever its state.
    pub post: Option<Aggregate>,
}

/// What the decision needs to know of a user or a post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aggregate {
    pub version: i64,
    pub deleted: bool,
}

impl Aggregate {
    pub fn live(version: i64) -> Self {
        Aggregate {
            version,
            deleted: false,
        }
    }

    pub fn deleted(version: i64) -> Self {
        Aggregate {
            version,
            deleted: true,
        }
    }
}

/// Why an event was rejected. The names are the contract's `reason` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    VersionConflict,
    NotFound,
    AlreadyExists,
    IdempotencyKeyReused,
}

impl Reason {
    /// Every reason, for metrics that show each one from the start.
    pub const ALL: [Reason; 4] = [
        Reason::VersionConflict,
        Reason::NotFound,
        Reason::AlreadyExists,
        Reason::IdempotencyKeyReused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::VersionConflict => "version_conflict",
            Reason::NotFound => "not_found",
            Reason::AlreadyExists => "already_exists",
            Reason::IdempotencyKeyReused => "idempotency_key_reused",
        }
    }
}

/// What happens to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The event changes the read model; its aggregate is at `version` afterwards.
    Applied { version: i64 },
    /// The event changes nothing but its recorded decision.
    Rejected(Reason),
    /// Its command was already decided (a retried append): nothing happens, nothing is recorded.
    Duplicate,
}

/// Decides one event against the state it finds.
pub fn decide(given: &Given, event: &Envelope) -> Decision {
    if given.already_decided {
        return Decision::Duplicate;
    }
    if given
        .key_holder
        .is_some_and(|holder| holder != event.command_id)
    {
        return Decision::Rejected(Reason::IdempotencyKeyReused);
    }
    let live_user = given.user.filter(|u| !u.deleted);
    match &event.event {
        Event::UserRegistered(_) => match given.user {
            Some(_) => Decision::Rejected(Reason::AlreadyExists),
            None => Decision::Applied { version: 1 },
        },
        Event::UserProfileUpdated(_) | Event::UserDeleted => {
            change(live_user, event.expected_version)
        }
        Event::PostPublished(_) => match (live_user, given.post) {
            (None, _) => Decision::Rejected(Reason::NotFound),
            (Some(_), Some(_)) => Decision::Rejected(Reason::AlreadyExists),
            (Some(_), None) => Decision::Applied { version: 1 },
        },
        Event::PostEdited(_) | Event::PostDeleted => match live_user {
            None => Decision::Rejected(Reason::NotFound),
            Some(_) => change(given.post.filter(|p| !p.deleted), event.expected_version),
        },
    }
}

/// An update or delete of an existing aggregate, with the optional `If-Match` check.
fn change(target: Option<Aggregate>, expected_version: Option<i64>) -> Decision {
    match target {
        None => Decision::Rejected(Reason::NotFound),
        Some(a) if expected_version.is_some_and(|v| v != a.version) => {
            Decision::Rejected(Reason::VersionConflict)
        }
        Some(a) => Decision::Applied {
            version: a.version + 1,
        },
    }
}

#[cfg(test)]
mod tests {
    //! Given / when / then, one test per rule of the contract.

    use super::*;
    use chrono::Utc;
    use events::{
        Idempotency, PostEdited, PostFormat, PostPublished, UserProfileUpdated, UserRegistered,
    };

    fn envelope(event: Event) -> Envelope {
        let user = Uuid::now_v7();
        Envelope {
            event_id: Uuid::now_v7(),
            aggregate_id: if event.aggregate_type() == events::AggregateType::User {
                user
            } else {
                Uuid::now_v7()
            },
            partition_key: user,
            command_id: Uuid::now_v7(),
            idempotency: None,
            expected_version: None,
            accepted_at: Utc::now(),
            event,
        }
    }

    fn registered() -> Envelope {
        envelope(Event::UserRegistered(UserRegistered {
            display_name: "Ada".into(),
            bio: None,
        }))
    }
    fn profile_updated(expected: Option<i64>) -> Envelope {
        let mut e = envelope(Event::UserProfileUpdated(UserProfileUpdated {
            display_name: Some("B".into()),
            bio: None,
        }));
        e.expected_version = expected;
        e
    }
    fn user_deleted(expected: Option<i64>) -> Envelope {
        let mut e = envelope(Event::UserDeleted);
        e.expected_version = expected;
        e
    }
    fn published() -> Envelope {
        envelope(Event::PostPublished(PostPublished {
            title: "t".into(),
            body: "b".into(),
            format: PostFormat::Plain,
        }))
    }
    fn edited(expected: Option<i64>) -> Envelope {
        let mut e = envelope(Event::PostEdited(PostEdited {
            title: Some("t2".into()),
            body: None,
        }));
        e.expected_version = expected;
        e
    }
    fn post_deleted(expected: Option<i64>) -> Envelope {
        let mut e = envelope(Event::PostDeleted);
        e.expected_version = expected;
        e
    }

    fn given_user(user: Aggregate) -> Given {
        Given {
            user: Some(user),
            ..Given::default()
        }
    }
    fn given_post(user: Aggregate, post: Aggregate) -> Given {
        Given {
            user: Some(user),
            post: Some(post),
            ..Given::default()
        }
    }

    #[test]
    fn registering_a_new_user_applies_at_version_1() {
        assert_eq!(
            decide(&Given::default(), &registered()),
            Decision::Applied { version: 1 }
        );
    }

    #[test]
    fn registering_an_existing_or_deleted_user_is_already_exists() {
        for user in [Aggregate::live(3), Aggregate::deleted(4)] {
            assert_eq!(
                decide(&given_user(user), &registered()),
                Decision::Rejected(Reason::AlreadyExists)
            );
        }
    }

    #[test]
    fn updating_or_deleting_a_live_user_bumps_its_version() {
        let given = given_user(Aggregate::live(2));
        assert_eq!(
            decide(&given, &profile_updated(None)),
            Decision::Applied { version: 3 }
        );
        assert_eq!(
            decide(&given, &user_deleted(None)),
            Decision::Applied { version: 3 }
        );
    }

    #[test]
    fn updating_or_deleting_an_unknown_or_deleted_user_is_not_found() {
        for given in [Given::default(), given_user(Aggregate::deleted(2))] {
            assert_eq!(
                decide(&given, &profile_updated(None)),
                Decision::Rejected(Reason::NotFound)
            );
            assert_eq!(
                decide(&given, &user_deleted(None)),
                Decision::Rejected(Reason::NotFound)
            );
        }
    }

    #[test]
    fn if_match_must_name_the_current_version() {
        let given = given_user(Aggregate::live(2));
        assert_eq!(
            decide(&given, &profile_updated(Some(2))),
            Decision::Applied { version: 3 }
        );
        assert_eq!(
            decide(&given, &profile_updated(Some(1))),
            Decision::Rejected(Reason::VersionConflict)
        );
        assert_eq!(
            decide(&given, &user_deleted(Some(3))),
            Decision::Rejected(Reason::VersionConflict)
        );
        let post = given_post(Aggregate::live(1), Aggregate::live(5));
        assert_eq!(
            decide(&post, &edited(Some(5))),
            Decision::Applied { version: 6 }
        );
        assert_eq!(
            decide(&post, &edited(Some(4))),
            Decision::Rejected(Reason::VersionConflict)
        );
        assert_eq!(
            decide(&post, &post_deleted(Some(6))),
            Decision::Rejected(Reason::VersionConflict)
        );
    }

    #[test]
    fn not_found_wins_over_a_version_conflict() {
        assert_eq!(
            decide(
                &given_user(Aggregate::deleted(2)),
                &profile_updated(Some(1))
            ),
            Decision::Rejected(Reason::NotFound)
        );
    }

    #[test]
    fn publishing_under_a_live_user_applies_at_version_1() {
        assert_eq!(
            decide(&given_user(Aggregate::live(1)), &published()),
            Decision::Applied { version: 1 }
        );
    }

    #[test]
    fn publishing_under_an_unknown_or_deleted_user_is_not_found() {
        for given in [Given::default(), given_user(Aggregate::deleted(2))] {
            assert_eq!(
                decide(&given, &published()),
                Decision::Rejected(Reason::NotFound)
            );
        }
    }

    #[test]
    fn publishing_an_existing_post_id_is_already_exists() {
        let given = given_post(Aggregate::live(1), Aggregate::deleted(2));
        assert_eq!(
            decide(&given, &published()),
            Decision::Rejected(Reason::AlreadyExists)
        );
    }

    #[test]
    fn editing_or_deleting_a_live_post_bumps_its_version() {
        let given = given_post(Aggregate::live(1), Aggregate::live(1));
        assert_eq!(
            decide(&given, &edited(None)),
            Decision::Applied { version: 2 }
        );
        assert_eq!(
            decide(&given, &post_deleted(None)),
            Decision::Applied { version: 2 }
        );
    }

    #[test]
    fn editing_or_deleting_a_missing_deleted_or_foreign_post_is_not_found() {
        let missing = given_user(Aggregate::live(1));
        let deleted = given_post(Aggregate::live(1), Aggregate::deleted(2));
        for given in [missing, deleted] {
            assert_eq!(
                decide(&given, &edited(None)),
                Decision::Rejected(Reason::NotFound)
            );
            assert_eq!(
                decide(&given, &post_deleted(None)),
                Decision::Rejected(Reason::NotFound)
            );
        }
    }

    #[test]
    fn a_post_of_a_deleted_user_cannot_be_changed() {
        let given = given_post(Aggregate::deleted(3), Aggregate::live(1));
        assert_eq!(
            decide(&given, &edited(Some(1))),
            Decision::Rejected(Reason::NotFound)
        );
        assert_eq!(
            decide(&given, &post_deleted(None)),
            Decision::Rejected(Reason::NotFound)
        );
    }

    #[test]
    fn a_command_decided_before_is_a_duplicate_whatever_the_state() {
        let given = Given {
            already_decided: true,
            ..Given::default()
        };
        for event in [
            registered(),
            profile_updated(Some(9)),
            published(),
            post_deleted(None),
        ] {
            assert_eq!(decide(&given, &event), Decision::Duplicate);
        }
    }

    #[test]
    fn an_idempotency_key_held_by_another_command_is_reused() {
        let mut event = registered();
        event.idempotency = Some(Idempotency {
            scope: Uuid::nil(),
            key: "k".into(),
        });
        let other = Given {
            key_holder: Some(Uuid::now_v7()),
            ..Given::default()
        };
        assert_eq!(
            decide(&other, &event),
            Decision::Rejected(Reason::IdempotencyKeyReused)
        );
        let same = Given {
            key_holder: Some(event.command_id),
            ..Given::default()
        };
        assert_eq!(decide(&same, &event), Decision::Applied { version: 1 });
    }
}
