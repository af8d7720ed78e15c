//! `sqlx::migrate!` embeds the migrations at compile time, but on stable Rust it cannot tell
//! cargo to watch their folder: without this, a new migration file would not rebuild the crate
//! and an old schema would ship.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
