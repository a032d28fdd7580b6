//! Ingestion: from a source record to a storage transaction (decoding, batching, applying).
//!
//! Module map:
//! - [`apply`]: one run's batch applied in one transaction, exactly once (checkpoints, tombstones,
//!   outbox, dead letters), with the handlers of spec §1.7;
//! - [`message`]: record value bytes → typed [`IngestMessage`], or a [`DecodeError`] with a bounded
//!   reason for dead-lettering; `client_datetime` parsing as Python's `fromisoformat`;
//! - [`estimate`]: the reference's per-message size estimate and chunking rule (spec §1.10);
//! - [`partitioner`]: Kafka's default murmur2 partitioner, shared by the Kafka and embedded sources;
//! - [`run_batch`]: [`RunBatch`], one run's accumulated messages and the flush decisions on bytes,
//!   count, age, shutdown, revoke and delete.
pub mod apply;
pub mod estimate;
pub mod message;
pub mod partitioner;
pub mod run_batch;

pub use apply::{Applier, ApplyError, ApplyOutcome, IdRequest, position_uuid};
pub use message::{DecodeError, IngestMessage, MessageType, Payload, decode};
pub use run_batch::{Batch, BatchBudget, Entry, FlushReason, RunBatch};
