//! The ingest actors: a supervised pipeline from a [`Source`](crate::ingest::Source) to storage
//! transactions, behind one typed handle.
//!
//! Module map:
//! - [`runtime`]: where the actix system runs (its own OS thread) and why;
//! - [`pipeline`]: [`IngestPipeline::start`] and the [`PipelineHandle`] the rest of the crate uses
//!   (shutdown, chaos kills, counters); no actix `Addr` leaves this module;
//! - [`supervisor`]: the source loop and the restart policy (backoff, restarts by actor and cause,
//!   recovery by seeking partitions back to their committed offsets);
//! - [`partition_actor`]: one per assigned partition: decodes, dead-letters, routes records to run
//!   actors, tracks unflushed offsets and commits the partition's low watermark;
//! - [`models`]: what the actors pass each other and are configured with (failure reports, kill
//!   targets, pipeline and run actor settings); imports no actor;
//! - [`run_actor`]: one per active run: owns a [`RunBatch`](crate::ingest::RunBatch), flushes it
//!   through the [`Flusher`](flush::Flusher), stops when idle;
//! - [`flush`]: the flush I/O: budgeted transactions with the run's checkpoint, splitting a batch
//!   that is too large, shared transactions of evicted runs, dead-letter forwarding;
//! - [`stats`]: shared counters behind [`PipelineHandle::counters`] and the live-run registry;
//! - `testing` (tests only): paused time, a fake source and a probe, to drive one actor or the
//!   supervisor through its mailbox without a real sleep;
//! - `simulation` (tests only): a seeded, deterministic simulation of the whole pipeline under
//!   kills, rebalances, redelivery and KV faults, with a conservation oracle;
//! - [`lag`]: the consumer-lag gauge, each partition's backlog as the source reports it.
pub mod flush;
pub mod lag;
pub mod models;
pub mod partition_actor;
pub mod pipeline;
pub mod run_actor;
pub mod runtime;
#[cfg(test)]
pub mod simulation;
pub mod stats;
pub mod supervisor;
#[cfg(test)]
pub mod testing;

pub use models::{DeadLetterTarget, KillTarget, PipelineConfig, PipelineError};
pub use pipeline::{IngestPipeline, PipelineHandle};
pub use stats::{PartitionCounters, PipelineCounters};
