//! What an operator sees of a replay: events done, events/s and ETA, per partition and overall;
//! bars when stderr is a terminal, log lines every few seconds otherwise.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How often progress is logged without a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A replay's progress as the operator sees it: events done (the committed offsets, so a resumed
/// run starts where it stopped), events/s and ETA over this run, per partition and overall.
pub(super) struct ProgressDisplay {
    label: &'static str,
    started: Instant,
    /// Offsets when this run started: the rate counts only what this run did.
    from: BTreeMap<i32, i64>,
    targets: BTreeMap<i32, i64>,
    output: Output,
}

/// Where the progress goes.
enum Output {
    /// No terminal: a log line every [`PROGRESS_EVERY`].
    Log { logged: Instant },
    /// A terminal on stderr: one bar overall, one per partition.
    Bars {
        bars: MultiProgress,
        overall: ProgressBar,
        partitions: BTreeMap<i32, ProgressBar>,
    },
}

impl ProgressDisplay {
    pub(super) fn new(label: &'static str, from: &BTreeMap<i32, i64>) -> ProgressDisplay {
        let output = if std::io::stderr().is_terminal() {
            Self::bars(label, from)
        } else {
            Output::Log {
                logged: Instant::now(),
            }
        };
        ProgressDisplay {
            label,
            started: Instant::now(),
            from: from.clone(),
            targets: from.clone(),
            output,
        }
    }

    fn bars(label: &str, from: &BTreeMap<i32, i64>) -> Output {
        let style = ProgressStyle::with_template(
            "{prefix:>14} [{bar:32}] {pos:>9}/{len:<9} {rate:>10} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        )
        .progress_chars("=> ");
        let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let bar = |prefix: String, position: i64| {
            let bar = bars.add(ProgressBar::new(0).with_style(style.clone()));
            bar.set_prefix(prefix);
            bar.set_position(u64::try_from(position).unwrap_or(0));
            // The rate and ETA are this run's: a resumed position is not speed.
            bar.reset_eta();
            bar
        };
        let overall = bar(label.to_owned(), from.values().sum());
        let partitions = from
            .iter()
            .map(|(p, offset)| (*p, bar(format!("partition {p}"), *offset)))
            .collect();
        Output::Bars {
            bars,
            overall,
            partitions,
        }
    }

    /// A new target (the live read model moved on): bars get their new lengths.
    pub(super) fn aim(&mut self, positions: &BTreeMap<i32, i64>, targets: &BTreeMap<i32, i64>) {
        self.targets = targets.clone();
        if let Output::Bars {
            overall,
            partitions,
            ..
        } = &self.output
        {
            overall.set_length(count(targets.values().sum()));
            for (p, bar) in partitions {
                bar.set_length(count(targets.get(p).copied().unwrap_or(0)));
            }
        }
        self.advanced(positions);
    }

    pub(super) fn advanced(&mut self, positions: &BTreeMap<i32, i64>) {
        match &mut self.output {
            Output::Bars {
                overall,
                partitions,
                ..
            } => {
                overall.set_position(count(positions.values().sum()));
                for (p, bar) in partitions.iter() {
                    bar.set_position(count(positions.get(p).copied().unwrap_or(0)));
                }
            }
            Output::Log { logged } => {
                if logged.elapsed() < PROGRESS_EVERY {
                    return;
                }
                *logged = Instant::now();
                let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
                let line = |done: i64, from: i64, target: i64| {
                    let rate = (done - from) as f64 / elapsed;
                    let eta = if done >= target {
                        "0s".to_owned()
                    } else if rate > 0.0 {
                        format!("{:.0}s", (target - done) as f64 / rate)
                    } else {
                        "?".to_owned()
                    };
                    (format!("{done}/{target} {rate:.0}/s ETA {eta}"), rate)
                };
                let per_partition = positions
                    .iter()
                    .map(|(p, done)| {
                        let from = self.from.get(p).copied().unwrap_or(0);
                        let target = self.targets.get(p).copied().unwrap_or(0);
                        format!("p{p} {}", line(*done, from, target).0)
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let done: i64 = positions.values().sum();
                let target: i64 = self.targets.values().sum();
                let (overall, rate) = line(done, self.from.values().sum(), target);
                tracing::info!(
                    done,
                    total = target,
                    events_per_sec = rate.round() as u64,
                    overall = %overall,
                    partitions = %per_partition,
                    "{}",
                    self.label
                );
            }
        }
    }

    pub(super) fn finish(&self) {
        if let Output::Bars {
            bars,
            overall,
            partitions,
        } = &self.output
        {
            for bar in partitions.values() {
                bar.finish();
            }
            overall.finish();
            let _ = bars.clear();
        }
    }
}

fn count(offset: i64) -> u64 {
    u64::try_from(offset).unwrap_or(0)
}
