//! The domain events: what happened, in the past tense.
//!
//! [`Event`] has one variant per [`EventType`], each carrying its [payload](crate::payload) in
//! the newest shape. Each type has a stable wire name and a schema version, declared in one
//! place: [`EventType::schema_version`]. Building an event from what the log holds runs the
//! [upcasters](crate::upcast) first, so that a payload of any version becomes the newest shape.

use serde::{Deserialize, Serialize};

use crate::event_type::EventType;
use crate::payload::{PayloadError, PostEdited, PostPublished, UserProfileUpdated, UserRegistered};
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
