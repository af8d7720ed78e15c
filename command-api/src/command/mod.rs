//! The six writes as pure rules: which write a request is, its JSON body checked field by field
//! into a domain event, and the envelope that carries it. No IO, so every rule is unit-tested.
//!
//! From the bottom up:
//! - [`paths`]: the route templates of the writes.
//! - [`write`](mod@write): [`write::Write`], one of the six writes with the ids from its path,
//!   and what follows from that alone (method, route, idempotency scope).
//! - [`length`]: how long each string field may be, and how its length is counted.
//! - [`field_rules`]: each body checked field by field into its domain event.
//! - [`schema`]: the request bodies as JSON Schemas, from the same bounds.
//! - [`envelope`]: a write's ids and the envelope that carries its event.

pub mod envelope;
pub mod field_rules;
pub mod length;
pub mod paths;
pub mod schema;
pub mod write;
