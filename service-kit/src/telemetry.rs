//! Logging set-up shared by the binaries.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// How log lines are written; every binary takes it as `--log-format` / `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), lines go to stderr (so
/// that a command's own output on stdout, such as `projector verify`'s report, stays clean).
/// Safe to call more than once (later calls do nothing), which tests rely on.
///
/// Text has colour codes only when stderr is a terminal and `NO_COLOR` is not set: a log file
/// or a collector gets plain text. It also costs less: the formatter writes every request
/// span's fields, escape codes and all, as the span is made, logged or not (see
/// `service_kit::http`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
