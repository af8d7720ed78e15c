//! The check that keeps `docs/metrics.md` and the services' `/metrics` in step.
//!
//! The page lists each service's metric families in tables under `## ` sections, one row per
//! family: its name in backticks in the first column, its type in the second. A service's test
//! scrapes the running service after some traffic and calls [`assert_documented`] with its
//! sections: every family the service declares (`# TYPE` lines) must be listed there with the
//! same type, and every family listed there must be declared.

use std::collections::BTreeMap;

/// The page, read at test time so that an edit needs no rebuild to be checked.
pub fn docs_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md")
}

/// Family name to type, from an exposition's `# TYPE name type` lines.
pub fn exposed_families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

/// Family name to type, from the rows of the page's tables under each `## ` heading, by heading.
pub fn documented_sections(page: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current = None;
    for line in page.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            current = Some(heading.trim().to_owned());
            continue;
        }
        let (Some(section), Some(row)) = (&current, line.strip_prefix('|')) else {
            continue;
        };
        let mut cells = row.split('|').map(str::trim);
        let (Some(name), Some(kind)) = (cells.next(), cells.next()) else {
            continue;
        };
        let Some(name) = name.strip_prefix('`').and_then(|n| n.strip_suffix('`')) else {
            continue;
        };
        sections
            .entry(section.clone())
            .or_default()
            .insert(name.to_owned(), kind.to_owned());
    }
    sections
}

/// Asserts that `exposition` declares exactly the families `docs/metrics.md` lists under
/// `sections`, with their types; the message names every difference.
pub fn assert_documented(exposition: &str, sections: &[&str]) {
    let path = docs_path();
    let page = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let all = documented_sections(&page);
    let mut documented = BTreeMap::new();
    for section in sections {
        let rows = all.get(*section).unwrap_or_else(|| {
            panic!(
                "{} has no section `## {section}` with metric rows (it has: {:?})",
                path.display(),
                all.keys().collect::<Vec<_>>()
            )
        });
        documented.extend(rows.clone());
    }
    let exposed = exposed_families(exposition);
    let mut problems = Vec::new();
    for (name, kind) in &exposed {
        match documented.get(name) {
            None => problems.push(format!(
                "`{name}` ({kind}) is exposed but not listed under {sections:?}"
            )),
            Some(listed) if listed != kind => problems.push(format!(
                "`{name}` is exposed as a {kind} but listed as a {listed}"
            )),
            Some(_) => {}
        }
    }
    for (name, kind) in &documented {
        if !exposed.contains_key(name) {
            problems.push(format!(
                "`{name}` ({kind}) is listed under {sections:?} but not exposed"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "/metrics and {} differ:\n{}\n\nthe exposition:\n{exposition}",
        path.display(),
        problems.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# Metrics
| `not_in_a_section` | counter | | |
## One
| metric | type | labels | meaning |
|---|---|---|---|
| `a_total` | counter | `x` | a |
| `b_seconds` | histogram | | b |
## Two
| `c` | gauge | | c, with `code` |
";

    #[test]
    fn rows_are_read_by_section_and_headers_are_not_rows() {
        let sections = documented_sections(PAGE);
        assert_eq!(sections.len(), 2);
        assert_eq!(
            sections["One"],
            BTreeMap::from([
                ("a_total".to_owned(), "counter".to_owned()),
                ("b_seconds".to_owned(), "histogram".to_owned())
            ])
        );
        assert_eq!(sections["Two"]["c"], "gauge");
    }

    #[test]
    fn families_are_read_from_type_lines() {
        let exposition = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n\
                          # TYPE b_seconds histogram\nb_seconds_bucket{le=\"+Inf\"} 0\n";
        assert_eq!(
            exposed_families(exposition),
            BTreeMap::from([
                ("a_total".to_owned(), "counter".to_owned()),
                ("b_seconds".to_owned(), "histogram".to_owned())
            ])
        );
    }

    #[test]
    fn the_real_page_lists_every_services_families() {
        let page = std::fs::read_to_string(docs_path()).expect("docs/metrics.md");
        let sections = documented_sections(&page);
        for section in [
            "Every service",
            "Command API",
            "Query API",
            "Query API read cache",
            "Query API with read replicas",
            "Projector",
        ] {
            assert!(
                sections.get(section).is_some_and(|rows| !rows.is_empty()),
                "{section}: {sections:?}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "`made_up_total` (counter) is exposed but not listed")]
    fn an_undocumented_family_fails_the_check() {
        let exposition = "# TYPE http_requests_total counter
\
                          # TYPE http_server_request_duration_seconds histogram
\
                          # TYPE made_up_total counter
";
        assert_documented(exposition, &["Every service"]);
    }

    #[test]
    #[should_panic(expected = "is listed under [\"Every service\"] but not exposed")]
    fn a_documented_family_that_is_gone_fails_the_check() {
        assert_documented("# TYPE http_requests_total counter\n", &["Every service"]);
    }
}
