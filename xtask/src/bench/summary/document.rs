//! `summary.json`'s shape: the runs in the order they ran (a `loadgen broker` run or a `loadgen
//! run` run each), the resident memory, and the ratios; keys in the order they have always been
//! written, optional ones left out when they did not apply.

use serde::{Serialize, Serializer};

use super::inputs::Percentiles;

/// The whole document.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub runs: Ordered<RunEntry>,
    pub rss_kib: Ordered<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes_vs_broker_flat: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_vs_broker_delivery: Option<Ratios>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgbench_select_tps: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_posts_vs_bare: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncached_posts_vs_pgbench: Option<f64>,
}

/// A JSON object whose keys keep the order they were added in.
#[derive(Debug, Clone)]
pub struct Ordered<V>(pub Vec<(String, V)>);

impl<V> Ordered<V> {
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl<V: Serialize> Serialize for Ordered<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum RunEntry {
    Broker(BrokerEntry),
    Load(LoadEntry),
}

impl RunEntry {
    pub fn cpu_percent(&self) -> Option<&Ordered<i64>> {
        match self {
            RunEntry::Broker(entry) => entry.cpu_percent.as_ref(),
            RunEntry::Load(entry) => entry.cpu_percent.as_ref(),
        }
    }
}

/// A `loadgen broker` run.
#[derive(Debug, Serialize)]
pub struct BrokerEntry {
    pub appends_per_s: i64,
    pub append_ms: Percentiles,
    pub delivery_ms: Percentiles,
    pub errors: u64,
    pub appends_slope_per_min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_back_per_s: Option<i64>,
    pub cpu_percent: Option<Ordered<i64>>,
}

/// A `loadgen run` run.
#[derive(Debug, Serialize)]
pub struct LoadEntry {
    pub reads: Option<Side>,
    pub writes: Option<Side>,
    pub cpu_percent: Option<Ordered<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projector_batches: Option<Batches>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<LagMs>,
}

#[derive(Debug, Serialize)]
pub struct Side {
    pub per_s: i64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub trend: Option<Trend>,
}

#[derive(Debug, Serialize)]
pub struct Trend {
    pub slope_per_min: Option<f64>,
    pub worst_second_p99_ms: Option<P99>,
    pub first_5s_worst_p99_ms: Option<P99>,
}

/// A second's worst p99: none answered (written `0`) or milliseconds.
#[derive(Debug, Clone, Copy)]
pub enum P99 {
    None,
    Ms(f64),
}

impl P99 {
    pub fn ms(self) -> f64 {
        match self {
            P99::None => 0.0,
            P99::Ms(ms) => ms,
        }
    }
}

impl Serialize for P99 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            P99::None => serializer.serialize_i64(0),
            P99::Ms(ms) => serializer.serialize_f64(*ms),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Batches {
    pub count: i64,
    pub events_mean: f64,
    pub ms_mean: f64,
}

#[derive(Debug, Serialize)]
pub struct LagMs {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Serialize)]
pub struct Ratios {
    pub p50: f64,
    pub p99: f64,
}
