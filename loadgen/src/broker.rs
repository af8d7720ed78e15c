//! `loadgen broker`: the broker's own ceiling, measured with a plain Kafka client and no service
//! in between, so that each figure of a load run can be read as a fraction of what the broker
//! allows on the same machine.
//!
//! It appends records shaped like the service's events (a user id as the key, a 1 KB value, the
//! three headers every event carries) with the command API's producer settings (`acks=all`,
//! idempotent, `murmur2_random`, `linger.ms` 5), `--in-flight` at a time, flat out or at
//! `--rate`; meanwhile a consumer tails the topic with the projector's fetch settings and times
//! each record from its send to its arrival (the broker's share of the visibility lag). Then a
//! fresh consumer reads the whole topic from the start, as a rebuild does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::BrokerConfig;
use crate::recorder::{micros, new_histogram};

/// What one `loadgen broker` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerReport {
    pub brokers: String,
    pub topic: String,
    pub partitions: i32,
    pub in_flight: usize,
    /// `None`: flat out.
    pub rate: Option<f64>,
    pub value_bytes: usize,
    pub fetch_wait_ms: u32,
    pub duration_s: f64,
    /// Appends sent in the measured window and acknowledged.
    pub appended: u64,
    /// Of the records sent in the measured window, those the tailing consumer received.
    pub delivered: u64,
    pub append_errors: BTreeMap<String, u64>,
    pub appends_per_s: f64,
    /// From handing a record to the producer to its acknowledgement.
    pub append_latency_ms: Percentiles,
    /// From handing a record to the producer to the tailing consumer receiving it.
    pub delivery_latency_ms: Percentiles,
    /// Per measured second: appends acknowledged, and the p99 of their latency.
    pub seconds: Vec<SecondFigures>,
    /// The read of the whole topic from the start: records and records per second.
    pub read_back: Option<ReadBack>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            p50: ms(histogram.value_at_quantile(0.5)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SecondFigures {
    pub second: u64,
    pub appended: u64,
    pub append_p99_ms: f64,
    pub delivered: u64,
    pub delivery_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReadBack {
    pub records: u64,
    pub seconds: f64,
    pub records_per_s: f64,
}

/// The send instant rides in the value's first 8 bytes, as nanoseconds since the run's start,
/// so that the tailing consumer can time the delivery with the same clock.
const STAMP: usize = 8;

/// Latencies of the current second and of the whole window, for one measured path.
struct Timings {
    window: Histogram<u64>,
    second: Histogram<u64>,
}

impl Timings {
    fn new() -> Timings {
        Timings {
            window: new_histogram(),
            second: new_histogram(),
        }
    }

    fn record(&mut self, latency: Duration) {
        let us = micros(latency);
        self.window.saturating_record(us);
        self.second.saturating_record(us);
    }

    /// How many were recorded in the whole window.
    fn count(&self) -> u64 {
        self.window.len()
    }

    /// The count and p99 (ms) of the second just closed.
    fn close_second(&mut self) -> (u64, f64) {
        let closed = (
            self.second.len(),
            self.second.value_at_quantile(0.99) as f64 / 1000.0,
        );
        self.second.reset();
        closed
    }
}

struct Shared {
    start: Instant,
    /// Only appends sent from here on are counted, and only their deliveries.
    measured_from: Instant,
    appends: Mutex<Timings>,
    deliveries: Mutex<Timings>,
    errors: Mutex<BTreeMap<String, u64>>,
}

/// Runs the measurement and prints its table; writes `--json` if asked.
pub async fn run_and_report(config: BrokerConfig) -> anyhow::Result<BrokerReport> {
    let report = run(&config).await?;
    print!("{}", table(&report));
    if let Some(path) = &config.json {
        let text = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
        std::fs::write(path, text)
            .with_context(|| format!("cannot write the JSON report {}", path.display()))?;
    }
    Ok(report)
}

async fn run(config: &BrokerConfig) -> anyhow::Result<BrokerReport> {
    if config.value_bytes < STAMP {
        bail!("--value-bytes must be at least {STAMP}");
    }
    if config.in_flight == 0 {
        bail!("--in-flight must be at least 1");
    }
    ensure_topic(config).await?;
    let start = Instant::now();
    let shared = Arc::new(Shared {
        start,
        measured_from: start + config.warmup,
        appends: std::sync::Mutex::new(Timings::new()),
        deliveries: std::sync::Mutex::new(Timings::new()),
        errors: std::sync::Mutex::default(),
    });
    let stopping = Arc::new(AtomicBool::new(false));
    let tail = {
        let (shared, stopping, config) = (shared.clone(), stopping.clone(), config.clone());
        let (positioned, tail_positioned) = tokio::sync::oneshot::channel();
        let tail =
            tokio::task::spawn_blocking(move || tail(&config, &shared, &stopping, positioned));
        // The tail must know where the log ends before the first append, or it misses some.
        if tail_positioned.await.is_err() {
            tail.await.context("the tailing consumer panicked")??;
            bail!("the tailing consumer stopped before it was positioned");
        }
        tail
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", "loadgen-broker")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("enable.gapless.guarantee", "true")
        .set("message.timeout.ms", "5000")
        .set("request.timeout.ms", "5000")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .context("invalid producer settings")?;
    let producer = Arc::new(producer);

    let warmup_end = shared.measured_from;
    let end = warmup_end + config.duration;
    let permits = Arc::new(Semaphore::new(config.in_flight));
    let mut seconds = Vec::new();
    let mut next_second = warmup_end + Duration::from_secs(1);
    let mut sent: u64 = 0;
    let mut appends = JoinSet::new();
    let interval = (config.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / config.rate));
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= next_second {
            seconds.push(close_second(&shared, seconds.len()));
            next_second += Duration::from_secs(1);
        }
        // An open loop sends on a schedule whatever the broker does, and counts each latency
        // from the intended send; a closed one sends when a record in flight is done.
        let due = match interval {
            Some(interval) => {
                let due = shared.start + interval.mul_f64(sent as f64);
                if due > now {
                    tokio::time::sleep_until(due.min(next_second).into()).await;
                    continue;
                }
                Some(due)
            }
            None => None,
        };
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.context("semaphore closed")?,
            () = tokio::time::sleep_until(next_second.min(end).into()) => continue,
        };
        let started = due.unwrap_or_else(Instant::now);
        let value = record_value(config.value_bytes, started - shared.start);
        let key = uuid::Uuid::now_v7().to_string();
        let (producer, shared, topic) = (producer.clone(), shared.clone(), config.topic.clone());
        appends.spawn(async move {
            let record = FutureRecord::to(&topic)
                .key(&key)
                .payload(&value)
                .headers(event_headers());
            let outcome = producer.send(record, Duration::ZERO).await;
            if started >= shared.measured_from {
                match outcome {
                    Ok(_) => shared
                        .appends
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(started.elapsed()),
                    Err((error, _)) => {
                        *shared
                            .errors
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry(error.to_string())
                            .or_default() += 1;
                    }
                }
            }
            drop(permit);
        });
        sent += 1;
        // Reap finished appends so the set does not grow with the run.
        while appends.try_join_next().is_some() {}
    }
    while appends.join_next().await.is_some() {}
    let appended_total = shared
        .appends
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .count();
    // Let the tail catch up with what was appended, bounded.
    let catch_up = Instant::now() + Duration::from_secs(30);
    while shared
        .deliveries
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .count()
        < appended_total
        && Instant::now() < catch_up
        && !tail.is_finished()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stopping.store(true, Ordering::Relaxed);
    tail.await.context("the tailing consumer panicked")??;
    // What finished after the last whole second, the drain and the catch-up included.
    seconds.push(close_second(&shared, seconds.len()));

    let read_back = if config.no_read_back {
        None
    } else {
        let config = config.clone();
        Some(
            tokio::task::spawn_blocking(move || read_back(&config))
                .await
                .context("the read-back panicked")??,
        )
    };

    let appends = shared
        .appends
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let deliveries = shared
        .deliveries
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    Ok(BrokerReport {
        brokers: config.brokers.clone(),
        topic: config.topic.clone(),
        partitions: config.partitions,
        in_flight: config.in_flight,
        rate: interval.map(|_| config.rate),
        value_bytes: config.value_bytes,
        fetch_wait_ms: config.fetch_wait_ms,
        duration_s: config.duration.as_secs_f64(),
        appended: appends.count(),
        delivered: deliveries.count(),
        append_errors: shared
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone(),
        appends_per_s: appends.count() as f64 / config.duration.as_secs_f64(),
        append_latency_ms: Percentiles::of(&appends.window),
        delivery_latency_ms: Percentiles::of(&deliveries.window),
        seconds,
        read_back,
    })
}

/// The figures of the second just ended, the `index`th of the measured window.
fn close_second(shared: &Shared, index: usize) -> SecondFigures {
    let (appended, append_p99_ms) = shared
        .appends
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .close_second();
    let (delivered, delivery_p99_ms) = shared
        .deliveries
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .close_second();
    SecondFigures {
        second: index as u64 + 1,
        appended,
        append_p99_ms,
        delivered,
        delivery_p99_ms,
    }
}

/// The value: the send stamp, then filler up to `bytes`.
fn record_value(bytes: usize, since_start: Duration) -> Vec<u8> {
    let mut value = vec![b'x'; bytes];
    let nanos = u64::try_from(since_start.as_nanos()).unwrap_or(u64::MAX);
    value[..STAMP].copy_from_slice(&nanos.to_be_bytes());
    value
}

/// The headers every event of the service carries (`events::headers`), with typical values.
fn event_headers() -> OwnedHeaders {
    use events::headers;
    OwnedHeaders::new()
        .insert(Header {
            key: headers::EVENT_TYPE,
            value: Some("post.published"),
        })
        .insert(Header {
            key: headers::SCHEMA_VERSION,
            value: Some("1"),
        })
        .insert(Header {
            key: headers::CONTENT_TYPE,
            value: Some(headers::JSON),
        })
}

fn consumer(config: &BrokerConfig, fetch_wait_ms: u32) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set(
            "group.id",
            format!("loadgen-broker-{}", uuid::Uuid::now_v7()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .set("queued.max.messages.kbytes", "16384")
        .create()
        .context("invalid consumer settings")
}

/// Each partition's low and high watermark (the first offset it holds, and the next it will
/// give).
fn watermarks(
    consumer: &BaseConsumer,
    config: &BrokerConfig,
) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    (0..config.partitions)
        .map(|partition| {
            let marks =
                consumer.fetch_watermarks(&config.topic, partition, Duration::from_secs(10))?;
            Ok((partition, marks))
        })
        .collect()
}

/// Every partition of the topic from `offset`.
fn assign_all(
    consumer: &BaseConsumer,
    config: &BrokerConfig,
    offset: impl Fn(i32) -> Offset,
) -> anyhow::Result<()> {
    let mut assignment = TopicPartitionList::new();
    for partition in 0..config.partitions {
        assignment.add_partition_offset(&config.topic, partition, offset(partition))?;
    }
    consumer.assign(&assignment)?;
    Ok(())
}

/// Tails the topic from its end until `stopping`, timing each record sent in the measured
/// window from its send stamp; says when it knows where the log ends.
fn tail(
    config: &BrokerConfig,
    shared: &Shared,
    stopping: &AtomicBool,
    positioned: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let consumer = consumer(config, config.fetch_wait_ms)?;
    let marks = watermarks(&consumer, config)?;
    assign_all(&consumer, config, |partition| {
        Offset::Offset(marks.get(&partition).map_or(0, |&(_, end)| end))
    })?;
    let _ = positioned.send(());
    let measured_from = shared.measured_from - shared.start;
    while !stopping.load(Ordering::Relaxed) {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.context("the tailing consumer failed")?;
        let received = shared.start.elapsed();
        let Some(stamp) = message
            .payload()
            .and_then(|value| value.get(..STAMP))
            .and_then(|bytes| <[u8; STAMP]>::try_from(bytes).ok())
        else {
            continue;
        };
        let sent = Duration::from_nanos(u64::from_be_bytes(stamp));
        if sent >= measured_from {
            shared
                .deliveries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(received.saturating_sub(sent));
        }
    }
    Ok(())
}

/// Reads every partition from its start to its end as it is now.
fn read_back(config: &BrokerConfig) -> anyhow::Result<ReadBack> {
    let consumer = consumer(config, 100)?;
    let marks = watermarks(&consumer, config)?;
    let remaining: u64 = marks
        .values()
        .map(|&(low, high)| u64::try_from(high - low).unwrap_or(0))
        .sum();
    assign_all(&consumer, config, |_| Offset::Beginning)?;
    let started = Instant::now();
    let mut records = 0u64;
    let mut idle_since = Instant::now();
    while records < remaining {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                if marks
                    .get(&message.partition())
                    .is_some_and(|&(_, end)| message.offset() < end)
                {
                    records += 1;
                }
                idle_since = Instant::now();
            }
            Some(Err(error)) => return Err(error).context("the read-back failed"),
            None if idle_since.elapsed() > Duration::from_secs(30) => {
                bail!("the read-back got nothing for 30 s at {records} of {remaining} records")
            }
            None => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(ReadBack {
        records,
        seconds,
        records_per_s: records as f64 / seconds.max(f64::EPSILON),
    })
}

async fn ensure_topic(config: &BrokerConfig) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .create()
        .context("invalid admin settings")?;
    let topic = NewTopic::new(&config.topic, config.partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = tokio::time::timeout(
        Duration::from_secs(15),
        admin.create_topics([&topic], &options),
    )
    .await
    .context("the broker did not answer the topic creation within 15 s")??;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// The report for people.
pub fn table(report: &BrokerReport) -> String {
    let load = match report.rate {
        Some(rate) => format!("{rate:.0} records/s"),
        None => "flat out".to_owned(),
    };
    let a = &report.append_latency_ms;
    let d = &report.delivery_latency_ms;
    let mut text = format!(
        "broker {} topic {} ({} partitions), {}-byte values, {} in flight, {load}, {:.0} s\n\
         appends      {:>9.0}/s  p50 {:>7.1} ms  p99 {:>7.1} ms  p99.9 {:>7.1} ms  max {:>7.1} ms  errors {}\n\
         deliveries   {:>9}   p50 {:>7.1} ms  p99 {:>7.1} ms  p99.9 {:>7.1} ms  max {:>7.1} ms  (fetch wait {} ms)\n",
        report.brokers,
        report.topic,
        report.partitions,
        report.value_bytes,
        report.in_flight,
        report.duration_s,
        report.appends_per_s,
        a.p50,
        a.p99,
        a.p999,
        a.max,
        report.append_errors.values().sum::<u64>(),
        report.delivered,
        d.p50,
        d.p99,
        d.p999,
        d.max,
        report.fetch_wait_ms,
    );
    if let Some(read) = &report.read_back {
        text.push_str(&format!(
            "read back    {:>9.0}/s  ({} records from the start in {:.1} s)\n",
            read.records_per_s, read.records, read.seconds
        ));
    }
    text
}
