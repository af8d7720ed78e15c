//! The read-model generations' catalogue (`public.read_model_generations`), as reads see it:
//! which generation is active, on the primary or on a replica.

use events::progress::FIRST_GENERATION;

/// The active read-model generation as the catalogue says; the first one (`public`) when the
/// database has no catalogue (yet) or no active row.
pub async fn active_generation<'c, E>(executor: E) -> Result<String, sqlx::Error>
where
    E: sqlx::PgExecutor<'c>,
{
    let active: Result<Option<String>, sqlx::Error> =
        sqlx::query_scalar("SELECT name FROM public.read_model_generations WHERE state = 'active'")
            .fetch_optional(executor)
            .await;
    match active {
        Ok(active) => Ok(active.unwrap_or_else(|| FIRST_GENERATION.to_owned())),
        // undefined_table: a database the projector has not migrated that far.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
            Ok(FIRST_GENERATION.to_owned())
        }
        Err(e) => Err(e),
    }
}
