//! `cargo xtask check`: formatting, clippy (warnings are errors), docker-compose.yml (also with
//! the observability profile) and Prometheus's configuration, the dependency tree against
//! deny.toml, and shellcheck on the shell scripts. Every check runs even when an earlier one
//! failed, so one run lists all that needs fixing.
//!
//! docs/configuration.md against every binary's options, and the dashboards' metrics against
//! docs/metrics.md, are tests (test-support's `config_docs` and `dashboards`), run by `test`.

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::layout::repo_root;
use crate::output::{say, warn};
use crate::process::{succeeds, which};
use crate::tools::{cargo_deny, install_hint};

/// How long a probe such as `docker compose version` or `git ls-remote` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run() -> anyhow::Result<ExitCode> {
    let mut failed = Vec::new();
    say("cargo fmt --all -- --check");
    if !cargo(&["fmt", "--all", "--", "--check"]).await? {
        failed.push("fmt");
    }
    say("cargo clippy --workspace --all-targets -- -D warnings");
    if !cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
    .await?
    {
        failed.push("clippy");
    }
    if !check_compose_file().await? {
        failed.push("docker-compose.yml");
    }
    if !check_dependencies().await? {
        failed.push("dependencies");
    }
    if which("shellcheck").is_some() {
        say("shellcheck dev .ci/run");
        if !succeeds_in_repo("shellcheck", &["dev", ".ci/run"]).await? {
            failed.push("shellcheck");
        }
    }
    if !failed.is_empty() {
        bail!("checks failed: {}", failed.join(" "));
    }
    say("all checks passed");
    Ok(ExitCode::SUCCESS)
}

/// Runs `cargo args…` in the repository with its output shown; true on success.
async fn cargo(args: &[&str]) -> anyhow::Result<bool> {
    succeeds_in_repo("cargo", args).await
}

async fn succeeds_in_repo(program: &str, args: &[&str]) -> anyhow::Result<bool> {
    Ok(Command::new(program)
        .current_dir(repo_root())
        .args(args)
        .stdin(Stdio::null())
        .status()
        .await
        .with_context(|| format!("cannot run {program}"))?
        .success())
}

/// Validates docker-compose.yml with whichever compose implementation is installed: none can
/// run the stack here (no Docker engine), but `config` parses and validates the file offline. A
/// profile's services are only checked when the profile is on, so again with `observability`.
/// Prometheus's configuration is checked by promtool when it is installed.
async fn check_compose_file() -> anyhow::Result<bool> {
    let compose: Option<Vec<&str>> =
        if succeeds("docker", &["compose", "version"], PROBE_TIMEOUT).await {
            Some(vec!["docker", "compose"])
        } else if which("docker-compose").is_some() {
            Some(vec!["docker-compose"])
        } else {
            None
        };
    match compose {
        Some(compose) => {
            say(format_args!(
                "{} config (docker-compose.yml), also with --profile observability",
                compose.join(" ")
            ));
            let (program, first) = (compose[0], &compose[1..]);
            let plain = [first, &["-f", "docker-compose.yml", "config", "-q"]].concat();
            if !succeeds_in_repo(program, &plain).await? {
                return Ok(false);
            }
            let profile = [
                first,
                &[
                    "-f",
                    "docker-compose.yml",
                    "--profile",
                    "observability",
                    "config",
                    "-q",
                ],
            ]
            .concat();
            if !succeeds_in_repo(program, &profile).await? {
                return Ok(false);
            }
        }
        None => warn(
            "no compose implementation installed (apt-get install docker-compose); docker-compose.yml NOT checked",
        ),
    }
    if which("promtool").is_some() {
        say("promtool check config deploy/prometheus/prometheus.yml");
        let checked = Command::new("promtool")
            .current_dir(repo_root())
            .args(["check", "config", "deploy/prometheus/prometheus.yml"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .await
            .context("cannot run promtool")?;
        if !checked.success() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The dependency tree against deny.toml: licences, banned crates, sources; and RustSec's
/// advisories when its database (on GitHub) can be fetched, which not every machine can. Without
/// cargo-deny the check is skipped with a warning, except under CI, where it fails.
async fn check_dependencies() -> anyhow::Result<bool> {
    let Some(deny) = cargo_deny() else {
        if crate::settings::var("CI").as_deref() == Some("true") {
            warn(format_args!(
                "cargo-deny is missing (CI installs it with: {})",
                install_hint()
            ));
            return Ok(false);
        }
        warn(format_args!(
            "cargo-deny is not installed; the dependency tree is NOT checked (install it: {})",
            install_hint()
        ));
        return Ok(true);
    };
    let deny = deny.display().to_string();
    say("cargo deny check licenses bans sources");
    if !succeeds_in_repo(
        &deny,
        &[
            "--log-level",
            "error",
            "check",
            "licenses",
            "bans",
            "sources",
        ],
    )
    .await?
    {
        return Ok(false);
    }
    let reachable = succeeds(
        "git",
        &[
            "ls-remote",
            "--exit-code",
            "https://github.com/rustsec/advisory-db",
            "HEAD",
        ],
        PROBE_TIMEOUT,
    )
    .await;
    if reachable {
        say("cargo deny check advisories");
        if !succeeds_in_repo(&deny, &["--log-level", "error", "check", "advisories"]).await? {
            return Ok(false);
        }
    } else {
        warn(
            "RustSec's advisory database (github.com) is unreachable from here: advisories NOT checked",
        );
    }
    Ok(true)
}
