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
//! on replay (the embedded key is the same, so it is simply overwritten).
//!
//! The producer uses Kafka's murmur2 partitioner on the original key, like the gateway, so a run's
//! dead letters share one partition and stay in order.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use thiserror::Error;

use crate::config::KafkaConfig;
use crate::ingest::apply::{Applier, ApplyError, DeadLetter};
use crate::ingest::kafka::client_config;
use crate::storage::kv::{Database, RetryOptions};

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
    /// The embedded write failed.
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

    /// Writes one dead letter and returns once it is durable (acknowledged by the broker, or
    /// committed in the store).
    pub async fn send(&self, rejected: &Rejected<'_>) -> Result<(), DeadLetterError> {
        match self {
            DeadLetterSink::Kafka(k) => k.send(rejected).await?,
            DeadLetterSink::Embedded(e) => e.send(rejected).await?,
        }
        tracing::warn!(
            topic = rejected.topic,
            partition = rejected.partition,
            offset = rejected.offset,
            reason = rejected.reason,
            "record dead-lettered"
        );
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
        let letter = DeadLetter {
            reason: rejected.reason.to_owned(),
            key: rejected.key.map(|k| String::from_utf8_lossy(k).into_owned()),
            value: Some(rejected.value.to_vec()),
            timestamp: now_secs(),
            message_type: rejected.message_type.map(str::to_owned),
            detail: rejected.detail.clone(),
        };
        let applier = &self.applier;
        self.db
            .run(&self.retry, |tx| {
                let letter = &letter;
                async move { applier.write_dead_letter(&tx, rejected.partition, rejected.offset, letter) }
            })
            .await?;
        crate::metrics::dead_letter_published("embedded", rejected.reason);
        Ok(())
    }
}

/// A producer of dead letters to the dead-letter topic.
#[derive(Clone)]
pub struct KafkaDeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl KafkaDeadLetters {
    /// Creates the producer for the configured dead-letter topic.
    pub fn from_config(cfg: &KafkaConfig) -> Result<Self, DeadLetterError> {
        Self::new(client_config(cfg), &cfg.dead_letter_topic)
    }

    /// Creates an idempotent producer with `base` settings (brokers, security) to `topic`, with
    /// Kafka's murmur2 partitioner.
    pub fn new(base: ClientConfig, topic: &str) -> Result<Self, DeadLetterError> {
        let mut config = base;
        config
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string());
        let producer: FutureProducer = config.create().map_err(DeadLetterError::Producer)?;
        Ok(Self { producer, topic: topic.to_owned() })
    }

    /// Returns the dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Produces one dead letter and waits for its delivery report.
    pub async fn send(&self, rejected: &Rejected<'_>) -> Result<(), DeadLetterError> {
        let partition = rejected.partition.to_string();
        let offset = rejected.offset.to_string();
        let detail = cut(&rejected.detail, MAX_DETAIL);
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header { key: headers::REASON, value: Some(rejected.reason) })
            .insert(Header { key: headers::ORIGIN_TOPIC, value: Some(rejected.topic) })
            .insert(Header { key: headers::ORIGIN_PARTITION, value: Some(&partition) })
            .insert(Header { key: headers::ORIGIN_OFFSET, value: Some(&offset) })
            .insert(Header { key: headers::DETAIL, value: Some(detail) });
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).payload(rejected.value).headers(headers);
        if let Some(key) = rejected.key {
            record = record.key(key);
        }
        self.producer.send(record, DELIVERY_TIMEOUT).await.map_err(|(source, _)| DeadLetterError::Delivery {
            topic: rejected.topic.to_owned(),
            partition: rejected.partition,
            offset: rejected.offset,
            source,
        })?;
        crate::metrics::dead_letter_published("kafka", rejected.reason);
        Ok(())
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
