//! The check that keeps `docs/configuration.md` and the binaries' options in step.
//!
//! The page has a section per binary and per subcommand, headed by the command in backticks
//! (``## `projector` ``, ``### `projector verify` ``), with a row per option:
//! ``| `--flag` | `ENV` | default | meaning |``, the default in backticks when there is one. Each
//! binary's tests call [`assert_documented`] with its top-level parser (`Config::command()`):
//! every option that takes an environment variable (as `--help` shows them) must have its row,
//! under the same flag and with the same default; every row must be an option the command
//! takes; every subcommand is checked the same way, its section free to leave out the rows its
//! parent's section has. So the reference cannot drift from the code.

use std::collections::BTreeMap;

/// The page, read at test time so that an edit needs no rebuild to be checked.
pub fn docs_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md")
}

/// A documented option: its flag and the default cell as written (`` `8080` `` or prose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub flag: String,
    pub default: String,
}

/// An option of a command that takes an environment variable: its flag and default, as `--help`
/// shows them (`None` when `--help` shows no default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvOption {
    pub flag: String,
    pub default: Option<String>,
}

/// The page's rows by section title (`projector verify`) and variable.
pub fn documented_sections(page: &str) -> BTreeMap<String, BTreeMap<String, Row>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Row>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in page.lines() {
        if let Some(title) = heading(line) {
            sections.entry(title.to_owned()).or_default();
            current = Some(title.to_owned());
            continue;
        }
        let (Some(section), true) = (&current, line.starts_with("| `--")) else {
            continue;
        };
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if let [flag, env, default, ..] = cells.as_slice() {
            sections.entry(section.clone()).or_default().insert(
                env.trim_matches('`').to_owned(),
                Row {
                    flag: flag.trim_matches('`').to_owned(),
                    default: (*default).to_owned(),
                },
            );
        }
    }
    sections
}

/// The command of a heading such as ``### `projector verify` ``.
fn heading(line: &str) -> Option<&str> {
    let rest = line.trim_start_matches('#');
    if rest.len() == line.len() {
        return None;
    }
    let title = rest.trim().strip_prefix('`')?.strip_suffix('`')?;
    (!title.is_empty() && !title.contains('`')).then_some(title)
}

/// The options of `command` (built) that `--help` shows with an environment variable, by
/// variable; their defaults rendered as `--help` renders them.
pub fn options(command: &clap::Command) -> BTreeMap<String, EnvOption> {
    let mut found = BTreeMap::new();
    for arg in command.get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        if arg.is_hide_set() || arg.is_hide_env_set() {
            continue;
        }
        let shows_default = arg.get_action().takes_values()
            && !arg.is_hide_default_value_set()
            && !arg.get_default_values().is_empty();
        let default = shows_default.then(|| {
            arg.get_default_values()
                .iter()
                .map(|value| {
                    let value = value.to_string_lossy();
                    // As --help writes them: an empty value or one with spaces in quotes.
                    if value.is_empty() || value.contains(char::is_whitespace) {
                        format!("{value:?}")
                    } else {
                        value.into_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        });
        found.insert(
            env.to_string_lossy().into_owned(),
            EnvOption {
                flag: format!("--{long}"),
                default,
            },
        );
    }
    found
}

/// What differs between `command` (a binary's top-level parser, its subcommands included) and
/// `page`, one line each.
pub fn differences(mut command: clap::Command, page: &str) -> Vec<String> {
    command.build();
    let documented = documented_sections(page);
    let mut problems = Vec::new();
    compare(
        &command,
        command.get_name(),
        None,
        &documented,
        &mut problems,
    );
    problems
}

fn compare(
    command: &clap::Command,
    title: &str,
    parent: Option<&str>,
    documented: &BTreeMap<String, BTreeMap<String, Row>>,
    problems: &mut Vec<String>,
) {
    let actual = options(command);
    let empty = BTreeMap::new();
    let rows = match documented.get(title) {
        Some(rows) => rows,
        None => {
            if !actual.is_empty() {
                problems.push(format!(
                    "no section `{title}` (a heading with the command in backticks)"
                ));
            }
            &empty
        }
    };
    let inherited = parent
        .and_then(|parent| documented.get(parent))
        .unwrap_or(&empty);
    for (env, option) in &actual {
        let Some(row) = rows.get(env).or_else(|| inherited.get(env)) else {
            problems.push(format!(
                "{title}: {env} ({}) is not documented",
                option.flag
            ));
            continue;
        };
        if row.flag != option.flag {
            problems.push(format!(
                "{title}: {env} is {}, the doc says {}",
                option.flag, row.flag
            ));
        }
        match &option.default {
            None if row.default.starts_with('`') => problems.push(format!(
                "{title}: {env} has no default, the doc gives {}",
                row.default
            )),
            Some(default) if !row.default.starts_with(&format!("`{default}`")) => {
                problems.push(format!(
                    "{title}: {env} defaults to `{default}`, the doc says {}",
                    row.default
                ));
            }
            _ => {}
        }
    }
    for env in rows.keys().filter(|env| !actual.contains_key(*env)) {
        problems.push(format!(
            "{title}: the doc lists {env}, which it does not take"
        ));
    }
    for sub in command.get_subcommands() {
        if sub.get_name() == "help" || sub.is_hide_set() {
            continue;
        }
        let sub_title = format!("{title} {}", sub.get_name());
        compare(sub, &sub_title, Some(title), documented, problems);
    }
}

/// Asserts that `docs/configuration.md` documents `command` (a binary's top-level parser, as
/// `Config::command()` gives it) exactly; the message names every difference.
pub fn assert_documented(command: clap::Command) {
    let path = docs_path();
    let page = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let problems = differences(command, &page);
    assert!(
        problems.is_empty(),
        "{} and the options differ:\n{}",
        path.display(),
        problems
            .iter()
            .map(|problem| format!("docs/configuration.md: {problem}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    fn tool() -> Command {
        Command::new("tool")
            .arg(
                Arg::new("addr")
                    .long("addr")
                    .env("TOOL_ADDR")
                    .default_value("127.0.0.1:8080"),
            )
            .arg(Arg::new("keys").long("keys").env("TOOL_KEYS"))
            .arg(
                Arg::new("quiet")
                    .long("quiet")
                    .env("TOOL_QUIET")
                    .action(ArgAction::SetTrue),
            )
            .arg(Arg::new("verbose").long("verbose"))
            .subcommand(
                Command::new("check").arg(
                    Arg::new("deep")
                        .long("deep-check")
                        .env("TOOL_DEEP")
                        .default_value("no way"),
                ),
            )
    }

    const PAGE: &str = "\
# Reference
## `tool`
| flag | variable | default | meaning |
|---|---|---|---|
| `--addr` | `TOOL_ADDR` | `127.0.0.1:8080` | where |
| `--keys` | `TOOL_KEYS` | none | keys |
| `--quiet` | `TOOL_QUIET` | off | less |
### `tool check`
| `--deep-check` | `TOOL_DEEP` | `\"no way\"` | how deep |
";

    #[test]
    fn a_matching_page_has_no_differences() {
        assert_eq!(differences(tool(), PAGE), Vec::<String>::new());
    }

    #[test]
    fn missing_stale_renamed_and_redefaulted_options_are_differences() {
        let page = PAGE
            .replace("| `--keys` | `TOOL_KEYS` | none | keys |\n", "")
            .replace(
                "`--addr` | `TOOL_ADDR` | `127.0.0.1:8080`",
                "`--addr` | `TOOL_ADDR` | `0.0.0.0:80`",
            )
            .replace("`--quiet`", "`--silent`")
            .replace(
                "### `tool check`",
                "### `tool check`\n| `--gone` | `TOOL_GONE` | `1` | gone |",
            );
        assert_eq!(
            differences(tool(), &page),
            vec![
                "tool: TOOL_ADDR defaults to `127.0.0.1:8080`, the doc says `0.0.0.0:80`",
                "tool: TOOL_KEYS (--keys) is not documented",
                "tool: TOOL_QUIET is --quiet, the doc says --silent",
                "tool check: the doc lists TOOL_GONE, which it does not take",
            ]
        );
    }

    #[test]
    fn a_command_without_its_section_is_a_difference() {
        let page = PAGE.replace("## `tool`", "## tool");
        assert!(
            differences(tool(), &page).contains(
                &"no section `tool` (a heading with the command in backticks)".to_owned()
            )
        );
    }

    #[test]
    fn a_subcommand_section_may_leave_out_what_its_parent_documents() {
        let command = tool().mut_subcommand("check", |check| {
            check.arg(Arg::new("keys").long("keys").env("TOOL_KEYS"))
        });
        assert_eq!(differences(command, PAGE), Vec::<String>::new());
    }

    /// Every binary of the workspace has its section; its tests hold the section to its
    /// options ([`assert_documented`]).
    #[test]
    fn every_binary_of_the_workspace_has_a_section() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let metadata = std::process::Command::new(cargo)
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo metadata runs");
        assert!(metadata.status.success(), "cargo metadata: {metadata:?}");
        let metadata: serde_json::Value =
            serde_json::from_slice(&metadata.stdout).expect("cargo metadata's JSON");
        let page = std::fs::read_to_string(docs_path()).expect("docs/configuration.md");
        let sections = documented_sections(&page);
        let packages = metadata["packages"].as_array().expect("packages");
        let binaries = packages
            .iter()
            // The developer tasks are not a part of the system to configure.
            .filter(|package| package["name"] != "xtask")
            .flat_map(|package| package["targets"].as_array().into_iter().flatten())
            .filter(|target| {
                target["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
            })
            .filter_map(|target| target["name"].as_str());
        for binary in binaries {
            assert!(
                sections.contains_key(binary),
                "docs/configuration.md has no section `{binary}`"
            );
        }
    }
}
