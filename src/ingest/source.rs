//! The record source interface that both Kafka and the embedded durable queue implement.
//!
//! A source hands out [`Record`]s of its assigned partitions in offset order, takes commits of
//! the next offset to read (Kafka's semantics), and can pause and resume single partitions so a
//! slow storage layer stops consumption instead of growing memory (back-pressure).
//!
//! Assignment changes are an optional hook: a source in a consumer group (Kafka) reports
//! rebalances as [`AssignmentEvent`]s after the poll in which they happened, hands out a [`Lease`]
//! per assigned partition, and refuses commits under a lease whose partition was revoked since
//! ([`SourceError::is_stale`]). A source whose assignment never changes (the embedded queue) keeps
//! the defaults: no events, epoch 0 for every assigned partition, leased commits are plain commits.
//!
//! [`Source::backlog`] reports, per assigned partition, the records the group has not applied yet
//! (end offset minus committed offset), for the consumer-lag gauge.
//!
//! The interface is a trait with explicit `impl Future + Send` return types rather than
//! `async-trait`: no boxing per call, and the futures stay `Send` so they can run on any worker
//! thread. Every method takes `&self`, as librdkafka's consumer does, so one source can be shared
//! (behind an `Arc`) by the task that polls and the tasks that commit.

use std::future::Future;
use std::time::Duration;

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

/// How far a consumer group is behind on one partition, as the source sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// The partition.
    pub partition: i32,
    /// The partition's end: the offset the next appended record gets (Kafka's high watermark).
    pub end: i64,
    /// The group's committed offset: the next offset to apply (the partition's first offset when
    /// the group never committed, as the source then starts there).
    pub committed: i64,
}

impl Backlog {
    /// Returns the records not yet applied: read or not, everything from the committed offset to
    /// the end.
    pub fn records(&self) -> i64 {
        (self.end - self.committed).max(0)
    }
}

/// A partition assigned to a consumer under one epoch: the token a leased commit must present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lease {
    /// The partition.
    pub partition: i32,
    /// The assignment's epoch, unique within the source (0 for sources without rebalances).
    pub epoch: u64,
}

/// A change of a consumer's assignment, in the order the rebalance callbacks saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignmentEvent {
    /// Partitions newly assigned, each with its lease.
    Assigned(Vec<Lease>),
    /// Partitions taken away; their leases are stale from now on.
    Revoked(Vec<i32>),
}

pub use super::source_error::SourceError;

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

    /// Removes and returns the assignment changes seen since the last call, oldest first. They
    /// happen inside [`Source::poll`], and a poll never returns a record read under a lease that
    /// the same poll revoked. The default (a static assignment) has none.
    fn take_assignment_events(&self) -> Vec<AssignmentEvent> {
        Vec::new()
    }

    /// Returns the current lease of `partition`, `None` when it is not assigned. The default gives
    /// every assigned partition epoch 0.
    fn lease(&self, partition: i32) -> Option<Lease> {
        self.assignment().contains(&partition).then_some(Lease { partition, epoch: 0 })
    }

    /// Returns the backlog of each assigned partition: its end and the group's committed offset,
    /// read from the store or the broker (records not read yet count too). The default, for a
    /// source that cannot tell, has none.
    fn backlog(&self) -> impl Future<Output = Result<Vec<Backlog>, SourceError>> + Send {
        std::future::ready(Ok(Vec::new()))
    }

    /// Commits `next_offset` of `lease.partition` unless the lease is stale (the partition was
    /// revoked since): then nothing is committed and the error [`is_stale`](SourceError::is_stale).
    /// The default, for sources without rebalances, is [`Source::commit`].
    fn commit_leased(&self, lease: Lease, next_offset: i64) -> impl Future<Output = Result<(), SourceError>> + Send {
        self.commit(lease.partition, next_offset)
    }
}
