//! tansu as this project runs it: [`start`] starts a broker on a port and a data directory
//! (for a test's [`OwnBroker`](crate::OwnBroker) and for every broker `./dev` starts) with the
//! indexes tansu 0.6's sqlite storage lacks (`deploy/tansu/indexes.sql`) added at every start,
//! and the query plans that show whether the lookups of a fetch and a produce use them.
//!
//! The sqlite3 shell does the indexing: it is the tool an operator would use on the file, and it
//! spares the workspace a second SQLite library beside the broker's own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// The file of statements that add the missing indexes; idempotent.
pub const INDEXES_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/tansu/indexes.sql");

/// tansu 0.6's per-record header query, as tansu-storage 0.6.0 ships it
/// (`src/sql/header_fetch.sql`, comments left out): what every fetched record costs.
pub const HEADER_FETCH: &str = "select h.k, h.v
from header h
join record r on h.topition = r.topition and h.offset_id = r.offset_id
join topition tp on tp.id = r.topition
join topic t on tp.topic = t.id
join cluster c on t.cluster = c.id
where c.name = $1
and t.name = $2
and tp.partition = $3
and r.offset_id = $4";

/// tansu 0.6's lookup of a partition's watermarks (`src/sql/watermark_select_no_update.sql`),
/// which every produce and every fetched partition runs in one form or another.
pub const WATERMARK_SELECT: &str = "select w.low, w.high
from cluster c
join topic t on t.cluster = c.id
join topition tp on tp.topic = t.id
join watermark w on w.topition = tp.id
where c.name = $1
and t.name = $2
and tp.partition = $3";

/// How long the shell waits for tansu's write lock (tansu holds it per produce request).
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The file of a broker's storage in its data directory.
pub fn storage_in(data_dir: &Path) -> PathBuf {
    data_dir.join("tansu.db")
}

/// Starts tansu (`bin`) on 127.0.0.1:`port` with its sqlite storage in `data_dir` (created if
/// missing; its data kept from an earlier start) and its output in `log` (emptied first), waits
/// up to `within` for it to accept connections, and adds the missing indexes before anything
/// else connects. On failure the process is killed; the error names the log.
///
/// tansu also reads its settings from the environment; a caller's stray ones are kept out, and
/// so is `RUST_LOG`, the services' setting: at `info` tansu logs every span, hundreds of MB a
/// minute.
pub async fn start(
    bin: &Path,
    port: u16,
    data_dir: &Path,
    log: &Path,
    within: Duration,
) -> anyhow::Result<Child> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let db = std::path::absolute(storage_in(data_dir))
        .with_context(|| format!("cannot resolve {}", data_dir.display()))?;
    let output = std::fs::File::create(log)
        .with_context(|| format!("cannot create the broker's log {}", log.display()))?;
    let url = format!("tcp://127.0.0.1:{port}");
    // tansu drops the leading slash of what follows `sqlite://` and opens the rest relative to
    // its working directory, so an absolute path needs `sqlite:///` + path. Its memory:// engine
    // reports wrong watermarks, so always sqlite.
    let mut child = Command::new(bin)
        .arg("broker")
        .arg("--storage-engine")
        .arg(format!("sqlite:///{}", db.display()))
        .arg("--listener-url")
        .arg(&url)
        .arg("--advertised-listener-url")
        .arg(&url)
        .env_remove("CLUSTER_ID")
        .env_remove("SCHEMA_REGISTRY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(output.try_clone().context("the broker's log")?)
        .stderr(output)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start tansu ({})", bin.display()))?;
    let deadline = Instant::now() + within;
    loop {
        let probe = tokio::net::TcpStream::connect(("127.0.0.1", port));
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), probe).await {
            break;
        }
        if !matches!(child.try_wait(), Ok(None)) {
            bail!(
                "tansu exited before it accepted connections on 127.0.0.1:{port} (log: {})",
                log.display()
            );
        }
        if Instant::now() >= deadline {
            let _ = child.kill().await;
            bail!(
                "tansu did not accept connections on 127.0.0.1:{port} within {}s (log: {})",
                within.as_secs(),
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // tansu creates its tables before it accepts connections, so the indexes can go in now; the
    // statements are idempotent, so every start runs them.
    if let Err(error) = index(&db).await {
        let _ = child.kill().await;
        return Err(error.context(format!(
            "could not add the missing indexes to tansu's storage ({})",
            db.display()
        )));
    }
    Ok(child)
}

/// Runs [`INDEXES_FILE`] on the database file `db` of a tansu that has started (and so has
/// created its tables).
pub async fn index(db: &Path) -> anyhow::Result<()> {
    sqlite(db, &format!(".read '{INDEXES_FILE}'"))
        .await
        .map(drop)
}

/// The plan sqlite chooses for `query` (such as [`HEADER_FETCH`]), one line per step.
pub async fn plan(db: &Path, query: &str) -> anyhow::Result<String> {
    sqlite(db, &format!("explain query plan {query};")).await
}

async fn sqlite(db: &Path, sql: &str) -> anyhow::Result<String> {
    let child = Command::new("sqlite3")
        .arg("-bail")
        .arg("-cmd")
        .arg(format!(".timeout {}", LOCK_WAIT.as_millis()))
        .arg(db)
        .arg(sql)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("run sqlite3 (apt-get install sqlite3)")?;
    let output = tokio::time::timeout(LOCK_WAIT * 2, child.wait_with_output())
        .await
        .with_context(|| format!("sqlite3 on {} did not finish", db.display()))??;
    if !output.status.success() {
        bail!(
            "sqlite3 on {}: {}",
            db.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OwnBroker;

    /// Fails unless a fetch finds each record's headers through the index (`SEARCH h USING INDEX`);
    /// without it the plan says `SCAN h`, a pass over every header in the log per record. The
    /// same for the watermark lookups (`SCAN w` without the index).
    async fn assert_lookups_indexed(db: &Path) {
        let lookups = [
            (
                HEADER_FETCH,
                "SEARCH h USING INDEX header_by_record (topition=? AND offset_id=?)",
                "SCAN h",
            ),
            (
                WATERMARK_SELECT,
                "SEARCH w USING INDEX watermark_by_topition (topition=?)",
                "SCAN w",
            ),
        ];
        for (query, indexed, scan) in lookups {
            let plan = plan(db, query).await.expect("query plan");
            assert!(
                plan.contains(indexed) && !plan.contains(scan),
                "a lookup in {} is not indexed ({scan}):\n{query}\n{plan}",
                db.display()
            );
        }
    }

    #[tokio::test]
    async fn a_broker_of_a_test_uses_the_added_indexes_after_every_start() {
        let mut broker = OwnBroker::start().await;
        assert_lookups_indexed(&broker.storage()).await;
        broker.stop().await;
        broker.resume().await;
        assert_lookups_indexed(&broker.storage()).await;
    }

    /// `./dev` starts the tests' shared broker (as it starts every other one) and names its file.
    #[tokio::test]
    async fn the_shared_broker_uses_the_added_indexes() {
        let Ok(db) = std::env::var("TANSU_DB") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "TANSU_DB is not set: run the tests with ./dev test"
            );
            return;
        };
        assert_lookups_indexed(Path::new(&db)).await;
    }
}
