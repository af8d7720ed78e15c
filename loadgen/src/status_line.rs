//! [`StatusLine`]: progress on stderr that rewrites itself on a terminal and appends plain lines
//! anywhere else (a log file, CI), so a redirected run stays readable.

use std::io::{IsTerminal, Write};

#[derive(Debug)]
pub struct StatusLine {
    terminal: bool,
    shown: bool,
}

impl StatusLine {
    pub fn new() -> StatusLine {
        StatusLine {
            terminal: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// Shows `line`, replacing the previous one on a terminal.
    pub fn show(&mut self, line: &str) {
        let mut stderr = std::io::stderr().lock();
        // Progress is best effort: a closed stderr must not stop a run.
        let _ = if self.terminal {
            // Carriage return, the line, then clear what a longer previous line left.
            write!(stderr, "\r{line}\x1b[K")
        } else {
            writeln!(stderr, "{line}")
        };
        let _ = stderr.flush();
        self.shown = true;
    }

    /// Ends the rewritten line, so what follows starts on a line of its own.
    pub fn finish(&mut self) {
        if self.terminal && self.shown {
            eprintln!();
        }
        self.shown = false;
    }
}

impl Default for StatusLine {
    fn default() -> StatusLine {
        StatusLine::new()
    }
}
