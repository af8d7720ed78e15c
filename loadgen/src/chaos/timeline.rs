//! The orchestrator's fault timeline and the fault windows cut from it.
//!
//! The file is JSON lines, `{"at_ms": <unix epoch ms>, "fault": "...", "phase": "kill" |
//! "restart" | "ready"}`, appended while the run goes and read once at the end. Unknown fields
//! are ignored, and so are lines that are not such an object (counted, so a broken orchestrator
//! shows in the report). Window i runs from the i-th kill to the next kill, the last one to the
//! end of the load; a window's fault is down from its kill to the first `ready` of the same
//! fault after it.

use std::path::Path;

use serde::Deserialize;

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TimelineEvent {
    pub at_ms: u64,
    pub fault: String,
    pub phase: String,
}

/// The events of a timeline file, in time order, and how many lines were not events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    pub events: Vec<TimelineEvent>,
    pub ignored_lines: u64,
}

/// The span of one fault: from its kill to the next kill (or the end of the load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub fault: String,
    pub start_ms: u64,
    pub end_ms: u64,
    /// When the timeline said the fault was ready again, if it did within the window.
    pub ready_ms: Option<u64>,
}

impl Timeline {
    /// Reads the file; a file that does not exist is an empty timeline (a run without faults).
    pub fn read(path: &Path) -> anyhow::Result<Timeline> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Timeline::parse(&text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Timeline::default()),
            Err(error) => Err(anyhow::Error::new(error)
                .context(format!("cannot read the timeline {}", path.display()))),
        }
    }

    pub fn parse(text: &str) -> Timeline {
        let mut timeline = Timeline::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match serde_json::from_str::<TimelineEvent>(line) {
                Ok(event) => timeline.events.push(event),
                Err(_) => timeline.ignored_lines += 1,
            }
        }
        // Stable: events logged in the same millisecond keep their file order.
        timeline.events.sort_by_key(|event| event.at_ms);
        timeline
    }

    /// The fault windows up to `load_end_ms`; kills after the end of the load open none.
    pub fn windows(&self, load_end_ms: u64) -> Vec<Window> {
        let kills: Vec<&TimelineEvent> = self
            .events
            .iter()
            .filter(|event| event.phase == "kill" && event.at_ms < load_end_ms)
            .collect();
        kills
            .iter()
            .enumerate()
            .map(|(i, kill)| {
                let end_ms = kills.get(i + 1).map_or(load_end_ms, |next| next.at_ms);
                let ready_ms = self
                    .events
                    .iter()
                    .find(|event| {
                        event.phase == "ready"
                            && event.fault == kill.fault
                            && event.at_ms >= kill.at_ms
                            && event.at_ms < end_ms.max(kill.at_ms + 1)
                    })
                    .map(|event| event.at_ms);
                Window {
                    fault: kill.fault.clone(),
                    start_ms: kill.at_ms,
                    end_ms,
                    ready_ms,
                }
            })
            .collect()
    }
}

/// Which window a moment falls in: `None` before the first kill. The last window also takes
/// what ends after it (operations finishing after the load was stopped).
pub fn window_of(windows: &[Window], at_ms: u64) -> Option<usize> {
    windows.iter().rposition(|window| window.start_ms <= at_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_windows_from_kill_to_kill() {
        let text = r#"
{"at_ms": 1000, "fault": "command-api", "phase": "kill", "instance": "command-api-1"}
{"at_ms": 1500, "fault": "command-api", "phase": "restart"}
not json at all
{"at_ms": 2500, "fault": "command-api", "phase": "ready"}
{"at_ms": 4000, "fault": "broker", "phase": "kill"}
{"fault": "broker", "phase": "restart"}
{"at_ms": 9000, "fault": "broker", "phase": "kill"}
"#;
        let timeline = Timeline::parse(text);
        assert_eq!(timeline.ignored_lines, 2);
        assert_eq!(timeline.events.len(), 5);
        let windows = timeline.windows(8000);
        assert_eq!(
            windows,
            [
                Window {
                    fault: "command-api".to_owned(),
                    start_ms: 1000,
                    end_ms: 4000,
                    ready_ms: Some(2500),
                },
                Window {
                    fault: "broker".to_owned(),
                    start_ms: 4000,
                    end_ms: 8000,
                    ready_ms: None,
                },
            ]
        );
        assert_eq!(window_of(&windows, 999), None);
        assert_eq!(window_of(&windows, 1000), Some(0));
        assert_eq!(window_of(&windows, 3999), Some(0));
        assert_eq!(window_of(&windows, 4000), Some(1));
        assert_eq!(
            window_of(&windows, 8500),
            Some(1),
            "the drain after the load"
        );
    }

    #[test]
    fn a_missing_file_is_an_empty_timeline() {
        let path = std::env::temp_dir().join(format!("no-timeline-{}", uuid::Uuid::now_v7()));
        let timeline = Timeline::read(&path).expect("missing is fine");
        assert_eq!(timeline, Timeline::default());
        assert!(timeline.windows(10).is_empty());
    }
}
