//! The check that keeps the Grafana dashboards (`deploy/grafana/dashboards/*.json`) on metrics
//! that exist: every metric a panel's query names must be listed in `docs/metrics.md`, which the
//! services' tests hold to what they expose ([`crate::metrics_docs`]). A renamed metric would
//! otherwise leave a panel silently empty.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

/// Our metrics all start with one of these; PromQL's functions and labels never do.
const PREFIXES: [&str; 4] = ["http_", "command_", "projector_", "query_api_"];

/// The suffixes of a histogram's or summary's series, which the page lists by family.
const SERIES_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// The directory of the dashboards.
pub fn dashboards_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards")
}

/// The metric names in the rows of `docs/metrics.md` (`` | `name` | ``).
pub fn documented_metrics(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|line| {
            let name = line.strip_prefix("| `")?.split_once("` |")?.0;
            let mut chars = name.chars();
            let valid = chars
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_' || c == ':')
                && chars
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':');
            valid.then(|| name.to_owned())
        })
        .collect()
}

/// Every query of a dashboard: the string values of its `expr`, `query` and `definition` keys,
/// at any depth.
pub fn queries(dashboard: &Value) -> Vec<&str> {
    let mut found = Vec::new();
    let mut pending = vec![dashboard];
    while let Some(node) = pending.pop() {
        match node {
            Value::Object(fields) => {
                for (key, value) in fields {
                    match value {
                        Value::String(text)
                            if ["expr", "query", "definition"].contains(&key.as_str()) =>
                        {
                            found.push(text.as_str());
                        }
                        other => pending.push(other),
                    }
                }
            }
            Value::Array(values) => pending.extend(values),
            _ => {}
        }
    }
    found
}

/// The metric names a PromQL query names: words that start with one of our prefixes, outside
/// quoted strings (label values).
pub fn metrics_named(query: &str) -> Vec<String> {
    let mut unquoted = String::new();
    let mut quoted = false;
    for c in query.chars() {
        if c == '"' {
            quoted = !quoted;
            unquoted.push(' ');
        } else if !quoted {
            unquoted.push(c);
        }
    }
    unquoted
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| PREFIXES.iter().any(|prefix| word.starts_with(prefix)))
        .map(|word| {
            // A metric name is lowercase; stop where it ends.
            let end = word
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(word.len());
            word[..end].to_owned()
        })
        .collect()
}

/// The metrics `dashboard` (its JSON text) names that `documented` does not list, neither as
/// such nor as the family of a `_bucket`, `_sum` or `_count` series.
pub fn undocumented_metrics(
    dashboard: &str,
    documented: &BTreeSet<String>,
) -> anyhow::Result<BTreeSet<String>> {
    let dashboard: Value = serde_json::from_str(dashboard).context("the dashboard is not JSON")?;
    let mut missing = BTreeSet::new();
    for query in queries(&dashboard) {
        for metric in metrics_named(query) {
            let family = SERIES_SUFFIXES
                .iter()
                .find_map(|suffix| metric.strip_suffix(suffix))
                .unwrap_or(&metric);
            if !documented.contains(&metric) && !documented.contains(family) {
                missing.insert(metric);
            }
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_from_queries_and_label_values_are_not_metrics() {
        assert_eq!(
            metrics_named(
                r#"histogram_quantile(0.99, sum by (le) (rate(http_server_request_duration_seconds_bucket{route="command_x"}[5m])))"#
            ),
            vec!["http_server_request_duration_seconds_bucket"]
        );
        assert_eq!(
            metrics_named("sum(projector_lag_seconds) / query_api_cache_hits_total"),
            vec!["projector_lag_seconds", "query_api_cache_hits_total"]
        );
    }

    #[test]
    fn a_series_counts_as_its_documented_family_and_a_made_up_one_does_not() {
        let documented = documented_metrics("| `projector_apply_duration_seconds` | histogram |\n");
        let dashboard = r#"{"panels": [{"targets": [
            {"expr": "rate(projector_apply_duration_seconds_sum[1m])"},
            {"expr": "command_made_up_total"}]}]}"#;
        assert_eq!(
            undocumented_metrics(dashboard, &documented).expect("JSON"),
            BTreeSet::from(["command_made_up_total".to_owned()])
        );
        assert!(undocumented_metrics("{ not json", &documented).is_err());
    }

    #[test]
    fn every_metric_a_dashboard_names_is_documented() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
        let page = std::fs::read_to_string(&docs).expect("docs/metrics.md");
        let documented = documented_metrics(&page);
        let mut dashboards: Vec<PathBuf> = std::fs::read_dir(dashboards_dir())
            .expect("deploy/grafana/dashboards")
            .filter_map(|entry| Some(entry.ok()?.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        dashboards.sort();
        assert!(
            !dashboards.is_empty(),
            "no dashboards in {}",
            dashboards_dir().display()
        );
        let mut problems = Vec::new();
        for dashboard in &dashboards {
            let text = std::fs::read_to_string(dashboard).expect("a dashboard");
            match undocumented_metrics(&text, &documented) {
                Ok(missing) => problems.extend(missing.into_iter().map(|metric| {
                    format!(
                        "{}: {metric} is not in docs/metrics.md",
                        dashboard.display()
                    )
                })),
                Err(error) => problems.push(format!("{}: {error:#}", dashboard.display())),
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
