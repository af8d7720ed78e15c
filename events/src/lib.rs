//! The event contract shared by every service.
//!
//! The command API writes these events to Kafka, the projector decides and applies them, and a
//! rebuild replays them: this crate is the only place that says what an event looks like on the
//! wire. It does no IO.
//!
//! - [`envelope`]: the [`Envelope`] every event travels in (ids, ordering key, command id,
//!   `If-Match` expectation, acceptance time) and its JSON encoding and decoding, including the
//!   Kafka headers that repeat the type and schema version.
//! - [`domain`]: the domain events themselves, past tense (`user.registered`, `post.published`, ...).
//! - [`token`]: the consistency token a write returns and a read may present: a log position.
//! - [`progress`]: the notice the projector sends after each commit, which wakes waiting reads.

pub mod domain;
pub mod envelope;
pub mod progress;
pub mod token;

pub use domain::{
    AggregateType, Event, PostEdited, PostPublished, UserProfileUpdated, UserRegistered,
};
pub use envelope::{DecodeError, Envelope, Idempotency, headers};
pub use token::{ConsistencyToken, TokenError};
