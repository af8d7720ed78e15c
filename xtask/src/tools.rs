//! `cargo xtask tools`: installs the pinned cargo-deny that `check` runs into a cache outside the
//! checkout (~8 minutes on 2 cores, once). CI runs it before `check`; so may a developer.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::bail;
use tokio::process::Command;

use crate::layout::{absolute, tool_cache};
use crate::output::say;
use crate::process::{is_executable, run_bounded, which};

/// The cargo-deny release `check` runs: its checks' names and deny.toml's keys are this
/// version's.
pub const CARGO_DENY_VERSION: &str = "0.20.2";

/// How long an install of cargo-deny may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(1800);

/// Where the pinned cargo-deny is installed: `CARGO_DENY_ROOT`, else
/// `~/.cache/cqrs-kafka/cargo-deny-<version>`.
pub fn cargo_deny_root() -> PathBuf {
    match std::env::var_os("CARGO_DENY_ROOT").filter(|root| !root.is_empty()) {
        Some(root) => absolute(Path::new(&root)),
        None => tool_cache().join(format!("cargo-deny-{CARGO_DENY_VERSION}")),
    }
}

/// The cargo-deny to run: one on PATH, else the pinned one, if installed.
pub fn cargo_deny() -> Option<PathBuf> {
    which("cargo-deny").or_else(|| {
        let pinned = cargo_deny_root().join("bin/cargo-deny");
        is_executable(&pinned).then_some(pinned)
    })
}

/// The command that installs the pinned cargo-deny, as messages show it.
pub fn install_hint() -> String {
    format!(
        "cargo install cargo-deny --version {CARGO_DENY_VERSION} --locked --root {} (or: cargo xtask tools)",
        cargo_deny_root().display()
    )
}

pub async fn run() -> anyhow::Result<ExitCode> {
    if let Some(deny) = cargo_deny() {
        say(format_args!("cargo-deny is installed ({})", deny.display()));
        return Ok(ExitCode::SUCCESS);
    }
    let root = cargo_deny_root();
    say(format_args!(
        "Installing cargo-deny {CARGO_DENY_VERSION} into {}",
        root.display()
    ));
    let mut install = Command::new("cargo");
    install
        .args([
            "install",
            "cargo-deny",
            "--version",
            CARGO_DENY_VERSION,
            "--locked",
            "--root",
        ])
        .arg(&root)
        .stdin(Stdio::null());
    if !run_bounded(&mut install, INSTALL_TIMEOUT, "cargo install cargo-deny")
        .await?
        .success()
    {
        bail!("installing cargo-deny failed (see above)");
    }
    Ok(ExitCode::SUCCESS)
}
