//! The domain events: what happened, in the past tense.
//!
//! Each variant has a stable wire name (`type`) and a schema version, declared in one place:
//! [`EventType::schema_version`]. The structs here are the newest shape of each payload; older
//! versions still in the log are turned into it by the [upcasters](crate::upcast) before they are
//! deserialized. Payloads hold only what the command carried; everything the projector derives
//! (versions, counts) is left to it, so a replay can derive it again.

use serde::{Deserialize, Serialize};

use crate::upcast;

/// The kind of aggregate an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateType {
    User,
    Post,
}

impl AggregateType {
    pub fn as_str(self) -> &'static str {
        match self {
            AggregateType::User => "user",
            AggregateType::Post => "post",
        }
    }
}

/// A new user registered. The user id is the envelope's aggregate id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRegistered {
    pub display_name: String,
    #[serde(default)]
    pub bio: Option<String>,
}

/// A user changed their profile; absent fields keep their value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserProfileUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bio: Option<String>,
}

/// A user published a post. The author is the envelope's partition key, the post id its
/// aggregate id.
///
/// Version 2 added `format`; a version 1 event is upcast with [`PostFormat::Plain`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostPublished {
    pub title: String,
    pub body: String,
    pub format: PostFormat,
}

/// How a post's body is meant to be rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostFormat {
    /// Shown exactly as written. Every post written through contract v1 is plain: the contract
    /// has no field to say otherwise, and stores and shows bodies exactly as sent.
    Plain,
    /// CommonMark, for a client that renders it. Nothing writes it until a contract lets clients
    /// choose.
    Markdown,
}

impl PostFormat {
    /// The wire and database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PostFormat::Plain => "plain",
            PostFormat::Markdown => "markdown",
        }
    }
}

/// A user edited one of their posts; absent fields keep their value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostEdited {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Every event the system knows, newest schema version of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    UserRegistered(UserRegistered),
    UserProfileUpdated(UserProfileUpdated),
    UserDeleted,
    PostPublished(PostPublished),
    PostEdited(PostEdited),
    PostDeleted,
}

/// The kinds of event, without their payloads: what an envelope's `type` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    UserRegistered,
    UserProfileUpdated,
    UserDeleted,
    PostPublished,
    PostEdited,
    PostDeleted,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::UserRegistered,
        EventType::UserProfileUpdated,
        EventType::UserDeleted,
        EventType::PostPublished,
        EventType::PostEdited,
        EventType::PostDeleted,
    ];

    /// The stable wire name.
    pub fn name(self) -> &'static str {
        match self {
            EventType::UserRegistered => types::USER_REGISTERED,
            EventType::UserProfileUpdated => types::USER_PROFILE_UPDATED,
            EventType::UserDeleted => types::USER_DELETED,
            EventType::PostPublished => types::POST_PUBLISHED,
            EventType::PostEdited => types::POST_EDITED,
            EventType::PostDeleted => types::POST_DELETED,
        }
    }

    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The schema version this code writes, which is the newest there is; older ones are upcast
    /// on decoding. This is the one place a version is declared. Raising one takes an upcaster
    /// from the previous version (`upcast.rs`) and a corpus file for the new one
    /// (`events/corpus/`); the tests fail until both are there.
    pub fn schema_version(self) -> u16 {
        match self {
            EventType::UserRegistered => 1,
            EventType::UserProfileUpdated => 1,
            EventType::UserDeleted => 1,
            EventType::PostPublished => 2,
            EventType::PostEdited => 1,
            EventType::PostDeleted => 1,
        }
    }
}

/// Wire names of the event types.
pub mod types {
    pub const USER_REGISTERED: &str = "user.registered";
    pub const USER_PROFILE_UPDATED: &str = "user.profile_updated";
    pub const USER_DELETED: &str = "user.deleted";
    pub const POST_PUBLISHED: &str = "post.published";
    pub const POST_EDITED: &str = "post.edited";
    pub const POST_DELETED: &str = "post.deleted";
}

impl Event {
    pub fn event_type(&self) -> EventType {
        match self {
            Event::UserRegistered(_) => EventType::UserRegistered,
            Event::UserProfileUpdated(_) => EventType::UserProfileUpdated,
            Event::UserDeleted => EventType::UserDeleted,
            Event::PostPublished(_) => EventType::PostPublished,
            Event::PostEdited(_) => EventType::PostEdited,
            Event::PostDeleted => EventType::PostDeleted,
        }
    }

    /// The stable wire name of this event's type.
    pub fn type_name(&self) -> &'static str {
        self.event_type().name()
    }

    /// The schema version this code writes for this event's type (see
    /// [`EventType::schema_version`]). Older versions are upcast on decoding.
    pub fn schema_version(&self) -> u16 {
        self.event_type().schema_version()
    }

    pub fn aggregate_type(&self) -> AggregateType {
        match self {
            Event::UserRegistered(_) | Event::UserProfileUpdated(_) | Event::UserDeleted => {
                AggregateType::User
            }
            Event::PostPublished(_) | Event::PostEdited(_) | Event::PostDeleted => {
                AggregateType::Post
            }
        }
    }

    /// True for the events that create their aggregate.
    pub fn is_creation(&self) -> bool {
        matches!(self, Event::UserRegistered(_) | Event::PostPublished(_))
    }

    /// The payload as JSON.
    pub fn data(&self) -> serde_json::Value {
        let value = match self {
            Event::UserRegistered(e) => serde_json::to_value(e),
            Event::UserProfileUpdated(e) => serde_json::to_value(e),
            Event::PostPublished(e) => serde_json::to_value(e),
            Event::PostEdited(e) => serde_json::to_value(e),
            Event::UserDeleted | Event::PostDeleted => Ok(serde_json::json!({})),
        };
        // Serializing these plain structs of strings cannot fail.
        value.unwrap_or_else(|_| serde_json::json!({}))
    }

    /// Builds an event from its wire type, schema version and payload: runs the upcasters from
    /// that version up to the newest, then reads the newest shape.
    pub fn from_parts(
        type_name: &str,
        schema_version: u16,
        data: serde_json::Value,
    ) -> Result<Event, PayloadError> {
        let event_type = EventType::from_name(type_name)
            .ok_or_else(|| PayloadError::UnknownType(type_name.to_owned()))?;
        let data = upcast::to_current(event_type, schema_version, data)?;
        let event = match event_type {
            EventType::UserRegistered => Event::UserRegistered(serde_json::from_value(data)?),
            EventType::UserProfileUpdated => {
                Event::UserProfileUpdated(serde_json::from_value(data)?)
            }
            EventType::UserDeleted => {
                empty_payload(data)?;
                Event::UserDeleted
            }
            EventType::PostPublished => Event::PostPublished(serde_json::from_value(data)?),
            EventType::PostEdited => Event::PostEdited(serde_json::from_value(data)?),
            EventType::PostDeleted => {
                empty_payload(data)?;
                Event::PostDeleted
            }
        };
        Ok(event)
    }
}

fn empty_payload(data: serde_json::Value) -> Result<(), PayloadError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Empty {}
    let _: Empty = serde_json::from_value(data)?;
    Ok(())
}

/// Why a payload could not become an [`Event`].
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("unknown schema version {schema_version} of {type_name:?}")]
    UnknownVersion {
        type_name: String,
        schema_version: u16,
    },
    #[error("version {from_version} of {type_name:?} cannot be upcast: {reason}")]
    Upcast {
        type_name: String,
        from_version: u16,
        reason: String,
    },
    /// A version below the current one without an upcaster: a bug the upcast tests catch.
    #[error("no upcaster from version {from_version} of {type_name:?}")]
    MissingUpcaster {
        type_name: String,
        from_version: u16,
    },
    #[error("invalid payload: {0}")]
    Invalid(#[from] serde_json::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_is_listed_once_and_found_by_its_name() {
        // Exhaustive: a new variant does not compile until it gets a place here, which is the
        // reminder to give it the same place in `ALL`.
        fn index(event_type: EventType) -> usize {
            match event_type {
                EventType::UserRegistered => 0,
                EventType::UserProfileUpdated => 1,
                EventType::UserDeleted => 2,
                EventType::PostPublished => 3,
                EventType::PostEdited => 4,
                EventType::PostDeleted => 5,
            }
        }
        for (i, event_type) in EventType::ALL.into_iter().enumerate() {
            assert_eq!(index(event_type), i);
            assert_eq!(EventType::from_name(event_type.name()), Some(event_type));
        }
        assert_eq!(EventType::from_name("post.liked"), None);
    }
}
