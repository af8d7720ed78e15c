//! [`render`]: the report's time series as an SVG picture, written by hand. Two panels share the
//! time axis: throughput per second and p99 latency per second, one line per operation, with
//! axes, ticks, labels and a legend.

use std::fmt::Write as _;

use crate::report::Report;

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 300.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 50.0;
const GAP: f64 = 70.0;
const BOTTOM: f64 = 50.0;

/// Distinct on white, in the order of the operations.
const COLOURS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line of a panel: its name and its points (time, value); a `None` value breaks the line.
struct Series<'a> {
    name: &'a str,
    colour: &'a str,
    points: Vec<(f64, Option<f64>)>,
}

/// The SVG document for `report`.
pub fn render(report: &Report) -> String {
    let names: Vec<&str> = report
        .operations
        .iter()
        .map(|op| op.operation.as_str())
        .collect();
    let series_of = |value: &dyn Fn(&crate::report::SecondOperation) -> Option<f64>| {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| Series {
                name,
                colour: COLOURS[i % COLOURS.len()],
                points: report
                    .time_series
                    .iter()
                    .map(|second| (second.t_s, second.operations.get(*name).and_then(value)))
                    .collect(),
            })
            .collect::<Vec<_>>()
    };
    let throughput = series_of(&|s| Some(s.throughput));
    let p99 = series_of(&|s| s.p99_ms);
    let measured = report.measured_s.max(1.0);
    let last = report.time_series.iter().map(|s| s.t_s).fold(0.0, f64::max);
    // The last second closes when the answers in flight at the end are in, a little after the
    // measured time: the axis spans the measured time unless that drain was long.
    let span = if last > measured * 1.1 {
        last
    } else {
        measured
    };
    let x_step = nice_step(span);
    let x_max = (span / x_step).ceil() * x_step;

    let height = TOP + 2.0 * PANEL_HEIGHT + GAP + BOTTOM;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let p = &report.parameters;
    let load = match p.rate {
        Some(rate) => format!("open loop, {rate} req/s"),
        None => format!("closed loop, {} connections", p.connections),
    };
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16">{}</text>"#,
        WIDTH / 2.0,
        escape(&format!(
            "loadgen: {load}, {:.0} s, {} users and {} posts ({}), zipf {}",
            report.measured_s, p.users, p.posts, p.population, p.zipf
        ))
    );
    panel(&mut svg, TOP, "throughput (requests/s)", &throughput, x_max);
    panel(
        &mut svg,
        TOP + PANEL_HEIGHT + GAP,
        "p99 latency (ms)",
        &p99,
        x_max,
    );
    svg.push_str("</svg>\n");
    svg
}

/// One panel: frame, ticks and grid, axis labels, the lines and the legend.
fn panel(svg: &mut String, top: f64, y_label: &str, series: &[Series<'_>], x_max: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = PANEL_HEIGHT - 30.0;
    let bottom = top + plot_h;
    let y_data_max = series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|(_, v)| *v))
        .fold(0.0, f64::max);
    let y_step = nice_step(y_data_max);
    let y_max = (y_data_max / y_step).ceil().max(1.0) * y_step;
    let x_step = nice_step(x_max);
    let x_of = |t: f64| LEFT + t / x_max * plot_w;
    let y_of = |v: f64| bottom - v / y_max * plot_h;

    let _ = writeln!(svg, r#"<g class="panel">"#);
    // Grid and tick labels first, so the lines are drawn over them.
    let mut y = 0.0;
    while y <= y_max + y_step / 2.0 {
        let py = y_of(y);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0,
            tick_label(y)
        );
        y += y_step;
    }
    let mut x = 0.0;
    while x <= x_max + x_step / 1000.0 {
        let px = x_of(x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{bottom:.1}" x2="{px:.1}" y2="{:.1}" stroke="#000"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            bottom + 5.0,
            bottom + 18.0,
            tick_label(x)
        );
        x += x_step;
    }
    // The axes.
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{top:.1}" x2="{LEFT}" y2="{bottom:.1}" stroke="#000"/><line x1="{LEFT}" y1="{bottom:.1}" x2="{:.1}" y2="{bottom:.1}" stroke="#000"/>"##,
        LEFT + plot_w
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time (s)</text>"#,
        LEFT + plot_w / 2.0,
        bottom + 34.0
    );
    let mid = top + plot_h / 2.0;
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{mid:.1}" text-anchor="middle" transform="rotate(-90 20 {mid:.1})">{}</text>"#,
        escape(y_label)
    );

    for (i, line) in series.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<g class="series" data-operation="{}">"#,
            escape(line.name)
        );
        // A second without a value (nothing answered) breaks the line rather than drawing a
        // false zero.
        for run in line
            .points
            .split(|(_, v)| v.is_none())
            .filter(|run| !run.is_empty())
        {
            let points: Vec<String> = run
                .iter()
                .filter_map(|(t, v)| v.map(|v| format!("{:.1},{:.1}", x_of(*t), y_of(v))))
                .collect();
            if points.len() == 1 {
                let (cx, cy) = points[0].split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{cx}" cy="{cy}" r="2" fill="{}"/>"#,
                    line.colour
                );
            } else {
                let _ = writeln!(
                    svg,
                    r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
                    line.colour,
                    points.join(" ")
                );
            }
        }
        let _ = writeln!(svg, "</g>");
        let ly = top + 14.0 + 18.0 * i as f64;
        let lx = LEFT + plot_w + 16.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            ly - 4.0,
            lx + 20.0,
            ly - 4.0,
            line.colour,
            lx + 26.0,
            ly,
            escape(line.name)
        );
    }
    let _ = writeln!(svg, "</g>");
}

/// A step of 1, 2 or 5 times a power of ten that cuts `max` into about five intervals.
fn nice_step(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let rough = max / 5.0;
    let power = 10f64.powf(rough.log10().floor());
    let fraction = rough / power;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * power
}

fn tick_label(value: f64) -> String {
    if value == value.trunc() && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        // Steps below 1 are 0.5, 0.2, 0.1, 0.05…: a few digits, trailing zeros trimmed.
        let text = format!("{value:.6}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// Text content and attribute values: the five characters XML reserves.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunConfig;
    use crate::report::{OperationReport, Parameters, SecondOperation, SecondReport};
    use clap::Parser;
    use quick_xml::events::Event;
    use std::collections::BTreeMap;

    fn report() -> Report {
        let config = RunConfig::try_parse_from(["run"]).expect("config");
        let op = |name: &str| OperationReport {
            operation: name.to_owned(),
            count: 10,
            throughput: 1.0,
            errors: 0,
            errors_by_status: BTreeMap::new(),
            latency_ms: None,
        };
        let second = |t: f64, p99: Option<f64>| SecondReport {
            t_s: t,
            length_s: 1.0,
            operations: [
                (
                    "read_post".to_owned(),
                    SecondOperation {
                        requests: 100 * t as u64,
                        throughput: 100.0 * t,
                        errors: 0,
                        p99_ms: Some(1.5 * t),
                    },
                ),
                (
                    "create_post".to_owned(),
                    SecondOperation {
                        requests: 3,
                        throughput: 3.0,
                        errors: 1,
                        p99_ms: p99,
                    },
                ),
            ]
            .into_iter()
            .collect(),
        };
        Report {
            // A parameter with characters XML reserves must come out escaped.
            parameters: Parameters {
                population: "a<b&c".to_owned(),
                ..Parameters::new(&config, 1000, 10_000, "seeded")
            },
            measured_s: 4.0,
            operations: vec![op("read_post"), op("create_post")],
            totals: Vec::new(),
            unsent: 0,
            lag_samples_dropped: 0,
            time_series: vec![
                second(1.0, Some(40.0)),
                second(2.0, None),
                second(3.0, Some(41.0)),
                second(4.0, Some(45.0)),
            ],
        }
    }

    /// Every element of the document, by name, after checking it is well-formed XML.
    fn elements(svg: &str) -> Vec<(String, Vec<(String, String)>)> {
        fn describe(e: &quick_xml::events::BytesStart<'_>) -> (String, Vec<(String, String)>) {
            let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
            let attributes = e
                .attributes()
                .map(|a| {
                    let a = a.expect("well-formed attribute");
                    (
                        String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                        a.unescape_value().expect("escaped value").into_owned(),
                    )
                })
                .collect();
            (name, attributes)
        }
        let mut reader = quick_xml::Reader::from_str(svg);
        let mut found = Vec::new();
        let mut depth = 0i32;
        loop {
            match reader.read_event().expect("well-formed XML") {
                Event::Eof => break,
                Event::Start(e) => {
                    depth += 1;
                    found.push(describe(&e));
                }
                Event::Empty(e) => found.push(describe(&e)),
                Event::End(_) => depth -= 1,
                Event::Text(t) => {
                    t.decode().expect("text decodes");
                }
                _ => {}
            }
        }
        assert_eq!(depth, 0, "every element is closed");
        found
    }

    #[test]
    fn the_svg_is_well_formed_and_holds_every_series() {
        let svg = render(&report());
        let elements = elements(&svg);
        assert_eq!(elements.first().map(|e| e.0.as_str()), Some("svg"));
        let series: Vec<&str> = elements
            .iter()
            .filter(|(name, _)| name == "g")
            .flat_map(|(_, attributes)| attributes.iter())
            .filter(|(key, _)| key == "data-operation")
            .map(|(_, value)| value.as_str())
            .collect();
        // Each operation once per panel.
        assert_eq!(
            series,
            ["read_post", "create_post", "read_post", "create_post"]
        );
        let polylines = elements
            .iter()
            .filter(|(name, _)| name == "polyline")
            .count();
        // Throughput: two full lines. p99: read_post whole, create_post broken by the gap into
        // a single point (a circle) and a line of two.
        assert_eq!(polylines, 4);
        assert_eq!(
            elements.iter().filter(|(name, _)| name == "circle").count(),
            1
        );
        assert!(svg.contains("throughput (requests/s)") && svg.contains("p99 latency (ms)"));
        assert!(svg.contains("time (s)"));
        assert!(!svg.contains("a<b"));
    }

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(nice_step(10.0), 2.0);
        assert_eq!(nice_step(60.0), 20.0);
        assert_eq!(nice_step(7000.0), 2000.0);
        assert_eq!(nice_step(0.8), 0.2);
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(tick_label(2000.0), "2000");
        assert_eq!(tick_label(0.2), "0.2");
        assert_eq!(escape(r#"<a & "b">"#), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
