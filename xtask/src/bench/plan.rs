//! The runs of each load benchmark and the `loadgen` arguments of each (BENCHMARKS.md has the
//! table): which service it loads, with which mix, in an open or a closed loop, for how long.

use std::path::Path;

/// Which load benchmark: each kind runs its runs in one stack, so that its ratios hold on a
/// noisy machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Cached reads, the same reads against a bare handler, cache-miss reads against a second
    /// query API with its cache off, then `pgbench -S` on the same PostgreSQL.
    Reads,
    /// The broker's own ceiling (`loadgen broker`: flat out, then at the write rate), accepted
    /// writes as fast as they go, the visibility lag at the write rate with 50 reads per write,
    /// and a burst at three times the write rate with 100 reads per write.
    Writes,
}

impl Kind {
    /// `reads` or `writes`, as in `.stack/bench-<kind>`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Reads => "reads",
            Kind::Writes => "writes",
        }
    }

    /// The runs, in the order they run.
    pub fn runs(self) -> &'static [&'static str] {
        match self {
            Kind::Reads => &[
                "cached-mix",
                "cached-posts",
                "bare-posts",
                "uncached-posts",
                "uncached-mix",
            ],
            Kind::Writes => &["broker-flat", "writes", "broker-rate", "lag", "burst"],
        }
    }
}

/// What the runs' arguments are made of.
pub struct Settings<'a> {
    pub brokers: &'a str,
    /// The cached query API, the cache-less one and loadgen's bare server, as `http://host:port`.
    pub cached_url: &'a str,
    pub uncached_url: &'a str,
    pub bare_url: &'a str,
    /// The seeded population's file.
    pub population: &'a Path,
    pub out: &'a Path,
    pub duration: &'a str,
    pub burst_duration: &'a str,
    pub connections: u32,
    pub write_rate: u32,
}

/// The loadgen subcommand of a run, and its arguments but the ones every `loadgen run` gets
/// (the command API's URL, the warm-up, the JSON and SVG reports: [`run_reports`]).
pub fn loadgen_args(run: &str, s: &Settings<'_>) -> (&'static str, Vec<String>) {
    let population = s.population.display().to_string();
    let words = |list: &[&str]| list.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
    if run.starts_with("broker-") {
        // The broker alone, on a topic of its own beside the services' (as many partitions, the
        // command API's producer settings, the projector's fetch wait): the ceiling that each
        // write and lag figure is a fraction of.
        let mut args = words(&["--brokers", s.brokers, "--topic"]);
        args.push(format!("bench-{run}"));
        args.extend(words(&[
            "--warmup",
            "5s",
            "--duration",
            s.duration,
            "--in-flight",
        ]));
        args.push(s.connections.to_string());
        args.push("--json".into());
        args.push(s.out.join(format!("{run}.json")).display().to_string());
        if run == "broker-rate" {
            args.extend([
                "--rate".into(),
                s.write_rate.to_string(),
                "--no-read-back".into(),
            ]);
        }
        return ("broker", args);
    }
    let query = |url: &str| words(&["--query-url", url]);
    let mut args = match run {
        "cached-mix" => [
            query(s.cached_url),
            words(&["--population-file", &population]),
        ]
        .concat(),
        "cached-posts" => [
            query(s.cached_url),
            words(&["--population-file", &population, "--read-mix", "posts=100"]),
        ]
        .concat(),
        "bare-posts" => [
            query(s.bare_url),
            words(&["--no-seed", "--read-mix", "posts=100"]),
        ]
        .concat(),
        "uncached-posts" => [
            query(s.uncached_url),
            words(&[
                "--population-file",
                &population,
                "--read-mix",
                "posts=100",
                "--zipf",
                "0",
            ]),
        ]
        .concat(),
        "uncached-mix" => [
            query(s.uncached_url),
            words(&["--population-file", &population, "--zipf", "0"]),
        ]
        .concat(),
        "writes" => [
            query(s.cached_url),
            words(&[
                "--population-file",
                &population,
                "--writes-only",
                "--lag-sample",
                "0.01",
            ]),
        ]
        .concat(),
        // The expected load's mix at --write-rate writes/s (400) with 50 times as many reads, on
        // a schedule; one write in ten probed for its lag (a probe holds a connection until the
        // read model shows the write).
        "lag" => [
            query(s.cached_url),
            words(&["--population-file", &population, "--mode", "open", "--rate"]),
            vec![(u64::from(s.write_rate) * 51).to_string()],
            words(&[
                "--read-ratio",
                "50",
                "--lag-sample",
                "0.1",
                "--connections",
                "512",
            ]),
        ]
        .concat(),
        // The expected load's uneven peaks: three times the write rate with 100 reads per
        // (average) write, 1,200 writes/s and 40,000 reads/s at the default rate; one write in a
        // hundred probed. Answered in full, or shed at once with 503 and Retry-After.
        "burst" => [
            query(s.cached_url),
            words(&["--population-file", &population, "--mode", "open", "--rate"]),
            vec![(u64::from(s.write_rate) * 103).to_string()],
            vec!["--read-ratio".into(), format!("{:.4}", 100.0 / 3.0)],
            words(&["--lag-sample", "0.01", "--connections", "1024"]),
        ]
        .concat(),
        _ => Vec::new(),
    };
    args.push("--duration".into());
    args.push(
        if run == "burst" {
            s.burst_duration
        } else {
            s.duration
        }
        .to_owned(),
    );
    if run != "lag" && run != "burst" {
        args.extend(words(&["--mode", "closed", "--connections"]));
        args.push(s.connections.to_string());
    }
    if run.contains('-') {
        args.push("--reads-only".into());
    }
    ("run", args)
}

/// What every `loadgen run` of a benchmark gets: the command API, the warm-up, and where its
/// JSON report and SVG plot go.
pub fn run_reports(run: &str, command_url: &str, out: &Path) -> Vec<String> {
    vec![
        "--command-url".into(),
        command_url.to_owned(),
        "--warmup".into(),
        "5s".into(),
    ]
    .into_iter()
    .chain([
        "--json".into(),
        out.join(format!("{run}.json")).display().to_string(),
    ])
    .chain([
        "--svg".into(),
        out.join(format!("{run}.svg")).display().to_string(),
    ])
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(out: &Path) -> Settings<'_> {
        Settings {
            brokers: "127.0.0.1:9",
            cached_url: "http://c",
            uncached_url: "http://u",
            bare_url: "http://b",
            population: Path::new("/o/population.json"),
            out,
            duration: "30s",
            burst_duration: "60s",
            connections: 64,
            write_rate: 400,
        }
    }

    #[test]
    fn each_run_gets_its_arguments() {
        let out = Path::new("/o");
        let s = settings(out);
        assert_eq!(
            loadgen_args("burst", &s).1.join(" "),
            "--query-url http://c --population-file /o/population.json --mode open --rate 41200 \
             --read-ratio 33.3333 --lag-sample 0.01 --connections 1024 --duration 60s"
        );
        assert_eq!(
            loadgen_args("uncached-posts", &s).1.join(" "),
            "--query-url http://u --population-file /o/population.json --read-mix posts=100 \
             --zipf 0 --duration 30s --mode closed --connections 64 --reads-only"
        );
        assert_eq!(
            loadgen_args("broker-rate", &s),
            (
                "broker",
                "--brokers 127.0.0.1:9 --topic bench-broker-rate --warmup 5s --duration 30s \
                 --in-flight 64 --json /o/broker-rate.json --rate 400 --no-read-back"
                    .split(' ')
                    .map(str::to_owned)
                    .collect()
            )
        );
    }
}
