//! `cargo xtask help` (and `./dev help`): the commands, their options and the environment.

/// What `help` prints: the commands as `./dev` names them, since that is how the README runs them.
pub const USAGE: &str = "\
Usage: ./dev <command> [args]   (or: cargo xtask <command> [args])

Commands:
  up [--instances N]
            Run the whole stack locally: PostgreSQL (must be installed), a Kafka-protocol broker
            (tansu, installed and started if none is running), and the three services built from
            this checkout. Prints the URLs; Ctrl-C stops everything it started. With
            --instances 2 (up to 9), that many instances of each service, the two APIs behind
            nginx (apt-get install nginx-light) on the usual ports.
  test      Run the workspace's tests against real PostgreSQL and a broker of their own
            (extra arguments go to the test runner, e.g. `./dev test -p query-api`). Among them,
            docs/configuration.md against every binary's options and the dashboards' metrics
            against docs/metrics.md.
  check     Formatting, clippy (warnings are errors), a syntax check of docker-compose.yml,
            the dependency tree against deny.toml (cargo-deny) and shellcheck on the scripts.
  broker    Start a broker on 127.0.0.1:9092 in the foreground (unless one is already there).
  walkthrough
            Walk through the API against a running `./dev up`, printing each request and answer.
  bench rebuild [--events N] [--json FILE]
            The rebuild benchmark (BENCHMARKS.md): fills a topic on a broker of its own with N
            events (default 1,000,000), times `projector rebuild` and a plain COPY of its rows.
  bench reads|writes [--duration 30s] [--connections 64] [--users N] [--posts N] [--out DIR]
            [--write-rate 400] [--burst-duration 60s]
            The load benchmarks (BENCHMARKS.md) on a stack of their own. reads: cached reads, a
            bare handler, cache-miss reads and `pgbench -S`, with their ratios. writes: the
            broker's own ceiling, accepted writes as fast as they go, the visibility lag at 400
            writes/s with 20,000 reads/s, and a burst of 1,200 writes/s with 40,000 reads/s.
  chaos [--short] [--write-rate N] [--out DIR]
            The fault-injection run (docs/fault-injection.md) on a stack of its own: two instances
            of each service behind nginx, a throwaway PostgreSQL cluster and broker; loadgen writes
            and reads while a command-api, a projector, a query-api instance, the broker and
            PostgreSQL are killed and restarted in turn, then checks nothing was lost, duplicated
            or read stale. --short: shorter outages, a debug build (CI). --write-rate: writes a
            second (default 40). Output in DIR (default .stack/chaos): report.json,
            timeline.jsonl, logs/.
  fuzz [--max-examples N] [--seed N]
            Fuzz both APIs from their /openapi.json with schemathesis (installed into
            ~/.cache/cqrs-kafka on first use) on a stack of their own (debug build, a private
            broker, database `fuzz`, write rate limits off). Fails on any 5xx, any answer
            that does not match the document, an invalid input that is not refused with a 4xx,
            or an error in the services' logs. N examples per operation and phase (default 200; about 3 minutes on 2 cores).
  tools     Install the pinned cargo-deny that `check` runs into ~/.cache/cqrs-kafka (CI does this
            first; a developer may, once).
  help      This text.

Environment (all optional):
  DATABASE_URL     database for `up` (default postgres://postgres@127.0.0.1:5432/userdata;
                   created if missing)
  KAFKA_BROKERS    use this broker for `up` instead of 127.0.0.1:9092 / a started tansu
  KAFKA_TOPIC      topic for `up` (default user-data-events)
  DEV_PROFILE      `release` (default) or `debug`: which build `up` runs
  TANSU_ROOT       where tansu is installed (default ~/.cache/cqrs-kafka/tansu-0.6.0)
  AUTH_KEYS        the command API's token keys for `up` (default: a key generated once into
                   .stack/auth-keys)
  LOG_FORMAT, RUST_LOG, COMMAND_API_ADDR, QUERY_API_ADDR, PROJECTOR_ADDR and the services'
  other variables are passed through to the services.
  TEST_DATABASE_URL, PG_BIN_DIR    override what `test` hands to the tests.
  POSTGRES_WAIT_SECS (60), BROKER_WAIT_SECS (60), READY_WAIT_SECS (120),
  TANSU_INSTALL_WAIT_SECS (3600)    how long to wait for PostgreSQL, a broker, a service's
                   /readyz and a tansu install.
  CARGO_DENY_ROOT  where `tools` installs cargo-deny and `check` looks for it.
";
