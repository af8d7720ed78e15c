//! `cargo xtask up [--instances N]`: the whole stack on a developer machine. PostgreSQL (the
//! machine's, started if it does not answer), a broker (the one at KAFKA_BROKERS or on
//! 127.0.0.1:9092, else a tansu started with its data in `.stack/tansu`), and the three services
//! built from this checkout; with `--instances N`, N of each behind nginx. Runs until Ctrl-C,
//! SIGTERM or the exit of anything it started, then stops everything it started.

use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::layout::{log_dir, shown, stack_dir};
use crate::nginx::{Instances, require_nginx, start_instances_behind_nginx};
use crate::output::{say, show_log_tail};
use crate::postgres::{
    database_name, ensure_database, ensure_postgres, recreate_database, without_query,
};
use crate::process::{interrupted, port_accepts, probe_target};
use crate::settings::{Waits, var, var_or};
use crate::stack::{Launch, Profile, Stack, build_binaries, ensure_auth_keys};
use crate::tansu::DEFAULT_BROKER_PORT;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// How many instances of each service (1 to 9); from 2 on, the APIs run behind nginx.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=9))]
    pub instances: u8,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let waits = Waits::from_env()?;
    if args.instances > 1 {
        require_nginx()?;
    }
    let mut stack = Stack::new(log_dir(), waits)?;
    let outcome = tokio::select! {
        outcome = up(&mut stack, usize::from(args.instances)) => outcome,
        code = interrupted() => Ok(code),
    };
    Ok(stack.close(outcome).await)
}

/// The settings `up` gives the services when the environment does not.
const DEFAULTS: [(&str, &str); 7] = [
    (
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/userdata",
    ),
    ("KAFKA_TOPIC", "user-data-events"),
    ("COMMAND_API_ADDR", "127.0.0.1:8080"),
    ("QUERY_API_ADDR", "127.0.0.1:8081"),
    ("PROJECTOR_ADDR", "127.0.0.1:8082"),
    ("LOG_FORMAT", "text"),
    ("RUST_LOG", "info"),
];

async fn up(stack: &mut Stack, instances: usize) -> anyhow::Result<ExitCode> {
    let own_database = var("DATABASE_URL").is_some();
    for (name, default) in DEFAULTS {
        stack.set_env(name, var_or(name, default));
    }
    let setting = |name: &str| stack.env.get(name).cloned().unwrap_or_default();
    let (database_url, topic) = (setting("DATABASE_URL"), setting("KAFKA_TOPIC"));
    let command_addr = setting("COMMAND_API_ADDR");
    let query_addr = setting("QUERY_API_ADDR");
    let projector_addr = setting("PROJECTOR_ADDR");

    // Fail now rather than after a long build if a previous stack still holds the ports.
    for addr in [&command_addr, &projector_addr, &query_addr] {
        let (host, port) = probe_target(addr)?;
        if port_accepts(&host, port).await {
            bail!(
                "something already listens on {addr} (another ./dev up?); stop it or set the *_ADDR variables"
            );
        }
    }

    say("Checking PostgreSQL");
    ensure_postgres(&database_url, &stack.waits).await?;
    ensure_database(&database_url).await?;

    let bin_dir = build_binaries(Profile::parse(&var_or("DEV_PROFILE", "release"))?).await?;

    // After the build, so that a broker this task starts is not left idle through it.
    say("Checking the broker");
    let (brokers, fresh_log) = ensure_dev_broker(stack).await?;
    stack.set_env("KAFKA_BROKERS", brokers.clone());
    // The read model is derived from the log: a new log needs an empty one, or the projector
    // (rightly) refuses a database that is ahead of its log. Only the default database is reset;
    // one named in DATABASE_URL is the caller's.
    if fresh_log && !own_database {
        say(format_args!(
            "The broker's log is new, so the read model starts empty too: recreating database {}",
            database_name(&database_url)
        ));
        recreate_database(&database_url).await?;
    }

    let keys = ensure_auth_keys()?;
    stack.set_env("AUTH_KEYS", keys);
    // The command-api creates the topic, which the projector subscribes to (a consumer that finds
    // no topic only notices it at its next metadata refresh, minutes later); the projector
    // applies the migrations that the query-api reads with.
    let nginx_dir = stack_dir().join("nginx");
    if instances == 1 {
        for (name, addr) in [
            ("command-api", &command_addr),
            ("projector", &projector_addr),
            ("query-api", &query_addr),
        ] {
            stack
                .start_service(name, Launch::service(&bin_dir, name, addr, &[]))
                .await?;
        }
    } else {
        let layout = Instances {
            count: instances,
            bin_dir: &bin_dir,
            nginx_dir: &nginx_dir,
            command_listen: &command_addr,
            query_listen: &query_addr,
            projector_addr: Some(&projector_addr),
            command_env: &[],
        };
        start_instances_behind_nginx(stack, &layout).await?;
    }

    let projector_line = if instances == 1 {
        format!("  projector (health)     http://{projector_addr}")
    } else {
        let mut line = format!(
            "  load balancer          nginx, config in {}\n  instances behind it:",
            shown(&nginx_dir.join("nginx.conf"))
        );
        for started in &stack.processes {
            if let Some(launch) = &started.launch {
                line.push_str(&format!(
                    "\n    {:<20} http://{}",
                    started.name, launch.addr
                ));
            }
        }
        line
    };
    let logs = shown(&stack.log_dir);
    println!(
        "
The stack is up:
  command API (writes)   http://{command_addr}
  query API (reads)      http://{query_addr}
{projector_line}
  broker                 {brokers}, topic {topic}
  database               {}
Logs: {logs}/ (tail -f {logs}/*.log)
Press Ctrl-C to stop.
",
        without_query(&database_url)
    );

    // Returns when any of them exits; a signal ends the task in `run`.
    let (name, log) = stack.first_exit().await;
    show_log_tail(&log);
    bail!("{name} exited unexpectedly; stopping the rest")
}

/// Resolves which broker `up` uses, starting tansu when there is none: its address, and whether
/// its log is new (a tansu started here on no earlier data).
async fn ensure_dev_broker(stack: &mut Stack) -> anyhow::Result<(String, bool)> {
    if let Some(brokers) = var("KAFKA_BROKERS") {
        let first = brokers.split(',').next().unwrap_or_default();
        let (host, port) = probe_target(first)
            .with_context(|| format!("KAFKA_BROKERS={brokers} does not start with a host:port"))?;
        if !port_accepts(&host, port).await {
            bail!("KAFKA_BROKERS={brokers} is set but nothing accepts connections at {first}");
        }
        say(format_args!(
            "Using the broker at {brokers} (from KAFKA_BROKERS)"
        ));
        return Ok((brokers, false));
    }
    let brokers = format!("127.0.0.1:{DEFAULT_BROKER_PORT}");
    if port_accepts("127.0.0.1", DEFAULT_BROKER_PORT).await {
        say(format_args!(
            "Using the broker already listening on {brokers}"
        ));
        return Ok((brokers, false));
    }
    let fresh = stack
        .start_dev_broker(&format!(
            "Starting tansu on {brokers} (data in .stack/tansu, log in .stack/logs/tansu.log)"
        ))
        .await?;
    Ok((brokers, fresh))
}
