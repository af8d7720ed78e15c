//! The bounds of the tasks' waits, from the environment: every wait on something that gives no
//! signal but its socket or `/readyz` ends after one of these.

use std::time::Duration;

use anyhow::Context;

/// How long to wait for each kind of thing.
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    /// `POSTGRES_WAIT_SECS` (60): PostgreSQL answering `pg_isready`.
    pub postgres: Duration,
    /// `BROKER_WAIT_SECS` (60): a started tansu accepting connections.
    pub broker: Duration,
    /// `READY_WAIT_SECS` (120): a started service answering its readiness path, nginx listening.
    pub ready: Duration,
    /// `TANSU_INSTALL_WAIT_SECS` (3600): another task's tansu install (~12 minutes on 2 cores).
    pub tansu_install: Duration,
}

impl Waits {
    /// Reads the four variables; a value that is not a whole number of seconds is an error.
    pub fn from_env() -> anyhow::Result<Waits> {
        Ok(Waits {
            postgres: seconds("POSTGRES_WAIT_SECS", 60)?,
            broker: seconds("BROKER_WAIT_SECS", 60)?,
            ready: seconds("READY_WAIT_SECS", 120)?,
            tansu_install: seconds("TANSU_INSTALL_WAIT_SECS", 3600)?,
        })
    }
}

/// The variable `name` as seconds, `default` when unset or empty.
pub fn seconds(name: &str, default: u64) -> anyhow::Result<Duration> {
    let secs = match std::env::var(name) {
        Ok(value) if !value.is_empty() => value
            .trim()
            .parse()
            .with_context(|| format!("{name} must be a whole number of seconds, not '{value}'"))?,
        _ => default,
    };
    Ok(Duration::from_secs(secs))
}

/// The variable `name`, or `default` when it is unset or empty (as `${NAME:-default}`).
pub fn var_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => default.to_owned(),
    }
}

/// The variable `name` when it is set and not empty.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}
