//! The record source interface that both Kafka and the embedded durable queue implement.
//!
//! A source hands out [`Record`]s of its assigned partitions in offset order, takes commits of
//! the next offset to read (Kafka's semantics), and can pause and resume single partitions so a
//! slow storage layer stops consumption instead of growing memory (back-pressure).
//!
//! The interface is a trait with explicit `impl Future + Send` return types rather than
//! `async-trait`: no boxing per call, and the futures stay `Send` so they can run on any worker
//! thread. Every method takes `&self`, as librdkafka's consumer does, so one source can be shared
//! (behind an `Arc`) by the task that polls and the tasks that commit.

use std::future::Future;
use std::time::Duration;

use thiserror::Error;

use crate::ingest::kafka::KafkaSourceError;
use crate::ingest::queue::QueueError;

/// One record as a source delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Partition the record was read from.
    pub partition: i32,
    /// Offset of the record in its partition.
    pub offset: i64,
    /// The record's key (the run id for everything the gateway publishes), `None` for a null key.
    pub key: Option<Vec<u8>>,
    /// The record's value bytes (UTF-8 JSON for the gateway's messages).
    pub value: Vec<u8>,
    /// The producer's or broker's timestamp, milliseconds since the epoch.
    pub timestamp_ms: i64,
}

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
}

/// A partitioned, offset-addressed record source with consumer-group commits.
pub trait Source: Send + Sync {
    /// Returns up to `max_records` records of the assigned, non-paused partitions, each
    /// partition's records in offset order, waiting at most `timeout` for the first one.
    ///
    /// An empty vector means nothing arrived in time. Returned records advance the in-memory
    /// position; they are not committed.
    fn poll(
        &self,
        max_records: usize,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<Record>, SourceError>> + Send;

    /// Commits `next_offset`, the offset of the next record to read from `partition` (one past
    /// the last record fully applied), for the consumer group.
    fn commit(&self, partition: i32, next_offset: i64) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Moves the read position of `partition` so the next poll starts at `offset` (used after a
    /// restart to replay from the committed offset).
    fn seek(&self, partition: i32, offset: i64) -> Result<(), SourceError>;

    /// Lists the partitions currently assigned to this consumer, in ascending order.
    fn assignment(&self) -> Vec<i32>;

    /// Stops returning records of `partition` until [`Source::resume`]; its position is kept.
    fn pause(&self, partition: i32) -> Result<(), SourceError>;

    /// Returns records of a paused `partition` again from where it stopped.
    fn resume(&self, partition: i32) -> Result<(), SourceError>;
}
