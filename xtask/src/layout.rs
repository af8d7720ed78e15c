//! Where things are: the repository, and `.stack/`, the gitignored directory of what the tasks
//! keep between runs (the broker's data, logs, the generated signing key, nginx's files).

use std::path::{Path, PathBuf};

/// The repository's root: this crate's parent directory.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new("."))
}

/// `.stack/`.
pub fn stack_dir() -> PathBuf {
    repo_root().join(".stack")
}

/// `.stack/logs/`: every started process's log, unless a task keeps its own (chaos).
pub fn log_dir() -> PathBuf {
    stack_dir().join("logs")
}

/// `path` as a developer reads it in a message: relative to the repository when inside it.
pub fn shown(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The cache outside the checkout where tools are installed once: `~/.cache/cqrs-kafka`.
pub fn tool_cache() -> PathBuf {
    home().join(".cache/cqrs-kafka")
}

/// `$HOME`, or `/` when it is not set (as `~` would be empty then).
pub fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// An absolute form of `path` without touching the file system (`realpath -m`): relative to the
/// working directory, with `.` and `..` resolved lexically.
pub fn absolute(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut clean = PathBuf::new();
    for part in joined.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    clean
}
