//! The outbox publisher: sends the `run_deleted` control events that `delete_run` recorded, then removes them.
//!
//! [`Applier::apply`] writes a `run_deleted` event under `("outbox", partition, offset)` in the
//! transaction that deletes the run, so the event exists exactly when the deletion does. The
//! [`OutboxPublisher`] reads pending entries, produces each to `control-events` (key = the run id,
//! value = the event's compact JSON `{"type":"run_deleted","timestamp":…,"payload":{"run_id":R}}`,
//! §1.5), waits for the broker's acknowledgement, and only then removes the entry in its own
//! transaction.
//!
//! Delivery is at least once and never lost: a crash (or a failed removal) after the broker
//! acknowledged and before the removal committed publishes the event again on the next pass. Such
//! duplicates are harmless: the control worker's reaction to `run_deleted` is deleting the run's
//! blobs by prefix, which is idempotent. A publish that fails leaves the entry for the next pass.
//!
//! Departure from the reference: it publishes `run_deleted` with a null key (§1.2); we key it by
//! run id so a run's events stay in order on a multi-partition control topic. The control worker
//! reads only the value, so this changes nothing for it.

use std::future::Future;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use thiserror::Error;

use crate::config::KafkaConfig;
use crate::ingest::apply::{Applier, ApplyError, OutboxEvent};
use crate::ingest::kafka::client_config;
use crate::storage::kv::{Database, RetryOptions};
use crate::storage::value::ValueError;

/// How long one publish may wait in the producer's queue and for the broker.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a publishing pass stopped.
#[derive(Debug, Error)]
pub enum OutboxError {
    /// The producer could not be created.
    #[error("create outbox producer: {0}")]
    Producer(rdkafka::error::KafkaError),
    /// Reading or removing entries failed.
    #[error("outbox storage: {0}")]
    Storage(#[from] ApplyError),
    /// An entry is not a publishable event (it is left in place and reported).
    #[error("outbox entry {partition}/{offset}: {detail}")]
    Malformed { partition: i32, offset: i64, detail: String },
    /// The broker did not acknowledge an event.
    #[error("outbox entry {partition}/{offset} not delivered: {source}")]
    Delivery { partition: i32, offset: i64, source: rdkafka::error::KafkaError },
}

/// Publishes outbox events to the control-events topic (see the module docs).
#[derive(Clone)]
pub struct OutboxPublisher {
    db: Database,
    applier: Applier,
    producer: FutureProducer,
    topic: String,
    retry: RetryOptions,
    batch: usize,
}

impl std::fmt::Debug for OutboxPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxPublisher").field("topic", &self.topic).field("batch", &self.batch).finish()
    }
}

impl OutboxPublisher {
    /// Creates the publisher for the configured control-events topic.
    pub fn from_config(
        db: Database,
        applier: Applier,
        cfg: &KafkaConfig,
        retry: RetryOptions,
    ) -> Result<Self, OutboxError> {
        Self::new(db, applier, client_config(cfg), &cfg.control_events_topic, retry)
    }

    /// Creates an idempotent producer with `base` settings to `topic`.
    pub fn new(
        db: Database,
        applier: Applier,
        base: ClientConfig,
        topic: &str,
        retry: RetryOptions,
    ) -> Result<Self, OutboxError> {
        let producer: FutureProducer = crate::ingest::kafka::idempotent_producer_config(base, DELIVERY_TIMEOUT)
            .create()
            .map_err(OutboxError::Producer)?;
        Ok(Self { db, applier, producer, topic: topic.to_owned(), retry, batch: 100 })
    }

    /// Returns the control-events topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes every pending event (in `(partition, offset)` order, `batch` at a time) and
    /// removes each once delivered. Returns how many were published. Stops at the first failure;
    /// the failed entry and the ones after it stay for the next pass.
    pub async fn publish_pending(&self) -> Result<usize, OutboxError> {
        let mut published = 0;
        loop {
            let tx = self.db.create_trx().map_err(ApplyError::from)?;
            let pending = self.applier.outbox(&tx, self.batch).await?;
            drop(tx);
            if pending.is_empty() {
                return Ok(published);
            }
            for entry in &pending {
                match self.publish_one(entry).await {
                    Ok(()) => {
                        crate::metrics::outbox_event("published");
                        published += 1;
                    }
                    Err(e) => {
                        crate::metrics::outbox_event("failed");
                        return Err(e);
                    }
                }
            }
        }
    }

    async fn publish_one(&self, entry: &OutboxEvent) -> Result<(), OutboxError> {
        let (partition, offset) = (entry.partition, entry.offset);
        let malformed = |detail: String| OutboxError::Malformed { partition, offset, detail };
        let json = entry.event.to_json().map_err(|e: ValueError| malformed(e.to_string()))?;
        let run = json
            .get("payload")
            .and_then(|p| p.get("run_id"))
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| malformed("no payload.run_id".to_owned()))?
            .to_owned();
        let value = serde_json::to_vec(&json).map_err(|e| malformed(e.to_string()))?;
        let record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(&self.topic).key(run.as_str()).payload(value.as_slice());
        self.producer.send(record, DELIVERY_TIMEOUT).await.map_err(|(source, _)| OutboxError::Delivery {
            partition,
            offset,
            source,
        })?;
        // Delivered: remove the entry. A failure here only means it is published again later.
        let applier = &self.applier;
        self.db
            .run(&self.retry, |tx| async move {
                applier.remove_outbox(&tx, partition, offset);
                Ok::<(), ApplyError>(())
            })
            .await?;
        tracing::info!(run = %run, partition, offset, topic = %self.topic, "run_deleted published");
        Ok(())
    }

    /// Runs passes every `interval` until `shutdown` completes, logging failures and retrying
    /// them on the next pass. A pipeline may also call [`publish_pending`](Self::publish_pending)
    /// right after a batch with a `delete_run` commits, for a prompt event.
    pub async fn run(&self, interval: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            match self.publish_pending().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(published = n, "outbox pass done"),
                Err(e) => tracing::warn!(error = %e, "outbox pass failed; retrying next pass"),
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
