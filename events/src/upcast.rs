//! Upcasters: how a payload written by older code becomes the shape this code reads.
//!
//! The log is retained forever and never rewritten, so every schema version ever written must stay
//! readable. Decoding takes the payload as it was written and applies, one version at a time, the
//! upcaster from each old version to the next until it reaches the current version
//! ([`EventType::schema_version`]); only then is it deserialized, into the newest shape. The
//! decider, the store and everything else after decoding therefore know one shape per type.
//! A version above the current one (written by newer code) or below 1 is a decode error, and so
//! is an unknown type: the projector dead-letters such records rather than guess.
//!
//! Upcasters work on the JSON payload, so an old shape needs no Rust type of its own. They are
//! history: they spell field names as they were on the wire and are never changed once released.
//! Each one rejects input that its version could not have held (such as a field a later version
//! added); the newest shape's strict deserializer checks everything else.
//!
//! # History
//!
//! | type | version | change |
//! |---|---|---|
//! | every type | 1 | the shapes of contract v1 |
//! | `post.published` | 2 | gains `format`, `"plain"` or `"markdown"`; a v1 post is `"plain"` |
//!
//! `format` says how a post's body is meant to be rendered. The default for v1 events is honest:
//! contract v1 stores and shows a body exactly as sent and nothing renders it, so every v1 post
//! is plain text. The command API writes v2 events and, since contract v1 has no request field
//! for it, always with `"plain"`. The projector keeps it in `posts.format`; the query API's answers
//! keep exactly the contract v1 fields, so no HTTP answer changes shape. A later contract can
//! let clients choose markdown and show the format, with every old post already classified.
//!
//! # Adding a version
//!
//! 1. Change the payload struct in [`crate::payload`] and raise the type's version in
//!    [`EventType::schema_version`].
//! 2. Add a row to `UPCASTERS` (below) from the previous version to the new one.
//! 3. Add `events/corpus/{type}/v{N}.json` and its expected value in the corpus test, and keep
//!    every older corpus file as it is.
//!
//! The tests fail until all three are done.

use serde_json::Value;

use crate::event_type::EventType;
use crate::payload::{PayloadError, PostFormat};

/// Turns a payload of one schema version into the payload of the next, or says why it cannot.
type Upcaster = fn(Value) -> Result<Value, String>;

/// Every upcaster: the type, the version it reads, and the function that turns it into the next
/// version. Never remove a row: the log still holds events of every version.
const UPCASTERS: &[(EventType, u16, Upcaster)] = &[
    // A v1 body was shown exactly as sent: plain text.
    (EventType::PostPublished, 1, post_published_v1_to_v2),
];

fn upcaster(event_type: EventType, from_version: u16) -> Option<Upcaster> {
    UPCASTERS
        .iter()
        .find(|(t, v, _)| *t == event_type && *v == from_version)
        .map(|(_, _, upcaster)| *upcaster)
}

/// Runs the chain from `schema_version` up to the current version of `event_type`.
pub(crate) fn to_current(
    event_type: EventType,
    schema_version: u16,
    mut data: Value,
) -> Result<Value, PayloadError> {
    let current = event_type.schema_version();
    if !(1..=current).contains(&schema_version) {
        return Err(PayloadError::UnknownVersion {
            type_name: event_type.name().to_owned(),
            schema_version,
        });
    }
    for from_version in schema_version..current {
        let upcaster =
            upcaster(event_type, from_version).ok_or_else(|| PayloadError::MissingUpcaster {
                type_name: event_type.name().to_owned(),
                from_version,
            })?;
        data = upcaster(data).map_err(|reason| PayloadError::Upcast {
            type_name: event_type.name().to_owned(),
            from_version,
            reason,
        })?;
    }
    Ok(data)
}

/// `post.published` v1 → v2: adds `"format": "plain"`.
fn post_published_v1_to_v2(data: Value) -> Result<Value, String> {
    let Value::Object(mut fields) = data else {
        return Err("the payload is not a JSON object".to_owned());
    };
    if fields.contains_key("format") {
        return Err("version 1 has no field `format`".to_owned());
    }
    fields.insert("format".to_owned(), PostFormat::Plain.as_str().into());
    Ok(Value::Object(fields))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_old_version_has_exactly_one_upcaster_to_the_next() {
        for event_type in EventType::ALL {
            for from_version in 1..event_type.schema_version() {
                let rows = UPCASTERS
                    .iter()
                    .filter(|(t, v, _)| *t == event_type && *v == from_version)
                    .count();
                assert_eq!(
                    rows,
                    1,
                    "{} v{from_version} needs exactly one upcaster",
                    event_type.name()
                );
            }
        }
    }

    #[test]
    fn no_upcaster_starts_at_or_above_the_current_version() {
        for (event_type, from_version, _) in UPCASTERS {
            assert!(
                (1..event_type.schema_version()).contains(from_version),
                "an upcaster from {} v{from_version} leads past the current version",
                event_type.name()
            );
        }
    }

    #[test]
    fn a_v1_post_published_payload_becomes_plain() {
        let v2 = to_current(
            EventType::PostPublished,
            1,
            json!({"title": "t", "body": "b"}),
        )
        .expect("upcasts");
        assert_eq!(v2, json!({"title": "t", "body": "b", "format": "plain"}));
    }

    #[test]
    fn a_current_payload_passes_unchanged() {
        let v2 = json!({"title": "t", "body": "b", "format": "markdown"});
        assert_eq!(
            to_current(EventType::PostPublished, 2, v2.clone()).expect("current"),
            v2
        );
    }

    #[test]
    fn a_v1_payload_that_names_a_format_is_not_a_v1_payload() {
        let error = to_current(
            EventType::PostPublished,
            1,
            json!({"title": "t", "body": "b", "format": "markdown"}),
        )
        .expect_err("v1 had no format");
        assert!(
            matches!(
                error,
                PayloadError::Upcast {
                    from_version: 1,
                    ..
                }
            ),
            "{error}"
        );
        let error =
            to_current(EventType::PostPublished, 1, json!(["t", "b"])).expect_err("not an object");
        assert!(matches!(error, PayloadError::Upcast { .. }), "{error}");
    }

    #[test]
    fn versions_outside_one_to_current_are_unknown() {
        for event_type in EventType::ALL {
            for version in [0, event_type.schema_version() + 1, u16::MAX] {
                let error = to_current(event_type, version, json!({}))
                    .expect_err("not a version this code knows");
                assert!(
                    matches!(error, PayloadError::UnknownVersion { schema_version, .. } if schema_version == version),
                    "{error}"
                );
            }
        }
    }
}
