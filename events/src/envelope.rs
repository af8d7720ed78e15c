//! The envelope every event travels in, and its JSON encoding.
//!
//! On the wire an event is one JSON object:
//!
//! ```json
//! {"event_id": "...", "type": "post.published", "schema_version": 2,
//!  "aggregate_type": "post", "aggregate_id": "...", "partition_key": "...",
//!  "command_id": "...", "idempotency": {"scope": "...", "key": "..."},
//!  "expected_version": 3, "accepted_at": "2026-11-27T12:00:00.123456Z",
//!  "data": {"title": "...", "body": "...", "format": "plain"}}
//! ```
//!
//! `schema_version` is the version of `data`'s shape for that type. Encoding always writes the
//! current version; decoding accepts every version there ever was (see [`crate::upcast`]).
//!
//! The Kafka record's key is the partition key (the owning user's id) and its headers repeat the
//! type and the schema version, so tools can route or filter without parsing the body.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{AggregateType, Event};
use crate::payload::PayloadError;

/// Kafka header names.
pub mod headers {
    pub const EVENT_TYPE: &str = "event-type";
    pub const SCHEMA_VERSION: &str = "schema-version";
    pub const CONTENT_TYPE: &str = "content-type";
    pub const JSON: &str = "application/json";
}

/// An `Idempotency-Key` and the scope it is unique in (the path's user, or nil for sign-ups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idempotency {
    pub scope: Uuid,
    pub key: String,
}

/// One event with everything needed to decide it, in log order, without other state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub event_id: Uuid,
    pub aggregate_id: Uuid,
    /// The owning user's id: the Kafka key, so all of a user's events share a partition.
    pub partition_key: Uuid,
    pub command_id: Uuid,
    pub idempotency: Option<Idempotency>,
    /// The version named by `If-Match`, if the command carried one.
    pub expected_version: Option<i64>,
    /// When the command API accepted the command; it is the event's time everywhere after.
    pub accepted_at: DateTime<Utc>,
    pub event: Event,
}

/// The wire shape; kept private so that only valid envelopes leave [`Envelope::decode`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    event_id: Uuid,
    #[serde(rename = "type")]
    type_name: String,
    schema_version: u16,
    aggregate_type: AggregateType,
    aggregate_id: Uuid,
    partition_key: Uuid,
    command_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency: Option<Idempotency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expected_version: Option<i64>,
    accepted_at: DateTime<Utc>,
    data: serde_json::Value,
}

/// Why bytes from the log are not a valid event. Such a record goes to the dead-letter table.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not an event envelope: {0}")]
    Envelope(#[from] serde_json::Error),
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("aggregate_type {found:?} does not match event type {type_name:?}")]
    AggregateTypeMismatch {
        type_name: String,
        found: AggregateType,
    },
    #[error(
        "a user event must be keyed by its own user: aggregate_id {aggregate_id} != partition_key {partition_key}"
    )]
    ForeignUserKey {
        aggregate_id: Uuid,
        partition_key: Uuid,
    },
}

impl Envelope {
    pub fn type_name(&self) -> &'static str {
        self.event.type_name()
    }

    pub fn schema_version(&self) -> u16 {
        self.event.schema_version()
    }

    pub fn aggregate_type(&self) -> AggregateType {
        self.event.aggregate_type()
    }

    /// The JSON bytes that go into the Kafka record's value.
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            event_id: self.event_id,
            type_name: self.type_name().to_owned(),
            schema_version: self.schema_version(),
            aggregate_type: self.aggregate_type(),
            aggregate_id: self.aggregate_id,
            partition_key: self.partition_key,
            command_id: self.command_id,
            idempotency: self.idempotency.clone(),
            expected_version: self.expected_version,
            accepted_at: self.accepted_at,
            data: self.event.data(),
        };
        // A struct of strings, ids and a JSON value always serializes.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Parses and validates the bytes of a Kafka record's value.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let wire: Wire = serde_json::from_slice(bytes)?;
        let event = Event::from_parts(&wire.type_name, wire.schema_version, wire.data)?;
        if event.aggregate_type() != wire.aggregate_type {
            return Err(DecodeError::AggregateTypeMismatch {
                type_name: wire.type_name,
                found: wire.aggregate_type,
            });
        }
        if event.aggregate_type() == AggregateType::User && wire.aggregate_id != wire.partition_key
        {
            return Err(DecodeError::ForeignUserKey {
                aggregate_id: wire.aggregate_id,
                partition_key: wire.partition_key,
            });
        }
        Ok(Envelope {
            event_id: wire.event_id,
            aggregate_id: wire.aggregate_id,
            partition_key: wire.partition_key,
            command_id: wire.command_id,
            idempotency: wire.idempotency,
            expected_version: wire.expected_version,
            accepted_at: wire.accepted_at,
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{
        PostEdited, PostFormat, PostPublished, UserProfileUpdated, UserRegistered,
    };

    fn envelope(event: Event) -> Envelope {
        let user = Uuid::now_v7();
        let aggregate_id = match event.aggregate_type() {
            AggregateType::User => user,
            AggregateType::Post => Uuid::now_v7(),
        };
        Envelope {
            event_id: Uuid::now_v7(),
            aggregate_id,
            partition_key: user,
            command_id: Uuid::now_v7(),
            idempotency: Some(Idempotency {
                scope: user,
                key: "retry-1".into(),
            }),
            expected_version: Some(3),
            accepted_at: Utc::now(),
            event,
        }
    }

    fn every_event() -> Vec<Event> {
        vec![
            Event::UserRegistered(UserRegistered {
                display_name: "Ada ".into(),
                bio: Some("héllo\n".into()),
            }),
            Event::UserRegistered(UserRegistered {
                display_name: "B".into(),
                bio: None,
            }),
            Event::UserProfileUpdated(UserProfileUpdated {
                display_name: None,
                bio: Some(String::new()),
            }),
            Event::UserDeleted,
            Event::PostPublished(PostPublished {
                title: "t".into(),
                body: "b 🦀".into(),
                format: PostFormat::Plain,
            }),
            Event::PostPublished(PostPublished {
                title: "# t".into(),
                body: "*b*".into(),
                format: PostFormat::Markdown,
            }),
            Event::PostEdited(PostEdited {
                title: Some("t2".into()),
                body: None,
            }),
            Event::PostDeleted,
        ]
    }

    #[test]
    fn every_event_type_round_trips_through_json() {
        for event in every_event() {
            let original = envelope(event);
            let decoded = Envelope::decode(&original.encode()).expect("decodes");
            assert_eq!(decoded, original);
        }
    }

    #[test]
    fn wire_form_names_type_version_and_aggregate() {
        let original = envelope(Event::PostDeleted);
        let json: serde_json::Value = serde_json::from_slice(&original.encode()).expect("json");
        assert_eq!(json["type"], "post.deleted");
        assert_eq!(json["schema_version"], 1);
        assert_eq!(json["aggregate_type"], "post");
        assert_eq!(json["partition_key"], original.partition_key.to_string());
        assert_eq!(json["expected_version"], 3);
    }

    #[test]
    fn post_published_is_written_as_version_2_with_its_format() {
        let original = envelope(Event::PostPublished(PostPublished {
            title: "t".into(),
            body: "b".into(),
            format: PostFormat::Plain,
        }));
        let json: serde_json::Value = serde_json::from_slice(&original.encode()).expect("json");
        assert_eq!(json["type"], "post.published");
        assert_eq!(json["schema_version"], 2);
        assert_eq!(
            json["data"],
            serde_json::json!({"title": "t", "body": "b", "format": "plain"})
        );
    }

    #[test]
    fn a_version_1_post_published_decodes_as_plain() {
        let mut wire: serde_json::Value = serde_json::from_slice(
            &envelope(Event::PostPublished(PostPublished {
                title: "t".into(),
                body: "b".into(),
                format: PostFormat::Markdown,
            }))
            .encode(),
        )
        .expect("json");
        wire["schema_version"] = 1.into();
        wire["data"] = serde_json::json!({"title": "old", "body": "days"});
        let decoded = Envelope::decode(&serde_json::to_vec(&wire).expect("json")).expect("decodes");
        assert_eq!(
            decoded.event,
            Event::PostPublished(PostPublished {
                title: "old".into(),
                body: "days".into(),
                format: PostFormat::Plain,
            })
        );
        assert_eq!(decoded.schema_version(), 2, "re-encoded as the newest");
    }

    #[test]
    fn post_published_payloads_that_fit_no_version_are_decode_errors() {
        let valid: serde_json::Value = serde_json::from_slice(
            &envelope(Event::PostPublished(PostPublished {
                title: "t".into(),
                body: "b".into(),
                format: PostFormat::Plain,
            }))
            .encode(),
        )
        .expect("json");
        let mut v1_with_format = valid.clone();
        v1_with_format["schema_version"] = 1.into();
        let mut v2_without_format = valid.clone();
        v2_without_format["data"]
            .as_object_mut()
            .expect("object")
            .remove("format");
        let mut unknown_format = valid.clone();
        unknown_format["data"]["format"] = "html".into();
        let mut version_0 = valid.clone();
        version_0["schema_version"] = 0.into();
        let mut version_3 = valid.clone();
        version_3["schema_version"] = 3.into();
        for bad in [
            v1_with_format,
            v2_without_format,
            unknown_format,
            version_0,
            version_3,
        ] {
            let bytes = serde_json::to_vec(&bad).expect("json");
            assert!(Envelope::decode(&bytes).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn garbage_and_unknown_shapes_are_decode_errors() {
        let valid: serde_json::Value =
            serde_json::from_slice(&envelope(Event::PostDeleted).encode()).expect("json");
        let mut unknown_type = valid.clone();
        unknown_type["type"] = "post.liked".into();
        let mut future_version = valid.clone();
        future_version["schema_version"] = 99.into();
        let mut wrong_aggregate = valid.clone();
        wrong_aggregate["aggregate_type"] = "user".into();
        let mut extra_field = valid.clone();
        extra_field["data"]["surprise"] = true.into();
        for bad in [unknown_type, future_version, wrong_aggregate, extra_field] {
            let bytes = serde_json::to_vec(&bad).expect("json");
            assert!(Envelope::decode(&bytes).is_err(), "accepted {bad}");
        }
        assert!(Envelope::decode(b"\xff\x00 not json").is_err());
    }

    #[test]
    fn a_user_event_keyed_by_another_user_is_rejected() {
        let mut e = envelope(Event::UserDeleted);
        e.partition_key = Uuid::now_v7();
        assert!(matches!(
            Envelope::decode(&e.encode()),
            Err(DecodeError::ForeignUserKey { .. })
        ));
    }
}
