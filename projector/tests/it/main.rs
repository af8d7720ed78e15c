//! End-to-end tests of the write → decide → read pipeline on a real broker and a real
//! PostgreSQL: the three services over HTTP, projector crashes and takeovers, poison records,
//! events of older schema versions, a database outage, `projector verify`, `projector
//! rebuild` with its generations, and a write's trace from its request to its decision. The
//! projector runs in-process where a test only needs it running, and as a child process where
//! the test kills it with SIGKILL or sets its environment.

mod stack;

mod config_docs;
mod crashes;
mod determinism;
mod log_ends;
mod metrics;
mod pipeline;
mod poison;
mod rebuild;
mod schema_versions;
mod store;
mod switch;
mod traces;
mod verify;
