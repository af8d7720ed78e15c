//! The domain events: what happened, in the past tense.
//!
//! Each variant has a stable wire name (`type`) and a schema version. Payloads hold only what the
//! command carried; everything the projector derives (versions, counts) is left to it, so a replay
//! can derive it again.

use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostPublished {
    pub title: String,
    pub body: String,
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
    /// The stable wire name of this event's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::UserRegistered(_) => types::USER_REGISTERED,
            Event::UserProfileUpdated(_) => types::USER_PROFILE_UPDATED,
            Event::UserDeleted => types::USER_DELETED,
            Event::PostPublished(_) => types::POST_PUBLISHED,
            Event::PostEdited(_) => types::POST_EDITED,
            Event::PostDeleted => types::POST_DELETED,
        }
    }

    /// The schema version this code writes. Older versions are upcast on decoding.
    pub fn schema_version(&self) -> u16 {
        1
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

    /// Builds an event from its wire type, schema version and payload, upcasting older versions.
    pub fn from_parts(
        type_name: &str,
        schema_version: u16,
        data: serde_json::Value,
    ) -> Result<Event, PayloadError> {
        if schema_version != 1 {
            return Err(PayloadError::UnknownVersion {
                type_name: type_name.to_owned(),
                schema_version,
            });
        }
        let event = match type_name {
            types::USER_REGISTERED => Event::UserRegistered(serde_json::from_value(data)?),
            types::USER_PROFILE_UPDATED => Event::UserProfileUpdated(serde_json::from_value(data)?),
            types::USER_DELETED => {
                empty_payload(data)?;
                Event::UserDeleted
            }
            types::POST_PUBLISHED => Event::PostPublished(serde_json::from_value(data)?),
            types::POST_EDITED => Event::PostEdited(serde_json::from_value(data)?),
            types::POST_DELETED => {
                empty_payload(data)?;
                Event::PostDeleted
            }
            other => return Err(PayloadError::UnknownType(other.to_owned())),
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
    #[error("invalid payload: {0}")]
    Invalid(#[from] serde_json::Error),
}
