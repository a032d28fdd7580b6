//! Where run mutations publish their events (spec `ingest-storage.md` §2.1, §2.2).
//!
//! A REST `DELETE` of a run marks it `pending_deletion` synchronously, then asks the ingestion
//! workers to purge it with a `delete_run` record keyed by the run id on the ingestion topic, so the
//! purge runs in partition order after every earlier message of the run. [`ControlSink`] is that
//! publishing step; [`sink`] picks the implementation. Today it is [`EmbeddedQueueSink`], appending
//! to the embedded queue `matyan serve` consumes; a Kafka producer can implement the same trait.
//!
//! The sink opens its own queue handle per call, so an [`crate::ingest::EmbeddedSource`] of the
//! same process sees the append at its next poll rather than through the in-process wake-up.
//!
//! Decisions (documented deviations from the reference):
//! - A failed `delete_run` append answers 500 instead of being logged and swallowed: the run would
//!   otherwise stay hidden and never be purged. The mark is idempotent, so the client may retry.
//! - `run_archived` / `run_unarchived` are no-ops: the reference's control worker ignores them
//!   (§2.5), and archiving is complete once the synchronous write commits. The trait keeps the hook
//!   so a Kafka sink can publish them for outside consumers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::app::AppState;
use crate::gateway::{OutRecord, RecordSink};
use crate::ingest::apply::rfc3339_utc;
use crate::ingest::queue::{AppendRecord, DEFAULT_PARTITIONS, Queue};
use crate::storage::kv::{Database, RetryOptions};

use super::ApiError;

/// A boxed future of a sink call.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send + 'a>>;

/// Records appended per queue transaction: `delete_run` records are about 120 bytes, so a chunk
/// stays far below the transaction limit.
const CHUNK: usize = 1000;

/// Publishes the events of run mutations.
pub trait ControlSink: Send + Sync {
    /// Queues one `delete_run` record per run, keyed by the run id, on the ingestion topic.
    fn delete_runs<'a>(&'a self, runs: &'a [String], now: f64) -> SinkFuture<'a>;

    /// Publishes `run_archived` / `run_unarchived` for each run; a no-op by default (see the
    /// module docs).
    fn runs_archived<'a>(&'a self, runs: &'a [String], archived: bool) -> SinkFuture<'a> {
        let _ = (runs, archived);
        Box::pin(async { Ok(()) })
    }
}

/// The sink of this process: its record sink when it has one (its gateway's, or Kafka for a
/// `matyan api` with `ingest.source = "kafka"`), else the embedded ingestion queue.
pub fn sink(state: &AppState) -> Box<dyn ControlSink> {
    if let Some(sink) = &state.records {
        return Box::new(GatewaySink { sink: Arc::clone(sink) });
    }
    Box::new(EmbeddedQueueSink {
        db: state.db.clone(),
        ours: state.layout.dirs.ours.clone(),
        topic: state.config.kafka.data_ingestion_topic.clone(),
        retry: state.config.storage.retry.options(),
    })
}

/// Appends to the embedded queue's ingestion topic, opening it (or creating it with the default
/// partition count) on each call.
pub struct EmbeddedQueueSink {
    db: Database,
    ours: Vec<u8>,
    topic: String,
    /// `[storage.retry]`'s options, for [`crate::ingest::queue::append_retry`].
    retry: RetryOptions,
}

impl EmbeddedQueueSink {
    async fn queue(&self) -> Result<Queue, ApiError> {
        let queue = match Queue::open_existing(&self.db, &self.ours, &self.topic).await? {
            Some(q) => q,
            None => Queue::open(&self.db, &self.ours, &self.topic, DEFAULT_PARTITIONS).await?,
        };
        Ok(queue.with_retry(crate::ingest::queue::append_retry(&self.retry)))
    }
}

/// Publishes through the process's [`RecordSink`], where its client records go, so a `delete_run`
/// lands on the same topic and partition as the run's earlier records.
pub struct GatewaySink {
    sink: Arc<dyn RecordSink>,
}

impl ControlSink for GatewaySink {
    fn delete_runs<'a>(&'a self, runs: &'a [String], now: f64) -> SinkFuture<'a> {
        Box::pin(async move {
            #[allow(clippy::cast_possible_truncation)]
            let timestamp_ms = (now * 1000.0) as i64;
            for chunk in runs.chunks(CHUNK) {
                let records = chunk
                    .iter()
                    .map(|r| OutRecord { key: r.clone(), value: delete_run_value(r, now), timestamp_ms })
                    .collect();
                self.sink.publish(records).await?;
            }
            Ok(())
        })
    }
}

/// The JSON value of a `delete_run` ingestion message (ingest-storage.md §1.4).
pub fn delete_run_value(run: &str, now: f64) -> Vec<u8> {
    serde_json::json!({"type": "delete_run", "run_id": run, "timestamp": rfc3339_utc(now), "payload": {}})
        .to_string()
        .into_bytes()
}

impl ControlSink for EmbeddedQueueSink {
    fn delete_runs<'a>(&'a self, runs: &'a [String], now: f64) -> SinkFuture<'a> {
        Box::pin(async move {
            if runs.is_empty() {
                return Ok(());
            }
            let queue = self.queue().await?;
            #[allow(clippy::cast_possible_truncation)]
            let ts_ms = (now * 1000.0) as i64;
            for chunk in runs.chunks(CHUNK) {
                let values: Vec<Vec<u8>> = chunk.iter().map(|r| delete_run_value(r, now)).collect();
                let records: Vec<AppendRecord<'_>> =
                    chunk.iter().zip(&values).map(|(r, v)| (Some(r.as_bytes()), v.as_slice(), ts_ms)).collect();
                queue.append(&records).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_run_values_decode_as_ingestion_messages() {
        let v = delete_run_value("abc", 1_735_689_600.0);
        let msg = crate::ingest::message::decode(&v).expect("decodes");
        assert_eq!(msg.run_id, "abc");
        assert_eq!(msg.kind(), crate::ingest::message::MessageType::DeleteRun);
    }
}
