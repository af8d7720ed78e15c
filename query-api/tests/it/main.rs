//! Integration tests of the query API: real PostgreSQL, HTTP over real sockets.
//!
//! Each test gets a migrated database of its own, puts rows in place as the projector would
//! (see [`seed`]), and talks to an [`helpers::TestApp`] built on port 0. A row changed behind
//! the app's back (without a progress notice naming it) may still be answered from its cache:
//! [`cache`] relies on that to show where answers come from.
//!
//! [`status_page`] is the exception: it projects a real log with a real projector (on the
//! broker of `KAFKA_BROKERS`) and looks at the status page in headless Chromium.

mod browser;
mod cache;
mod commands;
mod conditional;
mod config_docs;
mod consistency;
mod generations;
mod helpers;
mod metrics;
mod openapi;
mod outage;
mod pagination;
mod reads;
mod replicas;
mod seed;
mod status;
mod status_page;
mod streams;
