//! What a checked write becomes: its ids ([`command_ids`], derived from the `Idempotency-Key`
//! when there is one, see [`crate::ids`]) and the [`Envelope`] that carries its event
//! ([`envelope`]): which aggregate it is about and which user's partition it goes to.

use chrono::{DateTime, Utc};
use events::{Envelope, Event, Idempotency};
use serde_json::Value;

use super::write::Write;
use crate::ids::{CommandIds, Fingerprint};

/// The envelope for `event`, the result of `write`, with the given ids.
pub fn envelope(
    write: Write,
    event: Event,
    ids: CommandIds,
    idempotency_key: Option<String>,
    expected_version: Option<i64>,
    accepted_at: DateTime<Utc>,
) -> Envelope {
    let (aggregate_id, partition_key) = match write {
        Write::RegisterUser => (ids.new_aggregate_id, ids.new_aggregate_id),
        Write::UpdateProfile { user_id } | Write::DeleteUser { user_id } => (user_id, user_id),
        Write::PublishPost { user_id } => (ids.new_aggregate_id, user_id),
        Write::EditPost { user_id, post_id } | Write::DeletePost { user_id, post_id } => {
            (post_id, user_id)
        }
    };
    Envelope {
        event_id: ids.event_id,
        aggregate_id,
        partition_key,
        command_id: ids.command_id,
        idempotency: idempotency_key.map(|key| Idempotency {
            scope: write.idempotency_scope(),
            key,
        }),
        expected_version: if write.takes_if_match() {
            expected_version
        } else {
            None
        },
        accepted_at,
        event,
    }
}

/// The ids for `write` carrying `event`: derived from the key when there is one, else fresh.
pub fn command_ids(
    write: Write,
    event: &Event,
    idempotency_key: Option<&str>,
    expected_version: Option<i64>,
) -> CommandIds {
    let Some(key) = idempotency_key else {
        return CommandIds::fresh();
    };
    let data = requested_data(event);
    let path_ids = write.path_ids();
    let fingerprint = Fingerprint {
        method: write.method(),
        route: write.route(),
        path_ids: &path_ids,
        expected_version: if write.takes_if_match() {
            expected_version
        } else {
            None
        },
        data: &data,
    };
    CommandIds::derive(
        write.idempotency_scope(),
        key,
        event.aggregate_type(),
        &fingerprint,
    )
}

/// What the client chose, as the idempotency fingerprint hashes it: the event's payload limited to
/// the request's fields. What the command API fills in itself (a post's `format`, since
/// post.published v2) stays out, so that an event schema change does not change the ids of a
/// retry whose first attempt an instance of the previous release answered.
fn requested_data(event: &Event) -> Value {
    match event {
        Event::PostPublished(post) => serde_json::json!({"title": post.title, "body": post.body}),
        _ => event.data(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::command::field_rules::{edit_post, publish_post, register_user, update_profile};

    #[test]
    fn envelopes_are_keyed_by_the_owning_user() {
        let user_id = Uuid::now_v7();
        let post_id = Uuid::now_v7();
        let ids = CommandIds::fresh();
        let now = Utc::now();

        let sign_up = envelope(
            Write::RegisterUser,
            Event::UserDeleted,
            ids,
            Some("k".into()),
            Some(3),
            now,
        );
        assert_eq!(sign_up.aggregate_id, ids.new_aggregate_id);
        assert_eq!(sign_up.partition_key, ids.new_aggregate_id);
        assert_eq!(
            sign_up.idempotency,
            Some(Idempotency {
                scope: Uuid::nil(),
                key: "k".into()
            })
        );
        assert_eq!(
            sign_up.expected_version, None,
            "a create has no version to match"
        );

        let publish = envelope(
            Write::PublishPost { user_id },
            Event::PostDeleted,
            ids,
            None,
            None,
            now,
        );
        assert_eq!(
            (publish.aggregate_id, publish.partition_key),
            (ids.new_aggregate_id, user_id)
        );
        assert_eq!(publish.idempotency, None);

        let edit = envelope(
            Write::EditPost { user_id, post_id },
            Event::PostDeleted,
            ids,
            Some("k".into()),
            Some(7),
            now,
        );
        assert_eq!((edit.aggregate_id, edit.partition_key), (post_id, user_id));
        assert_eq!(edit.expected_version, Some(7));
        assert_eq!(
            edit.idempotency,
            Some(Idempotency {
                scope: user_id,
                key: "k".into()
            })
        );
        assert_eq!(edit.command_id, ids.command_id);
        assert_eq!(edit.event_id, ids.event_id);

        let delete = envelope(
            Write::DeleteUser { user_id },
            Event::UserDeleted,
            ids,
            None,
            None,
            now,
        );
        assert_eq!(
            (delete.aggregate_id, delete.partition_key),
            (user_id, user_id)
        );
    }

    #[test]
    fn ids_are_derived_only_when_a_key_is_sent() {
        let user_id = Uuid::now_v7();
        let write = Write::UpdateProfile { user_id };
        let event = update_profile(json!({"bio": "b"})).expect("valid");
        let keyed = command_ids(write, &event, Some("k"), Some(2));
        assert_eq!(keyed, command_ids(write, &event, Some("k"), Some(2)));
        assert_ne!(
            keyed.command_id,
            command_ids(write, &event, Some("k"), Some(3)).command_id
        );
        assert_ne!(
            keyed.command_id,
            command_ids(write, &event, Some("k2"), Some(2)).command_id
        );
        let other_user = Write::UpdateProfile {
            user_id: Uuid::now_v7(),
        };
        assert_ne!(
            keyed.command_id,
            command_ids(other_user, &event, Some("k"), Some(2)).command_id
        );
        assert_ne!(
            command_ids(write, &event, None, None),
            command_ids(write, &event, None, None)
        );

        // `If-Match` means nothing to a create, so it does not change a create's ids either.
        let post = publish_post(json!({"title": "t", "body": "b"})).expect("valid");
        let create = Write::PublishPost { user_id };
        assert_eq!(
            command_ids(create, &post, Some("k"), Some(1)),
            command_ids(create, &post, Some("k"), None)
        );
    }

    #[test]
    fn the_ids_of_each_write_stay_what_earlier_releases_derived() {
        // Computed independently (SHA-1 over the namespace and the length-prefixed parts, with
        // the payloads of schema version 1), so a change to an event's shape that leaks into
        // the fingerprint breaks the idempotency of retries across a deploy here, not there.
        const USER: Uuid = uuid::uuid!("0190b6a0-0000-7000-8000-000000000001");
        const POST: Uuid = uuid::uuid!("0190b6a0-0000-7000-8000-000000000002");
        let user_id = USER;
        let post_id = POST;
        let writes = [
            (
                Write::RegisterUser,
                register_user(json!({"display_name": "Ada"})).expect("valid"),
                uuid::uuid!("0a15523c-78fa-5d34-8347-75e7033f8419"),
            ),
            (
                Write::UpdateProfile { user_id },
                update_profile(json!({"bio": "b"})).expect("valid"),
                uuid::uuid!("49b96420-6802-5349-9c59-0ec38f4de1d6"),
            ),
            (
                Write::DeleteUser { user_id },
                Event::UserDeleted,
                uuid::uuid!("7f36d5a8-8fc9-57de-b11d-5e7586205fc9"),
            ),
            (
                Write::PublishPost { user_id },
                publish_post(json!({"title": "t", "body": "b"})).expect("valid"),
                uuid::uuid!("03322eba-b8cc-5158-8128-895d907d1645"),
            ),
            (
                Write::EditPost { user_id, post_id },
                edit_post(json!({"title": "t2"})).expect("valid"),
                uuid::uuid!("1be1954f-a48b-5fc8-beb9-9e4cf9b2312a"),
            ),
            (
                Write::DeletePost { user_id, post_id },
                Event::PostDeleted,
                uuid::uuid!("167f77e9-9c9b-572c-bb75-2839c7d73b06"),
            ),
        ];
        for (write, event, command_id) in writes {
            assert_eq!(
                command_ids(write, &event, Some("retry-1"), Some(2)).command_id,
                command_id,
                "{write:?}"
            );
        }
        let publish = publish_post(json!({"title": "t", "body": "b"})).expect("valid");
        let ids = command_ids(
            Write::PublishPost { user_id },
            &publish,
            Some("retry-1"),
            None,
        );
        assert_eq!(
            ids.event_id,
            uuid::uuid!("8ee189cc-7f5b-5586-9749-e366a2411b97")
        );
        assert_eq!(
            ids.new_aggregate_id,
            uuid::uuid!("91372129-e4e6-56cd-9b13-55119bfdfb42")
        );
    }
}
