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
//!
//! # Any record can be dead-lettered
//!
//! A dead letter must never be refused by the store, or the partition behind it could never move
//! on. The stored form is bounded whatever the record's size:
//!
//! | Key (under ⟨ours⟩) | Value |
//! |---|---|
//! | `("dlq", partition, offset)` | mp(map), the fields below in this order |
//!
//! - `reason` (str): the bounded reason label; `key` (str or nil): the record key, lossy UTF-8, cut
//!   to [`MAX_STORED_KEY_BYTES`]; `value` (bin or nil): the original value bytes, or their first
//!   [`MAX_STORED_VALUE_BYTES`] when longer; `timestamp` (float): POSIX seconds; `type` (str or nil):
//!   the message type when it decoded; `detail` (str): the error text, cut to 512 bytes;
//! - only when the value was cut: `truncated` (true), `value_len` (int): the original length, and
//!   `value_sha256` (str): the lowercase hex SHA-256 of the whole original value;
//! - only when the key was cut: `key_len` (int): the original key length.
//!
//! The offset and partition are the key's. With these bounds a letter stays well under the store's
//! value limit (100,000 bytes, FoundationDB's), and [`EmbeddedDeadLetters::send_all`] spreads many
//! letters over transactions of at most [`MAX_LETTER_TXN_BYTES`], so nothing can wedge a partition.
//! The original bytes of a cut record are still in the source (the embedded queue or the topic) at
//! that offset until trimmed or expired; the digest tells whether a copy found there is the same.
//!
//! On the dead-letter topic a record is forwarded whole when its key and value fit the producer's
//! message limit (`message.max.bytes`, librdkafka's default 1,000,000 bytes) with room for the
//! headers; a larger one is sent in the same bounded form, its value the first
//! [`MAX_STORED_VALUE_BYTES`] and its key the first [`MAX_STORED_KEY_BYTES`], with the headers `truncated` (`true`), `original_length` (decimal)
//! and `original_sha256` (hex). Letters staged in the keyspace and cut there carry the same headers
//! when forwarded.

use super::dead_letter::MAX_DETAIL;
pub(crate) use super::dead_letter::cut_str;
pub use super::dead_letter::{MAX_STORED_KEY_BYTES, MAX_STORED_VALUE_BYTES, Truncation, bound_value};
use std::future::Future;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use thiserror::Error;

use crate::clock::now_secs;
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
    /// `true` when the value is only a prefix of the original (absent otherwise).
    pub const TRUNCATED: &str = "truncated";
    /// Length of the original value in bytes, decimal text, when truncated.
    pub const ORIGINAL_LENGTH: &str = "original_length";
    /// Lowercase hex SHA-256 of the original value, when truncated.
    pub const ORIGINAL_SHA256: &str = "original_sha256";
}

/// Budget of one transaction of embedded dead letters (FoundationDB's advice: near 1 MB); a single
/// letter is always written, and it is bounded by [`MAX_STORED_VALUE_BYTES`].
pub const MAX_LETTER_TXN_BYTES: usize = 1_000_000;

/// librdkafka's default `message.max.bytes`, the producer's limit when the config does not say.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Room kept for headers and framing when deciding whether a whole record fits one message.
const MESSAGE_OVERHEAD: usize = 4096;

/// Reasons [`crate::ingest::Applier::apply`] and the run actor give to records failing at apply.
pub const APPLY_REASONS: [&str; 6] =
    ["wrong_run", "encode_error", "corrupt_data", "name_conflict", "invalid", "transaction_too_large"];

/// Returns the bounded label of a stored reason: itself when it is a known reason, else `other`.
pub fn bounded_reason(reason: &str) -> &'static str {
    DecodeError::REASONS.iter().chain(APPLY_REASONS.iter()).find(|r| **r == reason).copied().unwrap_or("other")
}

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

    /// Writes dead letters, with their original bytes (bounded as the module docs say), in as few
    /// transactions of at most [`MAX_LETTER_TXN_BYTES`] as fit them, in order.
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
        for letters in letter_batches(&letters, MAX_LETTER_TXN_BYTES) {
            self.db
                .run(&self.retry, |tx| async move {
                    for (partition, offset, letter) in letters {
                        applier.write_dead_letter(&tx, *partition, *offset, letter)?;
                    }
                    Ok::<_, ApplyError>(())
                })
                .await?;
        }
        for r in rejected {
            crate::metrics::dead_letter_published("embedded", r.reason);
        }
        Ok(())
    }
}

/// Splits letters into consecutive runs whose stored size stays within `budget` (each run holds at
/// least one letter).
fn letter_batches(letters: &[(i32, i64, DeadLetter)], budget: usize) -> Vec<&[(i32, i64, DeadLetter)]> {
    let stored = |l: &DeadLetter| {
        l.value.as_ref().map_or(0, |v| v.len().min(MAX_STORED_VALUE_BYTES))
            + l.key.as_ref().map_or(0, |k| k.len().min(MAX_STORED_KEY_BYTES))
            + l.detail.len().min(MAX_DETAIL)
            + 256
    };
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (_, _, letter)) in letters.iter().enumerate() {
        let size = stored(letter);
        if i > start && bytes + size > budget {
            out.push(&letters[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < letters.len() {
        out.push(&letters[start..]);
    }
    out
}

/// A producer of dead letters to the dead-letter topic.
#[derive(Clone)]
pub struct KafkaDeadLetters {
    producer: FutureProducer,
    topic: String,
    /// The producer's `message.max.bytes`: larger records are sent truncated.
    max_message_bytes: usize,
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
        let max_message_bytes =
            base.get("message.max.bytes").and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        let producer: FutureProducer = crate::ingest::kafka::idempotent_producer_config(base, DELIVERY_TIMEOUT)
            .create()
            .map_err(DeadLetterError::Producer)?;
        Ok(Self { producer, topic: topic.to_owned(), max_message_bytes })
    }

    /// Returns the dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces one dead letter and waits for its delivery report: the whole record when it fits
    /// the producer's message limit, else the bounded form of the module docs.
    pub async fn send(&self, rejected: &Rejected<'_>) -> Result<(), DeadLetterError> {
        let (payload, cut) = self.bounded(rejected.key, rejected.value);
        // In the bounded form the key is bounded too, or a huge key alone could exceed the limit.
        let key = rejected.key.map(|k| if cut.is_some() { &k[..k.len().min(MAX_STORED_KEY_BYTES)] } else { k });
        let bounded = Rejected { key, ..rejected.clone() };
        self.produce(&bounded, rejected.reason, Some(payload), cut.as_ref()).await?;
        crate::metrics::dead_letter_published("kafka", rejected.reason);
        Ok(())
    }

    /// Returns the value to produce for a record: whole when key and value fit one message with
    /// room for the headers, else its first [`MAX_STORED_VALUE_BYTES`] and what was cut.
    pub fn bounded<'v>(&self, key: Option<&[u8]>, value: &'v [u8]) -> (&'v [u8], Option<Truncation>) {
        let whole = key.map_or(0, <[u8]>::len) + value.len() + MESSAGE_OVERHEAD;
        if whole <= self.max_message_bytes { (value, None) } else { bound_value(value, MAX_STORED_VALUE_BYTES) }
    }

    /// Produces `rejected` with `reason` as its reason header and `payload` as its value (`None`:
    /// a null value, the original bytes were not kept), with the truncation headers when `truncation` says so,
    /// and waits for the delivery report.
    async fn produce(
        &self,
        rejected: &Rejected<'_>,
        reason: &str,
        payload: Option<&[u8]>,
        truncation: Option<&Truncation>,
    ) -> Result<(), DeadLetterError> {
        let partition = rejected.partition.to_string();
        let offset = rejected.offset.to_string();
        let detail = cut_str(&rejected.detail, MAX_DETAIL);
        let mut headers = OwnedHeaders::new_with_capacity(6)
            .insert(Header { key: headers::REASON, value: Some(reason) })
            .insert(Header { key: headers::ORIGIN_TOPIC, value: Some(rejected.topic) })
            .insert(Header { key: headers::ORIGIN_PARTITION, value: Some(&partition) })
            .insert(Header { key: headers::ORIGIN_OFFSET, value: Some(&offset) })
            .insert(Header { key: headers::DETAIL, value: Some(detail) });
        if let Some(kind) = rejected.message_type {
            headers = headers.insert(Header { key: headers::MESSAGE_TYPE, value: Some(kind) });
        }
        let original_length = truncation.map(|c| c.len.to_string());
        if let (Some(cut), Some(len)) = (truncation, original_length.as_deref()) {
            headers = headers
                .insert(Header { key: headers::TRUNCATED, value: Some("true") })
                .insert(Header { key: headers::ORIGINAL_LENGTH, value: Some(len) })
                .insert(Header { key: headers::ORIGINAL_SHA256, value: Some(cut.sha256.as_str()) });
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
            let cut = match (record.get("truncated"), record.get("value_len"), text(record, "value_sha256")) {
                (Some(Value::Bool(true)), Some(Value::Int(len)), Some(sha256)) => {
                    Some(Truncation { len: usize::try_from(*len).unwrap_or(usize::MAX), sha256 })
                }
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
            self.produce(&rejected, &reason, value.as_deref(), cut.as_ref()).await?;
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

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::storage::layout::Layout;

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
        assert_eq!(record.get("truncated"), None, "a small letter keeps the plain format");
    }

    #[tokio::test]
    async fn records_beyond_the_value_limit_are_stored_as_a_prefix_with_length_and_digest() {
        let db = Database::memory_with_limits(crate::storage::kv::Limits::FDB);
        let applier = Applier::new(Layout::open(&db).await.unwrap());
        let sink = DeadLetterSink::embedded(db.clone(), applier.clone(), RetryOptions::default());
        let value: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let key = "k".repeat(5_000);
        // Forty of them: far more than one transaction of the store takes.
        let rejected: Vec<Rejected<'_>> = (0..40)
            .map(|offset| Rejected {
                topic: "data-ingestion",
                partition: 1,
                offset,
                key: Some(key.as_bytes()),
                value: &value,
                reason: "invalid_json",
                detail: "x".repeat(10_000),
                message_type: None,
            })
            .collect();
        sink.send_all(&rejected).await.unwrap();
        let letters = applier.dead_letters(&db.create_trx().unwrap(), 0).await.unwrap();
        assert_eq!(letters.len(), 40);
        let record = &letters[39].record;
        let field = |name: &str| record.get(name).cloned();
        assert_eq!(field("value"), Some(Value::Bin(value[..MAX_STORED_VALUE_BYTES].to_vec())));
        assert_eq!(field("truncated"), Some(Value::Bool(true)));
        assert_eq!(field("value_len"), Some(Value::Int(300_000)));
        assert_eq!(field("value_sha256"), Some(Value::Str(hex::encode(Sha256::digest(&value)))));
        assert_eq!(field("key").and_then(|k| k.as_str().map(str::len)), Some(MAX_STORED_KEY_BYTES));
        assert_eq!(field("key_len"), Some(Value::Int(5_000)));
    }

    #[test]
    fn letters_are_spread_over_transactions_within_the_budget_one_at_least() {
        let letter = |n: usize| DeadLetter {
            reason: "invalid_json".into(),
            key: None,
            value: Some(vec![0; n]),
            timestamp: 0.0,
            message_type: None,
            detail: String::new(),
        };
        let letters: Vec<(i32, i64, DeadLetter)> = (0..5).map(|i| (0, i, letter(400))).collect();
        let sizes: Vec<usize> = letter_batches(&letters, 1_400).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        let sizes: Vec<usize> = letter_batches(&letters, 10).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![1; 5], "a letter over the budget still goes, alone");
        assert!(letter_batches(&[], 10).is_empty());
    }

    #[test]
    fn the_topic_gets_a_whole_record_under_the_message_limit_and_the_bounded_form_over_it() {
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", "127.0.0.1:1").set("message.max.bytes", "200000");
        let kafka = KafkaDeadLetters::new(base, "data-ingestion-dlq").unwrap();
        let small = vec![7u8; 150_000];
        assert_eq!(kafka.bounded(Some(b"run"), &small), (&small[..], None));
        let big = vec![7u8; 300_000];
        let (kept, cut) = kafka.bounded(Some(b"run"), &big);
        assert_eq!(kept.len(), MAX_STORED_VALUE_BYTES);
        assert_eq!(cut.map(|c| c.len), Some(300_000));
    }

    #[test]
    fn a_value_within_the_bound_is_kept_whole_and_a_longer_one_is_cut_with_its_digest() {
        assert_eq!(bound_value(b"abc", 3), (&b"abc"[..], None));
        let (kept, cut) = bound_value(b"abcd", 3);
        assert_eq!(kept, b"abc");
        assert_eq!(cut, Some(Truncation { len: 4, sha256: hex::encode(Sha256::digest(b"abcd")) }));
    }
}
