//! The payload of each event type, in its newest shape, and why a payload could not be read.
//!
//! Payloads hold only what the command carried; everything the projector derives (versions,
//! counts) is left to it, so a replay can derive it again. Older shapes still in the log have no
//! Rust type: the upcasters (`upcast`) turn them into these before they are deserialized.

use serde::{Deserialize, Serialize};

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

/// Why a payload could not become an event (see `Event::from_parts`).
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
