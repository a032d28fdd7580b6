//! Ingestion: the pure parts between a source record and a storage transaction (no IO yet).
//!
//! Module map:
//! - [`message`]: record value bytes → typed [`IngestMessage`], or a [`DecodeError`] with a bounded
//!   reason for dead-lettering; `client_datetime` parsing as Python's `fromisoformat`;
//! - [`estimate`]: the reference's per-message size estimate and chunking rule (spec §1.10);
//! - [`partitioner`]: Kafka's default murmur2 partitioner, shared by the Kafka and embedded sources;
//! - [`run_batch`]: [`RunBatch`], one run's accumulated messages and the flush decisions on bytes,
//!   count, age, shutdown, revoke and delete.
pub mod estimate;
pub mod message;
pub mod partitioner;
pub mod run_batch;

pub use message::{DecodeError, IngestMessage, MessageType, Payload, decode};
pub use run_batch::{Batch, BatchBudget, Entry, FlushReason, RunBatch};
