//! What the tasks tell the developer, on stderr: `==> ` for each step, `warning: ` and `error: `,
//! and the tail of a log, so that a failure shows its cause without a second command.

use std::fmt::Display;
use std::io::Write;
use std::path::Path;

/// A step: `==> message`.
pub fn say(message: impl Display) {
    eprintln!("==> {message}");
}

/// `warning: message`.
pub fn warn(message: impl Display) {
    eprintln!("warning: {message}");
}

/// `error: message`: the last line of a failed task.
pub fn error(message: impl Display) {
    eprintln!("error: {message}");
}

/// How many lines of a log [`show_log_tail`] prints.
const TAIL_LINES: usize = 40;

/// Prints the last 40 lines of `log` between markers, or says that it is empty or missing.
pub fn show_log_tail(log: &Path) {
    let text = std::fs::read(log).unwrap_or_default();
    if text.is_empty() {
        eprintln!("({} is empty or missing)", log.display());
        return;
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(
        stderr,
        "----- last {TAIL_LINES} lines of {} -----",
        log.display()
    );
    for line in tail {
        let _ = writeln!(stderr, "{line}");
    }
    let _ = writeln!(stderr, "----- end of {} -----", log.display());
}
