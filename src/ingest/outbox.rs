//! The outbox publisher: sends the control events that mutations recorded, then removes them.
//!
//! [`Applier::apply`] writes a `run_deleted` event under `("outbox", partition, offset)` in the
//! transaction that deletes the run, and the REST API writes `experiment_deleted` and `tag_deleted`
//! (partition −1) in the transaction of its deletion, so each event exists exactly when its mutation
//! does. The [`OutboxPublisher`] reads pending entries, produces each to `control-events` (value =
//! the event's compact JSON `{"type":…,"timestamp":…,"payload":{…}}`, §1.5; key = the run id when
//! the payload has one, else none, as the reference), waits for the broker's acknowledgement, and
//! only then removes the entry in its own transaction.
//!
//! No entry blocks the others (the reference stopped at the first event without a `run_id`, for
//! good): an entry that is not an event, or that the broker refused [`MAX_DELIVERY_ATTEMPTS`]
//! times, is moved to the dead letters (reason `outbox_malformed` or `outbox_undeliverable`) in one
//! transaction and the pass goes on; a broker that times out (down or unreachable) ends the pass,
//! to be retried on the next one without counting against the entry.
//!
//! Delivery is at least once and never lost: a crash (or a failed removal) after the broker
//! acknowledged and before the removal committed publishes the event again on the next pass. Such
//! duplicates are harmless: the control worker's reaction to `run_deleted` is deleting the run's
//! blobs by prefix, which is idempotent. A publish that fails leaves the entry for the next pass.
//!
//! In `matyan serve` on the embedded queue the same publisher appends to the queue's control topic
//! ([`OutboxPublisher::to_queue`]) instead of producing to Kafka.
//!
//! Departure from the reference: it publishes `run_deleted` with a null key (§1.2); we key it by
//! run id so a run's events stay in order on a multi-partition control topic. The control worker
//! reads only the value, so this changes nothing for it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use thiserror::Error;

use crate::config::KafkaConfig;
use crate::ingest::apply::{Applier, ApplyError, DeadLetter, OutboxEvent};
use crate::ingest::kafka::client_config;
use crate::ingest::queue::{AppendRecord, Queue};
use crate::storage::kv::{Database, RetryOptions};
use crate::storage::value::ValueError;

/// How long one publish may wait in the producer's queue and for the broker.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Refusals by the broker (other than timeouts) after which an entry is dead-lettered.
pub const MAX_DELIVERY_ATTEMPTS: u32 = 5;

/// The most outbox events [`OutboxPublisher::pending`] counts: the gauge says "this many or more"
/// past it, and a pass never reads more to count.
pub const PENDING_COUNT_CAP: usize = 10_000;

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
    /// The embedded queue refused the append (transient: the pass ends, the entry stays).
    #[error("outbox append to the embedded queue: {0}")]
    Queue(String),
    /// The broker did not acknowledge an event.
    #[error("outbox entry {partition}/{offset} not delivered: {source}")]
    Delivery { partition: i32, offset: i64, source: rdkafka::error::KafkaError },
}

impl OutboxError {
    /// Whether the broker could not be reached in time (down, unreachable, its queue full): the
    /// entry is not at fault and is retried without counting against it.
    pub fn is_transient(&self) -> bool {
        if matches!(self, OutboxError::Queue(_)) {
            return true;
        }
        matches!(
            self,
            OutboxError::Delivery {
                source: KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageTimedOut
                        | RDKafkaErrorCode::QueueFull
                        | RDKafkaErrorCode::AllBrokersDown
                        | RDKafkaErrorCode::BrokerTransportFailure
                        | RDKafkaErrorCode::RequestTimedOut
                ),
                ..
            }
        )
    }
}

/// Where the publisher sends events: the Kafka topic, or the embedded queue's control topic
/// (`matyan serve`, whose control workers read it).
#[derive(Clone)]
enum Destination {
    Kafka(FutureProducer),
    Queue(Queue),
}

/// Publishes outbox events to the control-events topic (see the module docs).
#[derive(Clone)]
pub struct OutboxPublisher {
    db: Database,
    applier: Applier,
    producer: Destination,
    topic: String,
    retry: RetryOptions,
    batch: usize,
    /// Broker refusals per entry `(partition, offset)` since this process started.
    refusals: Arc<Mutex<HashMap<(i32, i64), u32>>>,
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
        Ok(Self {
            db,
            applier,
            producer: Destination::Kafka(producer),
            topic: topic.to_owned(),
            retry,
            batch: 100,
            refusals: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Creates a publisher appending to `queue`, the embedded queue's control-events topic.
    pub fn to_queue(db: Database, applier: Applier, queue: Queue, retry: RetryOptions) -> Self {
        Self {
            db,
            applier,
            topic: queue.topic().to_owned(),
            producer: Destination::Queue(queue),
            retry,
            batch: 100,
            refusals: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Returns the control-events topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The events waiting in the outbox, counted up to [`PENDING_COUNT_CAP`] (a larger backlog
    /// reads as the cap), in one snapshot.
    pub async fn pending(&self) -> Result<usize, OutboxError> {
        let tx = self.db.create_trx().map_err(ApplyError::from)?;
        Ok(self.applier.outbox(&tx, PENDING_COUNT_CAP).await?.len())
    }

    /// Publishes every pending event (in `(partition, offset)` order, `batch` at a time) and
    /// removes each once delivered; dead-letters what can never be delivered (module docs).
    /// Returns how many were published. A broker timeout ends the pass with an error; the entry
    /// and the ones after it stay for the next pass.
    pub async fn publish_pending(&self) -> Result<usize, OutboxError> {
        self.pass().await.map(|(published, _)| published)
    }

    /// One pass of [`publish_pending`](Self::publish_pending); also says whether it ended on an
    /// empty outbox (then the backlog is known to be 0 without counting it).
    async fn pass(&self) -> Result<(usize, bool), OutboxError> {
        let mut published = 0;
        loop {
            let tx = self.db.create_trx().map_err(ApplyError::from)?;
            let pending = self.applier.outbox(&tx, self.batch).await?;
            drop(tx);
            if pending.is_empty() {
                return Ok((published, true));
            }
            for entry in &pending {
                match self.publish_one(entry).await {
                    Ok(()) => {
                        crate::metrics::outbox_event("published");
                        published += 1;
                    }
                    Err(e @ OutboxError::Malformed { .. }) => self.dead_letter(entry, "outbox_malformed", &e).await?,
                    Err(e @ OutboxError::Delivery { .. }) if !e.is_transient() => {
                        crate::metrics::outbox_event("failed");
                        let key = (entry.partition, entry.offset);
                        let refusals = {
                            let mut map = self.refusals.lock();
                            let n = map.entry(key).or_insert(0);
                            *n += 1;
                            *n
                        };
                        if refusals >= MAX_DELIVERY_ATTEMPTS {
                            self.dead_letter(entry, "outbox_undeliverable", &e).await?;
                            self.refusals.lock().remove(&key);
                        } else {
                            tracing::warn!(error = %e, refusals, "outbox event refused; retried on the next pass");
                        }
                    }
                    Err(e) => {
                        crate::metrics::outbox_event("failed");
                        return Err(e);
                    }
                }
            }
            // Entries refused but not yet dead-lettered are still first in the outbox: leave them
            // for the next pass rather than reading them again at once.
            if pending.iter().any(|e| self.refusals.lock().contains_key(&(e.partition, e.offset))) {
                return Ok((published, false));
            }
        }
    }

    /// Moves `entry` to the dead letters (reason `reason`) and out of the outbox, in one transaction.
    async fn dead_letter(&self, entry: &OutboxEvent, reason: &str, error: &OutboxError) -> Result<(), OutboxError> {
        let (partition, offset) = (entry.partition, entry.offset);
        let letter = DeadLetter {
            reason: reason.to_owned(),
            key: None,
            value: entry.event.to_json().ok().and_then(|j| serde_json::to_vec(&j).ok()),
            timestamp: crate::clock::now_secs(),
            message_type: entry.event.to_json().ok().and_then(|j| j["type"].as_str().map(str::to_owned)),
            detail: error.to_string(),
        };
        let (applier, letter) = (&self.applier, &letter);
        self.db
            .run(&self.retry, |tx| async move {
                applier.write_dead_letter(&tx, partition, offset, letter)?;
                applier.remove_outbox(&tx, partition, offset);
                Ok::<(), ApplyError>(())
            })
            .await?;
        crate::metrics::outbox_event("dead_lettered");
        tracing::error!(partition, offset, reason, error = %error, "outbox entry dead-lettered");
        Ok(())
    }

    async fn publish_one(&self, entry: &OutboxEvent) -> Result<(), OutboxError> {
        let (partition, offset) = (entry.partition, entry.offset);
        let malformed = |detail: String| OutboxError::Malformed { partition, offset, detail };
        let json = entry.event.to_json().map_err(|e: ValueError| malformed(e.to_string()))?;
        let kind = json
            .get("type")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| malformed("not a control event: no type".to_owned()))?
            .to_owned();
        if !json.get("payload").is_some_and(serde_json::Value::is_object) {
            return Err(malformed("not a control event: no payload object".to_owned()));
        }
        let run = json.pointer("/payload/run_id").and_then(serde_json::Value::as_str).map(str::to_owned);
        let value = serde_json::to_vec(&json).map_err(|e| malformed(e.to_string()))?;
        match &self.producer {
            Destination::Kafka(producer) => {
                let delivery = match &run {
                    Some(run) => {
                        let record = FutureRecord::to(&self.topic).key(run.as_str()).payload(value.as_slice());
                        producer.send(record, DELIVERY_TIMEOUT).await
                    }
                    None => {
                        let record = FutureRecord::<(), [u8]>::to(&self.topic).payload(value.as_slice());
                        producer.send(record, DELIVERY_TIMEOUT).await
                    }
                };
                delivery.map_err(|(source, _)| OutboxError::Delivery { partition, offset, source })?;
            }
            Destination::Queue(queue) => {
                let ts = (crate::clock::now_secs() * 1000.0) as i64;
                let record: AppendRecord<'_> = (run.as_deref().map(str::as_bytes), value.as_slice(), ts);
                queue.append(&[record]).await.map_err(|e| OutboxError::Queue(e.to_string()))?;
            }
        }
        // Delivered: remove the entry. A failure here only means it is published again later.
        let applier = &self.applier;
        self.db
            .run(&self.retry, |tx| async move {
                applier.remove_outbox(&tx, partition, offset);
                Ok::<(), ApplyError>(())
            })
            .await?;
        self.refusals.lock().remove(&(partition, offset));
        tracing::info!(kind = %kind, run = ?run, partition, offset, topic = %self.topic, "control event published");
        Ok(())
    }

    /// Runs passes every `interval` until `shutdown` completes, logging failures and retrying
    /// them on the next pass. A pipeline may also call [`publish_pending`](Self::publish_pending)
    /// right after a batch with a `delete_run` commits, for a prompt event.
    pub async fn run(&self, interval: Duration, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let drained = match self.pass().await {
                Ok((published, drained)) => {
                    if published > 0 {
                        tracing::debug!(published, "outbox pass done");
                    }
                    drained
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox pass failed; retrying next pass");
                    false
                }
            };
            // An idle outbox (the usual case) ends its pass on an empty read: nothing to count.
            match if drained { Ok(0) } else { self.pending().await } {
                Ok(n) => crate::metrics::outbox_pending(n),
                Err(e) => tracing::debug!(error = %e, "outbox backlog not read; keeping the previous value"),
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
