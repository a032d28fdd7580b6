//! Ingestion: sources of records (the embedded queue and Kafka) and everything between a source
//! record and a storage transaction (decoding, batching, applying).
//!
//! Module map:
//! - [`apply`]: one run's batch applied in one transaction, exactly once (checkpoints, tombstones,
//!   outbox, dead letters), with the handlers of spec §1.7;
//! - [`message`]: record value bytes → typed [`IngestMessage`], or a [`DecodeError`] with a bounded
//!   reason for dead-lettering; `client_datetime` parsing as Python's `fromisoformat`;
//! - [`estimate`]: the reference's per-message size estimate and chunking rule (spec §1.10);
//! - [`partitioner`]: Kafka's default murmur2 partitioner, shared by the Kafka and embedded sources;
//! - [`run_batch`]: [`RunBatch`], one run's accumulated messages and the flush decisions on bytes,
//!   count, age, shutdown, revoke and delete;
//! - [`source`]: the [`Source`] interface (poll, commit, pause/resume) both Kafka and the embedded
//!   queue implement;
//! - [`source_error`]: what a source's calls fail with ([`SourceError`], and the queue's and
//!   Kafka's errors it wraps), below the interface and both implementations;
//! - [`queue`]: the embedded durable queue in our own KV directory and its [`EmbeddedSource`];
//! - [`queue_trim`]: removes the queue's records every consumer group has committed;
//! - [`kafka`]: [`KafkaSource`], the [`Source`] over a Kafka consumer group, with an epoch fence on
//!   commits of revoked partitions;
//! - [`dead_letter`]: the stored form of a dead letter and its bounds, shared by [`apply`] and
//!   [`dlq`];
//! - [`dlq`]: dead-letter sinks, the `data-ingestion-dlq` topic or the embedded keyspace;
//! - [`outbox`]: the publisher of `run_deleted` control events recorded in the outbox.
pub mod apply;
pub mod dead_letter;
pub mod dlq;
pub mod estimate;
pub mod kafka;
pub mod message;
pub mod outbox;
pub mod partitioner;
pub mod queue;
pub mod queue_trim;
pub mod run_batch;
pub mod source;
pub mod source_error;

pub use apply::{Applier, ApplyError, ApplyOutcome, IdRequest, position_uuid};
pub use kafka::{AssignmentEvent, KafkaSource, KafkaSourceError, Lease};
pub use message::{DecodeError, IngestMessage, MessageType, Payload, decode};
pub use queue::{EmbeddedSource, Queue, QueueError};
pub use run_batch::{Batch, BatchBudget, Entry, FlushReason, RunBatch};
pub use source::{Record, Source, SourceError};
