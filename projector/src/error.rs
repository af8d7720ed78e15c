//! How writing the read model fails: [`StoreError`] tells a database that is away (retry later)
//! from a statement that will fail again (isolate the record that makes it fail).

/// Why a read-model write failed, and so what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL is unreachable or went away; retrying later may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// A statement failed for a reason that will not go away on retry (a constraint, bad data).
    #[error("statement failed: {0}")]
    Statement(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_transient(&e) {
            StoreError::Unavailable(e)
        } else {
            StoreError::Statement(e)
        }
    }
}

/// True for errors that say PostgreSQL is unreachable or busy, not that a statement is wrong.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        // Connection exceptions, resource shortage, operator intervention, rollbacks.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["08", "53", "57", "40"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}
