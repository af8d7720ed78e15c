//! The ids a write gets: its command id, its event id and, for a create, the new aggregate's id.
//!
//! Without an `Idempotency-Key` every id is a fresh UUIDv7 (time-ordered, so indexes stay
//! compact). With a key, every id is a UUIDv5 derived from the key, its scope and the request
//! itself, so that a retry reaches the same ids from any instance, after any restart, with no
//! shared state: the projector then sees the same command id twice and applies it once.
//!
//! - `command_id` and `event_id` also hash the request's fingerprint (method, route, path ids,
//!   `If-Match`, the body's fields as the event carries them, in canonical JSON): the same key
//!   with a different request is a different command, which the projector rejects as
//!   `idempotency_key_reused`. Fields the command API adds to an event itself are not part of
//!   the request and stay out.
//! - the new aggregate id deliberately leaves the fingerprint out: a key reused with another
//!   body names the same resource, so the second create cannot make a second resource.
//!
//! Every part is length-prefixed before hashing, so no two different inputs can concatenate to
//! the same bytes. Changing anything here changes the ids of retried requests across a deploy:
//! the pinned values in the tests guard against that.

use events::AggregateType;
use serde_json::Value;
use uuid::{Uuid, uuid};

/// The UUIDv5 namespace of this system's derived ids. Never change it.
pub const NAMESPACE: Uuid = uuid!("f206af21-c882-4379-8f09-d12b5c825e4f");

/// The ids of one accepted write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandIds {
    pub command_id: Uuid,
    pub event_id: Uuid,
    /// The id a create gives its new user or post; unused by other writes.
    pub new_aggregate_id: Uuid,
}

/// What makes two requests the same request, as far as an `Idempotency-Key` is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Fingerprint<'a> {
    pub method: &'a str,
    /// The route template, e.g. `/v1/users/{user_id}/posts`.
    pub route: &'a str,
    /// The ids in the path, in path order.
    pub path_ids: &'a [Uuid],
    /// The version named by `If-Match`: a retry with another precondition is another request.
    pub expected_version: Option<i64>,
    /// The payload fields the client sent, as the event carries them: see
    /// `command::envelope::command_ids`, which leaves out what the command API fills in itself.
    pub data: &'a Value,
}

impl CommandIds {
    /// Ids for a write without an `Idempotency-Key`.
    pub fn fresh() -> CommandIds {
        CommandIds {
            command_id: Uuid::now_v7(),
            event_id: Uuid::now_v7(),
            new_aggregate_id: Uuid::now_v7(),
        }
    }

    /// Ids for a write with `key`, unique within `scope` (the path's user, or nil for sign-ups).
    /// A pure function: every instance, at any time, derives the same ids from the same input.
    pub fn derive(
        scope: Uuid,
        key: &str,
        aggregate_type: AggregateType,
        fingerprint: &Fingerprint<'_>,
    ) -> CommandIds {
        let fingerprint = fingerprint.to_bytes();
        let scope = scope.as_bytes().as_slice();
        let key = key.as_bytes();
        CommandIds {
            command_id: v5(&[b"command", scope, key, &fingerprint]),
            event_id: v5(&[b"event", scope, key, &fingerprint]),
            // The aggregate type keeps a sign-up's user id and a post id apart even when a
            // post is created under the nil user with the same key.
            new_aggregate_id: v5(&[b"aggregate", aggregate_type.as_str().as_bytes(), scope, key]),
        }
    }
}

impl Fingerprint<'_> {
    fn to_bytes(self) -> Vec<u8> {
        let path_ids: Vec<&[u8]> = self
            .path_ids
            .iter()
            .map(|id| id.as_bytes().as_slice())
            .collect();
        let expected_version = self
            .expected_version
            .map(|v| v.to_string())
            .unwrap_or_default();
        let mut data = String::new();
        write_canonical_json(self.data, &mut data);
        let mut bytes = Vec::new();
        for part in [self.method.as_bytes(), self.route.as_bytes()] {
            push_part(&mut bytes, part);
        }
        push_part(&mut bytes, &length_prefixed(&path_ids));
        push_part(&mut bytes, expected_version.as_bytes());
        push_part(&mut bytes, data.as_bytes());
        bytes
    }
}

fn v5(parts: &[&[u8]]) -> Uuid {
    Uuid::new_v5(&NAMESPACE, &length_prefixed(parts))
}

fn length_prefixed(parts: &[&[u8]]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for part in parts {
        push_part(&mut bytes, part);
    }
    bytes
}

fn push_part(bytes: &mut Vec<u8>, part: &[u8]) {
    bytes.extend_from_slice(&(part.len() as u64).to_be_bytes());
    bytes.extend_from_slice(part);
}

/// JSON with object keys sorted, no whitespace: the same value always gives the same text,
/// whatever order the map happens to keep (serde_json's `preserve_order` is a feature any
/// crate in the build may switch on).
fn write_canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical_json(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const USER: Uuid = uuid!("0190b6a0-0000-7000-8000-000000000001");
    const POST: Uuid = uuid!("0190b6a0-0000-7000-8000-000000000002");

    /// Everything `derive` reads, owned, so each test can vary one part.
    #[derive(Clone)]
    struct Input {
        scope: Uuid,
        key: &'static str,
        aggregate_type: AggregateType,
        method: &'static str,
        route: &'static str,
        path_ids: Vec<Uuid>,
        expected_version: Option<i64>,
        data: Value,
    }

    impl Input {
        fn derive(&self) -> CommandIds {
            let fingerprint = Fingerprint {
                method: self.method,
                route: self.route,
                path_ids: &self.path_ids,
                expected_version: self.expected_version,
                data: &self.data,
            };
            CommandIds::derive(self.scope, self.key, self.aggregate_type, &fingerprint)
        }
    }

    fn base() -> Input {
        Input {
            scope: USER,
            key: "key-1",
            aggregate_type: AggregateType::Post,
            method: "PATCH",
            route: "/v1/users/{user_id}/posts/{post_id}",
            path_ids: vec![USER, POST],
            expected_version: Some(3),
            data: json!({"title": "t", "body": "b"}),
        }
    }

    #[test]
    fn the_same_input_gives_the_same_ids() {
        let ids = base().derive();
        assert_eq!(ids, base().derive());
        assert_eq!(ids.command_id.get_version_num(), 5);
        assert_ne!(ids.command_id, ids.event_id);
        assert_ne!(ids.command_id, ids.new_aggregate_id);
    }

    #[test]
    fn derivation_is_pinned_across_versions_and_instances() {
        // What every deployed instance derives; a change here breaks the idempotency of retries
        // that straddle a deploy. (Cross-checked against an independent implementation: SHA-1
        // of the namespace and the big-endian u64 length-prefixed parts.)
        let ids = base().derive();
        assert_eq!(
            ids.command_id,
            uuid!("fe7a60b1-17d7-5f94-b4ea-0eca8d463687")
        );
        assert_eq!(ids.event_id, uuid!("53e15ab2-4342-5bca-b1c2-a2202bfb52c0"));
        assert_eq!(
            ids.new_aggregate_id,
            uuid!("32bbbaff-3823-5c75-ac52-813b8ec47dac")
        );
    }

    #[test]
    fn every_differing_input_gives_another_command_id() {
        let variants = [
            Input {
                scope: POST,
                ..base()
            },
            Input {
                key: "key-2",
                ..base()
            },
            Input {
                key: "Key-1",
                ..base()
            },
            Input {
                method: "DELETE",
                ..base()
            },
            Input {
                route: "/v1/users/{user_id}",
                ..base()
            },
            Input {
                path_ids: vec![USER, USER],
                ..base()
            },
            Input {
                path_ids: vec![USER],
                ..base()
            },
            Input {
                expected_version: None,
                ..base()
            },
            Input {
                expected_version: Some(4),
                ..base()
            },
            Input {
                data: json!({"title": "t", "body": "c"}),
                ..base()
            },
            Input {
                data: json!({"title": "t"}),
                ..base()
            },
        ];
        let base = base().derive();
        let mut seen = std::collections::HashSet::from([base.command_id]);
        for (i, variant) in variants.iter().enumerate() {
            let ids = variant.derive();
            assert!(
                seen.insert(ids.command_id),
                "variant {i} repeats a command id"
            );
            assert_ne!(ids.event_id, base.event_id, "variant {i}");
        }
    }

    #[test]
    fn parts_that_concatenate_alike_stay_apart() {
        let a = Input {
            method: "PO",
            route: "ST/v1/users",
            ..base()
        }
        .derive();
        let b = Input {
            method: "POST",
            route: "/v1/users",
            ..base()
        }
        .derive();
        assert_ne!(a.command_id, b.command_id);
        let c = Input {
            key: "key-1x",
            expected_version: None,
            ..base()
        }
        .derive();
        let d = Input {
            key: "key-1",
            expected_version: None,
            ..base()
        }
        .derive();
        assert_ne!(c.command_id, d.command_id);
    }

    #[test]
    fn the_new_aggregate_id_ignores_the_request_but_not_the_key() {
        let base_ids = base().derive();
        let reused = Input {
            data: json!({"title": "another"}),
            expected_version: None,
            ..base()
        }
        .derive();
        assert_eq!(reused.new_aggregate_id, base_ids.new_aggregate_id);
        assert_ne!(reused.command_id, base_ids.command_id);

        for other in [
            Input {
                key: "key-2",
                ..base()
            },
            Input {
                scope: POST,
                ..base()
            },
            Input {
                aggregate_type: AggregateType::User,
                ..base()
            },
        ] {
            assert_ne!(other.derive().new_aggregate_id, base_ids.new_aggregate_id);
        }
    }

    #[test]
    fn key_order_in_the_data_does_not_matter() {
        let mut a = String::new();
        let mut b = String::new();
        write_canonical_json(
            &json!({"b": [1, {"y": 2, "x": "é\"\n"}], "a": null}),
            &mut a,
        );
        write_canonical_json(
            &json!({"a": null, "b": [1, {"x": "é\"\n", "y": 2}]}),
            &mut b,
        );
        assert_eq!(a, b);
        assert_eq!(a, r#"{"a":null,"b":[1,{"x":"é\"\n","y":2}]}"#);
    }

    #[test]
    fn fresh_ids_are_time_ordered_and_distinct() {
        let a = CommandIds::fresh();
        let b = CommandIds::fresh();
        assert_eq!(a.command_id.get_version_num(), 7);
        assert_ne!(a.command_id, b.command_id);
        assert_ne!(a.command_id, a.event_id);
        assert_ne!(a.new_aggregate_id, b.new_aggregate_id);
    }
}
