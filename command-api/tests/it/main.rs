//! Integration tests of the command API: the real service over HTTP, a real broker.

mod accepted;
mod auth;
mod backpressure;
mod boundaries;
mod broker_down;
mod config_docs;
mod helpers;
mod idempotency;
mod limits;
mod metrics;
mod openapi;
mod ratelimit;
mod rejected;
mod startup;
