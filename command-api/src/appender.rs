//! Appending envelopes to the Kafka topic, and the topic itself.
//!
//! A write is accepted once the broker has acknowledged its record with `acks=all`, from an
//! idempotent producer (so librdkafka's own retries never duplicate a record). Every wait is
//! bounded: the record's `message.timeout.ms` is the append timeout, and the wait for its
//! delivery report is bounded again by a tokio timeout slightly longer, so a request never hangs
//! on a broker that stopped answering.
//!
//! The record key is the owning user's id and the partitioner is `murmur2_random`, the Java
//! client's hashing: every client of the topic, in any language, maps a user to the same
//! partition, and all of one user's events stay in order.
//!
//! A producer whose record failed is retired and replaced by a fresh one. When a record of an
//! idempotent producer times out, librdkafka bumps the producer's epoch locally (KIP-360), and
//! tansu 0.6 cannot take a produce request under an epoch it did not hand out: its storage task
//! panics and the broker refuses every later write, from every client, until it restarts. So a
//! failed producer must never talk to the broker again: it is purged and dropped, and the next
//! write gets a new producer id. `enable.gapless.guarantee` turns the other failures that would
//! bump the epoch into fatal errors, which stop the producer at once, inside librdkafka.
//!
//! Every append's latency, from handing the record to the producer to its delivery report, is
//! observed in `command_append_duration_seconds{outcome}` (`ok` or `error`): the broker's share
//! of a write's latency, apart from the HTTP histogram's whole request.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use events::{ConsistencyToken, Envelope, headers};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};

use service_kit::metrics::{Histogram, LATENCY_SECONDS, Metrics};

use crate::config::Config;

/// How much longer than the record's own timeout we wait for its delivery report: librdkafka
/// scans for expired records only periodically.
const DELIVERY_REPORT_MARGIN: Duration = Duration::from_millis(1500);

/// The bound on a readiness probe's metadata request.
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// Why an envelope was not appended, or may not have been.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("the producer's local queue is full")]
    QueueFull,
    #[error("the record could not be enqueued: {0}")]
    Enqueue(KafkaError),
    #[error("the broker did not acknowledge the record: {0}")]
    NotAcknowledged(KafkaError),
    #[error("no delivery report within {0:?}")]
    TimedOut(Duration),
    #[error("the producer went away before reporting the delivery")]
    Canceled,
    #[error("the broker holds the record but its offset could not be read: {0}")]
    OffsetUnknown(KafkaError),
}

impl AppendError {
    /// Whether the producer that failed must be retired: every failure that may have bumped its
    /// epoch. A full queue is local back-pressure and says nothing about the producer.
    fn retires_producer(&self) -> bool {
        !matches!(self, AppendError::QueueFull | AppendError::OffsetUnknown(_))
    }

    /// A short label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            AppendError::QueueFull => "queue_full",
            AppendError::Enqueue(_) => "enqueue_failed",
            AppendError::NotAcknowledged(_) => "not_acknowledged",
            AppendError::TimedOut(_) => "timed_out",
            AppendError::Canceled => "canceled",
            AppendError::OffsetUnknown(_) => "offset_unknown",
        }
    }
}

/// Why the service is not ready to accept writes.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("the broker did not answer a metadata request for topic {topic:?}: {source}")]
    Unreachable { topic: String, source: KafkaError },
    #[error("the broker does not know topic {topic:?}: {code}")]
    TopicUnavailable { topic: String, code: String },
    #[error("no metadata answer within {0:?}")]
    TimedOut(Duration),
    #[error("the readiness probe failed: {0}")]
    Probe(String),
}

/// Appends envelopes to one topic. Cheap to share behind an `Arc`.
pub struct Appender {
    /// The producer in service; replaced after a failure (see the module documentation).
    producer: RwLock<Arc<FutureProducer>>,
    producer_config: ClientConfig,
    topic: String,
    append_timeout: Duration,
    latency: AppendLatency,
}

/// `command_append_duration_seconds`'s two series, registered once so that observing one
/// takes no lock.
struct AppendLatency {
    acknowledged: Histogram,
    failed: Histogram,
}

impl AppendLatency {
    const NAME: &'static str = "command_append_duration_seconds";
    const HELP: &'static str = "Time from handing an event to the Kafka producer to the broker's \
                                acknowledgement (ok) or the append's failure (error).";

    fn register(metrics: &Metrics) -> AppendLatency {
        let series = |outcome: &str| {
            metrics.histogram(
                Self::NAME,
                Self::HELP,
                vec![("outcome", outcome.to_owned())],
                LATENCY_SECONDS,
            )
        };
        AppendLatency {
            acknowledged: series("ok"),
            failed: series("error"),
        }
    }
}

impl std::fmt::Debug for Appender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appender")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Appender {
    /// Creates the producer, and registers the append latency in `metrics`. It connects
    /// lazily: this does not wait for the broker.
    pub fn new(config: &Config, metrics: &Metrics) -> anyhow::Result<Appender> {
        let mut producer_config = ClientConfig::new();
        producer_config
            .set("bootstrap.servers", &config.kafka_brokers)
            .set("client.id", "command-api")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Failures that would bump the epoch become fatal; see the module documentation.
            // librdkafka logs a warning that the setting is experimental; it has been there
            // since 1.0.
            .set("enable.gapless.guarantee", "true")
            .set("message.timeout.ms", config.append_timeout_ms.to_string())
            // A produce request that outlives its records' timeout is of no use: give up on
            // both together.
            .set(
                "request.timeout.ms",
                config.append_timeout_ms.clamp(1, 30_000).to_string(),
            )
            .set("partitioner", "murmur2_random")
            // A little batching under load, unnoticeable on a single write.
            .set("linger.ms", "5")
            // Reconnect quickly once a broker is back, so writes recover within a second or so.
            .set("reconnect.backoff.ms", "50")
            .set("reconnect.backoff.max.ms", "1000");
        let producer = create_producer(&producer_config)?;
        Ok(Appender {
            producer: RwLock::new(Arc::new(producer)),
            producer_config,
            topic: config.kafka_topic.clone(),
            append_timeout: config.append_timeout(),
            latency: AppendLatency::register(metrics),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The longest an append can take before it fails.
    pub fn append_bound(&self) -> Duration {
        self.append_timeout + DELIVERY_REPORT_MARGIN
    }

    fn current_producer(&self) -> Arc<FutureProducer> {
        Arc::clone(&self.producer.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Appends the envelope and waits for the broker's acknowledgement. On success the record's
    /// position becomes the write's consistency token.
    pub async fn append(&self, envelope: &Envelope) -> Result<ConsistencyToken, AppendError> {
        let producer = self.current_producer();
        let started = Instant::now();
        let result = self.append_with(&producer, envelope).await;
        let latency = match &result {
            Ok(_) => &self.latency.acknowledged,
            Err(_) => &self.latency.failed,
        };
        latency.observe_duration(started.elapsed());
        if let Err(error) = &result {
            if error.retires_producer() {
                self.retire(&producer, error);
            }
        }
        self.release(producer);
        result
    }

    async fn append_with(
        &self,
        producer: &FutureProducer,
        envelope: &Envelope,
    ) -> Result<ConsistencyToken, AppendError> {
        let key = envelope.partition_key.to_string();
        let payload = envelope.encode();
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&payload)
            .headers(with_trace_context(record_headers(envelope)));

        // `send_result` enqueues or fails at once; it never waits for room in the queue.
        let delivery = producer
            .send_result(record)
            .map_err(|(error, _)| match error {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    AppendError::QueueFull
                }
                other => AppendError::Enqueue(other),
            })?;
        match tokio::time::timeout(self.append_bound(), delivery).await {
            Err(_) => Err(AppendError::TimedOut(self.append_bound())),
            Ok(Err(_canceled)) => Err(AppendError::Canceled),
            Ok(Ok(Err((error, _message)))) => Err(AppendError::NotAcknowledged(error)),
            Ok(Ok(Ok(delivery))) if delivery.offset >= 0 => Ok(ConsistencyToken {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Ok(Ok(delivery))) => self.token_below_end(producer, delivery.partition).await,
        }
    }

    /// The token of a record the broker acknowledged without its offset. That happens when the
    /// broker takes an idempotent retry as a duplicate of a record it already holds (the first
    /// answer was lost, say to a broker restart): librdkafka then reports the delivery at offset
    /// -1. The record is in the partition below its end, so the token of the last record there is
    /// never earlier than the write: a read with it may wait for a few more records, never fewer.
    async fn token_below_end(
        &self,
        producer: &FutureProducer,
        partition: i32,
    ) -> Result<ConsistencyToken, AppendError> {
        // librdkafka's watermark query blocks its thread, within the bound it is given.
        let (producer, topic, bound) = (producer.clone(), self.topic.clone(), self.append_bound());
        let end = tokio::task::spawn_blocking(move || {
            producer.client().fetch_watermarks(&topic, partition, bound)
        })
        .await
        .map_err(|_| AppendError::Canceled)?;
        match end {
            Ok((_, high)) if high > 0 => Ok(ConsistencyToken {
                partition,
                offset: high - 1,
            }),
            Ok((low, high)) => {
                tracing::error!(
                    partition,
                    low,
                    high,
                    "an acknowledged record's partition is empty"
                );
                Err(AppendError::OffsetUnknown(KafkaError::MetadataFetch(
                    RDKafkaErrorCode::OffsetOutOfRange,
                )))
            }
            Err(error) => Err(AppendError::OffsetUnknown(error)),
        }
    }

    /// Takes `failed` out of service, unless another request did already, and purges whatever
    /// it still holds so that none of it reaches the broker under a bumped epoch. The records
    /// purged belong to requests that then answer 503, which is what their outcome is anyway
    /// once their producer failed.
    fn retire(&self, failed: &Arc<FutureProducer>, cause: &AppendError) {
        let mut current = self.producer.write().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&current, failed) {
            return;
        }
        let fresh = match create_producer(&self.producer_config) {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::error!(%error, %cause, "cannot create a Kafka producer to replace a failed one");
                return;
            }
        };
        let old = std::mem::replace(&mut *current, Arc::new(fresh));
        drop(current);
        let fatal = old
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code}: {reason}"));
        tracing::warn!(%cause, fatal, "retired the Kafka producer after a failed append");
        // Purging waits for librdkafka's queues, and dropping joins its thread.
        drop(tokio::task::spawn_blocking(move || {
            old.purge(PurgeConfig::default().queue().inflight());
            drop(old);
        }));
    }

    /// Drops a handle to a producer; the last handle to a retired one is dropped off the
    /// runtime, since dropping a producer flushes and joins its thread.
    fn release(&self, producer: Arc<FutureProducer>) {
        if Arc::ptr_eq(&producer, &self.current_producer()) {
            return;
        }
        drop(tokio::task::spawn_blocking(move || drop(producer)));
    }

    /// Ready when the broker answers a metadata request for the topic within
    /// [`READINESS_TIMEOUT`] and knows the topic.
    pub async fn check_ready(&self) -> Result<(), NotReady> {
        let producer = self.current_producer();
        let topic = self.topic.clone();
        // librdkafka's metadata call blocks its thread.
        let probe = tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), READINESS_TIMEOUT)
                .map_err(|source| NotReady::Unreachable {
                    topic: topic.clone(),
                    source,
                })?;
            let known = metadata.topics().iter().find(|t| t.name() == topic);
            match known.map(|t| (t.error(), t.partitions().is_empty())) {
                Some((None, false)) => Ok(()),
                Some((Some(error), _)) => Err(NotReady::TopicUnavailable {
                    topic,
                    code: RDKafkaErrorCode::from(error).to_string(),
                }),
                _ => Err(NotReady::TopicUnavailable {
                    topic,
                    code: "no partitions".into(),
                }),
            }
        });
        let bound = READINESS_TIMEOUT + Duration::from_millis(500);
        match tokio::time::timeout(bound, probe).await {
            Err(_) => Err(NotReady::TimedOut(bound)),
            Ok(Err(join_error)) => Err(NotReady::Probe(join_error.to_string())),
            Ok(Ok(result)) => result,
        }
    }

    /// Waits (bounded) for every record still in the producer's queue, so a shutdown does not
    /// drop writes the broker would have accepted.
    pub async fn flush(&self) {
        let producer = self.current_producer();
        let timeout = self.append_bound();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "records left unflushed at shutdown"),
            Err(error) => tracing::warn!(%error, "flush at shutdown failed"),
        }
    }
}

/// The Kafka headers of `envelope`'s record: its type, schema version and content type, so that
/// a reader can route or skip a record without parsing it.
pub fn record_headers(envelope: &Envelope) -> OwnedHeaders {
    let schema_version = envelope.schema_version().to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: headers::EVENT_TYPE,
            value: Some(envelope.type_name()),
        })
        .insert(Header {
            key: headers::SCHEMA_VERSION,
            value: Some(schema_version.as_str()),
        })
        .insert(Header {
            key: headers::CONTENT_TYPE,
            value: Some(headers::JSON),
        })
}

/// `headers` and, when traces are on, the current span's W3C trace context (`traceparent`,
/// `tracestate`), for the projector to continue the trace. Nothing reads them to decide.
fn with_trace_context(headers: OwnedHeaders) -> OwnedHeaders {
    let mut context = Vec::new();
    service_kit::telemetry::trace_context_headers(|key, value| {
        context.push((key.to_owned(), value.to_owned()));
    });
    context.iter().fold(headers, |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value),
        })
    })
}

fn create_producer(config: &ClientConfig) -> anyhow::Result<FutureProducer> {
    config.create().context("invalid Kafka producer settings")
}

/// Creates the topic unless it exists: `retention.ms=-1`, because the log is the source of
/// truth and is kept forever. Keeps trying while the broker is unreachable, for up to the
/// configured start-up timeout.
pub async fn ensure_topic(config: &Config) -> anyhow::Result<()> {
    let brokers = &config.kafka_brokers;
    let topic = &config.kafka_topic;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "command-api-admin")
        .set("reconnect.backoff.max.ms", "1000")
        .create()
        .context("invalid Kafka admin settings")?;
    let new_topic = NewTopic::new(
        topic,
        config.kafka_partitions,
        TopicReplication::Fixed(config.kafka_replication_factor),
    )
    .set("retention.ms", "-1");

    let deadline = Instant::now() + config.kafka_startup_timeout();
    let mut last_error = String::from("no attempt finished");
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            bail!(
                "cannot create Kafka topic {topic:?}: broker {brokers} unreachable for {:?} (last error: {last_error})",
                config.kafka_startup_timeout()
            );
        }
        let attempt_timeout = remaining.min(Duration::from_secs(5));
        let options = AdminOptions::new()
            .request_timeout(Some(attempt_timeout))
            .operation_timeout(Some(attempt_timeout));
        let attempt = tokio::time::timeout(
            attempt_timeout + Duration::from_millis(500),
            admin.create_topics([&new_topic], &options),
        )
        .await;
        match attempt {
            Ok(Ok(results)) => {
                let mut retry = false;
                for result in results {
                    match result {
                        Ok(_) => tracing::info!(topic, brokers, "created Kafka topic"),
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                            tracing::info!(topic, brokers, "Kafka topic exists")
                        }
                        Err((_, code)) if is_misconfiguration(code) => {
                            bail!("broker {brokers} refused to create topic {topic:?}: {code}")
                        }
                        Err((_, code)) => {
                            last_error = code.to_string();
                            retry = true;
                        }
                    }
                }
                if !retry {
                    return Ok(());
                }
            }
            Ok(Err(error)) => last_error = error.to_string(),
            Err(_) => last_error = format!("no answer within {attempt_timeout:?}"),
        }
        tracing::warn!(topic, brokers, error = %last_error, "cannot create the Kafka topic yet; retrying");
        // A pause between attempts, so a refused connection does not become a busy loop.
        tokio::time::sleep(Duration::from_millis(500).min(remaining)).await;
    }
}

/// Errors that no amount of retrying fixes. (Too few brokers for the replication factor is
/// not one: more may be starting.)
fn is_misconfiguration(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::InvalidPartitions
            | RDKafkaErrorCode::InvalidReplicaAssignment
            | RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
    )
}
