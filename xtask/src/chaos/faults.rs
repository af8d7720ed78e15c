//! The faults and how each is injected: killed (SIGKILL; PostgreSQL crashed with `pg_ctl stop -m
//! immediate`), down for a while, started again exactly as it was started (same command, port,
//! environment and data), waited for until ready, then left under load; each step written to
//! the timeline.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::cluster::Cluster;
use super::load::Load;
use super::timeline::Timeline;
use crate::output::{say, warn};
use crate::stack::Stack;

/// How long to wait for a command API instance to hold a write in flight before killing it.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(10);

/// One part of the stack the run kills and starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    CommandApi,
    Projector,
    QueryApi,
    Broker,
    Postgres,
}

impl Fault {
    /// Every fault, in the order the run injects them.
    pub const ALL: [Fault; 5] = [
        Fault::CommandApi,
        Fault::Projector,
        Fault::QueryApi,
        Fault::Broker,
        Fault::Postgres,
    ];

    /// Its name in the timeline and loadgen's table.
    pub fn name(self) -> &'static str {
        match self {
            Fault::CommandApi => "command-api",
            Fault::Projector => "projector",
            Fault::QueryApi => "query-api",
            Fault::Broker => "broker",
            Fault::Postgres => "postgres",
        }
    }

    /// The instance a service fault kills: the first of the two.
    fn instance(self) -> String {
        format!("{}-1", self.name())
    }
}

/// What the faults act on.
pub struct Target<'a> {
    pub stack: &'a mut Stack,
    pub cluster: &'a Cluster,
    pub load: &'a mut Load,
    pub timeline: &'a Timeline,
}

/// One fault: kill, stay down `down`, start again as it was started, wait until it is ready,
/// then `settle` under load (failing if the load stops meanwhile). The timeline gets `kill`,
/// `restart` and `ready`.
pub async fn inject(
    fault: Fault,
    down: Duration,
    settle: Duration,
    target: &mut Target<'_>,
) -> anyhow::Result<()> {
    let name = fault.name();
    say(format_args!(
        "Fault: {name} (down {}s, then {}s under load)",
        down.as_secs(),
        settle.as_secs()
    ));
    if fault == Fault::CommandApi {
        wait_for_write_in_flight(target.stack, &fault.instance()).await?;
    }
    // Written before the kill: a request that fails as the kill lands belongs to this window.
    target.timeline.record(name, "kill")?;
    match fault {
        Fault::Broker => broker(target.stack)?.kill().await,
        Fault::Postgres => target.cluster.crash().await?,
        _ => target.stack.kill(&fault.instance()).await?,
    }
    tokio::time::sleep(down).await;
    target.timeline.record(name, "restart")?;
    match fault {
        Fault::Broker => {
            let waits = target.stack.waits;
            let broker = broker(target.stack)?;
            let killed = broker.log.with_file_name("tansu.killed.log");
            std::fs::rename(&broker.log, &killed)
                .with_context(|| format!("cannot move {} aside", broker.log.display()))?;
            // The same port and data; it returns once the port accepts connections.
            broker.start_again(&waits).await?;
        }
        Fault::Postgres => {
            target.cluster.start().await?;
            target.cluster.wait_ready().await?;
        }
        _ => {
            let instance = fault.instance();
            target.stack.restart(&instance)?;
            target.stack.wait_until_ready(&instance).await?;
        }
    }
    target.timeline.record(name, "ready")?;
    say(format_args!("{name} is back; settling"));
    target.load.sleep_watching(settle).await
}

fn broker(stack: &mut Stack) -> anyhow::Result<&mut crate::tansu::Broker> {
    stack
        .broker
        .as_mut()
        .context("the run has no broker to kill")
}

/// Waits (up to [`IN_FLIGHT_WAIT`]) until the command API instance `name` holds a write the
/// broker has not acknowledged yet, so that it dies in the middle of one: the client of that
/// write then meets the case the load balancer cannot hide (the request was sent, so nginx must
/// not replay it) and must retry with its Idempotency-Key. Best effort: the acknowledgement may
/// still win the race with the kill.
async fn wait_for_write_in_flight(stack: &Stack, name: &str) -> anyhow::Result<()> {
    let addr = &stack
        .launch(name)
        .with_context(|| format!("no service named {name}"))?
        .addr;
    let url = format!("http://{addr}/metrics");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .context("cannot make an HTTP client")?;
    let deadline = Instant::now() + IN_FLIGHT_WAIT;
    // As often as the answers come: the window between a write's append and its
    // acknowledgement is milliseconds.
    while Instant::now() < deadline {
        let metrics = match http.get(&url).send().await {
            Ok(answer) => answer.text().await.unwrap_or_default(),
            Err(_) => {
                // Not answering: no reason to ask again at once.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Some(in_flight) = writes_in_flight(&metrics) {
            say(format_args!(
                "{name} holds {in_flight} write(s) the broker has not acknowledged: killing it now"
            ));
            return Ok(());
        }
    }
    warn(format_args!(
        "{name} held no unacknowledged write within {} s; killing it anyway",
        IN_FLIGHT_WAIT.as_secs()
    ));
    Ok(())
}

/// The `command_writes_in_flight` gauge's value when it is above 0, as the exposition writes it.
fn writes_in_flight(metrics: &str) -> Option<&str> {
    metrics.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != "command_writes_in_flight" {
            return None;
        }
        let value = words.next()?;
        (value.parse::<f64>().ok()? > 0.0).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_in_flight_gauge() {
        let metrics = "# TYPE command_writes_in_flight gauge\ncommand_writes_in_flight 2\n";
        assert_eq!(writes_in_flight(metrics), Some("2"));
        assert_eq!(writes_in_flight("command_writes_in_flight 0\n"), None);
        assert_eq!(writes_in_flight(""), None);
    }
}
