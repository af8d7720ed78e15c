//! Real dependencies for the integration tests: a fresh PostgreSQL database per test, a topic per
//! test on a real Kafka-protocol broker, and for fault tests a broker or a PostgreSQL cluster of
//! the test's own that it can stop and start.
//!
//! This crate earns its place by keeping the three services' test binaries on one harness: the
//! same environment variables, the same clean-up, the same way to stop a dependency.
//!
//! The feature `harness` (on by default) is all of the above; without it (the developer tasks,
//! `xtask`, which start brokers with [`tansu::start`]) the crate leaves out what needs a Kafka
//! client, PostgreSQL's client or an HTTP client, and builds in seconds.
//!
//! Environment (`./dev test`, that is `cargo xtask test`, sets all of them):
//! - `TEST_DATABASE_URL`: an admin connection to the shared server (default
//!   `postgres://postgres@127.0.0.1:5432/postgres`); each test gets `CREATE DATABASE` of its own.
//! - `KAFKA_BROKERS`: the shared broker (default `127.0.0.1:9092`); each test gets its own topic.
//! - `TEST_DATABASE_PREFIX`: how the names of the tests' databases start (default `test_`).
//! - `TANSU_BIN`: the broker binary for [`OwnBroker`].
//! - `TANSU_DB`: the shared broker's sqlite file, when `./dev` started that broker (checked for
//!   the indexes of [`tansu`]).
//! - `PG_BIN_DIR`: PostgreSQL's server binaries for [`OwnPostgres`] and its standbys (default:
//!   the newest under `/usr/lib/postgresql`).
//!
//! [`openapi`] checks real answers against a service's OpenAPI document.
//! [`metrics_docs`] holds each service's check of its `/metrics` against `docs/metrics.md`,
//! [`config_docs`] each binary's check of its options against `docs/configuration.md`, and
//! [`dashboards`] the check of the Grafana dashboards' metrics against `docs/metrics.md`.
//! [`tansu`] adds the indexes tansu's storage lacks to every broker a test starts.

pub mod openapi;

use std::net::TcpListener;
use std::path::PathBuf;
#[cfg(feature = "harness")]
use std::process::Stdio;
use std::time::Duration;
#[cfg(feature = "harness")]
use std::time::Instant;

#[cfg(feature = "harness")]
use anyhow::Context;
#[cfg(feature = "harness")]
use rdkafka::ClientConfig;
#[cfg(feature = "harness")]
use rdkafka::consumer::{BaseConsumer, Consumer};
#[cfg(feature = "harness")]
use sqlx::{Connection, Executor, PgConnection};
use tokio::process::Child;
use uuid::Uuid;

pub mod config_docs;
pub mod dashboards;
pub mod metrics_docs;
pub mod tansu;

#[cfg(feature = "harness")]
/// The migrations the projector applies, for tests that set up a schema without a projector.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The shared broker's bootstrap address.
pub fn kafka_brokers() -> String {
    env_or("KAFKA_BROKERS", "127.0.0.1:9092")
}

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("test-{prefix}-{}", Uuid::new_v4().simple())
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

#[cfg(feature = "harness")]
/// A database of the test's own on the shared server, dropped by [`TestDb::drop_database`] or
/// left for inspection when a test fails.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

#[cfg(feature = "harness")]
impl TestDb {
    /// Creates an empty database (no schema).
    pub async fn create() -> TestDb {
        let admin_url = env_or(
            "TEST_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        Self::create_on(&admin_url).await
    }

    /// Creates an empty database on the server `admin_url` points at.
    pub async fn create_on(admin_url: &str) -> TestDb {
        // `./dev test` sets a prefix per run, and drops that run's databases at its end.
        let prefix = env_or("TEST_DATABASE_PREFIX", "test_");
        let name = format!("{prefix}{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(admin_url)
            .await
            .expect("connect to PostgreSQL");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        let url = replace_database(admin_url, &name);
        TestDb {
            name,
            url,
            admin_url: admin_url.to_owned(),
        }
    }

    /// Creates a database with the projector's migrations applied.
    pub async fn migrated() -> TestDb {
        let db = Self::create().await;
        let pool = db.pool().await;
        MIGRATOR.run(&pool).await.expect("migrate");
        pool.close().await;
        db
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }

    pub async fn drop_database(self) {
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = admin
                .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
                .await;
        }
    }
}

#[cfg(feature = "harness")]
fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(feature = "harness")]
/// The sum of a topic's partition end offsets: how many records it holds. Tests compare it
/// before and after a request to prove that nothing was appended.
pub fn topic_end_offset_sum(brokers: &str, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("watermarks-{}", Uuid::new_v4().simple()),
        )
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let topic_md = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .context("topic not in metadata")?;
    let mut sum = 0;
    for p in topic_md.partitions() {
        let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        sum += high;
    }
    Ok(sum)
}

/// A Kafka-protocol broker (tansu) of the test's own, on its own port and storage, that the test
/// can stop and start again with its data.
#[derive(Debug)]
pub struct OwnBroker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnBroker {
    pub async fn start() -> OwnBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut broker = OwnBroker {
            port: free_port(),
            dir,
            child: None,
        };
        broker.resume().await;
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's sqlite file.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("tansu.db")
    }

    /// Starts the broker process again (on the same port and data) after [`OwnBroker::stop`].
    pub async fn resume(&mut self) {
        let bin = PathBuf::from(env_or("TANSU_BIN", "tansu"));
        let child = tansu::start(
            &bin,
            self.port,
            self.dir.path(),
            &self.dir.path().join("tansu.log"),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("start broker {}: {e:#} (set TANSU_BIN)", bin.display()));
        self.child = Some(child);
    }

    /// Freezes the broker process (SIGSTOP): its sockets stay open and the kernel still takes
    /// what clients send, but nothing is answered until [`OwnBroker::unpause`]. A broker that
    /// is slow rather than down, with nothing lost: a test decides when it answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused broker go on (SIGCONT); it answers what arrived meanwhile.
    pub fn unpause(&self) {
        self.signal("CONT");
    }

    /// Sends a signal with kill(1), which spares the crate a libc dependency for two calls.
    fn signal(&self, name: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("the broker is running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{name} {pid}: {status}");
    }

    /// Kills the broker process; its data stays.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

#[cfg(feature = "harness")]
/// A throwaway PostgreSQL cluster (`initdb` in a temp dir, its own port) that a fault test may
/// stop and start without touching the machine's shared server; or a hot standby of one
/// ([`OwnPostgres::start_standby`]) whose replay a test may pause.
#[derive(Debug)]
pub struct OwnPostgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

#[cfg(feature = "harness")]
impl OwnPostgres {
    pub async fn start() -> OwnPostgres {
        let bin = std::env::var("PG_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| newest_pg_bin());
        let dir = cluster_dir();
        let data = dir.path().join("data");
        let initdb = run_pg(
            &bin.join("initdb"),
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        assert!(initdb.success(), "initdb failed");
        let pg = OwnPostgres {
            port: free_port(),
            dir,
            bin,
        };
        pg.resume().await;
        pg
    }

    pub fn admin_url(&self) -> String {
        self.url_of("postgres")
    }

    pub async fn resume(&self) {
        let data = self.dir.path().join("data").display().to_string();
        let log = self.dir.path().join("pg.log").display().to_string();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let status = run_pg(
            &self.bin.join("pg_ctl"),
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        );
        assert!(status.success(), "pg_ctl start failed; see {log}");
    }

    /// A URL of database `name` on this cluster.
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts a hot standby of this cluster on a port and in a temp dir of its own: a base
    /// backup (`pg_basebackup -R -X stream`) that then streams this cluster's WAL and replays
    /// it. initdb's pg_hba already trusts replication connections from 127.0.0.1.
    pub async fn start_standby(&self) -> OwnPostgres {
        let dir = cluster_dir();
        let data = dir.path().join("data").display().to_string();
        let port = self.port.to_string();
        let backup = run_pg(
            &self.bin.join("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                // Rather than wait for the primary's next scheduled checkpoint.
                "--checkpoint=fast",
            ],
        );
        assert!(backup.success(), "pg_basebackup failed");
        let standby = OwnPostgres {
            port: free_port(),
            dir,
            bin: self.bin.clone(),
        };
        standby.resume().await;
        standby
    }

    /// On a standby: stops replaying WAL (it still receives it) and returns once it has
    /// stopped, so that nothing committed on the primary from now on shows here.
    pub async fn pause_replay(&self) {
        let mut standby = self.admin().await;
        sqlx::query("SELECT pg_wal_replay_pause()")
            .execute(&mut standby)
            .await
            .expect("pause replay");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
                .fetch_one(&mut standby)
                .await
                .expect("replay pause state");
            if state == "paused" {
                return;
            }
            assert!(Instant::now() < deadline, "replay still {state} after 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// On a standby: replays WAL again.
    pub async fn resume_replay(&self) {
        sqlx::query("SELECT pg_wal_replay_resume()")
            .execute(&mut self.admin().await)
            .await
            .expect("resume replay");
    }

    /// On a standby: returns once it has replayed everything `primary` has written so far.
    pub async fn wait_for_replay_of(&self, primary: &OwnPostgres) {
        let written: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut primary.admin().await)
            .await
            .expect("primary's WAL position");
        let mut standby = self.admin().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let replayed: Option<bool> =
                sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
                    .bind(&written)
                    .fetch_one(&mut standby)
                    .await
                    .expect("standby's replay position");
            if replayed == Some(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the standby has not replayed up to {written} after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn admin(&self) -> PgConnection {
        PgConnection::connect(&self.admin_url())
            .await
            .expect("connect to the cluster")
    }

    /// Stops the cluster at once (`-m immediate`): a crash, as far as clients can tell.
    pub async fn stop(&self) {
        let data = self.dir.path().join("data").display().to_string();
        let status = run_pg(
            &self.bin.join("pg_ctl"),
            &["-D", &data, "-m", "immediate", "-w", "stop"],
        );
        assert!(status.success(), "pg_ctl stop failed");
    }
}

#[cfg(feature = "harness")]
impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data").display().to_string();
        let _ = run_pg(
            &self.bin.join("pg_ctl"),
            &["-D", &data, "-m", "immediate", "-w", "stop"],
        );
    }
}

#[cfg(feature = "harness")]
/// A temp dir for a cluster of our own. initdb and postgres refuse to run as root, so when we
/// are root the cluster runs as the postgres user ([`run_pg`]), which must own the dir.
fn cluster_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    if running_as_root() {
        std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown temp dir");
    }
    dir
}

#[cfg(feature = "harness")]
fn run_pg(program: &std::path::Path, args: &[&str]) -> std::process::ExitStatus {
    as_postgres(program)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

/// `program` (initdb, postgres, pg_ctl), run as the postgres user when this process is root:
/// the server's programs refuse to run as root.
pub fn as_postgres(program: &std::path::Path) -> std::process::Command {
    if running_as_root() {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        std::process::Command::new(program)
    }
}

/// True when this process runs as root, so that a cluster of its own runs as the postgres user
/// ([`as_postgres`]), which must then own the cluster's directory.
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(feature = "harness")]
fn newest_pg_bin() -> PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_unstable();
    let version = versions.last().copied().unwrap_or(15);
    PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"))
}

#[cfg(feature = "harness")]
/// A plain HTTP client for the tests. Its timeout is a last resort against a hang, longer than
/// any bound a service under test applies itself (the tests' consistency wait is 60 s), so that
/// a slow answer fails on the service's own terms (a 503), not on the client's.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client")
}
