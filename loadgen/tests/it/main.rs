//! Integration tests of loadgen, over real sockets, with nothing else running (no broker, no
//! PostgreSQL): `loadgen bare-server` started in-process on port 0 ([`bare`]), and an in-memory
//! fake of contract v1 ([`fake_api`]) for seeding, writes and the visibility lag ([`seeded`]),
//! and a fake with streams and injectable broken promises ([`chaos_fake`]) for the checks of
//! `loadgen chaos` ([`chaos`]).

mod bare;
mod broker;
mod chaos;
mod chaos_fake;
mod config_docs;
mod fake_api;
mod helpers;
mod seeded;
