//! What the calls of a [`Source`](super::Source) fail with: the interface's own errors and those
//! of its two implementations, the embedded queue and Kafka. They live below all three files, so
//! the interface can name them ([`SourceError::is_stale`] is the Kafka fence) without importing an
//! implementation, and each implementation imports only the interface.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use thiserror::Error;

use crate::storage::kv::{KvError, RetryableError};

/// Why a source operation failed.
#[derive(Debug, Error)]
pub enum SourceError {
    /// The partition is not assigned to this consumer.
    #[error("partition {partition} is not assigned to this consumer")]
    NotAssigned { partition: i32 },
    /// A committed or seek offset is negative.
    #[error("invalid offset {offset} for partition {partition}")]
    InvalidOffset { partition: i32, offset: i64 },
    /// The embedded queue failed.
    #[error("embedded queue: {0}")]
    Queue(#[from] QueueError),
    /// The Kafka consumer failed, or refused a commit of a revoked partition (a stale epoch).
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaSourceError),
}

impl SourceError {
    /// Whether retrying the same call later may succeed (a transient storage error).
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Queue(e) => e.is_retryable(),
            SourceError::Kafka(e) => e.is_retryable(),
            SourceError::NotAssigned { .. } | SourceError::InvalidOffset { .. } => false,
        }
    }

    /// Whether a commit was refused because its partition was revoked since the lease was taken
    /// (another consumer owns it now; its commits are the ones that count).
    pub fn is_stale(&self) -> bool {
        matches!(self, SourceError::Kafka(KafkaSourceError::StaleEpoch { .. }))
    }
}

/// Why a queue operation failed.
#[derive(Debug, Error)]
pub enum QueueError {
    /// The KV store failed.
    #[error("storage: {0}")]
    Kv(#[from] KvError),
    /// The topic exists with another partition count.
    #[error("topic {topic:?} has {stored} partitions, not {requested}: the count is fixed at creation")]
    PartitionMismatch { topic: String, stored: u32, requested: u32 },
    /// A partition count outside `1..=i32::MAX` (Kafka's partition numbers are `i32`).
    #[error("topic {topic:?}: {requested} partitions requested, the count must be between 1 and 2147483647")]
    InvalidPartitionCount { topic: String, requested: u32 },
    /// The partition does not exist in this topic.
    #[error("topic {topic:?} has no partition {partition} (partitions: {partitions})")]
    PartitionOutOfRange { topic: String, partition: i32, partitions: u32 },
    /// An offset is negative.
    #[error("invalid offset {offset}")]
    InvalidOffset { offset: i64 },
    /// A committed offset lies beyond the partition's end.
    #[error("offset {offset} is past the end offset {end} of partition {partition}")]
    OffsetPastEnd { partition: i32, offset: i64, end: i64 },
    /// One record is larger than [`MAX_RECORD_BYTES`].
    #[error("record of {size} bytes exceeds the queue's limit of {limit} bytes")]
    RecordTooLarge { size: usize, limit: usize },
    /// The records of one append do not fit one transaction.
    #[error("append of about {size} bytes exceeds the transaction limit of {limit} bytes: split it")]
    BatchTooLarge { size: usize, limit: usize },
    /// A stored key or value is not in the queue's format.
    #[error("corrupt queue data at {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

impl QueueError {
    /// Whether the same call may succeed later (a transient storage error).
    pub fn is_retryable(&self) -> bool {
        matches!(self, QueueError::Kv(e) if e.is_retryable() || matches!(e, KvError::TransactionTimedOut))
    }
}

impl RetryableError for QueueError {
    fn kv_error(&self) -> Option<&KvError> {
        match self {
            QueueError::Kv(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a Kafka source operation failed.
#[derive(Debug, Error)]
pub enum KafkaSourceError {
    /// A commit under a lease whose partition was revoked since; the offset was not committed.
    #[error("partition {partition} epoch {epoch} is stale (current epoch: {current:?}); commit refused")]
    StaleEpoch {
        /// The partition.
        partition: i32,
        /// The epoch of the caller's lease.
        epoch: u64,
        /// The partition's current epoch, `None` when it is not assigned to this consumer.
        current: Option<u64>,
    },
    /// librdkafka reported an error.
    #[error("{operation}: {source}")]
    Client {
        /// What was being done (`create consumer`, `commit`, `seek`, …).
        operation: &'static str,
        /// The client's error.
        source: KafkaError,
    },
    /// A blocking task running a client call panicked or was cancelled.
    #[error("{operation}: background task failed: {detail}")]
    Task {
        /// What was being done.
        operation: &'static str,
        /// The join error's text.
        detail: String,
    },
}

impl KafkaSourceError {
    /// Whether retrying the same call later may succeed (a broker or network error). A stale
    /// epoch never becomes fresh again.
    pub fn is_retryable(&self) -> bool {
        match self {
            KafkaSourceError::StaleEpoch { .. } => false,
            KafkaSourceError::Client { source, .. } => !matches!(
                source.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::InvalidConfig
                        | RDKafkaErrorCode::UnknownTopicOrPartition
                        | RDKafkaErrorCode::UnknownPartition
                        | RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::GroupAuthorizationFailed
                        | RDKafkaErrorCode::SaslAuthenticationFailed
                )
            ),
            KafkaSourceError::Task { .. } => false,
        }
    }

    pub(crate) fn client(operation: &'static str) -> impl FnOnce(KafkaError) -> Self {
        move |source| KafkaSourceError::Client { operation, source }
    }
}
