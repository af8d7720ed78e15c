//! PostgreSQL as the tasks use it: the machine's server (started when it does not answer), the
//! databases of `up`, `fuzz` and the benchmarks, and where the server binaries are.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::output::{say, show_log_tail};
use crate::process::{require, run_bounded};
use crate::settings::Waits;

/// How long one `pg_isready` or `pg_ctlcluster` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The newest version directory under `dir` (`/etc/postgresql`, `/usr/lib/postgresql`), in
/// version order: `16` after `9.6`.
pub fn newest_pg_version(dir: &Path) -> Option<String> {
    let mut versions: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort_by_key(|name| version_key(name));
    versions.pop()
}

fn version_key(name: &str) -> (Vec<u64>, String) {
    let numbers = name
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse().ok())
        .collect();
    (numbers, name.to_owned())
}

/// The server binaries of the newest installed PostgreSQL (`/usr/lib/postgresql/<v>/bin`), for
/// clusters of a task's or a test's own.
pub fn newest_server_bin_dir() -> anyhow::Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let version = newest_pg_version(root).with_context(|| {
        format!(
            "no PostgreSQL server binaries under {} (apt-get install postgresql)",
            root.display()
        )
    })?;
    Ok(root.join(version).join("bin"))
}

/// `url` without its query (`?sslmode=…`): how messages show a server.
pub fn without_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

/// The database name in a `postgres://` URL.
pub fn database_name(url: &str) -> &str {
    let base = without_query(url);
    base.rsplit_once('/').map_or(base, |(_, name)| name)
}

/// The same URL pointing at the `postgres` database (where databases are created and dropped).
pub fn admin_url(url: &str) -> String {
    with_database(url, "postgres")
}

/// `url` with its database replaced by `database`, its query kept.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(base, query)| (base, Some(query)));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

async fn is_ready(url: &str) -> anyhow::Result<bool> {
    let mut probe = Command::new("pg_isready");
    probe.args(["-q", "-d", url]).stdin(Stdio::null());
    Ok(run_bounded(&mut probe, PROBE_TIMEOUT, "pg_isready")
        .await?
        .success())
}

/// Makes sure the server behind `url` answers; starts the machine's local cluster (the newest
/// under `/etc/postgresql`) if it does not, and waits up to `waits.postgres` for it.
pub async fn ensure_postgres(url: &str, waits: &Waits) -> anyhow::Result<()> {
    require(
        "pg_isready",
        "install the PostgreSQL client (apt-get install postgresql-client)",
    )?;
    if is_ready(url).await? {
        return Ok(());
    }
    let shown = without_query(url);
    let version = newest_pg_version(Path::new("/etc/postgresql"));
    let (Some(version), true) = (version, crate::process::which("pg_ctlcluster").is_some()) else {
        bail!(
            "PostgreSQL does not answer at {shown} and there is no local cluster to start: \
             start PostgreSQL or set DATABASE_URL"
        );
    };
    say(format_args!(
        "PostgreSQL does not answer; starting the local cluster ({version}/main)"
    ));
    let mut start = Command::new("pg_ctlcluster");
    start
        .args(["--skip-systemctl-redirect", &version, "main", "start"])
        .stdin(Stdio::null());
    let started = run_bounded(&mut start, waits.postgres, "pg_ctlcluster").await?;
    if !started.success() {
        bail!(
            "PostgreSQL does not answer at {shown} and starting the local cluster failed (see above)"
        );
    }
    let deadline = Instant::now() + waits.postgres;
    while !is_ready(url).await? {
        if Instant::now() >= deadline {
            let log = PathBuf::from(format!("/var/log/postgresql/postgresql-{version}-main.log"));
            if log.exists() {
                show_log_tail(&log);
            }
            bail!(
                "PostgreSQL did not answer within {}s",
                waits.postgres.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// The database name of `url`, which must be a plain identifier (it is quoted into DDL).
fn plain_name(url: &str) -> anyhow::Result<&str> {
    let name = database_name(url);
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !plain {
        bail!("database name '{name}' (from DATABASE_URL) is not a plain identifier");
    }
    Ok(name)
}

/// How long one psql statement may take (a forced drop waits for its connections to close).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs one statement with psql (no psqlrc, unaligned tuples only) on the database of `url`;
/// its output, or `None` when psql failed (its error on stderr unless `quiet`).
async fn psql(url: &str, sql: &str, quiet: bool) -> anyhow::Result<Option<String>> {
    require(
        "psql",
        "install the PostgreSQL client (apt-get install postgresql-client)",
    )?;
    let mut command = Command::new("psql");
    command
        .args(["-X", "-q", "-t", "-A", "-d", url, "-c", sql])
        .stdin(Stdio::null())
        .stderr(if quiet {
            Stdio::null()
        } else {
            Stdio::inherit()
        })
        .kill_on_drop(true);
    let output = tokio::time::timeout(STATEMENT_TIMEOUT, command.output())
        .await
        .with_context(|| {
            format!(
                "psql did not finish within {} s at {}",
                STATEMENT_TIMEOUT.as_secs(),
                without_query(url)
            )
        })?
        .context("cannot run psql")?;
    Ok(output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned()))
}

/// Runs one SQL statement on the database of `url` with psql (bounded); fails with psql's error
/// shown.
pub async fn execute(url: &str, sql: &str) -> anyhow::Result<()> {
    psql(url, sql, false)
        .await?
        .with_context(|| format!("psql failed at {}: {sql}", without_query(url)))
        .map(drop)
}

/// Creates the database of `url` unless it exists.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let name = plain_name(url)?;
    let admin = admin_url(url);
    let exists = psql(
        &admin,
        &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
        false,
    )
    .await?
    .with_context(|| format!("cannot query PostgreSQL at {}", without_query(&admin)))?;
    if exists.trim() != "1" {
        say(format_args!("Creating database {name}"));
        psql(&admin, &format!("CREATE DATABASE \"{name}\""), false)
            .await?
            .with_context(|| format!("cannot create database {name}"))?;
    }
    Ok(())
}

/// Drops the database of `url` (closing its connections) and creates it again: for a read model
/// whose log is gone, or a run that starts from nothing.
pub async fn recreate_database(url: &str) -> anyhow::Result<()> {
    let name = plain_name(url)?;
    drop_database(url, name).await?;
    ensure_database(url).await
}

/// Drops database `name` on the server of `url`, if it exists (closing its connections).
pub async fn drop_database(url: &str, name: &str) -> anyhow::Result<()> {
    psql(
        &admin_url(url),
        &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        false,
    )
    .await?
    .with_context(|| format!("cannot drop database {name}"))?;
    Ok(())
}

/// Drops every database on the server of `url` whose name starts with `prefix` (the databases
/// of one test run); best effort, so that a clean-up never hides a test's result.
pub async fn drop_databases_starting_with(url: &str, prefix: &str) {
    let query = format!("SELECT datname FROM pg_database WHERE starts_with(datname, '{prefix}')");
    let Ok(Some(names)) = psql(url, &query, true).await else {
        return;
    };
    for name in names.lines().filter(|name| !name.is_empty()) {
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = psql(url, &drop, true).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_database_and_its_admin_twin() {
        let url = "postgres://postgres@127.0.0.1:5432/userdata?sslmode=disable";
        assert_eq!(database_name(url), "userdata");
        assert_eq!(
            admin_url(url),
            "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
        );
        assert_eq!(
            without_query(url),
            "postgres://postgres@127.0.0.1:5432/userdata"
        );
        assert!(plain_name("postgres://h/bad-name").is_err());
    }

    #[test]
    fn versions_sort_as_versions() {
        let mut names = ["9.6".to_owned(), "16".to_owned(), "15".to_owned()];
        names.sort_by_key(|name| version_key(name));
        assert_eq!(names.last().map(String::as_str), Some("16"));
    }
}
