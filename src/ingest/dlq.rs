//! Dead-letter sinks: the `data-ingestion-dlq` topic for Kafka ingestion, our KV keyspace when embedded.
//!
//! A record that cannot be decoded or applied deterministically is handed to a [`DeadLetterSink`]
//! and its neighbours proceed (`ingest-storage.md` §6, "nothing dropped silently"):
//! - [`DeadLetterSink::Kafka`] produces it to the dead-letter topic with the original key and value
//!   bytes and the headers `reason`, `origin_topic`, `origin_partition`, `origin_offset` (numbers
//!   as decimal text) and `detail`, and waits for the broker's acknowledgement;
//! - [`DeadLetterSink::Embedded`] writes it under `("dlq", partition, offset)` in our directory
//!   with [`Applier::write_dead_letter`], in its own transaction.
//!
//! Both are at-least-once: a crash between the dead letter and the offset commit writes it again
//! on replay (the embedded key is the same, so it is simply overwritten). The pipeline marks a
//! dead-lettered offset done only after [`DeadLetterSink::send_all`] returned, so the source's
//! committed offset never passes a dead letter that is not durable yet.
//!
//! Records that fail *at apply* (inside a run's transaction: a value that cannot be encoded, a
//! record of another run, a lone record too large for a transaction) are written to the keyspace
//! atomically with the run's checkpoint, because the data and the dead letter must commit together.
//! With the Kafka sink the keyspace is only their staging area: [`KafkaDeadLetters::forward_stored`]
//! produces them to the topic (no original bytes: the applier works on decoded records, so the
//! value is null and the `message_type` header names the type) and removes them once acknowledged,
//! the outbox pattern of [`crate::ingest::outbox`]. The pipeline forwards them before it marks their
//! offsets done, and [`KafkaDeadLetters::forward_all_stored`] sweeps what a crash left behind.
//!
//! The producer uses Kafka's murmur2 partitioner on the original key, like the gateway, so a run's
//! dead letters share one partition and stay in order.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use thiserror::Error;

use crate::config::KafkaConfig;
use crate::ingest::apply::{Applier, ApplyError, DeadLetter};
use crate::ingest::kafka::client_config;
use crate::ingest::message::DecodeError;
use crate::storage::kv::{Database, RetryOptions};
use crate::storage::value::{self, Value};

/// Header names of a dead letter on the topic.
pub mod headers {
    /// Bounded reason label (e.g. `invalid_json`, `encode_error`).
    pub const REASON: &str = "reason";
    /// Topic the record was read from.
    pub const ORIGIN_TOPIC: &str = "origin_topic";
    /// Partition the record was read from, decimal text.
    pub const ORIGIN_PARTITION: &str = "origin_partition";
    /// Offset of the record, decimal text.
    pub const ORIGIN_OFFSET: &str = "origin_offset";
    /// The error's text, cut to a bounded length.
    pub const DETAIL: &str = "detail";
    /// The message type, when the record decoded and failed at apply.
    pub const MESSAGE_TYPE: &str = "message_type";
}

/// Reasons [`crate::ingest::Applier::apply`] and the run actor give to records failing at apply.
pub const APPLY_REASONS: [&str; 6] =
    ["wrong_run", "encode_error", "corrupt_data", "name_conflict", "invalid", "transaction_too_large"];

/// Returns the bounded label of a stored reason: itself when it is a known reason, else `other`.
pub fn bounded_reason(reason: &str) -> &'static str {
    DecodeError::REASONS.iter().chain(APPLY_REASONS.iter()).find(|r| **r == reason).copied().unwrap_or("other")
}

/// Longest `detail` header kept (the rest is cut at a character boundary).
const MAX_DETAIL: usize = 512;

/// How long a dead-letter produce may wait in the producer's queue and for the broker.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// A rejected record with why it was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected<'a> {
    /// Topic it was read from.
    pub topic: &'a str,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The original key bytes.
    pub key: Option<&'a [u8]>,
    /// The original value bytes.
    pub value: &'a [u8],
    /// Bounded reason label (a [`crate::ingest::DecodeError::reason`] or an apply reason).
    pub reason: &'static str,
    /// The error's text.
    pub detail: String,
    /// The message type when it was known (decoded records that failed to apply).
    pub message_type: Option<&'a str>,
}

/// Why a dead letter could not be written; the caller retries (with back-off, consumption paused)
/// and must not commit the record's offset meanwhile.
#[derive(Debug, Error)]
pub enum DeadLetterError {
    /// The producer could not be created.
    #[error("create dead-letter producer: {0}")]
    Producer(rdkafka::error::KafkaError),
    /// The broker did not acknowledge the dead letter.
    #[error("dead letter of {topic}/{partition}@{offset} not delivered: {source}")]
    Delivery { topic: String, partition: i32, offset: i64, source: rdkafka::error::KafkaError },
    /// The embedded write failed, or the staged dead letters could not be read or removed.
    #[error("embedded dead letter: {0}")]
    Embedded(#[from] ApplyError),
}

/// Where dead letters go: the Kafka topic or the embedded keyspace.
#[derive(Clone)]
pub enum DeadLetterSink {
    /// The dead-letter topic.
    Kafka(KafkaDeadLetters),
    /// Our directory of the KV store.
    Embedded(Box<EmbeddedDeadLetters>),
}

impl std::fmt::Debug for DeadLetterSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadLetterSink::Kafka(k) => f.debug_tuple("Kafka").field(&k.topic).finish(),
            DeadLetterSink::Embedded(_) => f.write_str("Embedded"),
        }
    }
}

impl DeadLetterSink {
    /// Builds the embedded sink.
    pub fn embedded(db: Database, applier: Applier, retry: RetryOptions) -> Self {
        DeadLetterSink::Embedded(Box::new(EmbeddedDeadLetters { db, applier, retry }))
    }

    /// Returns the name of the sink, a bounded label (`kafka`, `embedded`).
    pub fn kind(&self) -> &'static str {
        match self {
            DeadLetterSink::Kafka(_) => "kafka",
            DeadLetterSink::Embedded(_) => "embedded",
        }
    }

    /// Writes one dead letter and returns once it is durable (acknowledged by the broker, or
    /// committed in the store).
    pub async fn send(&self, rejected: &Rejected<'_>) -> Result<(), DeadLetterError> {
        self.send_all(std::slice::from_ref(rejected)).await
    }

    /// Writes several dead letters and returns once every one is durable: all acknowledged by the
    /// broker (sent concurrently), or committed in the store in one transaction. On an error some
    /// may have been written; sending them again is harmless (at least once).
    pub async fn send_all(&self, rejected: &[Rejected<'_>]) -> Result<(), DeadLetterError> {
        if rejected.is_empty() {
            return Ok(());
        }
        match self {
            DeadLetterSink::Kafka(k) => {
                let sends = futures_util::future::join_all(rejected.iter().map(|r| k.send(r))).await;
                sends.into_iter().collect::<Result<Vec<()>, _>>()?;
            }
            DeadLetterSink::Embedded(e) => e.send_all(rejected).await?,
        }
        for r in rejected {
            tracing::warn!(
                topic = r.topic,
                partition = r.partition,
                offset = r.offset,
                reason = r.reason,
                sink = self.kind(),
                "record dead-lettered"
            );
        }
        Ok(())
    }
}

/// Dead letters in our KV directory, through [`Applier::write_dead_letter`].
#[derive(Clone)]
pub struct EmbeddedDeadLetters {
    /// The store.
    pub db: Database,
    /// The applier whose layout holds our directory.
    pub applier: Applier,
    /// Retry settings of the write's transaction.
    pub retry: RetryOptions,
}

impl std::fmt::Debug for EmbeddedDeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedDeadLetters").field("retry", &self.retry).finish_non_exhaustive()
    }
}

impl EmbeddedDeadLetters {
    /// Writes one dead letter, with the original bytes, in its own transaction.
    pub async fn send(&self, rejected: &Rejected<'_>) -> Result<(), DeadLetterError> {
        self.send_all(std::slice::from_ref(rejected)).await
    }

    /// Writes dead letters, with their original bytes, in one transaction.
    pub async fn send_all(&self, rejected: &[Rejected<'_>]) -> Result<(), DeadLetterError> {
        let now = now_secs();
        let letters: Vec<(i32, i64, DeadLetter)> = rejected
            .iter()
            .map(|r| {
                let letter = DeadLetter {
                    reason: r.reason.to_owned(),
                    key: r.key.map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: Some(r.value.to_vec()),
                    timestamp: now,
                    message_type: r.message_type.map(str::to_owned),
                    detail: r.detail.clone(),
                };
                (r.partition, r.offset, letter)
            })
            .collect();
        let applier = &self.applier;
        self.db
            .run(&self.retry, |tx| {
                let letters = &letters;
                async move {
                    for (partition, offset, letter) in letters {
                        applier.write_dead_letter(&tx, *partition, *offset, letter)?;
                    }
                    Ok::<_, ApplyError>(())
                }
            })
            .await?;
        for r in rejected {
            crate::metrics::dead_letter_published("embedded", r.reason);
        }
        Ok(())
    }
}

/// A producer of dead letters to the dead-letter topic.
#[derive(Clone)]
pub struct KafkaDeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for KafkaDeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDeadLetters").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl KafkaDeadLetters {
    /// Creates the producer for the configured dead-letter topic.
    pub fn from_config(cfg: &KafkaConfig) -> Result<Self, DeadLetterError> {
        Self::new(client_config(cfg), &cfg.dead_letter_topic)
    }

    /// Creates an idempotent producer with `base` settings (brokers, security) to `topic`, with
    /// Kafka's murmur2 partitioner.
    pub fn new(base: ClientConfig, topic: &str) -> Result<Self, DeadLetterError> {
        let producer: FutureProducer = crate::ingest::kafka::idempotent_producer_config(base, DELIVERY_TIMEOUT)
            .create()
            .map_err(DeadLetterError::Producer)?;
        Ok(Self { producer, topic: topic.to_owned() })
    }

    /// Returns the dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces one dead letter and waits for its delivery report.
    pub async fn send(&self, rejected: &Rejected<'_>) -> Result<(), DeadLetterError> {
        self.produce(rejected, rejected.reason, Some(rejected.value)).await?;
        crate::metrics::dead_letter_published("kafka", rejected.reason);
        Ok(())
    }

    /// Produces `rejected` with `reason` as its reason header and `payload` as its value (`None`:
    /// a null value, the original bytes were not kept) and waits for the delivery report.
    async fn produce(
        &self,
        rejected: &Rejected<'_>,
        reason: &str,
        payload: Option<&[u8]>,
    ) -> Result<(), DeadLetterError> {
        let partition = rejected.partition.to_string();
        let offset = rejected.offset.to_string();
        let detail = cut(&rejected.detail, MAX_DETAIL);
        let mut headers = OwnedHeaders::new_with_capacity(6)
            .insert(Header { key: headers::REASON, value: Some(reason) })
            .insert(Header { key: headers::ORIGIN_TOPIC, value: Some(rejected.topic) })
            .insert(Header { key: headers::ORIGIN_PARTITION, value: Some(&partition) })
            .insert(Header { key: headers::ORIGIN_OFFSET, value: Some(&offset) })
            .insert(Header { key: headers::DETAIL, value: Some(detail) });
        if let Some(kind) = rejected.message_type {
            headers = headers.insert(Header { key: headers::MESSAGE_TYPE, value: Some(kind) });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(key) = rejected.key {
            record = record.key(key);
        }
        self.producer.send(record, DELIVERY_TIMEOUT).await.map_err(|(source, _)| DeadLetterError::Delivery {
            topic: rejected.topic.to_owned(),
            partition: rejected.partition,
            offset: rejected.offset,
            source,
        })?;
        Ok(())
    }

    /// Forwards the dead letters staged in the keyspace at `positions` (those a flush just wrote)
    /// to the topic, then removes them in one transaction. Positions with nothing stored are
    /// skipped (another pass forwarded them). Returns how many were forwarded.
    pub async fn forward_stored(
        &self,
        stage: &EmbeddedDeadLetters,
        origin_topic: &str,
        positions: &[(i32, i64)],
    ) -> Result<usize, DeadLetterError> {
        if positions.is_empty() {
            return Ok(0);
        }
        let tx = stage.db.create_trx().map_err(ApplyError::from)?;
        let mut staged = Vec::with_capacity(positions.len());
        for (partition, offset) in positions {
            let key = stage.applier.dead_letter_key(*partition, *offset);
            if let Some(bytes) = tx.get(&key, false).await.map_err(ApplyError::from)? {
                let record = value::decode(&bytes)
                    .map_err(|e| ApplyError::Corrupt(format!("dead letter {partition}/{offset}: {e}")))?;
                staged.push((*partition, *offset, record));
            }
        }
        drop(tx);
        self.forward(stage, origin_topic, &staged).await
    }

    /// Forwards every dead letter staged in the keyspace (what a crash or a failed forward left
    /// behind), in batches, removing each batch once acknowledged. Returns how many were forwarded.
    pub async fn forward_all_stored(
        &self,
        stage: &EmbeddedDeadLetters,
        origin_topic: &str,
    ) -> Result<usize, DeadLetterError> {
        const BATCH: usize = 256;
        let mut forwarded = 0;
        loop {
            let tx = stage.db.create_trx().map_err(ApplyError::from)?;
            let letters = stage.applier.dead_letters(&tx, BATCH).await?;
            drop(tx);
            if letters.is_empty() {
                return Ok(forwarded);
            }
            let staged: Vec<(i32, i64, Value)> =
                letters.into_iter().map(|l| (l.partition, l.offset, l.record)).collect();
            forwarded += self.forward(stage, origin_topic, &staged).await?;
        }
    }

    /// Runs [`forward_all_stored`](Self::forward_all_stored) every `interval` until `shutdown`
    /// completes; a failed pass is logged and retried on the next.
    pub async fn run_forwarder(
        &self,
        stage: &EmbeddedDeadLetters,
        origin_topic: &str,
        interval: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            match self.forward_all_stored(stage, origin_topic).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(forwarded = n, topic = %self.topic, "staged dead letters forwarded"),
                Err(e) => tracing::warn!(error = %e, "forwarding staged dead letters failed; retrying next pass"),
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    async fn forward(
        &self,
        stage: &EmbeddedDeadLetters,
        origin_topic: &str,
        staged: &[(i32, i64, Value)],
    ) -> Result<usize, DeadLetterError> {
        let text = |record: &Value, field: &str| record.get(field).and_then(Value::as_str).map(str::to_owned);
        let sends = staged.iter().map(|(partition, offset, record)| async move {
            let reason = text(record, "reason").unwrap_or_else(|| "other".to_owned());
            let key = text(record, "key");
            let message_type = text(record, "type");
            let value = match record.get("value") {
                Some(Value::Bin(b)) => Some(b.clone()),
                _ => None,
            };
            let label = bounded_reason(&reason);
            let rejected = Rejected {
                topic: origin_topic,
                partition: *partition,
                offset: *offset,
                key: key.as_deref().map(str::as_bytes),
                value: value.as_deref().unwrap_or_default(),
                reason: label,
                detail: text(record, "detail").unwrap_or_default(),
                message_type: message_type.as_deref(),
            };
            self.produce(&rejected, &reason, value.as_deref()).await?;
            crate::metrics::dead_letter_published("kafka", label);
            Ok::<_, DeadLetterError>(())
        });
        futures_util::future::join_all(sends).await.into_iter().collect::<Result<Vec<()>, _>>()?;
        let applier = &stage.applier;
        stage
            .db
            .run(&stage.retry, |tx| async move {
                for (partition, offset, _) in staged {
                    tx.clear(&applier.dead_letter_key(*partition, *offset));
                }
                Ok::<_, ApplyError>(())
            })
            .await?;
        Ok(staged.len())
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::layout::Layout;

    #[test]
    fn cut_keeps_character_boundaries() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("héllo", 3), "hé");
        assert_eq!(cut("abc", 10), "abc");
    }

    #[tokio::test]
    async fn the_embedded_sink_stores_the_original_bytes_and_reason() {
        let db = Database::memory();
        let applier = Applier::new(Layout::open(&db).await.unwrap());
        let sink = DeadLetterSink::embedded(db.clone(), applier.clone(), RetryOptions::default());
        let rejected = Rejected {
            topic: "data-ingestion",
            partition: 4,
            offset: 17,
            key: Some(b"run-1"),
            value: b"{\"type\":",
            reason: "invalid_json",
            detail: "eof while parsing".into(),
            message_type: None,
        };
        sink.send(&rejected).await.unwrap();
        let letters = applier.dead_letters(&db.create_trx().unwrap(), 0).await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!((letters[0].partition, letters[0].offset), (4, 17));
        let record = &letters[0].record;
        assert_eq!(record.get("reason").and_then(|v| v.as_str()), Some("invalid_json"));
        assert_eq!(record.get("key").and_then(|v| v.as_str()), Some("run-1"));
        assert_eq!(record.get("value"), Some(&crate::storage::value::Value::Bin(b"{\"type\":".to_vec())));
    }
}
