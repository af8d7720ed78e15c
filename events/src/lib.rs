//! The event contract shared by every service.
//!
//! The command API writes these events to Kafka, the projector decides and applies them, and a
//! rebuild replays them: this crate is the only place that says what an event looks like on the
//! wire. It does no IO.
//!
//! Layout, from the bottom layer up (each module uses only modules listed before it):
//! - [`event_type`]: the kinds of event ([`EventType`]), their wire names and the schema version
//!   of each type.
//! - [`payload`]: each type's payload in its newest shape ([`UserRegistered`], [`PostPublished`],
//!   ...), and [`PayloadError`], why a payload could not be read.
//! - [`upcast`]: the chain of upcasters that turns a payload of an older schema version into the
//!   newest shape on decoding, and the history of every version (see its module docs).
//! - [`domain`]: the domain events themselves ([`Event`]), past tense (`user.registered`,
//!   `post.published`, ...), the [`AggregateType`] each belongs to, and how a payload of any
//!   version becomes one.
//! - [`envelope`]: the [`Envelope`] every event travels in (ids, ordering key, command id,
//!   `If-Match` expectation, acceptance time) and its JSON encoding and decoding, including the
//!   Kafka headers that repeat the type and schema version.
//! - [`token`]: the consistency token a write returns and a read may present: a log position.
//! - [`progress`]: the notice the projector sends after each commit, which wakes waiting reads.
//!
//! `corpus/` holds one envelope for every type and schema version that was ever written; a test
//! decodes them all, so a change that would break old events in the log fails here first.

pub mod domain;
pub mod envelope;
pub mod event_type;
pub mod payload;
pub mod progress;
pub mod token;
pub mod upcast;

#[cfg(test)]
mod corpus_tests;

pub use domain::{AggregateType, Event};
pub use envelope::{DecodeError, Envelope, Idempotency, headers};
pub use event_type::EventType;
pub use payload::{
    PayloadError, PostEdited, PostFormat, PostPublished, UserProfileUpdated, UserRegistered,
};
pub use token::{ConsistencyToken, TokenError};
