//! Processes and ports: whether something listens, bounded waits for a socket, running a command
//! with a bound, stopping a child gracefully, and the signals that end a task.
//!
//! Every wait here ends: on its deadline, or as soon as the process it waits for has died.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal};
use tokio::process::{Child, Command};

use crate::output::warn;

/// How long [`port_accepts`] waits for one connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`stop_child`] gives a process for a clean shutdown before it kills it.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// True when something accepts TCP connections on `host:port`.
pub async fn port_accepts(host: &str, port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((host, port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// Waits until `host:port` accepts connections; false after `within`, or as soon as `child`
/// (when given) has exited.
pub async fn wait_for_port(
    host: &str,
    port: u16,
    within: Duration,
    mut child: Option<&mut Child>,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if port_accepts(host, port).await {
            return true;
        }
        if let Some(child) = child.as_deref_mut()
            && !is_running(child)
        {
            return false;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// True while `child` has not exited (and not been reaped).
pub fn is_running(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

/// The host and port to probe for a listen address such as `127.0.0.1:8080`: a wildcard host
/// (`0.0.0.0`, `[::]`, none) is probed on loopback.
pub fn probe_target(addr: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("'{addr}' is not a host:port address"))?;
    let port = port
        .parse()
        .with_context(|| format!("'{addr}' is not a host:port address (the port)"))?;
    let host = match host {
        "0.0.0.0" | "" | "[::]" => "127.0.0.1",
        other => other.trim_start_matches('[').trim_end_matches(']'),
    };
    Ok((host.to_owned(), port))
}

/// Sends `signal` to the process `pid`; false when it is gone.
pub fn send_signal(pid: u32, signal: Signal) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    rustix::process::kill_process(pid, signal).is_ok()
}

/// Stops a process we started: SIGTERM, [`STOP_GRACE`] for a clean shutdown, then SIGKILL; and
/// reaps it. A child that has already exited is only reaped.
pub async fn stop_child(child: &mut Child, name: &str) {
    let Some(pid) = child.id() else {
        return;
    };
    if !is_running(child) {
        return;
    }
    send_signal(pid, Signal::TERM);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        warn(format_args!(
            "{name} (pid {pid}) did not stop within {} s; killing it",
            STOP_GRACE.as_secs()
        ));
        let _ = child.kill().await;
    }
}

/// Kills `child` at once (SIGKILL, no shutdown of any kind) and reaps it.
pub async fn kill_child(child: &mut Child) {
    let _ = child.kill().await;
}

/// Runs `command` to its end, for at most `within` (killed then); its exit status. `what` names
/// it in errors.
pub async fn run_bounded(
    command: &mut Command,
    within: Duration,
    what: &str,
) -> anyhow::Result<ExitStatus> {
    let mut child = command
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    match tokio::time::timeout(within, child.wait()).await {
        Ok(status) => status.with_context(|| format!("waiting for {what}")),
        Err(_) => {
            let _ = child.kill().await;
            bail!("{what} did not finish within {} s", within.as_secs())
        }
    }
}

/// Runs `command` to its end with its output shown, as a foreground step: a signal that ends the
/// task meanwhile (which a terminal's Ctrl-C sends the command too) waits for the command to
/// stop (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and is returned as `Err(exit code)`.
pub async fn run_foreground(
    command: &mut Command,
    what: &str,
) -> anyhow::Result<Result<ExitStatus, ExitCode>> {
    let mut child = command
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    tokio::select! {
        status = child.wait() => Ok(Ok(status.with_context(|| format!("waiting for {what}"))?)),
        code = interrupted() => {
            stop_child(&mut child, what).await;
            Ok(Err(code))
        }
    }
}

/// An exit status as a shell reports it: the same code, or 128 + the signal's number for a
/// process a signal ended.
pub fn shell_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    u8::try_from(code).unwrap_or(1)
}

/// An exit status as this process's exit code ([`shell_code`]).
pub fn exit_code(status: ExitStatus) -> ExitCode {
    ExitCode::from(shell_code(status))
}

/// Resolves when SIGINT (Ctrl-C) or SIGTERM arrives, with the exit code a shell gives such an
/// end: 130 or 143. Listening starts at the first poll; from then on these signals no longer end
/// the process by themselves, so a task stops what it started before it exits.
pub async fn interrupted() -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the default action still ends the process; nothing to wait for.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => ExitCode::from(130),
        _ = term.recv() => ExitCode::from(143),
    }
}

/// A loopback port nothing listens on, picked by the kernel.
pub fn free_port() -> u16 {
    test_support::free_port()
}

/// A loopback port that nothing listens on, below the kernel's range for outgoing connections'
/// own ports: a service instance that is killed is started again on the same port seconds later,
/// and a port from that range could meanwhile be taken by any outgoing connection.
pub async fn instance_port() -> anyhow::Result<u16> {
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let range = if low > 11024 {
        10000
    } else {
        low.saturating_sub(1024)
    };
    if range <= 100 {
        bail!("no room below the ephemeral port range ({low}) for the instances' ports");
    }
    for _ in 0..100 {
        let port = low - 1 - random_below(range);
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if !port_accepts("127.0.0.1", port).await {
            return Ok(port);
        }
    }
    bail!("found no free port below {low}")
}

/// A random number below `bound`, from the randomness std's hash maps are seeded with.
fn random_below(bound: u32) -> u32 {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new().hash_one(Instant::now());
    u32::try_from(random % u64::from(bound)).unwrap_or(0)
}

/// The path of `program` on PATH (as `command -v`), if any.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

/// True for an executable file.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Fails with `hint` unless `program` is on PATH.
pub fn require(program: &str, hint: &str) -> anyhow::Result<PathBuf> {
    which(program).with_context(|| format!("{program} not found: {hint}"))
}

/// True when `program args…` runs and exits 0, its output discarded (a probe such as
/// `docker compose version`), bounded by `within`.
pub async fn succeeds(program: &str, args: &[&str], within: Duration) -> bool {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    matches!(run_bounded(&mut command, within, program).await, Ok(status) if status.success())
}
